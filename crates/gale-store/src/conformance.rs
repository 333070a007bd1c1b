//! The conformance suite every storage backend must pass, as a library:
//! a backend's own test calls [`run`] with a constructor of fresh, empty
//! instances, and every check below runs against one of them. The checks
//! state the traits' guarantees as a caller sees them (compare-and-swap,
//! durable topics, leases, dedup, the outbox's all-or-nothing, change
//! feeds, object buckets and their events), so a second backend is done
//! when this passes unchanged.

use crate::{
    Artifacts, Change, Expect, InvocationLogs, KeyValue, Metadata, NewEvent, Settle, StoreError, Stores,
    TopicConfig, Topics, digest_of,
};
use gale_core::api::{InvocationLog, Outcome};
use std::future::Future;

pub mod objects;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs every check, each on a fresh instance from `fresh`, which returns
/// the backend and whatever must live as long as it (a temporary directory).
/// Panics, naming the check, at the first failure.
pub async fn run<F, Fut, G>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (G, Stores)>,
{
    macro_rules! check {
        ($name:ident, $part:ident) => {{
            let (_guard, stores) = fresh().await;
            eprintln!("conformance: {}", stringify!($name));
            $name(&*stores.$part).await;
        }};
    }
    check!(metadata_compare_and_swap, metadata);
    check!(metadata_list_by_prefix, metadata);
    check!(metadata_watch_reports_committed_changes, metadata);
    check!(artifacts_are_content_addressed, artifacts);
    check!(logs_query_and_prune, logs);
    check!(logs_seq_never_goes_back, logs);
    check!(logs_across_batches, logs);
    check!(topics_deliver_in_order_once_acked, topics);
    check!(topics_drop_duplicates_within_the_window, topics);
    check!(topics_retry_after_delay_and_lease, topics);
    check!(topics_dead_letter_and_outbox_commit_with_the_settle, topics);
    check!(topics_outbox_replayed_after_a_crash_is_stored_once, topics);
    check!(topics_ordered_subscription_holds_a_key_until_settled, topics);
    check!(topics_retention_drops_the_oldest, topics);
    check!(topics_waiting_fetch_wakes_on_publish, topics);
    check!(topics_watch_reports_topic_changes, topics);
    macro_rules! check_objects {
        ($($name:ident),* $(,)?) => {$({
            let (_guard, stores) = fresh().await;
            eprintln!("conformance: {}", stringify!($name));
            objects::$name(&stores).await;
        })*};
    }
    check_objects!(
        objects_round_trip_with_metadata,
        objects_overwrite_delete_and_empty_buckets,
        objects_range_reads,
        objects_conditional_writes,
        objects_events_commit_with_the_change,
        objects_list_like_list_objects_v2,
        objects_multipart_uploads,
        objects_copy_shares_content,
        objects_read_survives_overwrite_and_delete,
    );
    let (_guard, stores) = fresh().await;
    eprintln!("conformance: key_value_buckets_are_scoped_and_increments_atomic");
    key_value_buckets_are_scoped_and_increments_atomic(&stores.kv).await;
}

