//! Invocation logs on the embedded backend.
//!
//! A busy node logs tens of thousands of invocations a second, and every
//! microsecond spent per record is taken from the requests themselves (the
//! writer shares the cores). So records are not rows: each batch the node
//! writes becomes one row per function, holding that function's records as
//! a compact JSON array, so a record costs a share of one row's write
//! rather than a row of its own.
//!
//! Reads decode whole rows and filter; a row holds one batch (at most 4,096
//! records, gathered over 50 ms), so that stays cheap. Pruning drops whole
//! rows and rewrites the one row at each boundary, so its results are exact
//! to the record.
//!
//! The connection lives on a thread of its own at a lowered CPU priority, so
//! log writing takes what the request path leaves.

use crate::{Result, StoreError};
use gale_core::api::{InvocationLog, Outcome};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{engine_err, write_tx};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Engine(format!("log record encoding: {e}"))
}

pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS invocation_batches (
        function TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        oldest INTEGER NOT NULL,
        newest INTEGER NOT NULL,
        count INTEGER NOT NULL,
        records TEXT NOT NULL,
        PRIMARY KEY (function, last_seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS invocation_seq (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        next INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO invocation_seq VALUES (0, 1);";

/// One record inside a row, without the function (the row's key), as a
/// JSON array: seq, request id, version, start, duration, outcome, status,
/// cold start, error, stdout, stderr, handled event ids, CPU time.
type Packed = (
    u64,
    String,
    u64,
    u64,
    u64,
    Outcome,
    u16,
    bool,
    Option<String>,
    String,
    String,
    Vec<String>,
    u64,
);

/// A record as rows written before CPU time was logged hold it.
type PackedBeforeCpu = (
    u64,
    String,
    u64,
    u64,
    u64,
    Outcome,
    u16,
    bool,
    Option<String>,
    String,
    String,
    Vec<String>,
);

/// A record as rows written before event ids were logged hold it.
type PackedBefore = (
    u64,
    String,
    u64,
    u64,
    u64,
    Outcome,
    u16,
    bool,
    Option<String>,
    String,
    String,
);

/// A record in either stored shape.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Current(Packed),
    BeforeCpu(PackedBeforeCpu),
    Before(PackedBefore),
}

impl From<Stored> for Packed {
    fn from(s: Stored) -> Packed {
        match s {
            Stored::Current(p) => p,
            Stored::BeforeCpu((a, b, c, d, e, f, g, h, i, j, k, l)) => {
                (a, b, c, d, e, f, g, h, i, j, k, l, 0)
            }
            Stored::Before((a, b, c, d, e, f, g, h, i, j, k)) => {
                (a, b, c, d, e, f, g, h, i, j, k, Vec::new(), 0)
            }
        }
    }
}

fn pack(r: InvocationLog) -> (String, Packed) {
    (
        r.function,
        (
            r.seq,
            r.request_id,
            r.version,
            r.started_at,
            r.duration_us,
            r.outcome,
            r.status,
            r.cold_start,
            r.error,
            r.stdout,
            r.stderr,
            r.events,
            r.cpu_us,
        ),
    )
}

fn unpack(
    function: &str,
    (
        seq,
        request_id,
        version,
        started_at,
        duration_us,
        outcome,
        status,
        cold_start,
        error,
        stdout,
        stderr,
        events,
        cpu_us,
    ): Packed,
) -> InvocationLog {
    InvocationLog {
        seq,
        request_id,
        function: function.to_string(),
        version,
        started_at,
        duration_us,
        cpu_us,
        outcome,
        status,
        cold_start,
        error,
        stdout,
        stderr,
        events,
    }
}

/// Writes one row of a function's records (in seq order; none is a no-op).
fn write_row(tx: &Transaction, function: &str, records: &[Packed]) -> Result<()> {
    let Some(last) = records.last() else {
        return Ok(());
    };
    let oldest = records.iter().map(|r| r.3).min().unwrap_or(0);
    let newest = records.iter().map(|r| r.3).max().unwrap_or(0);
    let mut json = Vec::with_capacity(records.len() * 96 + 2);
    json.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        // The writer runs at a low priority but, once running, would hold
        // the core for a whole time slice: give it back every so often
        // (otherwise p99 under load rises by half).
        if i % 256 == 255 {
            std::thread::yield_now();
        }
        serde_json::to_writer(&mut json, r).map_err(json_err)?;
    }
    json.push(b']');
    let json = String::from_utf8(json).map_err(|e| StoreError::Engine(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO invocation_batches (function, last_seq, oldest, newest, count, records)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            function,
            last.0 as i64,
            oldest as i64,
            newest as i64,
            records.len() as i64,
            json
        ])
    })
    .map_err(engine_err)?;
    Ok(())
}

