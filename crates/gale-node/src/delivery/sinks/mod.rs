//! Sinks: a topic's events forwarded to brokers outside Gale, as the
//! delivery plane's other kind of subscriber.
//!
//! A sink is a [`Sink`]: built from its spec without I/O, it sends batches
//! of events and returns once the broker confirmed every one (publisher
//! confirms, JetStream acks, Kafka `acks=all`, MQTT `PUBACK`). What is
//! retried, when, and what is dead-lettered is decided around it, exactly
//! as for a function's deliveries, so a sink connects lazily, and after an
//! error drops its connection and connects again on the next batch.
//!
//! An event leaves Gale in the CloudEvents binding of the broker's
//! protocol ([`Outgoing`]): in binary mode its data is the message body
//! and its attributes are headers with the binding's prefix, so plain
//! consumers of the broker read the data as they always did; a message
//! carries its event's id, so a consumer can drop the copies a retry
//! after a lost confirmation sends.
//!
//! Adding a broker: a [`gale_core::SinkKind`] variant, a module here
//! implementing [`Sink`], one arm in [`build`], and a test against the
//! real broker.

pub mod forward;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod rabbitmq;
pub mod redis;

use crate::NodeError;
use crate::functions::{Follow, Functions, Snapshot};
use crate::publisher::Publisher;
use cloudevents::{AttributesReader, Data, Event};
use gale_core::{SinkKind, SinkMode, SinkSpec};
use gale_store::Topics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How sinks' subscriptions are named: no function's name starts so.
pub const SUBSCRIPTION_PREFIX: &str = "sink:";

/// A broker events are sent to.
#[async_trait::async_trait]
pub trait Sink: Send + 'static {
    /// Sends the events, in order; returns once the broker confirmed every
    /// one of them. After an error the whole batch is sent again later
    /// (the broker may get some twice).
    async fn send(&mut self, events: &[Event]) -> Result<(), NodeError>;
}

/// The sink a spec describes.
pub fn build(name: &str, spec: &SinkSpec) -> Box<dyn Sink> {
    match spec.kind {
        SinkKind::Nats => Box::new(nats::NatsSink::new(name, spec)),
        SinkKind::Rabbitmq => Box::new(rabbitmq::RabbitmqSink::new(name, spec)),
        SinkKind::Redis => Box::new(redis::RedisSink::new(name, spec)),
        SinkKind::Mqtt => Box::new(mqtt::MqttSink::new(name, spec)),
        SinkKind::Kafka => Box::new(kafka::KafkaSink::new(name, spec)),
    }
}

/// Event `n` of the sinks' tests: id `e-<n>`, type `order.placed`,
/// extension `region`, data `{"n": n}` in JSON.
#[cfg(test)]
pub(crate) fn test_event(n: u32) -> Event {
    serde_json::from_value(serde_json::json!({
        "specversion": "1.0", "id": format!("e-{n}"), "source": "/shop", "type": "order.placed",
        "time": "2026-12-07T10:00:00Z", "region": "eu", "datacontenttype": "application/json",
        "data": { "n": n }
    }))
    .expect("a valid event")
}

/// The node's sinks; follows the declared ones.
pub struct Sinks {
    functions: Functions,
    topics: Arc<dyn Topics>,
    publisher: Publisher,
    /// Where sinks run: the delivery threads.
    runtime: tokio::runtime::Handle,
    running: Mutex<BTreeMap<String, (SinkSpec, watch::Sender<bool>)>>,
    stopping: watch::Sender<bool>,
}

impl Sinks {
    pub fn new(
        functions: Functions,
        topics: Arc<dyn Topics>,
        publisher: Publisher,
        runtime: tokio::runtime::Handle,
    ) -> Sinks {
        Sinks {
            functions,
            topics,
            publisher,
            runtime,
            running: Mutex::default(),
            stopping: watch::channel(false).0,
        }
    }

    /// Stops every sink; what they leased is sent again after a restart.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
        for (_, (_, stop)) in std::mem::take(&mut *crate::lock(&self.running)) {
            let _ = stop.send(true);
        }
    }
}

