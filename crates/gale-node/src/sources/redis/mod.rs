//! Redis Streams: entries of a stream, read by a consumer group, copied
//! into a topic as CloudEvents.
//!
//! The group (created with `MKSTREAM` if missing, from the stream's start
//! or its end as `start` says) is the source's position: Redis remembers
//! what it handed to each consumer and keeps every entry handed over in
//! the consumer's pending list until it is acknowledged. The source
//! acknowledges an entry (`XACK`) only once its event is durable in the
//! topic, so the pending list is exactly what Gale may not hold yet:
//! - on start, the consumer's own pending entries are read first
//!   (`XREADGROUP ... 0`), so what a crash left in flight comes back at
//!   once and in stream order, then new entries (`>`, blocking);
//! - entries another consumer of the group was handed and left
//!   unacknowledged for `claim_after` (it crashed, or was removed) are
//!   claimed with `XAUTOCLAIM` from time to time;
//! - an entry's event id is `<source>/<stream>/<entry id>`, so an entry
//!   read again is dropped by the topic's dedup;
//! - an entry Redis has handed over more than [`MAX_DELIVERIES`] times
//!   (the pending list counts them) is parked rather than read again:
//!   something about it keeps the source from getting past it, and Redis
//!   has no dead-letter of its own.
//!
//! Reading happens in a task of its own on its own connection: a blocking
//! read is never abandoned half-way (an abandoned `XREADGROUP` still hands
//! its entries to the consumer, where they would wait for the next start).
//! Meanwhile one batch is made durable while the next is read, and its
//! acknowledgements go out on a second connection once it is. A lost
//! connection ends the run with an error saying so; the plane connects
//! again after a pause that doubles up to 30 s, and the pending list says
//! where to resume.
//!
//! What an entry becomes is in [`message::entry_event`].

mod message;

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use crate::brokers::redis::describe;
use crate::clock::now_ms;
use gale_core::RedisSource;
use gale_store::NewEvent;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The most entries read, published and acknowledged at once.
const BATCH: usize = 500;
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
/// Deliveries after which an entry is parked instead of read again.
pub const MAX_DELIVERIES: u64 = 5;
/// How long a connection attempt, and a reply other than a blocking
/// read's, may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the group's lag is asked for at most.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// An entry as read: its id, its fields (none if it was deleted from the
/// stream while pending), and how often Redis has handed it over.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    deliveries: u64,
}

/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

pub struct Redis {
    name: String,
    spec: RedisSource,
    group: String,
    consumer: String,
    /// The server as errors may show it: `host:port`, no credentials.
    server: String,
}

impl Redis {
    pub fn new(wanted: &Wanted, spec: &RedisSource) -> Redis {
        let group = spec
            .group
            .clone()
            .unwrap_or_else(|| format!("gale_{}_{}", wanted.app.as_deref().unwrap_or("node"), wanted.name));
        let consumer = spec.consumer.clone().unwrap_or_else(|| wanted.name.clone());
        Redis {
            name: wanted.name.clone(),
            spec: spec.clone(),
            group,
            consumer,
            server: server_of(&spec.url),
        }
    }

    /// A connection whose replies may take `response` (a blocking read's).
    async fn connect(&self, response: Duration) -> Result<MultiplexedConnection, NodeError> {
        let client = redis::Client::open(self.spec.url.as_str()).map_err(|_| {
            NodeError::Source(format!(
                "the source's url is not a Redis URL Gale can use (Redis at {}); write it like redis://user:password@host:6379/0",
                self.server
            ))
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(response));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.error(&e, "connecting"))
    }

    /// What went wrong, said so that the user can fix it.
    fn error(&self, e: &RedisError, doing: &str) -> NodeError {
        NodeError::Source(describe(e, &self.server, doing, "source"))
    }

