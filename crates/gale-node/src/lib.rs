//! A Gale node: everything `gale serve` runs in one process, by plane:
//!
//! - [`ingress`]: the gateway (user routes, publishing, invocations, the
//!   Lambda Invoke API) and the S3-compatible API;
//! - [`sources`]: what feeds topics from outside (schedules, databases,
//!   brokers);
//! - [`delivery`]: subscriptions and dispatchers, from topics to functions,
//!   and sinks, from topics to brokers;
//! - [`control`]: the admin API and deploys;
//! - [`functions`]: the live functions and the one place an invocation
//!   becomes a wasm or process run, which all of the above use;
//! - at the bottom, shared by all: [`publisher`] (the one way to append
//!   events), [`registry`], [`auth`], [`events`] (the CloudEvents format),
//!   [`http`] (error answers, request ids), the clock and the meters.
//!
//! Planes never import each other: what one must tell another goes
//! through a floor below (the live functions tell their followers of
//! every change). [`start`] wires them together and returns a
//! [`NodeHandle`]; storage is chosen here once ([`Options::store`]) and
//! held as trait objects.

pub mod auth;
pub mod brokers;
pub mod buckets;
mod clock;
pub mod control;
pub mod delivery;
mod error;
pub mod events;
pub mod functions;
pub mod http;
pub mod ingress;
pub mod keys;
mod meters;
pub mod publisher;
pub mod registry;
pub mod sources;

pub use error::NodeError;
pub use gale_store::Backend;

use auth::Tokens;
use control::Control;
use delivery::dispatcher::Dispatch;
use delivery::sinks::Sinks;
use delivery::subscriptions::Subscriptions;
use functions::Functions;
use functions::live::Runtimes;
use gale_store::Stores;
use gale_wasm::RuntimeConfig;
use ingress::context::Ingress;
use ingress::routes::Routes;
use publisher::Publisher;
use registry::Registry;
use sources::Sources;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

/// Settings of a node (the flags of `gale serve`).
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The S3-compatible API.
    pub s3_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The storage backend.
    pub store: Backend,
    /// A function idle this long unloads its code (scale to zero).
    pub idle_timeout: Duration,
    /// Invocation logs older than this are dropped.
    pub log_retention: Duration,
    /// Invocation logs kept per function at most.
    pub log_keep: usize,
    /// Instances alive at once across all functions.
    pub max_instances: u32,
    /// The least share of the CPU, in percent (1 to 50), that deliveries
    /// keep against the gateway.
    pub delivery_share: u8,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 8081).into(),
            s3_listen: ([127, 0, 0, 1], 8082).into(),
            data_dir: data_dir.into(),
            store: Backend::Embedded,
            idle_timeout: Duration::from_secs(60),
            log_retention: Duration::from_secs(24 * 3600),
            log_keep: 1000,
            max_instances: 1000,
            delivery_share: 25,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// A running node.
pub struct NodeHandle {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    /// The S3-compatible API.
    pub s3: SocketAddr,
    /// The admin bearer token.
    pub token: String,
    /// Whether the token was created by this start (so it should be shown once).
    pub token_created: bool,
    /// The name this node holds leases under.
    pub node_id: String,
    stores: Stores,
    functions: Functions,
    subscriptions: Arc<Subscriptions>,
    sinks: Arc<Sinks>,
    sources: Arc<Sources>,
    shutdown: watch::Sender<bool>,
    /// Gateway, admin API, housekeeping, change feed: stopped first.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    deliveries: Deliveries,
    /// Stopped last, once no invocation can log any more.
    log_writer: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
}

/// The runtime event deliveries run on, apart from the gateway's.
///
/// On one runtime, a fetch of many events spawned as many delivery tasks
/// into a worker's queue, and the connection of a publisher whose event
/// had just become durable waited behind all of them to be told so.
/// Publishers waited longer, published less, and left the cores idle. On
/// threads of their own at a lower priority, deliveries use what the
/// gateway leaves, and never less than their share (`--delivery-share`):
/// the kernel splits a contended core between threads by the weights of
/// their nice values, and theirs is the one whose weight against a gateway
/// thread's gives that share.
struct Deliveries(Option<tokio::runtime::Runtime>);

