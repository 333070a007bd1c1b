//! Isolation under load, on one node.
//!
//! - Noisy neighbour: the p50 and p99 of sequential requests to a quiet
//!   function alone, then while eight guests of another function compute
//!   until their timeout (wasm), then while eight instances of a process
//!   function do; with how long the spinners ran before they were cut.
//! - Saturation: `wrk` at full speed on a hello route alone, then again
//!   while events are published at a steady rate to a Python handler and
//!   a wasm handler that both need CPU per event: the handled rate against
//!   the published rate, the lag left at the end, and the HTTP throughput
//!   lost (at most the delivery share is the goal).

use crate::admin::Admin;
use crate::{Node, RawClient, guest, hello_wasm, median, wrk};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Rounds of the wasm handler's `work` events: a few ms of computing each.
const WASM_WORK_ROUNDS: u64 = 3_000_000;

pub(crate) async fn run(seconds: u32, rate: u32, saturation_seconds: u32) -> Result<()> {
    let testbed = guest("tests/guests", "testbed")?;
    let handler = testbed.with_file_name("gale_test_handler.wasm");
    let hello = hello_wasm()?;
    let node = Node::start("600s")?;
    // The spinner and the Python handler are the tests' (`tests/lambda`).
    node.deploy(&format!(
        r#"[app]
name = "isolation"
[topics.python-work]
[topics.wasm-work]
[functions.quiet]
source = "{h}"
http = [{{ route = "POST /quiet" }}]
[functions.spinner]
source = "{t}"
timeout = "3s"
max_instances = 8
http = [{{ route = "POST /spinner/loop" }}]
[functions.spin-process]
runtime = "process"
source = "{s}"
timeout = "3s"
max_instances = 8
http = [{{ route = "POST /spin-process" }}]
[functions.hello]
source = "{h}"
http = [{{ route = "GET /hello" }}]
[functions.python-handler]
runtime = "process"
source = "{k}"
max_instances = 4
events = [{{ topic = "python-work", max_concurrency = 4 }}]
[functions.wasm-handler]
source = "{w}"
max_instances = 4
events = [{{ topic = "wasm-work", max_concurrency = 4 }}]
"#,
        t = testbed.display(),
        k = crate::root().join("tests/lambda/work").display(),
        s = crate::root().join("tests/lambda/spin").display(),
        h = hello.display(),
        w = handler.display(),
    ))?;
    let gateway = node.gateway.trim_start_matches("http://").to_string();

    eprintln!("noisy neighbour: sequential requests to `quiet`, {seconds} s per case");
    println!("| neighbours | p50 (ms) | p99 (ms) | requests | spinners cut after (s) |");
    println!("|---|---|---|---|---|");
    for (label, spinner) in [
        ("none", None),
        ("8 wasm guests computing", Some("/spinner/loop")),
        ("8 process instances computing", Some("/spin-process")),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = spinner
            .into_iter()
            .flat_map(|path| std::iter::repeat_n(path, 8))
            .map(|path| {
                let (gateway, stop) = (gateway.clone(), stop.clone());
                std::thread::spawn(move || spin(&gateway, path, &stop))
            })
            .collect();
        if !spinners.is_empty() {
            // Every spinner busy before measuring.
            std::thread::sleep(Duration::from_millis(500));
        }
        let latencies = sequential(&gateway, Duration::from_secs(seconds.into()))?;
        stop.store(true, Ordering::Relaxed);
        let mut cut = Vec::new();
        for s in spinners {
            cut.extend(s.join().expect("a spinner thread")?);
        }
        let (p50, p99) = percentiles(latencies.clone());
        let cut = if cut.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", median(cut))
        };
        println!("| {label} | {p50:.2} | {p99:.2} | {} | {cut} |", latencies.len());
    }

    let admin = Admin::of(&node)?;
    let hello_url = format!("{}/hello", node.gateway);
    wrk(&hello_url, 2, 32)?;
    eprintln!(
        "saturation: wrk at full speed for {saturation_seconds} s, alone and with {rate} events/s to each handler"
    );
    let alone = wrk(&hello_url, saturation_seconds, 32)?;
    let before = handled(&admin).await?;
    let publishing = {
        let (gateway, token) = (node.gateway.clone(), admin_token(&node)?);
        tokio::spawn(publish(gateway, token, rate, saturation_seconds))
    };
    let url = hello_url.clone();
    let loaded = tokio::task::spawn_blocking(move || wrk(&url, saturation_seconds, 32)).await??;
    let published = publishing.await??;
    let after = handled(&admin).await?;
    println!();
    // The node inherits the environment: GALE_DELIVERY_SHARE sets its share.
    match std::env::var("GALE_DELIVERY_SHARE") {
        Ok(share) => println!("delivery share: {share} % (GALE_DELIVERY_SHARE)"),
        Err(_) => println!("delivery share: 25 % (the default)"),
    }
    println!(
        "| HTTP alone (req/s) | HTTP with the event streams (req/s) | HTTP lost | handler | published | handled in the window | lag left |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, name) in ["python-handler", "wasm-handler"].iter().enumerate() {
        let done = after[i].0 - before[i].0;
        println!(
            "| {:.0} | {:.0} | {:.1} % | {name} | {published} | {done} ({:.1}/s against {rate}/s) | {} |",
            alone.rps,
            loaded.rps,
            100.0 * (1.0 - loaded.rps / alone.rps),
            done as f64 / f64::from(saturation_seconds),
            after[i].1,
        );
    }
    println!();
    println!(
        "CPU per event (the functions' CPU time over their invocations): Python {:.2} ms, wasm {:.2} ms",
        cpu_per_invocation(&admin, "python-handler").await?,
        cpu_per_invocation(&admin, "wasm-handler").await?
    );
    Ok(())
}

