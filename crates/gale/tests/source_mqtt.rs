//! The mqtt source against the machine's real Mosquitto (127.0.0.1:1883),
//! messages published with `mosquitto_pub`: they reach the topic once
//! each, in order, with MQTT 5 and 3.1.1, also when published while the
//! node is down (the persistent session keeps them); a kill -9 of the node
//! loses nothing; a restarted (throwaway) broker is reconnected to; a
//! poison message is parked and the messages behind it flow; bad settings
//! fail the source with a clear error and leave the others running. Each
//! test uses its own topics and client ids.

mod common;

use common::mqtt::{Broker, publish, publish_one};
use common::{TestNode, deploy, unique};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const MQTT: &str = "mqtt://127.0.0.1:1883";
const PORT: u16 = 1883;

fn numbered(from: u32, to: u32) -> Vec<String> {
    (from..to).map(|n| json!({ "n": n }).to_string()).collect()
}

fn numbers(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect()
}

/// Ends the broker's session of a client id.
fn end_session(port: u16, client_id: &str) {
    let _ = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            client_id,
            "-t",
            "gale/none",
            "-E",
        ])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_once_in_order_with_mqtt_5_and_3() {
    let prefix = unique("galet");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"m\"\n[topics.five]\n[topics.three]\n[topics.ce3]\n\
         [sources.five]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nfilters = [\"{prefix}/five/+/temp\", \"{prefix}/other\"]\ntopic = \"five\"\n\
         [sources.three]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nversion = 3\nfilters = [\"{prefix}/three/#\"]\ntopic = \"three\"\n\
         [sources.ce3]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nversion = 3\nformat = \"cloudevents\"\nfilters = [\"{prefix}/ce3\"]\ntopic = \"ce3\"\n"
    );
    deploy(&node, &manifest).await;
    for s in ["five", "three", "ce3"] {
        node.wait_streaming(s).await;
    }
    // MQTT 5: user properties and the content type.
    publish(
        PORT,
        5,
        &format!("{prefix}/five/s1/temp"),
        &numbered(0, 100),
        &[
            "-D",
            "publish",
            "user-property",
            "region",
            "eu",
            "-D",
            "publish",
            "content-type",
            "application/json",
        ],
    );
    // A CloudEvent in binary mode (attributes as user properties) and in
    // structured mode.
    let ce = |k: &'static str, v: &'static str| ["-D", "publish", "user-property", k, v];
    let mut binary: Vec<&str> = Vec::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "ce-1"),
        ("source", "/shop"),
        ("type", "order.placed"),
    ] {
        binary.extend(ce(k, v));
    }
    binary.extend(["-D", "publish", "content-type", "application/json"]);
    publish_one(
        PORT,
        5,
        &format!("{prefix}/five/s2/temp"),
        &json!({ "n": 100 }).to_string(),
        &binary,
    );
    let structured = json!({"specversion": "1.0", "id": "ce-2", "source": "/shop", "type": "order.paid", "data": {"n": 101}});
    publish_one(
        PORT,
        5,
        &format!("{prefix}/five/s2/temp"),
        &structured.to_string(),
        &["-D", "publish", "content-type", "application/cloudevents+json"],
    );
    // Not matched by the filters.
    publish_one(PORT, 5, &format!("{prefix}/five/s1/humidity"), "{}", &[]);
    let got = node.wait_topic_events("five", 102, Duration::from_secs(30)).await;
    assert_eq!(
        numbers(&got[..100]),
        (0..100).collect::<Vec<u64>>(),
        "once each, in order"
    );
    let plain = &got[3];
    assert_eq!(plain["type"], "gale.mqtt.message");
    assert_eq!(
        plain["source"],
        format!("mqtt://127.0.0.1:1883/{prefix}/five/+/temp")
    );
    assert_eq!(plain["subject"], format!("{prefix}/five/s1/temp"));
    assert_eq!(plain["partitionkey"], format!("{prefix}/five/s1/temp"));
    assert_eq!(plain["region"], "eu");
    assert_eq!(plain["datacontenttype"], "application/json");
    assert_eq!(
        (&got[100]["id"], &got[100]["type"]),
        (&json!("ce-1"), &json!("order.placed"))
    );
    assert_eq!(got[100]["data"]["n"], 100);
    assert_eq!(
        (&got[101]["id"], &got[101]["type"]),
        (&json!("ce-2"), &json!("order.paid"))
    );
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 102);

    // MQTT 3.1.1: plain JSON that looks like a CloudEvent stays a message
    // under format = "any"; under format = "cloudevents" it is the event.
    publish(PORT, 3, &format!("{prefix}/three/a"), &numbered(0, 50), &[]);
    publish_one(
        PORT,
        3,
        &format!("{prefix}/three/b"),
        &structured.to_string(),
        &[],
    );
    publish_one(PORT, 3, &format!("{prefix}/ce3"), &structured.to_string(), &[]);
    let got = node.wait_topic_events("three", 51, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got[..50]), (0..50).collect::<Vec<u64>>());
    assert_eq!(got[50]["type"], "gale.mqtt.message");
    assert_eq!(got[50]["data"]["id"], "ce-2");
    let got = node.wait_topic_events("ce3", 1, Duration::from_secs(30)).await;
    assert_eq!(
        (&got[0]["id"], &got[0]["type"]),
        (&json!("ce-2"), &json!("order.paid"))
    );

    // Node down: the broker keeps the session and queues what comes.
    let mut node = node;
    node.stop().await;
    publish(
        PORT,
        5,
        &format!("{prefix}/five/s1/temp"),
        &numbered(200, 250),
        &[],
    );
    publish(PORT, 3, &format!("{prefix}/three/a"), &numbered(50, 80), &[]);
    let node = node.restart().await;
    let got = node.wait_topic_events("five", 152, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got[102..]), (200..250).collect::<Vec<u64>>());
    let got = node.wait_topic_events("three", 81, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got[51..]), (50..80).collect::<Vec<u64>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.topic_events("five").await.len(), 152, "nothing twice");

    // Removing the sources ends their sessions: nothing is queued for them.
    deploy(
        &node,
        "[app]\nname = \"m\"\n[topics.five]\n[topics.three]\n[topics.ce3]\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(
        PORT,
        5,
        &format!("{prefix}/five/s1/temp"),
        &numbered(300, 301),
        &[],
    );
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-V",
            "mqttv311",
            "-c",
            "-i",
            "gale_m_five",
            "-q",
            "1",
        ])
        .args(["-t", &format!("{prefix}/none"), "-W", "2"])
        .output()
        .unwrap();
    assert!(sub.stdout.is_empty(), "{}", String::from_utf8_lossy(&sub.stdout));
    end_session(PORT, "gale_m_five");
}

