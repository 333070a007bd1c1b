//! S3 access keys: who may read and write which buckets.
//!
//! An S3 client signs each request with a secret (SigV4, or SigV2 for
//! presigned URLs) and sends only the access key id; checking the
//! signature means computing it again, which takes the secret itself. So
//! unlike a publish token, whose hash is enough, a key's secret is kept
//! (`keys/{id}` in metadata, and in memory for the request path). The
//! secret is shown once, when the key is made, and never listed.
//!
//! The admin token is a secret too, under any access key id the node did
//! not issue: an operator points the AWS CLI at the node with it and may
//! do everything.
//!
//! A process function that names buckets gets a key of its own in its
//! environment. Its id and secret are derived from the admin token and the
//! function's name (HMAC-SHA512), so every node of a cluster derives the
//! same key without storing it, and nothing outlives the function: the key
//! is known while a node has the function loaded.

use crate::NodeError;
use crate::clock::now_ms;
use gale_core::api::KeyInfo;
use gale_core::{Code, Error};
use gale_store::{Expect, Metadata};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const PREFIX: &str = "keys/";

/// What a signed request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Signed with the admin token: everything.
    Admin,
    /// Signed with an issued key.
    Key { buckets: Vec<String>, read_only: bool },
}

impl Access {
    /// Whether it may read (`write` false) or change (`write` true) `bucket`.
    pub fn allows(&self, bucket: &str, write: bool) -> bool {
        match self {
            Access::Admin => true,
            Access::Key { buckets, read_only } => {
                (!write || !read_only) && buckets.iter().any(|b| b == bucket)
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    info: KeyInfo,
    secret: String,
}

/// The node's S3 keys; cheap to clone.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    admin: String,
    meta: Arc<dyn Metadata>,
    keys: Mutex<HashMap<String, Record>>,
    /// Functions' derived keys, by id: the secret and the buckets.
    functions: Mutex<HashMap<String, (String, Vec<String>)>>,
}

/// The id and secret of a key, from random or derived bytes.
fn encode(id_bytes: &[u8], secret_bytes: &[u8]) -> (String, String) {
    // AWS's shapes: a 20-character id of capitals and digits, a
    // 40-character secret.
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let id = "GALE"
        .chars()
        .chain(id_bytes[..16].iter().map(|b| ID[(*b & 31) as usize] as char))
        .collect();
    let secret = secret_bytes[..40]
        .iter()
        .map(|b| SECRET[(*b & 63) as usize] as char)
        .collect();
    (id, secret)
}

impl Keys {
    pub async fn load(admin: String, meta: Arc<dyn Metadata>) -> Result<Keys, NodeError> {
        let keys = Keys {
            inner: Arc::new(Inner {
                admin,
                meta,
                keys: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            }),
        };
        keys.reload().await?;
        Ok(keys)
    }

    /// Reads the keys again (at start, and when another node changed them).
    pub async fn reload(&self) -> Result<(), NodeError> {
        let mut keys = HashMap::new();
        for (key, entry) in self.inner.meta.list(PREFIX).await? {
            match serde_json::from_slice::<Record>(&entry.value) {
                Ok(record) => {
                    keys.insert(record.info.id.clone(), record);
                }
                Err(e) => tracing::error!(key, error = %e, "key record skipped"),
            }
        }
        *crate::lock(&self.inner.keys) = keys;
        Ok(())
    }

    /// Whether `key` is where keys are kept (for the change feed).
    pub fn is_key_key(key: &str) -> bool {
        key.starts_with(PREFIX)
    }

    /// The secret a request signed under `access_key_id` must be signed
    /// with, and what such a request may do.
    pub fn secret(&self, access_key_id: &str) -> (String, Access) {
        if let Some((secret, buckets)) = crate::lock(&self.inner.functions).get(access_key_id) {
            let access = Access::Key {
                buckets: buckets.clone(),
                read_only: false,
            };
            return (secret.clone(), access);
        }
        match crate::lock(&self.inner.keys).get(access_key_id) {
            Some(r) => (
                r.secret.clone(),
                Access::Key {
                    buckets: r.info.buckets.clone(),
                    read_only: r.info.read_only,
                },
            ),
            None => (self.inner.admin.clone(), Access::Admin),
        }
    }

    /// Issues a key for `buckets`; the secret is returned only here.
    pub async fn create(
        &self,
        buckets: Vec<String>,
        read_only: bool,
    ) -> Result<(String, KeyInfo), NodeError> {
        if buckets.is_empty() {
            return Err(Error::new(Code::BadRequest, "a key needs at least one bucket")
                .with_hint("name buckets with --bucket NAME")
                .into());
        }
        let mut bytes = [0u8; 56];
        getrandom::fill(&mut bytes)
            .map_err(|e| NodeError::DataDir(format!("no randomness for a key: {e}")))?;
        let (id, secret) = encode(&bytes[40..], &bytes[..40]);
        let info = KeyInfo {
            id: id.clone(),
            buckets,
            read_only,
            created_at: now_ms(),
        };
        let record = Record {
            info: info.clone(),
            secret: secret.clone(),
        };
        let value = serde_json::to_vec(&record).expect("a key record serializes");
        self.inner
            .meta
            .put(&format!("{PREFIX}{id}"), value, Expect::Absent)
            .await?;
        crate::lock(&self.inner.keys).insert(id, record);
        Ok((secret, info))
    }

    /// The key of a process function that may use `buckets` (read and
    /// write), known from now on; the same for the same function on any
    /// node that shares the admin token.
    pub fn for_function(&self, function: &str, buckets: Vec<String>) -> (String, String) {
        use hmac::{Hmac, Mac};
        let derive = |purpose: &str| {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(self.inner.admin.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(purpose.as_bytes());
            mac.update(b"\0");
            mac.update(function.as_bytes());
            mac.finalize().into_bytes()
        };
        let (id, secret) = encode(&derive("gale s3 key id"), &derive("gale s3 key secret"));
        crate::lock(&self.inner.functions).insert(id.clone(), (secret.clone(), buckets));
        (id, secret)
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = crate::lock(&self.inner.keys)
            .values()
            .map(|r| r.info.clone())
            .collect();
        keys.sort_by_key(|k| k.created_at);
        keys
    }

    /// Revokes a key; false if there was none of that id.
    pub async fn delete(&self, id: &str) -> Result<bool, NodeError> {
        if !crate::lock(&self.inner.keys).contains_key(id) {
            return Ok(false);
        }
        self.inner
            .meta
            .delete(&format!("{PREFIX}{id}"), Expect::Any)
            .await?;
        crate::lock(&self.inner.keys).remove(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reaches_only_its_buckets_and_a_read_only_key_only_reads() {
        let key = Access::Key {
            buckets: vec!["uploads".into()],
            read_only: true,
        };
        assert!(key.allows("uploads", false));
        assert!(!key.allows("uploads", true));
        assert!(!key.allows("other", false));
        assert!(Access::Admin.allows("other", true));
    }
}
