//! PostgreSQL change data capture: committed row changes of the tables a
//! user names, read from a logical replication slot with the `pgoutput`
//! plugin, published to a topic in commit order.
//!
//! Everything runs on one replication connection (`replication=database`),
//! which takes plain SQL until it starts streaming: the checks (so a
//! missing setting or privilege is named, not left to a cryptic failure),
//! the publication Gale keeps of the tables, the slot, and the initial
//! snapshot, read in the very transaction that creates the slot so that
//! streaming continues from exactly the snapshot's position.
//!
//! Nothing is lost: the server is told a position is done (the slot's
//! `confirmed_flush_lsn`) only once every event up to it is durable in
//! the topic, and a restart streams from the slot's position. Whatever was
//! read after it is read again and gets the same event ids (commit LSN and
//! row index), so the topic's dedup drops it. Nothing is left behind:
//! positions are confirmed as soon as they are durable, also while the
//! followed tables are idle (keepalives move the slot along other
//! databases' WAL), and removing the source drops its slot and publication.
//!
//! Memory stays bounded however large a transaction: changes are published
//! in batches as they arrive, and only positions at transaction ends are
//! confirmed.

pub mod pgoutput;
mod setup;

use super::context::{Context, Source, Wanted};
use super::rows::Position;
use crate::NodeError;
use crate::clock::now_ms;
use gale_core::{PostgresSource, SnapshotMode};
use gale_store::NewEvent;
use pgoutput::Decoder;
use pgwire_replication::client::ReplicationEvent;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, SslMode, TlsConfig};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The most events published at once; with the batch in flight, also the
/// most a transaction holds in memory.
const BATCH: usize = 2_000;
/// How often the checkpoint in `Metadata` follows the slot (the slot itself
/// is confirmed at every batch).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub struct Postgres {
    name: String,
    spec: PostgresSource,
    server: Server,
    slot: String,
    publication: String,
}

/// Where and as whom to connect, from the source's URL.
#[derive(Clone)]
struct Server {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: SslMode,
}

/// The checkpoint: the slot holds the position; this says how far the
/// source got, for `gale sources` and for a node that takes over.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    slot: String,
    /// The last position confirmed to the server.
    lsn: Option<String>,
    /// Whether the initial snapshot was published in full.
    snapshot_done: bool,
}

/// One table the source follows.
struct Table {
    schema: String,
    name: String,
    primary_key: Vec<String>,
}

impl Postgres {
    pub fn new(wanted: &Wanted, spec: &PostgresSource) -> Postgres {
        let slot = spec.slot.clone().unwrap_or_else(|| {
            let mut s = format!("gale_{}_{}", wanted.app.as_deref().unwrap_or("node"), wanted.name)
                .replace(['-', '.'], "_");
            s.truncate(63);
            s
        });
        Postgres {
            name: wanted.name.clone(),
            publication: spec.publication.clone().unwrap_or_else(|| slot.clone()),
            server: Server::parse(&spec.url),
            spec: spec.clone(),
            slot,
        }
    }

    /// Whether Gale keeps the publication (made from `tables`).
    fn owns_publication(&self) -> bool {
        self.spec.publication.is_none()
    }

