//! CloudEvents: how Gale reads them from HTTP requests (binary, structured
//! and batch mode), stores them (the JSON event format), reads them back,
//! hands them to functions (as a `gale:events` event or a binary-mode
//! request) and takes what functions publish.
//!
//! Every event is validated by the CloudEvents SDK's own types before
//! anything is stored. Events of the common shape take a one-pass reader
//! ([`simple`]) instead of the SDK's generic one.

use bytes::Bytes;
use cloudevents::{AttributesReader, AttributesWriter, Data, Event};
use gale_core::{Code, Error};
use gale_store::NewEvent;
use http::{HeaderMap, header};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

mod simple;
use simple::{Simple, is_json};

/// Largest single event accepted (its JSON form).
pub const MAX_EVENT: usize = 1 << 20;
/// Largest publish request (a batch) accepted.
pub const MAX_PUBLISH: usize = 8 << 20;

/// Extension attributes Gale adds to a dead letter.
pub const FAILURE_ATTRIBUTES: [&str; 6] = [
    "galeerror",
    "galeattempts",
    "galefunction",
    "galeversion",
    "galesink",
    "galetopic",
];

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Code::EventInvalid, message).with_hint(
        "send a CloudEvent 1.0: ce-id, ce-source, ce-type and ce-specversion headers with the data as the body, \
         or a JSON event with Content-Type: application/cloudevents+json",
    )
}

/// Reads the CloudEvents in an HTTP request, in whichever mode it uses.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let events = if content_type.starts_with(BATCH) {
        let events: Vec<Event> = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the batch is not a JSON array of CloudEvents: {e}")))?;
        if events.is_empty() {
            return Err(invalid("the batch holds no events"));
        }
        events
    } else if content_type.starts_with(STRUCTURED) {
        vec![serde_json::from_slice(body).map_err(|e| invalid(format!("not a CloudEvent in JSON: {e}")))?]
    } else {
        vec![binary(headers, &content_type, body)?]
    };
    Ok(events)
}

/// The events of a publish request in their stored form, each within the
/// size limit (checked on what is stored, encoded once).
///
/// Events of the common shape take a one-pass path ([`simple`]):
/// structured and batch ones are stored as they were sent, binary ones
/// encoded once. The rest go through the SDK and are stored in its JSON
/// form.
pub fn parse_for_store(headers: &HeaderMap, body: &[u8]) -> Result<Vec<NewEvent>, Error> {
    let stored = match simple_for_store(headers, body) {
        Some(stored) => stored,
        None => parse(headers, body)?.iter().map(encode).collect(),
    };
    if let Some(big) = stored.iter().find(|e| e.body.len() > MAX_EVENT) {
        return Err(Error::new(
            Code::EventTooLarge,
            format!(
                "event {} is {} bytes; the limit is {MAX_EVENT}",
                big.id,
                big.body.len()
            ),
        )
        .with_hint("keep events small: store large payloads elsewhere and send a reference"));
    }
    Ok(stored)
}

/// The events of a request whose every event has the simple shape:
/// structured and batch events as sent, a binary-mode event encoded once;
/// `None` if any has not.
fn simple_for_store(headers: &HeaderMap, body: &[u8]) -> Option<Vec<NewEvent>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let as_sent = |json: &[u8]| Some(Simple::read(json)?.stored(json.to_vec()));
    if content_type.starts_with(BATCH) {
        let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).ok()?;
        if events.is_empty() {
            return None;
        }
        events.iter().map(|e| as_sent(e.get().as_bytes())).collect()
    } else if content_type.starts_with(STRUCTURED) {
        Some(vec![as_sent(body)?])
    } else {
        let e = Simple::from_headers(headers, body)?;
        let json = e.to_json()?;
        Some(vec![e.stored(json)])
    }
}

/// A stored event (or any CloudEvent in JSON), as the SDK's type.
pub fn decode(json: &[u8]) -> serde_json::Result<Event> {
    match Simple::read(json).and_then(Simple::into_event) {
        Some(event) => Ok(event),
        None => serde_json::from_slice(json),
    }
}

