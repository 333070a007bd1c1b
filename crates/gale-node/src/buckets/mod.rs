//! Buckets: the node's handle on object storage.
//!
//! A bucket is storage (`gale_store::Objects`) plus a topic of its own,
//! `_bucket.<name>`, that carries its notifications: every change to an
//! object is committed with its notification event in one transaction, and
//! functions' bucket triggers subscribe to that topic like any other. So
//! retries, dead letters, replay, redrive and `gale topics` work on uploads
//! as on every event. The S3 API (ingress) and deploys (control) both go
//! through this handle, which is why it sits on the bottom floor, with the
//! notification record ([`notify`]) that the S3 API and functions writing
//! through `gale:buckets` both commit with their changes.

pub mod expiry;
pub mod notify;

use crate::NodeError;
use crate::publisher::Publisher;
use gale_core::{Code, Error};
use gale_store::{BucketConfig, BucketInfo, Objects, TopicConfig};
use std::sync::Arc;

/// The region the S3 API names, in notifications too.
pub const REGION: &str = "us-east-1";

pub const BUCKET_PREFIX: &str = "_bucket.";

/// Retention and dedup of notification topics.
pub const BUCKET_TOPIC: TopicConfig = TopicConfig {
    max_age_ms: 7 * 86_400_000,
    max_bytes: 1 << 30,
    dedup_window_ms: 600_000,
};

/// The topic of a bucket's notifications.
pub fn bucket_topic(bucket: &str) -> String {
    format!("{BUCKET_PREFIX}{bucket}")
}

/// Object storage and the notification topics; cheap to clone.
#[derive(Clone)]
pub struct Buckets {
    pub objects: Arc<dyn Objects>,
    pub publisher: Publisher,
}

impl Buckets {
    /// Creates a bucket and its notification topic, or changes its
    /// settings; true if it was created.
    pub async fn put(&self, name: &str, config: BucketConfig) -> Result<bool, NodeError> {
        if !gale_core::buckets::valid_bucket(name) {
            return Err(
                Error::new(Code::BadRequest, format!("{name:?} is not a valid bucket name"))
                    .with_hint(gale_core::buckets::BUCKET_NAME_RULE)
                    .into(),
            );
        }
        self.publisher
            .put_topic(&bucket_topic(name), BUCKET_TOPIC)
            .await?;
        Ok(self.objects.put_bucket(name, config).await?)
    }

    /// Deletes an empty bucket and its notification topic.
    pub async fn delete(&self, name: &str) -> Result<(), NodeError> {
        self.objects.delete_bucket(name).await?;
        self.publisher.delete_topic(&bucket_topic(name)).await?;
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<Option<BucketInfo>, NodeError> {
        Ok(self.objects.bucket(name).await?)
    }

    pub async fn list(&self) -> Result<Vec<BucketInfo>, NodeError> {
        Ok(self.objects.buckets().await?)
    }
}
