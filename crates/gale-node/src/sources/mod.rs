//! The sources plane: what feeds topics from outside functions' own code.
//!
//! A source is a [`Source`]: built from its typed spec (validated, without
//! I/O, by `gale-core` when the manifest is read), then run until it is
//! told to stop. It gets a [`Context`] with all it may touch:
//! - a publisher whose event ids come from the source's own position
//!   ([`Context::event_id`]), so a restart that publishes again from the
//!   last checkpoint publishes the same ids, which the topic's dedup drops;
//! - a checkpoint in `Metadata`, written with compare-and-swap: a source
//!   that lost its place to another node fails its next save instead of
//!   overwriting it;
//! - a lease in `Metadata` (renewed while it runs): a source runs on one
//!   node at a time, and a cluster can move it when its node dies. On the
//!   embedded backend there is one node, whose id is kept in the data
//!   directory, so a restart takes its leases back at once;
//! - a stop signal and a status (`gale sources`).
//!
//! [`Sources`] follows the live functions and the declared sources
//! (`[sources.NAME]` in the registry): it starts what is new, restarts
//! what changed, and stops what went, dropping its checkpoint and lease.
//!
//! Adding a kind of source: a variant of `gale_core::SourceSpec` with its
//! settings and validation, a module here implementing [`Source`], one arm
//! in [`build`], and a test against the real system it reads.

pub mod context;
pub mod kafka;
pub mod message;
pub mod mqtt;
pub mod mysql;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod rows;
pub mod schedule;

use crate::NodeError;
use crate::clock::now_ms;
use crate::functions::triggers::schedule_topic;
use crate::functions::{Follow, Functions, Snapshot};
use crate::http::ApiResult;
use crate::publisher::Publisher;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use context::{Context, Lease, Source, Wanted, checkpoint_key, lease_key};
use gale_core::SourceSpec;
use gale_core::api::SourceInfo;
use gale_store::{Expect, Metadata};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a lease lasts unless renewed.
const LEASE_MS: u64 = 15_000;
/// How often a running source renews its lease.
const RENEW: Duration = Duration::from_secs(5);
/// How long a node waits before asking again for a lease another node holds.
const STANDBY: Duration = Duration::from_secs(5);
/// Pauses before a failed source runs again: doubling from the first to the last.
const RESTART: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// The source a spec describes.
pub fn build(wanted: &Wanted) -> Box<dyn Source> {
    match &wanted.spec {
        SourceSpec::Schedule(s) => Box::new(schedule::Schedule::new(wanted, s)),
        SourceSpec::Postgres(s) => Box::new(postgres::Postgres::new(wanted, s)),
        SourceSpec::Mysql(s) => Box::new(mysql::Mysql::new(wanted, s)),
        SourceSpec::Nats(s) => Box::new(nats::Nats::new(wanted, s)),
        SourceSpec::Rabbitmq(s) => Box::new(rabbitmq::Rabbitmq::new(wanted, s)),
        SourceSpec::Redis(s) => Box::new(redis::Redis::new(wanted, s)),
        SourceSpec::Mqtt(s) => Box::new(mqtt::Mqtt::new(wanted, s)),
        SourceSpec::Kafka(s) => Box::new(kafka::Kafka::new(wanted, s)),
    }
}

/// The node's sources; follows the live functions and the declared sources.
pub struct Sources {
    node: String,
    functions: Functions,
    publisher: Publisher,
    meta: Arc<dyn Metadata>,
    running: Mutex<BTreeMap<String, Running>>,
    stopping: watch::Sender<bool>,
}

