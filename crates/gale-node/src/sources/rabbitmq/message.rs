//! What a RabbitMQ message becomes (see [`super::super::message`]).
//!
//! Besides the shared conversion, a plain message keeps what the Lambda
//! payload `format = "rabbitmq"` hands a handler, as extension attributes:
//! `rmqqueue`, `rmqvhost`, `rmqredelivered`, and `rmqproperties`, the
//! message's basic properties (application headers included, by their
//! exact names) as a JSON object named as Lambda names them. Headers that
//! are valid extension names become extensions too, as for any broker.

use crate::sources::message::{Message, Origin, Parked};
use gale_core::MessageFormat;
use gale_store::NewEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

/// The CloudEvents `type` of a message that is not itself a CloudEvent.
pub const MESSAGE_TYPE: &str = "gale.rabbitmq.message";

/// How the CloudEvents AMQP binding prefixes attribute headers.
pub use crate::brokers::amqp::PREFIX;

/// The extension attributes the source sets itself; application headers
/// of these names are left out, so they cannot be spoofed.
pub const QUEUE: &str = "rmqqueue";
pub const VHOST: &str = "rmqvhost";
pub const REDELIVERED: &str = "rmqredelivered";
pub const PROPERTIES: &str = "rmqproperties";

/// A delivery as the source sees it.
pub struct Delivered<'a> {
    pub body: &'a [u8],
    pub routing_key: &'a str,
    pub redelivered: bool,
    pub properties: &'a BasicProperties,
}

/// Where the message was read.
pub struct Queue<'a> {
    pub name: &'a str,
    pub vhost: &'a str,
    /// The event `source`: `/gale/rabbitmq/<vhost>/<queue>`.
    pub source: &'a str,
}

/// The event stored for a delivery, or why it cannot be taken.
pub fn message_event(
    d: &Delivered,
    queue: &Queue,
    id: String,
    format: MessageFormat,
) -> Result<NewEvent, Parked> {
    let p = d.properties;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(table) = p.headers() {
        for (name, value) in table {
            let name = name.as_str();
            let lower = name.to_ascii_lowercase();
            if [QUEUE, VHOST, REDELIVERED, PROPERTIES].contains(&lower.as_str()) {
                continue;
            }
            // Some AMQP clients (JMS-compatible ones) write the binding's
            // prefix with `_`, since `:` is not valid in their header names.
            let name = match name.get(..12) {
                Some(head) if head.eq_ignore_ascii_case("cloudEvents_") => format!("{PREFIX}{}", &name[12..]),
                _ => name.to_string(),
            };
            if let Some(text) = header_text(value) {
                headers.push((name, text));
            }
        }
    }
    headers.push((QUEUE.into(), queue.name.into()));
    headers.push((VHOST.into(), queue.vhost.into()));
    headers.push((REDELIVERED.into(), d.redelivered.to_string()));
    let properties = properties_json(p);
    if !properties.is_empty() {
        headers.push((PROPERTIES.into(), Value::Object(properties).to_string()));
    }
    let time = p
        .timestamp()
        .and_then(|s| jiff::Timestamp::from_second(s as i64).ok())
        .map(|t| t.to_string());
    let content_type = p.content_type().as_ref().map(|c| c.as_str());
    let m = Message {
        body: d.body,
        content_type,
        headers: &headers,
        prefix: PREFIX,
    };
    let key = (!d.routing_key.is_empty()).then_some(d.routing_key);
    let origin = Origin {
        ty: MESSAGE_TYPE,
        id,
        source: queue.source,
        subject: key,
        time: time.as_deref(),
        key,
    };
    m.event(origin, format)
}

/// A header's value as text: strings as they are, numbers and booleans
/// written out, arrays as their items joined with `,`, tables as JSON,
/// bytes as base64; nothing for a void value.
fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::FieldArray(items) => items
            .as_slice()
            .iter()
            .filter_map(header_text)
            .collect::<Vec<_>>()
            .join(","),
        AMQPValue::FieldTable(t) => Value::Object(table_json(t)).to_string(),
        AMQPValue::ByteArray(b) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(b.as_slice())
        }
        AMQPValue::Void => return None,
        other => match header_json(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
    })
}

/// A header's value as JSON: strings as strings, numbers as numbers.
pub fn header_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(n) => (*n as f64).into(),
        AMQPValue::Double(n) => (*n).into(),
        AMQPValue::DecimalValue(d) => (d.value as f64 / 10f64.powi(d.scale as i32)).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into(),
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(header_json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(table_json(t)),
        AMQPValue::ByteArray(b) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .encode(b.as_slice())
                .into()
        }
        AMQPValue::Void => Value::Null,
    }
}

fn table_json(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), header_json(v)))
        .collect()
}

