//! The conformance suite every storage backend must pass. Each check is a
//! generic function over the trait it tests, so a new backend adds one line
//! per check below.

use gale_core::api::{InvocationLog, Outcome};
use gale_store::{Artifacts, Embedded, Expect, InvocationLogs, Metadata, StoreError, digest_of};

fn embedded() -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    (dir, store)
}

async fn metadata_compare_and_swap(m: &impl Metadata) {
    assert_eq!(m.get("apps/a").await.unwrap(), None);
    let r1 = m.put("apps/a", b"one".to_vec(), Expect::Absent).await.unwrap();
    assert_eq!(r1, 1);
    // A second create loses and changes nothing.
    let err = m
        .put("apps/a", b"two".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(m.get("apps/a").await.unwrap().unwrap().value, b"one");
    // A stale revision loses; the right one wins.
    let r2 = m
        .put("apps/a", b"two".to_vec(), Expect::Revision(r1))
        .await
        .unwrap();
    assert_eq!(r2, 2);
    assert!(
        m.put("apps/a", b"three".to_vec(), Expect::Revision(r1))
            .await
            .is_err()
    );
    let entry = m.get("apps/a").await.unwrap().unwrap();
    assert_eq!((entry.value.as_slice(), entry.revision), (&b"two"[..], 2));
    // Delete honours its precondition too.
    assert!(m.delete("apps/a", Expect::Revision(1)).await.is_err());
    m.delete("apps/a", Expect::Revision(2)).await.unwrap();
    assert_eq!(m.get("apps/a").await.unwrap(), None);
    m.delete("apps/a", Expect::Any).await.unwrap();
}

async fn metadata_list_by_prefix(m: &impl Metadata) {
    for key in [
        "versions/b/2",
        "versions/a/1",
        "versions/a/2",
        "versionsX",
        "apps/a",
    ] {
        m.put(key, key.as_bytes().to_vec(), Expect::Any).await.unwrap();
    }
    let keys: Vec<String> = m
        .list("versions/a/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["versions/a/1", "versions/a/2"]);
    assert_eq!(m.list("versions/").await.unwrap().len(), 3);
}

async fn artifacts_are_content_addressed(a: &impl Artifacts) {
    let data = b"\0asm fake component".to_vec();
    let digest = digest_of(&data);
    assert!(!a.contains(&digest).await.unwrap());
    a.put(&digest, data.clone()).await.unwrap();
    assert!(a.contains(&digest).await.unwrap());
    assert_eq!(a.get(&digest).await.unwrap().unwrap(), data);
    // Same content again is fine and idempotent.
    a.put(&digest, data.clone()).await.unwrap();
    // Content that does not match its name is refused and stores nothing.
    let other = digest_of(b"other");
    let err = a.put(&other, data).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(!a.contains(&other).await.unwrap());
    assert!(matches!(a.get("md5:abc").await, Err(StoreError::BadDigest(_))));
}

fn log(function: &str, started_at: u64) -> InvocationLog {
    InvocationLog {
        seq: 0,
        request_id: format!("req-{started_at}"),
        function: function.into(),
        version: 1,
        started_at,
        duration_us: 10,
        outcome: Outcome::Ok,
        status: 200,
        cold_start: false,
        error: None,
        stdout: "out".into(),
        stderr: String::new(),
    }
}

async fn logs_query_and_prune(l: &impl InvocationLogs) {
    l.append(
        (1..=5)
            .map(|i| log("f", i * 1000))
            .chain([log("g", 3000)])
            .collect(),
    )
    .await
    .unwrap();
    let all = l.query("f", 0, 100, false).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[0].stdout, "out");
    let after = l.query("f", all[2].seq, 100, false).await.unwrap();
    assert_eq!(after.len(), 2);
    let tail = l.query("f", 0, 2, true).await.unwrap();
    assert_eq!(
        tail.iter().map(|r| r.started_at).collect::<Vec<_>>(),
        [4000, 5000]
    );
    // Age: drops f@1000; count: keeps the newest 3 of f.
    let removed = l.prune(11_500, 10_000, 3).await.unwrap();
    assert_eq!(removed, 2);
    let left: Vec<u64> = l
        .query("f", 0, 100, false)
        .await
        .unwrap()
        .iter()
        .map(|r| r.started_at)
        .collect();
    assert_eq!(left, [3000, 4000, 5000]);
    assert_eq!(l.query("g", 0, 100, false).await.unwrap().len(), 1);
}

#[tokio::test]
async fn embedded_metadata_compare_and_swap() {
    metadata_compare_and_swap(&embedded().1).await;
}

#[tokio::test]
async fn embedded_metadata_list_by_prefix() {
    metadata_list_by_prefix(&embedded().1).await;
}

#[tokio::test]
async fn embedded_artifacts_are_content_addressed() {
    artifacts_are_content_addressed(&embedded().1).await;
}

/// A follower (`gale logs -f`) resumes after the last `seq` it saw, so
/// numbers must keep growing even when pruning removed every record.
async fn logs_seq_never_goes_back(l: &impl InvocationLogs) {
    let mut failed = log("f", 1000);
    failed.outcome = Outcome::Timeout;
    failed.error = Some("timed out after 1.0s".into());
    failed.stderr = "partial".into();
    l.append(vec![failed]).await.unwrap();
    let first = l.query("f", 0, 10, false).await.unwrap();
    assert_eq!(first[0].outcome, Outcome::Timeout);
    assert_eq!(first[0].error.as_deref(), Some("timed out after 1.0s"));
    assert_eq!(
        (first[0].stdout.as_str(), first[0].stderr.as_str()),
        ("out", "partial")
    );
    assert_eq!(l.prune(1_000_000, 1, 1000).await.unwrap(), 1);
    l.append(vec![log("f", 2_000_000)]).await.unwrap();
    let next = l.query("f", first[0].seq, 10, false).await.unwrap();
    assert_eq!(
        next.len(),
        1,
        "the record after a full prune must be found after the old cursor"
    );
}

/// Records appended in many batches read and prune as one sequence.
async fn logs_across_batches(l: &impl InvocationLogs) {
    for batch in 0..3u64 {
        l.append((0..4).map(|i| log("f", 1000 * (batch * 4 + i + 1))).collect())
            .await
            .unwrap();
    }
    let starts = |logs: &[InvocationLog]| logs.iter().map(|r| r.started_at / 1000).collect::<Vec<_>>();
    let all = l.query("f", 0, 100, false).await.unwrap();
    assert_eq!(starts(&all), (1..=12).collect::<Vec<_>>());
    assert_eq!(starts(&l.query("f", 0, 5, false).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(
        starts(&l.query("f", all[5].seq, 3, false).await.unwrap()),
        [7, 8, 9]
    );
    assert_eq!(
        starts(&l.query("f", 0, 6, true).await.unwrap()),
        [7, 8, 9, 10, 11, 12]
    );
    assert_eq!(
        starts(&l.query("f", all[9].seq, 6, true).await.unwrap()),
        [11, 12]
    );
    // Age cuts inside the first batch; the count inside the second.
    assert_eq!(l.prune(12_500, 10_000, 100).await.unwrap(), 2);
    assert_eq!(l.prune(12_500, 10_000, 7).await.unwrap(), 3);
    assert_eq!(
        starts(&l.query("f", 0, 100, false).await.unwrap()),
        [6, 7, 8, 9, 10, 11, 12]
    );
}

#[tokio::test]
async fn embedded_logs_across_batches() {
    logs_across_batches(&embedded().1).await;
}

#[tokio::test]
async fn embedded_logs_query_and_prune() {
    logs_query_and_prune(&embedded().1).await;
}

#[tokio::test]
async fn embedded_logs_seq_never_goes_back() {
    let (dir, store) = embedded();
    logs_seq_never_goes_back(&store).await;
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
