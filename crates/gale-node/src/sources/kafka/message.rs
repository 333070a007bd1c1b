//! What a Kafka record becomes (see [`super::super::message`]).
//!
//! Named as Knative's Kafka source names its events, under `/gale/kafka`:
//! `source` is the Kafka topic, `subject` the partition and offset, and the
//! record's key is both the `key` extension and the `partitionkey`, so a
//! subscription ordered by partition key handles one key's records in the
//! order Kafka keeps them. CloudEvents come by the Kafka binding (`ce_`
//! headers, the data's type in `content-type`).
//!
//! What Lambda's Kafka payload (`format = "kafka"` on a trigger) needs and
//! the attributes above do not say exactly is kept in `kafka*` extensions:
//! the topic, partition, offset, timestamp and its type, the bootstrap
//! servers, a key that is not UTF-8 (base64) and the headers as sent
//! (JSON of name and base64 value pairs, since a header's bytes need not be
//! text and its name need not be a valid attribute name).

pub use crate::brokers::kafka::*;
use crate::sources::message::{Message, Origin, Parked};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use gale_core::MessageFormat;
use gale_store::NewEvent;

/// The CloudEvents `type` of a record that is not itself a CloudEvent.
pub const MESSAGE_TYPE: &str = "gale.kafka.message";

/// A record as the consumer handed it over.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Unix milliseconds and Lambda's name for its type (`CREATE_TIME`,
    /// `LOG_APPEND_TIME`).
    pub timestamp: Option<(i64, &'static str)>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// The event stored for a record, or why it cannot be taken.
pub fn record_event(
    record: &Record,
    id: String,
    servers: &str,
    format: MessageFormat,
) -> Result<NewEvent, Parked> {
    let key_text = record.key.map(|k| match std::str::from_utf8(k) {
        Ok(text) => text.to_string(),
        Err(_) => B64.encode(k),
    });
    let mut headers: Vec<(String, String)> = Vec::with_capacity(record.headers.len() + 9);
    if let Some(text) = &key_text {
        headers.push(("key".into(), text.clone()));
    }
    if let Some(k) = record.key
        && std::str::from_utf8(k).is_err()
    {
        headers.push((EXT_KEY.into(), B64.encode(k)));
    }
    headers.push((EXT_TOPIC.into(), record.topic.to_string()));
    headers.push((EXT_PARTITION.into(), record.partition.to_string()));
    headers.push((EXT_OFFSET.into(), record.offset.to_string()));
    if let Some((ms, kind)) = record.timestamp {
        headers.push((EXT_TIMESTAMP.into(), ms.to_string()));
        headers.push((EXT_TIMESTAMP_TYPE.into(), kind.to_string()));
    }
    headers.push((EXT_SERVERS.into(), servers.to_string()));
    if !record.headers.is_empty() {
        let sent: Vec<(&str, String)> = record
            .headers
            .iter()
            .map(|(k, v)| (*k, B64.encode(v.unwrap_or_default())))
            .collect();
        headers.push((
            EXT_HEADERS.into(),
            serde_json::to_string(&sent).expect("strings serialize"),
        ));
    }
    for (k, v) in &record.headers {
        headers.push((
            k.to_string(),
            String::from_utf8_lossy(v.unwrap_or_default()).into_owned(),
        ));
    }
    let time = record
        .timestamp
        .and_then(|(ms, _)| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string());
    let source = format!("/gale/kafka/{}", record.topic);
    let subject = format!("partition:{}#{}", record.partition, record.offset);
    let m = Message {
        body: record.value,
        content_type: None,
        headers: &headers,
        prefix: "ce_",
    };
    let origin = Origin {
        ty: MESSAGE_TYPE,
        id,
        source: &source,
        subject: Some(&subject),
        time: time.as_deref(),
        key: key_text.as_deref(),
    };
    m.event(origin, format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    fn record<'a>(
        key: Option<&'a [u8]>,
        value: &'a [u8],
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> Record<'a> {
        Record {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp: Some((1_796_637_600_123, "CREATE_TIME")),
            key,
            value,
            headers,
        }
    }

    #[test]
    fn a_record_is_named_by_topic_partition_and_offset_and_keyed_by_its_key() {
        let r = record(
            Some(b"c-42"),
            br#"{"qty":2}"#,
            vec![("Region", Some(b"eu")), ("trace-id", Some(&[0xff]))],
        );
        let stored = record_event(&r, "k/orders/2/41".into(), "k1:9092", MessageFormat::Any).unwrap();
        let e = crate::events::decode(&stored.body).unwrap();
        assert_eq!(e.ty(), MESSAGE_TYPE);
        assert_eq!(
            (e.id(), e.source().as_str()),
            ("k/orders/2/41", "/gale/kafka/orders")
        );
        assert_eq!(e.subject(), Some("partition:2#41"));
        assert_eq!(e.time().unwrap().timestamp_millis(), 1_796_637_600_123);
        assert_eq!(stored.partition_key.as_deref(), Some("c-42"));
        assert_eq!(e.extension("key").unwrap().to_string(), "c-42");
        assert_eq!(e.extension("region").unwrap().to_string(), "eu");
        assert_eq!(e.extension(EXT_PARTITION).unwrap().to_string(), "2");
        assert_eq!(
            e.extension(EXT_TIMESTAMP_TYPE).unwrap().to_string(),
            "CREATE_TIME"
        );
        assert!(e.extension(EXT_KEY).is_none(), "a UTF-8 key is in `key`");
        let sent: Vec<(String, String)> =
            serde_json::from_str(&e.extension(EXT_HEADERS).unwrap().to_string()).unwrap();
        assert_eq!(
            sent,
            vec![
                ("Region".into(), "ZXU=".into()),
                ("trace-id".into(), "/w==".into())
            ]
        );

        let r = record(Some(&[0, 159]), b"x", vec![]);
        let stored = record_event(&r, "i".into(), "k1:9092", MessageFormat::Any).unwrap();
        let e = crate::events::decode(&stored.body).unwrap();
        assert_eq!(stored.partition_key.as_deref(), Some("AJ8="));
        assert_eq!(e.extension(EXT_KEY).unwrap().to_string(), "AJ8=");
        assert!(e.extension(EXT_HEADERS).is_none());
        let r = record(None, b"x", vec![]);
        assert!(
            record_event(&r, "i".into(), "k", MessageFormat::Any)
                .unwrap()
                .partition_key
                .is_none()
        );
    }

    #[test]
    fn cloudevents_come_by_the_kafka_binding_and_poison_is_parked() {
        let r = record(
            Some(b"k"),
            br#"{"n":1}"#,
            vec![
                ("ce_specversion", Some(b"1.0")),
                ("ce_id", Some(b"e-1")),
                ("ce_source", Some(b"/shop")),
                ("ce_type", Some(b"order.placed")),
                ("content-type", Some(b"application/json")),
            ],
        );
        let stored = record_event(&r, "i".into(), "k", MessageFormat::Cloudevents).unwrap();
        let e = crate::events::decode(&stored.body).unwrap();
        assert_eq!((e.id(), e.ty()), ("e-1", "order.placed"));
        let parked = record_event(
            &record(None, b"not json", vec![]),
            "i".into(),
            "k",
            MessageFormat::Json,
        )
        .unwrap_err();
        assert!(parked.reason.contains("JSON"), "{}", parked.reason);
    }
}
