//! NATS: messages of a subject, or of a JetStream stream, copied into a
//! topic as CloudEvents.
//!
//! Two ways to read, because NATS offers two guarantees:
//! - core NATS (no `stream`): a plain subscription. NATS delivers at most
//!   once and keeps nothing for a subscriber that is away, so this source
//!   can only promise the same: what arrives while it runs is published,
//!   what was published while it was down (or received but not yet durable
//!   when the node crashed) is gone. Event ids are fresh UUIDs;
//! - JetStream (`stream`): a durable pull consumer with explicit acks. A
//!   message is acknowledged only once its event is durable in the topic,
//!   so the consumer's ack floor is exactly what Gale holds: a crash of the
//!   node redelivers what was in flight (after the consumer's `ack_wait`),
//!   with the same event id (`<source>/<stream>/<stream sequence>`), which
//!   the topic's dedup drops. So that those come back at once and in
//!   order (not after `ack_wait`, behind newer messages), a consumer Gale
//!   made that a crash left holding unacknowledged messages is made again
//!   from just after its ack floor. The server is 2.9-compatible: the consumer
//!   filters with the single `filter_subject` (2.10's `filter_subjects` is
//!   silently ignored by 2.9 servers, which would deliver every subject).
//!
//! Reading and storing overlap as in the database sources: one batch is
//! being made durable while the next is read, and its acks go out once it
//! is. A lost connection ends the run with an error saying so (`gale
//! sources` shows `failed` and the reason); the plane connects again after
//! a pause that doubles up to 30 s, and the durable consumer resumes where
//! its acks left it.
//!
//! What a message becomes is in [`message_event`]; one the source cannot
//! take is parked ([`Context::park`]) and acknowledged with the rest.

mod message;

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use crate::clock::now_ms;
use async_nats::jetstream::{self, consumer};
use async_nats::{ConnectErrorKind, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use gale_core::NatsSource;
use gale_store::NewEvent;
use message::message_event;
use std::time::Duration;
use tokio::sync::watch;

/// The most messages published (and acked) at once.
const BATCH: usize = 500;
/// Unacknowledged messages a consumer Gale creates may have out: a batch
/// being read, one being stored, and room for the next pull.
const MAX_ACK_PENDING: i64 = 4 * BATCH as i64;
/// How long the server waits for an ack before redelivering, for consumers
/// Gale creates; far above the time a batch takes to become durable.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The last message of a batch: its stream sequence, when JetStream
/// stored it (Unix ms), and how many messages were pending behind it.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    published_ms: i64,
    pending: u64,
}
/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

pub struct Nats {
    name: String,
    spec: NatsSource,
    /// The durable consumer's name (JetStream only).
    consumer: String,
    /// The servers as `gale sources` may show them: without credentials.
    servers: String,
}

