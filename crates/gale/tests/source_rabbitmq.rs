//! The rabbitmq source against the machine's RabbitMQ (127.0.0.1:5672,
//! guest/guest): messages published with lapin reach the topic once each,
//! in queue order, from classic and quorum queues and across a restart of
//! the node; a `kill -9` of the node loses nothing and leaves nothing
//! unacknowledged; a restarted broker (a throwaway server) is reconnected
//! to; a poison message is parked; bad settings fail clearly. Each test
//! uses its own queues and deletes them.

mod common;

use common::rabbitmq::{AMQP, Broker, client, counts, declare, delete, publish, unacked};
use common::{TestNode, deploy, unique};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

fn source(queue: &str, extra: &str) -> String {
    format!(
        "[sources.q]\ntype = \"rabbitmq\"\nurl = \"{AMQP}\"\nqueue = \"{queue}\"\ntopic = \"orders\"\n{extra}\n"
    )
}

/// A plain JSON message with a `message_id`, a header and a timestamp.
fn plain(n: u32) -> (Vec<u8>, BasicProperties) {
    let mut h = FieldTable::default();
    h.insert("Region".into(), AMQPValue::LongString("eu".into()));
    h.insert("x-attempt".into(), AMQPValue::LongInt(3));
    let p = BasicProperties::default()
        .with_message_id(format!("m-{n}").into())
        .with_timestamp(1_796_637_600)
        .with_headers(h);
    (json!({ "n": n }).to_string().into_bytes(), p)
}

