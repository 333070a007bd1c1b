//! RabbitMQ: the messages of a queue copied into a topic as CloudEvents.
//!
//! The source is one consumer of the queue with manual acknowledgements
//! and a prefetch limit (`basic.qos`), so the broker never hands over more
//! than `prefetch` messages that Gale has not yet made durable. Reading and
//! storing overlap as in the other broker sources: one batch is being made
//! durable while the next is read, and a batch is at most half the
//! prefetch, so the broker keeps delivering meanwhile. Once a batch is
//! durable its last delivery tag is acknowledged with `multiple`, which
//! settles every earlier delivery of the channel in one frame; a message
//! is thus acknowledged only once its event, and every event before it,
//! is durable.
//!
//! What the broker had handed over and Gale had not acknowledged when the
//! node crashed or the connection dropped goes back to the queue and is
//! delivered again (flagged `redelivered`). The event id of a message is
//! `<source>/<message_id>` when its publisher set the `message_id`
//! property, so the topic's dedup drops such a second copy; a message
//! without one gets a fresh UUIDv7, and may then be stored twice.
//!
//! A lost connection ends the run with an error saying so (`gale sources`
//! shows `failed` and the reason); the plane connects again after a pause
//! that doubles up to 30 s, and the queue still holds everything not
//! acknowledged. A message the source cannot take is parked
//! ([`Context::park`]) and acknowledged with the rest, so it never comes
//! back to block the queue (a classic queue would otherwise redeliver it
//! forever).

pub mod message;

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use crate::brokers::amqp::connect;
use crate::clock::now_ms;
use futures_util::StreamExt;
use gale_core::{AmqpUrl, RabbitmqSource};
use gale_store::NewEvent;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ErrorKind};
use message::{Delivered, Queue, message_event};
use std::time::Duration;

/// The most messages published (and acked) at once.
const MAX_BATCH: usize = 500;
/// How long connecting may take.
/// How often the queue's depth is asked for `gale sources`.
const DEPTH_EVERY: Duration = Duration::from_secs(1);
/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

pub struct Rabbitmq {
    name: String,
    spec: RabbitmqSource,
    /// The event `source`: `/gale/rabbitmq/<vhost>/<queue>`, both
    /// percent-encoded as in the management API's paths.
    source: String,
}

