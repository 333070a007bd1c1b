//! The mysql source against a real MariaDB: each test starts its own
//! throwaway server writing a row-based binlog (`common/mariadb.rs`); the
//! machine's shared server (127.0.0.1:3306, binlog off) is only read, to
//! see the source refuse it.

mod common;

use common::TestNode;
use common::mariadb::MariaDb;
use gale_core::api::SourceInfo;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

async fn sources(node: &TestNode) -> Vec<SourceInfo> {
    node.admin_get("/v1/sources").await
}

async fn source(node: &TestNode, name: &str) -> SourceInfo {
    sources(node)
        .await
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("source {name} is listed"))
}

fn manifest(url: &str, tables: &str, extra: &str) -> String {
    format!(
        r#"
[app]
name = "shop"
[topics.changes]
[sources.shopdb]
type = "mysql"
url = "{url}"
tables = {tables}
topic = "changes"
{extra}
"#
    )
}

fn data(e: &Value) -> &Value {
    &e["data"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_changes_arrive_in_commit_order_typed_with_ids_and_keys() {
    let db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop(
        r"CREATE DATABASE shop;
          CREATE USER 'gale'@'%' IDENTIFIED BY 'secret';
          GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'gale'@'%';
          CREATE TABLE shop.orders (
            id INT PRIMARY KEY, sku VARCHAR(20), qty SMALLINT UNSIGNED, price DECIMAL(10,2),
            placed DATETIME(3), seen TIMESTAMP NULL, doc JSON, raw VARBINARY(8),
            state ENUM('new','paid'), big BIGINT UNSIGNED, note TEXT);
          CREATE TABLE shop.customers (region CHAR(2), id BIGINT, name VARCHAR(40), PRIMARY KEY (region, id));
          CREATE TABLE shop.audit (id INT PRIMARY KEY AUTO_INCREMENT, what TEXT);",
    )
    .await
    .unwrap();
    let node = TestNode::start().await;
    // A user with a password and only the replication grants.
    let url = format!("mysql://gale:secret@127.0.0.1:{}/shop", db.port);
    let listener = "[functions.listener]\nsource = \"testbed.wasm\"\n[[functions.listener.events]]\ntopic = \"changes\"\n";
    node.deploy(&manifest(&url, r#"["orders", "shop.customers"]"#, listener))
        .await
        .unwrap();
    node.wait_streaming("shopdb").await;

    c.query_drop(
        r#"SET time_zone = '+00:00';
           BEGIN;
           INSERT INTO shop.orders VALUES (1, 'apple', 65535, 12.50, '2026-01-02 03:04:05.678',
             '2026-01-02 03:04:05', '{"a": [1, 2]}', X'00FF', 'paid', 18446744073709551615, NULL);
           INSERT INTO shop.customers VALUES ('eu', 10, 'Ada');
           COMMIT;
           UPDATE shop.orders SET qty = 3, note = 'gift' WHERE id = 1;
           INSERT INTO shop.audit (what) VALUES ('not followed');
           DELETE FROM shop.customers WHERE id = 10;
           TRUNCATE TABLE shop.orders;"#,
    )
    .await
    .unwrap();

    let got = node
        .wait_topic_events("changes", 5, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = node.topic_events("changes").await;
    assert_eq!(
        got_all.len(),
        5,
        "the unfollowed table is not published: {got_all:#?}"
    );
    let ops: Vec<(&str, &str)> = got
        .iter()
        .map(|e| {
            (
                data(e)["op"].as_str().unwrap(),
                data(e)["source"]["table"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("c", "orders"),
            ("c", "customers"),
            ("u", "orders"),
            ("d", "customers"),
            ("t", "orders")
        ]
    );
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "gale.db.row.inserted",
            "gale.db.row.inserted",
            "gale.db.row.updated",
            "gale.db.row.deleted",
            "gale.db.row.truncated"
        ]
    );

    // Values typed as JSON.
    let inserted = &data(&got[0])["after"];
    assert_eq!(
        *inserted,
        json!({
            "id": 1, "sku": "apple", "qty": 65535, "price": "12.50",
            "placed": "2026-01-02T03:04:05.678", "seen": "2026-01-02T03:04:05Z",
            "doc": {"a": [1, 2]}, "raw": "AP8=", "state": "paid",
            "big": 18446744073709551615u64, "note": null
        })
    );
    assert_eq!(data(&got[0])["before"], Value::Null);
    assert_eq!(got[0]["partitionkey"], "1");
    assert_eq!(got[0]["source"], "/gale/mysql/shop/shop.orders");
    assert_eq!(got[1]["partitionkey"], r#"["eu",10]"#);
    assert_eq!(data(&got[1])["after"]["name"], "Ada");

    // An update has the whole row before and after.
    let update = data(&got[2]);
    assert_eq!(update["before"]["qty"], 65535);
    assert_eq!(update["before"]["note"], Value::Null);
    assert_eq!(update["after"]["qty"], 3);
    assert_eq!(update["after"]["note"], "gift");
    assert_eq!(update["after"]["doc"], json!({"a": [1, 2]}));
    let delete = data(&got[3]);
    assert_eq!(delete["after"], Value::Null);
    assert_eq!(delete["before"], json!({"region": "eu", "id": 10, "name": "Ada"}));
    assert_eq!(got[4]["partitionkey"], Value::Null);

    // Ids: the transaction's GTID and the row's index in it; the GTIDs are
    // the server's, in commit order.
    let gtids: Vec<&str> = got
        .iter()
        .map(|e| data(e)["source"]["gtid"].as_str().unwrap())
        .collect();
    assert_eq!(gtids[0], gtids[1], "one transaction");
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], format!("shopdb/{}", gtids[0]));
    assert_eq!(ids[1], format!("shopdb/{}/1", gtids[0]));
    let seqs: Vec<u64> = gtids[1..]
        .iter()
        .map(|g| g.rsplit('-').next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{gtids:?}");
    let server_gtid: String = c.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    assert_eq!(gtids[4], server_gtid);
    let commit: i64 = data(&got[0])["source"]["ts_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - commit).abs() < 60_000, "commit time {commit} vs now {now}");

    // The subscriber got them; the status says where the source is.
    node.logs("listener", 5).await;
    let status = source(&node, "shopdb").await;
    assert_eq!(status.published, 5, "{status:?}");
    assert!(
        status.position.as_deref().unwrap().contains(&server_gtid),
        "{status:?}"
    );
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(status.lag_ms, Some(0), "caught up: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_the_node_and_a_kill_9_of_the_database_lose_nothing() {
    let mut db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop("CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, qty INT)")
        .await
        .unwrap();
    let mut node = TestNode::start().await;
    node.deploy(&manifest(&db.url("shop"), r#"["orders"]"#, ""))
        .await
        .unwrap();
    node.wait_streaming("shopdb").await;

    // Rows keep coming while the node restarts.
    let writer = {
        let url = db.url("shop");
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
            for id in 1..=150 {
                c.exec_drop("INSERT INTO orders VALUES (?, ?)", (id, id))
                    .await
                    .unwrap();
                if id % 25 == 0 {
                    // A transaction of many rows, too.
                    c.exec_drop("UPDATE orders SET qty = qty + 1 WHERE id <= ?", (id,))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    node = node.restart().await;
    writer.await.unwrap();
    let expected_first: usize = 150 + (1..=6).map(|k| k * 25).sum::<usize>();
    node.wait_topic_events("changes", expected_first, Duration::from_secs(30))
        .await;

    // kill -9 of the database while the source streams from it; rows
    // written before the kill and after the restart all arrive.
    c.query_drop("INSERT INTO shop.orders VALUES (1000, 0)")
        .await
        .unwrap();
    drop(c);
    db.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down = source(&node, "shopdb").await;
    assert_eq!(down.state, "failed", "{down:?}");
    assert!(
        down.last_error
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("127.0.0.1:{}", db.port)),
        "{down:?}"
    );
    db.restart().await;
    let mut c = db.conn().await;
    for id in 1001..=1050 {
        c.exec_drop("INSERT INTO shop.orders VALUES (?, 0)", (id,))
            .await
            .unwrap();
    }
    let total = expected_first + 51;
    let got = node
        .wait_topic_events("changes", total, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() == total {
        node.topic_events("changes").await
    } else {
        got
    };
    assert_eq!(got.len(), total, "nothing lost, nothing twice");
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total, "ids are unique");
    let mut inserted: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &got {
        if data(e)["op"] == "c" {
            *inserted
                .entry(data(e)["after"]["id"].as_i64().unwrap())
                .or_default() += 1;
        }
    }
    let want: Vec<i64> = (1..=150).chain(1000..=1050).collect();
    assert_eq!(inserted.keys().copied().collect::<Vec<_>>(), want);
    assert!(inserted.values().all(|n| *n == 1));
    let s = node.wait_streaming("shopdb").await;
    assert_eq!(s.state, "running", "{s:?}");

    // A transaction of 20,000 rows arrives whole, published in parts, its
    // rows numbered in order under its GTID.
    c.query_drop("USE shop; INSERT INTO orders SELECT seq, 1 FROM seq_2000_to_21999")
        .await
        .unwrap();
    let got = node
        .wait_topic_events("changes", total + 20_000, Duration::from_secs(60))
        .await;
    let big = &got[total..];
    assert_eq!(big.len(), 20_000);
    let gtid = data(&big[0])["source"]["gtid"].as_str().unwrap();
    for (n, e) in big.iter().enumerate() {
        assert_eq!(data(e)["after"]["id"], 2000 + n);
        let id = match n {
            0 => format!("shopdb/{gtid}"),
            n => format!("shopdb/{gtid}/{n}"),
        };
        assert_eq!(e["id"], id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_mid_stream_show_in_the_events() {
    let db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop("CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, a VARCHAR(10))")
        .await
        .unwrap();
    let node = TestNode::start().await;
    node.deploy(&manifest(&db.url("shop"), r#"["items"]"#, ""))
        .await
        .unwrap();
    node.wait_streaming("shopdb").await;

    // The binlog names no columns by default: the source reads them again
    // from the server when the table changes.
    let steps = [
        "INSERT INTO shop.items VALUES (1, 'one')",
        "ALTER TABLE shop.items ADD COLUMN b INT NOT NULL DEFAULT 7",
        "INSERT INTO shop.items VALUES (2, 'two', 2)",
        "UPDATE shop.items SET b = 8 WHERE id = 1",
        "ALTER TABLE shop.items DROP COLUMN a",
        "INSERT INTO shop.items VALUES (3, 3)",
        "ALTER TABLE shop.items ADD COLUMN c VARCHAR(5) AFTER id, DROP COLUMN b",
        "INSERT INTO shop.items VALUES (4, 'four')",
    ];
    let mut n = 0;
    for step in steps {
        c.query_drop(step).await.unwrap();
        if !step.starts_with("ALTER") {
            n += 1;
            node.wait_topic_events("changes", n, Duration::from_secs(20))
                .await;
        }
    }
    let got = node.topic_events("changes").await;
    let afters: Vec<&Value> = got.iter().map(|e| &data(e)["after"]).collect();
    assert_eq!(*afters[0], json!({"id": 1, "a": "one"}));
    assert_eq!(*afters[1], json!({"id": 2, "a": "two", "b": 2}));
    assert_eq!(data(&got[2])["before"], json!({"id": 1, "a": "one", "b": 7}));
    assert_eq!(*afters[2], json!({"id": 1, "a": "one", "b": 8}));
    assert_eq!(*afters[3], json!({"id": 3, "b": 3}));
    assert_eq!(*afters[4], json!({"id": 4, "c": "four"}));

    // With binlog_row_metadata=FULL the binlog names the columns itself, so
    // a burst of changes read long after is named as it was written.
    c.query_drop("SET GLOBAL binlog_row_metadata = FULL")
        .await
        .unwrap();
    drop(c);
    let mut c = db.conn().await;
    c.query_drop(
        r"INSERT INTO shop.items VALUES (5, 'five');
          ALTER TABLE shop.items ADD COLUMN d INT UNSIGNED NOT NULL DEFAULT 4294967295;
          INSERT INTO shop.items VALUES (6, 'six', 6);
          ALTER TABLE shop.items DROP COLUMN c;
          INSERT INTO shop.items VALUES (7, 7);",
    )
    .await
    .unwrap();
    let got = node
        .wait_topic_events("changes", 8, Duration::from_secs(20))
        .await;
    let afters: Vec<&Value> = got[5..].iter().map(|e| &data(e)["after"]).collect();
    assert_eq!(*afters[0], json!({"id": 5, "c": "five"}));
    assert_eq!(*afters[1], json!({"id": 6, "c": "six", "d": 6}));
    assert_eq!(*afters[2], json!({"id": 7, "d": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_then_the_changes_after_it_without_a_gap() {
    let db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop(
        r"CREATE DATABASE shop;
          CREATE TABLE shop.orders (id INT PRIMARY KEY, qty INT, at TIMESTAMP NULL);
          SET time_zone = '+00:00';
          INSERT INTO shop.orders VALUES (1, 10, '2026-01-02 03:04:05'), (2, 20, NULL), (3, 30, NULL);",
    )
    .await
    .unwrap();
    let node = TestNode::start().await;
    // Rows keep coming while the snapshot is taken.
    let writer = {
        let url = db.url("shop");
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::from_url(url).await.unwrap();
            for id in 100..400 {
                c.exec_drop("INSERT INTO orders VALUES (?, ?, NULL)", (id, id))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.deploy(&manifest(
        &db.url("shop"),
        r#"["orders"]"#,
        "snapshot = \"initial\"",
    ))
    .await
    .unwrap();
    writer.await.unwrap();
    node.wait_streaming("shopdb").await;
    c.query_drop("UPDATE shop.orders SET qty = 11 WHERE id = 1")
        .await
        .unwrap();

    let total = 3 + 300 + 1;
    node.wait_topic_events("changes", total, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = node.topic_events("changes").await;
    assert_eq!(got.len(), total, "each row once, as snapshot or as insert");
    let snapshot: Vec<&Value> = got.iter().filter(|e| data(e)["op"] == "r").collect();
    assert!(snapshot.len() >= 3, "{snapshot:#?}");
    assert_eq!(
        data(snapshot[0])["after"],
        json!({"id": 1, "qty": 10, "at": "2026-01-02T03:04:05Z"})
    );
    assert_eq!(snapshot[0]["type"], "gale.db.row.snapshot");
    assert_eq!(data(snapshot[0])["source"]["snapshot"], "true");
    assert_eq!(snapshot[0]["partitionkey"], "1");
    // Snapshot rows first, then the changes.
    let first_change = got.iter().position(|e| data(e)["op"] != "r").unwrap();
    assert_eq!(first_change, snapshot.len());
    let mut rows: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &got[..total - 1] {
        assert!(matches!(data(e)["op"].as_str(), Some("r" | "c")), "{e}");
        *rows.entry(data(e)["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let want: Vec<i64> = (1..=3).chain(100..400).collect();
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), want, "no gap");
    assert!(rows.values().all(|n| *n == 1), "no overlap");
    let last = data(&got[total - 1]);
    assert_eq!(
        (last["op"].as_str(), &last["after"]["qty"]),
        (Some("u"), &json!(11))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_say_what_is_wrong_and_leave_the_rest_running() {
    let db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop(
        r"CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY);
          CREATE USER 'reader'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON shop.* TO 'reader'@'%';",
    )
    .await
    .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let port = db.port;
    let manifest = format!(
        r#"
[app]
name = "shop"
[topics.changes]
[topics.ticks]
[sources.nobinlog]
type = "mysql"
url = "mysql://root@127.0.0.1:3306/mysql"
tables = ["mysql.user"]
topic = "changes"
[sources.badpassword]
type = "mysql"
url = "mysql://root:wrong@127.0.0.1:{port}/shop"
tables = ["orders"]
topic = "changes"
[sources.notable]
type = "mysql"
url = "mysql://root@127.0.0.1:{port}/shop"
tables = ["orders", "nope"]
topic = "changes"
[sources.noprivilege]
type = "mysql"
url = "mysql://reader:pw@127.0.0.1:{port}/shop"
tables = ["orders"]
topic = "changes"
[sources.nowhere]
type = "mysql"
url = "mysql://root@127.0.0.1:{closed_port}/shop"
tables = ["orders"]
topic = "changes"
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "ticks"
[functions.listener]
source = "testbed.wasm"
[[functions.listener.events]]
topic = "ticks"
"#
    );
    let node = TestNode::start().await;
    node.deploy(&manifest).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let all = sources(&node).await;
        let failed: BTreeMap<String, String> = all
            .iter()
            .filter(|s| s.kind == "mysql" && s.state == "failed")
            .map(|s| (s.name.clone(), s.last_error.clone().unwrap_or_default()))
            .collect();
        if failed.len() == 5 {
            break failed;
        }
        assert!(Instant::now() < deadline, "{all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let said = |name: &str, words: &[&str]| {
        let e = &failed[name];
        for w in words {
            assert!(e.contains(w), "{name}: {e:?} should say {w:?}");
        }
    };
    said("nobinlog", &["127.0.0.1:3306", "log_bin is OFF", "--log-bin"]);
    said(
        "badpassword",
        &[&format!("127.0.0.1:{port}"), "refused user \"root\"", "password"],
    );
    said("notable", &["shop.nope does not exist", "`tables`"]);
    said(
        "noprivilege",
        &[
            "user \"reader\" lacks a privilege",
            "REPLICATION SLAVE",
            "BINLOG MONITOR",
        ],
    );
    said(
        "nowhere",
        &[&format!(
            "cannot reach the MariaDB/MySQL server at 127.0.0.1:{closed_port}"
        )],
    );

    // The rest of the node goes on: the clock ticks, its subscriber runs.
    let clock = source(&node, "clock").await;
    assert_eq!(clock.state, "running", "{clock:?}");
    let before = node.topic_events("ticks").await.len();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(node.topic_events("ticks").await.len() > before);
    node.logs("listener", 1).await;
    assert!(node.topic_events("changes").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_by_a_restart_is_redone_and_each_row_stored_once() {
    let db = MariaDb::start().await;
    let mut c = db.conn().await;
    c.query_drop(
        r"CREATE DATABASE shop; USE shop;
          CREATE TABLE orders (id INT PRIMARY KEY, qty INT);
          INSERT INTO orders SELECT seq, seq FROM seq_1_to_30000;",
    )
    .await
    .unwrap();
    let node = TestNode::start().await;
    node.deploy(&manifest(
        &db.url("shop"),
        r#"["orders"]"#,
        "snapshot = \"initial\"",
    ))
    .await
    .unwrap();
    // Stop the node once part of the snapshot is published.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = source(&node, "shopdb").await;
        if s.published >= 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let meta = node.node.as_ref().unwrap().stores().metadata.clone();
    let mut node = node;
    node.stop().await;
    assert!(
        meta.get("checkpoints/sources/shopdb").await.unwrap().is_none(),
        "the snapshot was done before the node stopped; the test needs a bigger table"
    );
    drop(meta);
    let node = node.restart().await;
    let got = node
        .wait_topic_events("changes", 30_000, Duration::from_secs(120))
        .await;
    node.wait_streaming("shopdb").await;
    c.query_drop("INSERT INTO shop.orders VALUES (0, 0)")
        .await
        .unwrap();
    let got = if got.len() == 30_000 {
        node.wait_topic_events("changes", 30_001, Duration::from_secs(20))
            .await
    } else {
        got
    };
    assert_eq!(got.len(), 30_001, "each snapshot row once, then the insert");
    let ids: BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 30_001);
    assert!(
        ids.contains("shopdb/snapshot/shop.orders/17"),
        "ids name table and key"
    );
    assert_eq!(data(&got[30_000])["op"], "c");
    // The redone snapshot published again what the cut one had stored;
    // the topic kept one of each.
    let s = source(&node, "shopdb").await;
    assert!(s.published < 30_001, "{s:?}");
}
