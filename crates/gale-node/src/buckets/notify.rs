//! The notification of a change to an object: S3's event record as the
//! data of a CloudEvent on the bucket's topic.
//!
//! The record is S3's own (`eventVersion` 2.1) so that a Lambda handler
//! written for S3 runs unchanged, and the envelope follows the CloudEvents
//! S3 adapter (`source` = `aws:s3.<region>.<bucket>`, `type` =
//! `com.amazonaws.s3.` + the event name, `subject` = the key), which is
//! what bucket triggers filter on. `partitionkey` is the key, so that an
//! ordered subscription sees one key's changes in order.
//!
//! The event id derives from the request id and the sequencer: a client
//! retrying a request makes a new request, so a new event, while the same
//! request never yields two.
//!
//! It sits on the bottom floor because two planes change objects: the S3
//! API (ingress) and wasm functions writing through `gale:buckets`
//! (functions), and both must notify alike.

use super::{REGION, bucket_topic};
use crate::events;
use cloudevents::{EventBuilder, EventBuilderV10};
use gale_core::buckets::EVENT_TYPE_PREFIX;
use gale_store::NewEvent;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who makes a change through the S3 API.
pub const PRINCIPAL: &str = "gale";

/// What changed.
pub struct Notice<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// S3's event name, such as `ObjectCreated:Put`.
    pub name: &'static str,
    /// Size and entity tag (unquoted) of a created object; none for removals.
    pub object: Option<(u64, &'a str)>,
    pub request_id: &'a str,
    pub source_ip: &'a str,
    /// Who made it: [`PRINCIPAL`], or the function that wrote it.
    pub principal: &'a str,
}

/// Characters S3 leaves as they are in a record's key: letters, digits,
/// `-_.*` and `/`; a space becomes `+`, the rest `%XX`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*')
    .remove(b'/');

/// A key as S3 writes it in a record.
pub fn form_encode(key: &str) -> String {
    utf8_percent_encode(key, FORM).to_string().replace("%20", "+")
}

/// The next sequencer: grows with every change on this node, and across
/// restarts (it starts from the clock), so a key's events sort in the
/// order its changes were made.
fn sequencer() -> String {
    static NEXT: LazyLock<AtomicU64> = LazyLock::new(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AtomicU64::new(now.as_nanos() as u64)
    });
    format!("{:016X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The notification event of a change, ready to commit with it.
pub fn event(n: Notice<'_>) -> (String, NewEvent) {
    let sequencer = sequencer();
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut object = serde_json::json!({
        "key": form_encode(n.key),
        "sequencer": sequencer,
    });
    if let Some((size, etag)) = n.object {
        object["size"] = size.into();
        object["eTag"] = etag.into();
    }
    let record = serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": time,
        "eventName": n.name,
        "userIdentity": {"principalId": n.principal},
        "requestParameters": {"sourceIPAddress": n.source_ip},
        "responseElements": {"x-amz-request-id": n.request_id, "x-amz-id-2": n.request_id},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "gale",
            "bucket": {
                "name": n.bucket,
                "ownerIdentity": {"principalId": PRINCIPAL},
                "arn": format!("arn:aws:s3:::{}", n.bucket),
            },
            "object": object,
        },
    });
    let event = EventBuilderV10::new()
        .id(format!("{}-{sequencer}", n.request_id))
        .source(format!("aws:s3.{REGION}.{}", n.bucket))
        .ty(format!("{EVENT_TYPE_PREFIX}{}", n.name))
        .subject(n.key)
        .time(time)
        .extension("partitionkey", n.key)
        .data("application/json", record)
        .build()
        .expect("every attribute of a notification is set");
    (bucket_topic(n.bucket), events::encode(&event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_encoded_as_s3_does() {
        assert_eq!(form_encode("in/a b+c.csv"), "in/a+b%2Bc.csv");
        assert_eq!(form_encode("x_y-z*.txt"), "x_y-z*.txt");
    }

    #[test]
    fn sequencers_grow() {
        let a = sequencer();
        let b = sequencer();
        assert!(b > a && a.len() == b.len());
    }
}