    /// A replication session that takes SQL until it is started.
    async fn session(&self) -> Result<ReplicationClient, NodeError> {
        let s = &self.server;
        let config = ReplicationConfig::new(
            &s.host,
            &s.user,
            &s.password,
            &s.database,
            &self.slot,
            self.publication.as_str(),
        )
        .with_port(s.port)
        .with_tls(TlsConfig {
            mode: s.tls,
            ..TlsConfig::default()
        })
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(4 * BATCH)
        .with_application_name(format!("gale {}", self.name))
        .with_options("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3");
        ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| self.failure(e))
    }

    /// A server error as a message that says what to do.
    fn failure(&self, e: PgWireError) -> NodeError {
        let s = &self.server;
        let text = e.to_string();
        let hint = match &e {
            PgWireError::Io(_) => format!(
                "cannot reach PostgreSQL at {}:{} ({text}); check the host and port in the source's url and that the server runs",
                s.host, s.port
            ),
            PgWireError::Auth(_) => format!(
                "PostgreSQL at {}:{} refused user `{}` ({text}); check the user and password in the source's url (or PGPASSWORD)",
                s.host, s.port, s.user
            ),
            _ if text.contains("superuser or replication role")
                || text.contains("permission denied to start WAL sender") =>
            {
                format!(
                    "role `{}` may not replicate ({text}); as a superuser run: ALTER ROLE \"{}\" WITH REPLICATION",
                    s.user, s.user
                )
            }
            _ if text.contains("password authentication failed") => format!(
                "PostgreSQL at {}:{} refused user `{}` ({text}); check the user and password in the source's url (or PGPASSWORD)",
                s.host, s.port, s.user
            ),
            _ => format!("PostgreSQL at {}:{}: {text}", s.host, s.port),
        };
        NodeError::Source(hint)
    }

    async fn query(
        &self,
        session: &mut ReplicationClient,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, NodeError> {
        let rows = session.simple_query(sql).await.map_err(|e| self.failure(e))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }

    async fn value(&self, session: &mut ReplicationClient, sql: &str) -> Result<Option<String>, NodeError> {
        let rows = self.query(session, sql).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    /// Streams changes until told to stop.
    ///
    /// One batch is being made durable while the next is read and decoded,
    /// so reading and storing overlap: a batch is handed over as soon as
    /// the previous one is durable, and grows meanwhile up to [`BATCH`]
    /// (few events at a low rate, for latency; many at a high one).
    async fn stream(
        &self,
        cx: &mut Context,
        session: &mut ReplicationClient,
        mut decoder: Decoder,
        from: Lsn,
    ) -> Result<(), NodeError> {
        let mut acked = from;
        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        // The open transaction: its commit position, id, time and rows so far.
        let mut open: Option<(String, u32, i64, usize)> = None;
        // The last commit whose events are all in `batch`.
        let mut done: Option<(Lsn, i64)> = None;
        // The batch being made durable, and the commit it completes.
        let mut inflight: Option<(Publishing, Option<(Lsn, i64)>)> = None;
        let mut saved = Instant::now();
        let mut position = Position {
            connector: "postgresql",
            name: self.name.clone(),
            db: self.server.database.clone(),
            lsn: None,
            gtid: None,
            tx_id: None,
            commit_ms: 0,
            snapshot: false,
        };
        cx.report(acked.to_string(), None);
        loop {
            if inflight.is_none() && (!batch.is_empty() || done.is_some()) {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                inflight = Some((Box::pin(cx.publish_owned(&self.spec.topic, events)), done.take()));
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, completes) = inflight.take().expect("guarded");
                    if let Some((end, commit_ms)) = completes {
                        self.confirmed(cx, session, end, commit_ms, &mut saved).await?;
                        acked = end;
                    }
                    continue;
                }
                r = session.recv(), if batch.len() < BATCH => r,
                _ = cx.stopped() => break,
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Err(NodeError::Source(
                        "PostgreSQL ended the replication stream".into(),
                    ));
                }
                Err(e) => return Err(self.failure(e)),
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    open = Some((final_lsn.to_string(), xid, pg_time_ms(commit_time_micros), 0));
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let changes = decoder
                        .decode(&data)
                        .map_err(|e| NodeError::Source(e.to_string()))?;
                    if changes.is_empty() {
                        continue;
                    }
                    let Some((lsn, xid, commit_ms, index)) = open.as_mut() else {
                        return Err(NodeError::Source("a change outside a transaction".into()));
                    };
                    position.lsn = Some(lsn.clone());
                    position.tx_id = Some(u64::from(*xid));
                    position.commit_ms = *commit_ms;
                    let now = now_ms() as i64;
                    for change in changes {
                        batch.push(change.event(cx.event_id(lsn, *index), &position, now));
                        *index += 1;
                    }
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    open = None;
                    done = Some((end_lsn, pg_time_ms(commit_time_micros)));
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // With nothing in flight, all WAL up to here is done:
                    // confirming it lets the server recycle WAL written for
                    // tables the source does not follow.
                    if open.is_none() && batch.is_empty() && done.is_none() && inflight.is_none() {
                        if wal_end > acked {
                            session.update_applied_lsn(wal_end);
                            acked = wal_end;
                        }
                        cx.report(acked.to_string(), Some(0));
                        cx.report_log_lag(Some(0));
                    } else {
                        cx.report_log_lag(Some(wal_end.as_u64().saturating_sub(acked.as_u64())));
                    }
                }
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
        // Told to stop: what is read is published; only whole transactions
        // are confirmed.
        if let Some((publishing, completes)) = inflight.take() {
            publishing.await?;
            if let Some((end, commit_ms)) = completes {
                self.confirmed(cx, session, end, commit_ms, &mut saved).await?;
                acked = end;
            }
        }
        if !batch.is_empty() {
            cx.publish(&self.spec.topic, batch).await?;
        }
        if let Some((end, commit_ms)) = done {
            self.confirmed(cx, session, end, commit_ms, &mut saved).await?;
            acked = end;
        }
        self.save(cx, acked).await?;
        session.stop();
        let _ = tokio::time::timeout(Duration::from_secs(2), session.shutdown()).await;
        Ok(())
    }

    /// Confirms to the server that everything up to `end` is durable.
    async fn confirmed(
        &self,
        cx: &mut Context,
        session: &ReplicationClient,
        end: Lsn,
        commit_ms: i64,
        saved: &mut Instant,
    ) -> Result<(), NodeError> {
        session.update_applied_lsn(end);
        let lag = (now_ms() as i64 - commit_ms).max(0) as u64;
        cx.report(end.to_string(), Some(lag));
        if saved.elapsed() >= SAVE_EVERY {
            self.save(cx, end).await?;
            *saved = Instant::now();
        }
        Ok(())
    }

    async fn save(&self, cx: &mut Context, lsn: Lsn) -> Result<(), NodeError> {
        cx.save(&Checkpoint {
            slot: self.slot.clone(),
            lsn: Some(lsn.to_string()),
            snapshot_done: true,
        })
        .await
    }
}