/// The records of the row ending at `last_seq`.
fn decode(function: &str, last_seq: i64, json: &str) -> Vec<Packed> {
    match serde_json::from_str::<Vec<Stored>>(json) {
        Ok(records) => records.into_iter().map(Packed::from).collect(),
        Err(e) => {
            // A row that no longer parses is diagnostics lost, not state: say so in its place.
            vec![(
                last_seq as u64,
                String::new(),
                0,
                0,
                0,
                Outcome::Error,
                0,
                false,
                Some(format!("unreadable log records of `{function}`: {e}")),
                String::new(),
                String::new(),
                Vec::new(),
                0,
            )]
        }
    }
}

/// Stores `records` numbered from the stored counter.
pub(super) fn append(c: &mut Connection, records: Vec<InvocationLog>) -> Result<()> {
    let tx = write_tx(c)?;
    write(&tx, records, true)?;
    tx.commit().map_err(engine_err)
}

/// Writes `records`, numbering them from the stored counter when `assign`
/// (otherwise they keep their `seq`, which must be above every stored one).
fn write(tx: &Transaction, records: Vec<InvocationLog>, assign: bool) -> Result<()> {
    let mut next: u64 = tx
        .query_row("SELECT next FROM invocation_seq WHERE id = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(engine_err)? as u64;
    // Group by function, keeping each function's records in seq order.
    let mut groups: Vec<(String, Vec<Packed>)> = Vec::new();
    for mut r in records {
        if assign {
            r.seq = next;
        }
        next = next.max(r.seq + 1);
        let (function, packed) = pack(r);
        match groups.iter_mut().find(|(f, _)| *f == function) {
            Some((_, g)) => g.push(packed),
            None => groups.push((function, vec![packed])),
        }
    }
    for (function, group) in &groups {
        write_row(tx, function, group)?;
    }
    tx.execute("UPDATE invocation_seq SET next = ?1 WHERE id = 0", [next as i64])
        .map_err(engine_err)?;
    Ok(())
}

pub(super) fn query(
    c: &mut Connection,
    function: &str,
    after: u64,
    limit: usize,
    tail: bool,
) -> Result<Vec<InvocationLog>> {
    let sql = if tail {
        "SELECT last_seq, records FROM invocation_batches WHERE function = ?1 AND last_seq > ?2 \
         ORDER BY last_seq DESC"
    } else {
        "SELECT last_seq, records FROM invocation_batches WHERE function = ?1 AND last_seq > ?2 \
         ORDER BY last_seq"
    };
    let mut stmt = c.prepare_cached(sql).map_err(engine_err)?;
    let mut rows = stmt.query(params![function, after as i64]).map_err(engine_err)?;
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(row) = rows.next().map_err(engine_err)?
    {
        let last_seq = row.get::<_, i64>(0).map_err(engine_err)?;
        let mut records = decode(function, last_seq, &row.get::<_, String>(1).map_err(engine_err)?);
        if tail {
            records.reverse();
        }
        let wanted = limit - out.len();
        out.extend(
            records
                .into_iter()
                .filter(|r| r.0 > after)
                .take(wanted)
                .map(|p| unpack(function, p)),
        );
    }
    if tail {
        out.reverse();
    }
    Ok(out)
}

/// Drops records started before `cutoff_ms` and all but the newest `keep`
/// of each function; returns how many records went.
pub(super) fn prune(c: &mut Connection, cutoff_ms: u64, keep: usize) -> Result<u64> {
    let tx = write_tx(c)?;
    let cutoff = cutoff_ms as i64;
    let mut removed = tx
        .query_row(
            "SELECT coalesce(sum(count), 0) FROM invocation_batches WHERE newest < ?1",
            [cutoff],
            |r| r.get::<_, i64>(0),
        )
        .map_err(engine_err)? as u64;
    tx.execute("DELETE FROM invocation_batches WHERE newest < ?1", [cutoff])
        .map_err(engine_err)?;

    // Each function's name by an index seek (a skip scan over the key).
    let functions: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "WITH RECURSIVE f(name) AS (
                     SELECT min(function) FROM invocation_batches
                     UNION ALL
                     SELECT (SELECT min(function) FROM invocation_batches WHERE function > f.name)
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
        // Newest first: keep whole rows while they fit in `keep`, cut the
        // row that crosses it or the age cutoff, and drop everything older.
        // Only the cut rows are read and decoded.
        let rows: Vec<(i64, i64, i64)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT last_seq, oldest, count FROM invocation_batches
                     WHERE function = ?1 ORDER BY last_seq DESC",
                )
                .map_err(engine_err)?;
            stmt.query_map([&function], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(engine_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(engine_err)?
        };
        let mut kept = 0usize;
        for (last_seq, oldest, count) in rows {
            let count = count as usize;
            if kept + count <= keep && oldest >= cutoff {
                kept += count;
                continue;
            }
            let survivors: Vec<Packed> = if kept < keep {
                let json: String = tx
                    .query_row(
                        "SELECT records FROM invocation_batches WHERE function = ?1 AND last_seq = ?2",
                        params![function, last_seq],
                        |r| r.get(0),
                    )
                    .map_err(engine_err)?;
                let mut newest: Vec<Packed> = decode(&function, last_seq, &json)
                    .into_iter()
                    .rev()
                    .filter(|r| r.3 as i64 >= cutoff)
                    .take(keep - kept)
                    .collect();
                newest.reverse();
                newest
            } else {
                Vec::new()
            };
            kept += survivors.len();
            removed += (count - survivors.len()) as u64;
            tx.execute(
                "DELETE FROM invocation_batches WHERE function = ?1 AND last_seq = ?2",
                params![function, last_seq],
            )
            .map_err(engine_err)?;
            write_row(&tx, &function, &survivors)?;
        }
    }
    tx.commit().map_err(engine_err)?;
    Ok(removed)
}

