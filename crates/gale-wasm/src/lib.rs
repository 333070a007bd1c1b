//! Gale's WebAssembly runtime.
//!
//! Functions are components of the `wasi:http/proxy` world, so the same
//! `.wasm` that runs under `wasmtime serve` runs here, or of Gale's own
//! `gale:events/event-handler` world ([`events`]) for functions that only
//! handle events. The shape follows
//! wasmtime's own reference host:
//!
//! - one shared [`Engine`] with the pooling allocator (instance slots are
//!   reused, so making an instance is microseconds, not a fresh mmap);
//! - components are compiled once at deploy, ahead of time, and the machine
//!   code is cached on disk by digest; loading it later is an mmap;
//! - a cached [`ProxyPre`] (or [`events::EventHandlerPre`]) per loaded
//!   version, from which every invocation, a request or an event delivery,
//!   gets a fresh instance (full isolation) unless the function opts into
//!   reuse (`instance_reuse`);
//! - a request goes to the guest over `wasi:http` ([`proxy`]), or, for an
//!   HTTP component that also exports `gale:http/handler`, whole in one call
//!   through it ([`whole`]), instead of the dozen calls between host and
//!   guest a `wasi:http` exchange takes;
//! - an epoch ticker makes a busy guest yield once it has computed a tick or
//!   two and move to
//!   threads of its own, where busy guests compute in turns shared fairly
//!   between functions ([`cpu`]); a guest stuck in a loop neither blocks
//!   other work nor outlives its timeout or its CPU limit.
//!
//! A guest sees no files, no host environment and no sockets; only the env
//! vars its manifest lists, and outbound HTTP only to allow-listed hosts.

pub mod buckets;
mod cpu;
pub mod events;
mod host;
mod pipe;
mod proxy;
mod whole;

pub use cpu::CpuUse;
use gale_core::FunctionSpec;
use gale_core::api::Outcome;
use host::Host;
use proxy::AnswerSlot;
pub use proxy::serve;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

pub use wasmtime_wasi_http::Error as BodyError;
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How often the epoch ticks: the unit of the time a busy guest may hold
/// the thread it was called on before it moves to the lane, and of its
/// slices there ([`cpu`]).
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Linear memory per pool slot reset by memset rather than madvise.
const KEEP_RESIDENT: usize = 4 << 20;
/// Guest stdout and stderr kept per invocation, each.
pub const LOG_CAPTURE_LIMIT: usize = 16 * 1024;

/// Everything that can go wrong in the wasm runtime.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component fits neither the wasi:http/proxy world nor gale:events/event-handler: {0}")]
    WrongWorld(String),
    #[error("compiled code cache failed at {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wasm engine setup failed: {0}")]
    Engine(String),
    #[error("cannot start the threads busy guests run on: {0}")]
    Lane(std::io::Error),
}

/// Node-wide settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled machine code is cached.
    pub cache_dir: PathBuf,
    /// Instances alive at once across all functions (pool slots).
    pub max_instances: u32,
}

/// The shared engine, linker and compiled-code cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    cache_dir: PathBuf,
    /// Where guests that compute past their first slice run.
    lane: cpu::Lane,
    /// Recently loaded code, shared by every function with the same digest.
    /// Mapping code from disk is most of a cold start; linking a cached
    /// component costs a small part of that.
    components: Arc<Mutex<ComponentCache>>,
}

/// The most recently used components, at most `CACHED_COMPONENTS`.
#[derive(Default)]
struct ComponentCache {
    entries: std::collections::HashMap<String, (Component, u64)>,
    clock: u64,
}

const CACHED_COMPONENTS: usize = 128;

