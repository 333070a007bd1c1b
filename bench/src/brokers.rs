//! The `brokers` scenario: a broker source from messages waiting on the
//! broker to events durable in a Gale topic with the messages acknowledged,
//! against the broker's own client library consuming and acknowledging the
//! same number of messages without Gale, in the same run; then broker
//! message → handler start latency at a steady rate.
//!
//! NATS JetStream and RabbitMQ run on the machine's shared servers
//! (127.0.0.1:4222, 127.0.0.1:5672 as guest); every stream and queue is the
//! run's own and is deleted at the end. The client alone acknowledges as
//! Gale does: JetStream message by message, RabbitMQ with `multiple` once
//! per 250 messages.

use crate::admin::Admin;
use crate::{Node, cpu_seconds, guest, median};
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NATS: &str = "nats://127.0.0.1:4222";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
        m.push_str(&format!("[topics.nats{r}]\n[topics.rabbit{r}]\n"));
    }
    let deploy = |sources: &str| tokio::task::block_in_place(|| node.deploy(&format!("{m}{sources}")));
    deploy("")?;

    // Throughput: each round's stream is read by the client alone and by a
    // Gale source, in alternating order.
    let mut nats = Rounds::default();
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
        nats.add(r, "async-nats", gale, client_side, gale_first);
    }
    nats.report("NATS JetStream → durable topic events, acked", "async-nats");

    // RabbitMQ: each round's queue is read by lapin alone and by a Gale
    // source, in alternating order.
    let (_amqp_connection, amqp) = amqp_channel().await?;
    let mut rabbit = Rounds::default();
    for r in 1..=rounds {
        let gale_first = r % 2 == 0;
        let mut gale = (0.0, 0.0);
        let mut client_side = (0.0, 0.0);
        for turn in 0..2 {
            let queue = format!("gbench-{run}-{r}-{turn}");
            amqp.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
            amqp_fill(&amqp, &queue, messages).await?;
            if (turn == 0) == gale_first {
                sources.push_str(&format!(
                    "[sources.rabbit{r}]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\nqueue = \"{queue}\"\ntopic = \"rabbit{r}\"\n"
                ));
                let cpu = cpu_seconds(node.pid);
                let started = Instant::now();
                deploy(&sources)?;
                admin
                    .wait_published(&format!("rabbit{r}"), messages as u64, Duration::from_secs(600))
                    .await?;
                amqp_drained(&amqp, &queue).await?;
                let secs = started.elapsed().as_secs_f64();
                gale = (
                    messages as f64 / secs,
                    (cpu_seconds(node.pid) - cpu) * 1e6 / messages as f64,
                );
            } else {
                client_side = amqp_consume(&queue, messages).await?;
            }
        }
        rabbit.add(r, "lapin", gale, client_side, gale_first);
    }
    rabbit.report("RabbitMQ queue → durable topic events, acked  ", "lapin");

    // Latency: a handler subscribed to the sources' topic, fed by NATS,
    // then by RabbitMQ.
    let stream = format!("{run}_LAT");
    let subject = format!("gbench.{run}.lat");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await?;
    let queue = format!("gbench-{run}-lat");
    amqp.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await?;
    deploy(&format!(
        "[sources.lat-nats]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{subject}\"\nstream = \"{stream}\"\ntopic = \"latency\"\n\
         [sources.lat-rabbit]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\nqueue = \"{queue}\"\ntopic = \"latency\"\n"
    ))?;
    admin.wait_streaming("lat-nats").await?;
    admin.wait_streaming("lat-rabbit").await?;
    let total = (rate * seconds) as usize;
    let mut handled = 0;
    for broker in ["NATS JetStream", "RabbitMQ"] {
        // Warm up the handler (code loaded, first instance), then a steady rate.
        let mut sent = 0;
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while sent <= total {
            if sent == 1 {
                handled += 1;
                admin
                    .wait_acked("latency", handled as u64, Duration::from_secs(60))
                    .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                tick.reset();
            } else if sent > 1 {
                tick.tick().await;
            }
            // The warm-up message is not counted.
            let tag = if sent == 0 { "warm-up" } else { broker };
            let body = format!("{{\"t\":{},\"broker\":\"{tag}\"}}", now_ms());
            if broker == "RabbitMQ" {
                // Confirms are not awaited: the broker's answer is not part of the path measured.
                drop(
                    amqp.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await?,
                );
            } else {
                client.publish(subject.clone(), body.into()).await?;
            }
            sent += 1;
        }
        handled += total;
        admin
            .wait_acked("latency", handled as u64, Duration::from_secs(120))
            .await?;
        let starts = admin.handler_starts("h", handled).await?;
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
                if event["data"]["broker"] != broker {
                    continue;
                }
                if let (Some(t), Some(start)) = (
                    event["data"]["t"].as_f64(),
                    event["id"].as_str().and_then(|id| starts.get(id)),
                ) {
                    latencies.push((start - t).max(0.0));
                }
            }
        }
        if latencies.len() < total {
            bail!(
                "latency: {} of {total} {broker} messages matched a handler start",
                latencies.len()
            );
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "latency {broker} publish → handler start at {rate} msgs/s for {:.0} s ({} messages): p50 {:.1} ms, p99 {:.1} ms (goal p99 < 20 ms)",
            started.elapsed().as_secs_f64(),
            latencies.len(),
            pct(0.5),
            pct(0.99)
        );
    }

    for r in 1..=rounds {
        let _ = js.delete_stream(format!("{run}_{r}")).await;
        for turn in 0..2 {
            let queue = format!("gbench-{run}-{r}-{turn}");
            let _ = amqp.queue_delete(queue.as_str().into(), Default::default()).await;
        }
    }
    let _ = js.delete_stream(&stream).await;
    let _ = amqp.queue_delete(queue.as_str().into(), Default::default()).await;
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

