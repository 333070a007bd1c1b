//! The embedded backend: one directory, nothing to install.
//!
//! Metadata and logs live in SQLite (WAL mode, `synchronous=FULL` for
//! metadata so an acknowledged write survives power loss; logs, which are
//! diagnostics, as described in [`logs`]); artifacts are plain
//! files named by their digest, written to a temporary name, synced, then
//! renamed, so a crash never leaves a half-written blob under a real name.
//! Topics live in a database file of their own, written in group commits
//! (see [`topics`]), and so does the index of object buckets, whose bytes
//! are files beside it (see [`objects`]). The directory is locked for the
//! life of the node: two nodes on one data directory would corrupt each
//! other's view.

use crate::{
    Artifacts, Change, Delivery, Entry, Expect, InvocationLogs, KeyValue, Metadata, NewEvent, Published,
    Result, Settle, StoreError, StoredEvent, TopicConfig, Topics, digest_hex, digest_of,
};
use async_trait::async_trait;
use gale_core::api::{InvocationLog, TopicInfo};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

mod logs;
mod objects;
mod topics;

pub use objects::LOOSE_BLOB_TTL;

use topics::Commit::{Durable, Relaxed};

/// Prepared statements kept per connection (see `Embedded::open`).
const STATEMENT_CACHE: usize = 64;

/// The embedded backend rooted at a data directory.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    meta: Mutex<Connection>,
    logs: logs::LogThread,
    events: topics::EventThread,
    /// A second connection to the event database, for reads alone: WAL lets
    /// it read the last commit while the writer works, so a key-value read
    /// or a topic listing neither waits behind a group commit's fsync nor
    /// adds to the writer's queue.
    events_read: Mutex<Connection>,
    /// Metadata changes, after their commit (see [`Metadata::watch`]).
    changes: broadcast::Sender<Change>,
    /// Topics created, reconfigured or deleted.
    topic_changes: broadcast::Sender<String>,
    /// Blob files of object buckets (see [`objects`]).
    objects: Arc<objects::State>,
    /// Held (and locked) for as long as the backend lives.
    _lock: File,
}

/// Changes kept for receivers that have not read them yet.
const CHANGES: usize = 1024;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Begins a transaction that will write, holding the write lock from the
/// start. Metadata and logs are two connections on one file: a deferred
/// transaction that reads and then writes fails at once ("database is
/// locked") when the other connection committed in between, since waiting
/// cannot refresh what it read; an immediate one waits its turn instead
/// (`busy_timeout`).
fn write_tx(c: &mut Connection) -> Result<Transaction<'_>> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(engine_err)
}

