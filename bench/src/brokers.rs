//! The `brokers` scenario: a broker source from messages waiting on the
//! broker to events durable in a Gale topic with the messages acknowledged,
//! against the broker's own client library consuming and acknowledging the
//! same number of messages without Gale, in the same run; then broker
//! message → handler start latency at a steady rate.
//!
//! NATS JetStream runs on the machine's shared server (127.0.0.1:4222);
//! every stream is the run's own and is deleted at the end.

use crate::admin::Admin;
use crate::{Node, cpu_seconds, guest, median};
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NATS: &str = "nats://127.0.0.1:4222";

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

/// A message body of about 200 bytes.
fn body(n: u64) -> String {
    format!(
        "{{\"order\":{n},\"sku\":\"sku-{}\",\"qty\":{},\"note\":\"{}\"}}",
        n % 97,
        n % 5 + 1,
        "x".repeat(140)
    )
}

pub async fn run(messages: u32, rounds: u32, rate: u32, seconds: u32) -> Result<()> {
    let handler = guest("tests/guests", "testbed")?.with_file_name("gale_test_handler.wasm");
    let node = Node::start_with(&["--log-keep", "1000000"])?;
    let admin = Admin::of(&node)?;
    let client = async_nats::connect(NATS)
        .await
        .context("NATS with JetStream at 127.0.0.1:4222")?;
    let js = jetstream::new(client.clone());
    let run = format!("B{}", std::process::id());
    let rounds = rounds.max(1);

    let mut m = String::from("[app]\nname = \"brokers\"\n[topics.latency]\n");
    m.push_str(&format!(
        "[functions.h]\nsource = \"{}\"\n[[functions.h.events]]\ntopic = \"latency\"\nmax_concurrency = 64\n",
        handler.display()
    ));
    for r in 1..=rounds {
        m.push_str(&format!("[topics.nats{r}]\n"));
    }
    let deploy = |sources: &str| tokio::task::block_in_place(|| node.deploy(&format!("{m}{sources}")));
    deploy("")?;

    // Throughput: each round's stream is read by the client alone and by a
    // Gale source, in alternating order.
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
    let mut sources = String::new();
    for r in 1..=rounds {
        let stream = format!("{run}_{r}");
        let subject = format!("gbench.{run}.{r}");
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await?;
        fill(&js, &format!("{subject}.orders"), messages).await?;
        let gale_first = r % 2 == 1;
        let mut gale = (0.0, 0.0);
        let mut client_side = (0.0, 0.0);
        for turn in 0..2 {
            if (turn == 0) == gale_first {
                sources.push_str(&format!(
                    "[sources.nats{r}]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{subject}.>\"\nstream = \"{stream}\"\ntopic = \"nats{r}\"\n"
                ));
                let cpu = cpu_seconds(node.pid);
                let started = Instant::now();
                deploy(&sources)?;
                admin
                    .wait_published(&format!("nats{r}"), messages as u64, Duration::from_secs(600))
                    .await?;
                let consumer: PullConsumer = js
                    .get_stream(&stream)
                    .await?
                    .get_consumer(&format!("gale_brokers_nats{r}"))
                    .await
                    .map_err(|e| anyhow::anyhow!("the source's consumer: {e}"))?;
                wait_acked(consumer, messages).await?;
                let secs = started.elapsed().as_secs_f64();
                gale = (
                    messages as f64 / secs,
                    (cpu_seconds(node.pid) - cpu) * 1e6 / messages as f64,
                );
            } else {
                client_side = consume(&js, &stream, messages).await?;
            }
        }
        println!(
            "  round {r}: Gale {:.0} msgs/s ({:.1} µs CPU each), async-nats alone {:.0} msgs/s ({:.1} µs CPU each){}",
            gale.0,
            gale.1,
            client_side.0,
            client_side.1,
            if gale_first { ", Gale first" } else { "" }
        );
        ratios.push(gale.0 / client_side.0);
        ours.push(gale.0);
        theirs.push(client_side.0);
        our_cpu.push(gale.1);
        their_cpu.push(client_side.1);
    }
    println!(
        "NATS JetStream → durable topic events, acked     {:>9.0} msgs/s = {:.0} % of async-nats consuming and acking alone ({:.0} msgs/s); median of {rounds} rounds' ratios (goal ≥ 50 %)",
        median(ours),
        median(ratios) * 100.0,
        median(theirs)
    );
    println!(
        "  CPU per message: Gale node {:.1} µs, the client alone {:.1} µs",
        median(our_cpu),
        median(their_cpu)
    );

    // Latency: a handler subscribed to the source's topic.
    let stream = format!("{run}_LAT");
    let subject = format!("gbench.{run}.lat");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await?;
    deploy(&format!(
        "[sources.lat]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{subject}\"\nstream = \"{stream}\"\ntopic = \"latency\"\n"
    ))?;
    admin.wait_streaming("lat").await?;
    // Warm up the handler (code loaded, first instance).
    js.publish(subject.clone(), format!("{{\"t\":{}}}", now_ms()).into())
        .await?
        .await?;
    admin.wait_acked("latency", 1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (rate * seconds) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        acks.push(
            js.publish(subject.clone(), format!("{{\"t\":{}}}", now_ms()).into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    admin
        .wait_acked("latency", total as u64 + 1, Duration::from_secs(120))
        .await?;
    let started = admin.handler_starts("h", total + 1).await?;
    let mut latencies = Vec::with_capacity(total);
    let mut after = 0u64;
    loop {
        let events = admin
            .get(&format!("/v1/topics/latency/events?after={after}&limit=1000"))
            .await?;
        let events = events.as_array().context("events are a list")?;
        if events.is_empty() {
            break;
        }
        for e in events {
            after = e["seq"].as_u64().unwrap_or(after);
            let event = &e["event"];
            if let (Some(t), Some(start)) = (
                event["data"]["t"].as_f64(),
                event["id"].as_str().and_then(|id| started.get(id)),
            ) {
                latencies.push((start - t).max(0.0));
            }
        }
    }
    if latencies.len() < total {
        bail!(
            "latency: {} of {total} messages matched a handler start",
            latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "latency NATS publish → handler start at {rate} msgs/s for {seconds} s ({} messages): p50 {:.1} ms, p99 {:.1} ms (goal p99 < 20 ms)",
        latencies.len(),
        pct(0.5),
        pct(0.99)
    );

    for r in 1..=rounds {
        let _ = js.delete_stream(format!("{run}_{r}")).await;
    }
    let _ = js.delete_stream(&stream).await;
    let dir = node.dir.clone();
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Publishes `n` messages, 1,000 acks in flight at a time.
async fn fill(js: &jetstream::Context, subject: &str, n: u32) -> Result<()> {
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n as u64 {
        acks.push(js.publish(subject.to_string(), body(i).into()).await?);
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

/// Consumes `n` messages of `stream` with a durable pull consumer of its
/// own, acking each as Gale does; messages/s and CPU µs per message of
/// this process while it did.
async fn consume(js: &jetstream::Context, stream: &str, n: u32) -> Result<(f64, f64)> {
    let consumer: PullConsumer = js
        .get_stream(stream)
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench_client".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 2000,
            ..Default::default()
        })
        .await?;
    let me = std::process::id();
    let cpu = cpu_seconds(me);
    let started = Instant::now();
    let mut messages = consumer.stream().max_messages_per_batch(500).messages().await?;
    let client = js.client();
    for _ in 0..n {
        let m = messages.next().await.context("the consumer ended")??;
        if let Some(reply) = m.reply.clone() {
            client.publish(reply, bytes::Bytes::new()).await?;
        }
    }
    client.flush().await?;
    wait_acked(consumer, n).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok((n as f64 / secs, (cpu_seconds(me) - cpu) * 1e6 / n as f64))
}

/// Waits until the consumer's ack floor covers `n` messages.
async fn wait_acked(mut consumer: PullConsumer, n: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = consumer.info().await?;
        if info.ack_floor.consumer_sequence >= n as u64 && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("consumer did not ack {n} messages: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
