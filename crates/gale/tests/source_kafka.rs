//! The kafka source against librdkafka's mock cluster (no Kafka broker runs
//! on these machines): a cluster owned by the test process, listening on
//! real loopback ports, so a node in this process or a `gale serve` child
//! reads from it like from Kafka. Records produced with rdkafka reach the
//! topic once each, in order per key and partition, across a restart, a
//! kill -9 of the node and a broker outage; the group's committed offsets
//! follow what is durable; a poison record is parked; bad settings fail
//! clearly and leave the others running.

mod common;

use common::{TestNode, deploy, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn producer(servers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `{"n": n, "k": key}` for each n, keyed `c<n % keys>`, with a
/// `region` header; waits for every delivery.
async fn produce(p: &FutureProducer, topic: &str, ns: std::ops::Range<u32>, keys: u32) {
    let mut deliveries = Vec::new();
    for n in ns {
        let key = format!("c{}", n % keys);
        let value = json!({ "n": n, "k": key }).to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "region",
            value: Some("eu"),
        });
        let record = FutureRecord::to(topic).key(&key).payload(&value).headers(headers);
        deliveries.push(p.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
}

/// The group's committed offsets of a topic's partitions (-1: none).
fn committed(servers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Waits until the group committed `total` offsets in all.
async fn wait_committed(servers: &str, group: &str, topic: &str, partitions: i32, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, g, t) = (servers.to_string(), group.to_string(), topic.to_string());
        let c = tokio::task::spawn_blocking(move || committed(&s, &g, &t, partitions))
            .await
            .unwrap();
        if c.iter().map(|o| o.max(&0)).sum::<i64>() == total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {c:?}, want {total} in all"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `n`s of the events, by their key, in topic order.
fn by_key(events: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut keys: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        keys.entry(e["data"]["k"].as_str().unwrap().to_string())
            .or_default()
            .push(e["data"]["n"].as_u64().unwrap());
    }
    keys
}

fn assert_in_key_order(events: &[Value], n: u32, keys: u32) {
    let got = by_key(events);
    for k in 0..keys {
        let want: Vec<u64> = (0..n as u64).filter(|i| i % keys as u64 == k as u64).collect();
        assert_eq!(got[&format!("c{k}")], want, "key c{k}: once each, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_once_in_order_per_key_across_restarts() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let topic = unique("orders");
    cluster.create_topic(&topic, 3, 1).unwrap();
    let p = producer(&servers);
    produce(&p, &topic, 0..300, 10).await;
    // A CloudEvent by the Kafka binding (binary mode), taken as itself.
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some("ce-1"),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/shop"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("order.placed"),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    p.send(
        FutureRecord::to(&topic)
            .key("ce")
            .payload(r#"{"k":"ce","n":0}"#)
            .headers(headers),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"shop\"\n[topics.orders]\n[sources.q]\ntype = \"kafka\"\nurl = \"kafka://{servers}\"\ntopics = [\"{topic}\"]\ntopic = \"orders\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node
        .wait_topic_events("orders", 301, Duration::from_secs(60))
        .await;
    let (ce, plain): (Vec<Value>, Vec<Value>) = got.into_iter().partition(|e| e["data"]["k"] == "ce");
    assert_in_key_order(&plain, 300, 10);
    assert_eq!(
        (&ce[0]["id"], &ce[0]["type"]),
        (&json!("ce-1"), &json!("order.placed"))
    );

    // Knative's names, under /gale/kafka; the id is topic, partition, offset.
    let e = &plain[0];
    let partition = e["kafkapartition"].as_str().unwrap();
    let offset = e["kafkaoffset"].as_str().unwrap();
    assert_eq!(e["type"], "gale.kafka.message");
    assert_eq!(e["source"], format!("/gale/kafka/{topic}"));
    assert_eq!(e["subject"], format!("partition:{partition}#{offset}"));
    assert_eq!(e["id"], format!("q/{topic}/{partition}/{offset}"));
    assert_eq!(e["partitionkey"], e["data"]["k"]);
    assert_eq!(e["key"], e["data"]["k"]);
    assert_eq!(e["region"], "eu");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");

    wait_committed(&servers, "gale_shop_q", &topic, 3, 301).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.source("q").await.unwrap();
        assert_eq!(s.state, "running", "{s:?}");
        if s.lag_messages == Some(0) {
            assert!(
                s.position.as_deref().unwrap().contains(&format!("{topic}/")),
                "{s:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "lag never reached 0: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node down: records produced meanwhile wait in Kafka.
    let mut node = node;
    node.stop().await;
    produce(&p, &topic, 300..350, 10).await;
    let node = node.restart().await;
    node.wait_topic_events("orders", 351, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = node.topic_events("orders").await;
    assert_eq!(got.len(), 351, "no loss, no duplicates");
    let plain: Vec<Value> = got.into_iter().filter(|e| e["data"]["k"] != "ce").collect();
    assert_in_key_order(&plain, 350, 10);
    wait_committed(&servers, "gale_shop_q", &topic, 3, 351).await;
}

/// The node is killed (SIGKILL) while 5,000 records flow: after a restart
/// every record is in the topic, once (the dedup drops what is read
/// again), in order per key, and the group's committed offsets reach the
/// end of every partition.
#[test]
fn kill_9_of_the_node_loses_nothing_and_commits_to_the_end() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = MockCluster::new(1).unwrap();
        let servers = cluster.bootstrap_servers();
        let topic = unique("k");
        cluster.create_topic(&topic, 3, 1).unwrap();
        let p = producer(&servers);
        // A backlog, so the node is killed with records read and not all
        // committed.
        produce(&p, &topic, 0..2500, 30).await;
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut node = TestNode::attach(data, &gateway, &admin);
        let manifest = format!(
            "[app]\nname = \"k\"\n[topics.t]\n[sources.q]\ntype = \"kafka\"\nurl = \"kafka://{servers}\"\ntopics = [\"{topic}\"]\ntopic = \"t\"\n"
        );
        deploy(&node, &manifest).await;
        // Killed once some offsets are committed and not all.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, t) = (servers.clone(), topic.clone());
            let c = tokio::task::spawn_blocking(move || committed(&s, "gale_k_q", &t, 3))
                .await
                .unwrap();
            let sum: i64 = c.iter().map(|o| o.max(&0)).sum();
            if sum > 0 || Instant::now() > deadline {
                eprintln!("at the kill: committed {c:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(child);
        produce(&p, &topic, 2500..5000, 30).await;
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        node.wait_topic_events("t", 5000, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let got = node.topic_events("t").await;
        assert_eq!(got.len(), 5000, "every record, once");
        assert_in_key_order(&got, 5000, 30);
        wait_committed(&servers, "gale_k_q", &topic, 3, 5000).await;
        drop(child);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_reconnected_after_and_nothing_is_lost() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let topic = unique("r");
    cluster.create_topic(&topic, 2, 1).unwrap();
    let p = producer(&servers);
    produce(&p, &topic, 0..100, 4).await;
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"r\"\n[topics.t]\n[sources.q]\ntype = \"kafka\"\nurl = \"kafka://{servers}\"\ntopics = [\"{topic}\"]\ntopic = \"t\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_topic_events("t", 100, Duration::from_secs(60)).await;

    cluster.broker_down(1).unwrap();
    let e = node.wait_failure("q").await;
    assert!(e.contains("Kafka at 127.0.0.1:"), "{e}");
    cluster.broker_up(1).unwrap();
    produce(&p, &topic, 100..200, 4).await;
    node.wait_topic_events("t", 200, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = node.topic_events("t").await;
    assert_eq!(got.len(), 200, "nothing lost, nothing twice");
    assert_in_key_order(&got, 200, 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = node.source("q").await.unwrap();
        if s.state == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_committed(&servers, "gale_r_q", &topic, 2, 200).await;
}

/// A record the source cannot take (here: not JSON, with `format =
/// "json"`) is parked in the dead-letter topic with the reason and its
/// value, committed past, and the partition flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_parked_and_the_partition_flows_on() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let topic = unique("p");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let p = producer(&servers);
    for n in 0..10u32 {
        let body = if n == 3 {
            "not json".to_string()
        } else {
            json!({ "n": n }).to_string()
        };
        p.send(
            FutureRecord::<(), _>::to(&topic).payload(&body),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"p\"\n[topics.orders]\n[sources.q]\ntype = \"kafka\"\nurl = \"kafka://{servers}\"\ntopics = [\"{topic}\"]\nformat = \"json\"\ntopic = \"orders\"\ndead_letter = \"orders-rejected\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node.wait_topic_events("orders", 9, Duration::from_secs(60)).await;
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert!(
        got[0].get("partitionkey").is_none(),
        "a record without a key has no partition key"
    );
    let parked = node
        .wait_topic_events("orders-rejected", 1, Duration::from_secs(10))
        .await;
    assert_eq!(parked[0]["id"], format!("q/{topic}/0/3"));
    assert!(
        parked[0]["galeerror"].as_str().unwrap().contains("JSON"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[0]["data_base64"], "bm90IGpzb24=", "the value, kept");
    let s = node.source("q").await.unwrap();
    assert_eq!((s.published, s.parked), (9, 1), "{s:?}");
    wait_committed(&servers, "gale_p_q", &topic, 1, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_source_clearly_and_leave_the_others_running() {
    let cluster = MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let missing = unique("none");
    let node = TestNode::start().await;
    let manifest = format!(
        r#"[app]
name = "bad"
[topics.t]
[sources.unreachable]
type = "kafka"
url = "kafka://user:secret@127.0.0.1:1"
topics = ["a"]
topic = "t"
[sources.notopic]
type = "kafka"
url = "kafka://{servers}"
topics = ["{missing}"]
topic = "t"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "t"
"#
    );
    let started = Instant::now();
    deploy(&node, &manifest).await;
    let e = node.wait_failure("unreachable").await;
    assert!(e.contains("cannot reach Kafka at 127.0.0.1:1"), "{e}");
    assert!(!e.contains("secret"), "no password in errors: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "named within the metadata timeout"
    );
    let e = node.wait_failure("notopic").await;
    assert!(e.contains(&format!("has no topic `{missing}`")), "{e}");
    // The schedule next to them fires on.
    node.wait_firing("clock").await;

    // A bad url or topic list is refused at deploy, naming the key.
    for (settings, key) in [
        (
            "url = \"http://127.0.0.1:9092\"\ntopics = [\"a\"]",
            "sources.q.url",
        ),
        ("url = \"kafka://127.0.0.1:x\"\ntopics = [\"a\"]", "sources.q.url"),
        (
            "url = \"kafka://127.0.0.1:9092\"\ntopics = []",
            "sources.q.topics",
        ),
        (
            "url = \"kafka://127.0.0.1:9092\"\ntopics = [\"a b\"]",
            "sources.q.topics",
        ),
    ] {
        let m = format!(
            "[app]\nname = \"bad2\"\n[topics.t]\n[sources.q]\ntype = \"kafka\"\ntopic = \"t\"\n{settings}\n"
        );
        let err = node.deploy_from(&m, Path::new(".")).await.unwrap_err();
        assert!(err.message.contains(key), "{key}: {}", err.message);
    }
}
