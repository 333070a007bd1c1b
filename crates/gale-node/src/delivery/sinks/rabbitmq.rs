//! Sending to RabbitMQ: each event a message published to the sink's
//! `exchange` (the default exchange `""` unless set) with routing key `to`,
//! in the CloudEvents AMQP binding (`cloudEvents:` application headers and
//! the `content_type` property in binary mode).
//!
//! The channel is in confirm mode (publisher confirms): a batch's messages
//! are published back to back and count as sent once the broker confirmed
//! every one of them, which for a durable queue means the broker has
//! written them. Messages are persistent (`delivery_mode` 2) and
//! `mandatory`, so a message no queue is bound to receive comes back to
//! the sink and fails the batch instead of vanishing; a `nack` fails it
//! too. Each message's `message_id` is its event's id, so a consumer can
//! drop the copies a retry after a lost confirmation sends (a Gale
//! `rabbitmq` source does so by itself).

use super::{Outgoing, Sink};
use crate::NodeError;
use crate::brokers::amqp::{PREFIX, connect};
use cloudevents::{AttributesReader, Event};
use gale_core::{AmqpUrl, SinkSpec};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

pub struct RabbitmqSink {
    name: String,
    spec: SinkSpec,
    connection: Option<(Connection, Channel)>,
}

impl RabbitmqSink {
    pub fn new(name: &str, spec: &SinkSpec) -> RabbitmqSink {
        RabbitmqSink {
            name: name.to_string(),
            spec: spec.clone(),
            connection: None,
        }
    }

    fn exchange(&self) -> &str {
        self.spec.exchange.as_deref().unwrap_or("")
    }

    /// Where events go, as errors name it.
    fn destination(&self) -> String {
        match self.exchange() {
            "" => format!("queue `{}` (by the default exchange)", self.spec.to),
            x => format!("exchange `{x}` with routing key `{}`", self.spec.to),
        }
    }

    fn error(&self, url: Option<&AmqpUrl>, what: String) -> NodeError {
        let server = url.map_or_else(|| "the sink's url".to_string(), AmqpUrl::server);
        NodeError::Sink(format!("sink `{}`: {what} (RabbitMQ at {server})", self.name))
    }

    async fn connect(&self) -> Result<(Connection, Channel), NodeError> {
        let url = AmqpUrl::parse(&self.spec.url)
            .map_err(|(message, hint)| self.error(None, format!("the url: {message}; {hint}")))?;
        let failed = |e: lapin::Error| self.error(Some(&url), explain(&url, &e));
        let conn = connect(&url, &format!("gale sink {}", self.name))
            .await
            .map_err(failed)?;
        let channel = conn.create_channel().await.map_err(failed)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        Ok((conn, channel))
    }

