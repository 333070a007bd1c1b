//! MariaDB/MySQL change data capture: the row-based binlog, read as a
//! replica reads it, published as row-change events (`sources/rows.rs`).
//!
//! Why a replica: the binlog is the server's own record of committed
//! transactions in commit order, so reading it (with `mysql_async`'s binlog
//! stream) sees every insert, update and delete of the followed tables,
//! whole transactions at a time, without triggers or polling. It needs the
//! server to log rows (`log_bin`, `binlog_format=ROW`,
//! `binlog_row_image=FULL`); the source checks that first and says what to
//! change when it is not so ([`server`]).
//!
//! Positions and ids. Each transaction has a position: its GTID (MariaDB
//! `domain-server-seq`, MySQL `uuid:n`), or the binlog file and offset where
//! it starts when the server writes no GTIDs. An event's id is the source's
//! name, that position and the row's index in the transaction, so reading a
//! transaction again gives the same ids, which the topic's dedup drops.
//!
//! Durability. Events are published in batches of at most [`BATCH`] rows (a
//! huge transaction is never held whole in memory); the checkpoint, the
//! position just after the last transaction all of whose events are
//! durable, is saved only after its publish returned. A restart (or a lost
//! connection: the run ends with an error and the plane starts it again
//! after a pause) reads from the checkpoint: by GTID on MariaDB
//! (`@slave_connect_state`), by file and offset otherwise. A transaction cut
//! by a crash is read again from its start, with the same ids.
//!
//! Schema. The binlog carries no column names (unless the server runs with
//! `binlog_row_metadata=FULL`, whose names are then used), so they come from
//! `information_schema`, read again when a TABLE_MAP event shows another
//! column count or DDL names a followed table. While the source catches up
//! on a backlog spanning several schema changes of a table, events older
//! than the latest change are named by the latest schema: a column added
//! later shows as `@<index>`.
//!
//! Snapshot (`snapshot = "initial"`, first start only): every existing row
//! as `op: "r"`, read in one `START TRANSACTION WITH CONSISTENT SNAPSHOT`
//! whose binlog position MariaDB reports (`binlog_snapshot_file` and
//! `_position`); streaming then starts exactly there. The checkpoint is
//! first saved when the snapshot is complete, so a crash in the middle
//! redoes it; snapshot rows' ids come from the table and primary key, so
//! rows published twice are stored once.

mod schema;
mod server;

use super::context::{Context, Source, Wanted};
use super::rows::{Op, Position, RowChange};
use crate::NodeError;
use crate::clock::now_ms;
use futures_util::{FutureExt, StreamExt};
use gale_core::{MysqlSource, SnapshotMode};
use gale_store::NewEvent;
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};
use schema::{Origin, Table};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use server::{BinlogPosition, Facts, Server, default_server_id};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Rows published at a time; a longer transaction is published in parts.
const BATCH: usize = 1000;
/// How often the server sends a heartbeat while it has nothing to send.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// No event (not even a heartbeat) for this long: the connection is dead.
const SILENCE: Duration = Duration::from_secs(20);

/// MariaDB's binlog events that `mysql_common` does not know.
const MARIADB_GTID_EVENT: u8 = 0xA2;
/// A MariaDB GTID event's flag: the transaction is one statement (DDL) with
/// no COMMIT or XID after it.
const FL_STANDALONE: u8 = 1;

pub struct Mysql {
    spec: MysqlSource,
}

/// The checkpoint: where to read from after the last transaction whose
/// events are all durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    file: String,
    pos: u64,
    /// MariaDB's GTID position there; resumed from when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gtid: Option<String>,
}

impl From<BinlogPosition> for Checkpoint {
    fn from(p: BinlogPosition) -> Checkpoint {
        Checkpoint {
            file: p.file,
            pos: p.pos,
            gtid: p.gtid,
        }
    }
}

impl Checkpoint {
    fn describe(&self) -> String {
        match &self.gtid {
            Some(g) if !g.is_empty() => format!("gtid {g} ({}:{})", self.file, self.pos),
            _ => format!("{}:{}", self.file, self.pos),
        }
    }
}