/// The properties the publisher set, named as Lambda's `basicProperties`
/// names them (`timestamp` in seconds).
fn properties_json(p: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut text = |name: &str, v: &Option<lapin::types::ShortString>| {
        if let Some(v) = v {
            m.insert(name.into(), v.as_str().into());
        }
    };
    text("contentType", p.content_type());
    text("contentEncoding", p.content_encoding());
    text("correlationId", p.correlation_id());
    text("replyTo", p.reply_to());
    text("expiration", p.expiration());
    text("messageId", p.message_id());
    text("type", p.kind());
    text("userId", p.user_id());
    text("appId", p.app_id());
    text("clusterId", p.cluster_id());
    if let Some(h) = p.headers() {
        m.insert("headers".into(), Value::Object(table_json(h)));
    }
    if let Some(v) = p.delivery_mode() {
        m.insert("deliveryMode".into(), (*v).into());
    }
    if let Some(v) = p.priority() {
        m.insert("priority".into(), (*v).into());
    }
    if let Some(v) = p.timestamp() {
        m.insert("timestamp".into(), (*v).into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;
    use lapin::types::{DecimalValue, FieldArray};

    fn take(
        properties: BasicProperties,
        body: &[u8],
        format: MessageFormat,
    ) -> Result<cloudevents::Event, Parked> {
        let d = Delivered {
            body,
            routing_key: "orders.eu",
            redelivered: true,
            properties: &properties,
        };
        let q = Queue {
            name: "orders",
            vhost: "/",
            source: "/gale/rabbitmq/%2F/orders",
        };
        let stored = message_event(&d, &q, "q/m-1".into(), format)?;
        Ok(crate::events::decode(&stored.body).unwrap())
    }

    #[test]
    fn a_plain_message_keeps_its_properties_and_headers() {
        let mut h = FieldTable::default();
        h.insert("Region".into(), AMQPValue::LongString("eu".into()));
        h.insert("x-count".into(), AMQPValue::LongLongInt(7));
        h.insert(
            "tags".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString("a".into()),
                AMQPValue::ShortInt(2),
            ])),
        );
        h.insert(
            "price".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1250,
            }),
        );
        h.insert("rmqqueue".into(), AMQPValue::LongString("spoofed".into()));
        let p = BasicProperties::default()
            .with_headers(h)
            .with_timestamp(1_796_637_600)
            .with_app_id("shop".into())
            .with_priority(3);
        let e = take(p, br#"{"qty":2}"#, MessageFormat::Any).unwrap();
        assert_eq!((e.ty(), e.subject()), (MESSAGE_TYPE, Some("orders.eu")));
        assert_eq!(e.source().as_str(), "/gale/rabbitmq/%2F/orders");
        assert_eq!(e.time().unwrap().to_rfc3339(), "2026-12-07T10:00:00+00:00");
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert_eq!(e.extension("tags").unwrap().to_string(), "a,2");
        assert_eq!(e.extension("price").unwrap().to_string(), "12.5");
        assert_eq!(e.extension("partitionkey").unwrap().to_string(), "orders.eu");
        assert_eq!(e.extension(QUEUE).unwrap().to_string(), "orders");
        assert_eq!(e.extension(VHOST).unwrap().to_string(), "/");
        assert_eq!(e.extension(REDELIVERED).unwrap().to_string(), "true");
        let props: Value = serde_json::from_str(&e.extension(PROPERTIES).unwrap().to_string()).unwrap();
        assert_eq!(props["appId"], "shop");
        assert_eq!(props["priority"], 3);
        assert_eq!(props["timestamp"], 1_796_637_600);
        assert_eq!(props["headers"]["x-count"], 7);
        assert_eq!(props["headers"]["Region"], "eu");
    }

    #[test]
    fn cloudevents_come_by_the_amqp_binding_in_either_spelling() {
        for prefix in ["cloudEvents:", "cloudEvents_", "CLOUDEVENTS_"] {
            let mut h = FieldTable::default();
            for (k, v) in [
                ("specversion", "1.0"),
                ("id", "e-1"),
                ("source", "/shop"),
                ("type", "order.placed"),
            ] {
                h.insert(format!("{prefix}{k}").into(), AMQPValue::LongString(v.into()));
            }
            let p = BasicProperties::default()
                .with_headers(h)
                .with_content_type("application/json".into());
            let e = take(p, br#"{"n":1}"#, MessageFormat::Cloudevents).unwrap();
            assert_eq!((e.id(), e.ty()), ("e-1", "order.placed"), "{prefix}");
            assert_eq!(e.datacontenttype(), Some("application/json"));
        }
        let parked = take(BasicProperties::default(), b"x", MessageFormat::Cloudevents).unwrap_err();
        assert!(parked.reason.contains("CloudEvent"), "{}", parked.reason);
    }
}