/// Binary mode: attributes from `ce-*` headers (percent-decoded, as the
/// HTTP binding requires), `Content-Type` as `datacontenttype`, the body as data.
fn binary(headers: &HeaderMap, content_type: &str, body: &[u8]) -> Result<Event, Error> {
    let mut attributes = serde_json::Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .ok()
            .and_then(|v| percent_decode_str(v).decode_utf8().ok())
            .ok_or_else(|| invalid(format!("header {name} is not valid percent-encoded UTF-8")))?;
        if !gale_core::filter::valid_attribute(attr) {
            return Err(invalid(format!(
                "header {name} does not name a valid attribute (lowercase letters and digits, at most 20)"
            )));
        }
        if attr == "data" || attr == "data_base64" {
            return Err(invalid(format!(
                "header {name} is not an attribute: the data is the body"
            )));
        }
        attributes.insert(attr.to_string(), text.into_owned().into());
    }
    if attributes.is_empty() {
        return Err(invalid(format!(
            "the request carries no CloudEvent: no ce-* headers, and Content-Type {content_type:?} is neither \
             {STRUCTURED} nor {BATCH}"
        )));
    }
    for required in ["specversion", "id", "source", "type"] {
        if !attributes.contains_key(required) {
            return Err(invalid(format!(
                "the required attribute `{required}` is missing (header ce-{required})"
            )));
        }
    }
    let mut event: Event = serde_json::from_value(attributes.into()).map_err(|e| invalid(e.to_string()))?;
    if !body.is_empty() {
        let ct = (!content_type.is_empty()).then(|| {
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        });
        let data = if is_json(content_type) {
            json_data(body, ct.as_deref())
                .map_err(|e| invalid(format!("Content-Type says JSON but the body is not: {e}")))?
        } else {
            match std::str::from_utf8(body) {
                Ok(text) if content_type.starts_with("text/") => Data::String(text.to_string()),
                _ => Data::Binary(body.to_vec()),
            }
        };
        event.set_data_unchecked(data);
        if let Some(ct) = ct {
            event.set_datacontenttype(Some(ct));
        }
    }
    Ok(event)
}

/// JSON data (`bytes`, checked to be JSON) as it is stored under
/// `content_type`, which is kept as sent: a JSON value where the SDK reads
/// that content type back as JSON, otherwise the text itself
/// (`Application/JSON`, `...+json; charset=...`), which the SDK reads back
/// as a string of the same bytes. As a JSON value there, the stored event
/// could not be read back at all.
fn json_data(bytes: &[u8], content_type: Option<&str>) -> serde_json::Result<Data> {
    let json: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(if content_type.is_none_or(simple::sdk_reads_json) {
        Data::Json(json)
    } else {
        Data::String(String::from_utf8_lossy(bytes).into_owned())
    })
}

/// An event as a `gale:events` handler receives it.
pub fn to_guest(event: &Event) -> gale_wasm::events::GuestEvent {
    gale_wasm::events::GuestEvent {
        id: event.id().to_string(),
        source: event.source().to_string(),
        type_: event.ty().to_string(),
        subject: event.subject().map(str::to_string),
        time: event.time().map(|t| t.to_rfc3339()),
        datacontenttype: event.datacontenttype().map(str::to_string),
        dataschema: event.dataschema().map(|u| u.to_string()),
        extensions: event
            .iter_extensions()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        data: match event.data() {
            Some(Data::Binary(b)) => b.clone(),
            Some(Data::String(s)) => s.clone().into_bytes(),
            Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
            None => Vec::new(),
        },
    }
}

