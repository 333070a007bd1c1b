//! Topics and subscriptions on SQLite.
//!
//! All event data lives in its own database file, `events.db`, written by
//! one thread that commits in groups: it takes every job waiting in its
//! queue, runs each inside a savepoint of one transaction, commits once and
//! only then answers them all. Publishers are told "durable" after a real
//! `fsync` (WAL, `synchronous=FULL`), yet a thousand concurrent publishers
//! cost one commit, not a thousand. A job that fails rolls back its own
//! savepoint and leaves the others of its group alone. Under sustained load
//! a small group that needs an fsync waits up to 150 µs, once, for more
//! jobs ([`LINGER`]).
//!
//! Only groups that hold a durable job (a publish, an outbox, a dead letter,
//! a key-value write, a topic change) pay for the fsync. Leases and plain
//! acks commit with `synchronous=NORMAL`: after a power loss they may be
//! undone, which redelivers an event (at least once still holds), and the
//! next durable commit makes them durable too, since the WAL is written in
//! order.
//!
//! Reads that change nothing (key-value gets, topic listings, reading a
//! topic's events) go to a second, read-only connection instead (see
//! `Embedded::read_events`): they see the last commit without queueing for
//! the writer.
//!
//! Tables: `topics` (retention and counters, next sequence number),
//! `events` (the log, keyed by topic and sequence), `dedup` (recent
//! `source` + `id` pairs), `subscriptions` (how far each has read the log)
//! and `pending` (deliveries leased, waiting for a retry, or — in an ordered
//! subscription — waiting for an earlier event of the same partition key).
//! Functions' key-value buckets (`kv`) live here too: same durability, same
//! writer.

