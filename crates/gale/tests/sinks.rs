//! Sinks (`[sinks.NAME]`): a topic's events forwarded to a broker with its
//! confirmation, retried, then dead-lettered. Against the machine's real
//! NATS server (127.0.0.1:4222, JetStream); each test uses its own stream
//! and subjects and deletes its stream.

mod common;

use async_nats::jetstream;
use common::{TestNode, unique};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const NATS: &str = "nats://127.0.0.1:4222";

/// Publishes `n` events to a topic through the gateway.
async fn publish(node: &TestNode, topic: &str, n: u32) {
    let client = reqwest::Client::new();
    for i in 0..n {
        let r = client
            .post(node.url(&format!("/_gale/topics/{topic}/events")))
            .bearer_auth(&node.token)
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("ev-{i}"))
            .header("ce-source", "/test")
            .header("ce-type", "order.placed")
            .header("ce-region", "eu")
            .header("content-type", "application/json")
            .body(json!({ "n": i }).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_jetstream_stream_once_each_in_binary_mode() {
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let stream = unique("GALE_S");
    let subject = unique("gales");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"out\"\n[topics.orders]\n[sinks.to-nats]\ntype = \"nats\"\nurl = \"{NATS}\"\ntopic = \"orders\"\nto = \"{subject}.orders\"\n"
    );
    node.deploy_from(&manifest, Path::new(".")).await.unwrap();
    publish(&node, "orders", 50).await;

    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("50 messages within 20 s")
            .unwrap()
            .unwrap();
        m.ack().await.unwrap();
        got.push(m);
    }
    for (i, m) in got.iter().enumerate() {
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["n"], i, "in order, the data as the body");
        let h = m.headers.as_ref().unwrap();
        assert_eq!(h.get("ce-id").unwrap().as_str(), format!("ev-{i}"));
        assert_eq!(h.get("ce-type").unwrap().as_str(), "order.placed");
        assert_eq!(h.get("ce-region").unwrap().as_str(), "eu");
        assert_eq!(h.get("Content-Type").unwrap().as_str(), "application/json");
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), format!("ev-{i}"));
    }
    // Nothing more: once each.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, 50);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_is_retried_then_dead_lettered() {
    // No stream captures the subject: JetStream refuses every publish.
    let subject = unique("galenone");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"out\"\n[topics.orders]\n[sinks.nowhere]\ntype = \"nats\"\nurl = \"{NATS}\"\ntopic = \"orders\"\nto = \"{subject}\"\nmax_attempts = 3\nbackoff = {{ initial = \"50ms\", max = \"100ms\" }}\ndead_letter = \"orders-unsent\"\n"
    );
    node.deploy_from(&manifest, Path::new(".")).await.unwrap();
    publish(&node, "orders", 2).await;
    let mut dead = node
        .wait_topic_events("orders-unsent", 2, Duration::from_secs(30))
        .await;
    // Each event is retried on its own backoff, with jitter: either may be
    // dead-lettered first.
    dead.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_string());
    for (i, e) in dead.iter().enumerate() {
        assert_eq!(e["id"], format!("ev-{i}"));
        assert_eq!(e["galeattempts"], 3);
        assert_eq!(e["galesink"], "nowhere");
        let error = e["galeerror"].as_str().unwrap();
        assert!(
            error.contains("no JetStream stream") && error.contains("jetstream = false"),
            "{error}"
        );
    }

    // A bad sink is refused at deploy, naming the key.
    let e = node
        .deploy_from(
            "[app]\nname = \"out\"\n[topics.orders]\n[sinks.bad]\ntype = \"nats\"\nurl = \"http://h\"\ntopic = \"orders\"\nto = \"x\"\n",
            Path::new("."),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("sinks.bad.url"), "{e:?}");
    let e = node
        .deploy_from(
            "[app]\nname = \"out\"\n[sinks.bad]\ntype = \"nats\"\nurl = \"nats://h\"\ntopic = \"missing\"\nto = \"x\"\n",
            Path::new("."),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("sinks.bad.topic"), "{e:?}");
}

/// A sink to RabbitMQ: each event a persistent message on the queue, once,
/// in order, its data the body and its attributes `cloudEvents:` headers;
/// an unroutable destination (no such queue) is retried, then parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_rabbitmq_queue_once_each_and_unroutable_ones_are_parked() {
    use common::rabbitmq::{AMQP, client, declare, delete};
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    let (_conn, channel) = client(AMQP).await;
    let queue = unique("gale-sink-");
    declare(&channel, &queue, false).await;
    let nowhere = unique("gale-sink-none-");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"out\"\n[topics.orders]\n[sinks.to-rabbit]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\ntopic = \"orders\"\nto = \"{queue}\"\n\
         [sinks.to-nowhere]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\ntopic = \"orders\"\nto = \"{nowhere}\"\nmax_attempts = 2\nbackoff = {{ initial = \"50ms\", max = \"50ms\" }}\ndead_letter = \"orders-unsent\"\n"
    );
    node.deploy_from(&manifest, Path::new(".")).await.unwrap();
    publish(&node, "orders", 20).await;

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    for i in 0..20 {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("20 messages within 20 s")
            .unwrap()
            .unwrap();
        let body: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(body["n"], i, "in order, the data as the body");
        let p = &d.properties;
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), format!("ev-{i}"));
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "application/json");
        assert_eq!(p.delivery_mode(), &Some(2));
        let headers = p.headers().as_ref().unwrap();
        let header = |k: &str| match headers.inner().get(k) {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(header("cloudEvents:type"), "order.placed");
        assert_eq!(header("cloudEvents:region"), "eu");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let dead = node
        .wait_topic_events("orders-unsent", 20, Duration::from_secs(30))
        .await;
    assert_eq!(dead[0]["galesink"], "to-nowhere");
    assert_eq!(dead[0]["galeattempts"], 2);
    assert!(
        dead[0]["galeerror"].as_str().unwrap().contains(&nowhere),
        "{}",
        dead[0]
    );
    // Once each: nothing more waits in the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    delete(&channel, &queue).await;
}
