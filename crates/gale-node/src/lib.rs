//! A Gale node: everything `gale serve` runs in one process.
//!
//! - the gateway ([`gateway`]) routes user HTTP requests to functions;
//! - the scheduler ([`scheduler`]) admits requests, loads code on demand and
//!   scales idle functions to zero;
//! - the admin API ([`admin`]) deploys apps and answers the CLI;
//! - topics take CloudEvents in ([`events`]) and the dispatcher
//!   ([`dispatch`]) delivers them to subscribed functions, with retries and
//!   dead letters;
//! - the registry ([`registry`]) keeps apps, functions and versions on the
//!   storage seam ([`gale_store`]); the wasm runtime ([`gale_wasm`]) runs them.
//!
//! [`start`] wires these together and returns a [`NodeHandle`].

pub mod admin;
mod deploy;
pub mod dispatch;
mod error;
pub mod events;
pub mod gateway;
mod invocations;
mod lambda;
mod meters;
pub mod registry;
mod routes;
mod schedule;
pub mod scheduler;
mod sigv4;
mod tokens;

pub use error::NodeError;

use dispatch::Subscriber;
use gale_core::api::InvocationLog;
use gale_store::{Embedded, InvocationLogs, Topics};
use gale_wasm::{Runtime, RuntimeConfig};
use registry::Registry;
use routes::RouteTable;
use scheduler::{Counters, Live};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Settings of a node (the flags of `gale serve`).
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A function idle this long unloads its code (scale to zero).
    pub idle_timeout: Duration,
    /// Invocation logs older than this are dropped.
    pub log_retention: Duration,
    /// Invocation logs kept per function at most.
    pub log_keep: usize,
    /// Instances alive at once across all functions.
    pub max_instances: u32,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 8081).into(),
            data_dir: data_dir.into(),
            idle_timeout: Duration::from_secs(60),
            log_retention: Duration::from_secs(24 * 3600),
            log_keep: 1000,
            max_instances: 1000,
        }
    }
}

/// The state every part of the node shares.
pub struct State {
    store: Embedded,
    registry: Registry<Embedded>,
    runtime: Runtime,
    processes: gale_process::Runtime,
    functions: RwLock<HashMap<String, Arc<Live>>>,
    /// Versions other than the serving one, loaded for an invocation that
    /// named them (the Invoke API's `Qualifier`); scaled to zero like the rest.
    pinned: Mutex<HashMap<(String, u64), Arc<Live>>>,
    routes: RwLock<Arc<RouteTable>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    logs: mpsc::Sender<InvocationLog>,
    token: String,
    /// Publish tokens by the SHA-256 of the token.
    tokens: Mutex<HashMap<String, gale_core::api::TokenInfo>>,
    /// One deploy, rollback or removal at a time on this node.
    changes: tokio::sync::Mutex<()>,
    epoch: Instant,
    meters: meters::Meters,
    /// The running dispatcher of each subscription, by (topic, subscription).
    dispatchers: Mutex<HashMap<(String, String), Dispatcher>>,
    /// Names of the topics that exist, for the publish host call's check.
    topic_names: RwLock<std::collections::HashSet<String>>,
    /// Whether the node is stopping (no new dispatchers then).
    stopping: watch::Sender<bool>,
    /// Where dispatchers run (see [`Deliveries`]).
    deliveries: tokio::runtime::Handle,
}

/// What is known of an invocation when it starts, for its log record.
pub(crate) struct Started {
    pub request_id: String,
    /// Unix milliseconds.
    pub at: u64,
    pub cold_start: bool,
    /// Ids of the events it handles.
    pub events: Vec<String>,
}

/// A subscription's dispatcher task and the switch that stops it.
struct Dispatcher {
    subscriber: Subscriber,
    stop: watch::Sender<bool>,
}

impl State {
    fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn function(&self, name: &str) -> Option<Arc<Live>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Counts a finished invocation and files its log record.
    pub(crate) fn finished(&self, live: &Live, started: Started, c: gale_wasm::Completion, status: u16) {
        let Started {
            request_id,
            at: started_at,
            cold_start,
            events,
        } = started;
        use gale_core::api::Outcome;
        use std::sync::atomic::Ordering::Relaxed;
        live.touch();
        live.counters.invocations.fetch_add(1, Relaxed);
        if matches!(c.outcome, Outcome::Error | Outcome::Timeout) {
            live.counters.errors.fetch_add(1, Relaxed);
        }
        self.log(InvocationLog {
            seq: 0,
            request_id,
            function: live.name.clone(),
            version: live.version,
            started_at,
            duration_us: c.duration.as_micros() as u64,
            outcome: c.outcome,
            status,
            cold_start,
            error: c.error,
            stdout: c.stdout,
            stderr: c.stderr,
            events,
        });
    }

