//! A live function: one deployed version, its admission and scale to zero.
//!
//! An instance exists only while it works. What a deployed function holds
//! between requests is its [`Live`] entry: configuration, counters and, while
//! warm, the loaded code ([`Prepared`]). Admission is a semaphore of
//! `max_instances` permits plus a bounded count of waiters; a request that
//! finds both full is refused at once (429) rather than queued without bound.
//! The reaper unloads the code of a function idle for the node's idle timeout,
//! so 1,000 idle functions cost little more than their compiled code on disk.

use super::logs::{Logs, Started};
use crate::NodeError;
use crate::publisher::Publisher;
use crate::registry::VersionRecord;
use gale_core::api::{FunctionStats, InvocationLog, Outcome};
use gale_core::manifest::RuntimeKind;
use gale_core::{Code, Error, FunctionSpec};
use gale_store::{Artifacts, KeyValue};
use gale_wasm::Prepared;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What running a function takes; every live function holds it.
pub struct Runtimes {
    pub wasm: gale_wasm::Runtime,
    pub processes: gale_process::Runtime,
    pub artifacts: Arc<dyn Artifacts>,
    pub kv: Arc<dyn KeyValue>,
    pub publisher: Publisher,
    pub logs: Logs,
    /// Object storage, for wasm functions' `gale:buckets` calls.
    pub objects: Arc<super::objects::FunctionObjects>,
    /// The S3 API, for functions that use buckets.
    pub s3: S3Env,
}

/// What a function that uses buckets is told of the S3 API.
#[derive(Clone)]
pub struct S3Env {
    /// `http://ADDR` of the S3 API.
    pub endpoint: String,
    pub keys: crate::keys::Keys,
}

impl S3Env {
    /// The variables that point an AWS SDK at Gale's S3 API with the
    /// function's own key, unless the manifest's `env` sets them already.
    pub fn apply(&self, function: &str, spec: &gale_core::FunctionSpec, env: &mut BTreeMap<String, String>) {
        let buckets = spec.granted_buckets();
        if buckets.is_empty() {
            return;
        }
        let (id, secret) = self.keys.for_function(function, buckets);
        for (name, value) in [
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ] {
            env.entry(name.to_string()).or_insert(value);
        }
    }
}

/// Counters of one function, kept across its versions.
#[derive(Default)]
pub struct Counters {
    pub invocations: AtomicU64,
    pub errors: AtomicU64,
    pub cold_starts: AtomicU64,
    pub queued: AtomicU64,
    pub throttled: AtomicU64,
    /// CPU time of its invocations, and their waits for a core, in µs.
    pub cpu_us: AtomicU64,
    pub cpu_waited_us: AtomicU64,
    /// The same over the last half minute or so.
    pub recent: Recent,
}

/// CPU time and waits for a core over the last 30 to 60 seconds: two
/// buckets of 30 s, the older one dropped as a new one starts. Recording
/// is three atomic operations; a count that races a bucket's reset may be
/// lost, which a diagnostic can afford.
#[derive(Default)]
pub struct Recent {
    /// Per bucket: the 30 s period it holds, CPU µs, waited µs.
    buckets: [(AtomicU64, AtomicU64, AtomicU64); 2],
}

const RECENT_PERIOD_S: u64 = 30;

impl Recent {
    fn record(&self, now_s: u64, cpu_us: u64, waited_us: u64) {
        let period = now_s / RECENT_PERIOD_S + 1;
        let (stamp, cpu, waited) = &self.buckets[(period % 2) as usize];
        let seen = stamp.load(Relaxed);
        if seen != period && stamp.compare_exchange(seen, period, Relaxed, Relaxed).is_ok() {
            cpu.store(0, Relaxed);
            waited.store(0, Relaxed);
        }
        cpu.fetch_add(cpu_us, Relaxed);
        waited.fetch_add(waited_us, Relaxed);
    }

    /// CPU µs and waited µs of the current and the previous period.
    pub fn sums(&self, now_s: u64) -> (u64, u64) {
        let period = now_s / RECENT_PERIOD_S + 1;
        self.buckets
            .iter()
            .filter(|(stamp, _, _)| period.saturating_sub(stamp.load(Relaxed)) <= 1)
            .fold((0, 0), |(c, w), (_, cpu, waited)| {
                (c + cpu.load(Relaxed), w + waited.load(Relaxed))
            })
    }
}

