//! `gale serve` and `gale up`: run a node in this process until Ctrl-C or
//! SIGTERM.
//!
//! Stopping lets running invocations finish (the node gives up after
//! 15 s). Someone who pressed Ctrl-C and sees nothing happen presses it
//! again, as with most servers; the second one (or a second SIGTERM) stops
//! the process at once (exit 130, like a shell's Ctrl-C): what was in
//! flight is cut short as in a crash, which the node is built to survive
//! (events not yet acknowledged are delivered again).

use crate::cli::{Format, ServeArgs};
use crate::client::Client;
use anyhow::{Result, anyhow};
use gale_node::{NodeError, NodeHandle};
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

pub async fn serve(args: ServeArgs) -> Result<()> {
    let node = start_node(&args).await?;
    until_stopped(node).await
}

pub async fn up(dir: Option<PathBuf>, args: ServeArgs, format: Format) -> Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let node = start_node(&args).await?;
    let admin = format!("http://{}", node.admin);
    let token = node.token.clone();
    let connect = || Ok(Client::new(&admin, token));
    let result = crate::deploy::deploy(connect, &dir.join("gale.toml"), format).await;
    if let Err(e) = result {
        node.shutdown().await;
        return Err(e);
    }
    eprintln!("ready: http://{} (Ctrl-C stops)", node.gateway);
    until_stopped(node).await
}

fn node_options(args: &ServeArgs) -> gale_node::Options {
    let mut options = gale_node::Options::new(args.data_dir.clone());
    options.listen = args.listen;
    options.admin_listen = args.admin_listen;
    options.s3_listen = args.s3_listen;
    options.idle_timeout = args.idle_timeout;
    options.log_retention = args.log_retention;
    options.log_keep = args.log_keep;
    options.delivery_share = args.delivery_share;
    options.store = args.store;
    options
}

async fn start_node(args: &ServeArgs) -> Result<NodeHandle> {
    let node = gale_node::start(node_options(args)).await.map_err(|e| match &e {
        NodeError::Listen { addr, source } => anyhow!(cannot_listen(args, addr, source)),
        _ => anyhow!(e.to_user().render()),
    })?;
    eprintln!("gateway    http://{}", node.gateway);
    eprintln!("admin API  http://{}", node.admin);
    eprintln!("S3 API     http://{}", node.s3);
    if node.token_created {
        eprintln!(
            "admin token (shown once; saved in {}): {}",
            args.data_dir.join("token").display(),
            node.token
        );
    }
    Ok(node)
}

/// A listener that could not be made, named by the flag that set its address.
fn cannot_listen(args: &ServeArgs, addr: &str, source: &std::io::Error) -> String {
    let flags: Vec<(&str, &str)> = [
        (args.listen, "--listen", "GALE_LISTEN"),
        (args.admin_listen, "--admin-listen", "GALE_ADMIN_LISTEN"),
        (args.s3_listen, "--s3-listen", "GALE_S3_LISTEN"),
    ]
    .into_iter()
    .filter(|(a, _, _)| a.to_string() == addr)
    .map(|(_, flag, env)| (flag, env))
    .collect();
    let (flag, hint) = match flags.as_slice() {
        [(flag, env)] => (
            flag.to_string(),
            format!(
                "stop what holds it (another `gale serve`?), or pick another address with {flag} ({env})"
            ),
        ),
        [] => ("--listen".to_string(), "pick another address".to_string()),
        many => (
            many.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(" and "),
            "give the gateway, the admin API and the S3 API different addresses".to_string(),
        ),
    };
    format!("error: cannot listen on {addr} ({flag}): {source}\n  hint: {hint}")
}

async fn until_stopped(node: NodeHandle) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    match node.in_flight() {
        0 => eprintln!("stopping"),
        n => eprintln!(
            "stopping: waiting for {n} invocation{} to finish; Ctrl-C again to stop now",
            if n == 1 { "" } else { "s" }
        ),
    }
    // A second signal of either kind: whoever sent the first is done waiting.
    tokio::select! {
        _ = node.shutdown() => Ok(()),
        _ = async { tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} } } => {
            eprintln!("stopped at once: invocations still running were cut short");
            // Now, without dropping the node's parts in turn.
            std::process::exit(130)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_error_names_the_flag() {
        let args = ServeArgs {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin_listen: "127.0.0.1:8081".parse().unwrap(),
            s3_listen: "127.0.0.1:8082".parse().unwrap(),
            data_dir: ".gale".into(),
            idle_timeout: std::time::Duration::from_secs(60),
            log_retention: std::time::Duration::from_secs(60),
            log_keep: 1,
            delivery_share: 25,
            store: gale_node::Backend::Embedded,
        };
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(cannot_listen(&args, "127.0.0.1:8081", &in_use).contains("127.0.0.1:8081 (--admin-listen)"));
        assert!(cannot_listen(&args, "127.0.0.1:8080", &in_use).contains("127.0.0.1:8080 (--listen)"));
        assert!(cannot_listen(&args, "127.0.0.1:8082", &in_use).contains("127.0.0.1:8082 (--s3-listen)"));
    }
}