#[async_trait::async_trait]
impl Follow for Sinks {
    async fn functions_changed(&self, _: &Snapshot) -> Result<(), NodeError> {
        if *self.stopping.borrow() {
            return Ok(());
        }
        let wanted = self.functions.registry().sinks().await?;
        let gone: Vec<(String, SinkSpec)> = {
            let mut running = crate::lock(&self.running);
            let gone: Vec<String> = running
                .iter()
                .filter(|(name, (spec, _))| !wanted.iter().any(|w| &w.name == *name && w.spec == *spec))
                .map(|(name, _)| name.clone())
                .collect();
            gone.into_iter()
                .filter_map(|name| {
                    let (spec, stop) = running.remove(&name)?;
                    let _ = stop.send(true);
                    Some((name, spec))
                })
                .collect()
        };
        for (name, spec) in gone {
            if !wanted
                .iter()
                .any(|w| w.name == name && w.spec.topic == spec.topic)
            {
                self.topics
                    .delete_subscription(&spec.topic, &forward::subscription(&name))
                    .await?;
            }
        }
        for w in wanted {
            if crate::lock(&self.running).contains_key(&w.name) {
                continue;
            }
            let sink = build(&w.name, &w.spec);
            self.topics
                .put_subscription(&w.spec.topic, &forward::subscription(&w.name), false)
                .await?;
            let (stop, stopped) = watch::channel(false);
            crate::lock(&self.running).insert(w.name.clone(), (w.spec.clone(), stop));
            self.runtime.spawn(forward::run(
                w.name,
                w.spec,
                sink,
                (self.topics.clone(), self.publisher.clone()),
                stopped,
            ));
        }
        Ok(())
    }
}

/// An event as one broker message.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Attributes as headers, named with the binding's prefix (binary
    /// mode); none in structured mode.
    pub headers: Vec<(String, String)>,
    /// The data's type (binary mode) or `application/cloudevents+json`.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Outgoing {
    /// `event` laid out as `mode` says, attribute headers named
    /// `<prefix><attribute>` (`ce-` for NATS, `ce_` for Kafka,
    /// `cloudEvents:` for AMQP, none for MQTT 5 and Redis fields).
    pub fn new(event: &Event, mode: SinkMode, prefix: &str) -> Outgoing {
        match mode {
            SinkMode::Structured => Outgoing {
                headers: Vec::new(),
                content_type: Some("application/cloudevents+json".into()),
                body: crate::events::encode(event).body,
            },
            SinkMode::Binary => {
                let headers = event
                    .iter()
                    .filter(|(name, _)| *name != "datacontenttype")
                    .map(|(name, value)| (format!("{prefix}{name}"), value.to_string()))
                    .collect();
                let body = match event.data() {
                    None => Vec::new(),
                    Some(Data::Binary(b)) => b.clone(),
                    Some(Data::String(s)) => s.clone().into_bytes(),
                    Some(Data::Json(v)) => serde_json::to_vec(v).expect("JSON serializes"),
                };
                Outgoing {
                    headers,
                    content_type: event.datacontenttype().map(str::to_string),
                    body,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::message::{Message, Origin};
    use gale_core::MessageFormat;

    fn event() -> Event {
        let stored = crate::events::parse_for_store(
            &http::HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/cloudevents+json"),
            )]),
            br#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.placed","subject":"42","region":"eu","datacontenttype":"application/json","data":{"qty":2}}"#,
        )
        .unwrap();
        crate::events::decode(&stored[0].body).unwrap()
    }

    #[test]
    fn events_leave_in_binary_mode_and_come_back_as_the_same_event() {
        let e = event();
        for prefix in ["ce-", "ce_", "cloudEvents:", ""] {
            let out = Outgoing::new(&e, SinkMode::Binary, prefix);
            assert_eq!(out.body, br#"{"qty":2}"#);
            assert_eq!(out.content_type.as_deref(), Some("application/json"));
            assert!(
                out.headers.contains(&(format!("{prefix}region"), "eu".into())),
                "{:?}",
                out.headers
            );
            // Read back by a Gale source on the same binding: the same event.
            let m = Message {
                body: &out.body,
                content_type: out.content_type.as_deref(),
                headers: &out.headers,
                prefix,
            };
            let origin = Origin {
                ty: "x",
                id: "x".into(),
                source: "x",
                subject: None,
                time: None,
                key: None,
            };
            let back =
                crate::events::decode(&m.event(origin, MessageFormat::Cloudevents).unwrap().body).unwrap();
            assert_eq!(back, e, "{prefix}");
        }
        let out = Outgoing::new(&e, SinkMode::Structured, "ce-");
        assert!(out.headers.is_empty());
        assert_eq!(crate::events::decode(&out.body).unwrap(), e);
    }
}
