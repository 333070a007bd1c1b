//! One sink's loop: lease events of its topic, send them, settle.
//!
//! The sink is a subscription of its topic (named `sink:<name>`, so it
//! never collides with a function's), read like a function's: a batch is
//! leased, sent, and acknowledged in the store only once the broker
//! confirmed it. A batch the broker refused (or did not confirm in time)
//! is retried after the sink's backoff, each event keeping its attempt
//! count in the store, and an event out of attempts is moved to the
//! sink's dead-letter topic with the error, as a function's would be. A
//! crash of the node mid-batch leaves the leases to run out: the batch is
//! sent again, and the broker may see it twice (each message carries its
//! event's id).

use super::super::backoff::jitter;
use super::Sink;
use crate::events;
use crate::publisher::Publisher;
use cloudevents::{AttributesReader, Event};
use gale_core::SinkSpec;
use gale_store::{Delivery, Settle, Topics};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events sent at once.
const BATCH: usize = 256;
/// How long the broker has to confirm a batch.
const CONFIRM: Duration = Duration::from_secs(30);
/// A lease outlives the confirmation's deadline.
const LEASE_MS: u64 = 45_000;
/// How long one fetch waits for events.
const POLL: Duration = Duration::from_secs(5);
/// The part of an error kept in a dead letter's `galeerror`.
const MAX_ERROR: usize = 1024;

/// The subscription a sink reads its topic with.
pub fn subscription(name: &str) -> String {
    format!("{}{name}", super::SUBSCRIPTION_PREFIX)
}

/// Forwards `spec.topic` to the broker until `stop`.
pub(super) async fn run(
    name: String,
    spec: SinkSpec,
    mut sink: Box<dyn Sink>,
    (topics, publisher): (Arc<dyn Topics>, Publisher),
    mut stop: watch::Receiver<bool>,
) {
    let sub = subscription(&name);
    loop {
        let fetched = tokio::select! {
            r = topics.fetch(&spec.topic, &sub, BATCH, LEASE_MS, POLL) => r,
            _ = stop.changed() => return,
        };
        let deliveries = match fetched {
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sink = %name, topic = %spec.topic, error = %e, "fetch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut settles = Vec::with_capacity(deliveries.len());
        let mut batch: Vec<(Delivery, Event)> = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match events::decode(&d.event.body) {
                Ok(event) => batch.push((d, event)),
                Err(e) => {
                    tracing::error!(sink = %name, seq = d.event.seq, error = %e, "stored event is unreadable; skipped");
                    settles.push(Settle::Ack {
                        seq: d.event.seq,
                        outbox: vec![],
                    });
                }
            }
        }
        let events: Vec<Event> = batch.iter().map(|(_, e)| e.clone()).collect();
        let sent = match tokio::time::timeout(CONFIRM, sink.send(&events)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the broker did not confirm within {}s",
                CONFIRM.as_secs()
            )),
        };
        let handled = match &sent {
            Ok(()) => batch.len() as u64,
            Err(_) => 0,
        };
        for (delivery, event) in batch {
            let seq = delivery.event.seq;
            settles.push(match &sent {
                Ok(()) => Settle::Ack { seq, outbox: vec![] },
                Err(error) => failed(&name, &spec, (seq, delivery.attempts), event, error),
            });
        }
        if let Err(e) = &sent {
            tracing::warn!(sink = %name, topic = %spec.topic, error = %e, "sending failed");
        }
        if let Err(e) = publisher.settle(&spec.topic, &sub, settles, handled).await {
            // The leases run out and the events come again: nothing is lost.
            tracing::error!(sink = %name, topic = %spec.topic, error = %e, "settling failed");
        }
    }
}

/// What becomes of an event the broker did not take.
fn failed(name: &str, spec: &SinkSpec, (seq, attempts): (u64, u32), mut event: Event, error: &str) -> Settle {
    if attempts < spec.max_attempts {
        return Settle::Retry {
            seq,
            delay_ms: jitter(spec.backoff.delay(attempts)).as_millis() as u64,
            error: error.to_string(),
        };
    }
    let Some(topic) = &spec.dead_letter else {
        tracing::warn!(sink = %name, id = %event.id(), attempts, %error, "event failed every attempt and the sink has no dead_letter topic; dropped");
        return Settle::Ack { seq, outbox: vec![] };
    };
    let mut error = error.to_string();
    if error.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    event.set_extension("galeerror", error);
    event.set_extension("galeattempts", attempts as i64);
    event.set_extension("galesink", name.to_string());
    event.set_extension("galetopic", spec.topic.clone());
    Settle::DeadLetter {
        seq,
        topic: topic.clone(),
        event: events::encode(&event),
    }
}
