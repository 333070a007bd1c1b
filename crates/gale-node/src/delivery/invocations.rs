//! The attempts of asynchronous invocations (queued by
//! `functions::invocations`): an HTTP function gets the original request
//! back, an event handler the event, a process function the payload. Each
//! attempt updates the invocation's record, and its end goes as a record
//! event to the function's `on_success` or `on_failure` topic, committed
//! with the settlement.

use super::backoff::jitter;
use crate::clock::now_ms;
use crate::functions::events::{attempt_timeout, deliver_events, send};
use crate::functions::invocations::{body_of, record, request_of, save};
use crate::functions::live::{Live, Loaded};
use crate::http::request_id;
use cloudevents::{AttributesReader, Event};
use gale_core::EventTrigger;
use gale_core::api::{InvocationRecord, InvocationResponse};
use gale_store::{Delivery, Settle};
use std::sync::Arc;

/// One attempt of an asynchronous invocation; returns its settlement and
/// whether it succeeded.
pub async fn attempt(
    live: &Arc<Live>,
    trigger: &EventTrigger,
    delivery: &Delivery,
    event: Event,
) -> (Settle, bool) {
    let seq = delivery.event.seq;
    let id = event.id().to_string();
    let (result, response, mut outbox) = match live.prepared().await {
        Err(e) => (Err(e.to_string()), None, Vec::new()),
        // A process function gets the payload as it was sent.
        Ok((Loaded::Process(pool), _)) => {
            let payload = body_of(&event);
            let timeout = attempt_timeout(live, trigger);
            match live.slots.clone().acquire_owned().await {
                Err(_) => (Err("the function is being replaced".into()), None, Vec::new()),
                Ok(permit) => {
                    let c = crate::functions::process::invoke(
                        live,
                        &pool,
                        permit,
                        payload,
                        &request_id(),
                        timeout,
                        None,
                        vec![id.clone()],
                    )
                    .await;
                    match c.result {
                        Ok(body) => {
                            let response = InvocationResponse {
                                status: 200,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            (Ok(()), Some(response), c.outbox)
                        }
                        Err(e) => (
                            Err(format!("{}: {}", e.error_type, e.message())),
                            None,
                            Vec::new(),
                        ),
                    }
                }
            }
        }
        Ok((Loaded::Wasm(prepared), cold)) if prepared.world() == gale_wasm::World::Events => {
            let (mut results, outbox) = deliver_events(live, trigger, prepared, cold, &id, &[&event]).await;
            (results.pop().unwrap_or(Err("no result".into())), None, outbox)
        }
        Ok((Loaded::Wasm(_), _)) => match send(live, trigger, request_of(&event), &id).await {
            // A 4xx is the function's answer; only a 5xx (or no answer) fails.
            Ok(sent) => {
                let response = InvocationResponse {
                    status: sent.status.as_u16(),
                    body: String::from_utf8_lossy(&sent.body).into_owned(),
                };
                if sent.status.is_server_error() {
                    let why = format!("the function answered {} (request {})", sent.status, sent.request);
                    (Err(why), Some(response), Vec::new())
                } else {
                    let outbox = crate::publisher::Publisher::outbox(crate::publisher::Outbox {
                        function: &live.name,
                        origin: &id,
                        events: sent.published,
                    });
                    match outbox {
                        Ok(outbox) => (Ok(()), Some(response), outbox),
                        Err(e) => (
                            Err(format!("the function published {e}")),
                            Some(response),
                            Vec::new(),
                        ),
                    }
                }
            }
            Err(e) => (Err(e), None, Vec::new()),
        },
    };
    let kv = &*live.runtimes.kv;
    let mut record = record(kv, &id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| InvocationRecord {
            id: id.clone(),
            function: live.name.clone(),
            status: "queued".into(),
            attempts: 0,
            created_at: delivery.event.published_at,
            updated_at: 0,
            response: None,
            error: None,
        });
    record.attempts = delivery.attempts;
    record.updated_at = now_ms();
    record.response = response;
    let policy = &live.spec.async_policy;
    let (settle, ok) = match result {
        Ok(()) => {
            record.status = "succeeded".into();
            record.error = None;
            if let Some(t) = &policy.on_success {
                outbox.push((t.clone(), record_event(&record)));
            }
            (Settle::Ack { seq, outbox }, true)
        }
        Err(error) if delivery.attempts < trigger.max_attempts => {
            record.status = "retrying".into();
            record.error = Some(error);
            let delay = jitter(trigger.backoff.delay(delivery.attempts));
            let error = record.error.clone().unwrap_or_default();
            (
                Settle::Retry {
                    seq,
                    delay_ms: delay.as_millis() as u64,
                    error,
                },
                false,
            )
        }
        Err(error) => {
            record.status = "failed".into();
            record.error = Some(error);
            let outbox = policy
                .on_failure
                .iter()
                .map(|t| (t.clone(), record_event(&record)))
                .collect();
            (Settle::Ack { seq, outbox }, false)
        }
    };
    if let Err(e) = save(kv, &record).await {
        tracing::warn!(invocation = %id, error = %e, "saving an invocation record failed");
    }
    (settle, ok)
}

/// The event an `on_success` / `on_failure` topic receives.
fn record_event(record: &InvocationRecord) -> gale_store::NewEvent {
    let (id, source) = (
        format!("{}/{}", record.id, record.status),
        format!("/gale/functions/{}", record.function),
    );
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": format!("gale.invocation.{}", record.status),
        "subject": record.id,
        "datacontenttype": "application/json",
        "data": record,
    });
    gale_store::NewEvent {
        id,
        source,
        partition_key: None,
        body: event.to_string().into_bytes(),
    }
}
