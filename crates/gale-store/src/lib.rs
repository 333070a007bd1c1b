//! Gale's storage seam.
//!
//! The node talks to storage only through the traits here, so the same node
//! runs on the embedded backend (one directory, nothing to install) or on a
//! cluster backend. Each trait states the guarantees callers may rely on; every
//! backend must pass the conformance suite in `tests/conformance.rs`.
//!
//! Metadata is a key-value space with compare-and-swap on a per-key revision.
//! That is deliberately the least a backend must offer (NATS KV offers exactly
//! it), and it is enough for the registry: an app's whole routing state lives
//! under one key, so a deploy switches all of its routes in one atomic write.
//!
//! Topics are durable logs with subscriptions shaped like JetStream's durable
//! pull consumers (fetch with a lease, ack, retry after a delay), so the
//! embedded backend and a NATS backend can honour the same contract; see
//! `docs/ARCHITECTURE.md` for the mapping.
//!
//! Object buckets (the S3 API's storage) keep their index with the topics,
//! because an object's commit and its notification events are one
//! transaction; see [`objects`].
//!
//! A node holds its backend as [`Stores`]: one trait object per trait,
//! chosen once at start ([`open`]), so nothing above this crate names a
//! backend.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod objects;

use async_trait::async_trait;
use gale_core::api::{InvocationLog, TopicInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub use embedded::Embedded;
pub use objects::{
    Blob, BlobWriter, BucketConfig, BucketInfo, ByteRange, Condition, CopyFrom, ListQuery, Listing,
    ObjectAttrs, ObjectMeta, ObjectRead, ObjectReader, ObjectWrite, Objects, Page, PartInfo, UploadInfo,
};

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory {dir} is in use by another Gale node{}",
        pid.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<String> },
    #[error("revision conflict on {key}: it changed since it was read")]
    Conflict { key: String },
    #[error("artifact {digest} does not match its content")]
    DigestMismatch { digest: String },
    #[error("{0} is not a digest of the form sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("storage I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("subscription `{name}` of topic `{topic}` does not exist")]
    UnknownSubscription { topic: String, name: String },
    #[error("the value of `{key}` is not a decimal number, or the increment overflows")]
    NotANumber { key: String },
    #[error("storage engine failed: {0}")]
    Engine(String),
    #[error("bucket `{0}` does not exist")]
    UnknownBucket(String),
    #[error("bucket `{0}` is not empty")]
    BucketNotEmpty(String),
    #[error("bucket `{bucket}` has no object `{key}`")]
    NoSuchKey { bucket: String, key: String },
    #[error("blob {0} does not exist, or a write took it already")]
    UnknownBlob(String),
    #[error("the condition on `{key}` in bucket `{bucket}` does not hold")]
    PreconditionFailed { bucket: String, key: String },
    #[error("bucket `{bucket}` may hold {max_bytes} bytes; the write would make it {needed}")]
    QuotaExceeded {
        bucket: String,
        max_bytes: u64,
        needed: u64,
    },
    #[error("the range names no byte of an object of {size} bytes")]
    InvalidRange { size: u64 },
    #[error("multipart upload `{0}` does not exist (it was completed, aborted, or never started)")]
    NoSuchUpload(String),
    #[error("part numbers go from 1 to {max}, not {0}", max = objects::MAX_PART_NUMBER)]
    InvalidPartNumber(u32),
    #[error("part {part} of upload `{upload}` was not uploaded, or its entity tag differs")]
    InvalidPart { upload: String, part: u32 },
    #[error("the parts to complete upload `{0}` with are not in strictly ascending order")]
    InvalidPartOrder(String),
    #[error("a multipart upload needs at least one part to complete")]
    NoParts,
    #[error("part {part} of upload `{upload}` has {size} bytes; every part but the last needs {min}")]
    EntityTooSmall {
        upload: String,
        part: u32,
        size: u64,
        min: u64,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored value and the revision it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// Starts at 1 and grows by one with each write of the key.
    pub revision: u64,
}

/// The precondition of a metadata write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must be at exactly this revision.
    Revision(u64),
}

/// A metadata key that changed: written at `revision`, or deleted (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub revision: Option<u64>,
}