    /// Creates the group (and the stream) unless it exists; checks the key
    /// is a stream.
    async fn group(&self, conn: &mut MultiplexedConnection) -> Result<(), NodeError> {
        let at = match self.spec.start {
            gale_core::StreamStart::Earliest => "0",
            gale_core::StreamStart::Latest => "$",
        };
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.spec.stream)
            .arg(&self.group)
            .arg(at)
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(_) => {
                tracing::info!(source = %self.name, stream = %self.spec.stream, group = %self.group, "consumer group created");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) if e.code() == Some("WRONGTYPE") => Err(NodeError::Source(format!(
                "key `{}` on Redis at {} is not a stream; name a stream (or a key that does not exist yet, which Gale creates as one) in `stream`",
                self.spec.stream, self.server
            ))),
            Err(e) => Err(self.error(&e, "creating the consumer group")),
        }
    }

    /// The group's last delivered id and lag (entries not yet handed to
    /// any consumer; Redis 7 tells it, older servers do not).
    async fn lag(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(Option<String>, Option<u64>), NodeError> {
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.spec.stream)
            .query_async(conn)
            .await
            .map_err(|e| self.error(&e, "reading the group's state"))?;
        let Value::Array(groups) = groups else {
            return Ok((None, None));
        };
        for g in groups {
            let info = pairs(g);
            if info.get("name").and_then(text).as_deref() == Some(self.group.as_str()) {
                let last = info.get("last-delivered-id").and_then(text);
                let lag = info.get("lag").and_then(|v| match v {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                });
                return Ok((last, lag));
            }
        }
        Err(NodeError::Source(format!(
            "consumer group `{}` of stream `{}` on Redis at {} is gone (deleted while the source ran); it is created again",
            self.group, self.spec.stream, self.server
        )))
    }

    /// Acknowledges entries whose events are durable.
    async fn ack(&self, conn: &mut MultiplexedConnection, ids: &[String]) -> Result<(), NodeError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.spec.stream)
            .arg(&self.group)
            .arg(ids)
            .query_async::<Value>(conn)
            .await
            .map_err(|e| self.error(&e, "acknowledging entries"))?;
        Ok(())
    }
}

/// `host:port` of a Redis URL, for errors and `gale sources`.
fn server_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}:{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(6379)),
        Err(_) => "the url given".into(),
    }
}

/// A reply of alternating names and values (RESP2) or a map (RESP3).
fn pairs(v: Value) -> HashMap<String, Value> {
    match v {
        Value::Array(items) => {
            let mut out = HashMap::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = text(&k) {
                    out.insert(k, v);
                }
            }
            out
        }
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => HashMap::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `[[id, [field, value, ...]], ...]` (a nil list for a deleted entry).
fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut parts) = item else {
                return None;
            };
            if parts.is_empty() {
                return None;
            }
            let fields = if parts.len() > 1 {
                parts.swap_remove(1)
            } else {
                Value::Nil
            };
            let id = text(&parts[0])?;
            let fields = match fields {
                Value::Array(f) => {
                    let mut out = Vec::with_capacity(f.len() / 2);
                    let mut it = f.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        out.push((bytes(k), bytes(v)));
                    }
                    Some(out)
                }
                Value::Map(f) => Some(f.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect()),
                _ => None,
            };
            Some(Entry {
                id,
                fields,
                deliveries: 1,
            })
        })
        .collect()
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        other => text(&other).unwrap_or_default().into_bytes(),
    }
}

/// What the reading task needs.
struct Reading {
    stream: String,
    group: String,
    consumer: String,
    claim_after: Duration,
    server: String,
}

impl Reading {
    fn error(&self, e: &RedisError, doing: &str) -> NodeError {
        NodeError::Source(describe(e, &self.server, doing, "source"))
    }

