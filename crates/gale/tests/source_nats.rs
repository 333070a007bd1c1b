//! The nats source against the machine's real NATS server (127.0.0.1:4222,
//! JetStream enabled): messages published with async-nats reach the topic
//! once each, in stream order, across a restart of the node; core NATS
//! subscriptions deliver what is published while they run; bad settings
//! fail the source with a clear error and leave the others running. Each
//! test uses its own stream and subjects, and deletes its stream.

mod common;

use async_nats::jetstream;
use common::{TestNode, deploy, unique};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const NATS: &str = "nats://127.0.0.1:4222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_arrive_once_in_order_across_restarts() {
    let client = async_nats::connect(NATS).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = unique("GALE_T");
    let prefix = unique("galet");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    // Messages of another subject of the stream stay out (the filter holds
    // on a 2.9 server).
    js.publish(format!("{prefix}.other"), "skip".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // 200 messages: plain JSON, with every 50th a CloudEvent in binary mode
    // and every 50th (offset 25) one in structured mode.
    for n in 0..200u32 {
        let subject = format!("{prefix}.orders.{}", n % 7);
        let ack = if n % 50 == 0 {
            let mut h = async_nats::HeaderMap::new();
            h.insert("ce-specversion", "1.0");
            h.insert("ce-id", format!("ce-{n}").as_str());
            h.insert("ce-source", "/shop");
            h.insert("ce-type", "order.placed");
            h.insert("ce-datacontenttype", "application/json");
            js.publish_with_headers(subject, h, json!({ "n": n }).to_string().into())
                .await
                .unwrap()
        } else if n % 50 == 25 {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Content-Type", "application/cloudevents+json");
            let event = json!({"specversion": "1.0", "id": format!("ce-{n}"), "source": "/shop",
                               "type": "order.paid", "data": { "n": n }});
            js.publish_with_headers(subject, h, event.to_string().into())
                .await
                .unwrap()
        } else {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Region", "eu");
            js.publish_with_headers(subject, h, json!({ "n": n }).to_string().into())
                .await
                .unwrap()
        };
        ack.await.unwrap();
    }

    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"shop\"\n[topics.orders]\n[sources.q]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{prefix}.orders.>\"\nstream = \"{stream}\"\ntopic = \"orders\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node
        .wait_topic_events("orders", 200, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 200, "once each");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>(), "in stream order");
    // Plain messages: Gale's own event around the body.
    let plain = &got[1];
    assert_eq!(plain["type"], "gale.nats.message");
    assert_eq!(plain["source"], format!("/gale/nats/{stream}"));
    assert_eq!(plain["subject"], format!("{prefix}.orders.1"));
    assert_eq!(plain["partitionkey"], format!("{prefix}.orders.1"));
    assert_eq!(plain["region"], "eu");
    assert_eq!(plain["datacontenttype"], "application/json");
    // The stream's sequence 1 was the other subject's message.
    assert_eq!(plain["id"], format!("q/{stream}/3"));
    assert!(plain["time"].as_str().unwrap().ends_with('Z'));
    // CloudEvents in NATS: taken as those events.
    assert_eq!(
        (&got[0]["id"], &got[0]["type"], &got[0]["source"]),
        (&json!("ce-0"), &json!("order.placed"), &json!("/shop"))
    );
    assert_eq!(
        (&got[25]["id"], &got[25]["type"]),
        (&json!("ce-25"), &json!("order.paid"))
    );

    let s = node.source("q").await.unwrap();
    assert_eq!(s.state, "running");
    assert_eq!(s.lag_messages, Some(0), "{s:?}");
    assert!(s.position.as_deref().unwrap().starts_with("stream seq "), "{s:?}");

    // Node down: messages published meanwhile wait in the stream.
    let mut node = node;
    node.stop().await;
    for n in 200..250u32 {
        js.publish(format!("{prefix}.orders.x"), json!({ "n": n }).to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let node = node.restart().await;
    let got = node
        .wait_topic_events("orders", 250, Duration::from_secs(60))
        .await;
    // Give a duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_again = node.topic_events("orders").await;
    assert_eq!(got_again.len(), 250, "no loss, no duplicates");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..250).collect::<Vec<u64>>());
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 250);

    // The consumer's ack floor moved past everything: nothing pending,
    // nothing unacknowledged.
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_consumer("gale_shop_q")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            assert_eq!(info.config.filter_subject, format!("{prefix}.orders.>"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer still holds messages: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Removing the source deletes the consumer Gale made.
    deploy(&node, "[app]\nname = \"shop\"\n[topics.orders]\n").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = js.get_stream(&stream).await.unwrap();
    while s
        .get_consumer::<jetstream::consumer::pull::Config>("gale_shop_q")
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the consumer was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_messages_published_while_the_source_runs_arrive() {
    let client = async_nats::connect(NATS).await.unwrap();
    let prefix = unique("galec");
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"iot\"\n[topics.readings]\n[sources.sensors]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{prefix}.*.temp\"\ntopic = \"readings\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("sensors").await;
    for n in 0..20u32 {
        client
            .publish(format!("{prefix}.s{}.temp", n % 3), format!("{n}").into())
            .await
            .unwrap();
    }
    // Not matched by the subscription.
    client
        .publish(format!("{prefix}.s1.humidity"), "0".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let got = node
        .wait_topic_events("readings", 20, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.topic_events("readings").await.len(), 20);
    // One connection: NATS keeps its order.
    let data: Vec<Value> = got.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(got[4]["subject"], format!("{prefix}.s1.temp"));
    assert_eq!(got[4]["source"], format!("{NATS}/{prefix}.*.temp"));
    assert_eq!(got[4]["type"], "gale.nats.message");
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_source_clearly_and_leave_the_others_running() {
    let node = TestNode::start().await;
    let missing = unique("GALE_NONE");
    let manifest = format!(
        r#"[app]
name = "bad"
[topics.t]
[sources.unreachable]
type = "nats"
url = "nats://user:secret@127.0.0.1:1"
subject = "a.>"
topic = "t"
[sources.nostream]
type = "nats"
url = "{NATS}"
subject = "a.>"
stream = "{missing}"
topic = "t"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "t"
"#
    );
    deploy(&node, &manifest).await;
    let e = node.wait_failure("unreachable").await;
    assert!(e.contains("cannot reach NATS at nats://127.0.0.1:1"), "{e}");
    assert!(!e.contains("secret"), "no password in errors: {e}");
    let e = node.wait_failure("nostream").await;
    assert!(
        e.contains(&format!("there is no JetStream stream `{missing}`")),
        "{e}"
    );
    assert!(e.contains("nats stream add"), "{e}");
    // The schedule next to them fires on.
    node.wait_firing("clock").await;

    // A bad url or subject is refused at deploy, naming the key.
    for (settings, key) in [
        (
            "url = \"http://127.0.0.1:4222\"\nsubject = \"a\"",
            "sources.q.url",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\nsubject = \"a..b\"",
            "sources.q.subject",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\nsubject = \"a\"\nstream = \"a.b\"",
            "sources.q.stream",
        ),
    ] {
        let m = format!(
            "[app]\nname = \"bad2\"\n[topics.t]\n[sources.q]\ntype = \"nats\"\ntopic = \"t\"\n{settings}\n"
        );
        let err = node.deploy_from(&m, Path::new(".")).await.unwrap_err();
        assert!(err.message.contains(key), "{key}: {}", err.message);
    }
}

/// A throwaway nats-server with JetStream, on its own port and store.
struct Server {
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
    args: Vec<String>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[])
    }

    /// With extra arguments, like `--user` and `--pass`.
    fn start_with(args: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Server {
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.up();
        s
    }

    fn up(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_reconnected_to_and_nothing_is_lost() {
    let mut server = Server::start();
    let url = server.url();
    let publish = |from: u32, to: u32| {
        let url = url.clone();
        async move {
            let js = jetstream::new(async_nats::connect(url).await.unwrap());
            for n in from..to {
                js.publish("r.x", json!({ "n": n }).to_string().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "R".into(),
        subjects: vec!["r.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    drop(js);
    publish(0, 100).await;
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"r\"\n[topics.t]\n[sources.q]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"r.>\"\nstream = \"R\"\ntopic = \"t\"\n",
        url = server.url()
    );
    deploy(&node, &manifest).await;
    node.wait_topic_events("t", 100, Duration::from_secs(30)).await;

    server.down();
    let e = node.wait_failure("q").await;
    assert!(e.contains("NATS at nats://127.0.0.1:"), "{e}");
    server.up();
    publish(100, 200).await;
    let got = node.wait_topic_events("t", 200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_again = node.topic_events("t").await;
    assert_eq!(got_again.len(), 200, "nothing twice");
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    let s = node.source("q").await.unwrap();
    assert_eq!(s.state, "running", "{s:?}");
}

/// The node is killed (SIGKILL) while 5,000 messages flow: after a restart
/// every message is in the topic once, in stream order, and the consumer
/// holds nothing unacknowledged.
#[test]
fn kill_9_of_the_node_loses_nothing_and_leaves_nothing_unacked() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(NATS).await.unwrap();
        let js = jetstream::new(client.clone());
        let stream = unique("GALE_K");
        let prefix = unique("galek");
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        let publish = |from: u32, to: u32| {
            let (js, prefix) = (js.clone(), prefix.clone());
            async move {
                for n in from..to {
                    // The server's acks are awaited in groups, so messages flow fast.
                    let ack = js
                        .publish(format!("{prefix}.m"), json!({ "n": n }).to_string().into())
                        .await
                        .unwrap();
                    if n % 100 == 99 || n + 1 == to {
                        ack.await.unwrap();
                    }
                }
            }
        };
        // A backlog, so the node is killed with messages handed over and
        // not yet acknowledged.
        publish(0, 2500).await;
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut node = TestNode::attach(data, &gateway, &admin);
        let manifest = format!(
            "[app]\nname = \"k\"\n[topics.t]\n[sources.q]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{prefix}.>\"\nstream = \"{stream}\"\ntopic = \"t\"\n"
        );
        deploy(&node, &manifest).await;
        // Killed once messages are handed over and not all acknowledged.
        let mut consumer: jetstream::consumer::PullConsumer = loop {
            if let Ok(c) = js.get_stream(&stream).await.unwrap().get_consumer("gale_k_q").await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = consumer.info().await.unwrap();
            if info.num_ack_pending > 0 && info.ack_floor.stream_sequence > 0 || Instant::now() > deadline {
                break;
            }
        }
        drop(child);
        let info = consumer.info().await.unwrap();
        eprintln!(
            "at the kill: ack floor {}, {} unacknowledged",
            info.ack_floor.stream_sequence, info.num_ack_pending
        );
        publish(2500, 5000).await;
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        let got = node.wait_topic_events("t", 5000, Duration::from_secs(120)).await;
        let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, (0..5000).collect::<Vec<u64>>(), "every message, once, in order");

        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream(&stream)
            .await
            .unwrap()
            .get_consumer("gale_k_q")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = consumer.info().await.unwrap();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                // Made again from its ack floor if the kill left messages unacked.
                eprintln!("consumer after the kill: {:?}", info.config.deliver_policy);
                break;
            }
            assert!(Instant::now() < deadline, "consumer still holds messages: {info:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(child);
        js.delete_stream(&stream).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named_and_right_ones_in_the_url_work() {
    let server = Server::start_with(&["--user", "gale", "--pass", "s3cret"]);
    let node = TestNode::start().await;
    let port = server.port;
    let manifest = format!(
        "[app]\nname = \"c\"\n[topics.t]\n[sources.wrong]\ntype = \"nats\"\nurl = \"nats://gale:nope@127.0.0.1:{port}\"\nsubject = \"c.>\"\ntopic = \"t\"\n[sources.right]\ntype = \"nats\"\nurl = \"nats://gale:s3cret@127.0.0.1:{port}\"\nsubject = \"c.>\"\ntopic = \"t\"\n"
    );
    deploy(&node, &manifest).await;
    let e = node.wait_failure("wrong").await;
    assert!(e.contains("refused the connection"), "{e}");
    assert!(e.contains("user and password"), "{e}");
    assert!(
        !e.contains("nope") && !e.contains("s3cret"),
        "no password in errors: {e}"
    );
    let s = node.wait_streaming("right").await;
    assert!(s.last_error.is_none(), "{s:?}");
    let client = async_nats::ConnectOptions::with_user_and_password("gale".into(), "s3cret".into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    client.publish("c.1", "hi".into()).await.unwrap();
    client.flush().await.unwrap();
    let got = node.wait_topic_events("t", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["data"], "hi");
}

/// A message the source cannot take (here: not JSON, with `format =
/// "json"`) is parked in the dead-letter topic with the reason and its
/// body, acknowledged, and the messages behind it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_and_the_stream_flows_on() {
    let client = async_nats::connect(NATS).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = unique("GALE_P");
    let prefix = unique("galep");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    for n in 0..10u32 {
        let body = if n == 3 {
            "not json".to_string()
        } else {
            json!({ "n": n }).to_string()
        };
        js.publish(format!("{prefix}.o"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"p\"\n[topics.orders]\n[sources.q]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"{prefix}.>\"\nstream = \"{stream}\"\nformat = \"json\"\ntopic = \"orders\"\ndead_letter = \"orders-rejected\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node.wait_topic_events("orders", 9, Duration::from_secs(30)).await;
    let ns: Vec<u64> = got.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    let parked = node
        .wait_topic_events("orders-rejected", 1, Duration::from_secs(10))
        .await;
    assert_eq!(parked[0]["id"], format!("q/{stream}/4"));
    assert!(
        parked[0]["galeerror"].as_str().unwrap().contains("JSON"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[0]["data_base64"], "bm90IGpzb24=", "the body, kept");
    let s = node.source("q").await.unwrap();
    assert_eq!((s.published, s.parked), (9, 1), "{s:?}");
    // Nothing waits for redelivery.
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_consumer("gale_p_q")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer still holds messages: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js.delete_stream(&stream).await.unwrap();
}
