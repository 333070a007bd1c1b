//! Bearer tokens: the admin token (everything) and publish-only tokens
//! (publishing to named topics, nothing else). Every plane that takes
//! requests checks them here.
//!
//! A publish token is shown once when created; the node keeps only its
//! SHA-256 (`tokens/{hash}` in metadata, and in memory for the request
//! path), so a leaked data directory does not leak usable tokens. Its id,
//! the first 12 hex digits of the hash, names it in `gale tokens ls` / `rm`.

use crate::NodeError;
use crate::clock::now_ms;
use gale_core::api::TokenInfo;
use gale_core::{Code, Error};
use gale_store::{Expect, Metadata};
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const PREFIX: &str = "tokens/";

/// What a presented token may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    Admin,
    Publish(Vec<String>),
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn unauthorized(message: &str) -> Error {
    Error::new(Code::Unauthorized, message).with_hint(
        "send `Authorization: Bearer <token>`: the admin token (the node's data directory, file `token`) or a \
         publish token from `gale tokens create --publish TOPIC`",
    )
}

/// The node's tokens: who may do what. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    admin: String,
    meta: Arc<dyn Metadata>,
    /// Publish tokens by the SHA-256 of the token.
    publish: Mutex<HashMap<String, TokenInfo>>,
}

impl Tokens {
    /// The admin token and the stored publish tokens.
    pub async fn load(admin: String, meta: Arc<dyn Metadata>) -> Result<Tokens, NodeError> {
        let tokens = Tokens {
            inner: Arc::new(Inner {
                admin,
                meta,
                publish: Mutex::new(HashMap::new()),
            }),
        };
        tokens.reload().await?;
        Ok(tokens)
    }

    /// Reads the publish tokens' hashes again (at start, and when another
    /// node changed them).
    pub async fn reload(&self) -> Result<(), NodeError> {
        let mut tokens = HashMap::new();
        for (key, entry) in self.inner.meta.list(PREFIX).await? {
            match serde_json::from_slice::<TokenInfo>(&entry.value) {
                Ok(info) => {
                    tokens.insert(key[PREFIX.len()..].to_string(), info);
                }
                Err(e) => tracing::error!(key, error = %e, "token record skipped"),
            }
        }
        *crate::lock(&self.inner.publish) = tokens;
        Ok(())
    }

    /// Whether `key` is where tokens are kept (for the change feed).
    pub fn is_token_key(key: &str) -> bool {
        key.starts_with(PREFIX)
    }

    /// The admin token (the secret AWS clients sign with).
    pub fn admin(&self) -> &str {
        &self.inner.admin
    }

    /// What the request's bearer token may do, if anything.
    pub fn grant(&self, headers: &HeaderMap) -> Option<Grant> {
        let token = bearer(headers)?;
        if constant_time_eq(token.as_bytes(), self.inner.admin.as_bytes()) {
            return Some(Grant::Admin);
        }
        crate::lock(&self.inner.publish)
            .get(&hash(token))
            .map(|info| Grant::Publish(info.publish.clone()))
    }

    /// Checks that the request carries the admin token.
    pub fn require_admin(&self, headers: &HeaderMap, doing: &str) -> Result<(), Error> {
        match self.grant(headers) {
            Some(Grant::Admin) => Ok(()),
            _ => Err(Error::new(Code::Unauthorized, format!("{doing} takes the admin token")).with_hint(
                "send `Authorization: Bearer <token>`; the token is in the node's data directory (token file) \
                 or in GALE_TOKEN",
            )),
        }
    }

    /// Checks that the request may publish to `topic`.
    pub fn may_publish(&self, headers: &HeaderMap, topic: &str) -> Result<(), Error> {
        match self.grant(headers) {
            Some(Grant::Admin) => Ok(()),
            Some(Grant::Publish(topics)) if topics.iter().any(|t| t == topic) => Ok(()),
            Some(Grant::Publish(_)) => Err(Error::new(
                Code::Forbidden,
                format!("this token may not publish to topic `{topic}`"),
            )
            .with_hint("create a token that names the topic: `gale tokens create --publish TOPIC`")),
            None => Err(unauthorized("missing or unknown bearer token")),
        }
    }

    /// Creates a publish token; the token itself is returned only here.
    pub async fn create(&self, publish: Vec<String>) -> Result<(String, TokenInfo), NodeError> {
        if publish.is_empty() {
            return Err(
                Error::new(Code::BadRequest, "a publish token needs at least one topic")
                    .with_hint("name topics with --publish TOPIC")
                    .into(),
            );
        }
        if let Some(bad) = publish.iter().find(|t| !gale_core::manifest::valid_topic(t)) {
            return Err(Error::new(Code::BadRequest, format!("{bad:?} is not a valid topic name")).into());
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| NodeError::DataDir(format!("no randomness for a token: {e}")))?;
        let token = format!("galepub_{}", hex::encode(bytes));
        let hash = hash(&token);
        let info = TokenInfo {
            id: hash[..12].to_string(),
            publish,
            created_at: now_ms(),
        };
        let value = serde_json::to_vec(&info).expect("token records serialize");
        self.inner
            .meta
            .put(&format!("{PREFIX}{hash}"), value, Expect::Absent)
            .await?;
        crate::lock(&self.inner.publish).insert(hash, info.clone());
        Ok((token, info))
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = crate::lock(&self.inner.publish).values().cloned().collect();
        list.sort_by_key(|t| t.created_at);
        list
    }

    /// Revokes the token with this id; false if there is none.
    pub async fn delete(&self, id: &str) -> Result<bool, NodeError> {
        let hash = crate::lock(&self.inner.publish)
            .iter()
            .find(|(_, info)| info.id == id)
            .map(|(h, _)| h.clone());
        let Some(hash) = hash else { return Ok(false) };
        self.inner
            .meta
            .delete(&format!("{PREFIX}{hash}"), Expect::Any)
            .await?;
        crate::lock(&self.inner.publish).remove(&hash);
        Ok(true)
    }
}