/// A message the source cannot take (not JSON, with `format = "json"`) is
/// parked in the dead-letter topic with the reason and its body,
/// acknowledged, and the messages behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_and_the_messages_behind_it_flow() {
    let prefix = unique("galep");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"p\"\n[topics.orders]\n[sources.q]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nfilters = [\"{prefix}/o\"]\nformat = \"json\"\ntopic = \"orders\"\ndead_letter = \"orders-rejected\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("q").await;
    let mut lines = numbered(0, 10);
    lines[3] = "not json".into();
    publish(PORT, 5, &format!("{prefix}/o"), &lines, &[]);
    let got = node.wait_topic_events("orders", 9, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got), vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    let parked = node
        .wait_topic_events("orders-rejected", 1, Duration::from_secs(10))
        .await;
    assert!(
        parked[0]["galeerror"].as_str().unwrap().contains("JSON"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[0]["data_base64"], "bm90IGpzb24=", "the body, kept");
    let s = node.source("q").await.unwrap();
    assert_eq!((s.published, s.parked), (9, 1), "{s:?}");
    deploy(&node, "[app]\nname = \"p\"\n[topics.orders]\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_source_clearly_and_leave_the_others_running() {
    let broker = Broker::start(&[("gale", "s3cret")]);
    let port = broker.port;
    let node = TestNode::start().await;
    let manifest = format!(
        r#"[app]
name = "bad"
[topics.t]
[sources.unreachable]
type = "mqtt"
url = "mqtt://user:secret@127.0.0.1:1"
filters = ["a/#"]
topic = "t"
[sources.wrong]
type = "mqtt"
url = "mqtt://gale:nope@127.0.0.1:{port}"
filters = ["a/#"]
topic = "t"
[sources.wrong3]
type = "mqtt"
version = 3
url = "mqtt://gale:nope@127.0.0.1:{port}"
filters = ["a/#"]
topic = "t"
[sources.right]
type = "mqtt"
url = "mqtt://gale:s3cret@127.0.0.1:{port}"
filters = ["a/#"]
topic = "t"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "t"
"#
    );
    deploy(&node, &manifest).await;
    let e = node.wait_failure("unreachable").await;
    assert!(e.contains("cannot reach the MQTT broker at 127.0.0.1:1"), "{e}");
    assert!(!e.contains("secret"), "no password in errors: {e}");
    for s in ["wrong", "wrong3"] {
        let e = node.wait_failure(s).await;
        assert!(
            e.contains("refused the connection") && e.contains("user and password"),
            "{e}"
        );
        assert!(
            !e.contains("nope") && !e.contains("s3cret"),
            "no password in errors: {e}"
        );
    }
    node.wait_streaming("right").await;
    publish_one(port, 5, "a/b", "hi", &["-u", "gale", "-P", "s3cret"]);
    let got = node.wait_topic_events("t", 1, Duration::from_secs(10)).await;
    assert!(got.iter().any(|e| e["data"] == "hi"), "{got:?}");
    // The schedule next to them fires on.
    node.wait_firing("clock").await;
    // Bad settings are refused at deploy, naming the key.
    for (settings, key) in [
        (
            "url = \"tcp://127.0.0.1:1883\"\nfilters = [\"a\"]",
            "sources.q.url",
        ),
        ("url = \"mqtt://127.0.0.1:x\"\nfilters = [\"a\"]", "sources.q.url"),
        (
            "url = \"mqtt://127.0.0.1\"\nfilters = [\"a/#/b\"]",
            "sources.q.filters",
        ),
        ("url = \"mqtt://127.0.0.1\"\nfilters = []", "sources.q.filters"),
        (
            "url = \"mqtt://127.0.0.1\"\nfilters = [\"a\"]\nversion = 4",
            "sources.q.version",
        ),
        (
            "url = \"mqtt://127.0.0.1\"\nfilters = [\"a\"]\nshare = \"a/b\"",
            "sources.q.share",
        ),
    ] {
        let m = format!(
            "[app]\nname = \"bad2\"\n[topics.t]\n[sources.q]\ntype = \"mqtt\"\ntopic = \"t\"\n{settings}\n"
        );
        let err = node.deploy_from(&m, Path::new(".")).await.unwrap_err();
        assert!(err.message.contains(key), "{key}: {}", err.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_reconnected_to_and_nothing_is_lost() {
    let mut broker = Broker::start(&[]);
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"r\"\n[topics.t]\n[sources.q]\ntype = \"mqtt\"\nurl = \"{}\"\nfilters = [\"r/#\"]\ntopic = \"t\"\n",
        broker.url()
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("q").await;
    publish(broker.port, 5, "r/x", &numbered(0, 100), &[]);
    node.wait_topic_events("t", 100, Duration::from_secs(30)).await;
    broker.down();
    let e = node.wait_failure("q").await;
    assert!(e.contains("MQTT broker at 127.0.0.1:"), "{e}");
    broker.up();
    // The session survived the restart: the subscription holds even
    // before the source is back.
    publish(broker.port, 5, "r/x", &numbered(100, 200), &[]);
    let got = node.wait_topic_events("t", 200, Duration::from_secs(60)).await;
    let ns: BTreeSet<u64> = numbers(&got).into_iter().collect();
    assert_eq!(ns, (0..200).collect::<BTreeSet<u64>>(), "nothing lost");
    let after: Vec<u64> = numbers(&got).into_iter().filter(|n| *n >= 100).collect();
    assert_eq!(after, (100..200).collect::<Vec<u64>>(), "in order, once each");
    let s = node.source("q").await.unwrap();
    assert_eq!(s.state, "running", "{s:?}");
}

/// The node is killed (SIGKILL) while 5,000 messages flow: after a restart
/// every message is in the topic at least once, and the broker holds
/// nothing for the session.
#[test]
fn kill_9_of_the_node_loses_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let topic = unique("galek/");
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut node = TestNode::attach(data, &gateway, &admin);
        let manifest = format!(
            "[app]\nname = \"k\"\n[topics.t]\n[sources.q]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nclient_id = \"{}\"\nfilters = [\"{topic}\"]\ntopic = \"t\"\n",
            topic.replace('/', "_")
        );
        deploy(&node, &manifest).await;
        node.wait_streaming("q").await;
        // Published in steps the source keeps up with (the broker queues at
        // most 1,000 messages per client, and drops the rest); killed in
        // the middle of a step.
        let step = 250;
        let mut sent = 0;
        while sent < 2250 {
            publish(PORT, 5, &topic, &numbered(sent, sent + step), &[]);
            sent += step;
            node.wait_topic_events("t", (sent - step) as usize, Duration::from_secs(30))
                .await;
        }
        // The last step is killed in the middle of.
        let last = {
            let topic = topic.clone();
            std::thread::spawn(move || publish(PORT, 5, &topic, &numbered(2250, 2500), &[]))
        };
        std::thread::sleep(Duration::from_millis(30));
        drop(child);
        last.join().unwrap();
        sent = 2500;
        // Queued by the broker for the session while the node is down.
        publish(PORT, 5, &topic, &numbered(2500, 2750), &[]);
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        node.wait_streaming("q").await;
        while sent < 5000 {
            let from = sent.max(2750);
            publish(PORT, 5, &topic, &numbered(from, from + step), &[]);
            sent = from + step;
            node.wait_topic_events("t", (sent - 2 * step) as usize, Duration::from_secs(60)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = node.topic_events("t").await;
            let ns: BTreeSet<u64> = numbers(&got).into_iter().collect();
            if ns.len() == 5000 {
                eprintln!("{} events for 5000 messages", got.len());
                break;
            }
            assert!(Instant::now() < deadline, "{} of 5000 messages arrived", ns.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Stopped as an operator would: nothing stays unacknowledged or
        // queued in the broker's session.
        assert!(child.stop().success());
        let sub = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-V", "mqttv311", "-c", "-q", "1", "-W", "2"])
            .args(["-i", &topic.replace('/', "_"), "-t", &topic])
            .output()
            .unwrap();
        assert!(sub.stdout.is_empty(), "left in the session: {}", String::from_utf8_lossy(&sub.stdout));
        end_session(PORT, &topic.replace('/', "_"));
    });
}

/// Two sources in one shared subscription (`share`): the broker splits the
/// messages between them, each message to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_the_messages() {
    let prefix = unique("galesh");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"sh\"\n[topics.ta]\n[topics.tb]\n\
         [sources.a]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nfilters = [\"{prefix}/s\"]\nshare = \"g\"\ntopic = \"ta\"\n\
         [sources.b]\ntype = \"mqtt\"\nurl = \"{MQTT}\"\nfilters = [\"{prefix}/s\"]\nshare = \"g\"\ntopic = \"tb\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("a").await;
    node.wait_streaming("b").await;
    publish(PORT, 5, &format!("{prefix}/s"), &numbered(0, 20), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let (a, b) = (node.topic_events("ta").await, node.topic_events("tb").await);
        if a.len() + b.len() >= 20 || Instant::now() > deadline {
            break (a, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: BTreeSet<u64> = numbers(&a).into_iter().chain(numbers(&b)).collect();
    assert_eq!(all, (0..20).collect::<BTreeSet<u64>>());
    assert_eq!(a.len() + b.len(), 20, "each message to one of them");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "split: {} and {}",
        a.len(),
        b.len()
    );
    deploy(&node, "[app]\nname = \"sh\"\n[topics.ta]\n[topics.tb]\n").await;
}
