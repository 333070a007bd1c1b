//! The conformance suite every storage backend must pass. Each check is a
//! generic function over the trait it tests, so a new backend adds one line
//! per check below.

use gale_core::api::{InvocationLog, Outcome};
use gale_store::{
    Artifacts, Embedded, Expect, InvocationLogs, KeyValue, Metadata, NewEvent, Settle, StoreError,
    TopicConfig, Topics, digest_of,
};
use std::time::{Duration, Instant};

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
        events: vec![format!("ev-{started_at}")],
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
    assert_eq!(
        (all[0].stdout.as_str(), all[0].events.as_slice()),
        ("out", &["ev-1000".to_string()][..])
    );
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

const DAY: TopicConfig = TopicConfig {
    max_age_ms: 86_400_000,
    max_bytes: 1 << 30,
    dedup_window_ms: 600_000,
};

fn event(id: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "test".into(),
        partition_key: key.map(Into::into),
        body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
    }
}

fn ids(deliveries: &[gale_store::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.event.body.clone()).unwrap())
        .map(|b| {
            b.trim_start_matches("{\"id\":\"")
                .trim_end_matches("\"}")
                .to_string()
        })
        .collect()
}

async fn fetch_now(t: &impl Topics, topic: &str, sub: &str) -> Vec<gale_store::Delivery> {
    t.fetch(topic, sub, 100, 30_000, Duration::ZERO).await.unwrap()
}

async fn ack_all(t: &impl Topics, topic: &str, sub: &str, deliveries: &[gale_store::Delivery]) {
    let acks = deliveries
        .iter()
        .map(|d| Settle::Ack {
            seq: d.event.seq,
            outbox: vec![],
        })
        .collect();
    t.settle(topic, sub, acks).await.unwrap();
}

async fn topics_deliver_in_order_once_acked(t: &impl Topics) {
    let err = t.publish("orders", vec![event("a", None)]).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    t.put_topic("orders", DAY).await.unwrap();
    // Events before a subscription exists are not delivered to it.
    t.publish("orders", vec![event("early", None)]).await.unwrap();
    t.put_subscription("orders", "inventory", false).await.unwrap();
    let published = t
        .publish(
            "orders",
            vec![event("a", None), event("b", None), event("c", None)],
        )
        .await
        .unwrap();
    assert_eq!(published.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let got = fetch_now(t, "orders", "inventory").await;
    assert_eq!(ids(&got), ["a", "b", "c"]);
    assert!(got.iter().all(|d| d.attempts == 1 && d.last_error.is_none()));
    // Leased: not handed out again while the lease runs.
    assert!(fetch_now(t, "orders", "inventory").await.is_empty());
    ack_all(t, "orders", "inventory", &got).await;
    // Acking twice is harmless.
    ack_all(t, "orders", "inventory", &got).await;
    let info = t.topics().await.unwrap();
    let orders = info.iter().find(|i| i.name == "orders").unwrap();
    assert_eq!((orders.depth, orders.last_seq, orders.published), (4, 4, 4));
    let sub = &orders.subscriptions[0];
    assert_eq!(
        (sub.name.as_str(), sub.acked, sub.lag, sub.pending),
        ("inventory", 3, 0, 0)
    );
    let err = t
        .fetch("orders", "nobody", 1, 1000, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownSubscription { .. }), "{err}");
}

async fn topics_drop_duplicates_within_the_window(t: &impl Topics) {
    t.put_topic("d", DAY).await.unwrap();
    let first = t.publish("d", vec![event("x", None)]).await.unwrap();
    let again = t
        .publish("d", vec![event("x", None), event("y", None)])
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(again[0].duplicate && again[0].seq == first[0].seq);
    assert!(!again[1].duplicate);
    let info = t.topics().await.unwrap();
    assert_eq!(info.iter().find(|i| i.name == "d").unwrap().depth, 2);
    // No window, no dedup.
    t.put_topic(
        "nodedup",
        TopicConfig {
            dedup_window_ms: 0,
            ..DAY
        },
    )
    .await
    .unwrap();
    t.publish("nodedup", vec![event("x", None)]).await.unwrap();
    assert!(!t.publish("nodedup", vec![event("x", None)]).await.unwrap()[0].duplicate);
}

