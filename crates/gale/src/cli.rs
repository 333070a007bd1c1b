//! What `gale` takes on its command line, and where each flag applies.
//!
//! Client flags (`--server`, `--gateway`, `--token`, `--output`) belong to
//! the commands that talk to a running node, so `gale serve --help` lists
//! only what `serve` uses. People also write them before the command
//! (`gale --server X ls`), as the first CLI took them anywhere; so the top
//! level takes them too, a value given after the command wins over one
//! given before it, and one given before a command it does not apply to is
//! refused rather than ignored.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gale",
    version,
    about = "Gale: serverless functions, events and scale-to-zero in one binary",
    after_help = "Start with `gale up examples/hello`, then `curl localhost:8080/hello`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// The flags of every command that talks to a running node. Added to those
// commands by `command()` (global within each, so `gale dlq ls T --server X`
// works), and to the top level for `gale --server X ls`. (Not a doc
// comment: clap would make it the about text of each command it joins.)
#[derive(Args, Clone)]
#[command(next_help_heading = "Options for reaching the node")]
pub struct ClientArgs {
    /// Admin API of the node to talk to, a URL like http://127.0.0.1:8081
    /// (a bare HOST:PORT is taken as http://HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "GALE_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    pub server: String,
    /// The node's gateway, where `gale publish` sends events when given a
    /// publish token (`galepub_...`); a bare HOST:PORT is taken as http://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "GALE_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// Admin bearer token, or for `gale publish` a publish token (default:
    /// read from the data directory's `token` file).
    #[arg(long, global = true, env = "GALE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's data directory (where the admin token is read from).
    #[arg(long, global = true, env = "GALE_DATA_DIR", default_value = "./.gale")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address of the HTTP gateway.
    #[arg(long, env = "GALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin API.
    #[arg(long, env = "GALE_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Address of the S3-compatible API (buckets).
    #[arg(long, env = "GALE_S3_LISTEN", default_value = "127.0.0.1:8082")]
    pub s3_listen: SocketAddr,
    /// The node's data directory (created if missing).
    #[arg(long, env = "GALE_DATA_DIR", default_value = "./.gale")]
    pub data_dir: PathBuf,
    /// How long a function stays warm without requests before it scales to zero.
    #[arg(long, env = "GALE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// How long invocation logs are kept.
    #[arg(long, env = "GALE_LOG_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
    /// Invocation logs kept per function at most.
    #[arg(long, env = "GALE_LOG_KEEP", default_value_t = 1000)]
    pub log_keep: usize,
    /// The least share of the CPU, in percent, that event deliveries keep
    /// against the gateway while events wait (1 to 50; 50 treats both
    /// alike). Below it, publishers and requests are answered first.
    #[arg(long, env = "GALE_DELIVERY_SHARE", default_value_t = 25, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub delivery_share: u8,
    /// Storage backend: `embedded` (SQLite and files in the data directory;
    /// the only one so far).
    #[arg(long, env = "GALE_STORE", default_value = "embedded")]
    pub store: gale_node::Backend,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node: the HTTP gateway and the admin API, on embedded storage.
    Serve(ServeArgs),
    /// Run a node and deploy the app in DIR (default: the current directory).
    Up {
        /// Directory holding gale.toml.
        dir: Option<PathBuf>,
        #[command(flatten)]
        serve: ServeArgs,
        /// Format of the deploy's summary.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Print the version of this gale.
    Version {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Print a shell completion script, e.g. `gale completions bash > /etc/bash_completion.d/gale`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// Commands that are clients of a running node's admin API.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Build, upload and deploy the app described by a manifest.
    Deploy {
        /// The manifest.
        #[arg(short = 'f', long = "file", default_value = "gale.toml")]
        file: PathBuf,
    },
    /// List deployed functions.
    Ls,
    /// Show one function: version, routes, triggers, limits, env keys, counters.
    Describe { function: String },
    /// List the versions of a function.
    Versions { function: String },
    /// Serve an earlier (or later) version of a function again.
    Rollback { function: String, version: u64 },
    /// Remove a function and its versions.
    Rm { function: String },
    /// Send one request to a function (no route needed). Exits 1 unless the
    /// function answers 2xx.
    Invoke {
        function: String,
        /// Request body (UTF-8 text); `@FILE` reads it from a file.
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
    /// Publish one event (a CloudEvent) to a topic. With a publish token
    /// (`--token galepub_...`) it goes through the gateway (`--gateway`),
    /// else through the admin API.
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
    /// Buckets of the S3 API: list, create, remove.
    Buckets {
        #[command(subcommand)]
        action: Option<BucketsAction>,
    },
    /// S3 access keys: create, list, revoke.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Dead-letter topics: look at failed events, send them back.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Show invocation logs of a function, or of every function of an app.
    Logs {
        /// The function (or give --app).
        #[arg(required_unless_present = "app", conflicts_with = "app")]
        function: Option<String>,
        /// Every function of this app, merged in start-time order, each
        /// record naming its function.
        #[arg(long)]
        app: Option<String>,
        /// Keep printing new invocations as they happen.
        #[arg(short, long)]
        follow: bool,
        /// How many of the newest invocations to show first (default 20;
        /// with --since, all of those since then).
        #[arg(short = 'n', long)]
        limit: Option<usize>,
        /// Only invocations started at or after this: an age (`15m`, `2h`)
        /// or an RFC 3339 time (`2026-11-30T07:00:00Z`).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TopicsAction {
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
pub enum InvocationsAction {
    /// Status, attempts and answer (or error) of one invocation.
    Show { id: String },
}

#[derive(Subcommand)]
pub enum TokensAction {
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
pub enum BucketsAction {
    /// Create a bucket, or change its settings.
    Create {
        name: String,
        /// The most its objects may hold together (e.g. `10GiB`; default: no limit).
        #[arg(long)]
        max_size: Option<String>,
        /// Delete objects this long after their last change (e.g. `30d`; default: never).
        #[arg(long)]
        expire_after: Option<String>,
    },
    /// Delete an empty bucket.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create an access key for buckets: prints its id and secret (shown once).
    Create {
        /// A bucket the key may use; repeatable.
        #[arg(long = "bucket", required = true)]
        buckets: Vec<String>,
        /// The key may only read.
        #[arg(long)]
        read_only: bool,
    },
    /// List access keys (their ids and buckets, not their secrets).
    Ls,
    /// Revoke an access key.
    Rm { id: String },
}

#[derive(Subcommand)]
pub enum DlqAction {
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

/// The ids of [`ClientArgs`]' flags.
const CLIENT_FLAGS: [&str; 5] = ["server", "gateway", "token", "data_dir", "output"];

/// The whole command line: [`Cli`] with [`ClientArgs`] on each client
/// command and, for flags written before the command, at the top level.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let client = ClientCommand::augment_subcommands(clap::Command::new("client"));
    for sub in client.get_subcommands() {
        cmd = cmd.mut_subcommand(sub.get_name(), ClientArgs::augment_args);
    }
    let flags = ClientArgs::augment_args(clap::Command::new("flags"));
    for arg in flags.get_arguments() {
        cmd = cmd.arg(
            arg.clone()
                .global(false)
                .help_heading("Options of the commands that talk to a node"),
        );
    }
    cmd
}

/// A parsed command line.
pub struct Parsed {
    pub command: Command,
    /// The client flags, for client commands.
    pub client: Option<ClientArgs>,
}

/// Parses the process's arguments (exits with clap's message on a mistake).
pub fn parse() -> Parsed {
    let mut cmd = command();
    let matches = cmd.get_matches_mut();
    match parsed(&matches) {
        Ok(p) => p,
        Err(message) => cmd
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
    }
}

fn given(m: &ArgMatches, id: &str) -> bool {
    m.try_contains_id(id).unwrap_or(false) && m.value_source(id) == Some(ValueSource::CommandLine)
}

fn parsed(top: &ArgMatches) -> Result<Parsed, String> {
    let mut cli = Cli::from_arg_matches(top).map_err(|e| e.to_string())?;
    let (name, sub) = top.subcommand().expect("a subcommand is required");
    match &mut cli.command {
        Command::Client(_) => {
            // A flag's value comes from the command's own matches when
            // given there or not before the command (then they hold its
            // environment variable or default), else from the top level's.
            let get = |id: &str| {
                if given(sub, id) || !given(top, id) {
                    sub
                } else {
                    top
                }
            };
            let client = ClientArgs {
                server: get("server")
                    .get_one::<String>("server")
                    .cloned()
                    .unwrap_or_default(),
                gateway: get("gateway")
                    .get_one::<String>("gateway")
                    .cloned()
                    .unwrap_or_default(),
                token: get("token").get_one::<String>("token").cloned(),
                data_dir: get("data_dir")
                    .get_one::<PathBuf>("data_dir")
                    .cloned()
                    .unwrap_or_default(),
                output: get("output")
                    .get_one::<Format>("output")
                    .copied()
                    .unwrap_or(Format::Text),
            };
            return Ok(Parsed {
                command: cli.command,
                client: Some(client),
            });
        }
        Command::Serve(ServeArgs { data_dir, .. })
        | Command::Up {
            serve: ServeArgs { data_dir, .. },
            ..
        } => {
            if !given(sub, "data_dir") && given(top, "data_dir") {
                *data_dir = top.get_one::<PathBuf>("data_dir").cloned().unwrap_or_default();
            }
        }
        Command::Version { .. } | Command::Completions { .. } => {}
    }
    if let Command::Up { output, .. } | Command::Version { output } = &mut cli.command
        && !given(sub, "output")
        && given(top, "output")
    {
        *output = top.get_one::<Format>("output").copied().unwrap_or(Format::Text);
    }
    for id in CLIENT_FLAGS {
        let applies = sub.try_contains_id(id).unwrap_or(false);
        if given(top, id) && !applies {
            return Err(format!(
                "--{} does not apply to `gale {name}`; it is an option of the commands that talk to a node",
                id.replace('_', "-")
            ));
        }
    }
    Ok(Parsed {
        command: cli.command,
        client: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        let matches = command()
            .try_get_matches_from(std::iter::once("gale").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        parsed(&matches)
    }

    fn server(args: &[&str]) -> String {
        parse(args).unwrap().client.unwrap().server
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn client_flags_go_before_or_after_the_command() {
        assert_eq!(server(&["--server", "http://a:1", "ls"]), "http://a:1");
        assert_eq!(server(&["ls", "--server", "http://b:2"]), "http://b:2");
        assert_eq!(
            server(&["dlq", "ls", "t", "--server", "http://c:3"]),
            "http://c:3"
        );
        assert_eq!(
            server(&["--server", "http://a:1", "dlq", "ls", "t"]),
            "http://a:1"
        );
        // After the command wins.
        assert_eq!(
            server(&["--server", "http://a:1", "ls", "--server", "http://b:2"]),
            "http://b:2"
        );
        let p = parse(&["--output", "json", "--data-dir", "/x", "describe", "f"]).unwrap();
        let c = p.client.unwrap();
        assert!(c.output == Format::Json);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn serve_takes_no_client_flags() {
        assert!(parse(&["serve", "--server", "http://a:1"]).is_err());
        assert!(parse(&["serve", "--output", "json"]).is_err());
        assert!(parse(&["serve", "--token", "t"]).is_err());
        let e = parse(&["--server", "http://a:1", "serve"]).err().unwrap();
        assert!(e.contains("--server does not apply to `gale serve`"), "{e}");
        // The data directory applies to serve wherever it is written.
        let p = parse(&["--data-dir", "/d", "serve"]).unwrap();
        let Command::Serve(args) = p.command else { panic!() };
        assert_eq!(args.data_dir, PathBuf::from("/d"));
        let p = parse(&["--output", "json", "up"]).unwrap();
        assert!(matches!(
            p.command,
            Command::Up {
                output: Format::Json,
                ..
            }
        ));
    }
}