/// Percent-encodes a vhost or queue name as one path segment (all but
/// letters, digits and URL-safe punctuation, so `/` is `%2F`).
fn segment(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

impl Rabbitmq {
    pub fn new(wanted: &Wanted, spec: &RabbitmqSource) -> Rabbitmq {
        let vhost = AmqpUrl::parse(&spec.url)
            .map(|u| u.vhost)
            .unwrap_or_else(|_| "/".into());
        Rabbitmq {
            name: wanted.name.clone(),
            spec: spec.clone(),
            source: format!("/gale/rabbitmq/{}/{}", segment(&vhost), segment(&spec.queue)),
        }
    }

    fn url(&self) -> Result<AmqpUrl, NodeError> {
        AmqpUrl::parse(&self.spec.url)
            .map_err(|(message, hint)| NodeError::Source(format!("the source's url: {message}; {hint}")))
    }

    /// The source's batch: half the prefetch, so a batch is read while the
    /// one before it is being made durable.
    fn batch(&self) -> usize {
        (self.spec.prefetch as usize / 2).clamp(1, MAX_BATCH)
    }

    /// Consumes the queue until told to stop.
    async fn consume(&self, cx: &mut Context, url: &AmqpUrl, conn: &Connection) -> Result<(), NodeError> {
        let server = url.server();
        let queue_name = self.spec.queue.as_str();
        let failed = |what: &str, e: lapin::Error| {
            NodeError::Source(describe(&format!("{what} at {server}"), url, queue_name, &e))
        };
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| failed("cannot open a channel to RabbitMQ", e))?;
        let queue = self
            .declare(&channel)
            .await
            .map_err(|e| failed("cannot use the queue on RabbitMQ", e))?;
        channel
            .basic_qos(self.spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| failed("cannot set the prefetch on RabbitMQ", e))?;
        let tag = ShortString::try_new(format!("gale-{}", self.name)).unwrap_or_default();
        let mut consumer = channel
            .basic_consume(
                queue_name.into(),
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed("cannot consume the queue on RabbitMQ", e))?;
        let mut acked: u64 = 0;
        cx.report(
            format!("consuming, {acked} acked"),
            if queue.message_count() == 0 { Some(0) } else { None },
        );
        cx.report_lag_messages(Some(queue.message_count() as u64));
        tracing::info!(source = %self.name, queue = %queue_name, server = %server, "consuming");

        let at = Queue {
            name: queue_name,
            vhost: &url.vhost,
            source: &self.source,
        };
        let size = self.batch();
        let mut batch: Vec<NewEvent> = Vec::with_capacity(size);
        // The last delivery read and not yet acknowledged or in flight.
        let mut pending: Option<Last> = None;
        let mut inflight: Option<(Publishing, Last, u64)> = None;
        // The last acknowledged delivery not yet reported with the queue's
        // depth, which is asked at most every `DEPTH_EVERY`.
        let mut unreported: Option<Last> = None;
        let mut tick = tokio::time::interval(DEPTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if inflight.is_none()
                && let Some(last) = pending.take()
            {
                if batch.is_empty() {
                    // Only parked messages since the last ack: nothing to store.
                    self.ack(&channel, last.tag)
                        .await
                        .map_err(|e| failed("cannot acknowledge to RabbitMQ", e))?;
                    acked += last.count;
                    unreported = Some(last);
                } else {
                    let events = std::mem::replace(&mut batch, Vec::with_capacity(size));
                    let count = last.count;
                    inflight = Some((Box::pin(cx.publish_owned(&self.spec.topic, events)), last, count));
                }
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, last, count) = inflight.take().expect("guarded");
                    self.ack(&channel, last.tag).await.map_err(|e| failed("cannot acknowledge to RabbitMQ", e))?;
                    acked += count;
                    unreported = Some(last);
                    continue;
                }
                d = consumer.next(), if batch.len() < size => d,
                _ = tick.tick(), if unreported.is_some() => {
                    let depth = self.depth(&channel).await;
                    self.report(cx, acked, unreported.take().expect("guarded"), depth);
                    continue;
                }
                _ = cx.stopped() => break,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(failed("lost the connection to RabbitMQ", e)),
                None => {
                    return Err(NodeError::Source(format!(
                        "RabbitMQ at {server} cancelled the consumer of queue `{queue_name}` (was the queue deleted?); consuming again"
                    )));
                }
            };
            let id = match delivery.properties.message_id() {
                Some(m) if !m.as_str().is_empty() => cx.event_id(m.as_str(), 0),
                _ => uuid::Uuid::now_v7().to_string(),
            };
            let d = Delivered {
                body: &delivery.data,
                routing_key: delivery.routing_key.as_str(),
                redelivered: delivery.redelivered,
                properties: &delivery.properties,
            };
            match message_event(&d, &at, id, self.spec.format) {
                Ok(event) => batch.push(event),
                Err(parked) => cx.park(parked).await?,
            }
            pending = Some(Last {
                tag: delivery.delivery_tag,
                count: pending.map_or(0, |p| p.count) + 1,
                timestamp: *delivery.properties.timestamp(),
            });
        }
        // Told to stop: what is read is made durable and acknowledged; the
        // broker takes back the rest when the channel closes.
        if let Some((publishing, last, count)) = inflight.take() {
            publishing.await?;
            self.ack(&channel, last.tag)
                .await
                .map_err(|e| failed("cannot acknowledge to RabbitMQ", e))?;
            acked += count;
        }
        if let Some(last) = pending.take() {
            if !batch.is_empty() {
                cx.publish(&self.spec.topic, std::mem::take(&mut batch)).await?;
            }
            self.ack(&channel, last.tag)
                .await
                .map_err(|e| failed("cannot acknowledge to RabbitMQ", e))?;
            acked += last.count;
        }
        cx.report(format!("stopped, {acked} acked"), None);
        let _ = channel.close(200, "stopping".into()).await;
        Ok(())
    }

    /// Checks the queue exists, or declares it; the queue's state.
    async fn declare(&self, channel: &Channel) -> Result<lapin::Queue, lapin::Error> {
        let name: ShortString = self.spec.queue.as_str().into();
        if !self.spec.declare {
            return channel
                .queue_declare(
                    name,
                    QueueDeclareOptions::default().passive(),
                    FieldTable::default(),
                )
                .await;
        }
        let mut args = FieldTable::default();
        let kind = self.spec.queue_type.unwrap_or_default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.as_str().into()));
        channel
            .queue_declare(name, QueueDeclareOptions::durable(), args)
            .await
    }

    /// How many messages the queue holds ready (not handed over), if the
    /// broker says.
    async fn depth(&self, channel: &Channel) -> Option<u32> {
        let name: ShortString = self.spec.queue.as_str().into();
        let q = channel
            .queue_declare(
                name,
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .ok()?;
        Some(q.message_count())
    }

    async fn ack(&self, channel: &Channel, tag: u64) -> Result<(), lapin::Error> {
        channel.basic_ack(tag, BasicAckOptions { multiple: true }).await
    }

    fn report(&self, cx: &Context, acked: u64, last: Last, depth: Option<u32>) {
        let lag = match (depth, last.timestamp) {
            (Some(0), _) => Some(0),
            // The publisher's timestamp is in seconds.
            (_, Some(ts)) => Some(now_ms().saturating_sub(ts.saturating_mul(1000))),
            _ => None,
        };
        cx.report(format!("consuming, {acked} acked"), lag);
        if let Some(depth) = depth {
            cx.report_lag_messages(Some(depth as u64));
        }
    }
}

