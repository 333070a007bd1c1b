//! The `events` scenario: how fast events flow from publishers over HTTP to
//! wasm handlers, measured against the embedded engine's raw durable-append
//! rate in the same run (the ceiling: no HTTP, no dispatch, no wasm).

use crate::{AsyncRawClient, JSON, Node, cpu_seconds, guest, median};
use anyhow::{Context, Result, bail};
use gale_store::{Embedded, NewEvent, TopicConfig, Topics};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Events per publish request in the batched measurement.
const BATCH: u32 = 100;
/// Subscriptions of the fan-out measurement.
const FAN_OUT: u32 = 10;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

fn event_json(id: &str, ty: &str) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/bench", "type": ty,
        "datacontenttype": "application/json", "data": { "order": id, "qty": 1 }
    })
}

pub async fn run(events: u32, publishers: u32, rate: u32, seconds: u32, rounds: u32) -> Result<()> {
    let testbed = guest("tests/guests", "testbed")?;
    let handler = testbed.with_file_name("gale_test_handler.wasm");

    let node = Node::start_with(&["--log-keep", "1000000"])?;
    let mut manifest = String::from("[app]\nname = \"bench\"\n");
    for t in [
        "unbatched",
        "unbatched-warm",
        "unbatched-http",
        "batched",
        "one",
        "fan",
        "latency",
    ] {
        manifest.push_str(&format!("[topics.{t}]\n"));
    }
    let function = |name: &str, wasm: &std::path::Path, trigger: &str| {
        format!(
            "[functions.{name}]\nsource = \"{}\"\n[[functions.{name}.events]]\n{trigger}\n",
            wasm.display()
        )
    };
    let wide = "max_concurrency = 64";
    manifest.push_str(&function(
        "unbatched",
        &handler,
        &format!("topic = \"unbatched\"\n{wide}"),
    ));
    // The same handler with warm instances: what `instance_reuse` buys.
    manifest.push_str(&format!(
        "[functions.unbatched-warm]\nsource = \"{}\"\ninstance_reuse = 128\n\
         [[functions.unbatched-warm.events]]\ntopic = \"unbatched-warm\"\n{wide}\n",
        handler.display()
    ));
    manifest.push_str(&function(
        "unbatched-http",
        &testbed,
        &format!("topic = \"unbatched-http\"\n{wide}"),
    ));
    manifest.push_str(&function(
        "batched",
        &handler,
        &format!("topic = \"batched\"\n{wide}\nbatch_size = 100"),
    ));
    manifest.push_str(&function("one", &testbed, "topic = \"one\""));
    for i in 0..FAN_OUT {
        manifest.push_str(&function(&format!("fan{i}"), &testbed, "topic = \"fan\""));
    }
    manifest.push_str(&function(
        "latency",
        &handler,
        &format!("topic = \"latency\"\n{wide}"),
    ));
    node.deploy(&manifest)?;
    let token = std::fs::read_to_string(node.dir.join("token"))?
        .trim()
        .to_string();
    let bench = Bench {
        http: reqwest::Client::builder().pool_max_idle_per_host(256).build()?,
        gateway: node.gateway.clone(),
        admin: node.admin.clone(),
        token,
        pid: node.pid,
    };

    // The ceiling and the unbatched measurement in turn, so that each ratio
    // compares two figures taken moments apart on the same machine.
    let mut ceilings = Vec::new();
    let mut unbatched = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds.max(1) {
        let ceiling = raw_append(events, publishers).await?;
        let ids = round * events..(round + 1) * events;
        let e2e = bench
            .throughput("unbatched", &["unbatched"], ids, publishers, 1, "noop")
            .await?;
        eprintln!(
            "round {}: ceiling {ceiling:.0}/s, unbatched {e2e:.0}/s = {:.0} %",
            round + 1,
            e2e / ceiling * 100.0
        );
        ceilings.push(ceiling);
        unbatched.push(e2e);
        ratios.push(e2e / ceiling);
    }
    let (ceiling, unbatched, ratio) = (median(ceilings), median(unbatched), median(ratios));
    let unbatched_warm = bench
        .throughput(
            "unbatched-warm",
            &["unbatched-warm"],
            0..events / 2,
            publishers,
            1,
            "noop",
        )
        .await?;
    let unbatched_http = bench
        .throughput(
            "unbatched-http",
            &["unbatched-http"],
            0..events / 2,
            publishers,
            1,
            "ok",
        )
        .await?;
    let batched = bench
        .throughput("batched", &["batched"], 0..events, publishers, BATCH, "noop")
        .await?;
    // Fan-out with a handler that takes 20 ms, so a subscription's rate is
    // set by its concurrency, not by the two cores: the question is whether
    // ten subscriptions slow each other down.
    let fan_events = (events / 10).max(1000);
    let single = bench
        .throughput("one", &["one"], 0..fan_events, publishers, 1, "slow")
        .await?;
    let subs: Vec<String> = (0..FAN_OUT).map(|i| format!("fan{i}")).collect();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let fan = bench
        .throughput("fan", &subs, 0..fan_events, publishers, 1, "slow")
        .await?;
    let (p50, p99) = bench.latency(rate, seconds).await?;

    println!("\nevents: publish over HTTP → wasm handler (a fresh instance per invocation unless named)");
    println!(
        "raw durable append (embedded engine, {publishers} appenders, no HTTP) {:>9.0} events/s  (ceiling; median of {rounds})",
        ceiling
    );
    println!(
        "end to end, unbatched ({publishers} publishers, 1 event/request)       {:>9.0} events/s  = {:.0} % of the ceiling (median of the rounds' ratios; goals ≥ 10,000/s, ≥ 50 %)",
        unbatched,
        ratio * 100.0
    );
    println!(
        "  the same with instance_reuse = 128 (warm instances)             {:>9.0} events/s  = {:.0} % of the ceiling",
        unbatched_warm,
        unbatched_warm / ceiling * 100.0
    );
    println!(
        "  the same into a wasi:http component (events as requests)       {:>9.0} events/s  = {:.0} % of the ceiling",
        unbatched_http,
        unbatched_http / ceiling * 100.0
    );
    println!(
        "end to end, batched ({BATCH} events/request, batch_size {BATCH})       {:>9.0} events/s  = {:.0} % of the ceiling",
        batched,
        batched / ceiling * 100.0
    );
    println!(
        "latency publish → handler start at {rate} events/s for {seconds} s: p50 {p50:.1} ms, p99 {p99:.1} ms (goal p99 < 10 ms; ms resolution)"
    );
    println!(
        "fan-out, handler sleeping 20 ms: one subscription {single:.0} events/s; each of {FAN_OUT} subscriptions {fan:.0} events/s = {:.0} % (goal ≥ 80 %)",
        fan / single * 100.0
    );
    Ok(())
}

