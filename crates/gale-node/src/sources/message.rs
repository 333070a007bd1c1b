//! What a broker's message becomes: the CloudEvent it carries, or one made
//! around it; shared by every broker source (NATS, RabbitMQ, Redis, MQTT,
//! Kafka), which differ only in where they keep headers and how the
//! CloudEvents binding for their protocol names attributes.
//!
//! A message that is a CloudEvent by its binding is taken as that event
//! (its own id, source and type): structured mode when its content type
//! starts with `application/cloudevents`, binary mode when it carries the
//! binding's `specversion` attribute header (the binding's prefix, then the
//! attribute name; the data's type in `<prefix>datacontenttype` where the
//! binding has it, else in the message's content type). One that claims to
//! be a CloudEvent but is not a valid one is taken as a plain message.
//!
//! Any other message becomes an event of the source's `type`:
//! - `id`, `source`, `subject` and `time` as the source gives them;
//! - `data` the body: JSON if it parses as JSON and the content type is
//!   absent or names JSON; otherwise text if it is UTF-8, with the content
//!   type (`text/plain` without one), else `data_base64`
//!   (`application/octet-stream` without one);
//! - each header whose lowercased name is a valid extension name
//!   (lowercase letters and digits, at most 20) and no CloudEvents
//!   attribute becomes an extension (several values joined with `,`);
//! - `partitionkey` the `partitionkey` header if there is one, else the
//!   key the source names (a Kafka key, a NATS subject), so per-key
//!   subscriptions keep the broker's order.
//!
//! A message the source cannot take — over Gale's event size limit, or not
//! of the source's declared [`MessageFormat`] — is [`Parked`]: the source
//! acknowledges it to the broker like any other, and parks an event with
//! the same attributes, the reason in `galeerror` and (if it fits) the body
//! as `data_base64` in its dead-letter topic ([`Context::park`]). Such a
//! message would otherwise come back forever and, on a queue or partition,
//! hold up everything behind it.
//!
//! [`Context::park`]: super::context::Context::park

use crate::events::{self, MAX_EVENT};
use gale_core::MessageFormat;
use gale_store::NewEvent;
use serde::Serializer;
use serde::ser::SerializeMap;

/// The CloudEvents attributes (and `data` spellings) a header may not set
/// as an extension.
const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "partitionkey",
];

/// A message as a broker handed it over.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub body: &'a [u8],
    /// The content type the broker keeps apart from the headers (AMQP's
    /// and MQTT 5's property), if any; otherwise a `content-type` header.
    pub content_type: Option<&'a str>,
    /// Headers (properties, user properties) as name and value.
    pub headers: &'a [(String, String)],
    /// How the CloudEvents binding of the broker's protocol prefixes
    /// attribute headers: `ce-` (NATS), `ce_` (Kafka), `cloudEvents:`
    /// (AMQP), `` (MQTT 5).
    pub prefix: &'static str,
}

/// The attributes of the event made for a plain message.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The event type, like `gale.nats.message`.
    pub ty: &'a str,
    /// The event id, from the broker's own identity for the message.
    pub id: String,
    pub source: &'a str,
    pub subject: Option<&'a str>,
    /// RFC 3339.
    pub time: Option<&'a str>,
    /// The partition key unless a `partitionkey` header names one.
    pub key: Option<&'a str>,
}

/// A message the source cannot take, and the event to park for it.
#[derive(Debug)]
pub struct Parked {
    pub reason: String,
    pub event: NewEvent,
}

