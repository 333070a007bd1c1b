//! One-pass reading and writing of CloudEvents of the common shape.
//!
//! The CloudEvents SDK reads an event by building a `serde_json::Value` of
//! the whole document, copying it into a map and deserialising each field
//! from that, a large share of a publish request's and a delivery's CPU.
//! Most events are simple: specversion
//! 1.0, string attributes, string extensions, JSON data. [`Simple`] takes
//! exactly that shape, from JSON or from binary-mode headers, in one pass
//! and borrowing from the input, and declines everything else (a `time`, a
//! `dataschema`, `data_base64`, a `null`, a duplicate, an extension that is
//! not a string, data that is not JSON, malformed input, ...), which then
//! goes through the SDK as before. It accepts only what the SDK reads the
//! same way, so an event it stores is one the SDK reads back as the SDK's
//! own path would have stored it; the tests hold it to that.

use axum::http::{HeaderMap, header};
use cloudevents::{Data, Event, EventBuilder, EventBuilderV10};
use percent_encoding::percent_decode_str;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Extensions a simple event has at most: duplicates are found by a linear
/// scan, which must stay short; an event with more goes to the SDK.
const MAX_EXTENSIONS: usize = 32;

/// A CloudEvent 1.0 of the simple shape, borrowed from its JSON text.
#[derive(Debug, Default)]
pub(crate) struct Simple<'a> {
    pub id: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub ty: Cow<'a, str>,
    pub subject: Option<Cow<'a, str>>,
    pub datacontenttype: Option<Cow<'a, str>>,
    pub data: Option<&'a RawValue>,
    pub extensions: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Simple<'a> {
    /// Reads `json` if it is an event of the simple shape; `None` otherwise
    /// (valid or not: the SDK decides).
    pub fn read(json: &'a [u8]) -> Option<Simple<'a>> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let event = de.deserialize_map(SimpleVisitor).ok()?;
        de.end().ok()?;
        event.consistent().then_some(event)
    }

    /// Reads a binary-mode request (attributes in `ce-*` headers, the body
    /// as the data) if it is of the simple shape: JSON data, or none.
    pub fn from_headers(headers: &'a HeaderMap, body: &'a [u8]) -> Option<Simple<'a>> {
        let mut event = Simple::default();
        let mut version = false;
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            if !gale_core::filter::valid_attribute(attr) {
                return None;
            }
            let text = percent_decode_str(value.to_str().ok()?).decode_utf8().ok()?;
            let slot = match attr {
                "specversion" if !version && text == "1.0" => {
                    version = true;
                    continue;
                }
                "id" => &mut event.id,
                "source" => &mut event.source,
                "type" => &mut event.ty,
                "subject" if event.subject.is_none() => {
                    event.subject = Some(text);
                    continue;
                }
                "specversion" | "subject" | "time" | "dataschema" | "data" | "data_base64" => return None,
                _ if event.extensions.len() == MAX_EXTENSIONS || event.extension(attr).is_some() => {
                    return None;
                }
                _ => {
                    event.extensions.push((Cow::Borrowed(attr), text));
                    continue;
                }
            };
            if !slot.is_empty() {
                return None;
            }
            *slot = text;
        }
        if !version || [&event.id, &event.source, &event.ty].iter().any(|a| a.is_empty()) {
            return None;
        }
        if !body.is_empty() {
            // The content type is kept as sent, so it must be JSON by the
            // SDK's rule as well as by Gale's.
            let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
            if !is_json(&ct.to_ascii_lowercase()) {
                return None;
            }
            event.datacontenttype = Some(Cow::Borrowed(ct));
            if !event.data_is_json() {
                return None;
            }
            event.data = Some(serde_json::from_slice(body).ok()?);
        }
        Some(event)
    }

    /// The event in the JSON format, as it is stored.
    pub fn to_json(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(160 + self.data.map_or(0, |d| d.get().len()));
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None).ok()?;
        let attributes = [
            ("specversion", Some("1.0")),
            ("id", Some(self.id.as_ref())),
            ("type", Some(self.ty.as_ref())),
            ("source", Some(self.source.as_ref())),
            ("datacontenttype", self.datacontenttype.as_deref()),
            ("subject", self.subject.as_deref()),
        ];
        for (name, value) in attributes {
            if let Some(value) = value {
                map.serialize_entry(name, value).ok()?;
            }
        }
        for (name, value) in &self.extensions {
            map.serialize_entry(name, value).ok()?;
        }
        if let Some(data) = self.data {
            map.serialize_entry("data", data).ok()?;
        }
        map.end().ok()?;
        Some(out)
    }

    /// The event to store, with `body` its JSON form.
    pub fn stored(self, body: Vec<u8>) -> gale_store::NewEvent {
        gale_store::NewEvent {
            partition_key: self.extension("partitionkey").map(str::to_string),
            id: self.id.into_owned(),
            source: self.source.into_owned(),
            body,
        }
    }

    /// The value of an extension attribute.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Whether the SDK reads `data` as JSON: by the content type, which
    /// defaults to JSON.
    fn data_is_json(&self) -> bool {
        sdk_reads_json(self.datacontenttype.as_deref().unwrap_or("application/json"))
    }

    /// Data that is not JSON by its content type must be a JSON string,
    /// as the SDK requires.
    fn consistent(&self) -> bool {
        match self.data {
            Some(raw) if !self.data_is_json() => raw.get().starts_with('"'),
            _ => true,
        }
    }

    /// The event as the SDK's type, equal to what the SDK reads from the
    /// same JSON.
    pub fn into_event(self) -> Option<Event> {
        let data = match self.data {
            Some(raw) if self.data_is_json() => Some(Data::Json(serde_json::from_str(raw.get()).ok()?)),
            Some(raw) => Some(Data::String(serde_json::from_str(raw.get()).ok()?)),
            None => None,
        };
        let mut builder = EventBuilderV10::new().id(self.id).source(self.source).ty(self.ty);
        if let Some(subject) = self.subject {
            builder = builder.subject(subject);
        }
        for (name, value) in self.extensions {
            builder = builder.extension(&name, value.into_owned());
        }
        let mut event = builder.build().ok()?;
        if let Some(data) = data {
            event.set_data_unchecked(data);
        }
        // After the data: setting data does not touch the content type,
        // and an absent one must stay absent.
        cloudevents::AttributesWriter::set_datacontenttype(&mut event, self.datacontenttype);
        Some(event)
    }
}