/// The id of the `index`th event an invocation published without one:
/// a digest of the function, what the invocation ran for (`origin`: the
/// events delivered to it, or its request id) and the index, so an
/// invocation run again for the same events publishes the same ids.
pub fn derived_id(function: &str, origin: &str, index: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [function.as_bytes(), b"\n", origin.as_bytes(), b"\n"] {
        h.update(part);
    }
    h.update(index.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A CloudEvent from what a handler published (with its id already
/// given), validated by the SDK's types; JSON data (by content type) must
/// parse.
pub fn from_guest(g: gale_wasm::events::GuestEvent) -> Result<Event, String> {
    if g.id.is_empty() {
        return Err("the event has no id".into());
    }
    let mut attributes = serde_json::Map::new();
    attributes.insert("specversion".into(), "1.0".into());
    attributes.insert("id".into(), g.id.into());
    attributes.insert("source".into(), g.source.into());
    attributes.insert("type".into(), g.type_.into());
    for (name, value) in [
        ("subject", g.subject),
        ("time", g.time),
        ("dataschema", g.dataschema),
    ] {
        if let Some(v) = value {
            attributes.insert(name.into(), v.into());
        }
    }
    for (name, value) in g.extensions {
        if !gale_core::filter::valid_attribute(&name) {
            return Err(format!("{name:?} is not a valid attribute name"));
        }
        attributes.insert(name, value.into());
    }
    let mut event: Event = serde_json::from_value(attributes.into()).map_err(|e| e.to_string())?;
    if !g.data.is_empty() {
        let ct = g.datacontenttype.clone().unwrap_or_default().to_ascii_lowercase();
        let data = if is_json(&ct)
            || (ct.is_empty() && serde_json::from_slice::<serde_json::Value>(&g.data).is_ok())
        {
            json_data(&g.data, g.datacontenttype.as_deref())
                .map_err(|e| format!("its data is not the JSON its content type says: {e}"))?
        } else {
            match String::from_utf8(g.data) {
                Ok(text) if ct.starts_with("text/") => Data::String(text),
                Ok(text) => Data::Binary(text.into_bytes()),
                Err(bytes) => Data::Binary(bytes.into_bytes()),
            }
        };
        event.set_data_unchecked(data);
    }
    let ct = g.datacontenttype.or_else(|| match event.data() {
        Some(Data::Json(_)) => Some("application/json".into()),
        _ => None,
    });
    event.set_datacontenttype(ct);
    Ok(event)
}

/// The stored form of an event.
pub fn encode(event: &Event) -> NewEvent {
    NewEvent {
        id: event.id().to_string(),
        source: event.source().to_string(),
        partition_key: event.extension("partitionkey").map(|v| v.to_string()),
        body: serde_json::to_vec(event).unwrap_or_default(),
    }
}

/// An attribute or extension of an event, as text (for filters).
pub fn attribute(event: &Event, name: &str) -> Option<String> {
    match name {
        "id" => Some(event.id().to_string()),
        "source" => Some(event.source().to_string()),
        "type" => Some(event.ty().to_string()),
        "specversion" => Some(event.specversion().to_string()),
        "subject" => event.subject().map(str::to_string),
        "time" => event.time().map(|t| t.to_rfc3339()),
        "datacontenttype" => event.datacontenttype().map(str::to_string),
        "dataschema" => event.dataschema().map(|u| u.to_string()),
        other => event.extension(other).map(|v| v.to_string()),
    }
}

/// Characters kept as they are in a `ce-*` header value; the rest are
/// percent-encoded (the HTTP binding's rule: printable ASCII but space,
/// `"` and `%`).
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// An event as a binary-mode HTTP request, the way Knative delivers events
/// to a subscriber: how a `wasi:http` component receives its events.
pub fn to_request(event: &Event) -> http::Request<Bytes> {
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header(header::HOST, "localhost");
    let mut header = |name: &str, value: &str| {
        let value = utf8_percent_encode(value, HEADER_ESCAPES).to_string();
        builder = std::mem::take(&mut builder).header(format!("ce-{name}"), value);
    };
    header("specversion", &event.specversion().to_string());
    header("id", event.id());
    header("source", &event.source().to_string());
    header("type", event.ty());
    if let Some(v) = event.subject() {
        header("subject", v);
    }
    if let Some(v) = event.time() {
        header("time", &v.to_rfc3339());
    }
    if let Some(v) = event.dataschema() {
        header("dataschema", v.as_str());
    }
    for (name, value) in event.iter_extensions() {
        header(name, &value.to_string());
    }
    let body = match event.data() {
        Some(Data::Binary(b)) => Bytes::from(b.clone()),
        Some(Data::String(s)) => Bytes::from(s.clone()),
        Some(Data::Json(v)) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        None => Bytes::new(),
    };
    let content_type = event
        .datacontenttype()
        .map(str::to_string)
        .or_else(|| match event.data() {
            Some(Data::Json(_)) => Some("application/json".into()),
            _ => None,
        });
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| http::Request::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn binary_mode_reads_headers_and_decodes_percent_escapes() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/orders"),
            ("ce-type", "order_placed"),
            ("ce-subject", "caf%C3%A9"),
            ("ce-partitionkey", "customer-7"),
            ("content-type", "application/json"),
        ]);
        let e = &parse(&h, br#"{"sku":"apple"}"#).unwrap()[0];
        assert_eq!(
            (e.id(), e.ty(), e.subject()),
            ("42", "order_placed", Some("café"))
        );
        assert_eq!(attribute(e, "partitionkey").as_deref(), Some("customer-7"));
        assert_eq!(encode(e).partition_key.as_deref(), Some("customer-7"));
        assert!(matches!(e.data(), Some(Data::Json(v)) if v["sku"] == "apple"));
        // And back out as a request: the same attributes, escaped again.
        let r = to_request(e);
        assert_eq!(r.headers()["ce-subject"], "caf%C3%A9");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.body(), &Bytes::from(r#"{"sku":"apple"}"#));
    }

    #[test]
    fn every_stored_binary_event_reads_back_with_its_data() {
        // JSON by Gale's reading of the content type, though not by the
        // SDK's (which is case-sensitive and ignores parameters after
        // `+json`): the data must still come back as it was sent.
        for ct in [
            "application/json",
            "Application/JSON",
            "application/vnd.shop+json; charset=utf-8",
            "text/plain",
            "application/octet-stream",
        ] {
            let h = headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", ct),
            ]);
            let stored = parse_for_store(&h, br#"{"n":1}"#).unwrap();
            let event = decode(&stored[0].body).unwrap_or_else(|e| panic!("{ct}: unreadable: {e}"));
            assert_eq!(event.datacontenttype(), Some(ct));
            assert_eq!(to_guest(&event).data, br#"{"n":1}"#, "{ct}");
            // And the same event published by a handler.
            let published = from_guest(to_guest(&event)).unwrap();
            assert_eq!(published.id(), "1");
            let event = decode(&encode(&published).body).unwrap_or_else(|e| panic!("{ct}: unreadable: {e}"));
            assert_eq!(to_guest(&event).data, br#"{"n":1}"#, "{ct}");
        }
    }

    #[test]
    fn ids_derived_from_an_invocation_repeat_only_for_the_same_invocation() {
        let id = derived_id("inventory", "orders/42", 0);
        assert_eq!(id, derived_id("inventory", "orders/42", 0));
        assert_eq!(id.len(), 32);
        for other in [
            derived_id("inventory", "orders/42", 1),
            derived_id("inventory", "orders/43", 0),
            derived_id("billing", "orders/42", 0),
            derived_id("inventory\norders", "42", 0),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn structured_and_batch_modes_parse() {
        let one = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"n":1}}"#;
        let e = parse(&headers(&[("content-type", STRUCTURED)]), one).unwrap();
        assert_eq!(e[0].id(), "1");
        let batch = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},
                         {"specversion":"1.0","id":"2","source":"s","type":"t","data_base64":"AAE="}]"#;
        let e = parse(&headers(&[("content-type", BATCH)]), batch).unwrap();
        assert_eq!(e.len(), 2);
        assert!(matches!(e[1].data(), Some(Data::Binary(b)) if b == &[0, 1]));
    }

    #[test]
    fn malformed_events_say_what_is_wrong() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], &'a str);
        let cases: &[Case] = &[
            (
                &[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "s")],
                b"",
                "`type` is missing",
            ),
            (&[("content-type", "text/plain")], b"hi", "no CloudEvent"),
            (&[("content-type", STRUCTURED)], b"{\"id\":1}", "not a CloudEvent"),
            (&[("content-type", BATCH)], b"[]", "no events"),
            (
                &[
                    ("ce-specversion", "0.1"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                b"",
                "0.1",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("content-type", "application/json"),
                ],
                b"{nope",
                "says JSON",
            ),
        ];
        for (h, body, says) in cases {
            let err = parse(&headers(h), body).unwrap_err();
            assert_eq!(err.code, Code::EventInvalid);
            assert!(err.message.contains(says), "{says}: {}", err.message);
        }
        let big = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","data":"{}"}}"#,
            "x".repeat(MAX_EVENT)
        );
        let err = parse_for_store(&headers(&[("content-type", STRUCTURED)]), big.as_bytes()).unwrap_err();
        assert_eq!(err.code, Code::EventTooLarge);
    }
}