    /// Reads until the receiver is gone: this consumer's pending entries,
    /// then new ones, claiming abandoned ones from time to time.
    async fn run(self, mut conn: MultiplexedConnection, tx: mpsc::Sender<Result<Vec<Entry>, NodeError>>) {
        if let Err(e) = self.read(&mut conn, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        tx: &mpsc::Sender<Result<Vec<Entry>, NodeError>>,
    ) -> Result<(), NodeError> {
        // What this consumer was handed and did not acknowledge, in order.
        let mut after = "0".to_string();
        loop {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(&after)
                .query_async(conn)
                .await
                .map_err(|e| self.error(&e, "reading the consumer's pending entries"))?;
            let mut batch = stream_entries(reply);
            let Some(last) = batch.last() else { break };
            after = last.id.clone();
            self.deliveries(conn, &mut batch).await?;
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(());
            }
        }
        let claim_every = self.claim_after.min(Duration::from_secs(60));
        let mut next_claim = Instant::now();
        loop {
            if Instant::now() >= next_claim {
                self.claim(conn, tx).await?;
                next_claim = Instant::now() + claim_every;
            }
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(conn)
                .await
                .map_err(|e| {
                    if e.code() == Some("NOGROUP") {
                        NodeError::Source(format!(
                            "consumer group `{}` of stream `{}` on Redis at {} is gone (the group or the stream was deleted while the source ran); it is created again",
                            self.group, self.stream, self.server
                        ))
                    } else {
                        self.error(&e, "reading new entries")
                    }
                })?;
            let batch = stream_entries(reply);
            if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Claims entries other consumers left unacknowledged for
    /// `claim_after`, and hands them on.
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        tx: &mpsc::Sender<Result<Vec<Entry>, NodeError>>,
    ) -> Result<(), NodeError> {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_after.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(conn)
                .await
                .map_err(|e| self.error(&e, "claiming abandoned entries"))?;
            let Value::Array(mut parts) = reply else {
                return Ok(());
            };
            if parts.len() < 2 {
                return Ok(());
            }
            let claimed = parts.swap_remove(1);
            cursor = text(&parts[0]).unwrap_or_else(|| "0-0".into());
            let mut batch = entries(claimed);
            if !batch.is_empty() {
                tracing::info!(stream = %self.stream, group = %self.group, claimed = batch.len(), "claimed entries another consumer left unacknowledged");
                self.deliveries(conn, &mut batch).await?;
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
            }
            if cursor == "0-0" {
                return Ok(());
            }
        }
    }

    /// How often Redis has handed over each entry of a batch read again,
    /// this time included (the consumer's pending list counts it).
    async fn deliveries(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &mut [Entry],
    ) -> Result<(), NodeError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.id.clone(), last.id.clone());
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&first)
            .arg(&last)
            .arg(batch.len() * 2 + 10)
            .arg(&self.consumer)
            .query_async(conn)
            .await
            .map_err(|e| self.error(&e, "reading the pending entries' delivery counts"))?;
        let Value::Array(rows) = reply else { return Ok(()) };
        let counts: HashMap<String, u64> = rows
            .into_iter()
            .filter_map(|row| {
                let Value::Array(row) = row else { return None };
                let id = text(row.first()?)?;
                let n = match row.get(3)? {
                    Value::Int(n) => u64::try_from(*n).ok()?,
                    _ => return None,
                };
                Some((id, n))
            })
            .collect();
        for e in batch {
            if let Some(n) = counts.get(&e.id) {
                e.deliveries = *n;
            }
        }
        Ok(())
    }
}

/// The entries of the one stream of an `XREADGROUP` reply (nil: none).
fn stream_entries(reply: Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .next()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => entries(kv.swap_remove(1)),
                _ => Vec::new(),
            })
            .unwrap_or_default(),
        Value::Map(streams) => streams
            .into_iter()
            .next()
            .map(|(_, v)| entries(v))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[async_trait::async_trait]
