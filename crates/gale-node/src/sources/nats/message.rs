//! What a NATS message becomes: the CloudEvent it carries, or one made
//! around it.

use crate::events::{self, MAX_EVENT};
use async_nats::HeaderMap;
use gale_store::NewEvent;
use serde::Serializer;
use serde::ser::SerializeMap;

/// The CloudEvents `type` of a message that is not itself a CloudEvent.
///
/// NATS messages carry no type of their own, so there is one type for all
/// of them, named like Gale's other generated events (`gale.db.row.*`):
/// `gale.` for a Gale-made event, then where it came from and what it is.
/// Subscriptions tell messages apart by `subject` (the NATS subject) and
/// `source` (the stream or subscription).
pub const MESSAGE_TYPE: &str = "gale.nats.message";

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

/// A NATS message as the event stored for it.
///
/// A message that is a CloudEvent by the CloudEvents NATS binding is taken
/// as that event (its own id, source and type): structured mode when its
/// `Content-Type` header starts with `application/cloudevents`, binary
/// mode when it carries a `ce-specversion` header (attributes in `ce-*`
/// headers, percent-encoded; `ce-datacontenttype` for the data's type, as
/// that binding has it, the body as the data). One that claims to be a
/// CloudEvent but is not a valid one is taken as a plain message, so
/// nothing is lost.
///
/// Any other message becomes a [`MESSAGE_TYPE`] event:
/// - `id` as given (the JetStream position, or a fresh UUID), `source` the
///   stream (`/gale/nats/<stream>`) or the subscription
///   (`nats://<host:port>/<subject>`), `subject` the message's NATS
///   subject, `time` when JetStream stored it;
/// - `data` the body: JSON if it parses as JSON and the `Content-Type`
///   header is absent or names JSON; otherwise text if it is UTF-8, with
///   the header's type (`text/plain` without one), else `data_base64`
///   (`application/octet-stream` without one);
/// - each header whose lowercased name is a valid extension name
///   (lowercase letters and digits, at most 20) and no CloudEvents
///   attribute becomes an extension, its values joined with `,`;
/// - `partitionkey` is the `partitionkey` header if there is one, else the
///   NATS subject: NATS orders messages per subject, and subjects usually
///   name the entity (`orders.42`), so per-key subscriptions keep that order.
///
/// An event over Gale's size limit would block the stream forever; it is
/// replaced by the same event without its data and with a `galeerror`
/// extension saying why (and logged), so the messages behind it flow.
pub fn message_event(
    name: &str,
    message: &async_nats::Message,
    id: String,
    source: &str,
    time: Option<&str>,
) -> NewEvent {
    let body = &message.payload[..];
    let headers = message.headers.as_ref();
    if let Some(event) = headers.and_then(|h| as_cloudevent(h, body)) {
        return event;
    }
    let content_type = headers
        .and_then(|h| h.get("Content-Type").or_else(|| h.get("content-type")))
        .map(|v| v.as_str().to_string());
    let json_type = content_type
        .as_deref()
        .is_none_or(|ct| ct.to_ascii_lowercase().contains("json"));
    let data = if body.is_empty() {
        Data::None
    } else if json_type && let Ok(raw) = serde_json::from_slice::<&serde_json::value::RawValue>(body) {
        Data::Json(
            raw,
            content_type.clone().unwrap_or_else(|| "application/json".into()),
        )
    } else if let Ok(text) = std::str::from_utf8(body) {
        let ct = content_type
            .filter(|_| !json_type)
            .unwrap_or_else(|| "text/plain".into());
        Data::Text(text, ct)
    } else {
        use base64::Engine;
        let ct = content_type
            .filter(|_| !json_type)
            .unwrap_or_else(|| "application/octet-stream".into());
        Data::Base64(base64::engine::general_purpose::STANDARD.encode(body), ct)
    };
    let mut extensions: Vec<(String, String)> = Vec::new();
    if let Some(h) = headers {
        for (key, values) in h.iter() {
            let attr = AsRef::<str>::as_ref(key).to_ascii_lowercase();
            if !gale_core::filter::valid_attribute(&attr)
                || RESERVED.contains(&attr.as_str())
                || extensions.iter().any(|(k, _)| *k == attr)
            {
                continue;
            }
            let value = values.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(",");
            extensions.push((attr, value));
        }
    }
    extensions.sort();
    let partition_key = headers
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case("partitionkey"))
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_str().to_string())
        })
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| message.subject.to_string());
    let envelope = Envelope {
        id: &id,
        source,
        subject: message.subject.as_str(),
        time,
        partition_key: &partition_key,
        extensions: &extensions,
    };
    let mut json = envelope.to_json(&data, None);
    if json.len() > MAX_EVENT {
        let why = format!(
            "the message on `{}` is {} bytes, its event {} bytes; Gale's limit is {MAX_EVENT}: the data was left out",
            message.subject,
            body.len(),
            json.len()
        );
        tracing::warn!(source = %name, id = %id, "{why}");
        json = envelope.to_json(&Data::None, Some(&why));
    }
    NewEvent {
        id,
        source: source.to_string(),
        partition_key: Some(partition_key),
        body: json,
    }
}