/// The SDK's rule for a stored event's `data`: JSON if the content type
/// is, taken as it is (case-sensitive, parameters after `+json` not
/// allowed); otherwise a string.
pub(super) fn sdk_reads_json(content_type: &str) -> bool {
    content_type.starts_with("application/json")
        || content_type.starts_with("text/json")
        || content_type.ends_with("+json")
}

/// A string borrowed from the input where it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct SimpleVisitor;

/// Declines the event: the caller falls back to the SDK.
fn decline<E: de::Error>() -> E {
    E::custom("not of the simple shape")
}

/// Marks a key as seen; a second time declines (the SDK keeps the last).
fn seen<E: de::Error>(flag: &mut bool) -> Result<(), E> {
    if std::mem::replace(flag, true) {
        return Err(decline());
    }
    Ok(())
}

impl<'de> Visitor<'de> for SimpleVisitor {
    type Value = Simple<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CloudEvent")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut event = Simple::default();
        let (mut version, mut id, mut source, mut ty) = (false, false, false, false);
        let (mut subject, mut content_type, mut data) = (false, false, false);
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "specversion" => {
                    seen(&mut version)?;
                    if map.next_value::<Text<'de>>()?.0 != "1.0" {
                        return Err(decline());
                    }
                }
                "id" => {
                    seen(&mut id)?;
                    event.id = map.next_value::<Text<'de>>()?.0;
                }
                "source" => {
                    seen(&mut source)?;
                    event.source = map.next_value::<Text<'de>>()?.0;
                }
                "type" => {
                    seen(&mut ty)?;
                    event.ty = map.next_value::<Text<'de>>()?.0;
                }
                "subject" => {
                    seen(&mut subject)?;
                    event.subject = Some(map.next_value::<Text<'de>>()?.0);
                }
                "datacontenttype" => {
                    seen(&mut content_type)?;
                    event.datacontenttype = Some(map.next_value::<Text<'de>>()?.0);
                }
                "data" => {
                    seen(&mut data)?;
                    let raw: &'de RawValue = map.next_value()?;
                    if raw.get() == "null" {
                        return Err(decline());
                    }
                    event.data = Some(raw);
                }
                // Read by the SDK with rules of their own (or parsed into
                // types): left to it.
                "time" | "dataschema" | "data_base64" => {
                    map.next_value::<IgnoredAny>()?;
                    return Err(decline());
                }
                _ => {
                    if event.extensions.len() == MAX_EXTENSIONS
                        || event.extensions.iter().any(|(k, _)| *k == key)
                    {
                        return Err(decline());
                    }
                    let value = map.next_value::<Text<'de>>()?.0;
                    event.extensions.push((key, value));
                }
            }
        }
        // Empty required attributes: the SDK's reader takes them, its
        // builder does not; left to the SDK.
        if !version || [&event.id, &event.source, &event.ty].iter().any(|a| a.is_empty()) {
            return Err(decline());
        }
        Ok(event)
    }
}