impl Source for Redis {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let mut control = self.connect(TIMEOUT).await?;
        self.group(&mut control).await?;
        let (last, lag) = self.lag(&mut control).await?;
        cx.report(last.unwrap_or_else(|| "0-0".into()), Some(0));
        cx.report_lag_messages(lag);
        let reader = self.connect(BLOCK + TIMEOUT).await?;
        tracing::info!(source = %self.name, stream = %self.spec.stream, group = %self.group, consumer = %self.consumer, "consuming");
        let (tx, mut rx) = mpsc::channel(2);
        let reading = Reading {
            stream: self.spec.stream.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            claim_after: self.spec.claim_after.0,
            server: self.server.clone(),
        };
        let task = tokio::spawn(reading.run(reader, tx));
        let _abort = AbortOnDrop(task);
        self.consume(cx, &mut control, &mut rx).await
    }

    /// Deletes the consumer group if Gale named it (one the user named is
    /// theirs to keep, as is the stream).
    async fn forget(&mut self) -> Result<(), NodeError> {
        if self.spec.group.is_some() {
            return Ok(());
        }
        let mut conn = self.connect(TIMEOUT).await?;
        let _: Result<Value, _> = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&self.spec.stream)
            .arg(&self.group)
            .query_async(&mut conn)
            .await;
        tracing::info!(source = %self.name, group = %self.group, "consumer group deleted");
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Redis {
    /// Publishes what the reader hands over and acknowledges it once
    /// durable, until told to stop.
    async fn consume(
        &self,
        cx: &mut Context,
        control: &mut MultiplexedConnection,
        rx: &mut mpsc::Receiver<Result<Vec<Entry>, NodeError>>,
    ) -> Result<(), NodeError> {
        let source = format!("/gale/redis/{}", self.spec.stream);
        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        let mut ids: Vec<String> = Vec::with_capacity(BATCH);
        let mut inflight: Option<(Publishing, Vec<String>)> = None;
        let mut lag = (Instant::now() - LAG_EVERY, Some(0));
        loop {
            if inflight.is_none() && !ids.is_empty() {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let acks = std::mem::replace(&mut ids, Vec::with_capacity(BATCH));
                let publishing: Publishing = if events.is_empty() {
                    Box::pin(async { Ok(()) })
                } else {
                    Box::pin(cx.publish_owned(&self.spec.topic, events))
                };
                inflight = Some((publishing, acks));
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, acks) = inflight.take().expect("guarded");
                    self.ack(control, &acks).await?;
                    self.report(cx, control, &acks, &mut lag).await?;
                    continue;
                }
                m = rx.recv(), if ids.len() < BATCH => m,
                _ = cx.stopped() => break,
            };
            let entries = match next {
                Some(Ok(entries)) => entries,
                Some(Err(e)) => return Err(e),
                None => return Err(NodeError::Source("the stream's reader stopped".into())),
            };
            for entry in entries {
                let id = cx.event_id(&format!("{}/{}", self.spec.stream, entry.id), 0);
                match &entry.fields {
                    // Deleted from the stream while pending: nothing to
                    // publish, only the pending list to clear.
                    None => {}
                    Some(fields) => {
                        match message::entry_event(fields, &entry.id, id, &source, self.spec.format) {
                            Ok(event) if entry.deliveries <= MAX_DELIVERIES => batch.push(event),
                            Ok(event) => {
                                let reason = format!(
                                    "Redis handed the entry over {} times without the source getting past it; parked so the stream flows",
                                    entry.deliveries
                                );
                                cx.park(message::parked(event, reason)).await?
                            }
                            Err(parked) => cx.park(parked).await?,
                        }
                    }
                }
                ids.push(entry.id);
            }
        }
        // Told to stop: what is read is made durable and acknowledged;
        // what the reader still holds stays pending for the next run.
        if let Some((publishing, acks)) = inflight.take() {
            publishing.await?;
            self.ack(control, &acks).await?;
        }
        if !ids.is_empty() {
            if !batch.is_empty() {
                cx.publish(&self.spec.topic, batch).await?;
            }
            self.ack(control, &ids).await?;
        }
        Ok(())
    }

    /// Says how far the source got: the last entry acknowledged, the
    /// entries not yet handed over, and how old the last one is.
    async fn report(
        &self,
        cx: &Context,
        control: &mut MultiplexedConnection,
        acked: &[String],
        (asked, lag_ms): &mut (Instant, Option<u64>),
    ) -> Result<(), NodeError> {
        let Some(last) = acked.last() else { return Ok(()) };
        if asked.elapsed() >= LAG_EVERY {
            *asked = Instant::now();
            let (_, lag) = self.lag(control).await?;
            *lag_ms = match lag {
                Some(0) => Some(0),
                _ => last
                    .split_once('-')
                    .and_then(|(ms, _)| ms.parse::<u64>().ok())
                    .map(|ms| now_ms().saturating_sub(ms)),
            };
            cx.report_lag_messages(lag);
        }
        cx.report(last.clone(), *lag_ms);
        Ok(())
    }
}