/// A message that is a CloudEvent by the NATS binding, as stored.
fn as_cloudevent(headers: &HeaderMap, body: &[u8]) -> Option<NewEvent> {
    let mut http = http::HeaderMap::new();
    let mut structured = false;
    let mut binary = false;
    for (key, values) in headers.iter() {
        let name = AsRef::<str>::as_ref(key).to_ascii_lowercase();
        let Some(value) = values.first() else { continue };
        if name == "content-type" {
            structured = value
                .as_str()
                .to_ascii_lowercase()
                .starts_with("application/cloudevents");
            if let Ok(v) = http::HeaderValue::from_str(value.as_str()) {
                http.insert(http::header::CONTENT_TYPE, v);
            }
            continue;
        }
        let Some(attr) = name.strip_prefix("ce-") else {
            continue;
        };
        binary |= attr == "specversion";
        // The NATS binding keeps the data's type in `ce-datacontenttype`
        // (Content-Type says structured or not); HTTP's in Content-Type.
        let target = if attr == "datacontenttype" {
            http::header::CONTENT_TYPE
        } else {
            http::HeaderName::from_bytes(name.as_bytes()).ok()?
        };
        http.insert(target, http::HeaderValue::from_str(value.as_str()).ok()?);
    }
    if !structured && !binary {
        return None;
    }
    if binary
        && !structured
        && !headers
            .iter()
            .any(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case("ce-datacontenttype"))
    {
        // No type for the data: HTTP's reading must not take the plain
        // Content-Type header, if any, for it.
        http.remove(http::header::CONTENT_TYPE);
    }
    let mut events = events::parse_for_store(&http, body).ok()?;
    (events.len() == 1).then(|| events.remove(0))
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
    id: &'a str,
    source: &'a str,
    subject: &'a str,
    time: Option<&'a str>,
    partition_key: &'a str,
    extensions: &'a [(String, String)],
}

impl Envelope<'_> {
    /// The event in the JSON format, serialized straight from the message.
    fn to_json(&self, data: &Data, error: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::new(&mut out);
        let write = |ser: &mut serde_json::Serializer<&mut Vec<u8>>| -> Result<(), serde_json::Error> {
            let mut map = ser.serialize_map(None)?;
            map.serialize_entry("specversion", "1.0")?;
            map.serialize_entry("id", self.id)?;
            map.serialize_entry("source", self.source)?;
            map.serialize_entry("type", MESSAGE_TYPE)?;
            map.serialize_entry("subject", self.subject)?;
            if let Some(time) = self.time {
                map.serialize_entry("time", time)?;
            }
            map.serialize_entry("partitionkey", self.partition_key)?;
            for (k, v) in self.extensions {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cloudevents::AttributesReader;

    fn message(subject: &str, headers: &[(&str, &str)], body: &[u8]) -> async_nats::Message {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, *v);
        }
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::copy_from_slice(body),
            headers: (!headers.is_empty()).then_some(h),
            status: None,
            description: None,
            length: body.len(),
        }
    }

    fn event(m: &async_nats::Message) -> (NewEvent, cloudevents::Event) {
        let stored = message_event(
            "q",
            m,
            "q/S/7".into(),
            "/gale/nats/S",
            Some("2026-12-07T10:00:00Z"),
        );
        let event = events::decode(&stored.body).unwrap();
        (stored, event)
    }

    #[test]
    fn plain_messages_become_gale_nats_messages() {
        let (stored, e) = event(&message(
            "orders.42",
            &[("Region", "eu"), ("Nats-Msg-Id", "x"), ("id", "spoof")],
            br#"{"qty":2}"#,
        ));
        assert_eq!(e.ty(), MESSAGE_TYPE);
        assert_eq!((e.id(), e.source().as_str()), ("q/S/7", "/gale/nats/S"));
        assert_eq!(e.subject(), Some("orders.42"));
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert!(e.extension("natsmsgid").is_none());
        assert_eq!(stored.partition_key.as_deref(), Some("orders.42"));
        let Some(cloudevents::Data::Json(data)) = e.data() else {
            panic!("json data: {:?}", e.data())
        };
        assert_eq!(data["qty"], 2);

        let (_, e) = event(&message(
            "a",
            &[("Content-Type", "text/csv"), ("partitionkey", "k")],
            b"1,2",
        ));
        assert_eq!(e.datacontenttype(), Some("text/csv"));
        assert_eq!(e.extension("partitionkey").unwrap().to_string(), "k");
        assert!(matches!(e.data(), Some(cloudevents::Data::String(s)) if s == "1,2"));
        let (_, e) = event(&message("a", &[], b"not json"));
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        let (_, e) = event(&message("a", &[], &[0xff, 0, 1]));
        assert!(matches!(e.data(), Some(cloudevents::Data::Binary(b)) if b == &[0xff, 0, 1]));
    }

    #[test]
    fn cloudevents_in_nats_are_taken_as_they_are() {
        let (stored, e) = event(&message(
            "a",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", "/shop"),
                ("ce-type", "order.placed"),
                ("ce-datacontenttype", "application/json"),
                ("ce-partitionkey", "c%2042"),
            ],
            br#"{"n":1}"#,
        ));
        assert_eq!(
            (e.id(), e.source().as_str(), e.ty()),
            ("e-1", "/shop", "order.placed")
        );
        assert_eq!(stored.partition_key.as_deref(), Some("c 42"));
        assert!(matches!(e.data(), Some(cloudevents::Data::Json(d)) if d["n"] == 1));

        let (_, e) = event(&message(
            "a",
            &[("Content-Type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","id":"e-2","source":"/s","type":"t","data":{"k":true}}"#,
        ));
        assert_eq!((e.id(), e.ty()), ("e-2", "t"));
        // Claims to be one, is not: a plain message, nothing lost.
        let (_, e) = event(&message(
            "a",
            &[("Content-Type", "application/cloudevents+json")],
            b"{}",
        ));
        assert_eq!(e.ty(), MESSAGE_TYPE);
    }

    #[test]
    fn oversized_messages_keep_flowing_without_their_data() {
        let big = vec![b'x'; MAX_EVENT + 10];
        let (stored, e) = event(&message("big", &[], &big));
        assert!(stored.body.len() < 1000);
        assert!(e.data().is_none());
        assert!(e.extension("galeerror").unwrap().to_string().contains("limit"));
    }
}