impl Message<'_> {
    /// The event to store for the message, or why it cannot be taken.
    pub fn event(&self, origin: Origin, format: MessageFormat) -> Result<NewEvent, Parked> {
        if let Some(event) = self.as_cloudevent() {
            if event.body.len() > MAX_EVENT {
                let why = format!(
                    "the message is a CloudEvent of {} bytes; Gale's limit is {MAX_EVENT}",
                    event.body.len()
                );
                return Err(self.park(&origin, why));
            }
            return Ok(event);
        }
        let content_type = self.content_type.map(str::to_string).or_else(|| {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
        });
        let json_type = content_type
            .as_deref()
            .is_none_or(|ct| ct.to_ascii_lowercase().contains("json"));
        let body = self.body;
        let json = if json_type {
            serde_json::from_slice::<&serde_json::value::RawValue>(body).ok()
        } else {
            None
        };
        match format {
            MessageFormat::Any => {}
            MessageFormat::Json if json.is_some() => {}
            MessageFormat::Json => {
                return Err(self.park(&origin, "the message is neither JSON nor a CloudEvent, and the source takes only those (format = \"json\")".into()));
            }
            MessageFormat::Cloudevents => {
                return Err(self.park(&origin, "the message is not a CloudEvent, and the source takes only those (format = \"cloudevents\")".into()));
            }
        }
        let data = if body.is_empty() {
            Data::None
        } else if let Some(raw) = json {
            Data::Json(raw, content_type.unwrap_or_else(|| "application/json".into()))
        } else if let Ok(text) = std::str::from_utf8(body) {
            let ct = content_type
                .filter(|_| !json_type)
                .unwrap_or_else(|| "text/plain".into());
            Data::Text(text, ct)
        } else {
            let ct = content_type
                .filter(|_| !json_type)
                .unwrap_or_else(|| "application/octet-stream".into());
            Data::Base64(base64(body), ct)
        };
        let envelope = self.envelope(&origin);
        let json = envelope.to_json(&data, None);
        if json.len() > MAX_EVENT {
            let why = format!(
                "the message is {} bytes, its event {} bytes; Gale's limit is {MAX_EVENT}",
                body.len(),
                json.len()
            );
            return Err(self.park(&origin, why));
        }
        Ok(envelope.into_event(json))
    }

    /// The event to park for the message: its attributes, the reason, and
    /// the body if it fits.
    fn park(&self, origin: &Origin, reason: String) -> Parked {
        let envelope = self.envelope(origin);
        let fits = self.body.len() / 3 * 4 + 4096 < MAX_EVENT;
        let data = if fits && !self.body.is_empty() {
            let ct = self.content_type.unwrap_or("application/octet-stream");
            Data::Base64(base64(self.body), ct.to_string())
        } else {
            Data::None
        };
        let json = envelope.to_json(&data, Some(&reason));
        Parked {
            reason,
            event: envelope.into_event(json),
        }
    }

    /// The attributes of the event for a plain message.
    fn envelope<'a>(&'a self, origin: &'a Origin<'a>) -> Envelope<'a> {
        let mut extensions: std::collections::BTreeMap<String, String> = Default::default();
        let mut partition_key = origin.key;
        for (key, value) in self.headers {
            let attr = key.to_ascii_lowercase();
            if attr == "partitionkey" && !value.is_empty() {
                partition_key = Some(value);
            }
            if !gale_core::filter::valid_attribute(&attr) || RESERVED.contains(&attr.as_str()) {
                continue;
            }
            extensions
                .entry(attr)
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        Envelope {
            origin,
            partition_key,
            extensions,
        }
    }

    /// The message as the CloudEvent it is by its binding, if it is one.
    fn as_cloudevent(&self) -> Option<NewEvent> {
        let mut http = http::HeaderMap::new();
        let content_type = self.content_type.map(str::to_string).or_else(|| {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
        });
        let structured = content_type
            .as_deref()
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/cloudevents"));
        let mut binary = false;
        let mut data_type = None;
        for (key, value) in self.headers {
            let Some(attr) = strip_prefix_ignore_case(key, self.prefix) else {
                continue;
            };
            let attr = attr.to_ascii_lowercase();
            if !gale_core::filter::valid_attribute(&attr) || attr == "data" {
                continue;
            }
            binary |= attr == "specversion";
            if attr == "datacontenttype" {
                data_type = Some(value.as_str());
                continue;
            }
            let name = http::HeaderName::from_bytes(format!("ce-{attr}").as_bytes()).ok()?;
            http.insert(name, http::HeaderValue::from_str(value).ok()?);
        }
        if !structured && !binary {
            return None;
        }
        // Binary mode: the data's type is the binding's attribute or the
        // message's content type; structured: the content type says so.
        let ct = if structured {
            content_type.as_deref()
        } else {
            data_type.or(content_type.as_deref())
        };
        if let Some(ct) = ct {
            http.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_str(ct).ok()?);
        }
        let mut events = events::parse_for_store(&http, self.body).ok()?;
        (events.len() == 1).then(|| events.remove(0))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A plain message's data.