struct Running {
    wanted: Wanted,
    stop: watch::Sender<bool>,
    status: Arc<Mutex<SourceInfo>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sources {
    /// `node` names this node in leases.
    pub fn new(node: String, functions: Functions, publisher: Publisher, meta: Arc<dyn Metadata>) -> Sources {
        Sources {
            node,
            functions,
            publisher,
            meta,
            running: Mutex::default(),
            stopping: watch::channel(false).0,
        }
    }

    /// What the node should run: every declared source, and every schedule
    /// of a live function.
    async fn wanted(&self, functions: &Snapshot) -> Result<Vec<Wanted>, NodeError> {
        let mut wanted: Vec<Wanted> = self
            .functions
            .registry()
            .sources()
            .await?
            .into_iter()
            .map(|r| Wanted {
                name: r.name,
                app: Some(r.app),
                function: None,
                spec: r.spec,
            })
            .collect();
        for live in functions.values() {
            for (n, s) in live.spec.schedule.iter().enumerate() {
                wanted.push(Wanted {
                    name: schedule::function_source(&live.name, n),
                    app: None,
                    function: Some(live.name.clone()),
                    spec: SourceSpec::Schedule(gale_core::ScheduleSource {
                        cron: s.cron.clone(),
                        timezone: s.timezone.clone(),
                        missed: s.missed,
                        topic: schedule_topic(&live.name, n),
                    }),
                });
            }
        }
        Ok(wanted)
    }

    fn start(&self, wanted: Wanted) -> Running {
        let (stop, stopped) = watch::channel(false);
        let status = Arc::new(Mutex::new(SourceInfo {
            name: wanted.name.clone(),
            kind: wanted.spec.kind().into(),
            app: wanted.app.clone(),
            function: wanted.function.clone(),
            topic: wanted.spec.topic().into(),
            state: "starting".into(),
            node: None,
            position: None,
            lag_ms: None,
            lag_bytes: None,
            lag_messages: None,
            published: 0,
            parked: 0,
            last_error: None,
        }));
        let runner = Runner {
            node: self.node.clone(),
            wanted: wanted.clone(),
            publisher: self.publisher.clone(),
            meta: self.meta.clone(),
            stop: stopped,
            status: status.clone(),
        };
        Running {
            wanted,
            stop,
            status,
            task: tokio::spawn(runner.run()),
        }
    }

    /// Every source's status, by name.
    pub fn list(&self) -> Vec<SourceInfo> {
        crate::lock(&self.running)
            .values()
            .map(|r| crate::lock(&r.status).clone())
            .collect()
    }

    /// Stops every source (the node is stopping) and waits for them; their
    /// leases stay theirs until they run out or this node comes back.
    pub async fn stop(&self) {
        let _ = self.stopping.send(true);
        let running: Vec<Running> = std::mem::take(&mut *crate::lock(&self.running))
            .into_values()
            .collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = tokio::time::timeout(Duration::from_secs(5), r.task).await;
        }
    }
}

#[async_trait::async_trait]
impl Follow for Sources {
    async fn functions_changed(&self, functions: &Snapshot) -> Result<(), NodeError> {
        if *self.stopping.borrow() {
            return Ok(());
        }
        let wanted = self.wanted(functions).await?;
        let mut gone = Vec::new();
        {
            let mut running = crate::lock(&self.running);
            let names: Vec<String> = running.keys().cloned().collect();
            for name in names {
                let same = wanted.iter().find(|w| w.name == name);
                if same.is_none_or(|w| running[&name].wanted != *w) {
                    let r = running.remove(&name).expect("listed above");
                    let _ = r.stop.send(true);
                    gone.push((r, same.is_none()));
                }
            }
        }
        for (r, removed) in gone {
            let _ = r.task.await;
            if removed {
                let name = &r.wanted.name;
                if let Err(e) = build(&r.wanted).forget().await {
                    tracing::warn!(source = %name, error = %e, "the removed source could not release what it holds");
                }
                // A source added again later starts afresh.
                self.meta.delete(&checkpoint_key(name), Expect::Any).await?;
                self.meta.delete(&lease_key(name), Expect::Any).await?;
            }
        }
        for w in wanted {
            let new = !crate::lock(&self.running).contains_key(&w.name);
            if new {
                let r = self.start(w);
                crate::lock(&self.running).insert(r.wanted.name.clone(), r);
            }
        }
        Ok(())
    }
}

/// Runs one source for as long as it is wanted: takes its lease, runs it,
/// renews the lease meanwhile, runs it again after a failure.
struct Runner {
    node: String,
    wanted: Wanted,
    publisher: Publisher,
    meta: Arc<dyn Metadata>,
    stop: watch::Receiver<bool>,
    status: Arc<Mutex<SourceInfo>>,
}

