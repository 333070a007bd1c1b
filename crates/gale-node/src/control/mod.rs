//! The control plane: the admin API ([`admin`]) and the changes it makes
//! ([`deploy`]: deploys, rollbacks, removals: the only writers of the
//! registry). What a change means for routes, subscriptions and sources,
//! the planes that keep them work out for themselves: they follow the live
//! functions (`functions::Follow`).

pub mod admin;
pub mod buckets_api;
pub mod deploy;

use crate::auth::Tokens;
use crate::buckets::Buckets;
use crate::functions::Functions;
use crate::keys::Keys;
use crate::publisher::Publisher;
use gale_store::{Artifacts, InvocationLogs, Topics};
use std::sync::Arc;

/// What the admin API and deploys take; cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub functions: Functions,
    pub publisher: Publisher,
    pub tokens: Tokens,
    pub buckets: Buckets,
    pub keys: Keys,
    pub artifacts: Arc<dyn Artifacts>,
    pub logs: Arc<dyn InvocationLogs>,
    /// Reading topics' events; appends go through the publisher.
    pub topics: Arc<dyn Topics>,
    /// One deploy, rollback or removal at a time on this node.
    pub changes: Arc<tokio::sync::Mutex<()>>,
}