/// A function as it serves right now: one version, its limits, its code if warm.
pub struct Live {
    pub name: String,
    pub app: String,
    pub version: u64,
    pub artifact: String,
    pub spec: Arc<FunctionSpec>,
    pub counters: Arc<Counters>,
    /// What running it takes.
    pub runtimes: Arc<Runtimes>,
    /// Publishing and key-value for its instances.
    services: Arc<gale_wasm::events::Services>,
    /// One permit per instance that may run at once.
    pub slots: Arc<Semaphore>,
    loaded: Mutex<Option<Loaded>>,
    /// Load time of the node's clock (ms since `epoch`) of the last request.
    last_used: AtomicU64,
    epoch: Instant,
    /// Serialises cold starts so concurrent first requests load the code once.
    loading: tokio::sync::Mutex<()>,
}

/// A version's code, ready to run, in the runtime its manifest names.
#[derive(Clone)]
pub enum Loaded {
    /// A compiled component; each invocation instantiates it.
    Wasm(Arc<Prepared>),
    /// An unpacked directory and its warm process instances.
    Process(Arc<gale_process::Pool>),
}

/// Why admission refused a request.
pub enum Refused {
    /// Every instance busy and the queue full, or the wait ran out.
    Busy,
}

impl Live {
    /// A live entry for `version`, keeping `slots` of the version it replaces
    /// when the instance limit is unchanged (so in-flight work stays counted).
    pub fn new(
        version: VersionRecord,
        counters: Arc<Counters>,
        runtimes: Arc<Runtimes>,
        previous: Option<&Live>,
        epoch: Instant,
    ) -> Live {
        let VersionRecord {
            function: name,
            version,
            app,
            artifact,
            spec,
            ..
        } = version;
        // Same limit: share the permits, so work in flight on the old version
        // still counts. A new limit starts a new count.
        let slots = previous
            .filter(|p| p.spec.max_instances == spec.max_instances)
            .map(|p| p.slots.clone())
            .unwrap_or_else(|| Arc::new(Semaphore::new(spec.max_instances as usize)));
        // What its instances may reach: publishing (to topics that exist)
        // its app's key-value buckets, and the object buckets its manifest
        // grants (the runtime checks the grant).
        let publisher = runtimes.publisher.clone();
        let services = Arc::new(gale_wasm::events::Services {
            function: name.clone(),
            scope: app.clone(),
            kv: runtimes.kv.clone(),
            topic_exists: Arc::new(move |topic: &str| publisher.exists(topic)),
            buckets: Some(runtimes.objects.clone()),
        });
        Live {
            name,
            app,
            version,
            artifact,
            spec: Arc::new(spec),
            counters,
            runtimes,
            services,
            slots,
            loaded: Mutex::new(None),
            last_used: AtomicU64::new(0),
            epoch,
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for an instance slot: at once if one is free, else in the
    /// bounded queue for at most the function's timeout.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.counters.queued.fetch_add(1, Relaxed);
        let result = if queued >= self.spec.queue as u64 {
            Err(Refused::Busy)
        } else {
            match tokio::time::timeout(self.spec.timeout.0, self.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Ok(permit),
                _ => Err(Refused::Busy),
            }
        };
        self.counters.queued.fetch_sub(1, Relaxed);
        if result.is_err() {
            self.counters.throttled.fetch_add(1, Relaxed);
        }
        result
    }

    /// The loaded code for a request, loading it first if the function was
    /// scaled to zero. Returns whether this request loaded it (a cold start
    /// for wasm; a process function's cold starts are its instance starts).
    pub async fn prepared(&self) -> Result<(Loaded, bool), NodeError> {
        // No touch here: a request in flight holds a slot, which keeps the
        // reaper away; the idle time counts from when it finishes.
        if let Some(p) = self.loaded() {
            return Ok((p, false));
        }
        let (loaded, loaded_now) = self.load().await?;
        if loaded_now && matches!(loaded, Loaded::Wasm(_)) {
            self.counters.cold_starts.fetch_add(1, Relaxed);
        }
        Ok((loaded, loaded_now))
    }

    fn loaded(&self) -> Option<Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the code (once, however many callers wait); true if this call
    /// did the loading. Code missing from the compiled cache (a new node
    /// version, a cleared cache) is compiled again from the stored artifact;
    /// a process function's package is unpacked on its first load.
    pub async fn load(&self) -> Result<(Loaded, bool), NodeError> {
        let _loading = self.loading.lock().await;
        if let Some(p) = self.loaded() {
            return Ok((p, false));
        }
        let loaded = match self.spec.runtime {
            RuntimeKind::Wasm => Loaded::Wasm(Arc::new(self.load_wasm().await?)),
            RuntimeKind::Process => Loaded::Process(Arc::new(self.load_process().await?)),
        };
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        self.touch();
        Ok((loaded, true))
    }

    async fn artifact(&self) -> Result<Vec<u8>, NodeError> {
        self.runtimes
            .artifacts
            .get(&self.artifact)
            .await?
            .ok_or_else(|| NodeError::DataDir(format!("artifact {} is missing", self.artifact)))
    }

    async fn load_wasm(&self) -> Result<Prepared, NodeError> {
        let runtime = self.runtimes.wasm.clone();
        let wasm = if runtime.is_compiled(&self.artifact) {
            None
        } else {
            tracing::info!(function = %self.name, "compiled code missing from the cache; compiling again");
            Some(self.artifact().await?)
        };
        let artifact = self.artifact.clone();
        let spec = self.spec.clone();
        let services = self.services.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(wasm) = wasm {
                runtime.compile(&artifact, &wasm)?;
            }
            runtime.load(&artifact, spec, Some(services))
        })
        .await
        .map_err(|e| NodeError::DataDir(format!("loading task failed: {e}")))?
        .map_err(NodeError::from)
    }

    async fn load_process(&self) -> Result<gale_process::Pool, NodeError> {
        let processes = self.runtimes.processes.clone();
        let package = if processes.root(&self.name, self.version).is_dir() {
            None
        } else {
            Some(self.artifact().await?)
        };
        let spec = gale_process::Spec {
            function: self.name.clone(),
            version: self.version,
            command: self.spec.command.clone(),
            handler: self.spec.handler.clone(),
            env: {
                let mut env = self.spec.env.clone();
                self.runtimes.s3.apply(&self.name, &self.spec, &mut env);
                env
            },
            memory: self.spec.memory.0,
            user: user(&*self.runtimes.kv, &self.name).await?,
            publish: Some(publish_hook(self.runtimes.publisher.clone())),
        };
        tokio::task::spawn_blocking(move || {
            processes.prepare(spec, || {
                package.ok_or_else(|| gale_process::ProcessError::Package("the package vanished".into()))
            })
        })
        .await
        .map_err(|e| NodeError::DataDir(format!("loading task failed: {e}")))?
        .map_err(|e| Error::new(Code::ArtifactInvalid, e.to_string()).into())
    }

    /// Counts a finished invocation and files its log record.
    pub fn finished(&self, started: Started, c: gale_wasm::Completion, status: u16) {
        let Started {
            request_id,
            at: started_at,
            cold_start,
            events,
        } = started;
        self.touch();
        self.counters.invocations.fetch_add(1, Relaxed);
        if matches!(c.outcome, Outcome::Error | Outcome::Timeout) {
            self.counters.errors.fetch_add(1, Relaxed);
        }
        let (cpu_us, waited_us) = (c.cpu.cpu.as_micros() as u64, c.cpu.waited.as_micros() as u64);
        self.counters.cpu_us.fetch_add(cpu_us, Relaxed);
        self.counters.cpu_waited_us.fetch_add(waited_us, Relaxed);
        self.counters
            .recent
            .record(self.epoch.elapsed().as_secs(), cpu_us, waited_us);
        self.runtimes.logs.record(InvocationLog {
            seq: 0,
            request_id,
            function: self.name.clone(),
            version: self.version,
            started_at,
            duration_us: c.duration.as_micros() as u64,
            cpu_us,
            outcome: c.outcome,
            status,
            cold_start,
            error: c.error,
            stdout: c.stdout,
            stderr: c.stderr,
            events,
        });
    }

    pub fn touch(&self) {
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    fn active(&self) -> u64 {
        (self.spec.max_instances as usize).saturating_sub(self.slots.available_permits()) as u64
    }

    /// What holds its waiting events back: the node's CPU when its recent
    /// invocations waited for a core longer than they computed.
    pub fn limited_by(&self) -> gale_core::api::Limit {
        let (cpu, waited) = self.counters.recent.sums(self.epoch.elapsed().as_secs());
        if waited > cpu {
            gale_core::api::Limit::Cpu
        } else {
            gale_core::api::Limit::Handler
        }
    }

    /// Unloads the code if the function has been idle for `idle`.
    /// Returns whether it did.
    pub fn reap(&self, idle: Duration) -> bool {
        // A process function's pool is only its configuration; its
        // instances are what scale to zero, one by one as each idles out.
        if let Some(Loaded::Process(pool)) = self.loaded() {
            return pool.reap(idle) > 0 && pool.warm_instances() == 0;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        if now.saturating_sub(self.last_used.load(Relaxed)) < idle.as_millis() as u64 || self.active() > 0 {
            return false;
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match loaded.take() {
            Some(Loaded::Wasm(p)) => {
                p.drop_idle();
                true
            }
            Some(Loaded::Process(_)) | None => false,
        }
    }

    /// Stops a process function's idle instances now (the node is stopping).
    pub fn stop_instances(&self) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*loaded, Some(Loaded::Process(_))) {
            *loaded = None;
        }
    }

    pub fn stats(&self) -> FunctionStats {
        let c = &self.counters;
        FunctionStats {
            invocations: c.invocations.load(Relaxed),
            errors: c.errors.load(Relaxed),
            cold_starts: c.cold_starts.load(Relaxed),
            active: self.active(),
            queued: c.queued.load(Relaxed),
            throttled: c.throttled.load(Relaxed),
            cpu_us: c.cpu_us.load(Relaxed),
            cpu_waited_us: c.cpu_waited_us.load(Relaxed),
            warm: match self.loaded() {
                Some(Loaded::Process(pool)) => pool.warm_instances() > 0,
                loaded => loaded.is_some(),
            },
        }
    }
}