    fn log(&self, record: InvocationLog) {
        // Logs are diagnostics: if the writer falls far behind, drop rather
        // than grow without bound or slow the request path.
        if self.logs.try_send(record).is_err() {
            tracing::warn!("invocation log writer is behind; a record was dropped");
        }
    }

    /// Rebuilds the live functions and the route table from the registry,
    /// keeping warm code of versions that did not change.
    async fn sync(self: &Arc<Self>) -> Result<(), NodeError> {
        let mut next = HashMap::new();
        for app in self.registry.apps().await? {
            for (name, version) in &app.functions {
                // A record this node cannot read must not stop it serving the rest.
                let record = match self.registry.version(name, *version).await {
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
                let current = self.function(name);
                if let Some(live) = current.as_ref().filter(|l| l.version == *version) {
                    next.insert(name.clone(), live.clone());
                    continue;
                }
                let counters = self
                    .counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.clone())
                    .or_default()
                    .clone();
                let services = self.services(name, &app.name);
                let live = Live::new(record, counters, services, current.as_deref(), self.epoch);
                next.insert(name.clone(), Arc::new(live));
            }
        }
        let table = RouteTable::build(next.values());
        let wanted = dispatch::desired(&next, |t| self.topic_exists(t));
        *self.functions.write().unwrap_or_else(|p| p.into_inner()) = next;
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.subscribe(wanted).await
    }

    /// `function` at `version`: the serving entry if it is that version,
    /// else one made (and kept while warm) for invocations that name it.
    async fn function_at(
        self: &Arc<Self>,
        function: &str,
        version: u64,
    ) -> Result<Option<Arc<Live>>, NodeError> {
        let Some(serving) = self.function(function) else {
            return Ok(None);
        };
        if serving.version == version {
            return Ok(Some(serving));
        }
        if let Some(live) = lock(&self.pinned).get(&(function.to_string(), version)) {
            return Ok(Some(live.clone()));
        }
        let Some(record) = self.registry.version(function, version).await? else {
            return Ok(None);
        };
        let services = self.services(function, &serving.app);
        let live = Arc::new(Live::new(
            record,
            serving.counters.clone(),
            services,
            None,
            self.epoch,
        ));
        Ok(Some(
            lock(&self.pinned)
                .entry((function.to_string(), version))
                .or_insert(live)
                .clone(),
        ))
    }

    /// What a function's instances may reach: publishing (to topics that
    /// exist) and its app's key-value buckets. Holds the node weakly: a
    /// function must not keep its node alive.
    fn services(self: &Arc<Self>, function: &str, app: &str) -> Arc<gale_wasm::events::Services> {
        let node = Arc::downgrade(self);
        Arc::new(gale_wasm::events::Services {
            function: function.to_string(),
            scope: app.to_string(),
            kv: Arc::new(self.store.clone()),
            topic_exists: Arc::new(move |topic: &str| node.upgrade().is_some_and(|n| n.topic_exists(topic))),
        })
    }