fn engine_err(e: rusqlite::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Embedded {
    /// Opens (creating if needed) the data directory and locks it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Embedded> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join("artifacts")).map_err(io_err(&dir))?;
        let lock_path = dir.join("LOCK");
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .map(|s| s.trim().to_string());
            return Err(StoreError::Locked {
                dir,
                pid: pid.filter(|p| !p.is_empty()),
            });
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io_err(&lock_path))?;

        let db = dir.join("gale.db");
        let meta = Connection::open(&db).map_err(engine_err)?;
        meta.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL,
                 revision INTEGER NOT NULL
             );",
        )
        .map_err(engine_err)?;
        let mut logs = Connection::open(&db).map_err(engine_err)?;
        logs.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")
            .and_then(|()| logs.execute_batch(logs::SCHEMA))
            .map_err(engine_err)?;
        logs::migrate(&mut logs)?;
        let events_db = dir.join("events.db");
        let events = Connection::open(&events_db).map_err(engine_err)?;
        events
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA busy_timeout=5000;",
            )
            .and_then(|()| events.execute_batch(topics::SCHEMA))
            .and_then(|()| events.execute_batch(objects::SCHEMA))
            .map_err(engine_err)?;
        topics::end_leases(&events, topics::now_ms())?;
        let objects_dir = dir.join("objects");
        objects::sweep_at_open(&events, &objects_dir)?;
        let events_read = Connection::open(&events_db).map_err(engine_err)?;
        events_read
            .execute_batch("PRAGMA query_only=ON; PRAGMA busy_timeout=5000;")
            .map_err(engine_err)?;
        // rusqlite keeps 16 prepared statements by default; the event writer
        // uses about 30, and the ones pushed out were parsed again.
        for c in [&meta, &logs, &events, &events_read] {
            c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        }
        Ok(Embedded {
            inner: Arc::new(Inner {
                dir,
                meta: Mutex::new(meta),
                logs: logs::LogThread::start(logs).map_err(io_err(&db))?,
                events: topics::EventThread::start(events).map_err(io_err(&events_db))?,
                events_read: Mutex::new(events_read),
                changes: broadcast::channel(CHANGES).0,
                topic_changes: broadcast::channel(CHANGES).0,
                objects: Arc::new(objects::State::new(objects_dir)),
                _lock: lock,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs a read of the event database on its reading connection, off the
    /// async threads. It sees every commit answered before it started.
    async fn read_events<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.events_read.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| StoreError::Engine(format!("a read of the event database did not finish: {e}")))?
    }

    fn artifact_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .inner
            .dir
            .join("artifacts")
            .join(format!("{}.wasm", digest_hex(digest)?)))
    }

    /// Runs `f` on the metadata connection off the async runtime.
    async fn with_meta<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&mut inner.meta.lock().unwrap_or_else(|p| p.into_inner()))).await
    }

    async fn with_logs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.logs.run(f).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Engine(format!("storage task failed: {e}")))?
}

fn current_revision(tx: &Connection, key: &str) -> Result<Option<u64>> {
    tx.query_row("SELECT revision FROM kv WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|r| r.map(|v| v as u64))
    .map_err(engine_err)
}

fn check(expect: Expect, current: Option<u64>, key: &str) -> Result<()> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Revision(r) => current == Some(r),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Conflict { key: key.to_string() })
    }
}

#[async_trait]
impl Metadata for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let key = key.to_string();
        self.with_meta(move |c| {
            c.query_row("SELECT value, revision FROM kv WHERE key = ?1", [&key], |r| {
                Ok(Entry {
                    value: r.get(0)?,
                    revision: r.get::<_, i64>(1)? as u64,
                })
            })
            .optional()
            .map_err(engine_err)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64> {
        let owned = key.to_string();
        let revision = self
            .with_meta(move |c| {
                let key = owned;
                let tx = write_tx(c)?;
                let current = current_revision(&tx, &key)?;
                check(expect, current, &key)?;
                let revision = current.unwrap_or(0) + 1;
                tx.execute(
                    "INSERT INTO kv (key, value, revision) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, revision = excluded.revision",
                    params![key, value, revision as i64],
                )
                .map_err(engine_err)?;
                tx.commit().map_err(engine_err)?;
                Ok(revision)
            })
            .await?;
        let _ = self.inner.changes.send(Change {
            key: key.to_string(),
            revision: Some(revision),
        });
        Ok(revision)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<()> {
        let owned = key.to_string();
        let existed = self
            .with_meta(move |c| {
                let key = owned;
                let tx = write_tx(c)?;
                check(expect, current_revision(&tx, &key)?, &key)?;
                let n = tx
                    .execute("DELETE FROM kv WHERE key = ?1", [&key])
                    .map_err(engine_err)?;
                tx.commit().map_err(engine_err)?;
                Ok(n > 0)
            })
            .await?;
        if existed {
            let _ = self.inner.changes.send(Change {
                key: key.to_string(),
                revision: None,
            });
        }
        Ok(())
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>> {
        let prefix = prefix.to_string();
        self.with_meta(move |c| {
            // Range scan on the primary key: [prefix, prefix + U+10FFFF).
            let end = format!("{prefix}\u{10FFFF}");
            let mut stmt = c
                .prepare_cached(
                    "SELECT key, value, revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )
                .map_err(engine_err)?;
            let rows = stmt
                .query_map([&prefix, &end], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Entry {
                            value: r.get(1)?,
                            revision: r.get::<_, i64>(2)? as u64,
                        },
                    ))
                })
                .map_err(engine_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(engine_err)
        })
        .await
    }
}

#[async_trait]
impl Artifacts for Embedded {
    async fn put(&self, digest: &str, data: Vec<u8>) -> Result<()> {
        let path = self.artifact_path(digest)?;
        if digest_of(&data) != digest {
            return Err(StoreError::DigestMismatch {
                digest: digest.to_string(),
            });
        }
        blocking(move || {
            if path.exists() {
                return Ok(());
            }
            // A name of its own per upload: concurrent uploads of one digest
            // must not write into each other's temporary file.
            static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
            let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
            file.write_all(&data).map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            if let Some(parent) = path.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(parent))?;
            }
            Ok(())
        })
        .await
    }

    async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let path = self.artifact_path(digest)?;
        blocking(move || match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        })
        .await
    }

    async fn contains(&self, digest: &str) -> Result<bool> {
        Ok(self.artifact_path(digest)?.exists())
    }
}

