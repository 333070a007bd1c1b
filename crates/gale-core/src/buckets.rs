//! Buckets in the manifest: `[buckets.NAME]` and the triggers that bind a
//! function to a bucket's changes (`[[functions.NAME.bucket]]`).
//!
//! A bucket trigger is a subscription in disguise: the node keeps each
//! bucket's notifications on a topic of its own, and a trigger becomes an
//! [`EventTrigger`] on that topic whose filters are the trigger's event
//! names, key prefix and key suffix. So it takes every delivery-policy key
//! an event trigger takes, with the same meaning.
//!
//! Notifications are CloudEvents made as the CloudEvents adapter for S3
//! makes them: `type` is `com.amazonaws.s3.` + S3's event name (such as
//! `ObjectCreated:Put`), `subject` is the object's key, and the data is
//! S3's notification record.

use crate::filter::Filter;
use crate::manifest::{Backoff, EventFormat, EventTrigger, Ordering};
use crate::units::{HumanDuration, HumanSize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The CloudEvents `type` of a notification is this + S3's event name.
pub const EVENT_TYPE_PREFIX: &str = "com.amazonaws.s3.";

/// The event names a trigger may ask for, as S3 spells them in its
/// notification configuration.
pub const EVENT_NAMES: &[&str] = &[
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
    "s3:LifecycleExpiration:*",
    "s3:LifecycleExpiration:Delete",
];

/// What a bucket name may look like.
pub const BUCKET_NAME_RULE: &str = "a bucket name is 3 to 63 lowercase letters, digits and '-', starting and ending with a letter or a digit";

/// Whether `name` is a bucket name S3 clients accept in both addressing
/// styles. S3 also allows dots; Gale does not, since a dotted name breaks
/// virtual-host addressing under TLS and is discouraged by AWS itself.
pub fn valid_bucket(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A `[buckets.NAME]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// The most its objects may hold together; a write past it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<HumanSize>,
    /// Objects are deleted this long after their last change (with an
    /// `s3:LifecycleExpiration:Delete` notification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<HumanDuration>,
}

/// A `[[functions.NAME.bucket]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketTrigger {
    pub bucket: String,
    /// S3 event names (`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`, …).
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Only objects whose key starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only objects whose key ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    #[serde(default = "default_batch_window")]
    pub batch_window: HumanDuration,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub ordering: Ordering,
    /// What a process function receives: S3's notification document
    /// (`{"Records": [...]}`, the default) or CloudEvents. A wasm function
    /// always receives CloudEvents.
    #[serde(default)]
    pub format: BucketFormat,
}

/// The payload a process function gets for a bucket's notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BucketFormat {
    /// `{"Records": [...]}`, as S3 hands notifications to Lambda.
    #[default]
    S3,
    Cloudevents,
}

fn default_events() -> Vec<String> {
    vec!["s3:ObjectCreated:*".into()]
}
fn default_attempts() -> u32 {
    EventTrigger::new("").max_attempts
}
fn default_batch_size() -> u32 {
    1
}
fn default_batch_window() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_concurrency() -> u32 {
    EventTrigger::new("").max_concurrency
}

impl BucketTrigger {
    /// Checks what serde cannot; the error names the key and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !valid_bucket(&self.bucket) {
            return Err(("bucket", format!("{:?}: {BUCKET_NAME_RULE}", self.bucket)));
        }
        if self.events.is_empty() {
            return Err((
                "events",
                "names no event; leave it out for s3:ObjectCreated:*".into(),
            ));
        }
        if let Some(bad) = self.events.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
            return Err((
                "events",
                format!(
                    "{bad:?} is not an S3 event name; use one of {}",
                    EVENT_NAMES.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The subscription this trigger is, on the bucket's notification topic.
    pub fn as_event_trigger(&self, topic: String) -> EventTrigger {
        let types = self
            .events
            .iter()
            .map(|name| {
                let name = name.trim_start_matches("s3:");
                let ty = format!("{EVENT_TYPE_PREFIX}{}", name.trim_end_matches('*'));
                let one = BTreeMap::from([("type".to_string(), ty)]);
                if name.ends_with('*') {
                    Filter::Prefix(one)
                } else {
                    Filter::Exact(one)
                }
            })
            .collect();
        let mut filters = vec![Filter::Any(types)];
        if let Some(prefix) = &self.prefix {
            filters.push(Filter::Prefix(BTreeMap::from([(
                "subject".into(),
                prefix.clone(),
            )])));
        }
        if let Some(suffix) = &self.suffix {
            filters.push(Filter::Suffix(BTreeMap::from([(
                "subject".into(),
                suffix.clone(),
            )])));
        }
        EventTrigger {
            filters,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            ack_timeout: self.ack_timeout,
            dead_letter: self.dead_letter.clone(),
            batch_size: self.batch_size,
            batch_window: self.batch_window,
            max_concurrency: self.max_concurrency,
            ordering: self.ordering,
            format: match self.format {
                BucketFormat::S3 => EventFormat::S3,
                BucketFormat::Cloudevents => EventFormat::Cloudevents,
            },
            ..EventTrigger::new(&topic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3() {
        for good in ["abc", "my-bucket-v2", "0uploads9"] {
            assert!(valid_bucket(good), "{good}");
        }
        for bad in ["ab", "Uploads", "-x-", "a.b", "under_score", &"a".repeat(64)] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }

    #[test]
    fn a_trigger_filters_by_event_name_prefix_and_suffix() {
        let trigger: BucketTrigger = toml::from_str(
            r#"
            bucket = "uploads"
            events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:Delete"]
            prefix = "in/"
            suffix = ".csv"
            "#,
        )
        .unwrap();
        trigger.validate().unwrap();
        let sub = trigger.as_event_trigger("_bucket.uploads".into());
        let event = |ty: &str, key: &str| {
            let (ty, key) = (ty.to_string(), key.to_string());
            sub.accepts(&move |name| match name {
                "type" => Some(ty.clone()),
                "subject" => Some(key.clone()),
                _ => None,
            })
        };
        assert!(event("com.amazonaws.s3.ObjectCreated:Put", "in/a.csv"));
        assert!(event(
            "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload",
            "in/b.csv"
        ));
        assert!(event("com.amazonaws.s3.ObjectRemoved:Delete", "in/a.csv"));
        assert!(!event(
            "com.amazonaws.s3.ObjectRemoved:DeleteMarkerCreated",
            "in/a.csv"
        ));
        assert!(!event("com.amazonaws.s3.ObjectCreated:Put", "out/a.csv"));
        assert!(!event("com.amazonaws.s3.ObjectCreated:Put", "in/a.json"));
        assert_eq!(sub.format, EventFormat::S3);

        let wrong: BucketTrigger =
            toml::from_str("bucket = \"uploads\"\nevents = [\"ObjectCreated:Put\"]").unwrap();
        assert_eq!(wrong.validate().unwrap_err().0, "events");
    }
}