impl ComponentCache {
    fn get(&mut self, digest: &str) -> Option<Component> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(digest).map(|(c, used)| {
            *used = clock;
            c.clone()
        })
    }

    fn insert(&mut self, digest: &str, component: Component) {
        if self.entries.len() >= CACHED_COMPONENTS
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(digest.to_string(), (component, self.clock));
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, WasmError> {
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size(gale_core::manifest::MAX_MEMORY as usize)
            // Reset a freed slot with memset instead of madvise: madvise on a
            // multi-threaded process costs a TLB shootdown on every core and
            // the next instance then faults its pages back in. Only pages a
            // guest touched stay resident.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the
            // pages a guest wrote instead of the whole low 4 MiB.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 << 10);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        events::add_to_linker(&mut linker).map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("gale-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| WasmError::Engine(e.to_string()))?;

        let cache_dir = config.cache_dir.join(engine_fingerprint(&engine));
        std::fs::create_dir_all(&cache_dir).map_err(|source| WasmError::Cache {
            path: cache_dir.clone(),
            source,
        })?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache_dir,
            lane: cpu::Lane::start().map_err(WasmError::Lane)?,
            components: Arc::default(),
        })
    }

    fn cached_path(&self, digest: &str) -> PathBuf {
        let name = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.cache_dir.join(format!("{name}.cwasm"))
    }

    /// Whether compiled code for `digest` is already cached.
    pub fn is_compiled(&self, digest: &str) -> bool {
        self.cached_path(digest).exists()
    }

    /// Validates `wasm` as a component of one of Gale's worlds and compiles
    /// it ahead of time into the cache; returns its world. Blocking and
    /// CPU-heavy: call off the async runtime.
    pub fn compile(&self, digest: &str, wasm: &[u8]) -> Result<World, WasmError> {
        let path = self.cached_path(digest);
        if path.exists() {
            // SAFETY: written by this function from this engine's own output.
            let component = unsafe { Component::deserialize_file(&self.engine, &path) }
                .map_err(|e| WasmError::Invalid(format!("cached code at {}: {e:#}", path.display())))?;
            return Ok(self.kind(&component)?.world());
        }
        if !is_component(wasm) {
            return Err(WasmError::Invalid(
                "this is a core module or not WebAssembly at all; build a component, e.g. with \
                 `cargo build --target wasm32-wasip2`"
                    .into(),
            ));
        }
        let code = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        // Check the world before anything lands in the cache.
        let component = unsafe { Component::deserialize(&self.engine, &code) }
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        let world = self.kind(&component)?.world();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let cache_err = |source| WasmError::Cache {
            path: path.clone(),
            source,
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&code)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(cache_err)?;
        Ok(world)
    }

    /// Links a component and finds its world: `wasi:http/proxy` first, then
    /// `gale:events/event-handler`.
    fn kind(&self, component: &Component) -> Result<Kind, WasmError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| WasmError::WrongWorld(format!("{e:#}")))?;
        let http = match ProxyPre::new(pre.clone()) {
            Ok(proxy) => {
                // Served whole when it also exports gale:http/handler.
                let whole = whole::HttpHandlerPre::new(pre).ok();
                return Ok(Kind::Http { proxy, whole });
            }
            Err(e) => e,
        };
        events::EventHandlerPre::new(pre)
            .map(Kind::Events)
            .map_err(|events| {
                WasmError::WrongWorld(format!(
                    "as wasi:http/proxy: {http:#}; as gale:events/event-handler: {events:#}"
                ))
            })
    }

    /// Loads compiled code for one version, ready to serve; `services`
    /// give its instances publishing and key-value.
    /// Blocking (an mmap and some linking): call off the async runtime.
    pub fn load(
        &self,
        digest: &str,
        spec: Arc<FunctionSpec>,
        services: Option<Arc<events::Services>>,
    ) -> Result<Prepared, WasmError> {
        let started = Instant::now();
        let cached = self
            .components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest);
        let component = match cached {
            Some(component) => component,
            None => {
                let path = self.cached_path(digest);
                // SAFETY: the file was written by `compile` above from this
                // engine's own output, into Gale's private data directory.
                let component = unsafe { Component::deserialize_file(&self.engine, &path) }
                    .map_err(|e| WasmError::Invalid(format!("cached code at {}: {e:#}", path.display())))?;
                self.components
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(digest, component.clone());
                component
            }
        };
        let mapped = started.elapsed();
        let kind = self.kind(&component)?;
        tracing::debug!(
            digest,
            served_whole = matches!(kind, Kind::Http { whole: Some(_), .. }),
            map_us = mapped.as_micros() as u64,
            link_us = (started.elapsed() - mapped).as_micros() as u64,
            "code loaded"
        );
        let env = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // Turns on the lane are shared by function; without services (a
        // bare runtime) the code's digest stands for the function.
        let function = services.as_ref().map_or(digest, |s| &s.function).into();
        Ok(Prepared {
            kind,
            lane: self.lane.clone(),
            function,
            services,
            spec,
            env,
            idle: Mutex::new(Vec::new()),
        })
    }
}

