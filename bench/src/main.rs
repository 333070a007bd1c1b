//! Gale's whole-system benchmarks. Each scenario measures Gale and, where
//! there is one, a reference in the same run, and prints ratios: the machines
//! are shared and noisy, absolute figures drift, ratios much less.
//!
//! Run with `bench/run.sh` (builds release binaries, runs the scenarios and
//! writes their output to `bench/RESULTS.md`), or one scenario by hand:
//! `target/release/gale-bench http|cold-start|spike|idle|events|lambda|buckets|cdc|brokers|isolation`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod admin;
mod brokers;
mod buckets;
mod cdc;
mod events;
mod isolation;
mod lambda;

// The allocator the gale binary uses, so that references measured in this
// process (the raw durable append, the axum server) run on equal terms.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Gale whole-system benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hello-world throughput and p99: Gale vs `wasmtime serve` vs plain axum (wrk).
    Http {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Alternating rounds over all targets.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
    },
    /// Platform overhead of a cold start (code loaded from disk) over a warm request.
    ColdStart {
        #[arg(long, default_value_t = 30)]
        iterations: u32,
    },
    /// 0 → 100 concurrent requests to a function that sleeps 50 ms.
    Spike,
    /// Node RSS with 1,000 functions deployed, warm, then idle.
    Idle {
        #[arg(long, default_value_t = 1000)]
        functions: u32,
    },
    /// Events: end-to-end publish → handler throughput (unbatched and
    /// batched) against the storage engine's raw durable-append rate,
    /// publish → handler latency at a steady rate, and fan-out to 10
    /// subscriptions.
    Events {
        /// Events per throughput measurement.
        #[arg(long, default_value_t = 20_000)]
        events: u32,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 32)]
        publishers: u32,
        /// Steady publish rate of the latency measurement (events/s).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of the latency measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds of the ceiling and the unbatched measurement, taken in
        /// turn; the ratio reported is the median of the rounds' ratios.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// The process runtime: warm invocation overhead of a Rust
    /// `lambda_runtime` echo handler, cold starts (Rust and Python) against
    /// starting the same process directly, throughput with 1, 2, 8 instances.
    Lambda {
        /// Sequential invocations of the warm-overhead measurement.
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// Buckets: S3 PUT and GET throughput (4 KiB and 1 MiB objects)
    /// against writing (durably) and reading plain files, and upload →
    /// handler start latency at a steady upload rate.
    Buckets {
        /// Seconds per throughput measurement, at most.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent clients (and plain-file tasks).
        #[arg(long, default_value_t = 16)]
        clients: u32,
        /// Rounds of all throughput measurements; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Steady upload rate of the latency measurement (uploads/s).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of the latency measurement.
        #[arg(long, default_value_t = 10)]
        latency_seconds: u32,
    },
    /// PostgreSQL change data capture (a `postgres` source) on a throwaway
    /// server: changes/s from single-row INSERT transactions to durable
    /// topic events against `pg_recvlogical` reading the same WAL, and
    /// commit → handler start latency at a steady rate of changes.
    Cdc {
        /// Rows (one per transaction) per throughput measurement.
        #[arg(long, default_value_t = 100_000)]
        rows: u32,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: u32,
        /// Rounds of the throughput measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Steady rate of the latency measurement (changes/s).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of the latency measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Broker sources: NATS JetStream messages/s from the broker to durable,
    /// acknowledged topic events against async-nats consuming and acking
    /// alone, and publish → handler start latency at a steady rate.
    Brokers {
        /// Messages per throughput measurement.
        #[arg(long, default_value_t = 100_000)]
        messages: u32,
        /// Rounds of the throughput measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Steady rate of the latency measurement (messages/s).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of the latency measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Isolation under load: a quiet function's p50 and p99 alone and
    /// beside eight computing wasm guests or process instances, and event
    /// handlers that need CPU keeping up while wrk saturates the gateway.
    Isolation {
        /// Seconds of sequential requests per noisy-neighbour case.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Events/s published to each handler during the saturation.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds of the saturation (and of wrk alone before it).
        #[arg(long, default_value_t = 60)]
        saturation_seconds: u32,
    },
    /// A plain axum hello server: the ceiling for `http`.
    AxumHello {
        #[arg(long)]
        listen: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.scenario {
        Scenario::Http {
            seconds,
            connections,
            rounds,
        } => http(seconds, connections, rounds),
        Scenario::ColdStart { iterations } => rt.block_on(cold_start(iterations)),
        Scenario::Spike => rt.block_on(spike()),
        Scenario::Idle { functions } => rt.block_on(idle(functions)),
        Scenario::Events {
            events,
            publishers,
            rate,
            seconds,
            rounds,
        } => rt.block_on(events::run(events, publishers, rate, seconds, rounds)),
        Scenario::Lambda { iterations, seconds } => rt.block_on(lambda::run(iterations, seconds)),
        Scenario::Buckets {
            seconds,
            clients,
            rounds,
            rate,
            latency_seconds,
        } => rt.block_on(buckets::run(seconds, clients, rounds, rate, latency_seconds)),
        Scenario::Cdc {
            rows,
            writers,
            rounds,
            rate,
            seconds,
        } => rt.block_on(cdc::run(rows, writers, rounds, rate, seconds)),
        Scenario::Brokers {
            messages,
            rounds,
            rate,
            seconds,
        } => rt.block_on(brokers::run(messages, rounds, rate, seconds)),
        Scenario::Isolation {
            seconds,
            rate,
            saturation_seconds,
        } => rt.block_on(isolation::run(seconds, rate, saturation_seconds)),
        Scenario::AxumHello { listen } => rt.block_on(async {
            let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "Hello, world!\n" }));
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            axum::serve(listener, app).await?;
            Ok(())
        }),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A binary built beside this one (`bench/run.sh` builds `gale` and
/// `gale-bench` together, into whichever target directory cargo uses).
fn release_bin(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the path of gale-bench");
    me.with_file_name(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builds a guest crate of the repository (with the rest of its workspace)
/// and returns its component `name`. The guest workspaces keep their own
/// `target` directories, whatever target directory the benchmark itself
/// was built into.
fn guest(crate_dir: &str, name: &str) -> Result<PathBuf> {
    let dir = root().join(crate_dir);
    let ok = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--quiet",
            "--workspace",
        ])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()?
        .success();
    if !ok {
        bail!("building {crate_dir} failed");
    }
    Ok(dir.join(format!("target/wasm32-wasip2/release/{name}.wasm")))
}

fn hello_wasm() -> Result<PathBuf> {
    guest("examples/hello", "hello")
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `gale serve` on free ports with its own data directory.
pub(crate) struct Node {
    _proc: Proc,
    pid: u32,
    dir: PathBuf,
    gateway: String,
    admin: String,
    /// The S3 API's address, `host:port`.
    s3: String,
}

impl Node {
    fn start(idle_timeout: &str) -> Result<Node> {
        Node::start_with(&["--idle-timeout", idle_timeout])
    }

    fn start_with(args: &[&str]) -> Result<Node> {
        let dir = std::env::temp_dir().join(format!("gale-bench-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        let (gw, admin, s3) = (free_port(), free_port(), free_port());
        let child = Command::new(release_bin("gale"))
            .args(["serve", "--listen", &format!("127.0.0.1:{gw}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--s3-listen", &format!("127.0.0.1:{s3}")])
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .env("GALE_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .context("run the release gale beside gale-bench (cargo build --release -p gale)")?;
        let node = Node {
            pid: child.id(),
            _proc: Proc(child),
            dir,
            gateway: format!("http://127.0.0.1:{gw}"),
            admin: format!("http://127.0.0.1:{admin}"),
            s3: format!("127.0.0.1:{s3}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok()
                && node.dir.join("token").exists()
            {
                return Ok(node);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("gale serve did not start")
    }

    fn deploy(&self, manifest: &str) -> Result<()> {
        let file = self.dir.join("bench.toml");
        std::fs::write(&file, manifest)?;
        let out = Command::new(release_bin("gale"))
            .args(["deploy", "-f"])
            .arg(&file)
            .args(["--server", &self.admin])
            .arg("--data-dir")
            .arg(&self.dir)
            .output()?;
        if !out.status.success() {
            bail!("deploy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }
}

/// CPU time (user and system) process `pid` has used, in seconds: on
/// shared, noisy machines CPU per unit of work varies much less than
/// throughput does.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, after the parenthesised name.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn wait_http(url: &str) -> Result<()> {
    for _ in 0..400 {
        if let Ok(out) = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            && out.success()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{url} never answered")
}

/// Minimal HTTP/1.1 clients on one kept-alive connection each, so that
/// figures are the server's, not a client library's (a general-purpose
/// client such as reqwest spends about as much CPU per round trip as some
/// of the servers under test).
/// [`RawClient`] blocks; [`AsyncRawClient`] lets one thread drive many
/// connections, as wrk does, so a load generator sharing the cores with the
/// server is not woken once per answer.
pub(crate) struct RawClient {
    stream: std::net::TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl RawClient {
    pub(crate) fn connect(addr: &str) -> Result<RawClient> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
        })
    }

    /// POSTs `body` (`headers`: complete lines, with the content type) and
    /// returns the answer's body; an answer other than 2xx is an error.
    pub(crate) fn post(&mut self, path: &str, headers: &str, body: &[u8]) -> Result<Vec<u8>> {
        use std::io::{Read, Write};
        self.stream.write_all(&request(&self.host, path, headers, body))?;
        loop {
            if let Some(answer) = take_answer(&mut self.buf, path)? {
                return Ok(answer);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk)? {
                0 => bail!("POST {path}: the server closed the connection"),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

pub(crate) struct AsyncRawClient {
    stream: tokio::net::TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl AsyncRawClient {
    pub(crate) async fn connect(addr: &str) -> Result<AsyncRawClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(AsyncRawClient {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
        })
    }

    /// As [`RawClient::post`].
    pub(crate) async fn post(&mut self, path: &str, headers: &str, body: &[u8]) -> Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(&request(&self.host, path, headers, body))
            .await?;
        loop {
            if let Some(answer) = take_answer(&mut self.buf, path)? {
                return Ok(answer);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("POST {path}: the server closed the connection");
            }
        }
    }
}

fn request(host: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Removes a whole answer from the front of `buf` and returns its body, or
/// None if more bytes are needed. An answer other than 2xx is an error.
fn take_answer(buf: &mut Vec<u8>, path: &str) -> Result<Option<Vec<u8>>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = answer.parse(buf)? else {
        return Ok(None);
    };
    let code = answer.code.unwrap_or(0);
    if !(200..300).contains(&code) {
        bail!("POST {path}: {code} {}", answer.reason.unwrap_or_default());
    }
    let length: usize = answer
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .context("the answer has no Content-Length")
        .and_then(|h| Ok(std::str::from_utf8(h.value)?.trim().parse()?))?;
    if buf.len() < head + length {
        return Ok(None);
    }
    let body = buf[head..head + length].to_vec();
    buf.drain(..head + length);
    Ok(Some(body))
}

/// The header line of a JSON body, for [`RawClient::post`] and [`AsyncRawClient::post`].
pub(crate) const JSON: &str = "Content-Type: application/json\r\n";

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_ms(v: &str) -> f64 {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn wrk(url: &str, seconds: u32, connections: u32) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("wrk not found: apt-get install wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkResult {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => r.p50_ms = parse_ms(v),
            ["99%", v] => r.p99_ms = parse_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", v] => r.errors += v.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    Ok(r)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn http(seconds: u32, connections: u32, rounds: u32) -> Result<()> {
    let wasm = hello_wasm()?;
    // The same greeter on wstd, an async runtime for components: how much
    // of a request's cost the guest's own toolkit decides.
    let wstd = guest("tests/guests", "hello-wstd")?;
    let node = Node::start("60s")?;
    node.deploy(&format!(
        "[app]\nname = \"bench\"\n\
         [functions.fresh]\nsource = \"{w}\"\nhttp = [{{ route = \"GET /hello\" }}]\n\
         [functions.reuse]\nsource = \"{w}\"\ninstance_reuse = 128\nhttp = [{{ route = \"GET /reuse/hello\" }}]\n\
         [functions.reuse-wstd]\nsource = \"{s}\"\ninstance_reuse = 128\nhttp = [{{ route = \"GET /wstd/hello\" }}]\n",
        w = wasm.display(),
        s = wstd.display()
    ))?;
    let mut targets: Vec<(String, String, Option<Proc>)> = vec![
        ("gale fresh".into(), format!("{}/hello", node.gateway), None),
        (
            "gale reuse=128".into(),
            format!("{}/reuse/hello", node.gateway),
            None,
        ),
        (
            "gale reuse=128, wstd guest".into(),
            format!("{}/wstd/hello", node.gateway),
            None,
        ),
    ];
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    if Command::new(&wasmtime).arg("--version").output().is_ok() {
        for (label, extra) in [
            ("wasmtime serve fresh", None),
            ("wasmtime serve reuse=128", Some("128")),
        ] {
            let port = free_port();
            let mut cmd = Command::new(&wasmtime);
            cmd.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")]);
            if let Some(n) = extra {
                cmd.args(["--max-instance-reuse-count", n]);
            }
            let child = cmd
                .arg(&wasm)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            targets.push((
                label.into(),
                format!("http://127.0.0.1:{port}/hello"),
                Some(Proc(child)),
            ));
        }
    } else {
        eprintln!("note: `wasmtime` not found (cargo install wasmtime-cli@48.0.8 --locked); skipping it");
    }
    let port = free_port();
    let axum = Command::new(release_bin("gale-bench"))
        .args(["axum-hello", "--listen", &format!("127.0.0.1:{port}")])
        .spawn()?;
    targets.push((
        "axum hello (ceiling)".into(),
        format!("http://127.0.0.1:{port}/hello"),
        Some(Proc(axum)),
    ));
    for (_, url, _) in &targets {
        wait_http(url)?;
        wrk(url, 1, connections)?; // warm up
    }

    let mut results: Vec<Vec<WrkResult>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (label, url, _)) in targets.iter().enumerate() {
            let r = wrk(url, seconds, connections)?;
            eprintln!(
                "round {round} {label:<28} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            results[i].push(r);
        }
    }
    println!("\nhello world, wrk -t1 -c{connections}, {seconds}s × {rounds} rounds (median of rounds)");
    println!(
        "(examples/hello also exports gale:http/handler: Gale serves it through that export, \
         wasmtime serve through wasi:http; the wstd greeter has wasi:http only)"
    );
    let summary: Vec<(String, f64, f64)> = targets
        .iter()
        .zip(&results)
        .map(|((label, _, _), rs)| {
            (
                label.clone(),
                median(rs.iter().map(|r| r.rps).collect()),
                median(rs.iter().map(|r| r.p99_ms).collect()),
            )
        })
        .collect();
    for (label, rps, p99) in &summary {
        println!("{label:<28} {rps:>9.0} req/s   p99 {p99:>6.2} ms");
    }
    let find = |name: &str| {
        summary
            .iter()
            .find(|(l, _, _)| l == name)
            .map(|(_, r, p)| (*r, *p))
    };
    println!();
    if let (Some((g, gp)), Some((w, wp))) = (find("gale fresh"), find("wasmtime serve fresh")) {
        println!(
            "fresh instance: gale / wasmtime serve = {:.2}× throughput, p99 {gp:.2} vs {wp:.2} ms (goal ≥ 2×, p99 no worse)",
            g / w
        );
    }
    if let (Some((g, _)), Some((w, _))) = (find("gale reuse=128"), find("wasmtime serve reuse=128")) {
        println!(
            "instance reuse: gale / wasmtime serve = {:.2}× throughput (goal ≥ 1.0×)",
            g / w
        );
    }
    if let (Some((g, _)), Some((a, _))) = (find("gale reuse=128"), find("axum hello (ceiling)")) {
        println!(
            "instance reuse: gale / plain axum = {:.0} % (goal ≥ 40 %)",
            100.0 * g / a
        );
    }
    if let (Some((g, _)), Some((a, _))) = (find("gale reuse=128, wstd guest"), find("axum hello (ceiling)")) {
        println!(
            "instance reuse, the greeter on wstd: gale / plain axum = {:.0} %",
            100.0 * g / a
        );
    }
    if let (Some((g, _)), Some((a, _))) = (find("gale fresh"), find("axum hello (ceiling)")) {
        println!("fresh instance: gale / plain axum = {:.0} %", 100.0 * g / a);
    }
    Ok(())
}

async fn timed_get(client: &reqwest::Client, url: &str) -> Result<Duration> {
    let started = Instant::now();
    let r = client.get(url).send().await?;
    let status = r.status();
    r.bytes().await?;
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(started.elapsed())
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn cold_start(iterations: u32) -> Result<()> {
    let wasm = hello_wasm()?;
    let node = Node::start("150ms")?;
    let manifest = |greeting: u32| {
        format!(
            "[app]\nname = \"bench\"\n[functions.hello]\nsource = \"{}\"\nenv = {{ GREETING = \"v{greeting}\" }}\nhttp = [{{ route = \"GET /hello\" }}]\n",
            wasm.display()
        )
    };
    node.deploy(&manifest(0))?;
    let client = reqwest::Client::new();
    let url = format!("{}/hello", node.gateway);
    timed_get(&client, &url).await?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        tokio::time::sleep(Duration::from_millis(1200)).await; // scaled to zero by now
        cold.push(timed_get(&client, &url).await?);
        warm.push(timed_get(&client, &url).await?);
    }
    let mut after_deploy = Vec::new();
    for i in 1..=iterations.min(10) {
        node.deploy(&manifest(i))?;
        after_deploy.push(timed_get(&client, &url).await?);
        warm.push(timed_get(&client, &url).await?);
    }
    let (c, w, d) = (p50(cold), p50(warm), p50(after_deploy));
    println!("\ncold start, hello component, {iterations} iterations (p50 round trip over loopback HTTP)");
    println!("warm request               {:>8.3} ms", w.as_secs_f64() * 1e3);
    println!("after scale to zero        {:>8.3} ms", c.as_secs_f64() * 1e3);
    println!("first after a deploy       {:>8.3} ms", d.as_secs_f64() * 1e3);
    println!(
        "platform overhead of a cold start (cold − warm): {:.3} ms after idle, {:.3} ms after deploy (goal < 1 ms)",
        c.saturating_sub(w).as_secs_f64() * 1e3,
        d.saturating_sub(w).as_secs_f64() * 1e3
    );
    Ok(())
}

async fn spike() -> Result<()> {
    let wasm = guest("tests/guests", "testbed")?;
    let node = Node::start("60s")?;
    node.deploy(&format!(
        "[app]\nname = \"bench\"\n[functions.slow]\nsource = \"{}\"\nmax_instances = 100\nhttp = [{{ route = \"/slow/sleep\" }}]\n",
        wasm.display()
    ))?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(128).build()?;
    let url = format!("{}/slow/sleep?ms=50", node.gateway);
    timed_get(&client, &url).await?; // load the code: this is about instances
    // Open 100 connections first so the spike measures Gale, not TCP setup.
    futures::future::try_join_all((0..100).map(|_| timed_get(&client, &url))).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worst = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let times = futures::future::try_join_all((0..100).map(|_| timed_get(&client, &url))).await?;
        let all = started.elapsed();
        let max = times.iter().max().copied().unwrap_or_default();
        worst.push(all.max(max));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let w = p50(worst);
    println!("\nspike: 0 → 100 concurrent requests, each sleeping 50 ms (5 spikes, median)");
    println!(
        "all 100 done after {:.1} ms = {:.2}× the sleep (goal ≤ 2×)",
        w.as_secs_f64() * 1e3,
        w.as_secs_f64() / 0.05
    );
    Ok(())
}

async fn idle(functions: u32) -> Result<()> {
    let wasm = hello_wasm()?;
    let node = Node::start("2s")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty = node.rss_kib();
    let mut manifest = String::from("[app]\nname = \"idle\"\n");
    for i in 0..functions {
        manifest.push_str(&format!(
            "[functions.f{i}]\nsource = \"{}\"\nhttp = [{{ route = \"GET /f{i}\" }}]\n",
            wasm.display()
        ));
    }
    let started = Instant::now();
    node.deploy(&manifest)?;
    let deploy_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deployed = node.rss_kib();
    let client = reqwest::Client::new();
    for i in 0..functions {
        timed_get(&client, &format!("{}/f{i}", node.gateway)).await?;
    }
    let warm = node.rss_kib();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = node.rss_kib();
    println!("\nidle cost: node RSS with {functions} functions (hello component)");
    println!("empty node                       {:>8} KiB", empty);
    println!(
        "{functions} deployed, never called      {:>8} KiB  (deploy took {:.1?})",
        deployed, deploy_time
    );
    println!("{functions} called once (all warm)      {:>8} KiB", warm);
    println!("{functions} idle, scaled to zero        {:>8} KiB", idle);
    println!(
        "per idle function: {:.1} KiB over the empty node",
        (idle.saturating_sub(empty)) as f64 / functions as f64
    );
    Ok(())
}
