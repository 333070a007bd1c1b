//! The redis source against the machine's real Redis (127.0.0.1:6379):
//! entries added with the redis crate reach the topic once each, in
//! stream order, across a restart of the node, a kill -9 of it and a
//! restart of the server (a throwaway one); entries another consumer
//! abandoned are claimed; a poison entry is parked and the stream flows
//! on; bad settings fail the source with a clear error and leave the
//! others running. Each test uses its own stream, and deletes it.

mod common;

use common::redis::Server;
use common::{TestNode, deploy, unique};
use redis::Value;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379";

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `XADD stream * field value ...`; the entry id.
async fn add(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(conn).await.unwrap()
}

/// Adds `{"n": n}` entries for `from..to`, pipelined.
async fn add_numbers(conn: &mut MultiplexedConnection, stream: &str, from: u32, to: u32) {
    let mut n = from;
    while n < to {
        let mut pipe = redis::pipe();
        for m in n..to.min(n + 500) {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(json!({ "n": m }).to_string());
        }
        let _: Vec<String> = pipe.query_async(conn).await.unwrap();
        n = to.min(n + 500);
    }
}

/// Entries the group has handed over and not had acknowledged.
async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    match reply {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n,
            _ => panic!("{parts:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// The group's `lag` as XINFO GROUPS says it.
async fn groups(conn: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: Result<Value, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    let Ok(Value::Array(groups)) = reply else {
        return Vec::new();
    };
    groups
        .into_iter()
        .filter_map(|g| {
            let Value::Array(kv) = g else { return None };
            match kv.get(1) {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        })
        .collect()
}

async fn wait_nothing_pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = pending(conn, stream, group).await;
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} entries still pending in {group}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn del(conn: &mut MultiplexedConnection, key: &str) {
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
}

fn numbers(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_arrive_once_in_order_across_restarts() {
    let mut conn = connect(REDIS).await;
    let stream = unique("gale:t:");
    // 200 entries: a `data` field with a header field, every 50th a
    // CloudEvent in binary mode (ce_ fields), every 50th (offset 25) a
    // record of plain fields.
    let mut ids = Vec::new();
    for n in 0..200u32 {
        let body = json!({ "n": n }).to_string();
        let id = if n % 50 == 0 {
            let ce_id = format!("ce-{n}");
            add(
                &mut conn,
                &stream,
                &[
                    ("ce_specversion", "1.0"),
                    ("ce_id", &ce_id),
                    ("ce_source", "/shop"),
                    ("ce_type", "order.placed"),
                    ("content-type", "application/json"),
                    ("data", &body),
                ],
            )
            .await
        } else if n % 50 == 25 {
            add(&mut conn, &stream, &[("n", &n.to_string()), ("sku", "a-1")]).await
        } else {
            add(&mut conn, &stream, &[("data", &body), ("region", "eu")]).await
        };
        ids.push(id);
    }
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"shop\"\n[topics.orders]\n[sources.q]\ntype = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{stream}\"\ntopic = \"orders\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node
        .wait_topic_events("orders", 200, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 200, "once each");
    let ns: Vec<u64> = got
        .iter()
        .map(|e| {
            e["data"]["n"]
                .as_u64()
                .or_else(|| e["data"]["n"].as_str()?.parse().ok())
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>(), "in stream order");
    let plain = &got[1];
    assert_eq!(plain["type"], "gale.redis.message");
    assert_eq!(plain["source"], format!("/gale/redis/{stream}"));
    assert_eq!(plain["id"], format!("q/{stream}/{}", ids[1]));
    assert_eq!(plain["subject"], ids[1]);
    assert_eq!(plain["region"], "eu");
    assert_eq!(plain["datacontenttype"], "application/json");
    assert!(plain["time"].as_str().unwrap().ends_with('Z'));
    // A record: its fields as a JSON object.
    assert_eq!(got[25]["data"], json!({ "n": "25", "sku": "a-1" }));
    assert_eq!(got[25]["type"], "gale.redis.message");
    // A CloudEvent written field by field: taken as that event.
    assert_eq!(
        (&got[50]["id"], &got[50]["type"], &got[50]["source"]),
        (&json!("ce-50"), &json!("order.placed"), &json!("/shop"))
    );

    let s = node.wait_streaming("q").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = s;
    while s.position.as_deref() != Some(ids[199].as_str()) {
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = node.source("q").await.unwrap();
    }
    assert_eq!(s.lag_messages, Some(0), "{s:?}");

    // Node down: entries added meanwhile wait in the stream.
    let mut node = node;
    node.stop().await;
    add_numbers(&mut conn, &stream, 200, 250).await;
    let node = node.restart().await;
    node.wait_topic_events("orders", 250, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = node.topic_events("orders").await;
    assert_eq!(got.len(), 250, "no loss, no duplicates");
    assert_eq!(numbers(&got[200..]), (200..250).collect::<Vec<u64>>());
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 250);
    wait_nothing_pending(&mut conn, &stream, "gale_shop_q").await;

    // Removing the source deletes the group Gale made (not the stream).
    deploy(&node, "[app]\nname = \"shop\"\n[topics.orders]\n").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while groups(&mut conn, &stream)
        .await
        .contains(&"gale_shop_q".to_string())
    {
        assert!(Instant::now() < deadline, "the group was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    del(&mut conn, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latest_skips_what_the_stream_held_and_abandoned_entries_are_claimed() {
    let mut conn = connect(REDIS).await;
    let stream = unique("gale:c:");
    add_numbers(&mut conn, &stream, 0, 5).await;
    // Another consumer of a group takes entries and never acknowledges.
    let _: Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .query_async(&mut conn)
        .await
        .unwrap();
    add_numbers(&mut conn, &stream, 5, 8).await;
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("crashed")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"c\"\n[topics.t]\n[topics.u]\n\
         [sources.claimer]\ntype = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{stream}\"\ngroup = \"g\"\nclaim_after = \"1s\"\ntopic = \"t\"\n\
         [sources.late]\ntype = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{stream}\"\nstart = \"latest\"\ntopic = \"u\"\n"
    );
    deploy(&node, &manifest).await;
    node.wait_streaming("late").await;
    let got = node.wait_topic_events("t", 3, Duration::from_secs(30)).await;
    assert_eq!(
        numbers(&got),
        vec![5, 6, 7],
        "claimed from the consumer that left them"
    );
    add_numbers(&mut conn, &stream, 8, 10).await;
    let got = node.wait_topic_events("t", 5, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got), vec![5, 6, 7, 8, 9]);
    let late = node.wait_topic_events("u", 2, Duration::from_secs(30)).await;
    assert_eq!(numbers(&late), vec![8, 9], "start = latest: only what came after");
    wait_nothing_pending(&mut conn, &stream, "g").await;
    let s = node.source("claimer").await.unwrap();
    assert_eq!(s.state, "running", "{s:?}");
    del(&mut conn, &stream).await;
}

/// A poison entry (not JSON, with `format = "json"`) and one Redis has
/// handed over too often are parked in the dead-letter topic with the
/// reason; the entries behind them flow, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_parked_and_the_stream_flows_on() {
    let mut conn = connect(REDIS).await;
    let stream = unique("gale:p:");
    let group = "gale_p_q";
    let _: Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Entry 0: handed to the source's consumer five times already (as if
    // it had crashed the node each time).
    let stuck = add(&mut conn, &stream, &[("data", &json!({ "n": 0 }).to_string())]).await;
    for from in [">", "0", "0", "0", "0"] {
        let _: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("q")
            .arg("STREAMS")
            .arg(&stream)
            .arg(from)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut poison = String::new();
    for n in 1..10u32 {
        let body = if n == 3 {
            "not json".to_string()
        } else {
            json!({ "n": n }).to_string()
        };
        let id = add(&mut conn, &stream, &[("data", &body)]).await;
        if n == 3 {
            poison = id;
        }
    }
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"p\"\n[topics.orders]\n[sources.q]\ntype = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{stream}\"\nformat = \"json\"\ntopic = \"orders\"\ndead_letter = \"orders-rejected\"\n"
    );
    deploy(&node, &manifest).await;
    let got = node.wait_topic_events("orders", 8, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got), vec![1, 2, 4, 5, 6, 7, 8, 9]);
    let parked = node
        .wait_topic_events("orders-rejected", 2, Duration::from_secs(10))
        .await;
    assert_eq!(parked[0]["id"], format!("q/{stream}/{stuck}"));
    assert!(
        parked[0]["galeerror"].as_str().unwrap().contains("6 times"),
        "{}",
        parked[0]
    );
    assert_eq!(parked[1]["id"], format!("q/{stream}/{poison}"));
    assert!(
        parked[1]["galeerror"].as_str().unwrap().contains("JSON"),
        "{}",
        parked[1]
    );
    assert_eq!(parked[1]["data_base64"], "bm90IGpzb24=", "the body, kept");
    let s = node.source("q").await.unwrap();
    assert_eq!((s.published, s.parked), (8, 2), "{s:?}");
    wait_nothing_pending(&mut conn, &stream, group).await;
    del(&mut conn, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_source_clearly_and_leave_the_others_running() {
    let mut conn = connect(REDIS).await;
    let not_a_stream = unique("gale:s:");
    let _: () = redis::cmd("SET")
        .arg(&not_a_stream)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let node = TestNode::start().await;
    let manifest = format!(
        r#"[app]
name = "bad"
[topics.t]
[sources.unreachable]
type = "redis"
url = "redis://user:secret@127.0.0.1:1"
stream = "s"
topic = "t"
[sources.wrong]
type = "redis"
url = "redis://galenobody:s3cret@127.0.0.1:6379"
stream = "s"
topic = "t"
[sources.notastream]
type = "redis"
url = "{REDIS}"
stream = "{not_a_stream}"
topic = "t"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "t"
"#
    );
    deploy(&node, &manifest).await;
    let e = node.wait_failure("unreachable").await;
    assert!(e.contains("cannot reach Redis at 127.0.0.1:1"), "{e}");
    assert!(!e.contains("secret"), "no password in errors: {e}");
    let e = node.wait_failure("wrong").await;
    assert!(e.contains("refused") && e.contains("user and password"), "{e}");
    assert!(!e.contains("s3cret"), "no password in errors: {e}");
    let e = node.wait_failure("notastream").await;
    assert!(
        e.contains(&format!("key `{not_a_stream}`")) && e.contains("not a stream"),
        "{e}"
    );
    // The schedule next to them fires on.
    node.wait_firing("clock").await;
    // A bad url or setting is refused at deploy, naming the key.
    for (settings, key) in [
        ("url = \"http://127.0.0.1:6379\"\nstream = \"s\"", "sources.q.url"),
        ("url = \"redis://127.0.0.1:x\"\nstream = \"s\"", "sources.q.url"),
        (
            "url = \"redis://127.0.0.1\"\nstream = \"a b\"",
            "sources.q.stream",
        ),
        (
            "url = \"redis://127.0.0.1\"\nstream = \"s\"\nstart = \"middle\"",
            "middle",
        ),
        (
            "url = \"redis://127.0.0.1\"\nstream = \"s\"\nclaim_after = \"0s\"",
            "sources.q.claim_after",
        ),
    ] {
        let m = format!(
            "[app]\nname = \"bad2\"\n[topics.t]\n[sources.q]\ntype = \"redis\"\ntopic = \"t\"\n{settings}\n"
        );
        let err = node.deploy_from(&m, Path::new(".")).await.unwrap_err();
        assert!(err.message.contains(key), "{key}: {}", err.message);
    }
    del(&mut conn, &not_a_stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_to_and_nothing_is_lost() {
    let mut server = Server::start();
    let mut conn = connect(&server.url()).await;
    add_numbers(&mut conn, "r", 0, 100).await;
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"r\"\n[topics.t]\n[sources.q]\ntype = \"redis\"\nurl = \"{}\"\nstream = \"r\"\ntopic = \"t\"\n",
        server.url()
    );
    deploy(&node, &manifest).await;
    node.wait_topic_events("t", 100, Duration::from_secs(30)).await;
    // More entries flowing while the server goes down and comes back.
    add_numbers(&mut conn, "r", 100, 150).await;
    server.down();
    let e = node.wait_failure("q").await;
    assert!(e.contains("Redis at 127.0.0.1:"), "{e}");
    server.up();
    let mut conn = connect(&server.url()).await;
    add_numbers(&mut conn, "r", 150, 200).await;
    let got = node.wait_topic_events("t", 200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.topic_events("t").await.len(), 200, "nothing twice");
    assert_eq!(numbers(&got), (0..200).collect::<Vec<u64>>());
    wait_nothing_pending(&mut conn, "r", "gale_r_q").await;
    let s = node.source("q").await.unwrap();
    assert_eq!(s.state, "running", "{s:?}");
}

/// The node is killed (SIGKILL) while 5,000 entries flow: after a restart
/// every entry is in the topic once, in stream order, and nothing stays
/// pending in the group.
#[test]
fn kill_9_of_the_node_loses_nothing_and_leaves_nothing_pending() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = connect(REDIS).await;
        let stream = unique("gale:k:");
        add_numbers(&mut conn, &stream, 0, 2500).await;
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut node = TestNode::attach(data, &gateway, &admin);
        let manifest = format!(
            "[app]\nname = \"k\"\n[topics.t]\n[sources.q]\ntype = \"redis\"\nurl = \"{REDIS}\"\nstream = \"{stream}\"\ntopic = \"t\"\n"
        );
        deploy(&node, &manifest).await;
        // Killed once entries are handed over and not all acknowledged.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if groups(&mut conn, &stream).await.contains(&"gale_k_q".to_string())
                && pending(&mut conn, &stream, "gale_k_q").await > 0
                || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(child);
        eprintln!("at the kill: {} entries pending", pending(&mut conn, &stream, "gale_k_q").await);
        add_numbers(&mut conn, &stream, 2500, 5000).await;
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        let got = node.wait_topic_events("t", 5000, Duration::from_secs(120)).await;
        assert_eq!(numbers(&got), (0..5000).collect::<Vec<u64>>(), "every entry, once, in order");
        wait_nothing_pending(&mut conn, &stream, "gale_k_q").await;
        drop(child);
        del(&mut conn, &stream).await;
    });
}