async fn topics_retry_after_delay_and_lease(t: &impl Topics) {
    t.put_topic("r", DAY).await.unwrap();
    t.put_subscription("r", "s", false).await.unwrap();
    t.publish("r", vec![event("a", None), event("b", None)])
        .await
        .unwrap();
    let got = t.fetch("r", "s", 1, 30_000, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&got), ["a"]);
    t.settle(
        "r",
        "s",
        vec![Settle::Retry {
            seq: got[0].event.seq,
            delay_ms: 150,
            error: "boom".into(),
        }],
    )
    .await
    .unwrap();
    // b is next; a waits out its delay.
    let b = t.fetch("r", "s", 10, 100, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&b), ["b"]);
    let started = Instant::now();
    let again = t
        .fetch("r", "s", 1, 30_000, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );
    // Whichever came due first: a after its retry delay or b after its 100 ms lease.
    let mut seen = ids(&again);
    let more = t
        .fetch("r", "s", 1, 30_000, Duration::from_secs(5))
        .await
        .unwrap();
    seen.extend(ids(&more));
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
    for d in again.iter().chain(&more) {
        assert_eq!(d.attempts, 2);
        if ids(std::slice::from_ref(d)) == ["a"] {
            assert_eq!(d.last_error.as_deref(), Some("boom"));
        }
    }
}

