//! The host side of `gale:buckets`: a function reads and writes objects of
//! the buckets its manifest grants.
//!
//! The runtime checks the grant and the bounds; storage and notifications
//! belong to the node, behind [`BucketHost`], because every change to an
//! object must be committed with its notification event exactly as the S3
//! API commits it, and that machinery (the publisher, the notification
//! record) lives in the node, which this crate must not depend on.
//!
//! Objects travel whole through one call, so each call is bounded by
//! [`MAX_OBJECT`]: a larger object is `too-large`, not a guest that runs out
//! of memory half-way. Streaming large objects is what the S3 API is for.

use crate::events::bindings::gale::buckets::{objects, types};
use crate::host::Host;

pub use types::{Error as BucketError, Listing, ObjectInfo};

/// The most bytes one `get` or `put` carries.
pub const MAX_OBJECT: u64 = 64 << 20;
/// The most objects one `list` returns, as S3's listings.
pub const MAX_LIST: u32 = 1000;
/// The longest key, in bytes, as in S3.
const MAX_KEY: usize = 1024;

/// Object storage as the node offers it to functions. Errors are the WIT
/// interface's own, with messages for the function's author. `function`
/// names who makes a change, for its notification.
#[async_trait::async_trait]
pub trait BucketHost: Send + Sync + 'static {
    /// The object's bytes; `None` if the key holds none. An object past
    /// `max` bytes fails with `too-large` before any byte is read.
    async fn get(&self, bucket: &str, key: &str, max: u64) -> Result<Option<Vec<u8>>, BucketError>;

    /// Stores `data` at `key` with its `ObjectCreated:Put` notification, in
    /// one commit; returns the entity tag.
    async fn put(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<String, BucketError>;

    /// Deletes the object at `key` with its `ObjectRemoved:Delete`
    /// notification, in one commit.
    async fn delete(&self, function: &str, bucket: &str, key: &str) -> Result<(), BucketError>;

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, BucketError>;

    /// At most `limit` objects under `prefix`, after `start_after`.
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Listing, BucketError>;
}

/// The node's object storage and the function's name, for a call the
/// function may make.
type Granted = (std::sync::Arc<dyn BucketHost>, String);

impl Host {
    /// The node's object storage, if this function may use `bucket` with
    /// `key` (or no key, for a listing); else the error to answer with.
    fn objects_for(
        &mut self,
        bucket: &str,
        key: Option<&str>,
    ) -> wasmtime::Result<Result<Granted, BucketError>> {
        let function = self.events()?.services.function.clone();
        let Some(host) = self.events()?.services.buckets.clone() else {
            return Ok(Err(BucketError::Other(
                "buckets are not available to this function".into(),
            )));
        };
        if !self.spec().granted_buckets().iter().any(|b| b == bucket) {
            return Ok(Err(BucketError::AccessDenied(format!(
                "function `{function}` may not use bucket `{bucket}`: its manifest grants only the \
                 buckets its bucket triggers watch and those it lists; add `buckets = [\"{bucket}\"]` \
                 to [functions.{function}]"
            ))));
        }
        if let Some(key) = key
            && (key.is_empty() || key.len() > MAX_KEY)
        {
            return Ok(Err(BucketError::Other(format!(
                "a key is 1 to {MAX_KEY} bytes; this one is {}",
                key.len()
            ))));
        }
        Ok(Ok((host, function)))
    }
}

impl types::Host for Host {}

impl objects::Host for Host {
    async fn get(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, BucketError>> {
        let (host, _) = match self.objects_for(&bucket, Some(&key))? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(host.get(&bucket, &key, MAX_OBJECT).await)
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> wasmtime::Result<Result<String, BucketError>> {
        let (host, function) = match self.objects_for(&bucket, Some(&key))? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        if data.len() as u64 > MAX_OBJECT {
            return Ok(Err(BucketError::TooLarge(format!(
                "an object written by a function is at most {MAX_OBJECT} bytes; this one is {} \
                 (use the S3 API for larger ones)",
                data.len()
            ))));
        }
        Ok(host.put(&function, &bucket, &key, data, content_type).await)
    }

    async fn delete(&mut self, bucket: String, key: String) -> wasmtime::Result<Result<(), BucketError>> {
        let (host, function) = match self.objects_for(&bucket, Some(&key))? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(host.delete(&function, &bucket, &key).await)
    }

    async fn head(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<ObjectInfo>, BucketError>> {
        let (host, _) = match self.objects_for(&bucket, Some(&key))? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(host.head(&bucket, &key).await)
    }

    async fn list(
        &mut self,
        bucket: String,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<Listing, BucketError>> {
        let (host, _) = match self.objects_for(&bucket, None)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(host
            .list(&bucket, &prefix, start_after, limit.clamp(1, MAX_LIST))
            .await)
    }
}
