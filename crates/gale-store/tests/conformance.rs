//! The embedded backend against the conformance suite
//! (`gale_store::conformance`), plus what only the embedded backend
//! promises: its data directory survives a reopen, is locked while open,
//! migrates older layouts, and takes metadata and log writes at once.

use gale_store::conformance::{self, DAY, event, ids, log};
use gale_store::{Embedded, Expect, InvocationLogs, Metadata, StoreError, Stores, Topics};
use std::time::Duration;

fn embedded() -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_passes_the_conformance_suite() {
    conformance::run(|| async {
        let (dir, store) = embedded();
        (dir, Stores::of(store))
    })
    .await;
}

#[tokio::test]
async fn embedded_logs_seq_never_goes_back() {
    let (dir, store) = embedded();
    store.append(vec![log("f", 1000)]).await.unwrap();
    store.prune(1_000_000, 1, 1000).await.unwrap();
    store.append(vec![log("f", 2_000_000)]).await.unwrap();
    let last = store.query("f", 0, 1, true).await.unwrap()[0].seq;
    drop(store);
    let store = Embedded::open(dir.path()).unwrap();
    store.append(vec![log("f", 3_000_000)]).await.unwrap();
    let after = store.query("f", last, 10, false).await.unwrap();
    assert_eq!(after.len(), 1, "numbering continues across a restart");
}

/// A damaged log row shows as one record saying so, not as an error that
/// hides the function's other logs.
#[tokio::test]
async fn embedded_damaged_log_row_is_reported_in_place() {
    let (dir, store) = embedded();
    store.append(vec![log("f", 1000)]).await.unwrap();
    store.append(vec![log("f", 2000)]).await.unwrap();
    let db = rusqlite::Connection::open(dir.path().join("gale.db")).unwrap();
    db.execute(
        "UPDATE invocation_batches SET records = 'not json' WHERE last_seq = (SELECT min(last_seq) FROM invocation_batches)",
        [],
    )
    .unwrap();
    let logs = store.query("f", 0, 10, false).await.unwrap();
    assert_eq!(logs.len(), 2);
    assert!(
        logs[0].error.as_deref().unwrap_or("").contains("unreadable"),
        "{:?}",
        logs[0]
    );
    assert_eq!(logs[1].started_at, 2000);
}

/// Data directories from before batched log rows keep their logs.
#[tokio::test]
async fn embedded_logs_from_the_json_table_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    drop(Embedded::open(dir.path()).unwrap());
    let db = rusqlite::Connection::open(dir.path().join("gale.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, function TEXT NOT NULL,
             started_at INTEGER NOT NULL, record TEXT NOT NULL);",
    )
    .unwrap();
    let old = log("f", 1000);
    db.execute(
        "INSERT INTO invocations (seq, function, started_at, record) VALUES (41, 'f', 1000, ?1)",
        [serde_json::to_string(&old).unwrap()],
    )
    .unwrap();
    drop(db);
    let store = Embedded::open(dir.path()).unwrap();
    let logs = store.query("f", 0, 10, false).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (logs[0].seq, logs[0].request_id.as_str(), logs[0].stdout.as_str()),
        (41, "req-1000", "out")
    );
    store.append(vec![log("f", 2000)]).await.unwrap();
    assert_eq!(store.query("f", 41, 10, false).await.unwrap()[0].seq, 42);
}

#[tokio::test]
async fn embedded_data_survives_reopen_and_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    Metadata::put(&store, "k", b"v".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let err = Embedded::open(dir.path()).err().expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another Gale node"), "{err}");
    drop(store);
    let store = Embedded::open(dir.path()).unwrap();
    assert_eq!(Metadata::get(&store, "k").await.unwrap().unwrap().value, b"v");
}

/// Events, subscriptions and attempt counts survive a restart.
#[tokio::test]
async fn embedded_topics_survive_reopen_with_attempt_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    store.put_topic("t", DAY).await.unwrap();
    store.put_subscription("t", "s", false).await.unwrap();
    store.publish("t", vec![event("a", None)]).await.unwrap();
    let got = store.fetch("t", "s", 1, 50, Duration::ZERO).await.unwrap();
    assert_eq!(got[0].attempts, 1);
    drop(store);
    let store = Embedded::open(dir.path()).unwrap();
    let again = store
        .fetch("t", "s", 1, 30_000, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((ids(&again), again[0].attempts), (vec!["a".to_string()], 2));
    // Dedup memory survives too.
    assert!(store.publish("t", vec![event("a", None)]).await.unwrap()[0].duplicate);
}

/// Metadata and invocation logs share one database file through two
/// connections: a deploy's writes beside a stream of log appends (and a
/// prune) wait for each other, and none fails as "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_metadata_writes_beside_log_appends_never_fail() {
    let (_dir, store) = embedded();
    let logs = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..1000 {
                store.append(vec![log("f", i)]).await.unwrap();
                if i % 100 == 0 {
                    store.prune(i, 1, 1000).await.unwrap();
                }
            }
        })
    };
    for i in 0..1000u64 {
        let key = format!("functions/f{}", i % 10);
        store.put(&key, vec![1], Expect::Any).await.unwrap();
        if i % 50 == 0 {
            store.delete(&key, Expect::Any).await.unwrap();
        }
    }
    logs.await.unwrap();
}
