//! Bearer tokens: the admin token (everything) and publish-only tokens
//! (publishing to named topics, nothing else).
//!
//! A publish token is shown once when created; the node keeps only its
//! SHA-256 (`tokens/{hash}` in metadata, and in memory for the request
//! path), so a leaked data directory does not leak usable tokens. Its id,
//! the first 12 hex digits of the hash, names it in `gale tokens ls` / `rm`.

use crate::registry::now_ms;
use crate::{NodeError, State};
use gale_core::api::TokenInfo;
use gale_core::{Code, Error};
use gale_store::{Expect, Metadata};
use http::HeaderMap;
use std::collections::HashMap;

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

impl State {
    /// Loads the publish tokens' hashes into memory (at start).
    pub(crate) async fn load_tokens(&self) -> Result<(), NodeError> {
        let mut tokens = HashMap::new();
        for (key, entry) in self.store.list(PREFIX).await? {
            match serde_json::from_slice::<TokenInfo>(&entry.value) {
                Ok(info) => {
                    tokens.insert(key[PREFIX.len()..].to_string(), info);
                }
                Err(e) => tracing::error!(key, error = %e, "token record skipped"),
            }
        }
        *crate::lock(&self.tokens) = tokens;
        Ok(())
    }

    /// What the request's bearer token may do, if anything.
    pub fn grant(&self, headers: &HeaderMap) -> Option<Grant> {
        let token = bearer(headers)?;
        if constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            return Some(Grant::Admin);
        }
        crate::lock(&self.tokens)
            .get(&hash(token))
            .map(|info| Grant::Publish(info.publish.clone()))
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
    pub async fn create_token(&self, publish: Vec<String>) -> Result<(String, TokenInfo), NodeError> {
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
        self.store
            .put(&format!("{PREFIX}{hash}"), value, Expect::Absent)
            .await?;
        crate::lock(&self.tokens).insert(hash, info.clone());
        Ok((token, info))
    }

    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = crate::lock(&self.tokens).values().cloned().collect();
        list.sort_by_key(|t| t.created_at);
        list
    }

    /// Revokes the token with this id; false if there is none.
    pub async fn delete_token(&self, id: &str) -> Result<bool, NodeError> {
        let hash = crate::lock(&self.tokens)
            .iter()
            .find(|(_, info)| info.id == id)
            .map(|(h, _)| h.clone());
        let Some(hash) = hash else { return Ok(false) };
        self.store.delete(&format!("{PREFIX}{hash}"), Expect::Any).await?;
        crate::lock(&self.tokens).remove(&hash);
        Ok(true)
    }
}