impl Deliveries {
    /// Starts the threads; returns where to spawn dispatchers.
    fn start(share: u8) -> Result<(Deliveries, tokio::runtime::Handle), NodeError> {
        let nice = nice_for_share(share);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("gale-deliver")
            .on_thread_start(move || {
                // SAFETY: plain syscall; on Linux `who = 0` is the calling thread.
                #[cfg(target_os = "linux")]
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, nice);
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

/// The kernel's weight of each nice value from 0 to 19 (the CFS table):
/// each step is about 1.25 times less CPU than the one before.
const NICE_WEIGHTS: [u32; 20] = [
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
];

/// The nice value whose weight against nice 0 comes closest to `share`
/// percent of a contended core: weight / (1024 + weight) = share.
fn nice_for_share(share: u8) -> i32 {
    let share = f64::from(share.clamp(1, 50)) / 100.0;
    let wanted = 1024.0 * share / (1.0 - share);
    let distance = |w: u32| (f64::from(w) / wanted).ln().abs();
    (0..NICE_WEIGHTS.len())
        .min_by(|a, b| distance(NICE_WEIGHTS[*a]).total_cmp(&distance(NICE_WEIGHTS[*b])))
        .unwrap_or(0) as i32
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl NodeHandle {
    /// The node's storage, as another node of a cluster would reach it
    /// (for tests of what the node does when others change things).
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Invocations running or waiting for an instance right now, over all
    /// functions: what [`NodeHandle::shutdown`] waits for.
    pub fn in_flight(&self) -> u64 {
        self.functions
            .snapshot()
            .values()
            .map(|live| {
                let stats = live.stats();
                stats.active + stats.queued
            })
            .sum()
    }

    /// Stops accepting, lets running requests finish, then flushes the
    /// invocation logs; gives up waiting after 15 s in all.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        self.subscriptions.stop();
        self.sinks.stop();
        let _ = tokio::time::timeout_at(deadline, self.sources.stop()).await;
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        self.functions.stop();
        self.deliveries.stop().await;
        let (flush, writer) = self.log_writer;
        let _ = flush.send(true);
        let _ = tokio::time::timeout_at(deadline, writer).await;
    }
}

/// The contents of `dir/<name>`, made with `make` (and kept, 0600) if
/// missing; whether it was made now.
fn load_or_create(
    dir: &std::path::Path,
    name: &str,
    make: impl FnOnce([u8; 32]) -> String,
) -> Result<(String, bool), NodeError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeError::DataDir(format!("cannot read {}: {e}", path.display()))),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NodeError::DataDir(format!("no randomness for {name}: {e}")))?;
    let token = make(bytes);
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
    // Listen first: a port in use stops the start before anything is
    // created in the data directory.
    let gateway_listener = bind(options.listen).await?;
    let admin_listener = bind(options.admin_listen).await?;
    let s3_listener = bind(options.s3_listen).await?;
    let local = |l: &TcpListener, asked: SocketAddr| {
        l.local_addr().map_err(|source| NodeError::Listen {
            addr: asked.to_string(),
            source,
        })
    };
    let gateway = local(&gateway_listener, options.listen)?;
    let admin = local(&admin_listener, options.admin_listen)?;
    let s3 = local(&s3_listener, options.s3_listen)?;
    let dir = &options.data_dir;
    let stores = gale_store::open(options.store, dir)?;
    let (token, token_created) = load_or_create(dir, "token", |b| format!("gale_{}", hex::encode(b)))?;
    let (node_id, _) = load_or_create(dir, "node", |b| format!("node-{}", hex::encode(&b[..6])))?;
    let runtime_config = RuntimeConfig {
        cache_dir: dir.join("compiled"),
        max_instances: options.max_instances,
    };
    let wasm = tokio::task::spawn_blocking(move || gale_wasm::Runtime::new(runtime_config))
        .await
        .map_err(|e| NodeError::DataDir(e.to_string()))??;
    let processes =
        gale_process::Runtime::new(dir.join("process")).map_err(|e| NodeError::DataDir(e.to_string()))?;