use super::engine_err;
use crate::{Delivery, NewEvent, Published, Result, Settle, StoreError, StoredEvent, TopicConfig};
use gale_core::api::{SubscriptionInfo, TopicInfo};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS topics (
        name TEXT PRIMARY KEY,
        max_age_ms INTEGER NOT NULL,
        max_bytes INTEGER NOT NULL,
        dedup_window_ms INTEGER NOT NULL,
        next_seq INTEGER NOT NULL DEFAULT 1,
        count INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        published INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS events (
        topic TEXT NOT NULL,
        seq INTEGER NOT NULL,
        published_at INTEGER NOT NULL,
        pkey TEXT,
        body BLOB NOT NULL,
        PRIMARY KEY (topic, seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS dedup (
        topic TEXT NOT NULL,
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (topic, source, id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS dedup_at ON dedup (topic, at);
    CREATE TABLE IF NOT EXISTS subscriptions (
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        ordered INTEGER NOT NULL,
        delivered INTEGER NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (topic, name)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS pending (
        topic TEXT NOT NULL,
        sub TEXT NOT NULL,
        seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        due_at INTEGER,
        leased INTEGER NOT NULL DEFAULT 0,
        pkey TEXT,
        error TEXT,
        PRIMARY KEY (topic, sub, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS pending_due ON pending (topic, sub, due_at);
    CREATE INDEX IF NOT EXISTS pending_key ON pending (topic, sub, pkey, seq) WHERE pkey IS NOT NULL;
    CREATE TABLE IF NOT EXISTS kv (
        scope TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (scope, bucket, key)
    ) WITHOUT ROWID;
";

/// Jobs handed to the writer thread in one group commit at most.
const GROUP_MAX: usize = 512;

/// Under sustained load (the last commit ended moments ago), a small group
/// that must be fsynced waits this long, once, for more jobs: fewer, larger
/// commits cost less CPU per event, as PostgreSQL's `commit_delay` does.
const LINGER: Duration = Duration::from_micros(150);
/// What counts as a small group, and as sustained load.
const SMALL_GROUP: usize = 8;
const BUSY_GAP: Duration = Duration::from_millis(1);

/// Adds the jobs already queued to `group`, up to [`GROUP_MAX`].
fn take_waiting(rx: &std::sync::mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < GROUP_MAX {
        match rx.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

fn should_linger(group: &[Job], last_commit: Instant) -> bool {
    group.len() < SMALL_GROUP && last_commit.elapsed() < BUSY_GAP && group.iter().any(|j| j.durable)
}

type Reply = Box<dyn FnOnce(Option<String>) + Send>;
/// Runs in the group's transaction; says whether it succeeded, and how to
/// answer once the group is committed (or failed to be).
type Work = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// A unit of work for the writer thread.
struct Job {
    /// Whether its commit must be fsynced before it is answered.
    durable: bool,
    run: Work,
}

/// Whether a job's commit must reach the disk before it is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    Durable,
    Relaxed,
}

/// The event database's writer thread, and a wake-up per topic for
/// subscribers waiting in [`fetch`](crate::Topics::fetch).
pub(super) struct EventThread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl EventThread {
    pub(super) fn start(mut conn: Connection) -> std::io::Result<EventThread> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("gale-events".into())
            .spawn(move || {
                let mut full = true;
                let mut last_commit = Instant::now();
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    take_waiting(&rx, &mut group);
                    if should_linger(&group, last_commit)
                        && let Ok(job) = rx.recv_timeout(LINGER)
                    {
                        group.push(job);
                        take_waiting(&rx, &mut group);
                    }
                    let durable = group.iter().any(|j| j.durable);
                    if durable != full {
                        let mode = if durable {
                            "PRAGMA synchronous=FULL"
                        } else {
                            "PRAGMA synchronous=NORMAL"
                        };
                        if run_cached(&conn, mode).is_ok() {
                            full = durable;
                        }
                    }
                    commit_group(&mut conn, group);
                    last_commit = Instant::now();
                }
            })?;
        Ok(EventThread {
            jobs: Some(jobs),
            thread: Some(thread),
            wakers: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` in the next group commit; its result arrives once committed
    /// (and, for [`Commit::Durable`], fsynced).
    pub(super) async fn run<T: Send + 'static>(
        &self,
        sync: Commit,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run: Work = Box::new(move |c: &Connection| {
            let result = f(c);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(StoreError::Engine(e)),
                    None => result,
                });
            });
            (ok, reply)
        });
        let job = Job {
            durable: sync == Commit::Durable,
            run,
        };
        let gone = || StoreError::Engine("the event writer thread has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub(super) fn waker(&self, topic: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_string())
            .or_default()
            .clone()
    }

    pub(super) fn wake(&self, topic: &str) {
        if let Some(n) = self.wakers.lock().unwrap_or_else(|p| p.into_inner()).get(topic) {
            n.notify_waiters();
        }
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a statement without parameters from the connection's cache: the
/// writer's fixed statements run once or more per group, and parsing them
/// each time would be work on every group. (A PRAGMA is the exception: SQLite
/// marks it run-once and prepares it again anyway.)
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(drop)
}

fn commit_group(conn: &mut Connection, group: Vec<Job>) {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        let msg = e.to_string();
        for job in group {
            // Nothing ran: answer every job with the failure to begin.
            let (_, reply) = fail_job(job, conn);
            reply(Some(msg.clone()));
        }
        return;
    }
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        let _ = run_cached(conn, "SAVEPOINT job");
        let (ok, reply) = (job.run)(conn);
        if !ok {
            let _ = run_cached(conn, "ROLLBACK TO job");
        }
        let _ = run_cached(conn, "RELEASE job");
        replies.push(reply);
    }
    let error = run_cached(conn, "COMMIT").err().map(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    for reply in replies {
        reply(error.clone());
    }
}

/// Runs a job on a connection whose transaction could not start, only to get
/// its reply handle; its effects are rolled back at once.
fn fail_job(job: Job, conn: &Connection) -> (bool, Reply) {
    let _ = conn.execute_batch("SAVEPOINT failed");
    let out = (job.run)(conn);
    let _ = conn.execute_batch("ROLLBACK TO failed; RELEASE failed");
    out
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn topic_exists(c: &Connection, topic: &str) -> Result<()> {
    c.prepare_cached("SELECT 1 FROM topics WHERE name = ?1")
        .and_then(|mut s| s.exists([topic]))
        .map_err(engine_err)?
        .then_some(())
        .ok_or_else(|| StoreError::UnknownTopic(topic.to_string()))
}

/// Ends the leases of a previous process: the embedded backend serves one
/// node, so whatever it had leased when it stopped or died is due again now
/// (its attempt stays counted) instead of after the lease runs out.
pub(super) fn end_leases(c: &Connection, now: u64) -> Result<usize> {
    c.execute(
        "UPDATE pending SET due_at = ?1, leased = 0 WHERE leased = 1",
        [now as i64],
    )
    .map_err(engine_err)
}

pub(super) fn put_topic(c: &Connection, name: &str, config: TopicConfig) -> Result<()> {
    c.execute(
        "INSERT INTO topics (name, max_age_ms, max_bytes, dedup_window_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET max_age_ms = excluded.max_age_ms, max_bytes = excluded.max_bytes,
             dedup_window_ms = excluded.dedup_window_ms",
        params![
            name,
            config.max_age_ms as i64,
            config.max_bytes as i64,
            config.dedup_window_ms as i64
        ],
    )
    .map_err(engine_err)?;
    Ok(())
}

pub(super) fn delete_topic(c: &Connection, name: &str) -> Result<bool> {
    for table in ["events", "dedup", "pending", "subscriptions"] {
        c.execute(&format!("DELETE FROM {table} WHERE topic = ?1"), [name])
            .map_err(engine_err)?;
    }
    Ok(c.execute("DELETE FROM topics WHERE name = ?1", [name])
        .map_err(engine_err)?
        > 0)
}

/// Appends events; `dedup` false stores every one (dead letters).
pub(super) fn publish(
    c: &Connection,
    topic: &str,
    events: Vec<NewEvent>,
    dedup: bool,
    now: u64,
) -> Result<Vec<Published>> {
    let (mut next, window): (i64, i64) = c
        .prepare_cached("SELECT next_seq, dedup_window_ms FROM topics WHERE name = ?1")
        .and_then(|mut s| s.query_row([topic], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(engine_err)?
        .ok_or_else(|| StoreError::UnknownTopic(topic.to_string()))?;
    // One statement claims the id: it inserts the pair, or takes it over
    // if it was seen before the window; it changes a row only if it did.
    // (Not `RETURNING`: SQLite gathers returned rows in a temporary table,
    // opened and closed per statement, which costs more than the insert.) The
    // earlier event's sequence number is read only for a duplicate.
    let mut claim = c
        .prepare_cached(
            "INSERT INTO dedup (topic, source, id, at, seq) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(topic, source, id) DO UPDATE SET at = excluded.at, seq = excluded.seq
             WHERE dedup.at <= ?6",
        )
        .map_err(engine_err)?;
    let mut earlier = c
        .prepare_cached("SELECT seq FROM dedup WHERE topic = ?1 AND source = ?2 AND id = ?3")
        .map_err(engine_err)?;
    let mut insert = c
        .prepare_cached(
            "INSERT INTO events (topic, seq, published_at, pkey, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(engine_err)?;
    let (mut added, mut bytes) = (0i64, 0i64);
    let mut out = Vec::with_capacity(events.len());
    let cutoff = (now as i64).saturating_sub(window);
    for e in events {
        let seq = next;
        if dedup {
            let claimed = claim
                .execute(params![topic, e.source, e.id, now as i64, seq, cutoff])
                .map_err(engine_err)?;
            if claimed == 0 {
                let seq: i64 = earlier
                    .query_row(params![topic, e.source, e.id], |r| r.get(0))
                    .map_err(engine_err)?;
                out.push(Published {
                    seq: seq as u64,
                    duplicate: true,
                });
                continue;
            }
        }
        next += 1;
        insert
            .execute(params![topic, seq, now as i64, e.partition_key, e.body])
            .map_err(engine_err)?;
        added += 1;
        bytes += e.body.len() as i64;
        out.push(Published {
            seq: seq as u64,
            duplicate: false,
        });
    }
    if added > 0 {
        c.prepare_cached(
            "UPDATE topics SET next_seq = ?2, count = count + ?3, bytes = bytes + ?4, published = published + ?3
             WHERE name = ?1",
        )
        .and_then(|mut s| s.execute(params![topic, next, added, bytes]))
        .map_err(engine_err)?;
    }
    Ok(out)
}

pub(super) fn put_subscription(c: &Connection, topic: &str, name: &str, ordered: bool) -> Result<()> {
    topic_exists(c, topic)?;
    c.execute(
        "INSERT INTO subscriptions (topic, name, ordered, delivered)
         VALUES (?1, ?2, ?3, (SELECT next_seq - 1 FROM topics WHERE name = ?1))
         ON CONFLICT(topic, name) DO UPDATE SET ordered = excluded.ordered",
        params![topic, name, ordered],
    )
    .map_err(engine_err)?;
    Ok(())
}

pub(super) fn delete_subscription(c: &Connection, topic: &str, name: &str) -> Result<()> {
    c.execute("DELETE FROM pending WHERE topic = ?1 AND sub = ?2", [topic, name])
        .map_err(engine_err)?;
    c.execute(
        "DELETE FROM subscriptions WHERE topic = ?1 AND name = ?2",
        [topic, name],
    )
    .map_err(engine_err)?;
    Ok(())
}

/// What one fetch found, and when the next retry of the subscription is due.
pub(super) struct Fetched {
    pub deliveries: Vec<Delivery>,
    pub next_due: Option<u64>,
}

pub(super) fn fetch(
    c: &Connection,
    topic: &str,
    sub: &str,
    max: usize,
    lease_ms: u64,
    now: u64,
) -> Result<Fetched> {
    let (ordered, mut delivered): (bool, i64) = c
        .prepare_cached("SELECT ordered, delivered FROM subscriptions WHERE topic = ?1 AND name = ?2")
        .and_then(|mut s| {
            s.query_row([topic, sub], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(engine_err)?
        .ok_or_else(|| StoreError::UnknownSubscription {
            topic: topic.into(),
            name: sub.into(),
        })?;
    let lease_until = (now + lease_ms) as i64;
    let mut out = Vec::new();
    let mut body_of = c
        .prepare_cached("SELECT published_at, body FROM events WHERE topic = ?1 AND seq = ?2")
        .map_err(engine_err)?;

    // Retries (and expired leases) that are due. No `LIMIT ?`: SQLite
    // prepares a statement again whenever a bound LIMIT changes, which would
    // cost the writer a parse per fetch; rows are read in index order and the
    // reading stops after `max`.
    let due: Vec<(i64, u32, Option<String>)> = c
        .prepare_cached(
            "SELECT seq, attempts, error FROM pending
             WHERE topic = ?1 AND sub = ?2 AND due_at IS NOT NULL AND due_at <= ?3
             ORDER BY due_at, seq",
        )
        .and_then(|mut s| {
            s.query_map(params![topic, sub, now as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .take(max)
            .collect()
        })
        .map_err(engine_err)?;
    for (seq, attempts, last_error) in due {
        let event: Option<(i64, Vec<u8>)> = body_of
            .query_row(params![topic, seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(engine_err)?;
        let Some((published_at, body)) = event else {
            // Retention dropped the event: nothing left to deliver.
            c.execute(
                "DELETE FROM pending WHERE topic = ?1 AND sub = ?2 AND seq = ?3",
                params![topic, sub, seq],
            )
            .map_err(engine_err)?;
            continue;
        };
        c.prepare_cached(
            "UPDATE pending SET attempts = attempts + 1, due_at = ?4, leased = 1
             WHERE topic = ?1 AND sub = ?2 AND seq = ?3",
        )
        .and_then(|mut s| s.execute(params![topic, sub, seq, lease_until]))
        .map_err(engine_err)?;
        out.push(Delivery {
            event: StoredEvent {
                seq: seq as u64,
                published_at: published_at as u64,
                body,
            },
            attempts: attempts + 1,
            last_error,
        });
    }

    // Then events never delivered to this subscription.
    if out.len() < max {
        let fresh: Vec<(i64, i64, Option<String>, Vec<u8>)> = c
            .prepare_cached(
                "SELECT seq, published_at, pkey, body FROM events
                 WHERE topic = ?1 AND seq > ?2 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(params![topic, delivered], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .take(max - out.len())
                .collect()
            })
            .map_err(engine_err)?;
        let mut key_busy = c
            .prepare_cached("SELECT 1 FROM pending WHERE topic = ?1 AND sub = ?2 AND pkey = ?3 LIMIT 1")
            .map_err(engine_err)?;
        let mut add = c
            .prepare_cached(
                "INSERT INTO pending (topic, sub, seq, attempts, due_at, pkey, leased) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(engine_err)?;
        for (seq, published_at, pkey, body) in fresh {
            delivered = seq;
            let key = pkey.filter(|_| ordered);
            let waits = match &key {
                Some(k) => key_busy.exists(params![topic, sub, k]).map_err(engine_err)?,
                None => false,
            };
            if waits {
                add.execute(params![topic, sub, seq, 0, None::<i64>, key, false])
                    .map_err(engine_err)?;
                continue;
            }
            add.execute(params![topic, sub, seq, 1, lease_until, key, true])
                .map_err(engine_err)?;
            out.push(Delivery {
                event: StoredEvent {
                    seq: seq as u64,
                    published_at: published_at as u64,
                    body,
                },
                attempts: 1,
                last_error: None,
            });
        }
        c.prepare_cached("UPDATE subscriptions SET delivered = ?3 WHERE topic = ?1 AND name = ?2")
            .and_then(|mut s| s.execute(params![topic, sub, delivered]))
            .map_err(engine_err)?;
    }
    let next_due: Option<i64> = c
        .prepare_cached(
            "SELECT min(due_at) FROM pending WHERE topic = ?1 AND sub = ?2 AND due_at IS NOT NULL",
        )
        .and_then(|mut s| s.query_row([topic, sub], |r| r.get(0)))
        .map_err(engine_err)?;
    Ok(Fetched {
        deliveries: out,
        next_due: next_due.map(|d| d as u64),
    })
}

/// Settles deliveries; returns the topics that got new events (to wake their subscribers).
pub(super) fn settle(
    c: &Connection,
    topic: &str,
    sub: &str,
    settles: Vec<Settle>,
    now: u64,
) -> Result<Vec<String>> {
    let mut woken = Vec::new();
    let mut acked = 0i64;
    for s in settles {
        match s {
            Settle::Ack { seq, outbox } => {
                if done(c, topic, sub, seq, now)? {
                    acked += 1;
                    for (to, event) in outbox {
                        publish(c, &to, vec![event], true, now)?;
                        woken.push(to);
                    }
                }
            }
            Settle::Retry { seq, delay_ms, error } => {
                c.prepare_cached(
                    "UPDATE pending SET due_at = ?4, error = ?5, leased = 0 WHERE topic = ?1 AND sub = ?2 AND seq = ?3",
                )
                .and_then(|mut s| s.execute(params![topic, sub, seq as i64, (now + delay_ms) as i64, error]))
                .map_err(engine_err)?;
            }
            Settle::DeadLetter {
                seq,
                topic: to,
                event,
            } => {
                if done(c, topic, sub, seq, now)? {
                    acked += 1;
                    publish(c, &to, vec![event], false, now)?;
                    woken.push(to);
                }
            }
        }
    }
    if acked > 0 {
        c.prepare_cached("UPDATE subscriptions SET acked = acked + ?3 WHERE topic = ?1 AND name = ?2")
            .and_then(|mut s| s.execute(params![topic, sub, acked]))
            .map_err(engine_err)?;
    }
    Ok(woken)
}

/// Drops a pending delivery and lets the next event of its partition key
/// go. False if it was not pending.
fn done(c: &Connection, topic: &str, sub: &str, seq: u64, now: u64) -> Result<bool> {
    // Most deliveries carry no key (every one of an unordered subscription):
    // a plain delete settles them. Only a keyed one needs its key back, and
    // `RETURNING` costs a temporary table per statement, so it runs second.
    let unkeyed = c
        .prepare_cached("DELETE FROM pending WHERE topic = ?1 AND sub = ?2 AND seq = ?3 AND pkey IS NULL")
        .and_then(|mut s| s.execute(params![topic, sub, seq as i64]))
        .map_err(engine_err)?;
    if unkeyed > 0 {
        return Ok(true);
    }
    let key: Option<String> = c
        .prepare_cached("DELETE FROM pending WHERE topic = ?1 AND sub = ?2 AND seq = ?3 RETURNING pkey")
        .and_then(|mut s| {
            s.query_row(params![topic, sub, seq as i64], |r| r.get(0))
                .optional()
        })
        .map_err(engine_err)?;
    let Some(key) = key else { return Ok(false) };
    c.prepare_cached(
        "UPDATE pending SET due_at = ?4 WHERE topic = ?1 AND sub = ?2 AND seq =
           (SELECT min(seq) FROM pending WHERE topic = ?1 AND sub = ?2 AND pkey = ?3)
         AND due_at IS NULL",
    )
    .and_then(|mut s| s.execute(params![topic, sub, key, now as i64]))
    .map_err(engine_err)?;
    Ok(true)
}

pub(super) fn read(c: &Connection, topic: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
    topic_exists(c, topic)?;
    c.prepare_cached(
        "SELECT seq, published_at, body FROM events WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )
    .and_then(|mut s| {
        s.query_map(params![topic, after as i64, limit as i64], |r| {
            Ok(StoredEvent {
                seq: r.get::<_, i64>(0)? as u64,
                published_at: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
            })
        })?
        .collect()
    })
    .map_err(engine_err)
}

/// Deletes the given events of a topic, keeping its counters true.
fn delete_events(c: &Connection, topic: &str, condition: &str, args: &[&dyn rusqlite::ToSql]) -> Result<u64> {
    let (count, bytes): (i64, i64) = c
        .query_row(
            &format!(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM events WHERE topic = ?1 AND {condition}"
            ),
            rusqlite::params_from_iter(
                std::iter::once(&topic as &dyn rusqlite::ToSql).chain(args.iter().copied()),
            ),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(engine_err)?;
    if count == 0 {
        return Ok(0);
    }
    c.execute(
        &format!("DELETE FROM events WHERE topic = ?1 AND {condition}"),
        rusqlite::params_from_iter(
            std::iter::once(&topic as &dyn rusqlite::ToSql).chain(args.iter().copied()),
        ),
    )
    .map_err(engine_err)?;
    c.execute(
        "UPDATE topics SET count = count - ?2, bytes = bytes - ?3 WHERE name = ?1",
        params![topic, count, bytes],
    )
    .map_err(engine_err)?;
    Ok(count as u64)
}

pub(super) fn move_events(
    c: &Connection,
    from: &str,
    moves: Vec<(u64, String, NewEvent)>,
    now: u64,
) -> Result<u64> {
    topic_exists(c, from)?;
    let mut moved = 0;
    for (seq, to, event) in moves {
        if delete_events(c, from, "seq = ?2", &[&(seq as i64)])? == 0 {
            continue;
        }
        publish(c, &to, vec![event], false, now)?;
        moved += 1;
    }
    Ok(moved)
}

pub(super) fn enforce_retention(c: &Connection, now: u64) -> Result<u64> {
    type Row = (String, i64, i64, i64, i64);
    let topics: Vec<Row> = c
        .prepare("SELECT name, max_age_ms, max_bytes, bytes, dedup_window_ms FROM topics")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .map_err(engine_err)?;
    let mut dropped = 0;
    for (topic, max_age, max_bytes, mut bytes, window) in topics {
        c.execute(
            "DELETE FROM dedup WHERE topic = ?1 AND at < ?2",
            params![topic, (now as i64).saturating_sub(window)],
        )
        .map_err(engine_err)?;
        let cutoff = (now as i64).saturating_sub(max_age);
        dropped += delete_events(c, &topic, "published_at < ?2", &[&cutoff])?;
        if bytes > max_bytes {
            // Walk from the oldest event, summing sizes, to find where to cut.
            bytes = c
                .query_row("SELECT bytes FROM topics WHERE name = ?1", [&topic], |r| r.get(0))
                .map_err(engine_err)?;
            let mut excess = bytes - max_bytes;
            let mut cut = None;
            let mut sizes = c
                .prepare("SELECT seq, length(body) FROM events WHERE topic = ?1 ORDER BY seq")
                .map_err(engine_err)?;
            let mut rows = sizes.query([&topic]).map_err(engine_err)?;
            while excess > 0
                && let Some(row) = rows.next().map_err(engine_err)?
            {
                let (seq, size): (i64, i64) =
                    (row.get(0).map_err(engine_err)?, row.get(1).map_err(engine_err)?);
                excess -= size;
                cut = Some(seq);
            }
            drop(rows);
            if let Some(cut) = cut {
                dropped += delete_events(c, &topic, "seq <= ?2", &[&cut])?;
            }
        }
        // Deliveries of dropped events have nothing left to deliver.
        c.execute(
            "DELETE FROM pending WHERE topic = ?1 AND seq < coalesce((SELECT min(seq) FROM events WHERE topic = ?1), \
             (SELECT next_seq FROM topics WHERE name = ?1))",
            [&topic],
        )
        .map_err(engine_err)?;
    }
    Ok(dropped)
}

pub(super) fn topics(c: &Connection, now: u64) -> Result<Vec<TopicInfo>> {
    let mut list: Vec<TopicInfo> = c
        .prepare_cached(
            "SELECT name, max_age_ms, max_bytes, count, bytes, next_seq - 1, published,
                    (SELECT published_at FROM events WHERE topic = name ORDER BY seq LIMIT 1),
                    dedup_window_ms
             FROM topics ORDER BY name",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(TopicInfo {
                    name: r.get(0)?,
                    max_age_ms: r.get::<_, i64>(1)? as u64,
                    max_bytes: r.get::<_, i64>(2)? as u64,
                    depth: r.get::<_, i64>(3)? as u64,
                    bytes: r.get::<_, i64>(4)? as u64,
                    last_seq: r.get::<_, i64>(5)? as u64,
                    published: r.get::<_, i64>(6)? as u64,
                    oldest_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                    dedup_window_ms: r.get::<_, i64>(8)? as u64,
                    publish_rate: 0.0,
                    subscriptions: Vec::new(),
                })
            })?
            .collect()
        })
        .map_err(engine_err)?;
    let mut subs = c
        .prepare_cached(
            "SELECT name, ordered, delivered, acked,
                    (SELECT count(*) FROM pending p WHERE p.topic = s.topic AND p.sub = s.name),
                    (SELECT count(*) FROM pending p WHERE p.topic = s.topic AND p.sub = s.name
                        AND p.error IS NOT NULL AND p.due_at > ?2)
             FROM subscriptions s WHERE topic = ?1 ORDER BY name",
        )
        .map_err(engine_err)?;
    for t in &mut list {
        let last = t.last_seq;
        t.subscriptions = subs
            .query_map(params![t.name, now as i64], |r| {
                let delivered = r.get::<_, i64>(2)? as u64;
                let pending = r.get::<_, i64>(4)? as u64;
                Ok(SubscriptionInfo {
                    name: r.get(0)?,
                    ordered: r.get(1)?,
                    acked: r.get::<_, i64>(3)? as u64,
                    lag: last.saturating_sub(delivered) + pending,
                    pending,
                    retrying: r.get::<_, i64>(5)? as u64,
                    delivery_rate: 0.0,
                    limited_by: None,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(engine_err)?;
    }
    Ok(list)
}

/// How long a waiting fetch sleeps at most between looks, so a subscriber
/// also notices retries that come due and leases that run out.
pub(super) const MAX_NAP: Duration = Duration::from_millis(500);

pub(super) fn kv_get(c: &Connection, scope: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT value FROM kv WHERE scope = ?1 AND bucket = ?2 AND key = ?3")
        .and_then(|mut s| s.query_row([scope, bucket, key], |r| r.get(0)).optional())
        .map_err(engine_err)
}

pub(super) fn kv_set(c: &Connection, scope: &str, bucket: &str, key: &str, value: &[u8]) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO kv (scope, bucket, key, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(scope, bucket, key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![scope, bucket, key, value]))
    .map_err(engine_err)?;
    Ok(())
}

pub(super) fn kv_delete(c: &Connection, scope: &str, bucket: &str, key: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM kv WHERE scope = ?1 AND bucket = ?2 AND key = ?3")
        .and_then(|mut s| s.execute([scope, bucket, key]))
        .map_err(engine_err)?;
    Ok(())
}

pub(super) fn kv_keys(
    c: &Connection,
    scope: &str,
    bucket: &str,
    offset: u64,
    limit: usize,
) -> Result<Vec<String>> {
    c.prepare_cached("SELECT key FROM kv WHERE scope = ?1 AND bucket = ?2 ORDER BY key LIMIT ?3 OFFSET ?4")
        .and_then(|mut s| {
            s.query_map(params![scope, bucket, limit as i64, offset as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(engine_err)
}

pub(super) fn kv_increment(c: &Connection, scope: &str, bucket: &str, key: &str, delta: u64) -> Result<u64> {
    let not_a_number = || StoreError::NotANumber { key: key.to_string() };
    let current = match kv_get(c, scope, bucket, key)? {
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(not_a_number)?,
        None => 0,
    };
    let next = current.checked_add(delta).ok_or_else(not_a_number)?;
    kv_set(c, scope, bucket, key, next.to_string().as_bytes())?;
    Ok(next)
}
