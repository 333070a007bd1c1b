//! The embedded backend: one directory, nothing to install.
//!
//! Metadata and logs live in SQLite (WAL mode, `synchronous=FULL` for
//! metadata so an acknowledged write survives power loss; logs, which are
//! diagnostics, on their own connection and low-priority thread, committed
//! per batch with `synchronous=NORMAL`); artifacts are plain
//! files named by their digest, written to a temporary name, synced, then
//! renamed, so a crash never leaves a half-written blob under a real name.
//! The directory is locked for the life of the node: two nodes on one data
//! directory would corrupt each other's view.

use crate::{Artifacts, Entry, Expect, InvocationLogs, Metadata, Result, StoreError, digest_hex, digest_of};
use async_trait::async_trait;
use gale_core::api::{InvocationLog, Outcome};
use rusqlite::{Connection, OptionalExtension, params};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The embedded backend rooted at a data directory.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    meta: Mutex<Connection>,
    logs: LogThread,
    /// Held (and locked) for as long as the backend lives.
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
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
             );
             CREATE TABLE IF NOT EXISTS invocation_log (
                 function TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 started_at INTEGER NOT NULL,
                 request_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 duration_us INTEGER NOT NULL,
                 outcome TEXT NOT NULL,
                 status INTEGER NOT NULL,
                 cold_start INTEGER NOT NULL,
                 detail TEXT,
                 PRIMARY KEY (function, seq)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS invocation_log_seq (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 next INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO invocation_log_seq VALUES (0, 1);",
        )
        .map_err(engine_err)?;
        let mut logs = Connection::open(&db).map_err(engine_err)?;
        logs.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")
            .map_err(engine_err)?;
        migrate_json_logs(&mut logs)?;
        Ok(Embedded {
            inner: Arc::new(Inner {
                dir,
                meta: Mutex::new(meta),
                logs: LogThread::start(logs).map_err(io_err(&db))?,
                _lock: lock,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
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

type LogJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The log connection's own thread, at a lowered CPU priority: under load a
/// node writes thousands of log records a second, and that work must take
/// what the request path leaves rather than delay requests (it showed as
/// doubled p99 latency while a batch was written on an ordinary thread).
struct LogThread {
    jobs: Option<std::sync::mpsc::Sender<LogJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Nice value of the log thread: about a tenth of a normal thread's share
/// when the CPU is contended, all of it when idle.
const LOG_THREAD_NICE: i32 = 10;

impl LogThread {
    fn start(mut conn: Connection) -> std::io::Result<LogThread> {
        let (jobs, rx) = std::sync::mpsc::channel::<LogJob>();
        let thread = std::thread::Builder::new()
            .name("gale-logs".into())
            .spawn(move || {
                // SAFETY: plain syscall; on Linux `who = 0` is the calling thread.
                #[cfg(target_os = "linux")]
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, LOG_THREAD_NICE);
                }
                for job in rx {
                    job(&mut conn);
                }
            })?;
        Ok(LogThread {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: LogJob = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        let gone = || StoreError::Engine("the log writer thread has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for LogThread {
    /// Finishes queued writes and closes the connection before the data
    /// directory's lock is released.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
        let key = key.to_string();
        self.with_meta(move |c| {
            let tx = c.transaction().map_err(engine_err)?;
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
        .await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<()> {
        let key = key.to_string();
        self.with_meta(move |c| {
            let tx = c.transaction().map_err(engine_err)?;
            check(expect, current_revision(&tx, &key)?, &key)?;
            tx.execute("DELETE FROM kv WHERE key = ?1", [&key])
                .map_err(engine_err)?;
            tx.commit().map_err(engine_err)
        })
        .await
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

/// The parts of a log record that are usually empty, stored as one JSON
/// column (NULL when all are empty, as for most invocations).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    stderr: String,
}

/// Writes `records` with consecutive sequence numbers from the stored counter.
fn insert_logs(tx: &rusqlite::Transaction, records: &[InvocationLog]) -> Result<()> {
    let mut next: i64 = tx
        .query_row("SELECT next FROM invocation_log_seq WHERE id = 0", [], |r| {
            r.get(0)
        })
        .map_err(engine_err)?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO invocation_log (function, seq, started_at, request_id, version, duration_us, \
             outcome, status, cold_start, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(engine_err)?;
    for (i, r) in records.iter().enumerate() {
        // Nice alone still let a batch hold a core for a whole time slice
        // (p99 2.8 ms against 1.2 ms without logging, bench `http`); giving
        // the core back every few rows keeps requests ahead of the writer.
        if i % 64 == 63 {
            std::thread::yield_now();
        }
        let detail = (r.error.is_some() || !r.stdout.is_empty() || !r.stderr.is_empty())
            .then(|| {
                serde_json::to_string(&Detail {
                    error: r.error.clone(),
                    stdout: r.stdout.clone(),
                    stderr: r.stderr.clone(),
                })
            })
            .transpose()
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        stmt.execute(params![
            r.function,
            next,
            r.started_at as i64,
            r.request_id,
            r.version as i64,
            r.duration_us as i64,
            r.outcome.as_str(),
            r.status,
            r.cold_start,
            detail,
        ])
        .map_err(engine_err)?;
        next += 1;
    }
    tx.execute("UPDATE invocation_log_seq SET next = ?1 WHERE id = 0", [next])
        .map_err(engine_err)?;
    Ok(())
}

const LOG_COLUMNS: &str =
    "seq, request_id, function, version, started_at, duration_us, outcome, status, cold_start, detail";

fn read_log(r: &rusqlite::Row) -> rusqlite::Result<InvocationLog> {
    let detail: Detail = r
        .get::<_, Option<String>>(9)?
        .map(|d| {
            serde_json::from_str(&d).unwrap_or_else(|e| Detail {
                error: Some(format!("unreadable log detail: {e}")),
                ..Detail::default()
            })
        })
        .unwrap_or_default();
    Ok(InvocationLog {
        seq: r.get::<_, i64>(0)? as u64,
        request_id: r.get(1)?,
        function: r.get(2)?,
        version: r.get::<_, i64>(3)? as u64,
        started_at: r.get::<_, i64>(4)? as u64,
        duration_us: r.get::<_, i64>(5)? as u64,
        outcome: Outcome::parse(&r.get::<_, String>(6)?).unwrap_or(Outcome::Error),
        status: r.get(7)?,
        cold_start: r.get(8)?,
        error: detail.error,
        stdout: detail.stdout,
        stderr: detail.stderr,
    })
}

/// Moves logs kept as one JSON document per row (Gale before 0.2) into the
/// columnar table, keeping their sequence numbers, then drops the old table.
fn migrate_json_logs(c: &mut Connection) -> Result<()> {
    let tx = c.transaction().map_err(engine_err)?;
    let exists = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'invocations'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(engine_err)?
        .is_some();
    if !exists {
        return Ok(());
    }
    let old: Vec<(i64, String)> = {
        let mut stmt = tx
            .prepare("SELECT seq, record FROM invocations ORDER BY seq")
            .map_err(engine_err)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(engine_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(engine_err)?
    };
    for (seq, record) in old {
        // A record that no longer parses is diagnostics lost, not state: skip it.
        let Ok(log) = serde_json::from_str::<InvocationLog>(&record) else {
            continue;
        };
        tx.execute("UPDATE invocation_log_seq SET next = ?1 WHERE id = 0", [seq])
            .map_err(engine_err)?;
        insert_logs(&tx, std::slice::from_ref(&log))?;
    }
    tx.execute_batch("DROP TABLE invocations;").map_err(engine_err)?;
    tx.commit().map_err(engine_err)
}

#[async_trait]
impl InvocationLogs for Embedded {
    async fn append(&self, records: Vec<InvocationLog>) -> Result<()> {
        self.with_logs(move |c| {
            let tx = c.transaction().map_err(engine_err)?;
            insert_logs(&tx, &records)?;
            tx.commit().map_err(engine_err)
        })
        .await
    }

    async fn query(
        &self,
        function: &str,
        after: u64,
        limit: usize,
        tail: bool,
    ) -> Result<Vec<InvocationLog>> {
        let function = function.to_string();
        self.with_logs(move |c| {
            let sql = if tail {
                format!(
                    "SELECT {LOG_COLUMNS} FROM invocation_log WHERE function = ?1 AND seq > ?2 \
                     ORDER BY seq DESC LIMIT ?3"
                )
            } else {
                format!(
                    "SELECT {LOG_COLUMNS} FROM invocation_log WHERE function = ?1 AND seq > ?2 \
                     ORDER BY seq LIMIT ?3"
                )
            };
            let mut stmt = c.prepare_cached(&sql).map_err(engine_err)?;
            let rows = stmt
                .query_map(params![function, after as i64, limit as i64], read_log)
                .map_err(engine_err)?;
            let mut logs = rows.collect::<Result<Vec<_>, _>>().map_err(engine_err)?;
            if tail {
                logs.reverse();
            }
            Ok(logs)
        })
        .await
    }

    async fn prune(&self, now_ms: u64, max_age_ms: u64, keep_per_function: usize) -> Result<u64> {
        self.with_logs(move |c| {
            let tx = c.transaction().map_err(engine_err)?;
            let cutoff = now_ms.saturating_sub(max_age_ms) as i64;
            let mut removed = tx
                .execute("DELETE FROM invocation_log WHERE started_at < ?1", [cutoff])
                .map_err(engine_err)?;
            // Each function's name by an index seek (a skip scan), then its
            // oldest records beyond the newest `keep_per_function`.
            let functions: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "WITH RECURSIVE f(name) AS (
                             SELECT min(function) FROM invocation_log
                             UNION ALL
                             SELECT (SELECT min(function) FROM invocation_log WHERE function > f.name)
                             FROM f WHERE f.name IS NOT NULL
                         ) SELECT name FROM f WHERE name IS NOT NULL",
                    )
                    .map_err(engine_err)?;
                stmt.query_map([], |r| r.get(0))
                    .map_err(engine_err)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(engine_err)?
            };
            for function in functions {
                removed += tx
                    .execute(
                        "DELETE FROM invocation_log WHERE function = ?1 AND seq <= (
                             SELECT seq FROM invocation_log WHERE function = ?1
                             ORDER BY seq DESC LIMIT 1 OFFSET ?2
                         )",
                        params![function, keep_per_function as i64],
                    )
                    .map_err(engine_err)?;
            }
            tx.commit().map_err(engine_err)?;
            Ok(removed as u64)
        })
        .await
    }
}
