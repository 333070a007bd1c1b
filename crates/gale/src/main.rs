//! The `gale` command: run a node, deploy apps, look at what runs.
//!
//! [`cli`] says what the command line takes; [`commands`] runs each
//! command, one module per area; [`client`] talks to a node's admin API
//! and [`output`] renders its answers as text or JSON.

mod cli;
mod client;
mod commands;
mod deploy;
mod output;

use std::io::IsTerminal;

// A node allocates and frees per request, per event and per instance, on
// whichever worker thread runs them. Under load glibc's malloc and free are
// a noticeable share of the node's CPU; mimalloc's thread-local heaps make
// both cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ends the command with this exit code, its message already printed (a
/// function that answered non-2xx, a replay with failures).
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn main() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // RUST_BACKTRACE=1 (common in shells and CI) would make every error
        // value inside wasmtime capture a backtrace, several per request.
        // Panics still print theirs: RUST_BACKTRACE governs those.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let parsed = cli::parse();
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
    if let Err(e) = runtime.block_on(commands::run(parsed)) {
        if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
            std::process::exit(*code);
        }
        // Gale's own errors read `error[code]: ...`; the rest get the prefix.
        let text = format!("{e:#}");
        if text.starts_with("error") {
            eprintln!("{text}");
        } else {
            eprintln!("error: {text}");
        }
        std::process::exit(1);
    }
}