/// A name for the engine's code compatibility, stable across Rust releases
/// (std's `DefaultHasher` is not), so the cache survives a rebuild of Gale
/// with the same wasmtime and settings.
fn engine_fingerprint(engine: &Engine) -> String {
    use sha2::Digest;
    use std::hash::{Hash, Hasher};
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn is_component(wasm: &[u8]) -> bool {
    // Component binaries carry layer 1 in the version field of the preamble.
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[6..8] == [0x01, 0x00]
}

/// Which of Gale's worlds a component is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `wasi:http/proxy`: serves HTTP requests (and gets events as requests).
    Http,
    /// `gale:events/event-handler`: handles events only.
    Events,
}

/// A linked component of one world.
enum Kind {
    Http {
        proxy: ProxyPre<Host>,
        /// Its `gale:http/handler` export, if it has one ([`whole`]).
        whole: Option<whole::HttpHandlerPre<Host>>,
    },
    Events(events::EventHandlerPre<Host>),
}

impl Kind {
    fn world(&self) -> World {
        match self {
            Kind::Http { .. } => World::Http,
            Kind::Events(_) => World::Events,
        }
    }

    fn engine(&self) -> &Engine {
        match self {
            Kind::Http { proxy, .. } => proxy.engine(),
            Kind::Events(p) => p.engine(),
        }
    }
}

/// One version, loaded and linked, ready to make instances.
pub struct Prepared {
    kind: Kind,
    lane: cpu::Lane,
    function: Arc<str>,
    services: Option<Arc<events::Services>>,
    spec: Arc<FunctionSpec>,
    env: Vec<(String, String)>,
    /// Instances kept for reuse when `instance_reuse > 1`, with their use counts.
    idle: Mutex<Vec<(Store<Host>, Warm, u32)>>,
}

/// An instance kept for reuse, of the version's world.
enum Warm {
    Http(Proxy),
    Whole(whole::HttpHandler),
    Events(events::EventHandler),
}

impl Prepared {
    pub fn world(&self) -> World {
        self.kind.world()
    }

    /// Drops instances kept for reuse (scale to zero).
    pub fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The store for the next invocation, with what it captures of stdout
    /// and stderr: an instance kept for reuse if the function allows reuse
    /// and one is idle (with its use count), else a fresh store.
    fn next_store(
        &self,
        meter: &Arc<cpu::Meter>,
    ) -> (Store<Host>, Option<Warm>, u32, pipe::LogPipe, pipe::LogPipe) {
        let idle = if self.spec.instance_reuse > 1 {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
        } else {
            None
        };
        let (mut store, warm, uses, stdout, stderr) = match idle {
            Some((mut store, warm, uses)) => {
                // The deadline is relative to the epoch when set: one set when
                // the store was made has long passed, and would make the guest
                // yield at its first check.
                store.set_epoch_deadline(cpu::FIRST_SLICE_TICKS);
                let (stdout, stderr) = store.data().logs();
                (store, Some(warm), uses, stdout, stderr)
            }
            None => {
                let (store, stdout, stderr) = self.new_store();
                (store, None, 0, stdout, stderr)
            }
        };
        store.data_mut().meter = Some(meter.clone());
        (store, warm, uses, stdout, stderr)
    }

    /// A meter for the next invocation, with the function's CPU limit.
    fn meter(&self) -> Arc<cpu::Meter> {
        cpu::Meter::new(&self.lane, self.function.clone(), self.spec.cpu.map(|c| c.0))
    }