impl Nats {
    pub fn new(wanted: &Wanted, spec: &NatsSource) -> Nats {
        let consumer = spec.consumer.clone().unwrap_or_else(|| {
            format!("gale_{}_{}", wanted.app.as_deref().unwrap_or("node"), wanted.name).replace('.', "_")
        });
        let servers = spec
            .url
            .split(',')
            .map(|s| {
                let s = s.trim();
                match (s.split_once("://"), s.rsplit_once('@')) {
                    (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
                    _ => s.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Nats {
            name: wanted.name.clone(),
            spec: spec.clone(),
            consumer,
            servers,
        }
    }

    /// Connects; the receiver says why the connection was lost, once it is.
    async fn connect(&self) -> Result<(async_nats::Client, watch::Receiver<Option<String>>), NodeError> {
        let addrs: Vec<ServerAddr> = self
            .spec
            .url
            .split(',')
            .map(|s| s.trim().parse::<ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| NodeError::Source(format!("the source's url is not a NATS URL ({e})")))?;
        let (lost_tx, lost) = watch::channel(None);
        let name = self.name.clone();
        // async-nats does not send a URL's credentials itself: `user:password@`
        // is a user and password, a lone `token@` a token (NATS's convention).
        let mut options = async_nats::ConnectOptions::new();
        if let Some(url) = self.spec.url.split(',').find_map(|s| {
            url::Url::parse(s.trim())
                .ok()
                .filter(|u| !u.username().is_empty())
        }) {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            options = match url.password() {
                Some(password) => options.user_and_password(decode(url.username()), decode(password)),
                None => options.token(decode(url.username())),
            };
        }
        let client = options
            .name(format!("gale {}", self.name))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let (lost_tx, name) = (lost_tx.clone(), name.clone());
                async move {
                    match event {
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            lost_tx.send_if_modified(|l| {
                                let first = l.is_none();
                                if first {
                                    *l = Some(format!("the connection was {event}"));
                                }
                                first
                            });
                        }
                        async_nats::Event::ServerError(e) => {
                            tracing::warn!(source = %name, error = %e, "NATS server error");
                            lost_tx.send_if_modified(|l| {
                                let first = l.is_none();
                                if first {
                                    *l = Some(format!("the server sent an error: {e}"));
                                }
                                first
                            });
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::warn!(source = %name, "NATS dropped messages: the source reads slower than they arrive");
                        }
                        _ => {}
                    }
                }
            })
            .connect(addrs)
            .await
            .map_err(|e| {
                let servers = &self.servers;
                NodeError::Source(match e.kind() {
                    ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => format!(
                        "cannot reach NATS at {servers} ({e}); check the host and port in the source's url and that the server runs"
                    ),
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => format!(
                        "NATS at {servers} refused the connection ({e}); check the user and password in the source's url"
                    ),
                    ConnectErrorKind::Tls => format!(
                        "TLS with NATS at {servers} failed ({e}); check that the server's certificate is trusted, or use nats:// for a server without TLS"
                    ),
                    _ => format!("cannot connect to NATS at {servers}: {e}"),
                })
            })?;
        Ok((client, lost))
    }

    fn lost(&self, why: Option<String>) -> NodeError {
        NodeError::Source(format!(
            "lost the connection to NATS at {} ({}); connecting again",
            self.servers,
            why.unwrap_or_else(|| "closed".into())
        ))
    }

    /// The durable consumer, created if missing; checked to be one this
    /// source can use.
    async fn consumer(
        &self,
        js: &jetstream::Context,
        stream_name: &str,
    ) -> Result<consumer::PullConsumer, NodeError> {
        let stream = js.get_stream(stream_name).await.map_err(|e| {
            use jetstream::context::GetStreamErrorKind;
            NodeError::Source(match e.kind() {
                GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => format!(
                    "there is no JetStream stream `{stream_name}` on NATS at {}; create it (nats stream add {stream_name} --subjects '{}') or fix `stream` in the source",
                    self.servers, self.spec.subject
                ),
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                        || j.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
                {
                    format!(
                        "JetStream is not enabled on NATS at {} ({j}); start nats-server with -js, or remove `stream` for a core NATS subscription",
                        self.servers
                    )
                }
                _ => format!(
                    "cannot read JetStream stream `{stream_name}` on NATS at {} ({e}); is JetStream enabled (nats-server -js)?",
                    self.servers
                ),
            })
        })?;
        let config = consumer::pull::Config {
            durable_name: Some(self.consumer.clone()),
            description: Some(format!("Gale source {}", self.name)),
            filter_subject: self.spec.subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let failed = |e: &dyn std::fmt::Display| {
            NodeError::Source(format!(
                "cannot create or read consumer `{}` of stream `{stream_name}` on NATS at {} ({e}); check `consumer` and `subject` in the source",
                self.consumer, self.servers
            ))
        };
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(&self.consumer, config.clone())
            .await
            .map_err(|e| failed(&e))?;
        // Messages a previous run was handed but did not ack (the node
        // crashed) would come back only after `ack_wait`, behind newer
        // ones. A consumer Gale made is made again from just after its ack
        // floor instead: the stream's order holds, and what was durable
        // already is dropped by the topic's dedup.
        let info = consumer.info().await.map_err(|e| failed(&e))?;
        if info.num_ack_pending > 0 && self.spec.consumer.is_none() {
            let from = info.ack_floor.stream_sequence + 1;
            stream
                .delete_consumer(&self.consumer)
                .await
                .map_err(|e| failed(&e))?;
            let config = consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                ..config
            };
            consumer = stream.create_consumer(config).await.map_err(|e| failed(&e))?;
            tracing::info!(source = %self.name, consumer = %self.consumer, from, "consumer made again after unacknowledged messages");
        }
        let have = &consumer.cached_info().config;
        let filter = if have.filter_subject.is_empty() {
            ">"
        } else {
            have.filter_subject.as_str()
        };
        if filter != self.spec.subject {
            return Err(NodeError::Source(format!(
                "consumer `{}` of stream `{stream_name}` filters `{filter}`, not the source's subject `{}`; delete it (nats consumer rm {stream_name} {}) so Gale creates it anew, or name another with `consumer`",
                self.consumer, self.spec.subject, self.consumer
            )));
        }
        if have.ack_policy != consumer::AckPolicy::Explicit {
            return Err(NodeError::Source(format!(
                "consumer `{}` of stream `{stream_name}` does not use explicit acks, so Gale cannot acknowledge each message once it is durable; delete it so Gale creates it, or name another with `consumer`",
                self.consumer
            )));
        }
        Ok(consumer)
    }

    /// Consumes a JetStream stream until told to stop.
    async fn jetstream(
        &self,
        cx: &mut Context,
        client: async_nats::Client,
        mut lost: watch::Receiver<Option<String>>,
        stream_name: &str,
    ) -> Result<(), NodeError> {
        let js = jetstream::new(client.clone());
        let mut consumer = self.consumer(&js, stream_name).await?;
        let info = consumer
            .info()
            .await
            .map_err(|e| NodeError::Source(e.to_string()))?;
        cx.report(format!("stream seq {}", info.ack_floor.stream_sequence), Some(0));
        cx.report_lag_messages(Some(info.num_pending));
        tracing::info!(source = %self.name, stream = %stream_name, consumer = %self.consumer, "consuming");
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| NodeError::Source(format!("cannot pull from consumer `{}`: {e}", self.consumer)))?;
        let source = format!("/gale/nats/{stream_name}");

        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        let mut replies: Vec<async_nats::Subject> = Vec::with_capacity(BATCH);
        // The last message in `batch`.
        let mut last: Option<Last> = None;
        // The batch being made durable, the reply subjects to ack then,
        // and its last message.
        let mut inflight: Option<(Publishing, Vec<async_nats::Subject>, Option<Last>)> = None;
        loop {
            if inflight.is_none() && !batch.is_empty() {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let acks = std::mem::replace(&mut replies, Vec::with_capacity(BATCH));
                inflight = Some((Box::pin(cx.publish_owned(&self.spec.topic, events)), acks, last));
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, acks, done) = inflight.take().expect("guarded");
                    self.ack(cx, &client, acks, done).await?;
                    continue;
                }
                m = messages.next(), if batch.len() < BATCH => m,
                _ = lost.changed() => return Err(self.lost(lost.borrow().clone())),
                _ = cx.stopped() => break,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    return Err(NodeError::Source(format!(
                        "pulling from consumer `{}` of stream `{stream_name}` failed: {e}",
                        self.consumer
                    )));
                }
                None => return Err(NodeError::Source("the consumer's message stream ended".into())),
            };
            let info = message
                .info()
                .map_err(|e| NodeError::Source(format!("a JetStream message without its metadata: {e}")))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let published_ns = info.published.unix_timestamp_nanos();
            // The ack goes to the reply subject, once the event is durable.
            let message = message.message;
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let time = jiff::Timestamp::from_nanosecond(published_ns)
                .map(|t| t.to_string())
                .ok();
            let id = cx.event_id(&format!("{stream_name}/{seq}"), 0);
            match message_event(&message, id, &source, time.as_deref(), self.spec.format) {
                Ok(event) => batch.push(event),
                Err(parked) => cx.park(parked).await?,
            }
            replies.push(reply);
            last = Some(Last {
                seq,
                published_ms: (published_ns / 1_000_000) as i64,
                pending,
            });
        }
        // Told to stop: what is read is made durable and acked.
        if let Some((publishing, acks, done)) = inflight.take() {
            publishing.await?;
            self.ack(cx, &client, acks, done).await?;
        }
        if !batch.is_empty() {
            cx.publish(&self.spec.topic, batch).await?;
            self.ack(cx, &client, replies, last).await?;
        }
        Ok(())
    }

    /// Acknowledges messages whose events are durable; says how far the
    /// source got.
    async fn ack(
        &self,
        cx: &Context,
        client: &async_nats::Client,
        replies: Vec<async_nats::Subject>,
        done: Option<Last>,
    ) -> Result<(), NodeError> {
        for reply in replies {
            client
                .publish(reply, Bytes::new())
                .await
                .map_err(|e| NodeError::Source(format!("cannot acknowledge to NATS: {e}")))?;
        }
        client
            .flush()
            .await
            .map_err(|e| NodeError::Source(format!("cannot acknowledge to NATS: {e}")))?;
        if let Some(Last {
            seq,
            published_ms,
            pending,
        }) = done
        {
            let lag = if pending == 0 {
                0
            } else {
                (now_ms() as i64 - published_ms).max(0) as u64
            };
            cx.report(format!("stream seq {seq}"), Some(lag));
            cx.report_lag_messages(Some(pending));
        }
        Ok(())
    }

    /// Subscribes (core NATS, at most once) until told to stop.
    async fn subscribe(
        &self,
        cx: &mut Context,
        client: async_nats::Client,
        mut lost: watch::Receiver<Option<String>>,
    ) -> Result<(), NodeError> {
        let mut subscription = client
            .subscribe(self.spec.subject.clone())
            .await
            .map_err(|e| NodeError::Source(format!("cannot subscribe to `{}`: {e}", self.spec.subject)))?;
        // Once the server answered a ping, it has the subscription: what is
        // published from now on arrives.
        client
            .flush()
            .await
            .map_err(|e| NodeError::Source(format!("cannot subscribe to `{}`: {e}", self.spec.subject)))?;
        let source = format!(
            "{}/{}",
            self.servers.split(',').next().unwrap_or_default(),
            self.spec.subject
        );
        let mut received: u64 = 0;
        cx.report(format!("subscribed, {received} messages"), Some(0));
        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        let mut inflight: Option<(Publishing, u64)> = None;
        loop {
            if inflight.is_none() && !batch.is_empty() {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                inflight = Some((Box::pin(cx.publish_owned(&self.spec.topic, events)), received));
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, upto) = inflight.take().expect("guarded");
                    cx.report(format!("subscribed, {upto} messages"), Some(0));
                    continue;
                }
                m = subscription.next(), if batch.len() < BATCH => m,
                _ = lost.changed() => return Err(self.lost(lost.borrow().clone())),
                _ = cx.stopped() => break,
            };
            let Some(message) = next else {
                return Err(self.lost(None));
            };
            received += 1;
            let id = uuid::Uuid::now_v7().to_string();
            match message_event(&message, id, &source, None, self.spec.format) {
                Ok(event) => batch.push(event),
                Err(parked) => cx.park(parked).await?,
            }
        }
        if let Some((publishing, _)) = inflight.take() {
            publishing.await?;
        }
        if !batch.is_empty() {
            cx.publish(&self.spec.topic, batch).await?;
        }
        let _ = subscription.unsubscribe().await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for Nats {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let (client, lost) = self.connect().await?;
        let ended = match self.spec.stream.clone() {
            Some(stream) => self.jetstream(cx, client.clone(), lost, &stream).await,
            None => self.subscribe(cx, client.clone(), lost).await,
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        ended
    }

    /// Deletes the durable consumer if Gale named it (one the user named
    /// is theirs to keep).
    async fn forget(&mut self) -> Result<(), NodeError> {
        let (Some(stream), None) = (&self.spec.stream, &self.spec.consumer) else {
            return Ok(());
        };
        let (client, _) = self.connect().await?;
        let js = jetstream::new(client);
        if let Ok(stream) = js.get_stream(stream).await {
            let _ = stream.delete_consumer(&self.consumer).await;
            tracing::info!(source = %self.name, consumer = %self.consumer, "JetStream consumer deleted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_name_and_servers_hide_nothing_and_show_no_password() {
        let spec = NatsSource {
            url: "nats://u:secret@h:4222, nats://h2:4222".into(),
            subject: "a.>".into(),
            stream: Some("A".into()),
            consumer: None,
            format: Default::default(),
            topic: "t".into(),
            dead_letter: None,
        };
        let wanted = Wanted {
            name: "q".into(),
            app: Some("shop".into()),
            function: None,
            spec: gale_core::SourceSpec::Nats(spec.clone()),
        };
        let n = Nats::new(&wanted, &spec);
        assert_eq!(n.consumer, "gale_shop_q");
        assert_eq!(n.servers, "nats://h:4222,nats://h2:4222");
    }
}