    /// Makes the store's subscriptions and the running dispatchers match the
    /// triggers of the live functions: new triggers subscribe (from the
    /// topic's next event), removed ones unsubscribe (their backlog goes).
    async fn subscribe(self: &Arc<Self>, wanted: Vec<Subscriber>) -> Result<(), NodeError> {
        let key = |s: &Subscriber| (s.topic.clone(), s.subscription.clone());
        for sub in &wanted {
            let running = lock(&self.dispatchers)
                .get(&key(sub))
                .map(|d| d.subscriber.clone());
            if running.as_ref() == Some(sub) {
                continue;
            }
            if let Err(e) = self
                .store
                .put_subscription(&sub.topic, &sub.subscription, sub.ordered)
                .await
            {
                tracing::error!(topic = %sub.topic, function = %sub.function, error = %e, "subscribing failed");
                continue;
            }
            if *self.stopping.borrow() {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let previous = lock(&self.dispatchers).insert(
                key(sub),
                Dispatcher {
                    subscriber: sub.clone(),
                    stop,
                },
            );
            if let Some(previous) = previous {
                let _ = previous.stop.send(true);
            }
            self.deliveries
                .spawn(dispatch::run(self.clone(), sub.clone(), stopped));
        }
        let gone: Vec<(String, String)> = lock(&self.dispatchers)
            .keys()
            .filter(|k| !wanted.iter().any(|s| key(s) == **k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(d) = lock(&self.dispatchers).remove(&k) {
                let _ = d.stop.send(true);
            }
            self.store.delete_subscription(&k.0, &k.1).await?;
        }
        // Subscriptions left in the store by triggers removed while no
        // dispatcher ran (a node stopped mid-change).
        for topic in self.store.topics().await? {
            for s in topic.subscriptions {
                if !wanted
                    .iter()
                    .any(|w| w.topic == topic.name && w.subscription == s.name)
                {
                    self.store.delete_subscription(&topic.name, &s.name).await?;
                }
            }
        }
        Ok(())
    }

    /// Stops every dispatcher; their leased events are delivered again after a restart.
    fn stop_dispatchers(&self) {
        let _ = self.stopping.send(true);
        for (_, d) in lock(&self.dispatchers).drain() {
            let _ = d.stop.send(true);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running node.
pub struct NodeHandle {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    /// The admin bearer token.
    pub token: String,
    /// Whether the token was created by this start (so it should be shown once).
    pub token_created: bool,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    /// Gateway, admin API, housekeeping: stopped first.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    deliveries: Deliveries,
    /// Stopped last, once no invocation can log any more.
    log_writer: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
}

/// Nice value of the delivery threads: under contention they get about a
/// tenth of a gateway thread's share of the CPU, and all of it when the
/// gateway is idle.
const DELIVERY_NICE: i32 = 10;

/// The runtime event deliveries run on, apart from the gateway's.
///
/// On one runtime, a fetch of 64 events spawned 64 delivery tasks into a
/// worker's queue, and the connection of a publisher whose event had just
/// become durable waited behind all of them to be told so. Publishers
/// waited longer, published less, and left the cores idle. On threads of
/// their own at a lower priority, deliveries use what the gateway leaves
/// (figures in docs/ARCHITECTURE.md).
struct Deliveries(Option<tokio::runtime::Runtime>);

impl Deliveries {
    /// Starts the threads; returns where to spawn dispatchers.
    fn start() -> Result<(Deliveries, tokio::runtime::Handle), NodeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("gale-deliver")
            .on_thread_start(|| {
                // SAFETY: plain syscall; on Linux `who = 0` is the calling thread.
                #[cfg(target_os = "linux")]
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, DELIVERY_NICE);
                }
            })
            .enable_all()
            .build()
            .map_err(NodeError::Threads)?;
        let handle = runtime.handle().clone();
        Ok((Deliveries(Some(runtime)), handle))
    }

    /// Cancels the deliveries still running (their leases bring the events
    /// back) and waits for the threads to end.
    async fn stop(mut self) {
        if let Some(runtime) = self.0.take() {
            let _ =
                tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(2))).await;
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl NodeHandle {
    /// Stops accepting, lets running requests finish, then flushes the
    /// invocation logs; gives up waiting after 15 s in all.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        self.state.stop_dispatchers();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        for live in self
            .state
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            live.stop_instances();
        }
        self.deliveries.stop().await;
        let (flush, writer) = self.log_writer;
        let _ = flush.send(true);
        let _ = tokio::time::timeout_at(deadline, writer).await;
    }
}

fn load_or_create_token(dir: &std::path::Path) -> Result<(String, bool), NodeError> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeError::DataDir(format!("cannot read {}: {e}", path.display()))),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NodeError::DataDir(format!("no randomness for a token: {e}")))?;
    let token = format!("gale_{}", hex::encode(bytes));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| NodeError::DataDir(format!("cannot write {}: {e}", path.display())))?;
    Ok((token, true))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// Starts a node: opens (and locks) the data directory, loads what is
