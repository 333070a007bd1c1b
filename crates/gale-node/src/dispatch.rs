//! The dispatcher: delivers each subscription's events to its function.
//!
//! One task per subscription leases events from the store (a long-poll
//! fetch, woken by publishes), filters them, and runs up to the trigger's
//! `max_concurrency` invocations at once. Each outcome settles in the store:
//! success acks the event (with whatever the invocation published, in the
//! same transaction), failure schedules a retry after the trigger's backoff
//! with jitter, and the last failed attempt moves the event to the
//! dead-letter topic with the error, the attempt count and the failing
//! function and version as extension attributes. Attempt counts and leases
//! live in the store, so a crash or restart neither resets nor loses them:
//! an event whose lease ran out while the node was down is delivered again.
//!
//! A `wasi:http` component receives its events as binary-mode CloudEvents
//! HTTP requests (the way Knative delivers them): a 2xx answer is success.

use crate::events::{self, attribute};
use crate::scheduler::{Live, Loaded};
use crate::{State, gateway};
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use gale_core::EventTrigger;
use gale_store::{Delivery, Settle, Topics};
use gale_wasm::{Failure, World};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// How long a lease outlives the attempt's own deadline, so the dispatcher
/// (not the lease) cuts a hanging attempt while the node is up.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How long one fetch waits for events before the loop looks at its
/// configuration again.
const POLL: Duration = Duration::from_secs(5);
/// The part of an error kept in a dead letter's `galeerror` attribute.
const MAX_ERROR: usize = 1024;

/// One subscription and the trigger it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub topic: String,
    pub subscription: String,
    pub function: String,
    /// Position of the trigger in the function's [`triggers`].
    pub index: usize,
    pub ordered: bool,
}

/// Every trigger of a function that takes events from a topic: its event
/// triggers, then one per schedule (on the schedule's own topic).
/// Asynchronous invocations come last, on the function's own topic.
pub fn triggers(name: &str, spec: &gale_core::FunctionSpec) -> Vec<EventTrigger> {
    let schedules = spec
        .schedule
        .iter()
        .enumerate()
        .map(|(i, s)| s.as_event_trigger(crate::schedule::topic(name, i)));
    let invocations = spec
        .async_policy
        .as_event_trigger(crate::invocations::topic(name));
    spec.events
        .iter()
        .cloned()
        .chain(schedules)
        .chain(std::iter::once(invocations))
        .collect()
}

/// The subscriptions the live functions' triggers call for. A function's
/// first trigger on a topic subscribes as the function's name, later ones as
/// `name#2`, `name#3`...
/// The async invocation trigger only once the function's invocation topic
/// exists (its first async invocation makes it).
pub fn desired(
    functions: &HashMap<String, Arc<Live>>,
    topic_exists: impl Fn(&str) -> bool,
) -> Vec<Subscriber> {
    let mut out = Vec::new();
    for live in functions.values() {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let all = triggers(&live.name, &live.spec);
        for (index, t) in all.iter().enumerate() {
            if t.topic.starts_with(crate::invocations::TOPIC_PREFIX) && !topic_exists(&t.topic) {
                continue;
            }
            let n = seen.entry(t.topic.clone()).or_default();
            *n += 1;
            out.push(Subscriber {
                topic: t.topic.clone(),
                subscription: if *n == 1 {
                    live.name.clone()
                } else {
                    format!("{}#{n}", live.name)
                },
                function: live.name.clone(),
                index,
                ordered: t.ordering == gale_core::manifest::Ordering::PartitionKey,
            });
        }
    }
    out
}

/// The trigger as the function's current version has it, if it still serves `sub`.
fn current(state: &State, sub: &Subscriber) -> Option<(Arc<Live>, EventTrigger)> {
    let live = state.function(&sub.function)?;
    let trigger = triggers(&live.name, &live.spec).into_iter().nth(sub.index)?;
    (trigger.topic == sub.topic).then_some((live, trigger))
}