/// Key-value metadata with compare-and-swap.
///
/// Guarantees: a write that returned `Ok` is durable (survives a crash of the
/// process or the machine); writes to one key are linearizable; `Expect`
/// failures return [`StoreError::Conflict`] and change nothing.
#[async_trait]
pub trait Metadata: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// Writes `value`, returning the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64>;
    /// Deletes a key; deleting a missing key with `Expect::Any` is not an error.
    async fn delete(&self, key: &str, expect: Expect) -> Result<()>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>>;
    /// Changes committed from now on, by whichever node made them (on the
    /// embedded backend, which serves one node: this node's). A change is
    /// sent after its write is durable. A receiver that falls behind gets
    /// `RecvError::Lagged` and must read again what it follows: changes are
    /// a hint to look, the stored values are the truth.
    fn watch(&self) -> broadcast::Receiver<Change>;
}

/// Content-addressed blobs (function code).
///
/// Guarantees: `put` returns only once the blob is durable; a digest always
/// names the same bytes; a blob is never partially visible.
#[async_trait]
pub trait Artifacts: Send + Sync + 'static {
    /// Stores `data` under `digest` (`sha256:<hex>`) after checking that it matches.
    async fn put(&self, digest: &str, data: Vec<u8>) -> Result<()>;
    async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>>;
    async fn contains(&self, digest: &str) -> Result<bool>;
}

/// Invocation logs, kept for a bounded time and count.
///
/// Guarantees: records appear in `seq` order; appends are batched and may be
/// lost in a crash (logs are diagnostics, not data a caller was promised).
#[async_trait]
pub trait InvocationLogs: Send + Sync + 'static {
    /// Appends records; their `seq` fields are ignored and assigned here.
    async fn append(&self, records: Vec<InvocationLog>) -> Result<()>;
    /// Records of `function` with `seq > after`, oldest first, at most `limit`.
    /// With `tail`, the newest `limit` records instead (still oldest first).
    async fn query(&self, function: &str, after: u64, limit: usize, tail: bool)
    -> Result<Vec<InvocationLog>>;
    /// Drops records older than `max_age_ms` and all but the newest
    /// `keep_per_function` of each function.
    async fn prune(&self, now_ms: u64, max_age_ms: u64, keep_per_function: usize) -> Result<u64>;
}

/// Retention of a topic: events go when older than `max_age_ms`, and the
/// oldest go while the topic holds more than `max_bytes`, delivered or not.
/// An event whose `source` + `id` the topic stored within the last
/// `dedup_window_ms` is accepted but not stored again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    pub max_age_ms: u64,
    pub max_bytes: u64,
    pub dedup_window_ms: u64,
}

/// An event to append. `body` is the CloudEvent in its JSON format; storage
/// reads only the attributes it needs, which the caller passes alongside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    pub source: String,
    /// The CloudEvents `partitionkey`, for ordered subscriptions.
    pub partition_key: Option<String>,
    pub body: Vec<u8>,
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The same `source` + `id` was stored within the dedup window; `seq` is
    /// that earlier copy's and nothing new was stored.
    pub duplicate: bool,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    /// Unix milliseconds.
    pub published_at: u64,
    pub body: Vec<u8>,
}

/// An event handed to a subscriber, leased until it is settled or the lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: StoredEvent,
    /// Deliveries so far, this one included (1 on the first).
    pub attempts: u32,
    /// Why the previous attempt failed.
    pub last_error: Option<String>,
}

/// How a subscriber settles a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Handled. `outbox` (topic, event) pairs are appended in the same
    /// transaction: a handler's events exist only if its attempt succeeded.
    Ack {
        seq: u64,
        outbox: Vec<(String, NewEvent)>,
    },
    /// Failed; deliver again once `delay_ms` has passed.
    Retry { seq: u64, delay_ms: u64, error: String },
    /// Failed for good: append `event` to `topic` (no dedup: the same event
    /// may fail again after a redrive) and drop the delivery, in one
    /// transaction, so it is neither lost nor doubled.
    DeadLetter {
        seq: u64,
        topic: String,
        event: NewEvent,
    },
}