async fn topics_dead_letter_and_outbox_commit_with_the_settle(t: &impl Topics) {
    for name in ["in", "out", "dlq", "side"] {
        t.put_topic(name, DAY).await.unwrap();
    }
    t.put_subscription("side", "watch", false).await.unwrap();
    t.put_subscription("in", "f", false).await.unwrap();
    t.put_subscription("out", "watch", false).await.unwrap();
    t.put_subscription("dlq", "watch", false).await.unwrap();
    t.publish("in", vec![event("good", None), event("bad", None)])
        .await
        .unwrap();
    let got = fetch_now(t, "in", "f").await;
    t.settle(
        "in",
        "f",
        vec![
            Settle::Ack {
                seq: got[0].event.seq,
                outbox: vec![("out".into(), event("reply", None))],
            },
            Settle::DeadLetter {
                seq: got[1].event.seq,
                topic: "dlq".into(),
                event: event("bad", None),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(ids(&fetch_now(t, "out", "watch").await), ["reply"]);
    assert_eq!(ids(&fetch_now(t, "dlq", "watch").await), ["bad"]);
    assert!(fetch_now(t, "in", "f").await.is_empty());
    // An outbox on its own lands whole or not at all.
    let err = t
        .publish_all(vec![
            ("out".into(), event("o-1", None)),
            ("nowhere".into(), event("o-2", None)),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    assert!(fetch_now(t, "out", "watch").await.is_empty());
    t.publish_all(vec![
        ("out".into(), event("o-1", None)),
        ("side".into(), event("o-2", None)),
    ])
    .await
    .unwrap();
    assert_eq!(ids(&fetch_now(t, "out", "watch").await), ["o-1"]);
    assert_eq!(ids(&fetch_now(t, "side", "watch").await), ["o-2"]);
    // A retry publishes nothing, and a settle naming an unknown topic
    // fails whole: the delivery stays pending.
    t.publish("in", vec![event("c", None)]).await.unwrap();
    let c = fetch_now(t, "in", "f").await;
    let err = t
        .settle(
            "in",
            "f",
            vec![Settle::Ack {
                seq: c[0].event.seq,
                outbox: vec![("nowhere".into(), event("x", None))],
            }],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    let info = t.topics().await.unwrap();
    let sub = &info.iter().find(|i| i.name == "in").unwrap().subscriptions[0];
    assert_eq!(sub.pending, 1);
    // A dead letter moves back to its topic (no dedup: the same id was
    // stored there before), once.
    let dead = t.read("dlq", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let back = vec![(dead[0].seq, "in".to_string(), event("bad", None))];
    assert_eq!(t.move_events("dlq", back.clone()).await.unwrap(), 1);
    assert_eq!(t.move_events("dlq", back).await.unwrap(), 0);
    assert!(t.read("dlq", 0, 10).await.unwrap().is_empty());
    assert_eq!(ids(&fetch_now(t, "in", "f").await), ["bad"]);
}

async fn topics_ordered_subscription_holds_a_key_until_settled(t: &impl Topics) {
    t.put_topic("o", DAY).await.unwrap();
    t.put_subscription("o", "s", true).await.unwrap();
    t.put_subscription("o", "loose", false).await.unwrap();
    t.publish(
        "o",
        vec![
            event("k1-a", Some("k1")),
            event("k1-b", Some("k1")),
            event("k2-a", Some("k2")),
            event("none", None),
        ],
    )
    .await
    .unwrap();
    let first = fetch_now(t, "o", "s").await;
    assert_eq!(ids(&first), ["k1-a", "k2-a", "none"]);
    assert_eq!(fetch_now(t, "o", "loose").await.len(), 4);
    // A retry keeps the key blocked.
    t.settle(
        "o",
        "s",
        vec![Settle::Retry {
            seq: first[0].event.seq,
            delay_ms: 0,
            error: "again".into(),
        }],
    )
    .await
    .unwrap();
    let retried = fetch_now(t, "o", "s").await;
    assert_eq!(ids(&retried), ["k1-a"]);
    ack_all(t, "o", "s", &retried).await;
    assert_eq!(ids(&fetch_now(t, "o", "s").await), ["k1-b"]);
}

async fn topics_retention_drops_the_oldest(t: &impl Topics) {
    t.put_topic("small", TopicConfig { max_bytes: 25, ..DAY })
        .await
        .unwrap();
    t.put_subscription("small", "s", false).await.unwrap();
    // Each body is 10 bytes: {"id":"a"}
    for id in ["a", "b", "c", "d"] {
        t.publish("small", vec![event(id, None)]).await.unwrap();
    }
    assert_eq!(t.enforce_retention().await.unwrap(), 2);
    assert_eq!(ids(&fetch_now(t, "small", "s").await), ["c", "d"]);
    let info = t.topics().await.unwrap();
    let small = info.iter().find(|i| i.name == "small").unwrap();
    assert_eq!((small.depth, small.bytes), (2, 20));

    t.put_topic("short", TopicConfig { max_age_ms: 1, ..DAY })
        .await
        .unwrap();
    t.publish("short", vec![event("old", None)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(t.enforce_retention().await.unwrap(), 1);
    assert!(t.read("short", 0, 10).await.unwrap().is_empty());
}

async fn topics_waiting_fetch_wakes_on_publish(t: &impl Topics) {
    t.put_topic("w", DAY).await.unwrap();
    t.put_subscription("w", "s", false).await.unwrap();
    let started = Instant::now();
    let (got, _) = tokio::join!(t.fetch("w", "s", 10, 30_000, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.publish("w", vec![event("late", None)]).await.unwrap();
    });
    assert_eq!(ids(&got.unwrap()), ["late"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn embedded_topics_deliver_in_order_once_acked() {
    topics_deliver_in_order_once_acked(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_drop_duplicates_within_the_window() {
    topics_drop_duplicates_within_the_window(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_retry_after_delay_and_lease() {
    topics_retry_after_delay_and_lease(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_dead_letter_and_outbox_commit_with_the_settle() {
    topics_dead_letter_and_outbox_commit_with_the_settle(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_ordered_subscription_holds_a_key_until_settled() {
    topics_ordered_subscription_holds_a_key_until_settled(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_retention_drops_the_oldest() {
    topics_retention_drops_the_oldest(&embedded().1).await;
}

#[tokio::test]
async fn embedded_topics_waiting_fetch_wakes_on_publish() {
    topics_waiting_fetch_wakes_on_publish(&embedded().1).await;
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

async fn key_value_buckets_are_scoped_and_increments_atomic(kv: &(impl KeyValue + Clone)) {
    assert_eq!(kv.kv_get("shop", "stock", "apple").await.unwrap(), None);
    kv.kv_set("shop", "stock", "apple", b"7".to_vec()).await.unwrap();
    kv.kv_set("shop", "stock", "pear", b"x".to_vec()).await.unwrap();
    // Another app's bucket of the same name is another bucket.
    assert_eq!(kv.kv_get("other", "stock", "apple").await.unwrap(), None);
    let mut adds = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let kv = kv.clone();
        adds.spawn(async move { kv.kv_increment("shop", "stock", "apple", 1).await.unwrap() });
    }
    let mut seen: Vec<u64> = adds.join_all().await;
    seen.sort();
    assert_eq!(
        seen,
        (8..=27).collect::<Vec<_>>(),
        "every increment saw its own value"
    );
    assert_eq!(kv.kv_get("shop", "stock", "apple").await.unwrap().unwrap(), b"27");
    let err = kv.kv_increment("shop", "stock", "pear", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotANumber { .. }), "{err}");
    assert_eq!(kv.kv_get("shop", "stock", "pear").await.unwrap().unwrap(), b"x");
    assert_eq!(
        kv.kv_keys("shop", "stock", 0, 10).await.unwrap(),
        ["apple", "pear"]
    );
    assert_eq!(kv.kv_keys("shop", "stock", 1, 10).await.unwrap(), ["pear"]);
    kv.kv_delete("shop", "stock", "apple").await.unwrap();
    kv.kv_delete("shop", "stock", "apple").await.unwrap();
    assert_eq!(kv.kv_keys("shop", "stock", 0, 10).await.unwrap(), ["pear"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_key_value_buckets_are_scoped_and_increments_atomic() {
    key_value_buckets_are_scoped_and_increments_atomic(&embedded().1).await;
}
