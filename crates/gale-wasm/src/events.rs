//! The `gale:events` host interfaces: publishing with the outbox rule and
//! key-value buckets of the function's app, for every function (an HTTP
//! component may import them too, and `gale:buckets`, see [`buckets`](crate::buckets)),
//! and the `event-handler` world for functions that take events directly.
//!
//! The WIT lives in the repository's `wit/` directory. A publish during an
//! invocation only records the event in the instance's outbox; the caller
//! commits the outbox together with the acknowledgement of the events the
//! invocation handled (or, for an HTTP request, when it succeeded), or drops
//! it if the invocation failed.

use crate::host::Host;
use crate::{Completion, Failure, Finish, Prepared, describe_trap};
use gale_core::api::Outcome;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, Resource};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "gale:events/event-handler",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

pub(crate) use bindings::EventHandler;
pub use bindings::EventHandlerPre;
use bindings::gale::events::{publisher, types};
use bindings::wasi::keyvalue::{atomics, store};
use bindings::wasi::logging::logging;

/// An event as a handler receives or publishes it.
pub type GuestEvent = types::Event;

/// Events one invocation may publish at most.
pub const MAX_OUTBOX: usize = 1000;
/// Largest event data a handler may publish.
pub const MAX_PUBLISHED_DATA: usize = 1 << 20;
/// Keys per page of `list-keys`.
const KEYS_PAGE: usize = 1000;

/// What an event invocation may reach besides its own instance.
#[derive(Clone)]
pub struct Services {
    /// The function's name (the default `source` of what it publishes).
    pub function: String,
    /// Scope of its key-value buckets (its app).
    pub scope: String,
    pub kv: Arc<dyn gale_store::KeyValue>,
    /// Whether a topic exists (publishing to a missing one fails at once).
    pub topic_exists: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Object storage, for the buckets the function's manifest grants.
    pub buckets: Option<Arc<dyn crate::buckets::BucketHost>>,
}

/// The per-instance part: the services and what was published so far.
pub(crate) struct EventHost {
    pub(crate) services: Arc<Services>,
    pub(crate) outbox: Vec<(String, GuestEvent)>,
    /// Events published so far, readable while the guest runs.
    pub(crate) published: Arc<std::sync::atomic::AtomicUsize>,
}

impl EventHost {
    pub(crate) fn new(services: Arc<Services>) -> EventHost {
        EventHost {
            services,
            outbox: Vec::new(),
            published: Arc::default(),
        }
    }

    /// What the invocation published, leaving the host empty for the next
    /// one (a kept instance starts with nothing published).
    pub(crate) fn take_outbox(&mut self) -> Vec<(String, GuestEvent)> {
        self.published.store(0, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut self.outbox)
    }
}

/// An open bucket.
pub struct Bucket {
    name: String,
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    bindings::EventHandler::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)
}

impl Host {
    pub(crate) fn events(&mut self) -> wasmtime::Result<&mut EventHost> {
        self.events.as_mut().ok_or_else(|| {
            wasmtime::Error::msg("publishing and key-value are not available to this function")
        })
    }
}

impl types::Host for Host {}

impl publisher::Host for Host {
    async fn publish(
        &mut self,
        topic: String,
        mut event: GuestEvent,
    ) -> wasmtime::Result<Result<(), String>> {
        let ev = self.events()?;
        if !(ev.services.topic_exists)(&topic) {
            return Ok(Err(format!("topic `{topic}` does not exist")));
        }
        if event.type_.is_empty() {
            return Ok(Err("the event has no type".into()));
        }
        if event.data.len() > MAX_PUBLISHED_DATA {
            return Ok(Err(format!(
                "the event's data is {} bytes; the limit is {MAX_PUBLISHED_DATA}",
                event.data.len()
            )));
        }
        if ev.outbox.len() >= MAX_OUTBOX {
            return Ok(Err(format!(
                "an invocation may publish at most {MAX_OUTBOX} events"
            )));
        }
        if event.source.is_empty() {
            event.source = format!("/gale/functions/{}", ev.services.function);
        }
        ev.outbox.push((topic, event));
        ev.published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Ok(()))
    }
}

fn kv_error(e: gale_store::StoreError) -> store::Error {
    store::Error::Other(e.to_string())
}

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        if identifier.is_empty() || identifier.len() > 200 {
            return Ok(Err(store::Error::Other(
                "a bucket name is 1 to 200 characters".into(),
            )));
        }
        self.events()?;
        Ok(Ok(self.table_mut().push(Bucket { name: identifier })?))
    }
}