/// Delivers `sub`'s events until `stop`.
pub async fn run(state: Arc<State>, sub: Subscriber, mut stop: watch::Receiver<bool>) {
    let mut slots = Arc::new(Semaphore::new(0));
    let mut width = 0;
    let (settled, settles) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(settle_all(state.clone(), sub.clone(), settles));
    loop {
        let Some((live, trigger)) = current(&state, &sub) else {
            return;
        };
        if trigger.max_concurrency as usize != width {
            // Work in flight keeps the permits of the old width.
            width = trigger.max_concurrency as usize;
            slots = Arc::new(Semaphore::new(width));
        }
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let batch = trigger.batch_size as usize;
        let max = ((1 + slots.available_permits()) * batch).min(1000);
        let deadline = attempt_timeout(&live, &trigger);
        let lease = (deadline + LEASE_MARGIN).as_millis() as u64;
        let fetched = tokio::select! {
            r = state.store.fetch(&sub.topic, &sub.subscription, max, lease, POLL) => r,
            _ = stop.changed() => return,
        };
        let mut deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(topic = %sub.topic, subscription = %sub.subscription, error = %e, "fetch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        // A batch may wait up to its window to fill.
        if batch > 1 && deliveries.len() < batch && !trigger.batch_window.0.is_zero() {
            let more = state
                .store
                .fetch(
                    &sub.topic,
                    &sub.subscription,
                    batch - deliveries.len(),
                    lease,
                    trigger.batch_window.0,
                )
                .await
                .unwrap_or_default();
            deliveries.extend(more);
        }
        let mut permit = Some(first);
        let mut rest = deliveries.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Delivery> = rest.by_ref().take(batch).collect();
            let permit = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (state, sub, live, trigger) = (state.clone(), sub.clone(), live.clone(), trigger.clone());
            let settled = settled.clone();
            tokio::spawn(async move {
                let _ = settled.send(handle(&state, &sub, &live, &trigger, chunk).await);
                drop(permit);
            });
        }
    }
}

/// Settles what the chunks of a subscription came to, as many at once as
/// have finished: one store transaction for all of them.
async fn settle_all(
    state: Arc<State>,
    sub: Subscriber,
    mut done: tokio::sync::mpsc::UnboundedReceiver<(Vec<Settle>, u64)>,
) {
    while let Some((mut settles, mut handled)) = done.recv().await {
        while let Ok((more, n)) = done.try_recv() {
            settles.extend(more);
            handled += n;
        }
        if let Err(e) = state.store.settle(&sub.topic, &sub.subscription, settles).await {
            // The leases run out and the events come again: nothing is lost.
            tracing::error!(topic = %sub.topic, subscription = %sub.subscription, error = %e, "settling failed");
            continue;
        }
        state.meters.delivered(&sub.topic, &sub.subscription, handled);
    }
}