/// A channel in confirm mode on the machine's RabbitMQ, and its connection.
async fn amqp_channel() -> Result<(Connection, Channel)> {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .context("RabbitMQ at 127.0.0.1:5672 (guest/guest)")?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, channel))
}

/// Publishes `n` persistent messages to `queue`, 1,000 confirms in flight.
async fn amqp_fill(channel: &Channel, queue: &str, n: u32) -> Result<()> {
    let mut confirms = Vec::with_capacity(1000);
    for i in 0..n as u64 {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body(i).as_bytes(),
                    properties,
                )
                .await?,
        );
        if confirms.len() == 1000 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
    }
    for c in confirms {
        c.await?;
    }
    Ok(())
}

/// Waits until `queue` holds no ready message and no consumer's
/// unacknowledged one.
async fn amqp_drained(channel: &Channel, queue: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await?;
        if q.message_count() == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("queue {queue} still holds {} messages", q.message_count());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Consumes `n` messages of `queue` with lapin alone (prefetch 500, as
/// Gale's source), acking with `multiple` every 250; messages/s and CPU µs
/// per message of this process while it did.
async fn amqp_consume(queue: &str, n: u32) -> Result<(f64, f64)> {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.basic_qos(500, BasicQosOptions::default()).await?;
    let me = std::process::id();
    let cpu = cpu_seconds(me);
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for i in 1..=n {
        let delivery = consumer.next().await.context("the consumer ended")??;
        if i % 250 == 0 || i == n {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(me) - cpu) * 1e6 / n as f64;
    conn.close(200, "done".into()).await?;
    Ok((n as f64 / secs, cpu))
}

/// One broker's throughput rounds: messages/s and µs of CPU per message,
/// of a Gale source and of the client library alone.
#[derive(Default)]
struct Rounds {
    ours: Vec<f64>,
    theirs: Vec<f64>,
    ratios: Vec<f64>,
    our_cpu: Vec<f64>,
    their_cpu: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, r: u32, client: &str, gale: (f64, f64), alone: (f64, f64), gale_first: bool) {
        println!(
            "  round {r}: Gale {:.0} msgs/s ({:.1} µs CPU each), {client} alone {:.0} msgs/s ({:.1} µs CPU each){}",
            gale.0,
            gale.1,
            alone.0,
            alone.1,
            if gale_first { ", Gale first" } else { "" }
        );
        self.ratios.push(gale.0 / alone.0);
        self.ours.push(gale.0);
        self.theirs.push(alone.0);
        self.our_cpu.push(gale.1);
        self.their_cpu.push(alone.1);
    }

    /// The medians over the rounds (the ratio is the median of each
    /// round's ratio, not the ratio of the medians).
    fn report(self, what: &str, client: &str) {
        let rounds = self.ratios.len();
        println!(
            "{what}     {:>9.0} msgs/s = {:.0} % of {client} consuming and acking alone ({:.0} msgs/s); median of {rounds} rounds' ratios (goal ≥ 50 %)",
            median(self.ours),
            median(self.ratios) * 100.0,
            median(self.theirs)
        );
        println!(
            "  CPU per message: Gale node {:.1} µs, the client alone {:.1} µs",
            median(self.our_cpu),
            median(self.their_cpu)
        );
    }
}