impl store::HostBucket for Host {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        Ok(s.kv.kv_get(&s.scope, &name, &key).await.map_err(kv_error))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        Ok(s.kv.kv_set(&s.scope, &name, &key, value).await.map_err(kv_error))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        Ok(s.kv.kv_delete(&s.scope, &name, &key).await.map_err(kv_error))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        Ok(s.kv
            .kv_get(&s.scope, &name, &key)
            .await
            .map(|v| v.is_some())
            .map_err(kv_error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        let offset = cursor.unwrap_or(0);
        Ok(s.kv
            .kv_keys(&s.scope, &name, offset, KEYS_PAGE)
            .await
            .map(|keys| store::KeyResponse {
                cursor: (keys.len() == KEYS_PAGE).then(|| offset + KEYS_PAGE as u64),
                keys,
            })
            .map_err(kv_error))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table_mut().delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let name = self.table_mut().get(&bucket)?.name.clone();
        let s = &self.events()?.services;
        Ok(s.kv
            .kv_increment(&s.scope, &name, &key, delta)
            .await
            .map_err(kv_error))
    }
}

impl logging::Host for Host {
    async fn log(&mut self, level: logging::Level, context: String, message: String) -> wasmtime::Result<()> {
        let level = match level {
            logging::Level::Trace => "TRACE",
            logging::Level::Debug => "DEBUG",
            logging::Level::Info => "INFO",
            logging::Level::Warn => "WARN",
            logging::Level::Error => "ERROR",
            logging::Level::Critical => "CRITICAL",
        };
        let line = if context.is_empty() {
            format!("{level} {message}\n")
        } else {
            format!("{level} {context}: {message}\n")
        };
        self.log_line(line.as_bytes());
        Ok(())
    }
}

/// What an event invocation came to.
pub struct Handled {
    /// One result per event, or why the invocation as a whole failed.
    pub results: Result<Vec<Result<(), String>>, Failure>,
    /// What the handler published, to commit only with a success.
    pub outbox: Vec<(String, GuestEvent)>,
}

/// Runs `events` through an instance of an event handler (a fresh one, or
/// one kept warm when the function allows `instance_reuse`): `handle` for
/// one event, `handle-batch` for more. `done` gets the invocation's end.
pub async fn handle(
    prepared: Arc<Prepared>,
    events: Vec<GuestEvent>,
    timeout: Duration,
    done: impl FnOnce(Completion) + Send + 'static,
) -> Handled {
    let meter = prepared.meter();
    let lane = prepared.lane.clone();
    lane.run(
        meter.clone(),
        run(prepared, events, timeout, Box::new(done), meter),
    )
    .await
}

async fn run(
    prepared: Arc<Prepared>,
    events: Vec<GuestEvent>,
    timeout: Duration,
    done: crate::DoneFn,
    meter: Arc<crate::cpu::Meter>,
) -> Handled {
    let crate::Kind::Events(pre) = &prepared.kind else {
        return Handled {
            results: Err(Failure::Guest("the function is not an event handler".into())),
            outbox: Vec::new(),
        };
    };
    let (mut store, warm, uses, stdout, stderr) = prepared.next_store(&meter);
    let warm = match warm {
        Some(crate::Warm::Events(instance)) => Some(instance),
        _ => None,
    };
    let mut finish = Finish {
        done: Some(done),
        started: Instant::now(),
        meter,
        stdout,
        stderr,
        answer: Arc::default(),
    };
    let n = events.len();
    let run = async {
        let instance = match warm {
            Some(instance) => instance,
            None => pre.instantiate_async(&mut store).await?,
        };
        let handler = instance.gale_events_handler();
        let results = if n == 1 {
            vec![handler.call_handle(&mut store, &events[0]).await?]
        } else {
            handler.call_handle_batch(&mut store, &events).await?
        };
        wasmtime::Result::Ok((instance, results))
    };
    let mut kept = None;
    let results = match crate::within(finish.started + timeout, run).await {
        // An instance whose call returned (whatever the handler answered)
        // may serve again; one that trapped or ran out of time may not.
        Ok(Ok((instance, results))) => {
            kept = Some(instance);
            if results.len() == n {
                Ok(results)
            } else {
                Err(Failure::Guest(format!(
                    "handle-batch returned {} results for {n} events",
                    results.len()
                )))
            }
        }
        Ok(Err(e)) if format!("{e:#}").contains("maximum concurrent") => Err(Failure::Overloaded),
        Ok(Err(ref e)) if let Some(&limit) = wasmtime::Error::downcast_ref::<crate::cpu::CpuLimit>(e) => {
            Err(Failure::CpuLimit(limit.0))
        }
        Ok(Err(e)) => {
            let said = finish.stderr.tail(300);
            let trap = describe_trap(&e, &prepared.spec);
            // The first line of a trap names it; the backtrace stays in the log.
            let trap = trap.lines().next().unwrap_or_default().to_string();
            Err(Failure::Guest(if said.is_empty() {
                trap
            } else {
                format!("{trap} (stderr: {said})")
            }))
        }
        Err(crate::Elapsed) => Err(Failure::Timeout),
    };
    let (outcome, error) = match &results {
        Ok(r) => match r.iter().find_map(|r| r.as_ref().err()) {
            None => (Outcome::Ok, None),
            Some(e) => (Outcome::Error, Some(format!("the handler failed: {e}"))),
        },
        Err(failure) => crate::outcome_of(Some(failure), timeout),
    };
    finish.finish(outcome, error, Vec::new());
    // Taken whatever happened, so that a kept instance starts its next
    // invocation with nothing published; committed only after a success.
    let published = store.data_mut().events.as_mut().map(EventHost::take_outbox);
    let outbox = published.filter(|_| results.is_ok()).unwrap_or_default();
    if let Some(instance) = kept {
        prepared.keep_idle(store, crate::Warm::Events(instance), uses + 1);
    }
    Handled { results, outbox }
}