/// Runs one leased chunk of events; returns how to settle each, and how
/// many were handled.
async fn handle(
    state: &Arc<State>,
    sub: &Subscriber,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    chunk: Vec<Delivery>,
) -> (Vec<Settle>, u64) {
    let mut settles = Vec::with_capacity(chunk.len());
    let mut todo: Vec<(Delivery, Event)> = Vec::with_capacity(chunk.len());
    for delivery in chunk {
        let seq = delivery.event.seq;
        match events::decode(&delivery.event.body) {
            Ok(event) if !trigger.accepts(&|name| attribute(&event, name)) => {
                settles.push(Settle::Ack { seq, outbox: vec![] });
            }
            // Attempts used up by leases that ran out (the node went down
            // mid-attempt each time): no further attempt.
            Ok(event) if delivery.attempts > trigger.max_attempts => {
                let error = delivery
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "every attempt's lease ran out before it finished".into());
                settles.push(failed(sub, live, trigger, (seq, delivery.attempts), event, error));
            }
            Ok(event) => todo.push((delivery, event)),
            Err(e) => {
                tracing::error!(topic = %sub.topic, seq, error = %e, "stored event is unreadable; skipped");
                settles.push(Settle::Ack { seq, outbox: vec![] });
            }
        }
    }
    let mut handled = 0;
    if sub.topic.starts_with(crate::invocations::TOPIC_PREFIX) {
        for (delivery, event) in todo {
            let (settle, ok) = crate::invocations::attempt(state, live, trigger, &delivery, event).await;
            handled += ok as u64;
            settles.push(settle);
        }
        return (settles, handled);
    }
    if !todo.is_empty() {
        let chunk: Vec<(&Event, u32)> = todo.iter().map(|(d, e)| (e, d.attempts)).collect();
        let (results, mut outbox) = attempt(state, live, trigger, &sub.topic, &chunk).await;
        for ((delivery, event), result) in todo.into_iter().zip(results) {
            let seq = delivery.event.seq;
            settles.push(match result {
                Ok(()) => {
                    handled += 1;
                    // What the invocation published commits with its first ack.
                    Settle::Ack {
                        seq,
                        outbox: std::mem::take(&mut outbox),
                    }
                }
                Err(error) => failed(sub, live, trigger, (seq, delivery.attempts), event, error),
            });
        }
    }
    (settles, handled)
}

/// One attempt of a chunk of events (with their attempt numbers) on the
/// function, whatever its runtime: a result per event, and what the
/// attempt published, ready to store with the first ack.
pub(crate) async fn attempt(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    topic: &str,
    chunk: &[(&Event, u32)],
) -> (Vec<Result<(), String>>, Vec<(String, gale_store::NewEvent)>) {
    match live.prepared(state).await {
        Ok((Loaded::Wasm(prepared), cold)) if prepared.world() == World::Events => {
            let events: Vec<&Event> = chunk.iter().map(|(e, _)| *e).collect();
            deliver_events(state, live, trigger, prepared, cold, &events).await
        }
        Ok((Loaded::Wasm(_), _)) => {
            let mut results = Vec::with_capacity(chunk.len());
            for (event, _) in chunk {
                results.push(deliver(state, live, trigger, event).await);
            }
            (results, Vec::new())
        }
        Ok((Loaded::Process(pool), _)) => deliver_process(state, live, trigger, topic, pool, chunk).await,
        Err(e) => (vec![Err(e.to_string()); chunk.len()], Vec::new()),
    }
}

/// One attempt of a chunk on a process function: one invocation with the
/// payload the trigger's format makes.
async fn deliver_process(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    topic: &str,
    pool: Arc<gale_process::Pool>,
    chunk: &[(&Event, u32)],
) -> (Vec<Result<(), String>>, Vec<(String, gale_store::NewEvent)>) {
    let timeout = attempt_timeout(live, trigger);
    let Ok(permit) = live.slots.clone().acquire_owned().await else {
        return (
            vec![Err("the function is being replaced".into()); chunk.len()],
            Vec::new(),
        );
    };
    let payload = crate::lambda::events_payload(trigger.format, topic, &state.processes.region, chunk);
    let ids: Vec<&str> = chunk.iter().map(|(e, _)| e.id()).collect();
    let id = gateway::request_id();
    let events = ids.iter().map(|s| s.to_string()).collect();
    let c = crate::lambda::invoke(state, live, &pool, permit, payload, &id, timeout, None, events).await;
    let results = crate::lambda::failures(trigger.format, &c.result, &ids)
        .into_iter()
        .map(|failed| match failed {
            None => Ok(()),
            Some(why) => Err(format!("{why} (request {id})")),
        })
        .collect();
    (results, c.outbox)
}