#[async_trait::async_trait]
impl Source for Postgres {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let checkpoint: Option<Checkpoint> = cx.checkpoint().await?;
        let mut session = self.session().await?;
        let tables = self.prepare(&mut session).await?;
        let mut decoder = Decoder::default();
        for t in &tables {
            decoder
                .primary_keys
                .insert(format!("{}.{}", t.schema, t.name), t.primary_key.clone());
        }

        // A snapshot cut short (the node stopped while publishing it) is
        // taken again, on a new slot: the rows already published keep
        // their ids.
        let snapshot = self.spec.snapshot == SnapshotMode::Initial
            && !checkpoint
                .as_ref()
                .is_some_and(|c| c.slot == self.slot && c.snapshot_done);
        let mut from = self.slot_position(&mut session).await?;
        if from.is_some() && snapshot {
            self.drop_slot(&mut session).await?;
            from = None;
        }
        let from = match from {
            Some(lsn) => lsn,
            None => {
                cx.save(&Checkpoint {
                    slot: self.slot.clone(),
                    lsn: None,
                    snapshot_done: false,
                })
                .await?;
                let at = self.create_slot(cx, &mut session, &tables, snapshot).await?;
                self.save(cx, at).await?;
                tracing::info!(source = %self.name, slot = %self.slot, at = %at, snapshot, "replication slot created");
                at
            }
        };
        session.start().await.map_err(|e| self.failure(e))?;
        session.wait_started().await.map_err(|e| self.failure(e))?;
        tracing::info!(source = %self.name, slot = %self.slot, from = %from, "streaming changes");
        self.stream(cx, &mut session, decoder, from).await
    }

    async fn forget(&mut self) -> Result<(), NodeError> {
        let mut session = self.session().await?;
        self.drop_slot(&mut session).await?;
        if self.owns_publication() {
            self.query(
                &mut session,
                &format!("DROP PUBLICATION IF EXISTS {}", self.publication),
            )
            .await?;
        }
        tracing::info!(source = %self.name, slot = %self.slot, "replication slot dropped");
        Ok(())
    }
}

impl Server {
    /// The URL was checked when the manifest was read; what it lacks
    /// takes libpq's defaults.
    fn parse(text: &str) -> Server {
        let url = url::Url::parse(text).ok();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let query = |key: &str| {
            url.as_ref().and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.into_owned())
            })
        };
        let user = url
            .as_ref()
            .map(|u| decode(u.username()))
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "postgres".into());
        let password = url
            .as_ref()
            .and_then(|u| u.password().map(decode))
            .or_else(|| std::env::var("PGPASSWORD").ok())
            .unwrap_or_default();
        let database = url
            .as_ref()
            .map(|u| decode(u.path().trim_start_matches('/')))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        let tls = match query("sslmode").as_deref() {
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            _ => SslMode::Prefer,
        };
        Server {
            host: url
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: url.as_ref().and_then(|u| u.port()).unwrap_or(5432),
            user,
            password,
            database,
            tls,
        }
    }
}

/// PostgreSQL's microseconds since 2000 as Unix milliseconds.
fn pg_time_ms(micros: i64) -> i64 {
    (micros + PG_EPOCH_MICROS) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use setup::split_table;

    #[test]
    fn urls_give_the_server_and_libpq_defaults() {
        let s = Server::parse("postgres://app:p%40ss@db.local:6543/shop?sslmode=require");
        assert_eq!(
            (
                s.host.as_str(),
                s.port,
                s.user.as_str(),
                s.password.as_str(),
                s.database.as_str()
            ),
            ("db.local", 6543, "app", "p@ss", "shop")
        );
        assert_eq!(s.tls, SslMode::Require);
        let s = Server::parse("postgresql://gale@127.0.0.1");
        assert_eq!(
            (s.port, s.database.as_str(), s.tls),
            (5432, "gale", SslMode::Prefer)
        );
        assert_eq!(split_table("orders"), ("public".into(), "orders".into()));
        assert_eq!(pg_time_ms(0), 946_684_800_000);
    }
}