impl Mysql {
    pub fn new(_wanted: &Wanted, spec: &MysqlSource) -> Mysql {
        Mysql { spec: spec.clone() }
    }
}

#[async_trait::async_trait]
impl Source for Mysql {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let server = Server::new(&self.spec.url)?;
        let mut conn = server.connect().await?;
        let facts = server.check(&mut conn).await?;
        let server_id = self
            .spec
            .server_id
            .unwrap_or_else(|| default_server_id(cx.name()));
        if server_id == facts.server_id {
            return Err(NodeError::Source(format!(
                "server_id {server_id} is the server's own id at {}: set `server_id` in the source to a number no server or replica there uses",
                server.address
            )));
        }
        let tables = Tables::load(&server, &mut conn, &self.spec.tables).await?;
        let start = match cx.checkpoint::<Checkpoint>().await? {
            Some(checkpoint) => checkpoint,
            None => {
                let start = match self.spec.snapshot {
                    SnapshotMode::Initial => {
                        match snapshot(&server, &facts, &tables, cx, &self.spec.topic).await? {
                            Some(at) => at,
                            None => return Ok(()),
                        }
                    }
                    SnapshotMode::Never => server.current(&mut conn, &facts).await?.into(),
                };
                cx.save(&start).await?;
                start
            }
        };
        cx.report(start.describe(), None);
        let stream = open_stream(&server, &facts, server_id, &start).await?;
        let mut reader = Reader {
            server,
            facts,
            conn,
            tables,
            topic: self.spec.topic.clone(),
            name: cx.name().to_string(),
            file: start.file.clone(),
            gtids: parse_gtids(start.gtid.as_deref()),
            tx: None,
            pending: Vec::new(),
            done: None,
            done_commit_ms: 0,
            reported: start.describe(),
        };
        reader.read(cx, stream).await
    }
}

/// The followed tables, by database and name.
struct Tables {
    by_name: HashMap<(String, String), Table>,
    /// Tables whose schema may have changed: read again at their next
    /// TABLE_MAP event.
    stale: Vec<(String, String)>,
}

impl Tables {
    async fn load(server: &Server, conn: &mut Conn, names: &[String]) -> Result<Tables, NodeError> {
        let mut by_name = HashMap::new();
        for name in names {
            let (db, table) = match name.split_once('.') {
                Some((db, t)) => (db.to_string(), t.to_string()),
                None => match server.database() {
                    Some(db) => (db.to_string(), name.clone()),
                    None => {
                        return Err(NodeError::Source(format!(
                            "table {name:?} names no database and the source's url names none: write it as database.table, or end the url with /database"
                        )));
                    }
                },
            };
            let found = Table::load(conn, &db, &table)
                .await
                .map_err(|e| server.error(e, "reading the tables' columns"))?;
            let Some(found) = found else {
                return Err(NodeError::Source(format!(
                    "table {db}.{table} does not exist at {} (or the source's user may not see it): create it, fix `tables`, or grant SELECT on it",
                    server.address
                )));
            };
            by_name.insert((db, table), found);
        }
        Ok(Tables {
            by_name,
            stale: Vec::new(),
        })
    }
}

/// Connects a replica's stream from `start`.
async fn open_stream(
    server: &Server,
    facts: &Facts,
    server_id: u32,
    start: &Checkpoint,
) -> Result<BinlogStream, NodeError> {
    let mut conn = server.connect().await?;
    let setup = |e| server.error(e, "setting up the binlog connection");
    conn.query_drop(format!("SET @master_heartbeat_period = {}", HEARTBEAT.as_nanos()))
        .await
        .map_err(setup)?;
    let by_gtid = facts.mariadb && start.gtid.is_some();
    if facts.mariadb {
        // Capability 4: GTID events as such (not as `BEGIN` queries).
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(setup)?;
    }
    if by_gtid {
        conn.exec_drop("SET @slave_connect_state = ?", (start.gtid.as_deref(),))
            .await
            .map_err(setup)?;
    }
    let mut request = BinlogStreamRequest::new(server_id);
    if !by_gtid {
        request = request.with_filename(start.file.as_bytes()).with_pos(start.pos);
    }
    conn.get_binlog_stream(request)
        .await
        .map_err(|e| server.error(e, "reading the binlog as a replica (REPLICATION SLAVE)"))
}