/// One attempt of a chunk of events on an event handler: one invocation
/// (`handle`, or `handle-batch` for several). Returns a result per event and
/// the events the invocation published, ready to store.
pub(crate) async fn deliver_events(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    prepared: Arc<gale_wasm::Prepared>,
    cold: bool,
    events: &[&Event],
) -> (Vec<Result<(), String>>, Vec<(String, gale_store::NewEvent)>) {
    let n = events.len();
    let timeout = attempt_timeout(live, trigger);
    let Ok(permit) = live.slots.clone().acquire_owned().await else {
        return (vec![Err("the function is being replaced".into()); n], Vec::new());
    };
    let started = crate::Started {
        request_id: gateway::request_id(),
        at: crate::registry::now_ms(),
        cold_start: cold,
        events: events.iter().map(|e| e.id().to_string()).collect(),
    };
    let done = {
        let (state, live) = (state.clone(), live.clone());
        move |c: gale_wasm::Completion| {
            let status = match c.outcome {
                gale_core::api::Outcome::Ok => 200,
                gale_core::api::Outcome::Timeout => 504,
                _ => 500,
            };
            state.finished(&live, started, c, status);
        }
    };
    let guest: Vec<_> = events.iter().map(|e| events::to_guest(e)).collect();
    let handled = gale_wasm::events::handle(prepared, guest, timeout, done).await;
    drop(permit);
    let results = match handled.results {
        Ok(results) => results,
        Err(failure) => {
            let why = match failure {
                Failure::Timeout => format!(
                    "the attempt did not finish within its ack timeout of {}",
                    humantime::format_duration(timeout)
                ),
                Failure::Guest(m) | Failure::Body(m) => m,
                Failure::Overloaded => "every instance slot of the node was in use".into(),
            };
            return (vec![Err(why); n], Vec::new());
        }
    };
    let mut outbox = Vec::with_capacity(handled.outbox.len());
    for (topic, event) in handled.outbox {
        match events::from_guest(event) {
            Ok(e) => outbox.push((topic, events::encode(&e))),
            // The whole attempt fails: publishing is all or nothing.
            Err(e) => {
                return (
                    vec![Err(format!("the handler published an invalid event: {e}")); n],
                    Vec::new(),
                );
            }
        }
    }
    (results, outbox)
}

/// How long one attempt may run: the trigger's ack timeout, but never
/// longer than the function's own timeout.
pub(crate) fn attempt_timeout(live: &Live, trigger: &EventTrigger) -> Duration {
    trigger
        .ack_timeout
        .map_or(live.spec.timeout.0, |t| t.0.min(live.spec.timeout.0))
}

/// What becomes of an event whose attempt failed.
pub(crate) fn failed(
    sub: &Subscriber,
    live: &Live,
    trigger: &EventTrigger,
    (seq, attempts): (u64, u32),
    mut event: Event,
    error: String,
) -> Settle {
    if attempts < trigger.max_attempts {
        let delay = jitter(trigger.backoff.delay(attempts));
        return Settle::Retry {
            seq,
            delay_ms: delay.as_millis() as u64,
            error,
        };
    }
    match &trigger.dead_letter {
        Some(topic) => {
            let mut error = error;
            if error.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            event.set_extension("galeerror", error);
            event.set_extension("galeattempts", attempts as i64);
            event.set_extension("galefunction", live.name.clone());
            event.set_extension("galeversion", live.version as i64);
            event.set_extension("galetopic", sub.topic.clone());
            Settle::DeadLetter {
                seq,
                topic: topic.clone(),
                event: events::encode(&event),
            }
        }
        None => {
            tracing::warn!(
                topic = %sub.topic,
                function = %live.name,
                id = %event.id(),
                attempts,
                %error,
                "event failed every attempt and the trigger has no dead_letter topic; dropped"
            );
            Settle::Ack { seq, outbox: vec![] }
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1].
pub(crate) fn jitter(delay: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(u32::MAX) as f64 / u32::MAX as f64;
    delay.mul_f64(0.5 + r / 2.0)
}

/// One attempt of one event on a `wasi:http` component, as a binary-mode
/// CloudEvent request: a 2xx answer handles it.
pub(crate) async fn deliver(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    event: &Event,
) -> Result<(), String> {
    let (status, body, id) = send(state, live, trigger, events::to_request(event), event.id()).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the function answered {status}: {} (request {id})",
            String::from_utf8_lossy(&body).trim()
        ))
    }
}

