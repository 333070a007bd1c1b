//! Object expiry: a bucket's `expire_after` deletes each object that long
//! after its last change, with S3's `LifecycleExpiration:Delete`
//! notification, so a trigger on `s3:LifecycleExpiration:*` sees it go.
//! (As on S3, `s3:ObjectRemoved:*` does not include expiry.)
//!
//! Each object is deleted only if it is still older than the cut when its
//! delete commits: one written again in between stays.

use super::Buckets;
use super::notify::{self, Notice};
use crate::NodeError;

/// Objects looked at per page.
const PAGE: usize = 100;

/// Deletes every object past its bucket's `expire_after`; returns how many.
pub async fn expire(buckets: &Buckets, now_ms: u64) -> Result<u64, NodeError> {
    let mut expired = 0;
    for bucket in buckets.list().await? {
        let Some(after) = bucket.config.expire_after_ms else {
            continue;
        };
        let cut = now_ms.saturating_sub(after);
        loop {
            let due = buckets.objects.expired(&bucket.name, cut, PAGE).await?;
            for meta in &due {
                let request_id = crate::http::request_id();
                let event = notify::event(Notice {
                    bucket: &bucket.name,
                    key: &meta.key,
                    name: "LifecycleExpiration:Delete",
                    object: None,
                    request_id: &request_id,
                    source_ip: "",
                    principal: notify::PRINCIPAL,
                });
                let objects = &buckets.objects;
                let gone = buckets
                    .publisher
                    .along(vec![event], async |events| {
                        objects.expire_object(&bucket.name, &meta.key, cut, events).await
                    })
                    .await?;
                expired += u64::from(gone.is_some());
            }
            if due.len() < PAGE {
                break;
            }
        }
    }
    Ok(expired)
}