impl Runner {
    async fn run(mut self) {
        let mut pause = RESTART.0;
        let name = self.wanted.name.clone();
        let mut source = build(&self.wanted);
        loop {
            if *self.stop.borrow() {
                break;
            }
            let revision = match self.take_lease().await {
                Ok(Some(revision)) => revision,
                Ok(None) => {
                    if self.sleep(STANDBY).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    self.failed(&e);
                    if self.sleep(pause).await {
                        break;
                    }
                    continue;
                }
            };
            self.set_state("running", None);
            let mut cx = Context {
                name: name.clone(),
                publisher: self.publisher.clone(),
                meta: self.meta.clone(),
                checkpoint: None,
                stop: self.stop.clone(),
                status: self.status.clone(),
                dead_letter: self.wanted.spec.dead_letter().map(str::to_string),
            };
            let lease = lease_key(&name);
            let ended = tokio::select! {
                r = source.run(&mut cx) => r,
                e = renew(&*self.meta, &lease, &self.node, revision) => Err(e),
            };
            match ended {
                Ok(()) if *self.stop.borrow() => break,
                Ok(()) => pause = RESTART.0,
                Err(e) => {
                    self.failed(&e);
                    if self.sleep(pause).await {
                        break;
                    }
                    pause = (pause * 2).min(RESTART.1);
                }
            }
        }
        tracing::debug!(source = %name, "source stopped");
    }

    /// Takes the source's lease if it is free, run out or this node's own;
    /// its revision, or `None` while another node holds it.
    async fn take_lease(&self) -> Result<Option<u64>, NodeError> {
        let key = lease_key(&self.wanted.name);
        let now = now_ms();
        let expect = match self.meta.get(&key).await? {
            None => Expect::Absent,
            Some(entry) => {
                let lease: Option<Lease> = serde_json::from_slice(&entry.value).ok();
                match lease {
                    Some(l) if l.node != self.node && l.expires_at > now => {
                        let mut status = crate::lock(&self.status);
                        status.state = "standby".into();
                        status.node = Some(l.node);
                        return Ok(None);
                    }
                    _ => Expect::Revision(entry.revision),
                }
            }
        };
        let lease = Lease {
            node: self.node.clone(),
            expires_at: now + LEASE_MS,
        };
        let value = serde_json::to_vec(&lease).expect("leases serialize");
        match self.meta.put(&key, value, expect).await {
            Ok(revision) => {
                crate::lock(&self.status).node = Some(self.node.clone());
                Ok(Some(revision))
            }
            // Another node took it first.
            Err(gale_store::StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut status = crate::lock(&self.status);
        status.state = state.into();
        if error.is_some() {
            status.last_error = error;
        }
    }

    fn failed(&self, e: &NodeError) {
        tracing::warn!(source = %self.wanted.name, error = %e, "source failed; it runs again after a pause");
        self.set_state("failed", Some(e.to_string()));
    }

    async fn sleep(&mut self, d: Duration) -> bool {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.wait_for(|s| *s) => true,
        };
        stopped || *self.stop.borrow()
    }
}

/// Renews a lease until that fails; returns why (the source must stop).
async fn renew(meta: &dyn Metadata, key: &str, node: &str, mut revision: u64) -> NodeError {
    loop {
        tokio::time::sleep(RENEW).await;
        let lease = Lease {
            node: node.to_string(),
            expires_at: now_ms() + LEASE_MS,
        };
        let value = serde_json::to_vec(&lease).expect("leases serialize");
        match meta.put(key, value, Expect::Revision(revision)).await {
            Ok(r) => revision = r,
            Err(gale_store::StoreError::Conflict { .. }) => {
                return NodeError::DataDir("the source's lease was taken by another node".into());
            }
            Err(e) => return e.into(),
        }
    }
}

/// The admin API's source endpoints (under its auth).
pub fn admin_routes(sources: Arc<Sources>) -> Router {
    Router::new().route("/v1/sources", get(list)).with_state(sources)
}

async fn list(State(sources): State<Arc<Sources>>) -> ApiResult<Json<Vec<SourceInfo>>> {
    Ok(Json(sources.list()))
}