/// The (uid, gid) a function's instances run as: its own unprivileged user
/// when the node runs as root (so functions cannot read each other's
/// files), the node's user otherwise. Numbers are handed out once per
/// function from a counter in the node's key-value store.
async fn user(kv: &dyn KeyValue, function: &str) -> Result<Option<(u32, u32)>, NodeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    const BASE: u64 = 200_000;
    let n = match kv.kv_get("_gale", "uids", function).await? {
        Some(v) => String::from_utf8_lossy(&v).parse::<u64>().ok(),
        None => None,
    };
    let n = match n {
        Some(n) => n,
        None => {
            let n = kv.kv_increment("_gale", "uids", "_next", 1).await?;
            kv.kv_set("_gale", "uids", function, n.to_string().into_bytes())
                .await?;
            n
        }
    };
    let id = (BASE + n) as u32;
    Ok(Some((id, id)))
}

/// What an instance's `POST $GALE_API/_gale/topics/{topic}/events` goes
/// through: the same parsing and limits as the gateway's publish.
fn publish_hook(publisher: Publisher) -> gale_process::Publish {
    Arc::new(move |topic: &str, headers: &http::HeaderMap, body: &[u8]| {
        let refused = |e: gale_core::Error| gale_process::PublishRefused {
            status: e.code.http_status(),
            body: serde_json::json!({ "error": e }).to_string(),
        };
        if !publisher.exists(topic) {
            return Err(refused(
                gale_core::Error::new(
                    gale_core::Code::TopicNotFound,
                    format!("no topic named `{topic}`"),
                )
                .with_hint("declare it in the manifest's [topics] or create it with `gale topics create`"),
            ));
        }
        crate::events::parse_for_store(headers, body).map_err(refused)
    })
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn recent_cpu_time_covers_the_last_half_minute_to_minute() {
        let recent = Recent::default();
        recent.record(5, 100, 10);
        recent.record(29, 50, 300);
        assert_eq!(recent.sums(29), (150, 310));
        // The next period keeps the previous one beside it...
        recent.record(31, 7, 7);
        assert_eq!(recent.sums(40), (157, 317));
        // ...and drops it once a newer one begins.
        recent.record(61, 1, 2);
        assert_eq!(recent.sums(61), (8, 9));
        assert_eq!(recent.sums(125), (0, 0));
    }
}
