//! What is set up on the server before streaming, on the replication
//! connection while it still takes SQL: the checks that name a missing
//! setting or privilege, the publication Gale keeps, the slot, and the
//! initial snapshot read in the slot's own transaction.

use super::{Postgres, Table, pgoutput};
use crate::NodeError;
use crate::clock::now_ms;
use crate::sources::context::Context;
use crate::sources::rows::{Op, Position, RowChange};
use gale_store::NewEvent;
use pgwire_replication::{Lsn, ReplicationClient};
use serde_json::{Map, Value};
use std::time::Duration;

/// Rows fetched at once while snapshotting.
const FETCH: usize = 2_000;

impl Postgres {
    /// Checks what replication needs, keeps the publication, and returns
    /// the tables it holds.
    pub(super) async fn prepare(&self, session: &mut ReplicationClient) -> Result<Vec<Table>, NodeError> {
        let level = self.value(session, "SHOW wal_level").await?.unwrap_or_default();
        if level != "logical" {
            return Err(NodeError::Source(format!(
                "PostgreSQL's wal_level is `{level}`; change data capture needs `logical`: run ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart the server"
            )));
        }
        for t in &self.spec.tables {
            let (schema, name) = split_table(t);
            check_table(self, session, &schema, &name).await?;
        }
        if self.owns_publication() {
            self.keep_publication(session).await?;
        } else if self
            .value(
                session,
                &format!(
                    "SELECT 1 FROM pg_publication WHERE pubname = '{}'",
                    self.publication
                ),
            )
            .await?
            .is_none()
        {
            return Err(NodeError::Source(format!(
                "there is no publication `{}` in database `{}`; create it (CREATE PUBLICATION {} FOR TABLE ...) or list the tables with `tables` instead",
                self.publication, self.server.database, self.publication
            )));
        }
        let rows = self
            .query(
                session,
                &format!(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = '{}' ORDER BY 1, 2",
                    self.publication
                ),
            )
            .await?;
        let mut tables = Vec::new();
        for row in rows {
            let [Some(schema), Some(name)] = <[Option<String>; 2]>::try_from(row).unwrap_or([None, None])
            else {
                continue;
            };
            if !self.owns_publication() {
                check_table(self, session, &schema, &name).await?;
            }
            let primary_key = self
                .query(
                    session,
                    &format!(
                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                         WHERE i.indrelid = '{}'::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                        quoted(&schema, &name)
                    ),
                )
                .await?
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect();
            tables.push(Table {
                schema,
                name,
                primary_key,
            });
        }
        Ok(tables)
    }