/// The transaction being read.
struct Tx {
    /// Its position in event ids: the GTID, or `file:offset` of its start.
    id: String,
    gtid: Option<String>,
    /// MariaDB's GTID, by domain, to update the GTID position with at its end.
    mariadb: Option<(u32, String)>,
    commit_ms: i64,
    /// Rows (events) so far.
    rows: usize,
    /// Inside BEGIN … COMMIT/XID; a DDL statement is a transaction by itself.
    open: bool,
}

struct Reader {
    server: Server,
    facts: Facts,
    /// For reading schemas meanwhile.
    conn: Conn,
    tables: Tables,
    topic: String,
    name: String,
    /// The binlog file being read.
    file: String,
    /// MariaDB's GTID position: the last transaction read, by domain.
    gtids: BTreeMap<u32, String>,
    tx: Option<Tx>,
    /// Events not yet published.
    pending: Vec<NewEvent>,
    /// Where the last transaction read ended, if not saved yet.
    done: Option<Checkpoint>,
    done_commit_ms: i64,
    /// The position last reported.
    reported: String,
}

impl Reader {
    async fn read(&mut self, cx: &mut Context, mut stream: BinlogStream) -> Result<(), NodeError> {
        loop {
            // Publish once nothing more is waiting, or a batch is full.
            let waiting = !self.pending.is_empty() || self.done.is_some();
            let next = if waiting {
                match stream.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        self.flush(cx, true).await?;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    next = tokio::time::timeout(SILENCE, stream.next()) => match next {
                        Ok(next) => next,
                        Err(_) => {
                            return Err(NodeError::Source(format!(
                                "the server at {} sent nothing (not even a heartbeat) for {}s; reconnecting",
                                self.server.address,
                                SILENCE.as_secs()
                            )));
                        }
                    },
                    _ = cx.stopped() => return Ok(()),
                }
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(self.server.error(e, "reading the binlog")),
                None => {
                    return Err(NodeError::Source(format!(
                        "the server at {} ended the binlog stream; reconnecting",
                        self.server.address
                    )));
                }
            };
            self.handle(cx, &stream, &event).await?;
            if self.pending.len() >= BATCH {
                self.flush(cx, false).await?;
            }
            if cx.is_stopped() {
                return Ok(());
            }
        }
    }

    async fn handle(
        &mut self,
        cx: &mut Context,
        stream: &BinlogStream,
        event: &Event,
    ) -> Result<(), NodeError> {
        let header = event.header();
        // The offset just past this event (0 for events the server makes up).
        let end = header.log_pos() as u64;
        let start = end.saturating_sub(header.event_size() as u64);
        let at_ms = header.timestamp() as i64 * 1000;
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            let data = event.data();
            if data.len() >= 13 {
                let seq = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
                let domain = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
                let flags = data[12];
                let gtid = format!("{domain}-{}-{seq}", header.server_id());
                self.tx = Some(Tx {
                    id: gtid.clone(),
                    gtid: Some(gtid.clone()),
                    mariadb: Some((domain, gtid)),
                    commit_ms: at_ms,
                    rows: 0,
                    open: flags & FL_STANDALONE == 0,
                });
            }
            return Ok(());
        }
        let data = event
            .read_data()
            .map_err(|e| NodeError::Source(format!("a binlog event could not be read: {e}")))?;
        match data {
            Some(EventData::RotateEvent(r)) => {
                self.file = r.name().into_owned();
            }
            Some(EventData::GtidEvent(g)) => {
                // MySQL: `uuid:n`.
                let sid = g.sid();
                let uuid = uuid::Uuid::from_bytes(sid);
                let gtid = format!("{uuid}:{}", g.gno());
                self.tx = Some(Tx {
                    id: gtid.clone(),
                    gtid: Some(gtid),
                    mariadb: None,
                    commit_ms: at_ms,
                    rows: 0,
                    open: false,
                });
            }
            Some(EventData::QueryEvent(q)) => {
                let query = q.query();
                let text = query.trim();
                if text.eq_ignore_ascii_case("BEGIN") {
                    let tx = self.tx.get_or_insert_with(|| Tx {
                        id: format!("{}:{start}", self.file),
                        gtid: None,
                        mariadb: None,
                        commit_ms: at_ms,
                        rows: 0,
                        open: true,
                    });
                    tx.open = true;
                } else if text.eq_ignore_ascii_case("COMMIT") {
                    self.end(end);
                } else {
                    self.statement(cx, &q.schema(), text, &self.file.clone(), start, at_ms);
                    if !self.tx.as_ref().is_some_and(|t| t.open) {
                        self.end(end);
                    }
                }
            }
            Some(EventData::XidEvent(_)) => self.end(end),
            Some(EventData::TableMapEvent(tme)) => {
                let key = (tme.database_name().into_owned(), tme.table_name().into_owned());
                let count = tme.columns_count() as usize;
                self.refresh(&key, count).await?;
            }
            Some(EventData::RowsEvent(rows)) => {
                self.rows(cx, stream, &rows, start, at_ms)?;
            }
            // Nothing to read: caught up.
            Some(EventData::HeartbeatEvent)
                if self.tx.is_none() && self.pending.is_empty() && self.done.is_none() =>
            {
                cx.report(self.reported.clone(), Some(0));
            }
            _ => {}
        }
        Ok(())
    }

    /// A statement in the binlog: TRUNCATE of a followed table becomes an
    /// event; other DDL naming one makes its schema be read again.
    fn statement(&mut self, cx: &Context, schema: &str, text: &str, file: &str, start: u64, at_ms: i64) {
        let lower = text.to_ascii_lowercase();
        let mut words = lower.split_whitespace();
        if words.next() == Some("truncate") {
            let mut name = words.next().unwrap_or_default();
            if name == "table" {
                name = words.next().unwrap_or_default();
            }
            let name = name.replace('`', "");
            let (db, table) = match name.split_once('.') {
                Some((db, t)) => (db.to_string(), t.to_string()),
                None => (schema.to_string(), name.clone()),
            };
            // Names compare as the server wrote them; `lower` only finds the keyword.
            let followed = self
                .tables
                .by_name
                .keys()
                .find(|(d, t)| d.eq_ignore_ascii_case(&db) && t.eq_ignore_ascii_case(&table))
                .cloned();
            if let Some((db, table)) = followed {
                let tx = self.tx.get_or_insert_with(|| Tx {
                    id: format!("{file}:{start}"),
                    gtid: None,
                    mariadb: None,
                    commit_ms: at_ms,
                    rows: 0,
                    open: false,
                });
                let change = RowChange {
                    op: Op::Truncate,
                    schema: db.clone(),
                    table,
                    before: None,
                    after: None,
                    unchanged: Vec::new(),
                    key: Vec::new(),
                };
                let position = position(&self.name, &db, tx, false);
                let id = cx.event_id(&tx.id, tx.rows);
                tx.rows += 1;
                self.pending.push(change.event(id, &position, now_ms() as i64));
            }
            return;
        }
        for (db, table) in self.tables.by_name.keys() {
            let key = (db.clone(), table.clone());
            if lower.contains(&table.to_ascii_lowercase()) && !self.tables.stale.contains(&key) {
                self.tables.stale.push(key);
            }
        }
    }

    /// Reads a followed table's schema again if it may have changed.
    async fn refresh(&mut self, key: &(String, String), columns: usize) -> Result<(), NodeError> {
        let Some(known) = self.tables.by_name.get(key) else {
            return Ok(());
        };
        let stale = self.tables.stale.contains(key);
        if !stale && known.columns.len() == columns {
            return Ok(());
        }
        self.tables.stale.retain(|k| k != key);
        let loaded = Table::load(&mut self.conn, &key.0, &key.1)
            .await
            .map_err(|e| self.server.error(e, "reading a table's columns again"))?;
        match loaded {
            Some(table) => {
                tracing::info!(table = %format!("{}.{}", key.0, key.1), columns = table.columns.len(), "the table's schema changed; read again");
                self.tables.by_name.insert(key.clone(), table);
            }
            None => {
                tracing::warn!(table = %format!("{}.{}", key.0, key.1), "a followed table is gone; its last known schema stays in use")
            }
        }
        Ok(())
    }

    fn rows(
        &mut self,
        cx: &Context,
        stream: &BinlogStream,
        rows: &RowsEventData<'_>,
        start: u64,
        at_ms: i64,
    ) -> Result<(), NodeError> {
        let Some(tme) = stream.get_tme(rows.table_id()) else {
            return Ok(());
        };
        let key = (tme.database_name().into_owned(), tme.table_name().into_owned());
        let Some(table) = self.tables.by_name.get(&key) else {
            return Ok(());
        };
        let op = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Insert,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
            _ => Op::Update,
        };
        let before_columns: Vec<usize> = rows
            .columns_before_image()
            .map(|b| b.iter_ones().collect())
            .unwrap_or_default();
        let after_columns: Vec<usize> = rows
            .columns_after_image()
            .map(|b| b.iter_ones().collect())
            .unwrap_or_default();
        let file = self.file.clone();
        let tx = self.tx.get_or_insert_with(|| Tx {
            id: format!("{file}:{start}"),
            gtid: None,
            mariadb: None,
            commit_ms: at_ms,
            rows: 0,
            open: true,
        });
        let position = position(&self.name, &key.0, tx, false);
        let now = now_ms() as i64;
        for row in rows.rows(tme) {
            let (before, after) = row.map_err(|e| {
                NodeError::Source(format!(
                    "a row of {}.{} in the binlog could not be read: {e}",
                    key.0, key.1
                ))
            })?;
            let before = before.map(|r| image(table, &before_columns, r));
            let after = after.map(|r| image(table, &after_columns, r));
            let keyed = after.as_ref().or(before.as_ref());
            let change = RowChange {
                op,
                schema: key.0.clone(),
                table: key.1.clone(),
                key: keyed.map(|r| table.key_of(r)).unwrap_or_default(),
                before,
                after,
                unchanged: Vec::new(),
            };
            let id = cx.event_id(&tx.id, tx.rows);
            tx.rows += 1;
            self.pending.push(change.event(id, &position, now));
        }
        Ok(())
    }

    /// A transaction ended at `end`.
    fn end(&mut self, end: u64) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        if let Some((domain, gtid)) = tx.mariadb {
            self.gtids.insert(domain, gtid);
        }
        self.done_commit_ms = tx.commit_ms;
        if end == 0 {
            return;
        }
        let gtid = self
            .facts
            .mariadb
            .then(|| self.gtids.values().cloned().collect::<Vec<_>>().join(","));
        self.done = Some(Checkpoint {
            file: self.file.clone(),
            pos: end,
            gtid,
        });
    }

    /// Publishes what is pending; then, if every transaction read is whole
    /// in it, saves the checkpoint.
    async fn flush(&mut self, cx: &mut Context, idle: bool) -> Result<(), NodeError> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            cx.publish(&self.topic, batch).await?;
        }
        if let Some(done) = self.done.take() {
            cx.save(&done).await?;
            let lag = if idle && self.tx.is_none() {
                0
            } else {
                (now_ms() as i64 - self.done_commit_ms).max(0) as u64
            };
            self.reported = done.describe();
            cx.report(self.reported.clone(), Some(lag));
        }
        Ok(())
    }
}