/// The last delivery of a batch: its tag, how many deliveries the batch
/// (parked ones included) holds, and its publisher's timestamp.
#[derive(Debug, Clone, Copy)]
struct Last {
    tag: u64,
    count: u64,
    timestamp: Option<u64>,
}

/// What went wrong, in words that say what to fix; never the password.
fn describe(what: &str, url: &AmqpUrl, queue: &str, e: &lapin::Error) -> String {
    let vhost = &url.vhost;
    let user = &url.user;
    match e.kind() {
        ErrorKind::IOError(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::NotFound
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable => format!(
                "{what}: cannot reach the broker ({io}); check the host and port in the source's url and that RabbitMQ runs"
            ),
            _ => format!("{what}: {io}"),
        },
        ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                if p.get_message().as_str().contains("vhost") =>
            {
                format!(
                    "{what}: user `{user}` may not use vhost `{vhost}` or it does not exist ({p}); check the vhost in the url (percent-encoded, %2f for `/`) and the user's permissions (rabbitmqctl set_permissions -p '{vhost}' {user} '.*' '.*' '.*')"
                )
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if p.get_message().as_str().contains("ogin") =>
            {
                format!(
                    "{what}: the broker refused the login of user `{user}` ({p}); check the user and password in the source's url"
                )
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "{what}: user `{user}` may not use queue `{queue}` ({p}); grant it read (and, to declare, configure) permission on vhost `{vhost}`"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => format!(
                "{what}: there is no queue `{queue}` in vhost `{vhost}` ({p}); create it (rabbitmqadmin declare queue name={queue} durable=true), fix `queue`, or set declare = true"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => format!(
                "{what}: queue `{queue}` exists with other settings than the source declares ({p}); set `queue_type` to the queue's type, or remove `declare` to consume it as it is"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => {
                format!("{what}: queue `{queue}` is exclusive to another connection ({p})")
            }
            _ => format!("{what}: {p}"),
        },
        ErrorKind::InvalidConnectionState(_) | ErrorKind::InvalidChannelState(..) => {
            format!("{what}: the connection was closed ({e})")
        }
        ErrorKind::MissingHeartbeatError => format!("{what}: the broker stopped answering heartbeats"),
        _ => format!("{what}: {e}"),
    }
}

#[async_trait::async_trait]
impl Source for Rabbitmq {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let url = self.url()?;
        let conn = connect(&url, &format!("gale source {}", self.name))
            .await
            .map_err(|e| {
                NodeError::Source(describe(
                    &format!("cannot connect to RabbitMQ at {}", url.server()),
                    &url,
                    &self.spec.queue,
                    &e,
                ))
            })?;
        let ended = self.consume(cx, &url, &conn).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
        ended
    }
}