/// Durable topics with subscriptions.
///
/// Guarantees: `publish` returns only once its events are durable (they
/// survive a crash of the process or the machine); every event is delivered
/// to every subscription that existed when it was appended, at least once,
/// until it is settled or retention drops it; a leased delivery not settled
/// within its lease is delivered again; attempt counts are stored with the
/// delivery, so a restart does not reset them. Within a subscription,
/// events are first delivered in append order; an ordered subscription has
/// at most one event per partition key leased or waiting for a retry, and
/// the next event of that key waits for it.
#[async_trait]
pub trait Topics: Send + Sync + 'static {
    /// Creates a topic or changes its retention.
    async fn put_topic(&self, name: &str, config: TopicConfig) -> Result<()>;
    /// Deletes a topic with its events and subscriptions; false if it did not exist.
    async fn delete_topic(&self, name: &str) -> Result<bool>;
    /// Every topic with its subscriptions, by name.
    async fn topics(&self) -> Result<Vec<TopicInfo>>;
    /// Appends events in order, skipping duplicates (see [`TopicConfig`]).
    async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>>;
    /// Appends events to several topics in one transaction (with dedup):
    /// all land or none (an invocation's outbox).
    async fn publish_all(&self, events: Vec<(String, NewEvent)>) -> Result<()>;
    /// Creates a subscription starting after the topic's newest event, or
    /// changes whether an existing one is ordered.
    async fn put_subscription(&self, topic: &str, name: &str, ordered: bool) -> Result<()>;
    /// Deletes a subscription and its pending deliveries (no error if missing).
    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()>;
    /// Leases up to `max` deliveries for `lease_ms`: retries that are due
    /// first, then events never delivered. Waits up to `wait` for one.
    async fn fetch(
        &self,
        topic: &str,
        subscription: &str,
        max: usize,
        lease_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Delivery>>;
    /// Settles deliveries, all in one transaction. Settling a delivery that
    /// is no longer pending (settled already, or dropped by retention) does nothing.
    async fn settle(&self, topic: &str, subscription: &str, settles: Vec<Settle>) -> Result<()>;
    /// Stored events with `seq > after`, oldest first, at most `limit`.
    async fn read(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// Moves events of `from` (by sequence number) to other topics as new
    /// events, without dedup, in one transaction: each lands once or stays
    /// (dead letters going back to their topic on a redrive). Returns how
    /// many moved; sequence numbers no longer stored are skipped.
    async fn move_events(&self, from: &str, moves: Vec<(u64, String, NewEvent)>) -> Result<u64>;
    /// Applies every topic's retention and forgets dedup entries past their
    /// window. Returns the number of events dropped.
    async fn enforce_retention(&self) -> Result<u64>;
    /// Names of topics created, reconfigured or deleted from now on, by
    /// whichever node did it; as [`Metadata::watch`], a hint to look again.
    fn watch_topics(&self) -> broadcast::Receiver<String>;
}

/// Key-value state for functions: named buckets of byte values, each
/// bucket within a scope (Gale scopes buckets by app).
///
/// Guarantees: a write that returned `Ok` is durable; `kv_increment` is
/// atomic (concurrent increments all count).
#[async_trait]
pub trait KeyValue: Send + Sync + 'static {
    async fn kv_get(&self, scope: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>>;
    async fn kv_set(&self, scope: &str, bucket: &str, key: &str, value: Vec<u8>) -> Result<()>;
    /// Deleting a missing key is not an error.
    async fn kv_delete(&self, scope: &str, bucket: &str, key: &str) -> Result<()>;
    /// Keys in order, skipping the first `offset`, at most `limit`.
    async fn kv_keys(&self, scope: &str, bucket: &str, offset: u64, limit: usize) -> Result<Vec<String>>;
    /// Adds `delta` to the decimal number stored at `key` (missing: 0) and
    /// returns the sum.
    async fn kv_increment(&self, scope: &str, bucket: &str, key: &str, delta: u64) -> Result<u64>;
}

/// The storage backends a node can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// SQLite and files in the data directory; one node.
    #[default]
    Embedded,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        match s {
            "embedded" => Ok(Backend::Embedded),
            other => Err(format!(
                "unknown store {other:?}: the only backend so far is `embedded`"
            )),
        }
    }
}

/// One backend, as the traits a node uses. Cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub metadata: Arc<dyn Metadata>,
    pub artifacts: Arc<dyn Artifacts>,
    pub logs: Arc<dyn InvocationLogs>,
    pub topics: Arc<dyn Topics>,
    pub kv: Arc<dyn KeyValue>,
    pub objects: Arc<dyn Objects>,
}

impl Stores {
    /// All six traits served by one value of a backend.
    pub fn of<B>(backend: B) -> Stores
    where
        B: Metadata + Artifacts + InvocationLogs + Topics + KeyValue + Objects + Clone,
    {
        Stores {
            metadata: Arc::new(backend.clone()),
            artifacts: Arc::new(backend.clone()),
            logs: Arc::new(backend.clone()),
            topics: Arc::new(backend.clone()),
            kv: Arc::new(backend.clone()),
            objects: Arc::new(backend),
        }
    }
}

/// Opens `backend` with its data in `dir` (the embedded backend's data
/// directory, which it locks; a cluster backend keeps only caches there).
pub fn open(backend: Backend, dir: &Path) -> Result<Stores> {
    match backend {
        Backend::Embedded => Ok(Stores::of(Embedded::open(dir)?)),
    }
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a well-formed digest.
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::BadDigest(digest.to_string())),
    }
}
