//! Invocations on request: `POST /_gale/functions/{name}/invocations`.
//!
//! `mode=sync` (the default) runs the function at once and answers with its
//! response. `mode=async` answers 202 with an invocation id as soon as the
//! request is durable: it is stored as an event (type `gale.invocation`,
//! the body as data, method and path as `galemethod` / `galepath`) on the
//! function's own topic, `_async.<function>`, and delivered like any event,
//! with the retries of the function's `[functions.NAME.async]` policy. An
//! HTTP function gets the original request back; an event handler gets the
//! event. Each invocation keeps a record (status, attempts, the answer or
//! the error) in the node's key-value store, and its end goes as a record
//! event to `on_success` or `on_failure`, committed with the settlement.

use crate::admin::ApiError;
use crate::dispatch::{self, Subscriber};
use crate::scheduler::{Live, Loaded};
use crate::{NodeError, State, gateway};
use axum::extract::{Path, Query, Request, State as Ext};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cloudevents::{AttributesReader, AttributesWriter, Data, Event};
use gale_core::api::{InvocationRecord, InvocationResponse};
use gale_core::{Code, Error, EventTrigger};
use gale_store::{Delivery, KeyValue, Settle, TopicConfig, Topics};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::sync::Arc;

/// Invocation topics are `_async.<function>`.
pub const TOPIC_PREFIX: &str = "_async.";
const TOPIC: TopicConfig = TopicConfig {
    max_age_ms: 7 * 86_400_000,
    max_bytes: 1 << 30,
    dedup_window_ms: 600_000,
};
/// Where records live: a key-value bucket of the node's own.
const SCOPE: &str = "_gale";
const BUCKET: &str = "invocations";

pub fn topic(function: &str) -> String {
    format!("{TOPIC_PREFIX}{function}")
}

#[derive(Deserialize)]
pub struct InvokeQuery {
    #[serde(default)]
    mode: Option<String>,
    /// The path (and query) the function sees; default `/`.
    #[serde(default)]
    path: Option<String>,
}

/// `POST /_gale/functions/{name}/invocations`.
pub async fn invoke(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    if state.grant(request.headers()) != Some(crate::tokens::Grant::Admin) {
        return Err(
            Error::new(Code::Unauthorized, "invoking a function takes the admin token")
                .with_hint(
                    "send `Authorization: Bearer <token>` with the token from the node's data directory",
                )
                .into(),
        );
    }
    let live = state
        .function(&name)
        .ok_or_else(|| crate::deploy::not_found(&name))?;
    let path = q.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        return Err(Error::new(Code::BadRequest, format!("path {path:?} must start with '/'")).into());
    }
    let (parts, body) = request.into_parts();
    let max = live.spec.max_body.0 as usize;
    let body = http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map_err(|_| {
            Error::new(
                Code::EventTooLarge,
                format!("the body is larger than the function's max_body of {max} bytes"),
            )
        })?
        .to_bytes();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match q.mode.as_deref().unwrap_or("sync") {
        // A process function takes the body as its payload, as Lambda's Invoke does.
        "sync" if live.spec.runtime == gale_core::manifest::RuntimeKind::Process => {
            let id = gateway::request_id();
            Ok(crate::lambda::invoke_payload(&state, live, body, &id)
                .await
                .map(axum::body::Body::new))
        }
        "sync" => {
            let mut builder = http::Request::builder()
                .method(parts.method)
                .uri(&path)
                .header(header::HOST, "localhost");
            if let Some(ct) = &content_type {
                builder = builder.header(header::CONTENT_TYPE, ct);
            }
            let request = builder
                .header(header::CONTENT_LENGTH, body.len())
                .body(http_body_util::Full::new(body))
                .map_err(|e| Error::new(Code::BadRequest, format!("cannot build the request: {e}")))?;
            let id = gateway::request_id();
            let response = gateway::invoke(&state, live, request, &id).await;
            Ok(response.map(axum::body::Body::new))
        }
        "async" => {
            let record = submit(&state, &live, parts.method.as_str(), &path, content_type, body).await?;
            let location = format!("/v1/invocations/{}", record.id);
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                axum::Json(serde_json::json!({ "invocation_id": record.id, "status": record.status })),
            )
                .into_response())
        }
        other => Err(Error::new(Code::BadRequest, format!("unknown mode {other:?}"))
            .with_hint("use mode=sync (the default) or mode=async")
            .into()),
    }
}

