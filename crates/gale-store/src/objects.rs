//! Object buckets: the storage behind the node's S3-compatible API.
//!
//! The trait is shaped by one promise the node makes: an object's commit
//! and its notification events are written in one transaction. An
//! acknowledged upload always produces its event, and a crash never
//! produces an event for an object that does not exist. So every call that
//! changes an object takes the events to append with it, as
//! [`Settle::Ack`](crate::Settle::Ack) takes its outbox: an unknown topic
//! fails the whole call, and nothing is stored.
//!
//! Bytes travel apart from the index. A caller streams an upload into a
//! [`BlobWriter`] first (no transaction is open meanwhile, however long the
//! upload), and only the short commit that makes the finished [`Blob`] an
//! object, a part or nothing at all goes through the transaction. Copies
//! and completed multipart uploads share blobs instead of copying bytes.

use crate::{NewEvent, Result};
use async_trait::async_trait;
use bytes::Bytes;

/// The least size S3 allows for every part of a multipart upload but the
/// last; pass it to [`Objects::complete_upload`] unless testing.
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// The highest part number of a multipart upload (the lowest is 1).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// Settings of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketConfig {
    /// The most bytes its objects may hold together; a write that would
    /// pass it fails with [`QuotaExceeded`](crate::StoreError::QuotaExceeded).
    pub max_bytes: Option<u64>,
    /// How long after its last modification an object is due to expire
    /// (see [`Objects::expired`]); storage itself deletes nothing.
    pub expire_after_ms: Option<u64>,
}

/// A bucket and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub config: BucketConfig,
    pub objects: u64,
    /// The sum of its objects' sizes (bytes shared by copies count once per object).
    pub bytes: u64,
}

/// Bytes written by a [`BlobWriter`], not yet part of any object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub id: String,
    pub size: u64,
    pub md5: [u8; 16],
}

/// What an object carries besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    /// `x-amz-meta-*` pairs, in the order given, names without the prefix.
    pub user_meta: Vec<(String, String)>,
}

/// An object to store: a finished blob and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectWrite {
    pub blob: Blob,
    pub attrs: ObjectAttrs,
}

/// A stored object, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// S3's entity tag without the quotes S3 puts around it on the wire:
    /// the lowercase hex MD5 of the bytes, or for a completed multipart
    /// upload the hex MD5 of its parts' MD5s concatenated, then `-<parts>`.
    pub etag: String,
    pub attrs: ObjectAttrs,
    /// Unix milliseconds of the write that made this version.
    pub last_modified_ms: u64,
    /// Parts of the multipart upload it was completed from; 0 for an
    /// object written whole (by a put, or a copy of one).
    pub parts: u32,
}

/// The precondition of a write on the object it would replace, S3's
/// conditional writes; when it does not hold the write fails with
/// [`PreconditionFailed`](crate::StoreError::PreconditionFailed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Condition {
    /// Write whatever is there.
    #[default]
    Always,
    /// The key must hold no object (`If-None-Match: *`).
    Absent,
    /// The key must hold an object with this entity tag (`If-Match`);
    /// surrounding quotes are ignored.
    Etag(String),
}

/// Which bytes of an object to read. A range past the object's end is
/// cut short at the end; one that starts past it (or names no byte) fails
/// with [`InvalidRange`](crate::StoreError::InvalidRange).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From `start` to `end`, both included (`bytes=start-end`).
    Span { start: u64, end: u64 },
    /// From `start` to the end (`bytes=start-`).
    From(u64),
    /// The last so many bytes (`bytes=-n`).
    Last(u64),
}

impl ByteRange {
    /// The bytes of an object of `size` bytes this range names.
    pub fn resolve(self, size: u64) -> Result<std::ops::Range<u64>> {
        match self {
            ByteRange::Span { start, end } if start <= end && start < size => {
                Ok(start..end.min(size - 1) + 1)
            }
            ByteRange::From(start) if start < size => Ok(start..size),
            ByteRange::Last(n) if n > 0 && size > 0 => Ok(size - n.min(size)..size),
            _ => Err(crate::StoreError::InvalidRange { size }),
        }
    }
}

/// A read that has started: the object as it was when the read began, and
/// its bytes, which stay readable until the reader is dropped even if the
/// object is overwritten or deleted meanwhile.
pub struct ObjectRead {
    pub meta: ObjectMeta,
    /// The bytes of the object the reader yields (all of them without a range).
    pub range: std::ops::Range<u64>,
    pub body: Box<dyn ObjectReader>,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRead")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// What to list in a bucket, as S3's ListObjectsV2 asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Only keys that start with it.
    pub prefix: String,
    /// Keys that hold it after the prefix roll up into one common prefix:
    /// the key up to and with the first such delimiter.
    pub delimiter: Option<String>,
    /// Only entries after it in byte order. When it is itself a common
    /// prefix of this query (as [`Listing::next_start_after`] may be), every
    /// key under it is skipped too.
    pub start_after: Option<String>,
    /// The most entries (objects and common prefixes together) to return.
    pub limit: usize,
}

