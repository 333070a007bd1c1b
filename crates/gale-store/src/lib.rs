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

pub mod embedded;

use async_trait::async_trait;
use gale_core::api::InvocationLog;
use std::path::PathBuf;

pub use embedded::Embedded;

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
    #[error("storage engine failed: {0}")]
    Engine(String),
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
