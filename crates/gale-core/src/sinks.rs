//! Sinks: a topic's events forwarded to a broker outside Gale.
//!
//! A `[sinks.NAME]` table names the broker with `type`, where it is with
//! `url`, the Gale `topic` to forward and the destination on the broker
//! with `to`. The node subscribes the sink to its topic like a function:
//! each event is sent with the broker's confirmation, retried with
//! backoff, and dead-lettered after `max_attempts`.

use crate::manifest::{Backoff, valid_topic};
use serde::{Deserialize, Serialize};

/// The broker a sink sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// `to` is a subject; sent with JetStream's ack unless `jetstream = false`.
    Nats,
    /// `to` is the routing key on `exchange` (the default exchange, which
    /// routes to the queue of that name, unless set); publisher confirms.
    Rabbitmq,
    /// `to` is a stream (`XADD`).
    Redis,
    /// `to` is an MQTT topic, published with QoS 1.
    Mqtt,
    /// `to` is a Kafka topic, produced with `acks=all`; the event's
    /// partition key is the record's key.
    Kafka,
}

impl SinkKind {
    fn schemes(self) -> &'static [&'static str] {
        match self {
            SinkKind::Nats => &["nats", "tls"],
            SinkKind::Rabbitmq => &["amqp", "amqps"],
            SinkKind::Redis => &["redis", "rediss"],
            SinkKind::Mqtt => &["mqtt", "mqtts"],
            SinkKind::Kafka => &["kafka"],
        }
    }
}

/// How an event is laid out on the broker, by the CloudEvents binding of
/// its protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkMode {
    /// The data as the message body, the attributes as headers
    /// (properties): what plain consumers of the broker expect.
    #[default]
    Binary,
    /// The whole event as a JSON document
    /// (`application/cloudevents+json`).
    Structured,
}

/// A `[sinks.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// The broker, like `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// The Gale topic whose events are forwarded.
    pub topic: String,
    /// Where on the broker the events go (see [`SinkKind`]).
    pub to: String,
    /// RabbitMQ only: the exchange `to` routes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// NATS only: false publishes with core NATS, which confirms nothing.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub jetstream: bool,
    #[serde(default)]
    pub mode: SinkMode,
    /// Attempts per event, the first included, before it is dead-lettered.
    #[serde(default = "crate::manifest::defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Where events the broker kept refusing are parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

fn yes() -> bool {
    true
}
fn is_yes(b: &bool) -> bool {
    *b
}

impl SinkSpec {
    /// Checks the settings; the error names the key (relative to the
    /// table), what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        for (key, topic) in [
            ("topic", Some(&self.topic)),
            ("dead_letter", self.dead_letter.as_ref()),
        ] {
            if let Some(t) = topic
                && !valid_topic(t)
            {
                return Err((
                    key,
                    format!("{t:?} is not a valid topic name"),
                    "name a Gale topic, like \"orders\"",
                ));
            }
        }
        if self.dead_letter.as_ref() == Some(&self.topic) {
            return Err((
                "dead_letter",
                "the dead-letter topic is the sink's own topic".into(),
                "name another topic, or the sink would forward its own failures again",
            ));
        }
        let schemes = self.kind.schemes();
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        if !scheme.is_some_and(|s| schemes.contains(&s)) || self.url.len() <= scheme.map_or(0, str::len) + 3 {
            return Err((
                "url",
                format!(
                    "{:?} is not a URL for this broker (it takes {})",
                    self.url,
                    schemes.join("://, ") + "://"
                ),
                "write it like \"nats://127.0.0.1:4222\", \"amqp://guest:guest@127.0.0.1:5672/%2f\", \"redis://127.0.0.1:6379\", \"mqtt://127.0.0.1:1883\" or \"kafka://127.0.0.1:9092\"",
            ));
        }
        if self.to.is_empty() || self.to.len() > 255 || self.to.chars().any(char::is_control) {
            return Err((
                "to",
                format!("{:?} is not a destination", self.to),
                "name the subject, routing key, stream, MQTT topic or Kafka topic events go to",
            ));
        }
        if self.exchange.is_some() && self.kind != SinkKind::Rabbitmq {
            return Err((
                "exchange",
                "applies only to type = \"rabbitmq\"".into(),
                "remove it",
            ));
        }
        if !self.jetstream && self.kind != SinkKind::Nats {
            return Err(("jetstream", "applies only to type = \"nats\"".into(), "remove it"));
        }
        if self.max_attempts == 0 {
            return Err((
                "max_attempts",
                "must be at least 1".into(),
                "1 sends each event once, without retries",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> Result<SinkSpec, String> {
        let s: SinkSpec = toml::from_str(toml).map_err(|e| e.to_string())?;
        s.validate().map_err(|(k, m, _)| format!("{k}: {m}"))?;
        Ok(s)
    }

    #[test]
    fn sinks_are_checked_before_anything_is_sent() {
        let s =
            spec("type = \"rabbitmq\"\nurl = \"amqp://127.0.0.1\"\ntopic = \"orders\"\nto = \"shipped\"\n")
                .unwrap();
        assert_eq!(
            (s.kind, s.mode, s.max_attempts, s.jetstream),
            (SinkKind::Rabbitmq, SinkMode::Binary, 5, true)
        );
        for (toml, key) in [
            (
                "type = \"mqtt\"\nurl = \"amqp://h\"\ntopic = \"o\"\nto = \"x\"\n",
                "url",
            ),
            (
                "type = \"kafka\"\nurl = \"kafka://h:9092\"\ntopic = \"O!\"\nto = \"x\"\n",
                "topic",
            ),
            (
                "type = \"redis\"\nurl = \"redis://h\"\ntopic = \"o\"\nto = \"\"\n",
                "to",
            ),
            (
                "type = \"redis\"\nurl = \"redis://h\"\ntopic = \"o\"\nto = \"s\"\nexchange = \"e\"\n",
                "exchange",
            ),
            (
                "type = \"nats\"\nurl = \"nats://h\"\ntopic = \"o\"\nto = \"s\"\ndead_letter = \"o\"\n",
                "dead_letter",
            ),
        ] {
            let e = spec(toml).unwrap_err();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
        assert!(spec("type = \"sqs\"\nurl = \"x://h\"\ntopic = \"o\"\nto = \"s\"\n").is_err());
    }
}