/// Runs one request for the event `event_id`: waits for an instance slot
/// (events queue in the store, not at the function), then runs it for at
/// most the trigger's ack timeout (the function's timeout unless shorter).
/// Returns the status, the body (cut at 64 KiB) and the request id.
pub(crate) async fn send(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    request: http::Request<Bytes>,
    event_id: &str,
) -> Result<(http::StatusCode, Bytes, String), String> {
    let timeout = attempt_timeout(live, trigger);
    let permit = live
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "the function is being replaced".to_string())?;
    let id = gateway::request_id();
    let request = request
        .map(|b| http_body_util::Full::new(b).map_err(|never| -> gale_wasm::BodyError { match never {} }));
    let attempt = async {
        let response = gateway::run(
            state,
            live.clone(),
            permit,
            request,
            &id,
            timeout,
            vec![event_id.to_string()],
        )
        .await;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_else(|_| Bytes::from_static(b"(body not shown)"));
        (status, body)
    };
    // The guest is cut at `timeout` by the runtime; this only guards against
    // a response body that never ends.
    match tokio::time::timeout(timeout + LEASE_MARGIN / 2, attempt).await {
        Ok((status, body)) => Ok((status, body, id)),
        Err(_) => Err(format!(
            "the attempt did not finish within its ack timeout of {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// What a replay did.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Replayed {
    /// Events run through the function.
    pub replayed: u64,
    /// Of those, events whose run failed (not retried: run the replay again).
    pub failed: u64,
    /// Events skipped by the function's filters for the topic.
    pub filtered: u64,
    /// Sequence number of the last event looked at (resume after it).
    pub last_seq: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// Runs the events of `topic` published at or after `from_ms` through
/// `function`, oldest first, at most `limit`: for a new version or a fixed
/// bug. The function's filters for the topic apply if it subscribes to
/// it; what it publishes is stored; failures are reported, not retried.
pub async fn replay(
    state: &Arc<State>,
    topic: &str,
    function: &str,
    from_ms: u64,
    limit: u64,
) -> Result<Replayed, crate::NodeError> {
    let live = state
        .function(function)
        .ok_or_else(|| crate::deploy::not_found(function))?;
    let trigger = triggers(&live.name, &live.spec)
        .into_iter()
        .find(|t| t.topic == topic)
        .unwrap_or_else(|| EventTrigger::new(topic));
    let mut report = Replayed {
        replayed: 0,
        failed: 0,
        filtered: 0,
        last_seq: 0,
        errors: Vec::new(),
    };
    let mut after = 0;
    'pages: loop {
        let page = state.store.read(topic, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in page {
            if stored.published_at < from_ms {
                continue;
            }
            if report.replayed + report.filtered >= limit {
                break 'pages;
            }
            report.last_seq = stored.seq;
            let Ok(event) = events::decode(&stored.body) else {
                continue;
            };
            if !trigger.accepts(&|name| attribute(&event, name)) {
                report.filtered += 1;
                continue;
            }
            report.replayed += 1;
            let (mut results, outbox) = attempt(state, &live, &trigger, topic, &[(&event, 1)]).await;
            match results.pop().unwrap_or(Err("no result".into())) {
                Ok(()) => {
                    for (to, e) in outbox {
                        state.store.publish(&to, vec![e]).await?;
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    if report.errors.len() < 10 {
                        report.errors.push(format!("{}: {e}", event.id()));
                    }
                }
            }
        }
    }
    Ok(report)
}