/// A row image as JSON.
fn image(table: &Table, present: &[usize], row: mysql_async::binlog::row::BinlogRow) -> Map<String, Json> {
    let names: Vec<Option<String>> = row
        .columns_ref()
        .iter()
        .map(|c| {
            let name = c.name_str();
            (!name.starts_with('@')).then(|| name.into_owned())
        })
        .collect();
    let values: Vec<Value> = row
        .unwrap()
        .into_iter()
        .map(|v| Value::try_from(v).unwrap_or(Value::NULL))
        .collect();
    table.row(present, values, &names, Origin::Binlog)
}

fn position(name: &str, db: &str, tx: &Tx, snapshot: bool) -> Position {
    Position {
        connector: "mysql",
        name: name.to_string(),
        db: db.to_string(),
        lsn: tx.gtid.is_none().then(|| tx.id.clone()),
        gtid: tx.gtid.clone(),
        tx_id: None,
        commit_ms: tx.commit_ms,
        snapshot,
    }
}

/// `0-1-5,1-1-3` by domain.
fn parse_gtids(gtids: Option<&str>) -> BTreeMap<u32, String> {
    gtids
        .unwrap_or_default()
        .split(',')
        .filter_map(|g| {
            let g = g.trim();
            let domain = g.split('-').next()?.parse().ok()?;
            Some((domain, g.to_string()))
        })
        .collect()
}