enum Data<'a> {
    None,
    Json(&'a serde_json::value::RawValue, String),
    Text(&'a str, String),
    Base64(String, String),
}

/// The attributes of a plain message's event.
struct Envelope<'a> {
    origin: &'a Origin<'a>,
    partition_key: Option<&'a str>,
    extensions: std::collections::BTreeMap<String, String>,
}

impl Envelope<'_> {
    /// The event in the JSON format, serialized straight from the message.
    fn to_json(&self, data: &Data, error: Option<&str>) -> Vec<u8> {
        let o = self.origin;
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::new(&mut out);
        let write = |ser: &mut serde_json::Serializer<&mut Vec<u8>>| -> Result<(), serde_json::Error> {
            let mut map = ser.serialize_map(None)?;
            map.serialize_entry("specversion", "1.0")?;
            map.serialize_entry("id", &o.id)?;
            map.serialize_entry("source", o.source)?;
            map.serialize_entry("type", o.ty)?;
            if let Some(subject) = o.subject {
                map.serialize_entry("subject", subject)?;
            }
            if let Some(time) = o.time {
                map.serialize_entry("time", time)?;
            }
            if let Some(key) = self.partition_key {
                map.serialize_entry("partitionkey", key)?;
            }
            for (k, v) in &self.extensions {
                if error.is_none() || k != "galeerror" {
                    map.serialize_entry(k, v)?;
                }
            }
            if let Some(error) = error {
                map.serialize_entry("galeerror", error)?;
            }
            match data {
                Data::None => {}
                Data::Json(raw, ct) => {
                    map.serialize_entry("datacontenttype", ct)?;
                    map.serialize_entry("data", raw)?;
                }
                Data::Text(text, ct) => {
                    map.serialize_entry("datacontenttype", ct)?;
                    map.serialize_entry("data", text)?;
                }
                Data::Base64(b64, ct) => {
                    map.serialize_entry("datacontenttype", ct)?;
                    map.serialize_entry("data_base64", b64)?;
                }
            }
            map.end()
        };
        write(&mut ser).expect("events serialize");
        out
    }

    fn into_event(self, body: Vec<u8>) -> NewEvent {
        NewEvent {
            id: self.origin.id.clone(),
            source: self.origin.source.to_string(),
            partition_key: self.partition_key.map(str::to_string),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
        h.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn origin() -> Origin<'static> {
        Origin {
            ty: "gale.test.message",
            id: "q/S/7".into(),
            source: "/gale/test/S",
            subject: Some("orders.42"),
            time: Some("2026-12-07T10:00:00Z"),
            key: Some("orders.42"),
        }
    }

    fn take(
        h: &[(&str, &str)],
        body: &[u8],
        prefix: &'static str,
        format: MessageFormat,
    ) -> Result<(NewEvent, cloudevents::Event), Parked> {
        let h = headers(h);
        let m = Message {
            body,
            content_type: None,
            headers: &h,
            prefix,
        };
        let stored = m.event(origin(), format)?;
        let event = events::decode(&stored.body).unwrap();
        Ok((stored, event))
    }

    fn any(h: &[(&str, &str)], body: &[u8]) -> (NewEvent, cloudevents::Event) {
        take(h, body, "ce-", MessageFormat::Any).unwrap()
    }

    #[test]
    fn plain_messages_become_events_of_the_sources_type() {
        let (stored, e) = any(
            &[("Region", "eu"), ("Nats-Msg-Id", "x"), ("id", "spoof")],
            br#"{"qty":2}"#,
        );
        assert_eq!(e.ty(), "gale.test.message");
        assert_eq!((e.id(), e.source().as_str()), ("q/S/7", "/gale/test/S"));
        assert_eq!(e.subject(), Some("orders.42"));
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert!(e.extension("natsmsgid").is_none());
        assert_eq!(stored.partition_key.as_deref(), Some("orders.42"));
        let Some(cloudevents::Data::Json(data)) = e.data() else {
            panic!("json data: {:?}", e.data())
        };
        assert_eq!(data["qty"], 2);

        let (stored, e) = any(&[("Content-Type", "text/csv"), ("partitionkey", "k")], b"1,2");
        assert_eq!(e.datacontenttype(), Some("text/csv"));
        assert_eq!(stored.partition_key.as_deref(), Some("k"));
        assert!(matches!(e.data(), Some(cloudevents::Data::String(s)) if s == "1,2"));
        let (_, e) = any(&[], b"not json");
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        let (_, e) = any(&[], &[0xff, 0, 1]);
        assert!(matches!(e.data(), Some(cloudevents::Data::Binary(b)) if b == &[0xff, 0, 1]));
        let (_, e) = any(&[("tag", "a"), ("Tag", "b")], b"");
        assert_eq!(e.extension("tag").unwrap().to_string(), "a,b");
        assert!(e.data().is_none());
    }

    #[test]
    fn cloudevents_are_taken_as_they_are_by_each_binding() {
        let binary = |prefix: &'static str| {
            let h: Vec<(String, &str)> = vec![
                (format!("{prefix}specversion"), "1.0"),
                (format!("{prefix}id"), "e-1"),
                (format!("{prefix}source"), "/shop"),
                (format!("{prefix}type"), "order.placed"),
                (format!("{prefix}partitionkey"), "c%2042"),
            ];
            let mut h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            h.push((
                if prefix == "ce-" {
                    "ce-datacontenttype"
                } else {
                    "content-type"
                },
                "application/json",
            ));
            let (stored, e) = take(&h, br#"{"n":1}"#, prefix, MessageFormat::Cloudevents).unwrap();
            assert_eq!(
                (e.id(), e.source().as_str(), e.ty()),
                ("e-1", "/shop", "order.placed")
            );
            assert_eq!(stored.partition_key.as_deref(), Some("c 42"));
            assert!(matches!(e.data(), Some(cloudevents::Data::Json(d)) if d["n"] == 1));
        };
        for prefix in ["ce-", "ce_", "cloudEvents:", ""] {
            binary(prefix);
        }

        let (_, e) = any(
            &[("Content-Type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","id":"e-2","source":"/s","type":"t","data":{"k":true}}"#,
        );
        assert_eq!((e.id(), e.ty()), ("e-2", "t"));
        // Claims to be one, is not: a plain message, nothing lost.
        let (_, e) = any(&[("Content-Type", "application/cloudevents+json")], b"{}");
        assert_eq!(e.ty(), "gale.test.message");
    }

    #[test]
    fn messages_of_another_format_are_parked_with_the_reason_and_the_body() {
        let parked = take(&[], b"not json", "ce-", MessageFormat::Json).unwrap_err();
        assert!(parked.reason.contains("JSON"), "{}", parked.reason);
        let e = events::decode(&parked.event.body).unwrap();
        assert_eq!(e.id(), "q/S/7");
        assert!(e.extension("galeerror").unwrap().to_string().contains("format"));
        assert!(matches!(e.data(), Some(cloudevents::Data::Binary(b)) if b == b"not json"));
        assert!(take(&[], br#"{"a":1}"#, "ce-", MessageFormat::Json).is_ok());
        assert!(take(&[], br#"{"a":1}"#, "ce-", MessageFormat::Cloudevents).is_err());
    }

    #[test]
    fn oversized_messages_are_parked_without_their_data() {
        let big = vec![b'x'; MAX_EVENT + 10];
        let parked = take(&[], &big, "ce-", MessageFormat::Any).unwrap_err();
        assert!(parked.event.body.len() < 1000);
        let e = events::decode(&parked.event.body).unwrap();
        assert!(e.data().is_none());
        assert!(e.extension("galeerror").unwrap().to_string().contains("limit"));
    }
}