#[async_trait]
impl InvocationLogs for Embedded {
    async fn append(&self, records: Vec<InvocationLog>) -> Result<()> {
        self.with_logs(move |c| logs::append(c, records)).await
    }

    async fn query(
        &self,
        function: &str,
        after: u64,
        limit: usize,
        tail: bool,
    ) -> Result<Vec<InvocationLog>> {
        let function = function.to_string();
        self.with_logs(move |c| logs::query(c, &function, after, limit, tail))
            .await
    }

    async fn prune(&self, now_ms: u64, max_age_ms: u64, keep_per_function: usize) -> Result<u64> {
        self.with_logs(move |c| logs::prune(c, now_ms.saturating_sub(max_age_ms), keep_per_function))
            .await
    }
}

#[async_trait]
impl Topics for Embedded {
    async fn put_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        let owned_name = name.to_string();
        let name = name.to_string();
        self.inner
            .events
            .run(Durable, move |c| topics::put_topic(c, &name, config))
            .await?;
        let _ = self.inner.topic_changes.send(owned_name);
        Ok(())
    }

    async fn delete_topic(&self, name: &str) -> Result<bool> {
        let owned = name.to_string();
        let deleted = self
            .inner
            .events
            .run(Durable, move |c| topics::delete_topic(c, &owned))
            .await?;
        self.inner.events.wake(name);
        if deleted {
            let _ = self.inner.topic_changes.send(name.to_string());
        }
        Ok(deleted)
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.read_events(|c| topics::topics(c, topics::now_ms())).await
    }

    async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>> {
        let owned = topic.to_string();
        let published = self
            .inner
            .events
            .run(Durable, move |c| {
                topics::publish(c, &owned, events, true, topics::now_ms())
            })
            .await?;
        self.inner.events.wake(topic);
        Ok(published)
    }

    async fn publish_all(&self, events: Vec<(String, NewEvent)>) -> Result<()> {
        let topics: Vec<String> = events.iter().map(|(t, _)| t.clone()).collect();
        self.inner
            .events
            .run(Durable, move |c| {
                let now = topics::now_ms();
                for (topic, event) in events {
                    topics::publish(c, &topic, vec![event], true, now)?;
                }
                Ok(())
            })
            .await?;
        for t in topics {
            self.inner.events.wake(&t);
        }
        Ok(())
    }

    async fn put_subscription(&self, topic: &str, name: &str, ordered: bool) -> Result<()> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.inner
            .events
            .run(Durable, move |c| {
                topics::put_subscription(c, &topic, &name, ordered)
            })
            .await
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.inner
            .events
            .run(Durable, move |c| topics::delete_subscription(c, &topic, &name))
            .await
    }

    async fn fetch(
        &self,
        topic: &str,
        subscription: &str,
        max: usize,
        lease_ms: u64,
        wait: std::time::Duration,
    ) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let waker = self.inner.events.waker(topic);
        loop {
            // Registered before looking, so a publish between the look and
            // the wait still wakes us.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (t, s) = (topic.to_string(), subscription.to_string());
            let now = topics::now_ms();
            let fetched = self
                .inner
                .events
                .run(Relaxed, move |c| topics::fetch(c, &t, &s, max, lease_ms, now))
                .await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !fetched.deliveries.is_empty() || left.is_zero() {
                return Ok(fetched.deliveries);
            }
            let mut nap = left.min(topics::MAX_NAP);
            if let Some(due) = fetched.next_due {
                nap = nap.min(std::time::Duration::from_millis(due.saturating_sub(now)));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn settle(&self, topic: &str, subscription: &str, settles: Vec<Settle>) -> Result<()> {
        let (t, s) = (topic.to_string(), subscription.to_string());
        // Acks and retries alone may be lost to a power cut (the event comes
        // again); what they publish may not.
        let sync = if settles.iter().any(|s| match s {
            Settle::Ack { outbox, .. } => !outbox.is_empty(),
            Settle::Retry { .. } => false,
            Settle::DeadLetter { .. } => true,
        }) {
            Durable
        } else {
            Relaxed
        };
        let woken = self
            .inner
            .events
            .run(sync, move |c| {
                topics::settle(c, &t, &s, settles, topics::now_ms())
            })
            .await?;
        // A settled key may free the next event of an ordered subscription.
        self.inner.events.wake(topic);
        for t in woken {
            self.inner.events.wake(&t);
        }
        Ok(())
    }

    async fn read(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let topic = topic.to_string();
        self.read_events(move |c| topics::read(c, &topic, after, limit))
            .await
    }

    async fn move_events(&self, from: &str, moves: Vec<(u64, String, NewEvent)>) -> Result<u64> {
        let targets: Vec<String> = moves.iter().map(|(_, t, _)| t.clone()).collect();
        let from = from.to_string();
        let moved = self
            .inner
            .events
            .run(Durable, move |c| {
                topics::move_events(c, &from, moves, topics::now_ms())
            })
            .await?;
        for t in targets {
            self.inner.events.wake(&t);
        }
        Ok(moved)
    }

    async fn enforce_retention(&self) -> Result<u64> {
        self.inner
            .events
            .run(Relaxed, |c| topics::enforce_retention(c, topics::now_ms()))
            .await
    }

    fn watch_topics(&self) -> broadcast::Receiver<String> {
        self.inner.topic_changes.subscribe()
    }
}

#[async_trait]
impl KeyValue for Embedded {
    async fn kv_get(&self, scope: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (s, b, k) = (scope.to_string(), bucket.to_string(), key.to_string());
        self.read_events(move |c| topics::kv_get(c, &s, &b, &k)).await
    }

    async fn kv_set(&self, scope: &str, bucket: &str, key: &str, value: Vec<u8>) -> Result<()> {
        let (s, b, k) = (scope.to_string(), bucket.to_string(), key.to_string());
        self.inner
            .events
            .run(Durable, move |c| topics::kv_set(c, &s, &b, &k, &value))
            .await
    }

    async fn kv_delete(&self, scope: &str, bucket: &str, key: &str) -> Result<()> {
        let (s, b, k) = (scope.to_string(), bucket.to_string(), key.to_string());
        self.inner
            .events
            .run(Durable, move |c| topics::kv_delete(c, &s, &b, &k))
            .await
    }

    async fn kv_keys(&self, scope: &str, bucket: &str, offset: u64, limit: usize) -> Result<Vec<String>> {
        let (s, b) = (scope.to_string(), bucket.to_string());
        self.read_events(move |c| topics::kv_keys(c, &s, &b, offset, limit))
            .await
    }

    async fn kv_increment(&self, scope: &str, bucket: &str, key: &str, delta: u64) -> Result<u64> {
        let (s, b, k) = (scope.to_string(), bucket.to_string(), key.to_string());
        self.inner
            .events
            .run(Durable, move |c| topics::kv_increment(c, &s, &b, &k, delta))
            .await
    }
}