/// Whether a (lowercased) content type names JSON.
pub(super) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK's reading of `json`, and this reader's, must agree.
    fn agrees(json: &str) -> bool {
        let sdk: Result<Event, _> = serde_json::from_str(json);
        match Simple::read(json.as_bytes()) {
            Some(simple) => {
                let fast = simple
                    .into_event()
                    .unwrap_or_else(|| panic!("no event from {json}"));
                assert_eq!(Some(&fast), sdk.as_ref().ok(), "{json}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn reads_the_simple_shape_as_the_sdk_does() {
        for json in [
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,2.5,"x"]}}"#,
            r#"{"type":"t","id":"a\"b","source":"/s","specversion":"1.0","datacontenttype":"application/json","data":3}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi \u00e9"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"s","partitionkey":"k","other":"v"}"#,
            " {\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}\n",
        ] {
            assert!(agrees(json), "the simple reader declined {json}");
        }
    }

    /// A binary-mode request of `headers` and `body`: the simple path must
    /// store what the SDK's path stores, or decline.
    fn binary_agrees(headers: &[(&str, &str)], body: &str) -> bool {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let sdk = super::super::parse(&map, body.as_bytes()).map(|mut e| e.remove(0));
        match Simple::from_headers(&map, body.as_bytes()) {
            Some(simple) => {
                let stored: Event = serde_json::from_slice(&simple.to_json().unwrap()).unwrap();
                assert_eq!(Some(&stored), sdk.as_ref().ok(), "{headers:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn reads_simple_binary_requests_as_the_sdk_does() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "o-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order_placed"),
        ];
        let with = |more: &[(&'static str, &'static str)]| [&base[..], more].concat();
        assert!(binary_agrees(&base, ""));
        assert!(binary_agrees(
            &with(&[("content-type", "application/json")]),
            r#"{"order":1,"qty":[1,2]}"#
        ));
        assert!(binary_agrees(
            &with(&[
                ("content-type", "application/vnd.shop+json"),
                ("ce-subject", "a%20b"),
                ("ce-partitionkey", "k%C3%A9")
            ]),
            " 42 "
        ));
        assert!(binary_agrees(
            &with(&[("content-type", "application/json; charset=utf-8")]),
            "[]"
        ));
        // Declined: other data, other attributes, or nothing valid.
        for (more, body) in [
            (&[("content-type", "text/plain")][..], "hi"),
            (&[("content-type", "Application/JSON")][..], "{}"),
            (&[("content-type", "application/json")][..], "{not json"),
            (&[][..], "{}"),
            (&[("ce-time", "2026-11-30T10:00:00Z")][..], ""),
            (&[("ce-id", "o-2")][..], ""),
            (&[("ce-Bad_Name", "x")][..], ""),
            (&[("ce-data", "x")][..], ""),
        ] {
            assert!(!binary_agrees(&with(more), body), "took {more:?} {body}");
        }
        assert!(!binary_agrees(&base[1..], ""));
    }

    #[test]
    fn leaves_everything_else_to_the_sdk() {
        let many: Vec<String> = (0..=MAX_EXTENSIONS).map(|i| format!(r#""x{i}":"v""#)).collect();
        let many_extensions = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t",{}}}"#,
            many.join(",")
        );
        for json in [
            // Other versions, and attributes the SDK parses into types.
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-11-30T10:00:00Z"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"https://x/y"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGk="}"#,
            // Nulls, numbers and booleans, duplicates.
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","count":3}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","flag":true}"#,
            r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":"1","x":"2"}"#,
            // Data that is not JSON by its content type must be a string.
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{"a":1}}"#,
            r#"{"specversion":"1.0","id":"","source":"","type":""}"#,
            &many_extensions,
            // Invalid: missing attributes, wrong types, not JSON, trailing text.
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            r#"{"id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t""#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"} {}"#,
            r#"[]"#,
        ] {
            assert!(!agrees(json), "the simple reader took {json}");
        }
    }
}