    /// Creates the publication of `tables`, or sets its tables if they
    /// changed.
    pub(super) async fn keep_publication(&self, session: &mut ReplicationClient) -> Result<(), NodeError> {
        let list = self
            .spec
            .tables
            .iter()
            .map(|t| {
                let (s, n) = split_table(t);
                quoted(&s, &n)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let p = &self.publication;
        let exists = self
            .value(
                session,
                &format!("SELECT 1 FROM pg_publication WHERE pubname = '{p}'"),
            )
            .await?
            .is_some();
        let sql = if exists {
            let have: Vec<String> = self
                .query(
                    session,
                    &format!("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = '{p}' ORDER BY 1"),
                )
                .await?
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect();
            let mut want: Vec<String> = self
                .spec
                .tables
                .iter()
                .map(|t| {
                    let (s, n) = split_table(t);
                    format!("{s}.{n}")
                })
                .collect();
            want.sort();
            if have == want {
                return Ok(());
            }
            format!("ALTER PUBLICATION {p} SET TABLE {list}")
        } else {
            format!("CREATE PUBLICATION {p} FOR TABLE {list}")
        };
        self.query(session, &sql).await.map_err(|e| {
            NodeError::Source(format!(
                "could not keep publication `{p}`: {e}; a table's owner (or a superuser) can run: {sql}, and name it in the source with publication = \"{p}\""
            ))
        })?;
        Ok(())
    }

    /// The slot's confirmed position, if the slot exists.
    pub(super) async fn slot_position(
        &self,
        session: &mut ReplicationClient,
    ) -> Result<Option<Lsn>, NodeError> {
        let rows = self
            .query(
                session,
                &format!(
                    "SELECT confirmed_flush_lsn, plugin FROM pg_replication_slots WHERE slot_name = '{}'",
                    self.slot
                ),
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        if row.get(1).cloned().flatten().as_deref() != Some("pgoutput") {
            return Err(NodeError::Source(format!(
                "slot `{}` exists but is not a pgoutput logical slot; drop it or name another with `slot`",
                self.slot
            )));
        }
        Ok(row.first().cloned().flatten().and_then(|l| Lsn::parse(&l).ok()))
    }

    pub(super) async fn drop_slot(&self, session: &mut ReplicationClient) -> Result<(), NodeError> {
        let drop = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot
        );
        for attempt in 0..20 {
            match self.query(session, &drop).await {
                Ok(_) => return Ok(()),
                // The session that streamed from it may still be ending.
                Err(e) if e.to_string().contains("is active") && attempt < 19 => {
                    if attempt == 10 {
                        let _ = self
                            .query(
                                session,
                                &format!(
                                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
                                    self.slot
                                ),
                            )
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the slot; with a snapshot, publishes every row of `tables`
    /// as it was at the slot's position, in the slot's own transaction.
    pub(super) async fn create_slot(
        &self,
        cx: &mut Context,
        session: &mut ReplicationClient,
        tables: &[Table],
        snapshot: bool,
    ) -> Result<Lsn, NodeError> {
        if !snapshot {
            let rows = self
                .query(
                    session,
                    &format!(
                        "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                        self.slot
                    ),
                )
                .await?;
            return consistent_point(&rows);
        }
        self.query(session, "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let rows = self
            .query(
                session,
                &format!(
                    "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput USE_SNAPSHOT",
                    self.slot
                ),
            )
            .await?;
        let at = consistent_point(&rows)?;
        let position = Position {
            connector: "postgresql",
            name: self.name.clone(),
            db: self.server.database.clone(),
            lsn: Some(at.to_string()),
            gtid: None,
            tx_id: None,
            commit_ms: now_ms() as i64,
            snapshot: true,
        };
        for table in tables {
            let columns = self
                .query(
                    session,
                    &format!(
                        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        quoted(&table.schema, &table.name)
                    ),
                )
                .await?;
            let columns: Vec<(String, u32)> = columns
                .into_iter()
                .filter_map(|r| match r.as_slice() {
                    [Some(name), Some(oid)] => Some((name.clone(), oid.parse().unwrap_or(25))),
                    _ => None,
                })
                .collect();
            let list = columns
                .iter()
                .map(|(n, _)| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ");
            self.query(
                session,
                &format!(
                    "DECLARE gale_snapshot NO SCROLL CURSOR FOR SELECT {list} FROM {}",
                    quoted(&table.schema, &table.name)
                ),
            )
            .await?;
            loop {
                let rows = self
                    .query(session, &format!("FETCH FORWARD {FETCH} FROM gale_snapshot"))
                    .await?;
                if rows.is_empty() {
                    break;
                }
                let now = now_ms() as i64;
                let events: Vec<NewEvent> = rows
                    .into_iter()
                    .map(|row| {
                        let after: Map<String, Value> = columns
                            .iter()
                            .zip(row)
                            .map(|((name, oid), v)| {
                                let v = v.map_or(Value::Null, |t| pgoutput::typed(*oid, t.as_bytes()));
                                (name.clone(), v)
                            })
                            .collect();
                        let key = table
                            .primary_key
                            .iter()
                            .map(|k| (k.clone(), after.get(k).cloned().unwrap_or(Value::Null)))
                            .collect();
                        let change = RowChange {
                            op: Op::Snapshot,
                            schema: table.schema.clone(),
                            table: table.name.clone(),
                            before: None,
                            after: Some(after),
                            unchanged: Vec::new(),
                            key,
                        };
                        // Named by the row, so a snapshot redone after a
                        // crash stores each row once.
                        let row_id = change.partition_key().unwrap_or_else(|| {
                            Value::Object(change.after.clone().unwrap_or_default()).to_string()
                        });
                        let id =
                            cx.event_id(&format!("snapshot/{}.{}/{row_id}", table.schema, table.name), 0);
                        change.event(id, &position, now)
                    })
                    .collect();
                cx.publish(&self.spec.topic, events).await?;
            }
            self.query(session, "CLOSE gale_snapshot").await?;
        }
        self.query(session, "COMMIT").await?;
        Ok(at)
    }
}

/// Refuses a table whose updates and deletes replication could not
/// carry (or that would make the user's own updates fail once published).
async fn check_table(
    pg: &Postgres,
    session: &mut ReplicationClient,
    schema: &str,
    name: &str,
) -> Result<(), NodeError> {
    let rows = pg
        .query(
            session,
            &format!(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '{schema}' AND c.relname = '{name}' AND c.relkind IN ('r', 'p')"
            ),
        )
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Err(NodeError::Source(format!(
            "there is no table `{schema}.{name}` in database `{}`; check `tables` in the source",
            pg.server.database
        )));
    };
    let identity = row.first().cloned().flatten().unwrap_or_default();
    let has_key = row.get(1).cloned().flatten().as_deref() == Some("t");
    match identity.as_str() {
        "f" | "i" => Ok(()),
        "d" if has_key => Ok(()),
        "n" => Err(NodeError::Source(format!(
            "table `{schema}.{name}` has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be captured; run ALTER TABLE {schema}.{name} REPLICA IDENTITY FULL"
        ))),
        _ => Err(NodeError::Source(format!(
            "table `{schema}.{name}` has no primary key, so its updates and deletes cannot be captured (and would fail once it is published); add a primary key or run ALTER TABLE {schema}.{name} REPLICA IDENTITY FULL"
        ))),
    }
}

pub(super) fn split_table(t: &str) -> (String, String) {
    match t.split_once('.') {
        Some((s, n)) => (s.to_string(), n.to_string()),
        None => ("public".to_string(), t.to_string()),
    }
}

fn quoted(schema: &str, name: &str) -> String {
    format!("\"{schema}\".\"{name}\"")
}

/// The `consistent_point` of a CREATE_REPLICATION_SLOT answer.
fn consistent_point(rows: &[Vec<Option<String>>]) -> Result<Lsn, NodeError> {
    rows.first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|l| Lsn::parse(&l).ok())
        .ok_or_else(|| NodeError::Source("CREATE_REPLICATION_SLOT gave no consistent point".into()))
}
