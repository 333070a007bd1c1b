//! The `lambda` scenario: the process runtime with real Lambda runtimes.
//!
//! - warm overhead: a Rust `lambda_runtime` echo handler invoked through the
//!   Invoke API, one request at a time; Gale's round trip minus the
//!   handler's own time (the handler reports it), next to a plain loopback
//!   HTTP echo round trip measured in the same run (the network floor);
//! - cold start: the first invocation on a new instance, for the Rust and a
//!   Python (`awslambdaric`) handler, against starting the same process
//!   directly under a bare Runtime API served by this benchmark;
//! - throughput with N = 1, 2, 8 warm instances.

use crate::{JSON, Node, RawClient, root};
use anyhow::{Context, Result, bail};
use axum::extract::State;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle time after which the node stops an instance (so the next
/// invocation is a cold start).
const IDLE: Duration = Duration::from_millis(200);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Builds `examples/lambda-rust`; returns its package directory (`dist`).
fn rust_package() -> Result<PathBuf> {
    let dir = root().join("examples/lambda-rust");
    let ok = Command::new("sh")
        .args([
            "-c",
            "cargo build --release --quiet && mkdir -p dist && cp target/release/lambda-echo dist/bootstrap",
        ])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()?
        .success();
    if !ok {
        bail!("building examples/lambda-rust failed");
    }
    Ok(dir.join("dist"))
}

/// `tests/lambda/python` with awslambdaric vendored (as the tests make it).
fn python_package() -> Result<PathBuf> {
    let dir = root().join("target/lambda-fixtures/python");
    if !dir.join("awslambdaric").is_dir() {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg("awslambdaric==4.2.2")
            .status()?
            .success();
        if !ok {
            bail!("pip install awslambdaric failed");
        }
    }
    std::fs::copy(root().join("tests/lambda/python/app.py"), dir.join("app.py"))?;
    Ok(dir)
}

pub async fn run(iterations: u32, seconds: u32) -> Result<()> {
    let rust = rust_package()?;
    let python = python_package()?;
    let node = Node::start(&format!("{}ms", IDLE.as_millis()))?;
    let token = std::fs::read_to_string(node.dir.join("token"))?
        .trim()
        .to_string();
    let mut manifest = String::from("[app]\nname = \"bench\"\n");
    for n in [1, 2, 8] {
        manifest.push_str(&format!(
            "[functions.rust-{n}]\nruntime = \"process\"\nsource = \"{}\"\nmax_instances = {n}\nqueue = 1000\n",
            rust.display()
        ));
    }
    manifest.push_str(&format!(
        "[functions.python]\nruntime = \"process\"\nsource = \"{}\"\ncommand = [\"python3\", \"-m\", \"awslambdaric\", \"app.echo\"]\n",
        python.display()
    ));
    node.deploy(&manifest)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let invoke = |function: &str| {
        client
            .post(format!(
                "{}/2015-03-31/functions/{function}/invocations",
                node.gateway
            ))
            .bearer_auth(&token)
            .body(r#"{"type":"bench","data":{"n":1}}"#)
    };

    // Warm overhead: Gale, a plain echo and the bare runtime take turns in
    // blocks, so all three see the same machine.
    let echo_server = EchoServer::start().await?;
    let gateway = node.gateway.trim_start_matches("http://").to_string();
    let mut gale_client = RawClient::connect(&gateway)?;
    let mut echo_client = RawClient::connect(&echo_server.addr.to_string())?;
    let auth = format!("Authorization: Bearer {token}\r\n{JSON}");
    let payload = r#"{"type":"bench","data":{"n":1}}"#;
    let mut bare_api = BareApi::start(&rust, &[rust.join("bootstrap").display().to_string()]).await?;
    let (mut rtt, mut overhead, mut floor, mut bare) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let block = 100;
    for round in 0..iterations.div_ceil(block) + 2 {
        let warmup = round < 2;
        for _ in 0..block {
            let started = Instant::now();
            let answer = tokio::task::block_in_place(|| {
                gale_client.post(
                    "/2015-03-31/functions/rust-1/invocations",
                    &auth,
                    payload.as_bytes(),
                )
            })?;
            let us = started.elapsed().as_secs_f64() * 1e6;
            let body: serde_json::Value = serde_json::from_slice(&answer)?;
            let handler_us = body["handler_us"]
                .as_f64()
                .context("the echo handler reports handler_us")?;
            if !warmup {
                rtt.push(us);
                overhead.push(us - handler_us);
            }
        }
        for _ in 0..block {
            let started = Instant::now();
            tokio::task::block_in_place(|| echo_client.post("/echo", JSON, payload.as_bytes()))?;
            if !warmup {
                floor.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        for _ in 0..block {
            let started = Instant::now();
            bare_api.invoke().await?;
            if !warmup {
                bare.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    drop(bare_api);
    let bare = sorted(bare);
    let (rtt, overhead, floor) = (sorted(rtt), sorted(overhead), sorted(floor));
    println!("lambda warm invocation, Rust lambda_runtime echo, {iterations} sequential invokes:");
    println!(
        "  Gale round trip            p50 {:7.0} µs   p99 {:7.0} µs",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99)
    );
    println!(
        "  minus the handler body     p50 {:7.0} µs   p99 {:7.0} µs",
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99)
    );
    let (f, b) = (percentile(&floor, 0.5), percentile(&bare, 0.5));
    println!("  references, same run (p50): a loopback HTTP echo round trip {f:5.0} µs; the same runtime");
    println!("    under a bare Runtime API (its client library, two HTTP exchanges, the handler) {b:5.0} µs");
    println!(
        "  round trip − the runtime's turnaround under a bare API = {:5.0} µs (goal: < 200 µs)",
        percentile(&rtt, 0.5) - b
    );
    println!(
        "  Gale's own share: round trip − echo − bare runtime = {:5.0} µs; round trip / (echo + bare) = {:.2}×",
        percentile(&rtt, 0.5) - f - b,
        percentile(&rtt, 0.5) / (f + b)
    );

    // Cold starts.
    let cold_iterations = (iterations / 50).clamp(5, 40);
    for (label, function, dir, command) in [
        (
            "Rust lambda_runtime",
            "rust-1",
            &rust,
            vec![rust.join("bootstrap").display().to_string()],
        ),
        (
            "Python awslambdaric",
            "python",
            &python,
            ["python3", "-m", "awslambdaric", "app.echo"]
                .map(String::from)
                .to_vec(),
        ),
    ] {
        let mut gale = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..cold_iterations {
            // Let the node stop the idle instance.
            tokio::time::sleep(IDLE * 4).await;
            let started = Instant::now();
            let r = invoke(function).send().await?;
            if !r.status().is_success() {
                bail!("cold invoke of {function}: {}", r.status());
            }
            r.bytes().await?;
            gale.push(started.elapsed().as_secs_f64() * 1e3);
            direct.push(direct_start(dir, &command).await? * 1e3);
        }
        // Runs alternate, so each pair saw the same machine: the median of
        // the pairs' differences is steadier than a difference of medians.
        let added = sorted(gale.iter().zip(&direct).map(|(g, d)| g - d).collect());
        let (gale, direct) = (sorted(gale), sorted(direct));
        let (g, d) = (percentile(&gale, 0.5), percentile(&direct, 0.5));
        println!("lambda cold start, {label}, {cold_iterations} runs (p50):");
        println!(
            "  through Gale {g:6.1} ms   started directly {d:6.1} ms   Gale adds {:5.1} ms (median of paired runs; goal: < 5 ms)   ratio {:.2}×",
            percentile(&added, 0.5),
            g / d
        );
    }

    // Throughput with N warm instances.
    println!("lambda throughput, Rust echo, {seconds} s each:");
    let mut single = 0.0;
    for n in [1u32, 2, 8] {
        let function = format!("rust-{n}");
        // Warm all N instances first.
        futures::future::join_all((0..n).map(|_| invoke(&function).send())).await;
        let until = Instant::now() + Duration::from_secs(seconds as u64);
        let clients = (n * 2).max(4);
        let counts = futures::future::join_all((0..clients).map(|_| {
            let request = invoke(&function);
            async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    match request.try_clone().expect("a plain body").send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            done += 1;
                        }
                        _ => {}
                    }
                }
                done
            }
        }))
        .await;
        let rate = counts.iter().sum::<u64>() as f64 / seconds as f64;
        if n == 1 {
            single = rate;
        }
        println!(
            "  N = {n}: {rate:8.0} invocations/s   ({:.2}× N = 1; {clients} clients)",
            rate / single
        );
    }
    Ok(())
}

/// A bare axum echo server: the loopback HTTP round trip, with the same client.
struct EchoServer {
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> Result<EchoServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route("/echo", axum::routing::post(|body: String| async move { body }));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(EchoServer { addr, server })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A bare Runtime API served by the benchmark: hands out the events it is
/// given, one at a time, and reports each answer. What any host of a
/// Lambda runtime must do at the least.
struct BareApi {
    events: tokio::sync::mpsc::Sender<()>,
    answers: tokio::sync::mpsc::Receiver<()>,
    child: tokio::process::Child,
    server: tokio::task::JoinHandle<()>,
}

impl BareApi {
    /// Starts `command` in `dir` under a bare Runtime API.
    async fn start(dir: &Path, command: &[String]) -> Result<BareApi> {
        type Shared = (
            Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>>,
            tokio::sync::mpsc::Sender<()>,
        );
        async fn next(State((events, _)): State<Shared>) -> axum::response::Response {
            use axum::response::IntoResponse;
            if events.lock().await.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
            let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .to_string();
            (
                [
                    ("lambda-runtime-aws-request-id", "bare".to_string()),
                    ("lambda-runtime-deadline-ms", deadline),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:local:000000000000:function:bare".into(),
                    ),
                    ("lambda-runtime-trace-id", "Root=1-0-0".into()),
                    ("content-type", "application/json".into()),
                ],
                r#"{"type":"bench","data":{"n":1}}"#,
            )
                .into_response()
        }
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(1);
        let (answers_tx, answers_rx) = tokio::sync::mpsc::channel(1);
        let shared: Shared = (Arc::new(tokio::sync::Mutex::new(events_rx)), answers_tx);
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", axum::routing::get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                axum::routing::post(|State((_, answers)): State<Shared>| async move {
                    let _ = answers.send(()).await;
                    axum::http::StatusCode::ACCEPTED
                }),
            )
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bare")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("LAMBDA_TASK_ROOT", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(BareApi {
            events: events_tx,
            answers: answers_rx,
            child,
            server,
        })
    }

    /// Hands out one event and waits for its answer.
    async fn invoke(&mut self) -> Result<()> {
        self.events.send(()).await?;
        tokio::time::timeout(Duration::from_secs(20), self.answers.recv())
            .await
            .context("the runtime never answered")?
            .context("the bare API stopped")
    }
}

impl Drop for BareApi {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.server.abort();
    }
}

/// Seconds from starting `command` (under a bare Runtime API) until its
/// answer to a first event arrived.
async fn direct_start(dir: &Path, command: &[String]) -> Result<f64> {
    let started = Instant::now();
    let mut api = BareApi::start(dir, command).await?;
    api.invoke().await?;
    Ok(started.elapsed().as_secs_f64())
}