    let meters = Arc::new(meters::Meters::new());
    let publisher = Publisher::new(stores.topics.clone(), meters).await?;
    let tokens = Tokens::load(token.clone(), stores.metadata.clone()).await?;
    let keys = keys::Keys::load(token.clone(), stores.metadata.clone()).await?;
    let buckets = buckets::Buckets {
        objects: stores.objects.clone(),
        publisher: publisher.clone(),
    };
    let (logs, log_writer) = functions::logs::Logs::new(stores.logs.clone());
    let functions = Functions::new(
        Registry {
            meta: stores.metadata.clone(),
        },
        Runtimes {
            wasm,
            processes,
            artifacts: stores.artifacts.clone(),
            kv: stores.kv.clone(),
            publisher: publisher.clone(),
            logs,
            objects: Arc::new(functions::objects::FunctionObjects {
                buckets: buckets.clone(),
            }),
            s3: functions::live::S3Env {
                endpoint: format!("http://{s3}"),
                keys: keys.clone(),
            },
        },
    );
    let (deliveries, delivery_runtime) = Deliveries::start(options.delivery_share)?;
    let dispatch = Dispatch {
        functions: functions.clone(),
        publisher: publisher.clone(),
        topics: stores.topics.clone(),
        runtime: delivery_runtime,
    };
    let routes = Arc::new(Routes::default());
    let subscriptions = Arc::new(Subscriptions::new(dispatch.clone()));
    let sinks = Arc::new(Sinks::new(
        functions.clone(),
        dispatch.topics.clone(),
        publisher.clone(),
        dispatch.runtime.clone(),
    ));
    let sources = Arc::new(Sources::new(
        node_id.clone(),
        functions.clone(),
        publisher.clone(),
        stores.metadata.clone(),
    ));
    functions.follow(routes.clone());
    functions.follow(subscriptions.clone());
    functions.follow(sinks.clone());
    functions.follow(sources.clone());
    // Follow the store from before the first read, so nothing written
    // meanwhile goes unseen.
    let changes = (stores.metadata.watch(), stores.topics.watch_topics());
    functions.sync().await?;

    let ingress = Ingress {
        functions: functions.clone(),
        routes,
        publisher: publisher.clone(),
        tokens: tokens.clone(),
    };
    let control = Control {
        functions: functions.clone(),
        publisher: publisher.clone(),
        tokens: tokens.clone(),
        buckets: buckets.clone(),
        keys: keys.clone(),
        artifacts: stores.artifacts.clone(),
        logs: stores.logs.clone(),
        topics: stores.topics.clone(),
        changes: Arc::default(),
    };
    let admin_api = control::admin::router(
        control,
        vec![
            ingress::admin::routes(ingress.clone()),
            delivery::admin::routes(dispatch),
            sources::admin_routes(sources.clone()),
        ],
    );

    let (shutdown, shutdown_rx) = watch::channel(false);
    let s3_api = ingress::s3::S3Api::new(buckets.clone(), keys.clone(), s3);
    let tasks = vec![
        tokio::spawn(ingress::gateway::serve(
            ingress,
            gateway_listener,
            shutdown_rx.clone(),
        )),
        tokio::spawn(ingress::s3::serve(s3_api, s3_listener, shutdown_rx.clone())),
        tokio::spawn(control::admin::run(
            admin_api,
            admin_listener,
            shutdown_rx.clone(),
        )),
        tokio::spawn(housekeeping(
            stores.clone(),
            buckets,
            functions.clone(),
            options.clone(),
            shutdown_rx.clone(),
        )),
        tokio::spawn(follow_changes(
            changes,
            functions.clone(),
            (tokens, keys),
            publisher,
            shutdown_rx,
        )),
    ];
    let (flush, flush_rx) = watch::channel(false);
    let log_writer = (flush, tokio::spawn(log_writer.run(flush_rx)));
    tracing::info!(%gateway, %admin, %s3, node = %node_id, data_dir = %dir.display(), "node started");
    Ok(NodeHandle {
        gateway,
        admin,
        s3,
        token,
        token_created,
        node_id,
        stores,
        functions,
        subscriptions,
        sinks,
        sources,
        shutdown,
        tasks,
        deliveries,
        log_writer,
    })
}

/// What the change feeds said since the node last looked.
#[derive(Default)]
struct Seen {
    registry: bool,
    /// Publish tokens or S3 keys.
    credentials: bool,
    topics: bool,
}