/// deployed, and serves the gateway and the admin API.
pub async fn start(options: Options) -> Result<NodeHandle, NodeError> {
    let store = Embedded::open(&options.data_dir)?;
    let (token, token_created) = load_or_create_token(&options.data_dir)?;
    let runtime_config = RuntimeConfig {
        cache_dir: options.data_dir.join("compiled"),
        max_instances: options.max_instances,
    };
    let runtime = tokio::task::spawn_blocking(move || Runtime::new(runtime_config))
        .await
        .map_err(|e| NodeError::DataDir(e.to_string()))??;
    let processes = gale_process::Runtime::new(options.data_dir.join("process"))
        .map_err(|e| NodeError::DataDir(e.to_string()))?;
    let gateway_listener = bind(options.listen).await?;
    let admin_listener = bind(options.admin_listen).await?;
    let (logs_tx, logs_rx) = mpsc::channel(64 * 1024);
    let (deliveries, delivery_handle) = Deliveries::start()?;
    let state = Arc::new(State {
        registry: Registry { meta: store.clone() },
        store,
        runtime,
        processes,
        functions: RwLock::new(HashMap::new()),
        pinned: Mutex::new(HashMap::new()),
        routes: RwLock::new(Arc::new(RouteTable::empty())),
        counters: Mutex::new(HashMap::new()),
        logs: logs_tx,
        token: token.clone(),
        tokens: Mutex::new(HashMap::new()),
        changes: tokio::sync::Mutex::new(()),
        epoch: Instant::now(),
        meters: meters::Meters::new(),
        dispatchers: Mutex::new(HashMap::new()),
        topic_names: RwLock::new(Default::default()),
        stopping: watch::channel(false).0,
        deliveries: delivery_handle,
    });
    state.load_tokens().await?;
    state.refresh_topic_names().await?;
    state.sync().await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let gateway = gateway_listener
        .local_addr()
        .map_err(|source| NodeError::Listen {
            addr: options.listen.to_string(),
            source,
        })?;
    let admin = admin_listener.local_addr().map_err(|source| NodeError::Listen {
        addr: options.admin_listen.to_string(),
        source,
    })?;
    let tasks = vec![
        tokio::spawn(gateway::serve(
            state.clone(),
            gateway_listener,
            shutdown_rx.clone(),
        )),
        tokio::spawn(admin::run(state.clone(), admin_listener, shutdown_rx.clone())),
        tokio::spawn(schedule::run(state.clone(), shutdown_rx.clone())),
        tokio::spawn(housekeeping(state.clone(), options.clone(), shutdown_rx)),
    ];
    let (flush, flush_rx) = watch::channel(false);
    let log_writer = (
        flush,
        tokio::spawn(write_logs(state.store.clone(), logs_rx, flush_rx)),
    );
    tracing::info!(%gateway, %admin, data_dir = %options.data_dir.display(), "node started");
    Ok(NodeHandle {
        gateway,
        admin,
        token,
        token_created,
        state,
        shutdown,
        tasks,
        deliveries,
        log_writer,
    })
}

/// Writes invocation logs in batches: one transaction per batch keeps the
/// request path free of storage latency.
async fn write_logs(
    store: Embedded,
    mut rx: mpsc::Receiver<InvocationLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => batch.push(r),
                None => return,
            },
            _ = shutdown.changed() => {
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                }
                if let Err(e) = store.append(batch).await {
                    tracing::error!(error = %e, "writing invocation logs failed");
                }
                return;
            }
        }
        // Let a batch gather: one commit per batch, not per invocation.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Err(e) = store.append(batch).await {
            tracing::error!(error = %e, "writing invocation logs failed");
        }
    }
}

/// Periodic work: scale idle functions to zero, prune old logs, apply
/// topic retention.
async fn housekeeping(state: Arc<State>, options: Options, mut shutdown: watch::Receiver<bool>) {
    let tick = options
        .idle_timeout
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let functions: Vec<Arc<Live>> = state
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for live in functions {
            if live.reap(options.idle_timeout) {
                tracing::debug!(function = %live.name, "scaled to zero");
            }
        }
        // Pinned versions go once idle (or once their function is gone).
        lock(&state.pinned).retain(|(name, _), live| {
            let idle = live.reap(options.idle_timeout) || !live.stats().warm;
            !idle && state.function(name).is_some()
        });
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            let retention = options.log_retention.as_millis() as u64;
            if let Err(e) = state
                .store
                .prune(registry::now_ms(), retention, options.log_keep)
                .await
            {
                tracing::warn!(error = %e, "pruning invocation logs failed");
            }
            match state.store.enforce_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "retention dropped old events"),
                Err(e) => tracing::warn!(error = %e, "applying topic retention failed"),
            }
        }
    }
}