/// Waits until RabbitMQ shows the queue empty, with nothing handed over
/// and unacknowledged.
async fn wait_settled(conn: &lapin::Connection, queue: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, _) = counts(conn, queue).await;
        let q = queue.to_string();
        let unacked = tokio::task::spawn_blocking(move || unacked(&q)).await.unwrap();
        if ready == 0 && unacked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {ready} ready, {unacked} unacked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_classic_queue_arrive_once_in_order_across_restarts() {
    let (conn, ch) = client(AMQP).await;
    let queue = unique("gale-c-");
    declare(&ch, &queue, false).await;
    // 200 messages: plain JSON with a message_id, every 50th a CloudEvent
    // in binary mode (the `cloudEvents_` spelling at 100), every 50th
    // (offset 25) one in structured mode, and every 50th (offset 10) one
    // without any property.
    for n in 0..200u32 {
        let (body, props) = if n % 50 == 0 {
            let prefix = if n == 100 { "cloudEvents_" } else { "cloudEvents:" };
            let mut h = FieldTable::default();
            for (k, v) in [
                ("specversion", "1.0".to_string()),
                ("id", format!("ce-{n}")),
                ("source", "/shop".into()),
                ("type", "order.placed".into()),
            ] {
                h.insert(format!("{prefix}{k}").into(), AMQPValue::LongString(v.into()));
            }
            let p = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(h);
            (json!({ "n": n }).to_string().into_bytes(), p)
        } else if n % 50 == 25 {
            let event = json!({"specversion": "1.0", "id": format!("ce-{n}"), "source": "/shop", "type": "order.paid", "data": { "n": n }});
            let p = BasicProperties::default().with_content_type("application/cloudevents+json".into());
            (event.to_string().into_bytes(), p)
        } else if n % 50 == 10 {
            (
                json!({ "n": n }).to_string().into_bytes(),
                BasicProperties::default(),
            )
        } else {
            plain(n)
        };
        publish(&ch, &queue, &body, props).await;
    }

    let node = TestNode::start().await;
    let manifest = format!("[app]\nname = \"shop\"\n[topics.orders]\n{}", source(&queue, ""));
    deploy(&node, &manifest).await;
    let got = node
        .wait_topic_events("orders", 200, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 200, "once each");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>(), "in queue order");
    // A plain message: Gale's own event around the body.
    let e = &got[1];
    assert_eq!(e["type"], "gale.rabbitmq.message");
    assert_eq!(e["source"], format!("/gale/rabbitmq/%2F/{queue}"));
    assert_eq!(e["subject"], queue.as_str(), "the routing key");
    assert_eq!(e["partitionkey"], queue.as_str());
    assert_eq!(e["id"], "q/m-1", "from the message_id");
    assert_eq!(e["time"], "2026-12-07T10:00:00Z");
    assert_eq!(e["region"], "eu");
    assert_eq!(e["rmqqueue"], queue.as_str());
    assert_eq!(e["rmqvhost"], "/");
    assert_eq!(e["rmqredelivered"], "false");
    let props: Value = serde_json::from_str(e["rmqproperties"].as_str().unwrap()).unwrap();
    assert_eq!(props["headers"]["x-attempt"], 3);
    assert_eq!(props["deliveryMode"], 2);
    assert_eq!(e["datacontenttype"], "application/json");
    // Without a message_id: a fresh id.
    assert!(uuid_like(got[10]["id"].as_str().unwrap()), "{}", got[10]);
    // CloudEvents in AMQP: taken as those events.
    for n in [0, 100, 150] {
        assert_eq!(
            (&got[n]["id"], &got[n]["type"]),
            (&json!(format!("ce-{n}")), &json!("order.placed")),
            "{}",
            got[n]
        );
    }
    assert_eq!(
        (&got[25]["id"], &got[25]["type"]),
        (&json!("ce-25"), &json!("order.paid"))
    );

    let s = node.source("q").await.unwrap();
    assert_eq!(s.state, "running");
    assert!(s.position.as_deref().unwrap().contains("acked"), "{s:?}");
    wait_settled(&conn, &queue).await;

    // Node down: messages published meanwhile wait in the queue.
    let mut node = node;
    node.stop().await;
    for n in 200..250u32 {
        let (body, props) = plain(n);
        publish(&ch, &queue, &body, props).await;
    }
    let node = node.restart().await;
    node.wait_topic_events("orders", 250, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = node.topic_events("orders").await;
    assert_eq!(got.len(), 250, "no loss, no duplicates");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..250).collect::<Vec<u64>>());
    wait_settled(&conn, &queue).await;
    let s = node.wait_streaming("q").await;
    assert_eq!(s.lag_messages, Some(0), "{s:?}");

    // Removing the source leaves the queue (and anything in it) alone.
    deploy(&node, "[app]\nname = \"shop\"\n[topics.orders]\n").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts(&conn, &queue).await.1 != 0 {
        assert!(Instant::now() < deadline, "the consumer stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delete(&ch, &queue).await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// A quorum queue the source declares itself; messages published once it
/// consumes arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_gale_declares_delivers_in_order() {
    let (conn, ch) = client(AMQP).await;
    let queue = unique("gale-qq-");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"qq\"\n[topics.orders]\n{}",
        source(&queue, "declare = true\nqueue_type = \"quorum\"\nprefetch = 10")
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("q").await;
    for n in 0..100u32 {
        let (body, props) = plain(n);
        publish(&ch, &queue, &body, props).await;
    }
    let got = node
        .wait_topic_events("orders", 100, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.topic_events("orders").await.len(), 100);
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..100).collect::<Vec<u64>>());
    wait_settled(&conn, &queue).await;
    // It is a quorum queue: declaring it as classic is refused.
    let other = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    assert!(
        other
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                args
            )
            .await
            .is_err()
    );
    delete(&ch, &queue).await;
}

