//! PostgreSQL change data capture against real, throwaway servers
//! (`common::postgres`): row changes arrive as events in commit order,
//! nothing is lost across crashes of the node or of the database, and bad
//! settings are named.

mod common;

use common::TestNode;
use common::postgres::Pg;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// An app with topic `rows` fed by source `db` with the given settings.
fn app(name: &str, settings: &str) -> String {
    format!(
        "[app]\nname = \"{name}\"\n[topics.rows]\n[sources.db]\ntype = \"postgres\"\ntopic = \"rows\"\n{settings}\n"
    )
}

/// (type, table, key) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("gale.db.row.")
                    .to_string(),
                e["table"].as_str().unwrap().to_string(),
                e.get("partitionkey").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_changes_arrive_in_commit_order_with_before_after_and_schema_changes() {
    let pg = Pg::start();
    pg.psql("CREATE DATABASE shop");
    pg.psql_in(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, qty int, note text, memo text, paid bool, amount numeric(10,2), doc jsonb, raw bytea, at timestamptz);
         CREATE TABLE audit (who text, what text);
         ALTER TABLE audit REPLICA IDENTITY FULL;",
    );
    let node = TestNode::start().await;
    node.deploy(&app(
        "shop",
        &format!(
            "url = \"{}\"\ntables = [\"orders\", \"public.audit\"]",
            pg.url("postgres", "shop")
        ),
    ))
    .await
    .unwrap();
    node.wait_streaming("db").await;

    let db = pg.client("shop").await;
    db.batch_execute(
        "INSERT INTO orders VALUES (1, 2, 'hi', NULL, false, 12.50, '{\"a\": [1]}', '\\x01ff', '2026-12-07 10:00:00.25+00');
         BEGIN; UPDATE orders SET qty = 3, paid = true WHERE id = 1; INSERT INTO audit VALUES ('ann', 'pay'); COMMIT;
         UPDATE audit SET what = 'paid' WHERE who = 'ann';
         DELETE FROM orders WHERE id = 1;
         TRUNCATE audit;",
    )
    .await
    .unwrap();
    let got = node.wait_topic_events("rows", 6, Duration::from_secs(30)).await;
    assert_eq!(
        summary(&got),
        vec![
            ("inserted".into(), "public.orders".into(), json!("1")),
            ("updated".into(), "public.orders".into(), json!("1")),
            (
                "inserted".into(),
                "public.audit".into(),
                json!(r#"["ann","pay"]"#)
            ),
            (
                "updated".into(),
                "public.audit".into(),
                json!(r#"["ann","paid"]"#)
            ),
            ("deleted".into(), "public.orders".into(), json!("1")),
            ("truncated".into(), "public.audit".into(), Value::Null),
        ]
    );
    let insert = &got[0]["data"];
    assert_eq!(insert["op"], "c");
    assert_eq!(insert["before"], Value::Null);
    assert_eq!(
        insert["after"],
        json!({"id": 1, "qty": 2, "note": "hi", "memo": null, "paid": false, "amount": "12.50",
               "doc": {"a": [1]}, "raw": "Af8=", "at": "2026-12-07T10:00:00.25Z"})
    );
    assert_eq!(insert["source"]["db"], "shop");
    assert_eq!(insert["source"]["table"], "orders");
    assert_eq!(insert["source"]["connector"], "postgresql");
    assert!(insert["source"]["lsn"].as_str().unwrap().contains('/'));
    assert!(insert["source"]["txId"].as_u64().unwrap() > 0);
    assert_eq!(got[0]["source"], "/gale/postgresql/shop/public.orders");
    assert!(got[0]["time"].as_str().unwrap().ends_with('Z'));
    // The update in the same transaction as the audit insert shares its lsn.
    assert_eq!(got[1]["data"]["source"]["lsn"], got[2]["data"]["source"]["lsn"]);
    assert_eq!(got[1]["data"]["after"]["qty"], 3);
    // Default identity: the old row is not sent unless the key changed.
    assert_eq!(got[1]["data"]["before"], Value::Null);
    // REPLICA IDENTITY FULL: the whole old row.
    assert_eq!(got[3]["data"]["before"], json!({"who": "ann", "what": "pay"}));
    assert_eq!(got[3]["data"]["after"], json!({"who": "ann", "what": "paid"}));
    // A delete carries the key.
    assert_eq!(got[4]["data"]["op"], "d");
    assert_eq!(got[4]["data"]["before"]["id"], 1);
    assert_eq!(got[4]["data"]["after"], Value::Null);
    assert_eq!(got[5]["data"]["op"], "t");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len(), "ids are unique");

    // Schema changes mid-stream; an unchanged TOAST value is named.
    db.batch_execute(
        "ALTER TABLE orders ADD COLUMN region text;
         INSERT INTO orders (id, qty, region) VALUES (2, 1, 'eu');
         ALTER TABLE orders DROP COLUMN note;
         INSERT INTO orders (id, qty, memo) VALUES (3, 1, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)));
         UPDATE orders SET qty = 9 WHERE id = 3;",
    )
    .await
    .unwrap();
    let got = node.wait_topic_events("rows", 9, Duration::from_secs(30)).await;
    assert_eq!(got[6]["data"]["after"]["region"], "eu");
    assert!(got[6]["data"]["after"].get("note").is_some());
    assert!(got[7]["data"]["after"].get("note").is_none(), "{}", got[7]);
    assert_eq!(got[7]["data"]["after"]["memo"].as_str().unwrap().len(), 12_800);
    let update = &got[8]["data"];
    assert_eq!(update["after"]["qty"], 9);
    assert!(update["after"].get("memo").is_none());
    assert_eq!(update["unchanged"], json!(["memo"]));

    // `gale sources` shows the confirmed position, caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = node.source("db").await.unwrap();
        let confirmed = pg.psql_in(
            "shop",
            "SELECT confirmed_flush_lsn >= pg_current_wal_insert_lsn() - 1024 FROM pg_replication_slots WHERE slot_name = 'gale_shop_db'",
        );
        if s.lag_bytes == Some(0) && confirmed == "t" {
            assert!(s.position.unwrap().contains('/'));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up: {s:?}, confirmed {confirmed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_then_the_changes_after_it_and_removal_drops_the_slot() {
    let pg = Pg::start();
    pg.psql_in(
        "postgres",
        "CREATE TABLE items (sku text PRIMARY KEY, stock int);
         INSERT INTO items SELECT 'sku-' || i, i FROM generate_series(1, 2500) i;",
    );
    let node = TestNode::start().await;
    let manifest = app(
        "stock",
        &format!(
            "url = \"{}\"\ntables = [\"items\"]\nsnapshot = \"initial\"",
            pg.url("postgres", "postgres")
        ),
    );
    node.deploy(&manifest).await.unwrap();
    node.wait_streaming("db").await;
    pg.psql("UPDATE items SET stock = 0 WHERE sku = 'sku-7'; INSERT INTO items VALUES ('new', 1)");
    let got = node
        .wait_topic_events("rows", 2502, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 2502);
    let snapshot: Vec<&Value> = got.iter().take(2500).collect();
    assert!(
        snapshot
            .iter()
            .all(|e| e["type"] == "gale.db.row.snapshot" && e["data"]["op"] == "r")
    );
    assert!(snapshot.iter().all(|e| e["data"]["source"]["snapshot"] == "true"));
    let seven = snapshot.iter().find(|e| e["partitionkey"] == "sku-7").unwrap();
    assert_eq!(seven["data"]["after"], json!({"sku": "sku-7", "stock": 7}));
    assert_eq!(
        summary(&got[2500..]),
        vec![
            ("updated".into(), "public.items".into(), json!("sku-7")),
            ("inserted".into(), "public.items".into(), json!("new")),
        ]
    );

    // A restart neither snapshots again nor repeats a change.
    let node = node.restart().await;
    node.wait_streaming("db").await;
    pg.psql("DELETE FROM items WHERE sku = 'new'");
    let got = node
        .wait_topic_events("rows", 2503, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.topic_events("rows").await.len(),
        2503,
        "{:?}",
        summary(&got[2500..])
    );

    // Removing the source drops its slot and publication: no WAL is kept.
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'gale_stock_db'";
    let publications = "SELECT count(*) FROM pg_publication WHERE pubname = 'gale_stock_db'";
    assert_eq!((pg.psql(slots), pg.psql(publications)), ("1".into(), "1".into()));
    let without = manifest.split("[sources.db]").next().unwrap().to_string();
    node.deploy(&without).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql(slots) != "0" || pg.psql(publications) != "0" {
        assert!(Instant::now() < deadline, "the slot or publication stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_the_database_server_is_survived_without_loss() {
    let pg = Pg::start();
    pg.psql("CREATE TABLE ticks (n int PRIMARY KEY)");
    let node = TestNode::start().await;
    node.deploy(&app(
        "ticks",
        &format!(
            "url = \"{}\"\ntables = [\"ticks\"]",
            pg.url("postgres", "postgres")
        ),
    ))
    .await
    .unwrap();
    node.wait_streaming("db").await;
    pg.psql("INSERT INTO ticks SELECT generate_series(1, 500)");
    node.wait_topic_events("rows", 1, Duration::from_secs(30)).await;
    pg.kill9();
    // The source notices, and retries with a growing pause.
    let error = node.wait_failure("db").await;
    assert!(error.contains("PostgreSQL"), "{error}");
    pg.run();
    pg.psql("INSERT INTO ticks SELECT generate_series(501, 1000)");
    let got = node
        .wait_topic_events("rows", 1000, Duration::from_secs(90))
        .await;
    let keys: std::collections::BTreeSet<i64> = got
        .iter()
        .map(|e| e["data"]["after"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(keys.len(), 1000, "every row once");
    assert_eq!(got.len(), 1000, "no row twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_named_and_nothing_else_is_affected() {
    let pg = Pg::start();
    pg.psql("CREATE TABLE keyless (a int, b text); CREATE TABLE t (id int PRIMARY KEY)");
    let node = TestNode::start().await;
    // A function and its route keep working whatever the sources do.
    node.deploy(&common::testbed_app(
        "bystander",
        &[("echo", r#"http = [{ route = "/echo" }]"#)],
    ))
    .await
    .unwrap();
    let closed = common::postgres::free_port();
    let cases = [
        (
            format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
            "[\"t\"]",
            "cannot reach PostgreSQL",
        ),
        (
            format!("postgres://app:wrong@127.0.0.1:{}/postgres", pg.port),
            "[\"t\"]",
            "check the user and password",
        ),
        (
            format!("postgres://app:secret@127.0.0.1:{}/postgres", pg.port),
            "[\"t\"]",
            "ALTER ROLE \"app\" WITH REPLICATION",
        ),
        (
            pg.url("postgres", "postgres"),
            "[\"nope\"]",
            "no table `public.nope`",
        ),
        (
            pg.url("postgres", "postgres"),
            "[\"keyless\"]",
            "REPLICA IDENTITY FULL",
        ),
        // The machine's shared server runs with wal_level = replica.
        (
            "postgres://postgres@127.0.0.1:5432/postgres".to_string(),
            "[\"t\"]",
            "wal_level",
        ),
    ];
    for (n, (url, tables, expected)) in cases.iter().enumerate() {
        let app_name = format!("bad{n}");
        node.deploy(&app(&app_name, &format!("url = \"{url}\"\ntables = {tables}")))
            .await
            .unwrap();
        let error = node.wait_failure("db").await;
        assert!(error.contains(expected), "{url} {tables}: {error}");
        let (status, _, _) = node.get("/echo").await;
        assert_eq!(status, 200);
        node.deploy(&format!("[app]\nname = \"{app_name}\"\n"))
            .await
            .unwrap();
    }
    // Nothing was created on the server for the refused sources.
    assert_eq!(pg.psql("SELECT count(*) FROM pg_replication_slots"), "0");

    // A mistake in the manifest itself is refused at deploy.
    let err = node
        .deploy(&app("worse", "url = \"mysql://x\"\ntables = [\"t\"]"))
        .await
        .unwrap_err();
    assert!(err.message.contains("sources.db.url"), "{}", err.message);
}

/// The node is killed (SIGKILL) while 10,000 changes stream, and a
/// 50,000-row transaction arrives whole while the node's memory stays
/// bounded.
#[test]
fn kill_9_of_the_node_loses_no_change_and_leaves_no_wal_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pg = Pg::start();
        pg.psql("CREATE TABLE hits (n int PRIMARY KEY, pad text)");
        let data = tempfile::tempdir().unwrap();
        let (child, gateway, admin) = common::process::serve(data.path());
        let mut child = Some(child);
        let mut node = TestNode::attach(data, &gateway, &admin);
        node.deploy(&app("hits", &format!("url = \"{}\"\ntables = [\"hits\"]", pg.url("postgres", "postgres"))))
            .await
            .unwrap();
        node.wait_streaming("db").await;

        // 10,000 changes in 200 transactions; the node dies part-way.
        let db = pg.client("postgres").await;
        for batch in 0..200 {
            let from = batch * 50 + 1;
            db.batch_execute(&format!("INSERT INTO hits SELECT generate_series({from}, {}), 'x'", from + 49))
                .await
                .unwrap();
            if batch == 60 {
                node.wait_topic_events("rows", 1, Duration::from_secs(30)).await;
                drop(child.take());
            }
        }
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        let (child, gateway, admin) = common::process::serve(dir.path());
        let node = TestNode::attach(dir, &gateway, &admin);
        let got = node.wait_topic_events("rows", 10_000, Duration::from_secs(120)).await;
        let keys: std::collections::BTreeSet<i64> = got
            .iter()
            .map(|e| e["data"]["after"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(keys.len(), 10_000, "every change is there");
        assert_eq!(got.len(), 10_000, "and once");

        // The slot moved past them and keeps no WAL back.
        let deadline = Instant::now() + Duration::from_secs(20);
        let lag = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = 'gale_hits_db'";
        loop {
            let behind: f64 = pg.psql(lag).parse().unwrap();
            if behind < 64.0 * 1024.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the slot stays {behind} bytes behind");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 50,000 rows of 2 KiB in one transaction arrive whole; the node
        // does not hold the transaction in memory.
        let pid = child.child.id();
        let peak = || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
        };
        let before = peak();
        db.batch_execute(
            "INSERT INTO hits SELECT 100000 + i, repeat(md5(i::text), 64) FROM generate_series(1, 50000) i",
        )
        .await
        .unwrap();
        let got = node.wait_topic_events("rows", 60_000, Duration::from_secs(300)).await;
        assert_eq!(got.len(), 60_000);
        let grew = peak().saturating_sub(before);
        eprintln!("peak memory grew by {grew} MiB for a 100 MiB transaction");
        assert!(grew < 80, "the node's peak memory grew by {grew} MiB");
        drop(child);
    });
}