/// Events/s of `publishers` tasks appending one event per call straight to
/// the embedded engine: every append durable before it returns.
async fn raw_append(events: u32, publishers: u32) -> Result<f64> {
    let dir = tempfile_dir()?;
    let store = Embedded::open(&dir)?;
    store
        .put_topic(
            "raw",
            TopicConfig {
                max_age_ms: 3_600_000,
                max_bytes: 1 << 30,
                dedup_window_ms: 600_000,
            },
        )
        .await?;
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= events {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let id = format!("raw-{i}");
                    let body = serde_json::to_vec(&event_json(&id, "ok"))?;
                    store
                        .publish(
                            "raw",
                            vec![NewEvent {
                                id,
                                source: "/bench".into(),
                                partition_key: None,
                                body,
                            }],
                        )
                        .await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gale-bench-raw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct Bench {
    http: reqwest::Client,
    gateway: String,
    admin: String,
    token: String,
    /// The node's process, whose CPU time each measurement reports.
    pid: u32,
}

impl Bench {
    /// Publishes the events numbered `ids` (of type `ty`, `per_request` per
    /// request) and returns events/s from the first publish until the
    /// slowest of `subs` has handled them all. Each subscription must have
    /// handled `ids.start` events before.
    async fn throughput(
        &self,
        topic: &str,
        subs: &[&str],
        ids: std::ops::Range<u32>,
        publishers: u32,
        per_request: u32,
        ty: &str,
    ) -> Result<f64> {
        let (events, end) = (ids.len() as u32, ids.end);
        let next = Arc::new(AtomicU32::new(ids.start));
        let path = format!("/_gale/topics/{topic}/events");
        let addr = self.gateway.trim_start_matches("http://").to_string();
        let (started, cpu, own) = (
            Instant::now(),
            cpu_seconds(self.pid),
            cpu_seconds(std::process::id()),
        );
        // Every publisher on one thread of its own with one kept-alive
        // connection each, the way wrk drives its connections: a lean load
        // generator leaves the two cores to the node under test.
        let (auth, ty, topic_name) = (
            format!("Authorization: Bearer {}\r\n", self.token),
            ty.to_string(),
            topic.to_string(),
        );
        let publishing = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut clients = Vec::new();
                for _ in 0..publishers {
                    clients.push(AsyncRawClient::connect(&addr).await?);
                }
                let (auth, ty, topic, path) =
                    (Arc::new(auth), Arc::new(ty), Arc::new(topic_name), Arc::new(path));
                let tasks: Vec<_> = clients
                    .into_iter()
                    .map(|mut client| {
                        let (auth, ty, topic, path, next) = (
                            auth.clone(),
                            ty.clone(),
                            topic.clone(),
                            path.clone(),
                            next.clone(),
                        );
                        tokio::spawn(async move {
                            loop {
                                let first = next.fetch_add(per_request, Relaxed);
                                if first >= end {
                                    return Ok::<_, anyhow::Error>(());
                                }
                                let last = (first + per_request).min(end);
                                if per_request == 1 {
                                    let headers = format!(
                                        "{auth}ce-specversion: 1.0\r\nce-id: {topic}-{first}\r\n\
                                         ce-source: /bench\r\nce-type: {ty}\r\n{JSON}"
                                    );
                                    let body = format!("{{\"order\":{first},\"qty\":1}}");
                                    client.post(&path, &headers, body.as_bytes()).await?;
                                } else {
                                    let batch: Vec<_> = (first..last)
                                        .map(|i| event_json(&format!("{topic}-{i}"), &ty))
                                        .collect();
                                    let headers =
                                        format!("{auth}Content-Type: application/cloudevents-batch+json\r\n");
                                    client.post(&path, &headers, &serde_json::to_vec(&batch)?).await?;
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                Ok(())
            })
        });
        tokio::task::block_in_place(|| publishing.join())
            .map_err(|_| anyhow::anyhow!("the publishers' thread panicked"))??;
        let published = started.elapsed().as_secs_f64();
        self.wait_handled(topic, subs, end as u64, Duration::from_secs(300))
            .await?;
        let handled = started.elapsed().as_secs_f64();
        eprintln!(
            "{topic}: {events} events published in {published:.2} s ({:.0}/s), all handled after {handled:.2} s; \
             CPU per event: node {:.1} µs, publishers {:.1} µs",
            events as f64 / published,
            (cpu_seconds(self.pid) - cpu) * 1e6 / events as f64,
            (cpu_seconds(std::process::id()) - own) * 1e6 / events as f64
        );
        Ok(events as f64 / handled)
    }

    /// Waits until every subscription in `subs` of `topic` has acked `n` events.
    async fn wait_handled(&self, topic: &str, subs: &[&str], n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let topics: serde_json::Value = self
                .http
                .get(format!("{}/v1/topics", self.admin))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            let t = topics
                .as_array()
                .and_then(|a| a.iter().find(|t| t["name"] == topic))
                .context("topic missing")?;
            let done = subs.iter().all(|s| {
                t["subscriptions"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == *s))
                    .and_then(|x| x["acked"].as_u64())
                    .is_some_and(|acked| acked >= n)
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{topic}: not all events handled in time: {t}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes at a steady `rate` for `seconds` and returns the p50 and
    /// p99 of publish → handler start, in ms (from the invocation logs).
    async fn latency(&self, rate: u32, seconds: u32) -> Result<(f64, f64)> {
        let total = rate * seconds;
        let url = format!("{}/_gale/topics/latency/events", self.gateway);
        let sent = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            tick.tick().await;
            let (http, token, url, sent) = (self.http.clone(), self.token.clone(), url.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("lat-{i}");
                sent.lock().unwrap().insert(id.clone(), now_ms());
                http.post(&url)
                    .bearer_auth(&token)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/bench")
                    .header("ce-type", "noop")
                    .send()
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            t.await??;
        }
        self.wait_handled("latency", &["latency"], total as u64, Duration::from_secs(120))
            .await?;
        // Logs are written in batches: wait until all are there.
        let mut lat = Vec::with_capacity(total as usize);
        let (mut after, deadline) = (0u64, Instant::now() + Duration::from_secs(30));
        while lat.len() < total as usize && Instant::now() < deadline {
            let logs: Vec<serde_json::Value> = self
                .http
                .get(format!(
                    "{}/v1/functions/latency/logs?after={after}&limit=1000",
                    self.admin
                ))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            if logs.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let sent = sent.lock().unwrap();
            for l in &logs {
                after = l["seq"].as_u64().unwrap_or(after);
                let id = l["events"][0].as_str().unwrap_or_default();
                if let (Some(t0), Some(start)) = (sent.get(id), l["started_at"].as_f64()) {
                    lat.push((start - t0).max(0.0));
                }
            }
        }
        if lat.is_empty() {
            bail!("no invocation logs of the latency handler");
        }
        lat.sort_by(f64::total_cmp);
        let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        Ok((at(0.5), at(0.99)))
    }
}
