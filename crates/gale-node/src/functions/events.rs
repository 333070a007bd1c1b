//! A chunk of events through a function, whatever its runtime:
//! - an event handler (`gale:events`) takes the chunk in one invocation;
//! - a `wasi:http` component takes each event as a binary-mode CloudEvent
//!   request (as Knative delivers them): a 2xx answer handles it;
//! - a process function takes one invocation with the payload the
//!   trigger's format makes (CloudEvents JSON, an SQS batch, EventBridge's
//!   scheduled event).
//!
//! What the attempt published comes back ready to store with its ack,
//! named after `origin` (what the attempt ran for), so the same attempt run
//! again after a crash publishes the same ids.

use super::http::{Publishes, run};
use super::live::{Live, Loaded};
use super::logs::Started;
use crate::clock::now_ms;
use crate::events;
use crate::http::request_id;
use crate::publisher::{Outbox, Publisher};
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use gale_core::EventTrigger;
use gale_store::NewEvent;
use gale_wasm::events::GuestEvent;
use gale_wasm::{Failure, World};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// A result per event, and what the attempt published.
pub type Attempted = (Vec<Result<(), String>>, Vec<(String, NewEvent)>);

/// How long a delivery's body may take beyond the attempt's own deadline.
const BODY_MARGIN: Duration = Duration::from_secs(1);

/// One attempt of a chunk of events (with their attempt numbers).
pub async fn attempt(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    topic: &str,
    origin: &str,
    chunk: &[(&Event, u32)],
) -> Attempted {
    match live.prepared().await {
        Ok((Loaded::Wasm(prepared), cold)) if prepared.world() == World::Events => {
            let events: Vec<&Event> = chunk.iter().map(|(e, _)| *e).collect();
            deliver_events(live, trigger, prepared, cold, origin, &events).await
        }
        Ok((Loaded::Wasm(_), _)) => {
            let mut results = Vec::with_capacity(chunk.len());
            let mut outbox = Vec::new();
            for (i, (event, _)) in chunk.iter().enumerate() {
                let (result, published) = deliver(live, trigger, event, &format!("{origin}/{i}")).await;
                if result.is_ok() {
                    outbox.extend(published);
                }
                results.push(result);
            }
            (results, outbox)
        }
        Ok((Loaded::Process(pool), _)) => deliver_process(live, trigger, topic, pool, chunk).await,
        Err(e) => (vec![Err(e.to_string()); chunk.len()], Vec::new()),
    }
}

/// How long one attempt may run: the trigger's ack timeout, but never
/// longer than the function's own timeout.
pub fn attempt_timeout(live: &Live, trigger: &EventTrigger) -> Duration {
    trigger
        .ack_timeout
        .map_or(live.spec.timeout.0, |t| t.0.min(live.spec.timeout.0))
}

fn timed_out(timeout: Duration) -> String {
    format!(
        "the attempt did not finish within its ack timeout of {}",
        humantime::format_duration(timeout)
    )
}

/// One attempt of a chunk on a process function: one invocation with the
/// payload the trigger's format makes.
async fn deliver_process(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    topic: &str,
    pool: Arc<gale_process::Pool>,
    chunk: &[(&Event, u32)],
) -> Attempted {
    let timeout = attempt_timeout(live, trigger);
    let Ok(permit) = live.slots.clone().acquire_owned().await else {
        return (
            vec![Err("the function is being replaced".into()); chunk.len()],
            Vec::new(),
        );
    };
    let region = &live.runtimes.processes.region;
    let payload = super::payloads::events_payload(trigger.format, topic, region, chunk);
    let ids: Vec<&str> = chunk.iter().map(|(e, _)| e.id()).collect();
    let id = request_id();
    let events = ids.iter().map(|s| s.to_string()).collect();
    let c = super::process::invoke(live, &pool, permit, payload, &id, timeout, None, events).await;
    let results = super::payloads::failures(trigger.format, &c.result, &ids)
        .into_iter()
        .map(|failed| match failed {
            None => Ok(()),
            Some(why) => Err(format!("{why} (request {id})")),
        })
        .collect();
    (results, c.outbox)
}