/// Moves logs from the table of earlier Gale versions (one JSON document
/// per record) into batch rows, keeping their sequence numbers, then drops
/// the old table, all in one transaction.
pub(super) fn migrate(c: &mut Connection) -> Result<()> {
    let tx = write_tx(c)?;
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
    let old: Vec<InvocationLog> = {
        let mut stmt = tx
            .prepare("SELECT seq, record FROM invocations ORDER BY seq")
            .map_err(engine_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(engine_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(engine_err)?;
        rows.into_iter()
            // A record that no longer parses is diagnostics lost, not state: skip it.
            .filter_map(|(seq, json)| {
                let mut log: InvocationLog = serde_json::from_str(&json).ok()?;
                log.seq = seq as u64;
                Some(log)
            })
            .collect()
    };
    write(&tx, old, false)?;
    tx.execute_batch("DROP TABLE invocations;").map_err(engine_err)?;
    tx.commit().map_err(engine_err)
}

type LogJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The log connection's own thread, at a lowered CPU priority: under load a
/// node writes thousands of log records a second, and that work must take
/// what the request path leaves rather than delay requests (on an ordinary
/// thread a batch holds a core for a whole time slice, and the requests
/// waiting for that core see it in their tail latency).
pub(super) struct LogThread {
    jobs: Option<std::sync::mpsc::Sender<LogJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Nice value of the log thread: about a tenth of a normal thread's share
/// when the CPU is contended, all of it when idle.
const LOG_THREAD_NICE: i32 = 10;

impl LogThread {
    pub(super) fn start(mut conn: Connection) -> std::io::Result<LogThread> {
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

    pub(super) async fn run<T: Send + 'static>(
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
