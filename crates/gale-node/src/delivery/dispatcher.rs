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

use super::backoff::jitter;
use crate::events::{self, attribute};
use crate::functions::Functions;
use crate::functions::events::{attempt, attempt_timeout};
use crate::functions::live::Live;
use crate::functions::triggers::{ASYNC_PREFIX, triggers};
use crate::publisher::Publisher;
use cloudevents::{AttributesReader, Event};
use gale_core::EventTrigger;
use gale_store::Topics;
use gale_store::{Delivery, Settle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// What delivering takes; cheap to clone.
#[derive(Clone)]
pub struct Dispatch {
    pub functions: Functions,
    pub publisher: Publisher,
    /// Fetching, for dispatchers; appends go through the publisher.
    pub topics: Arc<dyn Topics>,
    /// Where dispatchers run: threads of their own at a lower priority, so
    /// publishers and requests are answered first.
    pub runtime: tokio::runtime::Handle,
}

/// One subscription and the trigger it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub topic: String,
    pub subscription: String,
    pub function: String,
    /// Position of the trigger in the function's `triggers`.
    pub index: usize,
    pub ordered: bool,
}

/// How long a lease outlives the attempt's own deadline, so the dispatcher
/// (not the lease) cuts a hanging attempt while the node is up.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How long one fetch waits for events before the loop looks at its
/// configuration again.
const POLL: Duration = Duration::from_secs(5);
/// The part of an error kept in a dead letter's `galeerror` attribute.
const MAX_ERROR: usize = 1024;

/// The trigger as the function's current version has it, if it still serves `sub`.
fn current(functions: &Functions, sub: &Subscriber) -> Option<(Arc<Live>, EventTrigger)> {
    let live = functions.get(&sub.function)?;
    let trigger = triggers(&live.name, &live.spec).into_iter().nth(sub.index)?;
    (trigger.topic == sub.topic).then_some((live, trigger))
}

/// Delivers `sub`'s events until `stop`.
pub async fn run(dispatch: Dispatch, sub: Subscriber, mut stop: watch::Receiver<bool>) {
    let mut slots = Arc::new(Semaphore::new(0));
    let mut width = 0;
    let (settled, settles) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(settle_all(dispatch.clone(), sub.clone(), settles));
    loop {
        let Some((live, trigger)) = current(&dispatch.functions, &sub) else {
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
            r = dispatch.topics.fetch(&sub.topic, &sub.subscription, max, lease, POLL) => r,
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
            let more = dispatch
                .topics
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
            let (sub, live, trigger) = (sub.clone(), live.clone(), trigger.clone());
            let settled = settled.clone();
            tokio::spawn(async move {
                let _ = settled.send(handle(&sub, &live, &trigger, chunk).await);
                drop(permit);
            });
        }
    }
}

/// Settles what the chunks of a subscription came to, as many at once as
/// have finished: one store transaction for all of them.
async fn settle_all(
    dispatch: Dispatch,
    sub: Subscriber,
    mut done: tokio::sync::mpsc::UnboundedReceiver<(Vec<Settle>, u64)>,
) {
    while let Some((mut settles, mut handled)) = done.recv().await {
        while let Ok((more, n)) = done.try_recv() {
            settles.extend(more);
            handled += n;
        }
        let settled = dispatch
            .publisher
            .settle(&sub.topic, &sub.subscription, settles, handled)
            .await;
        if let Err(e) = settled {
            // The leases run out and the events come again: nothing is lost.
            tracing::error!(topic = %sub.topic, subscription = %sub.subscription, error = %e, "settling failed");
        }
    }
}

/// Runs one leased chunk of events; returns how to settle each, and how
/// many were handled.
async fn handle(
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
    if sub.topic.starts_with(ASYNC_PREFIX) {
        for (delivery, event) in todo {
            let (settle, ok) = super::invocations::attempt(live, trigger, &delivery, event).await;
            handled += ok as u64;
            settles.push(settle);
        }
        return (settles, handled);
    }
    if !todo.is_empty() {
        let chunk: Vec<(&Event, u32)> = todo.iter().map(|(d, e)| (e, d.attempts)).collect();
        let origin = origin(sub, chunk.iter().map(|(e, _)| *e));
        let (results, mut outbox) = attempt(live, trigger, &sub.topic, &origin, &chunk).await;
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

/// What becomes of an event whose attempt failed.
pub fn failed(
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

/// What an attempt of a subscription's chunk ran for: the subscription and
/// each event's `source` and `id`. The same chunk delivered again gets the
/// same origin, so what it publishes again gets the same ids.
pub fn origin<'a>(sub: &Subscriber, events: impl Iterator<Item = &'a Event>) -> String {
    let mut origin = format!("{} {}", sub.topic, sub.subscription);
    for e in events {
        origin.push('\n');
        origin.push_str(&e.source().to_string());
        origin.push(' ');
        origin.push_str(e.id());
    }
    origin
}
