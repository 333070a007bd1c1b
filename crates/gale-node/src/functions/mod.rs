//! The functions the node serves right now, and the one place where an
//! invocation becomes a run of a wasm component or a process.
//!
//! Every plane above this one (the gateway, the dispatchers, the sources,
//! the admin API) reaches functions through [`Functions`] and runs them
//! through the modules here; none of them names a runtime's internals.
//!
//! - [`live`]: one deployed version, its admission and its loaded code;
//! - [`http`]: an HTTP request through a function (wasm or process);
//! - [`events`]: a chunk of events through a function, whatever its runtime;
//! - [`invoke`]: a synchronous invocation with a payload, whatever the runtime;
//! - [`process`] and [`payloads`]: process functions, Lambda's way;
//! - [`invocations`]: asynchronous invocations, queued on a topic;
//! - [`triggers`]: which topics a function's triggers read;
//! - [`logs`]: invocation log records.
//!
//! When the set of live functions changes, whoever follows it (routes,
//! subscriptions, sources) is told through [`Follow`], in the order they
//! registered, before the change returns: a deploy answers only once its
//! routes, subscriptions and schedules are in place.

pub mod answers;
pub mod events;
pub mod http;
pub mod invocations;
pub mod invoke;
pub mod live;
pub mod logs;
pub mod objects;
pub mod payloads;
pub mod process;
pub mod triggers;

use crate::NodeError;
use crate::registry::Registry;
use live::{Counters, Live, Runtimes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The live functions by name, as of one change.
pub type Snapshot = Arc<HashMap<String, Arc<Live>>>;

/// Something that follows the set of live functions.
#[async_trait::async_trait]
pub trait Follow: Send + Sync + 'static {
    /// Makes what it keeps match `functions`. Called once per change, one
    /// change at a time.
    async fn functions_changed(&self, functions: &Snapshot) -> Result<(), NodeError>;
}

/// The live functions; cheap to clone.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    runtimes: Arc<Runtimes>,
    live: RwLock<Snapshot>,
    /// Versions other than the serving one, loaded for an invocation that
    /// named them (the Invoke API's `Qualifier`); scaled to zero like the rest.
    pinned: Mutex<HashMap<(String, u64), Arc<Live>>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    epoch: Instant,
    followers: Mutex<Vec<Arc<dyn Follow>>>,
    /// One change at a time, each reading the registry afresh: a change
    /// that read older records can never land after a newer one.
    changing: tokio::sync::Mutex<()>,
}

impl Functions {
    pub fn new(registry: Registry, runtimes: Runtimes) -> Functions {
        Functions {
            inner: Arc::new(Inner {
                registry,
                runtimes: Arc::new(runtimes),
                live: RwLock::default(),
                pinned: Mutex::default(),
                counters: Mutex::default(),
                epoch: Instant::now(),
                followers: Mutex::default(),
                changing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Tells `follower` of every change from now on.
    pub fn follow(&self, follower: Arc<dyn Follow>) {
        crate::lock(&self.inner.followers).push(follower);
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.runtimes
    }

    pub fn get(&self, name: &str) -> Option<Arc<Live>> {
        crate::read(&self.inner.live).get(name).cloned()
    }

    pub fn snapshot(&self) -> Snapshot {
        crate::read(&self.inner.live).clone()
    }

    /// Rebuilds the live functions from the registry, keeping the warm code
    /// of versions that did not change, then tells the followers.
    pub async fn sync(&self) -> Result<(), NodeError> {
        let _changing = self.inner.changing.lock().await;
        let registry = &self.inner.registry;
        let mut next = HashMap::new();
        for app in registry.apps().await? {
            for (name, version) in &app.functions {
                // A record this node cannot read must not stop it serving the rest.
                let record = match registry.version(name, *version).await {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        tracing::error!(function = %name, version, "app names a version that is missing");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(function = %name, version, error = %e, "version record skipped");
                        continue;
                    }
                };
                let current = self.get(name);
                if let Some(live) = current.as_ref().filter(|l| l.version == *version) {
                    next.insert(name.clone(), live.clone());
                    continue;
                }
                let counters = crate::lock(&self.inner.counters)
                    .entry(name.clone())
                    .or_default()
                    .clone();
                let live = Live::new(
                    record,
                    counters,
                    self.inner.runtimes.clone(),
                    current.as_deref(),
                    self.inner.epoch,
                );
                next.insert(name.clone(), Arc::new(live));
            }
        }
        let snapshot: Snapshot = Arc::new(next);
        *crate::write(&self.inner.live) = snapshot.clone();
        self.tell(&snapshot).await
    }

    /// Tells the followers again without a change of functions (a topic
    /// they depend on appeared).
    pub async fn refollow(&self) -> Result<(), NodeError> {
        let _changing = self.inner.changing.lock().await;
        self.tell(&self.snapshot()).await
    }

    async fn tell(&self, snapshot: &Snapshot) -> Result<(), NodeError> {
        let followers = crate::lock(&self.inner.followers).clone();
        let mut first_error = None;
        for f in followers {
            if let Err(e) = f.functions_changed(snapshot).await {
                tracing::error!(error = %e, "following a change of functions failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `function` at `version`: the serving entry if it is that version,
    /// else one made (and kept while warm) for invocations that name it.
    pub async fn at(&self, function: &str, version: u64) -> Result<Option<Arc<Live>>, NodeError> {
        let Some(serving) = self.get(function) else {
            return Ok(None);
        };
        if serving.version == version {
            return Ok(Some(serving));
        }
        if let Some(live) = crate::lock(&self.inner.pinned).get(&(function.to_string(), version)) {
            return Ok(Some(live.clone()));
        }
        let Some(record) = self.inner.registry.version(function, version).await? else {
            return Ok(None);
        };
        let live = Arc::new(Live::new(
            record,
            serving.counters.clone(),
            self.inner.runtimes.clone(),
            None,
            self.inner.epoch,
        ));
        Ok(Some(
            crate::lock(&self.inner.pinned)
                .entry((function.to_string(), version))
                .or_insert(live)
                .clone(),
        ))
    }

    /// Scales functions idle for `idle` to zero; pinned versions go once
    /// idle or once their function is gone.
    pub fn reap(&self, idle: Duration) {
        for live in self.snapshot().values() {
            if live.reap(idle) {
                tracing::debug!(function = %live.name, "scaled to zero");
            }
        }
        crate::lock(&self.inner.pinned).retain(|(name, _), live| {
            let gone = live.reap(idle) || !live.stats().warm;
            !gone && self.get(name).is_some()
        });
    }

    /// Stops process functions' idle instances and lets go of the
    /// followers (the node is stopping; they hold handles to this, too).
    pub fn stop(&self) {
        crate::lock(&self.inner.followers).clear();
        for live in self.snapshot().values() {
            live.stop_instances();
        }
    }
}