/// A message the source cannot take (not JSON, with `format = "json"`) is
/// parked in the dead-letter topic with the reason and its body,
/// acknowledged, and the messages behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_and_the_queue_flows_on() {
    let (conn, ch) = client(AMQP).await;
    let queue = unique("gale-p-");
    declare(&ch, &queue, false).await;
    for n in 0..10u32 {
        let (body, props) = plain(n);
        let body = if n == 3 { b"not json".to_vec() } else { body };
        publish(&ch, &queue, &body, props).await;
    }
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"p\"\n[topics.orders]\n{}",
        source(&queue, "format = \"json\"\ndead_letter = \"orders-rejected\"")
    );
    deploy(&node, &manifest).await;
    let got = node.wait_topic_events("orders", 9, Duration::from_secs(30)).await;
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    let parked = node
        .wait_topic_events("orders-rejected", 1, Duration::from_secs(10))
        .await;
    assert_eq!(parked[0]["id"], "q/m-3");
    assert!(
        parked[0]["galeerror"].as_str().unwrap().contains("JSON"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[0]["data_base64"], "bm90IGpzb24=", "the body, kept");
    let s = node.source("q").await.unwrap();
    assert_eq!((s.published, s.parked), (9, 1), "{s:?}");
    // Nothing waits for redelivery.
    wait_settled(&conn, &queue).await;
    delete(&ch, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_source_clearly_and_leave_the_others_running() {
    let node = TestNode::start().await;
    let missing = unique("gale-none-");
    let manifest = format!(
        r#"[app]
name = "bad"
[topics.t]
[sources.unreachable]
type = "rabbitmq"
url = "amqp://guest:secret@127.0.0.1:1/%2f"
queue = "q"
topic = "t"
[sources.wrongpass]
type = "rabbitmq"
url = "amqp://guest:n0pe@127.0.0.1:5672/%2f"
queue = "q"
topic = "t"
[sources.novhost]
type = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/{missing}"
queue = "q"
topic = "t"
[sources.noqueue]
type = "rabbitmq"
url = "{AMQP}"
queue = "{missing}"
topic = "t"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "t"
"#
    );
    deploy(&node, &manifest).await;
    let e = node.wait_failure("unreachable").await;
    assert!(e.contains("RabbitMQ at amqp://127.0.0.1:1"), "{e}");
    assert!(e.contains("cannot reach the broker"), "{e}");
    assert!(!e.contains("secret"), "no password in errors: {e}");
    let e = node.wait_failure("wrongpass").await;
    assert!(e.contains("refused the login of user `guest`"), "{e}");
    assert!(e.contains("user and password"), "{e}");
    assert!(!e.contains("n0pe"), "no password in errors: {e}");
    let e = node.wait_failure("novhost").await;
    assert!(e.contains(&format!("vhost `{missing}`")), "{e}");
    let e = node.wait_failure("noqueue").await;
    assert!(
        e.contains(&format!("there is no queue `{missing}` in vhost `/`")),
        "{e}"
    );
    assert!(e.contains("declare = true"), "{e}");
    // The schedule next to them fires on.
    node.wait_firing("clock").await;

    // A bad url or setting is refused at deploy, naming the key.
    for (settings, key, says) in [
        (
            "url = \"amqps://u:p@h/%2f\"\nqueue = \"q\"",
            "sources.q.url",
            "TLS",
        ),
        (
            "url = \"amqp://127.0.0.1:5672/%2f\"\nqueue = \"q\"",
            "sources.q.url",
            "user and password",
        ),
        (
            "url = \"amqp://u:p@h:5672/\"\nqueue = \"q\"",
            "sources.q.url",
            "empty vhost",
        ),
        (
            "url = \"http://u:p@h\"\nqueue = \"q\"",
            "sources.q.url",
            "not AMQP",
        ),
        ("url = \"amqp://u:p@h\"\nqueue = \"\"", "sources.q.queue", "empty"),
        (
            "url = \"amqp://u:p@h\"\nqueue = \"q\"\nqueue_type = \"quorum\"",
            "sources.q.queue_type",
            "declare",
        ),
        (
            "url = \"amqp://u:p@h\"\nqueue = \"q\"\nprefetch = 0",
            "sources.q.prefetch",
            "0",
        ),
    ] {
        let m = format!(
            "[app]\nname = \"bad2\"\n[topics.t]\n[sources.q]\ntype = \"rabbitmq\"\ntopic = \"t\"\n{settings}\n"
        );
        let err = node.deploy_from(&m, Path::new(".")).await.unwrap_err();
        assert!(err.message.contains(key), "{key}: {}", err.message);
        assert!(err.message.contains(says), "{says}: {}", err.message);
        assert!(!err.message.contains(":p@"), "no password: {}", err.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_reconnected_to_and_nothing_is_lost() {
    let mut broker = tokio::task::spawn_blocking(|| Broker::start(&unique("r")))
        .await
        .unwrap();
    let url = broker.url();
    let send = |from: u32, to: u32| {
        let url = url.clone();
        async move {
            let (conn, ch) = client(&url).await;
            for n in from..to {
                let (body, props) = plain(n);
                publish(&ch, "orders", &body, props).await;
            }
            let _ = conn.close(200, "ok".into()).await;
        }
    };
    let (conn, ch) = client(&url).await;
    declare(&ch, "orders", false).await;
    let _ = conn.close(200, "ok".into()).await;
    send(0, 100).await;
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"r\"\n[topics.orders]\n[sources.q]\ntype = \"rabbitmq\"\nurl = \"{url}\"\nqueue = \"orders\"\ntopic = \"orders\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_topic_events("orders", 100, Duration::from_secs(30))
        .await;

    let mut broker = tokio::task::spawn_blocking(move || {
        broker.down();
        broker
    })
    .await
    .unwrap();
    let e = node.wait_failure("q").await;
    assert!(
        e.contains(&format!("RabbitMQ at amqp://127.0.0.1:{}", broker.port)),
        "{e}"
    );
    let broker = tokio::task::spawn_blocking(move || {
        broker.up();
        broker
    })
    .await
    .unwrap();
    // A broker killed with SIGKILL may come back without a queue declared
    // shortly before (not yet on its disk): declare it again, as an
    // operator would, before publishing the rest.
    let (conn, ch) = client(&broker.url()).await;
    declare(&ch, "orders", false).await;
    let _ = conn.close(200, "ok".into()).await;
    send(100, 200).await;
    let got = node
        .wait_topic_events("orders", 200, Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.topic_events("orders").await.len(), 200, "nothing twice");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    let s = node.wait_streaming("q").await;
    assert_eq!(s.state, "running", "{s:?}");
    let (conn, _) = client(&broker.url()).await;
    assert_eq!(counts(&conn, "orders").await, (0, 1));
    drop(node);
    tokio::task::spawn_blocking(move || drop(broker)).await.unwrap();
}

/// The node is killed (SIGKILL) while 5,000 messages flow: after a restart
/// every message is in the topic (those with a `message_id` exactly
/// once), and RabbitMQ holds nothing unacknowledged.
#[test]
fn kill_9_of_the_node_loses_nothing_and_leaves_nothing_unacked() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (conn, ch) = client(AMQP).await;
        let queue = unique("gale-k-");
        declare(&ch, &queue, false).await;
        let send = |from: u32, to: u32| {
            let (ch, queue) = (ch.clone(), queue.clone());
            async move {
                for n in from..to {
                    // Every 10th without a message_id: a fresh event id.
                    let props = if n % 10 == 0 {
                        BasicProperties::default().with_delivery_mode(2)
                    } else {
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(format!("m-{n}").into())
                    };
                    // Confirms awaited in groups, so messages flow fast.
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            Default::default(),
                            json!({ "n": n }).to_string().as_bytes(),
                            props,
                        )
                        .await
                        .unwrap();
                    if n % 100 == 99 || n + 1 == to {
                        confirm.await.unwrap();
                    }
                }
                ch.wait_for_confirms().await.unwrap();
            }
        };
        // A backlog, so the node is killed with messages handed over and
        // not yet acknowledged.
        send(0, 2500).await;
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut node = TestNode::attach(data, &gateway, &admin);
        let manifest = format!("[app]\nname = \"k\"\n[topics.orders]\n{}", source(&queue, ""));
        deploy(&node, &manifest).await;
        // Killed once some messages are durable (and acknowledged) while
        // more are handed over.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let topics: Vec<gale_core::api::TopicInfo> = node.admin_get("/v1/topics").await;
            let stored = topics.iter().find(|t| t.name == "orders").map_or(0, |t| t.depth);
            if stored >= 300 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(child);
        let q = queue.clone();
        let at_kill = tokio::task::spawn_blocking(move || unacked(&q)).await.unwrap();
        eprintln!(
            "at the kill: {} ready, {at_kill} unacknowledged",
            counts(&conn, &queue).await.0
        );
        send(2500, 5000).await;
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        node.wait_topic_events("orders", 5000, Duration::from_secs(120))
            .await;
        wait_settled(&conn, &queue).await;
        let got = node.topic_events("orders").await;
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for e in &got {
            *seen.entry(e["data"]["n"].as_u64().unwrap()).or_default() += 1;
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<u64>>(),
            (0..5000).collect::<Vec<u64>>(),
            "every message"
        );
        let twice: BTreeSet<u64> = seen.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
        assert!(
            twice.iter().all(|n| n % 10 == 0),
            "only messages without a message_id twice: {twice:?}"
        );
        eprintln!("{} events, {} stored twice", got.len(), twice.len());
        assert_eq!(counts(&conn, &queue).await, (0, 1), "nothing left, one consumer");
        drop(child);
        delete(&ch, &queue).await;
    });
}

/// A Python handler under `awslambdaric`, with awslambdaric installed
/// next to it as a Lambda package holds it (pip runs once).
fn rmq_handler_package() -> std::path::PathBuf {
    let dir = common::root().join("target/lambda-fixtures/rabbitmq");
    if !dir.join("awslambdaric").is_dir() {
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("awslambdaric==4.2.2")
            .status()
            .expect("python3 -m pip runs");
        assert!(status.success(), "installing awslambdaric from PyPI failed");
    }
    std::fs::write(
        dir.join("rmq.py"),
        r#"import base64, json, os, urllib.request

def handler(event, context):
    """Publishes what it read of Amazon MQ's RabbitMQ event to `seen`."""
    seen = []
    for key, messages in event["rmqMessagesByQueue"].items():
        for m in messages:
            p = m["basicProperties"]
            seen.append({
                "source": event["eventSource"],
                "key": key,
                "n": json.loads(base64.b64decode(m["data"]))["n"],
                "messageId": p["messageId"],
                "region": bytes(p["headers"]["Region"]["bytes"]).decode(),
                "redelivered": m["redelivered"],
            })
    request = urllib.request.Request(
        os.environ["GALE_API"] + "/_gale/topics/seen/events",
        data=json.dumps(seen).encode(),
        headers={"content-type": "application/json", "ce-specversion": "1.0",
                 "ce-id": context.aws_request_id, "ce-source": "/rmq", "ce-type": "seen"},
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 202
    return {}
"#,
    )
    .unwrap();
    dir
}

/// Messages of a queue reach a Python process function as Amazon MQ's
/// RabbitMQ event (`format = "rabbitmq"`), unmodified Lambda code reading
/// `rmqMessagesByQueue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_handler_reads_rmq_messages_by_queue() {
    let package = tokio::task::spawn_blocking(rmq_handler_package).await.unwrap();
    let (_conn, ch) = client(AMQP).await;
    let queue = unique("gale-l-");
    declare(&ch, &queue, false).await;
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"l\"\n[topics.orders]\n[topics.seen]\n{}\
         [functions.worker]\nruntime = \"process\"\nsource = \"{}\"\ncommand = [\"python3\", \"-m\", \"awslambdaric\", \"rmq.handler\"]\n\
         [[functions.worker.events]]\ntopic = \"orders\"\nformat = \"rabbitmq\"\nbatch_size = 10\nbatch_window = \"200ms\"\n",
        source(&queue, ""),
        package.display()
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    node.wait_streaming("q").await;
    for n in 0..5u32 {
        let (body, props) = plain(n);
        publish(&ch, &queue, &body, props).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "the handler saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = node
            .topic_events("seen")
            .await
            .iter()
            .flat_map(|e| e["data"].as_array().cloned().unwrap_or_default())
            .collect();
    }
    let ns: BTreeSet<u64> = seen.iter().map(|s| s["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..5).collect::<BTreeSet<u64>>());
    let first = seen.iter().find(|s| s["n"] == 0).unwrap();
    assert_eq!(first["source"], "aws:rmq");
    assert_eq!(first["key"], format!("{queue}::/"));
    assert_eq!(
        (&first["messageId"], &first["region"], &first["redelivered"]),
        (&json!("m-0"), &json!("eu"), &json!(false))
    );
    delete(&ch, &queue).await;
}
