//! Objects for wasm functions: the node's side of `gale:buckets`.
//!
//! The runtime checks which buckets a function may use and how large an
//! object may be; this is the storage behind it, over the same
//! [`Buckets`] handle the S3 API uses. A change a function makes is
//! committed with its notification through [`Publisher::along`](crate::publisher::Publisher::along),
//! exactly as an S3 request's, so a function writing into a bucket that
//! triggers another function invokes it, and a crash never separates an
//! object from its event. The notification names the function as the
//! principal that made the change.

use crate::NodeError;
use crate::buckets::Buckets;
use crate::buckets::notify::{self, Notice};
use gale_store::{ListQuery, ObjectAttrs, ObjectMeta, ObjectWrite, StoreError};
use gale_wasm::buckets::{BucketError, BucketHost, Listing, ObjectInfo};

/// Where a function's change comes from, in its notification.
const SOURCE_IP: &str = "127.0.0.1";

/// [`BucketHost`] on the node's buckets.
pub struct FunctionObjects {
    pub buckets: Buckets,
}

fn store_error(e: StoreError) -> BucketError {
    match e {
        StoreError::UnknownBucket(b) => BucketError::NoSuchBucket(format!("bucket `{b}` does not exist")),
        other => BucketError::Other(other.to_string()),
    }
}

fn node_error(e: NodeError) -> BucketError {
    match e {
        NodeError::Store(e) => store_error(e),
        other => BucketError::Other(other.to_string()),
    }
}

fn info(meta: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.key,
        size: meta.size,
        etag: meta.etag,
        content_type: meta.attrs.content_type,
        last_modified: meta.last_modified_ms,
    }
}

#[async_trait::async_trait]
impl BucketHost for FunctionObjects {
    async fn get(&self, bucket: &str, key: &str, max: u64) -> Result<Option<Vec<u8>>, BucketError> {
        let read = self.buckets.objects.get_object(bucket, key, None).await;
        let Some(mut read) = read.map_err(store_error)? else {
            return Ok(None);
        };
        if read.meta.size > max {
            return Err(BucketError::TooLarge(format!(
                "`{key}` in bucket `{bucket}` is {} bytes; a function reads at most {max} bytes \
                 at once (use the S3 API for larger objects)",
                read.meta.size
            )));
        }
        let mut data = Vec::with_capacity(read.meta.size as usize);
        while let Some(chunk) = read.body.next_chunk().await.map_err(store_error)? {
            data.extend_from_slice(&chunk);
        }
        Ok(Some(data))
    }

    async fn put(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<String, BucketError> {
        let objects = &*self.buckets.objects;
        let mut writer = objects.blob_writer().await.map_err(store_error)?;
        writer.write(&data).await.map_err(store_error)?;
        drop(data);
        let blob = writer.finish().await.map_err(store_error)?;
        let md5 = hex::encode(blob.md5);
        let event = notify::event(Notice {
            bucket,
            key,
            name: "ObjectCreated:Put",
            object: Some((blob.size, &md5)),
            request_id: &crate::http::request_id(),
            source_ip: SOURCE_IP,
            principal: function,
        });
        let write = ObjectWrite {
            blob,
            attrs: ObjectAttrs {
                content_type,
                user_meta: Vec::new(),
            },
        };
        let meta = self
            .buckets
            .publisher
            .along(vec![event], async |events| {
                objects
                    .put_object(bucket, key, write, gale_store::Condition::Always, events)
                    .await
            })
            .await
            .map_err(node_error)?;
        Ok(meta.etag)
    }

    async fn delete(&self, function: &str, bucket: &str, key: &str) -> Result<(), BucketError> {
        let event = notify::event(Notice {
            bucket,
            key,
            name: "ObjectRemoved:Delete",
            object: None,
            request_id: &crate::http::request_id(),
            source_ip: SOURCE_IP,
            principal: function,
        });
        let objects = &self.buckets.objects;
        self.buckets
            .publisher
            .along(vec![event], async |events| {
                objects.delete_object(bucket, key, events).await
            })
            .await
            .map_err(node_error)?;
        Ok(())
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, BucketError> {
        let meta = self.buckets.objects.head_object(bucket, key).await;
        Ok(meta.map_err(store_error)?.map(info))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Listing, BucketError> {
        let query = ListQuery {
            prefix: prefix.to_string(),
            delimiter: None,
            start_after,
            limit: limit as usize,
        };
        let listing = self.buckets.objects.list_objects(bucket, query).await;
        let listing = listing.map_err(store_error)?;
        Ok(Listing {
            next_start_after: listing.next_start_after.filter(|_| listing.truncated),
            objects: listing.objects.into_iter().map(info).collect(),
        })
    }
}