/// One attempt of a chunk of events on an event handler: one invocation
/// (`handle`, or `handle-batch` for several).
pub async fn deliver_events(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    prepared: Arc<gale_wasm::Prepared>,
    cold: bool,
    origin: &str,
    events: &[&Event],
) -> Attempted {
    let n = events.len();
    let timeout = attempt_timeout(live, trigger);
    let Ok(permit) = live.slots.clone().acquire_owned().await else {
        return (vec![Err("the function is being replaced".into()); n], Vec::new());
    };
    let started = Started {
        request_id: request_id(),
        at: now_ms(),
        cold_start: cold,
        events: events.iter().map(|e| e.id().to_string()).collect(),
    };
    let done = {
        let live = live.clone();
        move |c: gale_wasm::Completion| {
            let status = match c.outcome {
                gale_core::api::Outcome::Ok => 200,
                gale_core::api::Outcome::Timeout => 504,
                _ => 500,
            };
            live.finished(started, c, status);
        }
    };
    let guest: Vec<_> = events.iter().map(|e| events::to_guest(e)).collect();
    let handled = gale_wasm::events::handle(prepared, guest, timeout, done).await;
    drop(permit);
    let results = match handled.results {
        Ok(results) => results,
        Err(failure) => {
            let why = match failure {
                Failure::Timeout => timed_out(timeout),
                Failure::CpuLimit(limit) => {
                    format!("used its CPU limit of {}", humantime::format_duration(limit))
                }
                Failure::Guest(m) | Failure::Body(m) => m,
                Failure::Overloaded => "every instance slot of the node was in use".into(),
            };
            return (vec![Err(why); n], Vec::new());
        }
    };
    match stored(live, origin, handled.outbox) {
        Ok(outbox) => (results, outbox),
        // The whole attempt fails: publishing is all or nothing.
        Err(e) => (vec![Err(format!("the handler published {e}")); n], Vec::new()),
    }
}

fn stored(
    live: &Live,
    origin: &str,
    events: Vec<(String, GuestEvent)>,
) -> Result<Vec<(String, NewEvent)>, String> {
    Publisher::outbox(Outbox {
        function: &live.name,
        origin,
        events,
    })
}

/// One attempt of one event on a `wasi:http` component, as a binary-mode
/// CloudEvent request: a 2xx answer handles it, and only then does what it
/// published count.
async fn deliver(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    event: &Event,
    origin: &str,
) -> (Result<(), String>, Vec<(String, NewEvent)>) {
    let sent = match send(live, trigger, events::to_request(event), event.id()).await {
        Ok(sent) => sent,
        Err(e) => return (Err(e), Vec::new()),
    };
    if !sent.status.is_success() {
        return (
            Err(format!(
                "the function answered {}: {} (request {})",
                sent.status,
                String::from_utf8_lossy(&sent.body).trim(),
                sent.request
            )),
            Vec::new(),
        );
    }
    match stored(live, origin, sent.published) {
        Ok(outbox) => (Ok(()), outbox),
        Err(e) => (Err(format!("the function published {e}")), Vec::new()),
    }
}

/// What a request sent for an event came to.
pub struct Sent {
    pub status: http::StatusCode,
    /// The body, cut at 64 KiB.
    pub body: Bytes,
    pub request: String,
    /// What the run published, not stored yet.
    pub published: Vec<(String, GuestEvent)>,
}

/// Runs one request for the event `event_id`: waits for an instance slot
/// (events queue in the store, not at the function), then runs it for at
/// most the trigger's ack timeout (the function's timeout unless shorter).
pub async fn send(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    request: http::Request<Bytes>,
    event_id: &str,
) -> Result<Sent, String> {
    let timeout = attempt_timeout(live, trigger);
    let permit = live
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "the function is being replaced".to_string())?;
    let id = request_id();
    let request = request
        .map(|b| http_body_util::Full::new(b).map_err(|never| -> gale_wasm::BodyError { match never {} }));
    let (kept, published) = tokio::sync::oneshot::channel();
    let attempt = async {
        let response = run(
            live.clone(),
            permit,
            request,
            &id,
            timeout,
            vec![event_id.to_string()],
            Publishes::Keep(kept),
        )
        .await;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_else(|_| Bytes::from_static(b"(body not shown)"));
        // The guest may end just after its body did; a run that never got
        // as far as the guest sends nothing.
        let published = published.await.unwrap_or_default();
        (status, body, published)
    };
    // The guest is cut at `timeout` by the runtime; this only guards against
    // a response body that never ends.
    match tokio::time::timeout(timeout + BODY_MARGIN, attempt).await {
        Ok((status, body, published)) => Ok(Sent {
            status,
            body,
            request: id,
            published,
        }),
        Err(_) => Err(timed_out(timeout)),
    }
}