/// Stores an asynchronous invocation; returns its record once durable.
pub(crate) async fn submit(
    state: &Arc<State>,
    live: &Live,
    method: &str,
    path: &str,
    content_type: Option<String>,
    body: Bytes,
) -> Result<InvocationRecord, NodeError> {
    let topic = topic(&live.name);
    if !state.topic_exists(&topic) {
        // The first async invocation of this function: its topic and subscription.
        state.put_topic(&topic, TOPIC).await?;
        state.resubscribe().await?;
    }
    let id = gateway::request_id();
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/gale/invocations",
        "type": "gale.invocation",
        "galemethod": method,
        "galepath": path,
    });
    let mut event: Event =
        serde_json::from_value(event).map_err(|e| NodeError::DataDir(format!("invocation event: {e}")))?;
    if !body.is_empty() {
        event.set_data_unchecked(Data::Binary(body.to_vec()));
    }
    event.set_datacontenttype(content_type);
    let now = crate::registry::now_ms();
    let record = InvocationRecord {
        id: id.clone(),
        function: live.name.clone(),
        status: "queued".into(),
        attempts: 0,
        created_at: now,
        updated_at: now,
        response: None,
        error: None,
    };
    save(state, &record).await?;
    state
        .store
        .publish(&topic, vec![crate::events::encode(&event)])
        .await?;
    Ok(record)
}

async fn save(state: &State, record: &InvocationRecord) -> Result<(), NodeError> {
    let value = serde_json::to_vec(record).expect("records serialize");
    state.store.kv_set(SCOPE, BUCKET, &record.id, value).await?;
    Ok(())
}

/// `GET /v1/invocations/{id}`.
pub async fn show(
    Ext(state): Ext<Arc<State>>,
    Path(id): Path<String>,
) -> Result<axum::Json<InvocationRecord>, ApiError> {
    let value = state
        .store
        .kv_get(SCOPE, BUCKET, &id)
        .await
        .map_err(NodeError::from)?
        .ok_or_else(|| {
            Error::new(Code::BadRequest, format!("no invocation {id}"))
                .with_hint("use the invocation_id an async invocation answered with")
        })?;
    serde_json::from_slice(&value)
        .map(axum::Json)
        .map_err(|e| NodeError::DataDir(format!("invocation record {id}: {e}")).into())
}

/// The body an invocation event carries (a process function's payload).
fn body_of(event: &Event) -> Bytes {
    match event.data() {
        Some(Data::Binary(b)) => Bytes::from(b.clone()),
        Some(Data::String(s)) => Bytes::from(s.clone()),
        Some(Data::Json(v)) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        None => Bytes::new(),
    }
}

/// The request an invocation event stands for.
fn request_of(event: &Event) -> http::Request<Bytes> {
    let ext = |name: &str| event.extension(name).map(|v| v.to_string());
    let body = body_of(event);
    let mut builder = http::Request::builder()
        .method(ext("galemethod").as_deref().unwrap_or("POST"))
        .uri(ext("galepath").as_deref().unwrap_or("/"))
        .header(header::HOST, "localhost")
        .header("x-gale-invocation-id", event.id());
    if let Some(ct) = event.datacontenttype() {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| http::Request::new(Bytes::new()))
}

/// One attempt of an asynchronous invocation; returns its settlement and
/// whether it succeeded.
pub async fn attempt(
    state: &Arc<State>,
    live: &Arc<Live>,
    trigger: &EventTrigger,
    delivery: &Delivery,
    event: Event,
) -> (Settle, bool) {
    let seq = delivery.event.seq;
    let id = event.id().to_string();
    let (result, response, mut outbox) = match live.prepared(state).await {
        Err(e) => (Err(e.to_string()), None, Vec::new()),
        // A process function gets the payload as it was sent.
        Ok((Loaded::Process(pool), _)) => {
            let payload = body_of(&event);
            let timeout = dispatch::attempt_timeout(live, trigger);
            match live.slots.clone().acquire_owned().await {
                Err(_) => (Err("the function is being replaced".into()), None, Vec::new()),
                Ok(permit) => {
                    let c = crate::lambda::invoke(
                        state,
                        live,
                        &pool,
                        permit,
                        payload,
                        &gateway::request_id(),
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
            let (mut results, outbox) =
                dispatch::deliver_events(state, live, trigger, prepared, cold, &[&event]).await;
            (results.pop().unwrap_or(Err("no result".into())), None, outbox)
        }
        Ok((Loaded::Wasm(_), _)) => match dispatch::send(state, live, trigger, request_of(&event), &id).await
        {
            // A 4xx is the function's answer; only a 5xx (or no answer) fails.
            Ok((status, body, request)) => {
                let response = InvocationResponse {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let result = if status.is_server_error() {
                    Err(format!("the function answered {status} (request {request})"))
                } else {
                    Ok(())
                };
                (result, Some(response), Vec::new())
            }
            Err(e) => (Err(e), None, Vec::new()),
        },
    };
    let mut record = match state.store.kv_get(SCOPE, BUCKET, &id).await {
        Ok(Some(v)) => serde_json::from_slice(&v).ok(),
        _ => None,
    }
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
    record.updated_at = crate::registry::now_ms();
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
            let delay = dispatch::jitter(trigger.backoff.delay(delivery.attempts));
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
    if let Err(e) = save(state, &record).await {
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

impl State {
    /// Reconciles subscriptions with the live functions (after a new
    /// invocation topic appeared).
    pub(crate) async fn resubscribe(self: &Arc<Self>) -> Result<(), NodeError> {
        let functions = self.functions.read().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted: Vec<Subscriber> = dispatch::desired(&functions, |t| self.topic_exists(t));
        self.subscribe(wanted).await
    }
}