/// A function's CPU time per invocation so far, in ms.
async fn cpu_per_invocation(admin: &Admin, function: &str) -> Result<f64> {
    let info = admin.get(&format!("/v1/functions/{function}")).await?;
    let stats = &info["stats"];
    let invocations = stats["invocations"].as_f64().unwrap_or(0.0).max(1.0);
    Ok(stats["cpu_us"].as_f64().unwrap_or(0.0) / invocations / 1000.0)
}

/// POSTs `path` over and over until told to stop; returns how long each
/// request took (each ends at the function's timeout).
fn spin(gateway: &str, path: &str, stop: &AtomicBool) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut client = RawClient::connect(gateway)?;
        // The node answers 504 when it cuts the spinner.
        let _ = client.post(path, "", b"");
        took.push(started.elapsed().as_secs_f64());
    }
    Ok(took)
}

/// Sequential requests to the quiet function for `how_long`; their latencies in ms.
fn sequential(gateway: &str, how_long: Duration) -> Result<Vec<f64>> {
    let mut client = RawClient::connect(gateway)?;
    let mut latencies = Vec::new();
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let started = Instant::now();
        client.post("/quiet", "", b"").context("the quiet function")?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
    };
    (at(0.5).unwrap_or(f64::NAN), at(0.99).unwrap_or(f64::NAN))
}

fn admin_token(node: &Node) -> Result<String> {
    Ok(std::fs::read_to_string(node.dir.join("token"))?
        .trim()
        .to_string())
}

/// Publishes `rate` events/s to each handler's topic for `seconds`;
/// returns how many went to each.
async fn publish(gateway: String, token: String, rate: u32, seconds: u32) -> Result<u64> {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let total = u64::from(rate) * u64::from(seconds);
    for i in 0..total {
        tick.tick().await;
        for (topic, ty, data) in [
            ("python-work", "work", "{}".to_string()),
            ("wasm-work", "work", WASM_WORK_ROUNDS.to_string()),
        ] {
            let (http, url, token) = (
                http.clone(),
                format!("{gateway}/_gale/topics/{topic}/events"),
                token.clone(),
            );
            tokio::spawn(async move {
                let _ = http
                    .post(url)
                    .bearer_auth(token)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("{topic}-{i}"))
                    .header("ce-source", "/bench")
                    .header("ce-type", ty)
                    .header("content-type", "application/json")
                    .body(data)
                    .send()
                    .await;
            });
        }
    }
    Ok(total)
}

/// (acked, lag) of each handler's subscription.
async fn handled(admin: &Admin) -> Result<[(u64, u64); 2]> {
    let mut out = [(0, 0); 2];
    for (i, (topic, sub)) in [("python-work", "python-handler"), ("wasm-work", "wasm-handler")]
        .iter()
        .enumerate()
    {
        let t = admin.topic(topic).await?;
        let s = t["subscriptions"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == *sub))
            .with_context(|| format!("no subscription {sub} on {topic}"))?;
        out[i] = (s["acked"].as_u64().unwrap_or(0), s["lag"].as_u64().unwrap_or(0));
    }
    Ok(out)
}