/// One page of a listing. Objects and common prefixes are each in UTF-8
/// byte order of their keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// More entries follow.
    pub truncated: bool,
    /// When truncated, the `start_after` that continues the listing.
    pub next_start_after: Option<String>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub attrs: ObjectAttrs,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// An uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    /// The hex MD5 of the part's bytes, unquoted.
    pub etag: String,
    pub last_modified_ms: u64,
}

/// One page of a listing of parts or uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// More follow after the last item.
    pub truncated: bool,
}

/// Streams the bytes of a blob to storage.
///
/// Nothing is visible until [`finish`](BlobWriter::finish) returns; a
/// writer dropped before that leaves nothing behind.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the bytes durable and returns the blob, ready for one write
    /// ([`Objects::put_object`] or [`Objects::put_part`]).
    async fn finish(self: Box<Self>) -> Result<Blob>;
}

/// Streams the bytes of a read.
#[async_trait]
pub trait ObjectReader: Send {
    /// The next bytes, `None` at the end; chunks are of bounded size.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>>;
}

/// Buckets of objects, S3's model.
///
/// Guarantees: a call that changes objects returned `Ok` only once the
/// change and the events passed with it are durable, together; a call that
/// fails changes nothing and appends none of its events. Events are
/// (topic, event) pairs appended as [`Topics::publish_all`](crate::Topics::publish_all)
/// appends them, dedup included, so a retried call with the same event ids
/// does not notify twice. Writes to a bucket
/// are linearizable, so conditions ([`Condition`]) and quotas hold under
/// concurrent writers. A read sees every write answered before it began.
///
/// Blobs: a [`Blob`] is taken by the first write it is passed to, whether
/// that write succeeds or fails (an upload that lost a race is not kept);
/// passing it again fails with [`UnknownBlob`](crate::StoreError::UnknownBlob),
/// as does a blob never passed to a write once the backend has reclaimed
/// it (a while after it was finished, or at a restart). Bytes no object or
/// part uses any more are reclaimed, once reads that started before stop.
///
/// Errors: a missing bucket is [`UnknownBucket`](crate::StoreError::UnknownBucket)
/// for every call naming one; a missing key is `None` where the call says so.
#[async_trait]
pub trait Objects: Send + Sync + 'static {
    /// Creates a bucket, or changes an existing one's settings; true if created.
    async fn put_bucket(&self, name: &str, config: BucketConfig) -> Result<bool>;
    async fn bucket(&self, name: &str) -> Result<Option<BucketInfo>>;
    /// Every bucket, by name.
    async fn buckets(&self) -> Result<Vec<BucketInfo>>;
    /// Deletes an empty bucket, aborting its multipart uploads; fails with
    /// [`BucketNotEmpty`](crate::StoreError::BucketNotEmpty) while it holds objects.
    async fn delete_bucket(&self, name: &str) -> Result<()>;

    /// A writer for a new blob.
    async fn blob_writer(&self) -> Result<Box<dyn BlobWriter>>;

    /// Makes `write.blob` the object at `key`, replacing the one there.
    /// Fails with `PreconditionFailed` if `cond` does not hold and with
    /// `QuotaExceeded` if the bucket would hold more than its `max_bytes`
    /// (the replaced object's bytes count as freed).
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        write: ObjectWrite,
        cond: Condition,
        events: Vec<(String, NewEvent)>,
    ) -> Result<ObjectMeta>;
    /// Makes a copy of `from`'s object at `key` sharing its bytes, with
    /// `attrs` or (`None`) the source's. `from.if_match` is checked on the
    /// source ([`PreconditionFailed`](crate::StoreError::PreconditionFailed)),
    /// `cond` and the quota on the destination; a missing source is
    /// [`NoSuchKey`](crate::StoreError::NoSuchKey). The copy gets a new
    /// modification time and keeps the source's entity tag and parts.
    async fn copy_object(
        &self,
        from: CopyFrom,
        bucket: &str,
        key: &str,
        attrs: Option<ObjectAttrs>,
        cond: Condition,
        events: Vec<(String, NewEvent)>,
    ) -> Result<ObjectMeta>;
    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>>;
    /// Starts reading an object (see [`ObjectRead`]); `None` if there is none.
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<ObjectRead>>;
    /// Deletes an object and returns what it was. If there was none it
    /// returns `None` and appends none of `events`: the caller decides
    /// whether deleting nothing is worth a notification.
    async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        events: Vec<(String, NewEvent)>,
    ) -> Result<Option<ObjectMeta>>;
    /// [`delete_object`](Objects::delete_object) for many keys in one
    /// transaction: all of them, or (on an error) none. Each key's events
    /// are appended only if it held an object.
    async fn delete_objects(
        &self,
        bucket: &str,
        deletes: Vec<(String, Vec<(String, NewEvent)>)>,
    ) -> Result<Vec<Option<ObjectMeta>>>;
    /// A page of a bucket's keys (see [`ListQuery`]). A common prefix is
    /// found without reading every key under it.
    async fn list_objects(&self, bucket: &str, query: ListQuery) -> Result<Listing>;
    /// Up to `limit` objects last modified before `before_ms`, oldest first:
    /// the node deletes them with [`expire_object`](Objects::expire_object)
    /// so that expiry notifies like any delete.
    async fn expired(&self, bucket: &str, before_ms: u64, limit: usize) -> Result<Vec<ObjectMeta>>;
    /// [`delete_object`](Objects::delete_object), but only if the object
    /// was last modified before `before_ms`: one written again since it was
    /// found [`expired`](Objects::expired) stays, and its events are not
    /// appended.
    async fn expire_object(
        &self,
        bucket: &str,
        key: &str,
        before_ms: u64,
        events: Vec<(String, NewEvent)>,
    ) -> Result<Option<ObjectMeta>>;

    /// Starts a multipart upload to `key`; returns its id. Ids of one key
    /// sort in the order the uploads started.
    async fn create_upload(&self, bucket: &str, key: &str, attrs: ObjectAttrs) -> Result<String>;
    /// Stores part `number` (1 to [`MAX_PART_NUMBER`]) of an upload,
    /// replacing an earlier part of that number; returns its entity tag.
    /// [`NoSuchUpload`](crate::StoreError::NoSuchUpload) if the upload is
    /// not in progress.
    async fn put_part(&self, upload: &str, number: u32, blob: Blob) -> Result<String>;
    async fn upload(&self, upload: &str) -> Result<Option<UploadInfo>>;
    /// Parts numbered above `after`, in order, at most `limit`.
    async fn list_parts(&self, upload: &str, after: u32, limit: usize) -> Result<Page<PartInfo>>;
    /// Uploads in progress in a bucket whose key starts with `prefix`, by
    /// key then start: those after `after` (a key, alone or with an upload
    /// id of that key), at most `limit`.
    async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(String, Option<String>)>,
        limit: usize,
    ) -> Result<Page<UploadInfo>>;
    /// Drops an upload and its parts.
    async fn abort_upload(&self, upload: &str) -> Result<()>;
    /// Makes the listed parts, in order, the object of the upload and ends
    /// the upload, dropping parts not listed. `parts` are (number, entity
    /// tag) pairs: numbers strictly ascending ([`InvalidPartOrder`](crate::StoreError::InvalidPartOrder)),
    /// each uploaded with that tag ([`InvalidPart`](crate::StoreError::InvalidPart)),
    /// each but the last at least `min_part_size` bytes
    /// ([`EntityTooSmall`](crate::StoreError::EntityTooSmall); S3 requires
    /// [`S3_MIN_PART_SIZE`]). Conditions, quota and events as in
    /// [`put_object`](Objects::put_object).
    async fn complete_upload(
        &self,
        upload: &str,
        parts: Vec<(u32, String)>,
        min_part_size: u64,
        cond: Condition,
        events: Vec<(String, NewEvent)>,
    ) -> Result<ObjectMeta>;
}

/// The source of [`Objects::copy_object`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFrom {
    pub bucket: String,
    pub key: String,
    /// The source must have this entity tag (`x-amz-copy-source-if-match`);
    /// surrounding quotes are ignored.
    pub if_match: Option<String>,
}

/// An entity tag as stored: without surrounding quotes.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// S3's entity tag of a multipart object: the hex MD5 of its parts' MD5s
/// concatenated, `-`, the number of parts.
pub fn multipart_etag<'a>(part_md5s: impl IntoIterator<Item = &'a [u8; 16]>) -> String {
    use md5::Digest;
    let mut hasher = md5::Md5::new();
    let mut n = 0u32;
    for m in part_md5s {
        hasher.update(m);
        n += 1;
    }
    format!("{}-{n}", hex::encode(hasher.finalize()))
}