/// The initial snapshot: every row of the followed tables as `op: "r"`, from
/// one consistent read; the binlog position it is consistent with, or
/// `None` if the source was told to stop meanwhile.
async fn snapshot(
    server: &Server,
    facts: &Facts,
    tables: &Tables,
    cx: &mut Context,
    topic: &str,
) -> Result<Option<Checkpoint>, NodeError> {
    let mut conn = server.connect().await?;
    let e = |e| server.error(e, "taking the initial snapshot");
    // TIMESTAMPs read in UTC, as the binlog has them.
    conn.query_drop("SET SESSION time_zone = '+00:00'")
        .await
        .map_err(e)?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(e)?;
    let (file, pos) = if facts.mariadb {
        // MariaDB says which binlog position the snapshot is consistent with.
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(e)?;
        let status: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(e)?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        (
            get("binlog_snapshot_file"),
            get("binlog_snapshot_position").parse().unwrap_or(4),
        )
    } else {
        // MySQL: hold writes back for as long as it takes to start the
        // snapshot and read the position.
        conn.query_drop("FLUSH TABLES WITH READ LOCK")
            .await
            .map_err(|e| server.error(e, "locking tables for the snapshot (needs RELOAD)"))?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(e)?;
        let at = server.current(&mut conn, facts).await;
        conn.query_drop("UNLOCK TABLES").await.map_err(e)?;
        let at = at?;
        (at.file, at.pos)
    };
    let gtid = server.gtid_at(&mut conn, facts, &file, pos).await?;
    let at = Checkpoint { file, pos, gtid };
    let tx = Tx {
        id: format!("{}:{}", at.file, at.pos),
        gtid: at.gtid.clone(),
        mariadb: None,
        commit_ms: now_ms() as i64,
        rows: 0,
        open: false,
    };
    let mut names: Vec<&(String, String)> = tables.by_name.keys().collect();
    names.sort();
    for key in names {
        let table = &tables.by_name[key];
        let query = format!(
            "SELECT * FROM `{}`.`{}`",
            key.0.replace('`', "``"),
            key.1.replace('`', "``")
        );
        let position = position(cx.name(), &key.0, &tx, true);
        let mut result = conn.exec_iter(query, ()).await.map_err(e)?;
        let mut pending = Vec::new();
        let mut n = 0usize;
        while let Some(row) = result.next().await.map_err(e)? {
            let names: Vec<Option<String>> = row
                .columns_ref()
                .iter()
                .map(|c| Some(c.name_str().into_owned()))
                .collect();
            let present: Vec<usize> = (0..names.len()).collect();
            let after = table.row(&present, row.unwrap(), &names, Origin::Query);
            let change = RowChange {
                op: Op::Snapshot,
                schema: key.0.clone(),
                table: key.1.clone(),
                key: table.key_of(&after),
                before: None,
                after: Some(after),
                unchanged: Vec::new(),
            };
            // Named by table and key: a snapshot redone stores each row once.
            let row_id = change.partition_key().unwrap_or_else(|| format!("#{n}"));
            n += 1;
            let id = cx.event_id(&format!("snapshot/{}.{}/{row_id}", key.0, key.1), 0);
            pending.push(change.event(id, &position, now_ms() as i64));
            if pending.len() >= BATCH {
                cx.publish(topic, std::mem::take(&mut pending)).await?;
                if cx.is_stopped() {
                    return Ok(None);
                }
            }
        }
        drop(result);
        if !pending.is_empty() {
            cx.publish(topic, pending).await?;
        }
        cx.report(format!("snapshot of {}.{}: {n} rows", key.0, key.1), None);
    }
    conn.query_drop("COMMIT").await.map_err(e)?;
    Ok(Some(at))
}