    async fn publish(&self, channel: &Channel, events: &[Event]) -> Result<(), NodeError> {
        let url = AmqpUrl::parse(&self.spec.url).ok();
        let failed = |e: lapin::Error| {
            let why = match e.kind() {
                lapin::ErrorKind::ProtocolError(p)
                    if matches!(
                        p.kind(),
                        lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
                    ) =>
                {
                    format!(
                        "there is no exchange `{}` ({p}); declare it, or fix `exchange` in the sink",
                        self.exchange()
                    )
                }
                _ => url.as_ref().map_or_else(|| e.to_string(), |u| explain(u, &e)),
            };
            self.error(
                url.as_ref(),
                format!("publishing to {} failed: {why}", self.destination()),
            )
        };
        let exchange = ShortString::try_new(self.exchange())
            .map_err(|e| self.error(url.as_ref(), format!("the exchange name: {e}")))?;
        let routing_key = ShortString::try_new(self.spec.to.as_str())
            .map_err(|e| self.error(url.as_ref(), format!("`to`: {e}")))?;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let out = Outgoing::new(event, self.spec.mode, PREFIX);
            let mut properties = BasicProperties::default().with_delivery_mode(2);
            if let Ok(id) = ShortString::try_new(event.id()) {
                properties = properties.with_message_id(id);
            }
            if let Some(ct) = out.content_type.and_then(|ct| ShortString::try_new(ct).ok()) {
                properties = properties.with_content_type(ct);
            }
            if let Some(t) = event.time() {
                properties = properties.with_timestamp(t.timestamp().max(0) as u64);
            }
            if !out.headers.is_empty() {
                let mut headers = FieldTable::default();
                for (k, v) in out.headers {
                    if let Ok(k) = ShortString::try_new(k) {
                        headers.insert(k, AMQPValue::LongString(v.into()));
                    }
                }
                properties = properties.with_headers(headers);
            }
            let confirm = channel
                .basic_publish(
                    exchange.clone(),
                    routing_key.clone(),
                    options,
                    &out.body,
                    properties,
                )
                .await
                .map_err(failed)?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(failed)?;
            if confirmation.is_nack() {
                return Err(self.error(
                    url.as_ref(),
                    format!(
                        "the broker refused (nack) a message for {}; it could not store it",
                        self.destination()
                    ),
                ));
            }
            if let Some(returned) = confirmation.take_message() {
                return Err(self.error(
                    url.as_ref(),
                    format!(
                        "the broker could not route a message to {} ({} {}); declare the queue, or bind one to the exchange with that routing key",
                        self.destination(),
                        returned.reply_code,
                        returned.reply_text
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A connection or channel error in words that say what to fix.
fn explain(url: &AmqpUrl, e: &lapin::Error) -> String {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    let (user, vhost) = (&url.user, &url.vhost);
    match e.kind() {
        lapin::ErrorKind::IOError(io) => format!(
            "cannot reach the broker ({io}); check the host and port in the url and that RabbitMQ runs"
        ),
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                if p.get_message().as_str().contains("ogin") =>
            {
                format!(
                    "the broker refused the login of user `{user}` ({p}); check the user and password in the url"
                )
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "user `{user}` may not use vhost `{vhost}`, or it does not exist ({p}); check the vhost in the url (%2f for `/`) and the user's permissions"
            ),
            _ => p.to_string(),
        },
        _ => e.to_string(),
    }
}

#[async_trait::async_trait]
impl Sink for RabbitmqSink {
    async fn send(&mut self, events: &[Event]) -> Result<(), NodeError> {
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let (_, channel) = self.connection.as_ref().expect("connected");
        let sent = self.publish(channel, events).await;
        if sent.is_err()
            && let Some((conn, _)) = self.connection.take()
        {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                conn.close(200, "retrying".into()),
            )
            .await;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    //! Against the machine's RabbitMQ (127.0.0.1:5672, guest/guest).
    use super::*;
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use serde_json::json;

    const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn spec(url: &str, to: &str, extra: serde_json::Value) -> SinkSpec {
        let mut v = json!({ "type": "rabbitmq", "url": url, "topic": "orders", "to": to });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    use super::super::test_event as event;

    fn unique(prefix: &str) -> String {
        format!("{prefix}{}", uuid::Uuid::now_v7().simple())
    }

    async fn queue(url: &str) -> (Connection, Channel, String) {
        let url = AmqpUrl::parse(url).unwrap();
        let conn = connect(&url, "gale sink test").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let name = unique("gale-sink-");
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        (conn, channel, name)
    }

    fn header(p: &BasicProperties, name: &str) -> Option<String> {
        match p.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_arrive_once_in_order_as_persistent_binary_mode_messages() {
        let (_conn, channel, q) = queue(AMQP).await;
        let mut sink = RabbitmqSink::new("out", &spec(AMQP, &q, json!({})));
        let events: Vec<Event> = (0..20).map(event).collect();
        sink.send(&events[..10]).await.unwrap();
        sink.send(&events[10..]).await.unwrap();
        for n in 0..20u32 {
            let m = channel
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("message {n} missing"));
            let p = &m.delivery.properties;
            let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            assert_eq!(body, json!({ "n": n }), "the data as the body, in order");
            assert_eq!(p.message_id().as_ref().unwrap().as_str(), format!("e-{n}"));
            assert_eq!(p.content_type().as_ref().unwrap().as_str(), "application/json");
            assert_eq!(*p.delivery_mode(), Some(2), "persistent");
            assert_eq!(*p.timestamp(), Some(1_796_637_600));
            assert_eq!(
                header(p, "cloudEvents:id").as_deref(),
                Some(format!("e-{n}").as_str())
            );
            assert_eq!(header(p, "cloudEvents:type").as_deref(), Some("order.placed"));
            assert_eq!(header(p, "cloudEvents:specversion").as_deref(), Some("1.0"));
            assert_eq!(header(p, "cloudEvents:region").as_deref(), Some("eu"));
            assert!(header(p, "cloudEvents:datacontenttype").is_none());
        }
        let more = channel
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(more.is_none(), "once each");

        // Structured mode: the whole event as the body.
        let mut sink = RabbitmqSink::new("out", &spec(AMQP, &q, json!({ "mode": "structured" })));
        sink.send(&events[..1]).await.unwrap();
        let m = channel
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        let p = &m.delivery.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/cloudevents+json"
        );
        let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!((&body["id"], &body["data"]["n"]), (&json!("e-0"), &json!(0)));
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_broker_that_refuses_is_an_error_that_says_why() {
        let events = vec![event(1)];
        let err = |r: Result<(), NodeError>| r.unwrap_err().to_string();
        let e = err(RabbitmqSink::new(
            "out",
            &spec("amqp://guest:s3cret@127.0.0.1:1/%2f", "q", json!({})),
        )
        .send(&events)
        .await);
        assert!(
            e.contains("cannot reach the broker") && e.contains("amqp://127.0.0.1:1"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = err(RabbitmqSink::new(
            "out",
            &spec("amqp://guest:wrong@127.0.0.1:5672/%2f", "q", json!({})),
        )
        .send(&events)
        .await);
        assert!(e.contains("refused the login of user `guest`"), "{e}");
        assert!(!e.contains("wrong@"), "{e}");
        // No queue of that name: the message comes back unroutable.
        let e = err(
            RabbitmqSink::new("out", &spec(AMQP, &unique("gale-none-"), json!({})))
                .send(&events)
                .await,
        );
        assert!(e.contains("could not route") && e.contains("NO_ROUTE"), "{e}");
        // No such exchange: the broker closes the channel.
        let exchange = unique("gale-nox-");
        let mut sink = RabbitmqSink::new("out", &spec(AMQP, "q", json!({ "exchange": exchange })));
        let e = err(sink.send(&events).await);
        assert!(e.contains(&format!("there is no exchange `{exchange}`")), "{e}");
        // ...and the next batch connects afresh (and fails the same way).
        let e = err(sink.send(&events).await);
        assert!(e.contains("no exchange"), "{e}");
    }
}
