//! What a Redis stream entry becomes (see [`super::super::message`]).
//!
//! An entry is a list of field-value pairs, not a body with headers, so
//! the source reads it one of two ways:
//! - an entry with a `data` field (or, without one, a `body` field) is a
//!   message: that field is the body, every other field a header, which
//!   becomes an extension attribute where its name is a valid attribute
//!   name. `content-type` names the body's type, and `ce_<attribute>`
//!   fields (with `ce_specversion`) make the entry a CloudEvent in binary
//!   mode, the layout Gale's Redis sink writes;
//! - any other entry is a record: its fields become a JSON object (values
//!   as strings; bytes that are not UTF-8 are replaced), the event's data.
//!   `ce_*` and `content-type` fields are still taken as headers.
//!
//! Field names and values that are not UTF-8 are read with replacement
//! characters; a binary payload belongs in `data`, which is kept as is.

use crate::sources::message::{Message, Origin, Parked};
use gale_core::MessageFormat;
use gale_store::NewEvent;

/// The CloudEvents `type` of an entry that is not itself a CloudEvent.
///
/// Entries carry no type of their own, so there is one type for all of
/// them, named like Gale's other generated events; subscriptions tell
/// streams apart by `source` (`/gale/redis/<stream>`).
pub const MESSAGE_TYPE: &str = "gale.redis.message";

/// The binding's attribute prefix: what Gale's sink writes, and what a
/// CloudEvent written field by field is recognised by.
pub const PREFIX: &str = "ce_";

/// An entry's fields as the stored event, or why it cannot be taken.
/// `subject` is the entry id, `time` when Redis added it (the id's
/// milliseconds), no partition key unless a `partitionkey` field names one.
pub fn entry_event(
    fields: &[(Vec<u8>, Vec<u8>)],
    entry_id: &str,
    id: String,
    source: &str,
    format: MessageFormat,
) -> Result<NewEvent, Parked> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let body_field = fields
        .iter()
        .position(|(k, _)| k == b"data")
        .or_else(|| fields.iter().position(|(k, _)| k == b"body"));
    let mut headers: Vec<(String, String)> = Vec::new();
    let record;
    let (body, content_type): (&[u8], Option<&str>) = match body_field {
        Some(at) => {
            for (i, (k, v)) in fields.iter().enumerate() {
                if i != at {
                    headers.push((text(k), text(v)));
                }
            }
            (&fields[at].1, None)
        }
        None => {
            let mut object = serde_json::Map::new();
            for (k, v) in fields {
                let k = text(k);
                if k.len() > PREFIX.len() && k[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
                    || k.eq_ignore_ascii_case("content-type")
                {
                    headers.push((k, text(v)));
                } else {
                    object.insert(k, serde_json::Value::String(text(v)));
                }
            }
            record = if object.is_empty() {
                Vec::new()
            } else {
                serde_json::to_vec(&object).expect("JSON serializes")
            };
            (&record, (!record.is_empty()).then_some("application/json"))
        }
    };
    let time = entry_time(entry_id);
    let m = Message {
        body,
        content_type,
        headers: &headers,
        prefix: PREFIX,
    };
    let origin = Origin {
        ty: MESSAGE_TYPE,
        id,
        source,
        subject: Some(entry_id),
        time: time.as_deref(),
        key: None,
    };
    m.event(origin, format)
}

/// An entry that could be taken, parked anyway (Redis handed it over too
/// often): its event, with the reason in `galeerror`.
pub fn parked(event: NewEvent, reason: String) -> Parked {
    let mut event = event;
    if let Ok(mut map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&event.body) {
        map.insert("galeerror".into(), serde_json::Value::String(reason.clone()));
        event.body = serde_json::to_vec(&map).expect("JSON serializes");
    }
    Parked { reason, event }
}

/// When Redis added the entry, from its id (`<ms>-<seq>`), as RFC 3339.
fn entry_time(entry_id: &str) -> Option<String> {
    let ms: i64 = entry_id.split_once('-')?.0.parse().ok()?;
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    fn fields(f: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        f.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn event(f: &[(&str, &[u8])], format: MessageFormat) -> Result<cloudevents::Event, Parked> {
        let stored = entry_event(
            &fields(f),
            "1700000000000-3",
            "q/s/1700000000000-3".into(),
            "/gale/redis/s",
            format,
        )?;
        Ok(crate::events::decode(&stored.body).unwrap())
    }

    #[test]
    fn a_data_field_is_the_body_and_the_others_are_headers() {
        let e = event(
            &[("data", br#"{"qty":2}"#), ("region", b"eu")],
            MessageFormat::Any,
        )
        .unwrap();
        assert_eq!(e.ty(), MESSAGE_TYPE);
        assert_eq!(
            (e.id(), e.source().as_str(), e.subject()),
            ("q/s/1700000000000-3", "/gale/redis/s", Some("1700000000000-3"))
        );
        assert_eq!(e.time().unwrap().timestamp_millis(), 1_700_000_000_000);
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert!(matches!(e.data(), Some(cloudevents::Data::Json(d)) if d["qty"] == 2));
        let e = event(
            &[("body", b"hello"), ("content-type", b"text/plain")],
            MessageFormat::Any,
        )
        .unwrap();
        assert!(matches!(e.data(), Some(cloudevents::Data::String(s)) if s == "hello"));
        let e = event(&[("data", &[0xff, 0])], MessageFormat::Any).unwrap();
        assert!(matches!(e.data(), Some(cloudevents::Data::Binary(b)) if b == &[0xff, 0]));
    }

    #[test]
    fn other_entries_are_records_and_plain_json_is_no_cloudevent() {
        let e = event(
            &[
                ("sku", b"a-1"),
                ("qty", b"2"),
                ("specversion", b"1.0"),
                ("id", b"x"),
            ],
            MessageFormat::Json,
        )
        .unwrap();
        assert_eq!(e.ty(), MESSAGE_TYPE);
        assert_eq!(e.datacontenttype(), Some("application/json"));
        let Some(cloudevents::Data::Json(d)) = e.data() else {
            panic!("{:?}", e.data())
        };
        assert_eq!(
            d,
            &serde_json::json!({"sku": "a-1", "qty": "2", "specversion": "1.0", "id": "x"})
        );
        // Neither JSON nor a CloudEvent: parked under format = "json".
        assert!(event(&[("data", b"not json")], MessageFormat::Json).is_err());
    }

    #[test]
    fn ce_fields_make_a_cloudevent_in_binary_mode() {
        let e = event(
            &[
                ("ce_specversion", b"1.0"),
                ("ce_id", b"e-1"),
                ("ce_source", b"/shop"),
                ("ce_type", b"order.placed"),
                ("content-type", b"application/json"),
                ("data", br#"{"n":1}"#),
            ],
            MessageFormat::Cloudevents,
        )
        .unwrap();
        assert_eq!(
            (e.id(), e.source().as_str(), e.ty()),
            ("e-1", "/shop", "order.placed")
        );
        assert!(matches!(e.data(), Some(cloudevents::Data::Json(d)) if d["n"] == 1));
    }
}