async fn metadata_compare_and_swap(m: &dyn Metadata) {
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

async fn metadata_list_by_prefix(m: &dyn Metadata) {
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

async fn artifacts_are_content_addressed(a: &dyn Artifacts) {
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

/// An invocation log record of `function` that started at `started_at`.
pub fn log(function: &str, started_at: u64) -> InvocationLog {
    InvocationLog {
        seq: 0,
        request_id: format!("req-{started_at}"),
        function: function.into(),
        version: 1,
        started_at,
        duration_us: 10,
        cpu_us: 7,
        outcome: Outcome::Ok,
        status: 200,
        cold_start: false,
        error: None,
        stdout: "out".into(),
        stderr: String::new(),
        events: vec![format!("ev-{started_at}")],
    }
}

async fn logs_query_and_prune(l: &dyn InvocationLogs) {
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
        (all[0].stdout.as_str(), all[0].events.as_slice(), all[0].cpu_us),
        ("out", &["ev-1000".to_string()][..], 7)
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
/// A follower (`gale logs -f`) resumes after the last `seq` it saw, so
/// numbers must keep growing even when pruning removed every record.
async fn logs_seq_never_goes_back(l: &dyn InvocationLogs) {
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
async fn logs_across_batches(l: &dyn InvocationLogs) {
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

/// A topic config for checks: a day's retention, a 10-minute dedup window.
pub const DAY: TopicConfig = TopicConfig {
    max_age_ms: 86_400_000,
    max_bytes: 1 << 30,
    dedup_window_ms: 600_000,
};

/// An event whose body is `{"id":"<id>"}`.
pub fn event(id: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "test".into(),
        partition_key: key.map(Into::into),
        body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
    }
}

/// The ids of deliveries of [`event`]s.
pub fn ids(deliveries: &[crate::Delivery]) -> Vec<String> {
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

async fn fetch_now(t: &dyn Topics, topic: &str, sub: &str) -> Vec<crate::Delivery> {
    t.fetch(topic, sub, 100, 30_000, Duration::ZERO).await.unwrap()
}

async fn ack_all(t: &dyn Topics, topic: &str, sub: &str, deliveries: &[crate::Delivery]) {
    let acks = deliveries
        .iter()
        .map(|d| Settle::Ack {
            seq: d.event.seq,
            outbox: vec![],
        })
        .collect();
    t.settle(topic, sub, acks).await.unwrap();
}

async fn topics_deliver_in_order_once_acked(t: &dyn Topics) {
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

async fn topics_drop_duplicates_within_the_window(t: &dyn Topics) {
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

async fn topics_retry_after_delay_and_lease(t: &dyn Topics) {
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

async fn topics_dead_letter_and_outbox_commit_with_the_settle(t: &dyn Topics) {
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

async fn topics_ordered_subscription_holds_a_key_until_settled(t: &dyn Topics) {
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

async fn topics_retention_drops_the_oldest(t: &dyn Topics) {
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

async fn topics_waiting_fetch_wakes_on_publish(t: &dyn Topics) {
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

async fn key_value_buckets_are_scoped_and_increments_atomic(kv: &Arc<dyn KeyValue>) {
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

/// A node follows the registry through the change feed: every committed
/// write and delete shows, in order; a failed compare-and-swap shows nothing.
async fn metadata_watch_reports_committed_changes(m: &dyn Metadata) {
    let mut changes = m.watch();
    let r1 = m.put("apps/w", b"1".to_vec(), Expect::Absent).await.unwrap();
    assert!(m.put("apps/w", b"x".to_vec(), Expect::Absent).await.is_err());
    let r2 = m
        .put("apps/w", b"2".to_vec(), Expect::Revision(r1))
        .await
        .unwrap();
    m.delete("apps/w", Expect::Any).await.unwrap();
    // Deleting what is not there changes nothing.
    m.delete("apps/w", Expect::Any).await.unwrap();
    m.put("tokens/t", b"t".to_vec(), Expect::Any).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let next = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("a change within 5 s")
            .expect("the feed stays open");
        seen.push(next);
    }
    let change = |key: &str, revision| Change {
        key: key.into(),
        revision,
    };
    assert_eq!(
        seen,
        [
            change("apps/w", Some(r1)),
            change("apps/w", Some(r2)),
            change("apps/w", None),
            change("tokens/t", Some(1)),
        ]
    );
}

/// A backend whose settle is not one transaction (JetStream: the outbox is
/// published, then the delivery acked) may publish an outbox twice when the
/// node dies between the two and the event is delivered again. The node
/// gives an outbox's events ids derived from the delivery, so the second
/// copy must be dropped like any duplicate.
async fn topics_outbox_replayed_after_a_crash_is_stored_once(t: &dyn Topics) {
    t.put_topic("in", DAY).await.unwrap();
    t.put_topic("out", DAY).await.unwrap();
    t.put_subscription("in", "f", false).await.unwrap();
    t.put_subscription("out", "watch", false).await.unwrap();
    t.publish("in", vec![event("order", None)]).await.unwrap();
    let first = fetch_now(t, "in", "f").await;
    // The first attempt's outbox landed, its ack did not.
    t.publish_all(vec![("out".into(), event("reply-of-order", None))])
        .await
        .unwrap();
    // The lease ends; the second attempt publishes the same ids and acks.
    t.settle(
        "in",
        "f",
        vec![Settle::Retry {
            seq: first[0].event.seq,
            delay_ms: 0,
            error: "the node stopped".into(),
        }],
    )
    .await
    .unwrap();
    let second = fetch_now(t, "in", "f").await;
    assert_eq!(second[0].attempts, 2);
    t.settle(
        "in",
        "f",
        vec![Settle::Ack {
            seq: second[0].event.seq,
            outbox: vec![("out".into(), event("reply-of-order", None))],
        }],
    )
    .await
    .unwrap();
    assert_eq!(ids(&fetch_now(t, "out", "watch").await), ["reply-of-order"]);
    let info = t.topics().await.unwrap();
    assert_eq!(info.iter().find(|i| i.name == "out").unwrap().depth, 1);
}

/// Nodes learn of topics made or removed elsewhere through this feed.
async fn topics_watch_reports_topic_changes(t: &dyn Topics) {
    let mut changes = t.watch_topics();
    t.put_topic("made", DAY).await.unwrap();
    assert!(t.delete_topic("made").await.unwrap());
    assert!(!t.delete_topic("made").await.unwrap());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("a change within 5 s")
            .expect("the feed stays open");
        seen.push(next);
    }
    assert_eq!(seen, ["made", "made"]);
    assert!(
        changes.try_recv().is_err(),
        "deleting a missing topic is no change"
    );
}