impl Seen {
    fn key(&mut self, r: Result<gale_store::Change, broadcast::error::RecvError>) {
        match r {
            Ok(c) if registry::is_registry_key(&c.key) => self.registry = true,
            Ok(c) if Tokens::is_token_key(&c.key) || keys::Keys::is_key_key(&c.key) => {
                self.credentials = true
            }
            Ok(_) => {}
            // Fell behind: look at everything again.
            Err(_) => *self = Seen::all(),
        }
    }

    fn topic(&mut self, r: Result<String, broadcast::error::RecvError>) {
        match r {
            Ok(_) => self.topics = true,
            Err(_) => *self = Seen::all(),
        }
    }

    fn all() -> Seen {
        Seen {
            registry: true,
            credentials: true,
            topics: true,
        }
    }
}

/// Reacts to changes of the store, whoever made them: another node of a
/// cluster, or this node's own API (whose changes were applied already;
/// applying them again finds nothing to do).
async fn follow_changes(
    (mut keys, mut topics): (
        broadcast::Receiver<gale_store::Change>,
        broadcast::Receiver<String>,
    ),
    functions: Functions,
    (tokens, s3_keys): (Tokens, keys::Keys),
    publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut seen = Seen::default();
        tokio::select! {
            r = keys.recv() => seen.key(r),
            r = topics.recv() => seen.topic(r),
            _ = shutdown.changed() => return,
        }
        // Changes come in bursts (a deploy writes several keys): take the
        // whole burst, then act once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        loop {
            match keys.try_recv() {
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => break,
                Err(broadcast::error::TryRecvError::Lagged(_)) => seen = Seen::all(),
                Ok(c) => seen.key(Ok(c)),
            }
        }
        loop {
            match topics.try_recv() {
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => break,
                Err(broadcast::error::TryRecvError::Lagged(_)) => seen = Seen::all(),
                Ok(t) => seen.topic(Ok(t)),
            }
        }
        if seen.credentials {
            if let Err(e) = tokens.reload().await {
                tracing::warn!(error = %e, "reading tokens again failed");
            }
            if let Err(e) = s3_keys.reload().await {
                tracing::warn!(error = %e, "reading S3 keys again failed");
            }
        }
        if seen.topics
            && let Err(e) = publisher.refresh().await
        {
            tracing::warn!(error = %e, "reading topics again failed");
        }
        let followed = if seen.registry {
            functions.sync().await
        } else if seen.topics {
            functions.refollow().await
        } else {
            Ok(())
        };
        if let Err(e) = followed {
            tracing::warn!(error = %e, "following a change of the store failed");
        }
    }
}

/// Periodic work: scale idle functions to zero, prune old logs, apply
/// topic retention.
async fn housekeeping(
    stores: Stores,
    buckets: buckets::Buckets,
    functions: Functions,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
) {
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
        functions.reap(options.idle_timeout);
        match buckets::expiry::expire(&buckets, clock::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(objects = n, "expired objects deleted"),
            Err(e) => tracing::warn!(error = %e, "expiring objects failed"),
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            let retention = options.log_retention.as_millis() as u64;
            if let Err(e) = stores
                .logs
                .prune(clock::now_ms(), retention, options.log_keep)
                .await
            {
                tracing::warn!(error = %e, "pruning invocation logs failed");
            }
            match stores.topics.enforce_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "retention dropped old events"),
                Err(e) => tracing::warn!(error = %e, "applying topic retention failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{NICE_WEIGHTS, nice_for_share};

    #[test]
    fn a_delivery_share_becomes_the_nice_value_whose_weight_gives_it() {
        assert_eq!(nice_for_share(25), 5);
        assert_eq!(nice_for_share(10), 10);
        assert_eq!(nice_for_share(50), 0);
        assert_eq!(nice_for_share(1), 19);
        // What the chosen weight gives against a gateway thread, within the
        // table's 25 % steps.
        for share in [5u8, 20, 25, 33, 40] {
            let w = f64::from(NICE_WEIGHTS[nice_for_share(share) as usize]);
            let got = 100.0 * w / (1024.0 + w);
            assert!(
                (got / f64::from(share)).ln().abs() < 0.25,
                "{share} % gave {got:.1} %"
            );
        }
    }
}