    /// Keeps an instance that ended its invocation well for the next one,
    /// unless it has served its `instance_reuse` or enough wait already.
    fn keep_idle(&self, store: Store<Host>, warm: Warm, uses: u32) {
        if uses >= self.spec.instance_reuse {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.spec.max_instances as usize {
            idle.push((store, warm, uses));
        }
    }

    fn new_store(&self) -> (Store<Host>, pipe::LogPipe, pipe::LogPipe) {
        let stdout = pipe::LogPipe::new(LOG_CAPTURE_LIMIT);
        let stderr = pipe::LogPipe::new(LOG_CAPTURE_LIMIT);
        let mut host = Host::new(&self.spec, &self.env, stdout.clone(), stderr.clone());
        host.events = self.services.clone().map(events::EventHost::new);
        let mut store = Store::new(self.kind.engine(), host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(cpu::FIRST_SLICE_TICKS);
        store.epoch_deadline_callback(|store| match &store.data().meter {
            Some(meter) => meter.on_deadline(),
            None => Ok(UpdateDeadline::Yield(1)),
        });
        (store, stdout, stderr)
    }
}

/// How an invocation ended, with what the guest printed.
#[derive(Debug, Clone)]
pub struct Completion {
    pub outcome: Outcome,
    /// The status the guest answered with, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    /// The CPU time it used, and how long it waited for a core.
    pub cpu: CpuUse,
    /// What an HTTP invocation published, if it ended well (`outcome` Ok):
    /// the caller commits it if the status says success.
    pub outbox: Vec<(String, events::GuestEvent)>,
}

/// Why a request got no response from the guest.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The invocation ran past its timeout before answering.
    Timeout,
    /// The invocation used its function's CPU limit before answering.
    CpuLimit(Duration),
    /// The guest trapped, or ended without answering.
    Guest(String),
    /// The node's instance pool is exhausted; try again shortly.
    Overloaded,
    /// The request's body could not be read (a request served whole).
    Body(String),
}

type DoneFn = Box<dyn FnOnce(Completion) + Send>;

/// Calls `done` exactly once: with the real end, or as cancelled if the task
/// running the invocation is dropped first (the client went away).
struct Finish {
    done: Option<DoneFn>,
    started: Instant,
    meter: Arc<cpu::Meter>,
    stdout: pipe::LogPipe,
    stderr: pipe::LogPipe,
    answer: Arc<AnswerSlot>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Finish {
    fn finish(&mut self, outcome: Outcome, error: Option<String>, outbox: Vec<(String, events::GuestEvent)>) {
        if let Some(done) = self.done.take() {
            done(Completion {
                outcome,
                status: match self.answer.status.load(Relaxed) {
                    0 => None,
                    s => Some(s),
                },
                error,
                stdout: self.stdout.take(),
                stderr: self.stderr.take(),
                duration: self.started.elapsed(),
                cpu: self.meter.used_now(),
                outbox,
            });
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.finish(
            Outcome::Cancelled,
            Some("the client went away before the function finished".into()),
            Vec::new(),
        );
    }
}

/// Aborts the invocation's task when dropped, unless disarmed.
pub struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    /// The response finished: let the guest wind down on its own (its timeout still applies).
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// A response from the guest, and the guard that cancels the guest if the
/// response is dropped before it is fully sent.
pub struct Answer {
    pub response: hyper::Response<HyperOutgoingBody>,
    pub guard: AbortOnDrop,
}

/// The invocation's deadline passed.
pub(crate) struct Elapsed;

/// Runs `fut` until `deadline`, like `tokio::time::timeout`, but makes the
/// timer only once `fut` has to wait. A typical invocation ends in its
/// first poll, and making and dropping a timer takes a lock on the
/// runtime's timer wheel each way, shared by every thread.
pub(crate) async fn within<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// What an invocation that ended in `failure` (none: it ended well) records.
fn outcome_of(failure: Option<&Failure>, timeout: Duration) -> (Outcome, Option<String>) {
    match failure {
        None => (Outcome::Ok, None),
        Some(Failure::Guest(m)) => (Outcome::Error, Some(m.clone())),
        Some(Failure::Body(m)) => (
            Outcome::Error,
            Some(format!("the request body could not be read: {m}")),
        ),
        Some(Failure::Overloaded) => (
            Outcome::Error,
            Some("no free instance slot on this node (the node's instance pool is full)".into()),
        ),
        Some(Failure::Timeout) => (
            Outcome::Timeout,
            Some(format!("timed out after {}", humantime_ms(timeout))),
        ),
        Some(Failure::CpuLimit(limit)) => (Outcome::Timeout, Some(cpu::CpuLimit(*limit).to_string())),
    }
}

/// The failure of a call into the guest that returned an error.
fn trap_failure(e: &wasmtime::Error, spec: &FunctionSpec) -> Failure {
    if let Some(limit) = e.downcast_ref::<cpu::CpuLimit>() {
        Failure::CpuLimit(limit.0)
    } else if format!("{e:#}").contains("maximum concurrent") {
        Failure::Overloaded
    } else {
        Failure::Guest(describe_trap(e, spec))
    }
}

fn humantime_ms(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn describe_trap(e: &wasmtime::Error, spec: &FunctionSpec) -> String {
    let text = format!("{e:#}");
    if text.contains("growing memory")
        || text.contains("memory allocation")
        || text.contains("resource limit")
    {
        format!("the guest exceeded its memory limit of {}: {text}", spec.memory)
    } else {
        format!("the guest trapped: {text}")
    }
}
