//! The `gale` command: run a node, deploy apps, look at what runs.

mod client;
mod deploy;
mod output;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::Client;
use gale_core::api::{
    CreateTokenRequest, CreatedToken, FunctionInfo, InvocationLog, InvocationRecord, InvokeRequest,
    InvokeResponse, RollbackRequest, SourceInfo, StoredEventInfo, TokenInfo, TopicInfo, VersionInfo,
};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// A node allocates and frees per request, per event and per instance, on
// whichever worker thread runs them. Under load glibc's malloc and free are
// a noticeable share of the node's CPU; mimalloc's thread-local heaps make
// both cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gale",
    version,
    about = "Gale: serverless functions, events and scale-to-zero in one binary",
    after_help = "Start with `gale up examples/hello`, then `curl localhost:8080/hello`."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Global {
    /// Admin API of the node to talk to.
    #[arg(
        long,
        global = true,
        env = "GALE_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    server: String,
    /// Admin bearer token (default: read from the data directory's `token` file).
    #[arg(long, global = true, env = "GALE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node's data directory.
    #[arg(long, global = true, env = "GALE_DATA_DIR", default_value = "./.gale")]
    data_dir: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address of the HTTP gateway.
    #[arg(long, env = "GALE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin API.
    #[arg(long, env = "GALE_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Address of the S3-compatible API.
    #[arg(long, env = "GALE_S3_LISTEN", default_value = "127.0.0.1:8082")]
    s3_listen: SocketAddr,
    /// How long a function stays warm without requests before it scales to zero.
    #[arg(long, env = "GALE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How long invocation logs are kept.
    #[arg(long, env = "GALE_LOG_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    log_retention: Duration,
    /// Invocation logs kept per function at most.
    #[arg(long, env = "GALE_LOG_KEEP", default_value_t = 1000)]
    log_keep: usize,
    /// Storage backend: `embedded` (SQLite and files in the data directory;
    /// the only one so far).
    #[arg(long, env = "GALE_STORE", default_value = "embedded")]
    store: gale_node::Backend,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the HTTP gateway and the admin API, on embedded storage.
    Serve(ServeArgs),
    /// Run a node and deploy the app in DIR (default: the current directory).
    Up {
        /// Directory holding gale.toml.
        dir: Option<PathBuf>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Build, upload and deploy the app described by a manifest.
    Deploy {
        /// The manifest.
        #[arg(short = 'f', long = "file", default_value = "gale.toml")]
        file: PathBuf,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// Commands that are plain clients of a running node's admin API.
#[derive(Subcommand)]
enum ClientCommand {
    /// List deployed functions.
    Ls,
    /// Show one function: version, routes, limits, counters.
    Describe { function: String },
    /// List the versions of a function.
    Versions { function: String },
    /// Serve an earlier (or later) version of a function again.
    Rollback { function: String, version: u64 },
    /// Remove a function and its versions.
    Rm { function: String },
    /// Send one request to a function (no route needed).
    Invoke {
        function: String,
        /// Request body; `@FILE` reads it from a file.
        #[arg(short, long)]
        data: Option<String>,
        /// HTTP method (default: POST with data, GET without).
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// Path (and query) the function sees.
        #[arg(long, default_value = "/")]
        path: String,
        /// Extra header, `NAME: VALUE`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Publish one event (a CloudEvent) to a topic.
    Publish {
        topic: String,
        /// The event's `type`, e.g. `order_placed`.
        #[arg(long = "type")]
        ty: String,
        /// The event's data, as JSON; `@FILE` reads it from a file.
        #[arg(short, long)]
        data: Option<String>,
        /// The event's `id` (default: a new unique id). Same source and id
        /// within the topic's dedup window: stored once.
        #[arg(long)]
        id: Option<String>,
        /// The event's `source`.
        #[arg(long, default_value = "/gale/cli")]
        source: String,
        /// The event's `subject`.
        #[arg(long)]
        subject: Option<String>,
        /// The event's `partitionkey` (for ordered subscriptions).
        #[arg(long)]
        partition_key: Option<String>,
    },
    /// List topics with depth, rates and per-subscription lag; create or remove one.
    Topics {
        #[command(subcommand)]
        action: Option<TopicsAction>,
    },
    /// Run a topic's stored events through a function again (a new version,
    /// a fixed bug); failures are reported, not retried.
    Replay {
        topic: String,
        /// Events published at or after this: an RFC 3339 time
        /// (`2026-11-30T07:00:00Z`) or an age (`15m`, `2h`).
        #[arg(long)]
        from: String,
        /// The function to run them through.
        #[arg(long)]
        to: String,
        /// Events at most.
        #[arg(long, default_value_t = 10_000)]
        limit: u64,
    },
    /// List sources (declared `[sources.NAME]` and functions' schedules):
    /// state, position, lag, last error.
    Sources,
    /// Asynchronous invocations (`POST /_gale/functions/FN/invocations?mode=async`).
    Invocations {
        #[command(subcommand)]
        action: InvocationsAction,
    },
    /// Publish-only tokens: create, list, revoke.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Dead-letter topics: look at failed events, send them back.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Show invocation logs of a function.
    Logs {
        function: String,
        /// Keep printing new invocations as they happen.
        #[arg(short, long)]
        follow: bool,
        /// How many of the newest invocations to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create a topic, or change its retention.
    Create {
        name: String,
        /// Events older than this are dropped.
        #[arg(long, default_value = "7d")]
        retention: String,
        /// The oldest events are dropped past this size.
        #[arg(long, default_value = "1GiB")]
        max_bytes: String,
        /// Window in which a repeated source + id is stored once.
        #[arg(long, default_value = "10m")]
        dedup_window: String,
    },
    /// Delete a topic and its events (refused while functions subscribe to it).
    Rm { name: String },
}

#[derive(Subcommand)]
enum InvocationsAction {
    /// Status, attempts and answer (or error) of one invocation.
    Show { id: String },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Create a token that may only publish to the given topics (shown once).
    Create {
        /// A topic the token may publish to; repeatable.
        #[arg(long = "publish", required = true)]
        publish: Vec<String>,
    },
    /// List publish tokens (their ids and topics, not the tokens).
    Ls,
    /// Revoke a publish token.
    Rm { id: String },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List the events in a dead-letter topic with why they failed.
    Ls {
        /// The dead-letter topic.
        topic: String,
        #[arg(short = 'n', long, default_value_t = 100)]
        limit: usize,
    },
    /// Move every event of a dead-letter topic back to the topic it failed on.
    Redrive {
        /// The dead-letter topic.
        topic: String,
    },
}

fn main() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // RUST_BACKTRACE=1 (common in shells and CI) would make every error
        // value inside wasmtime capture a backtrace, several per request.
        // Panics still print theirs: RUST_BACKTRACE governs those.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    // Colour only for a person at a terminal: logs piped to a file, a
    // journal or another program stay plain text. NO_COLOR (no-color.org)
    // turns colour off at a terminal too.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}

fn node_options(data_dir: PathBuf, args: &ServeArgs) -> gale_node::Options {
    let mut options = gale_node::Options::new(data_dir);
    options.listen = args.listen;
    options.admin_listen = args.admin_listen;
    options.s3_listen = args.s3_listen;
    options.idle_timeout = args.idle_timeout;
    options.log_retention = args.log_retention;
    options.log_keep = args.log_keep;
    options.store = args.store;
    options
}

async fn start_node(global: &Global, args: &ServeArgs) -> Result<gale_node::NodeHandle> {
    let node = gale_node::start(node_options(global.data_dir.clone(), args))
        .await
        .map_err(|e| anyhow!(e.to_user().render()))?;
    eprintln!("gateway    http://{}", node.gateway);
    eprintln!("admin API  http://{}", node.admin);
    eprintln!("S3 API     http://{}", node.s3);
    if node.token_created {
        eprintln!(
            "admin token (shown once; saved in {}): {}",
            global.data_dir.join("token").display(),
            node.token
        );
    }
    Ok(node)
}

async fn until_stopped(node: gale_node::NodeHandle) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping: letting running requests finish");
    node.shutdown().await;
    Ok(())
}

fn token(global: &Global) -> Result<String> {
    if let Some(t) = &global.token {
        return Ok(t.clone());
    }
    let path = global.data_dir.join("token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .with_context(|| {
            format!(
                "no admin token: {} is not readable; set GALE_TOKEN (or --token), or point --data-dir at the node's data directory",
                path.display()
            )
        })
}

/// A command-line value, or with `@FILE` the file's contents.
fn read_arg(value: String) -> Result<String> {
    match value.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read {file}")),
        None => Ok(value),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Serve(args) => {
            let node = start_node(&global, &args).await?;
            until_stopped(node).await
        }
        Command::Up { dir, serve } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let node = start_node(&global, &serve).await?;
            let admin = format!("http://{}", node.admin);
            let token = node.token.clone();
            let connect = || Ok(Client::new(&admin, token));
            let result = deploy::deploy(connect, &dir.join("gale.toml"), global.output).await;
            if let Err(e) = result {
                node.shutdown().await;
                return Err(e);
            }
            eprintln!("ready: http://{} (Ctrl-C stops)", node.gateway);
            until_stopped(node).await
        }
        Command::Deploy { file } => {
            let connect = || Ok(Client::new(&global.server, token(&global)?));
            deploy::deploy(connect, &file, global.output).await
        }
        Command::Client(command) => {
            let client = Client::new(&global.server, token(&global)?);
            client_command(&client, command, global.output).await
        }
    }
}

async fn client_command(client: &Client, command: ClientCommand, format: Format) -> Result<()> {
    match command {
        ClientCommand::Ls => {
            let functions: Vec<FunctionInfo> = client.get("/v1/functions").await?;
            output::print(format, &functions, output::function_table)
        }
        ClientCommand::Describe { function } => {
            let info: FunctionInfo = client.get(&format!("/v1/functions/{function}")).await?;
            output::print(format, &info, output::describe)
        }
        ClientCommand::Versions { function } => {
            let versions: Vec<VersionInfo> =
                client.get(&format!("/v1/functions/{function}/versions")).await?;
            output::print(format, &versions, output::version_table)
        }
        ClientCommand::Rollback { function, version } => {
            let info: FunctionInfo = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/functions/{function}/rollback"),
                    &RollbackRequest { version },
                )
                .await?;
            output::print(format, &info, |i| {
                format!("{} now serves version {}\n", i.name, i.version)
            })
        }
        ClientCommand::Rm { function } => {
            client.delete(&format!("/v1/functions/{function}")).await?;
            output::print(format, &serde_json::json!({ "removed": function }), |_| {
                format!("removed {function}\n")
            })
        }
        ClientCommand::Invoke {
            function,
            data,
            method,
            path,
            headers,
        } => {
            let body = data.map(read_arg).transpose()?.unwrap_or_default();
            let mut header_map = std::collections::BTreeMap::new();
            for h in headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("header {h:?} must look like `NAME: VALUE`"))?;
                header_map.insert(k.trim().to_string(), v.trim().to_string());
            }
            let request = InvokeRequest {
                method,
                path: Some(path),
                headers: header_map,
                body,
            };
            let response: InvokeResponse = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/functions/{function}/invoke"),
                    &request,
                )
                .await?;
            let failed = response.status >= 500;
            output::print(format, &response, |r| {
                if r.status >= 400 {
                    format!("{} (request {})\n{}\n", r.status, r.request_id, r.body)
                } else {
                    let mut body = r.body.clone();
                    if !body.ends_with('\n') {
                        body.push('\n');
                    }
                    body
                }
            })?;
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        ClientCommand::Publish {
            topic,
            ty,
            data,
            id,
            source,
            subject,
            partition_key,
        } => {
            let mut event = serde_json::json!({
                "specversion": "1.0",
                "id": id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                "source": source,
                "type": ty,
            });
            if let Some(data) = data {
                let text = read_arg(data)?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| "--data must be JSON (quote a string: --data '\"text\"')")?;
                event["datacontenttype"] = "application/json".into();
                event["data"] = value;
            }
            if let Some(s) = subject {
                event["subject"] = s.into();
            }
            if let Some(k) = partition_key {
                event["partitionkey"] = k.into();
            }
            let answer: serde_json::Value = client
                .post_as(
                    &format!("/v1/topics/{topic}/events"),
                    "application/cloudevents+json",
                    event.to_string(),
                )
                .await?;
            output::print(format, &answer, |a| {
                let e = &a["events"][0];
                if e["duplicate"] == true {
                    format!("duplicate of event {} (seq {}): stored once\n", e["id"], e["seq"])
                } else {
                    format!("published {} to {topic} (seq {})\n", e["id"], e["seq"])
                }
            })
        }
        ClientCommand::Sources => {
            let sources: Vec<SourceInfo> = client.get("/v1/sources").await?;
            output::print(format, &sources, output::source_table)
        }
        ClientCommand::Topics { action: None } => {
            let topics: Vec<TopicInfo> = client.get("/v1/topics").await?;
            output::print(format, &topics, output::topic_table)
        }
        ClientCommand::Topics {
            action:
                Some(TopicsAction::Create {
                    name,
                    retention,
                    max_bytes,
                    dedup_window,
                }),
        } => {
            let spec = serde_json::json!({
                "retention": retention,
                "max_bytes": max_bytes,
                "dedup_window": dedup_window,
            });
            let info: TopicInfo = client
                .send(reqwest::Method::PUT, &format!("/v1/topics/{name}"), &spec)
                .await?;
            output::print(format, &info, |t| format!("topic {} ready\n", t.name))
        }
        ClientCommand::Topics {
            action: Some(TopicsAction::Rm { name }),
        } => {
            client.delete(&format!("/v1/topics/{name}")).await?;
            output::print(format, &serde_json::json!({ "removed": name }), |_| {
                format!("removed topic {name}\n")
            })
        }
        ClientCommand::Replay {
            topic,
            from,
            to,
            limit,
        } => {
            let from_ms = match humantime::parse_duration(&from) {
                Ok(age) => std::time::SystemTime::now() - age,
                Err(_) => humantime::parse_rfc3339_weak(&from).map_err(|e| {
                    anyhow!("--from {from:?} is neither an age like \"15m\" nor a time like \"2026-11-30T07:00:00Z\": {e}")
                })?,
            }
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
            let body = serde_json::json!({ "function": to, "from_ms": from_ms, "limit": limit });
            let report: serde_json::Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/topics/{topic}/replay"),
                    &body,
                )
                .await?;
            let failed = report["failed"].as_u64().unwrap_or(0) > 0;
            output::print(format, &report, |r| {
                let mut out = format!(
                    "replayed {} events of {topic} through {to}: {} failed, {} filtered out (up to seq {})\n",
                    r["replayed"], r["failed"], r["filtered"], r["last_seq"]
                );
                for e in r["errors"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  {}\n", e.as_str().unwrap_or_default()));
                }
                out
            })?;
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        ClientCommand::Invocations {
            action: InvocationsAction::Show { id },
        } => {
            let record: InvocationRecord = client.get(&format!("/v1/invocations/{id}")).await?;
            output::print(format, &record, |r| {
                let mut out = format!(
                    "invocation {} of {}: {} after {} attempt(s), updated {}\n",
                    r.id,
                    r.function,
                    r.status,
                    r.attempts,
                    output::time(r.updated_at)
                );
                if let Some(resp) = &r.response {
                    out.push_str(&format!("answer {}: {}\n", resp.status, resp.body));
                }
                if let Some(e) = &r.error {
                    out.push_str(&format!("error: {e}\n"));
                }
                out
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Create { publish },
        } => {
            let created: CreatedToken = client
                .send(
                    reqwest::Method::POST,
                    "/v1/tokens",
                    &CreateTokenRequest { publish },
                )
                .await?;
            output::print(format, &created, |c| {
                format!(
                    "{}\n(id {}; may publish to {}; shown once: store it now)\n",
                    c.token,
                    c.info.id,
                    c.info.publish.join(", ")
                )
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Ls,
        } => {
            let tokens: Vec<TokenInfo> = client.get("/v1/tokens").await?;
            output::print(format, &tokens, |list| {
                let mut out = format!("{:<14} {:<25} {}\n", "ID", "CREATED", "MAY PUBLISH TO");
                for t in list {
                    out.push_str(&format!(
                        "{:<14} {:<25} {}\n",
                        t.id,
                        output::time(t.created_at),
                        t.publish.join(", ")
                    ));
                }
                out
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Rm { id },
        } => {
            client.delete(&format!("/v1/tokens/{id}")).await?;
            output::print(format, &serde_json::json!({ "revoked": id }), |_| {
                format!("revoked token {id}\n")
            })
        }
        ClientCommand::Dlq {
            action: DlqAction::Ls { topic, limit },
        } => {
            let events: Vec<StoredEventInfo> = client
                .get(&format!("/v1/topics/{topic}/events?limit={limit}"))
                .await?;
            output::print(format, &events, output::dead_letter_table)
        }
        ClientCommand::Dlq {
            action: DlqAction::Redrive { topic },
        } => {
            let answer: serde_json::Value = client
                .send(reqwest::Method::POST, &format!("/v1/topics/{topic}/redrive"), &())
                .await?;
            output::print(format, &answer, |a| {
                format!(
                    "moved {} events back to their topics ({} kept)\n",
                    a["moved"], a["kept"]
                )
            })
        }
        ClientCommand::Logs {
            function,
            follow,
            limit,
        } => {
            let mut after = 0;
            let first: Vec<InvocationLog> = client
                .get(&format!("/v1/functions/{function}/logs?tail=true&limit={limit}"))
                .await?;
            for log in &first {
                output::print_log(format, log)?;
                after = log.seq;
            }
            if !follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let next: Vec<InvocationLog> = client
                    .get(&format!("/v1/functions/{function}/logs?after={after}&limit=1000"))
                    .await?;
                for log in &next {
                    output::print_log(format, log)?;
                    after = log.seq;
                }
            }
        }
    }
}
