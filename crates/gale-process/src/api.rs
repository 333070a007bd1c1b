//! The Lambda Runtime API, served to one instance.
//!
//! Every instance gets its own listener on a loopback port
//! (`AWS_LAMBDA_RUNTIME_API`), so the server knows without asking which
//! instance is calling, and an instance can only ever fetch and answer its
//! own invocations: `/next` hands out work queued for this instance alone,
//! and `/response` or `/error` for any id but the one it holds is refused.
//! The same listener is the instance's `GALE_API`: events it publishes there
//! join the outbox of the invocation it is running.

use crate::{Publish, PublishRefused};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gale_store::NewEvent;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Largest response (or error) a runtime may post, as Lambda's 6 MB.
pub const MAX_RESPONSE: usize = 6 * 1024 * 1024;

/// One invocation, as `/next` hands it out.
pub(crate) struct Work {
    pub id: String,
    pub payload: Bytes,
    /// Unix milliseconds.
    pub deadline_ms: u64,
    pub function_arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
}

/// What the runtime told the server, for the invoker.
#[derive(Debug)]
pub(crate) enum Report {
    /// The runtime asked for its first invocation: its init is over.
    Ready,
    Response(Bytes),
    Error {
        error_type: String,
        body: Bytes,
    },
    InitError {
        error_type: String,
        body: Bytes,
    },
}

/// The state shared by one instance's server and its invoker.
pub(crate) struct Channel {
    work: tokio::sync::Mutex<mpsc::Receiver<Work>>,
    reports: mpsc::UnboundedSender<Report>,
    /// The id of the invocation the runtime holds.
    current: Mutex<Option<String>>,
    /// Events published during the current invocation.
    outbox: Mutex<Vec<(String, NewEvent)>>,
    ready: AtomicBool,
    publish: Option<Publish>,
}

impl Channel {
    pub fn new(
        publish: Option<Publish>,
    ) -> (Arc<Channel>, mpsc::Sender<Work>, mpsc::UnboundedReceiver<Report>) {
        let (work_tx, work_rx) = mpsc::channel(1);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let channel = Arc::new(Channel {
            work: tokio::sync::Mutex::new(work_rx),
            reports: reports_tx,
            current: Mutex::new(None),
            outbox: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            publish,
        });
        (channel, work_tx, reports_rx)
    }

    /// Ends the current invocation: nothing more may be posted for it.
    /// Returns what it published.
    pub fn finish(&self) -> Vec<(String, NewEvent)> {
        *lock(&self.current) = None;
        std::mem::take(&mut *lock(&self.outbox))
    }

    /// Takes the current invocation if it is `id`.
    fn settle(&self, id: &str) -> bool {
        let mut current = lock(&self.current);
        if current.as_deref() == Some(id) {
            *current = None;
            true
        } else {
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn router(channel: Arc<Channel>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/_gale/topics/{topic}/events", post(publish))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "UnknownEndpoint",
                "no such Runtime API endpoint; see the 2018-06-01 Runtime API",
            )
        })
        .with_state(channel)
}

/// An error in the shape runtimes expect from the Runtime API.
fn problem(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

async fn next(State(channel): State<Arc<Channel>>) -> Response {
    if !channel.ready.swap(true, Relaxed) {
        let _ = channel.reports.send(Report::Ready);
    }
    let work = channel.work.lock().await.recv().await;
    let Some(work) = work else {
        return problem(
            StatusCode::GONE,
            "InstanceStopping",
            "this instance is being stopped",
        );
    };
    *lock(&channel.current) = Some(work.id.clone());
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("content-type", "application/json");
    set("lambda-runtime-aws-request-id", &work.id);
    set("lambda-runtime-deadline-ms", &work.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &work.function_arn);
    set("lambda-runtime-trace-id", &work.trace_id);
    if let Some(cc) = &work.client_context {
        set("lambda-runtime-client-context", cc);
    }
    (StatusCode::OK, headers, work.payload).into_response()
}

async fn read(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, MAX_RESPONSE).await.map_err(|_| {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("the payload is larger than {MAX_RESPONSE} bytes"),
        )
    })
}

fn unknown(id: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("invocation {id} is not the one this instance is running"),
    )
}

async fn response(State(channel): State<Arc<Channel>>, Path(id): Path<String>, body: Body) -> Response {
    let body = match read(body).await {
        Ok(b) => b,
        Err(too_large) => {
            // The invocation fails as Lambda's does: the answer was too big.
            if channel.settle(&id) {
                let message = format!("the function's response is larger than {MAX_RESPONSE} bytes");
                let _ = channel.reports.send(Report::Error {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    body: error_body("Function.ResponseSizeTooLarge", &message),
                });
            }
            return too_large;
        }
    };
    if !channel.settle(&id) {
        return unknown(&id);
    }
    let _ = channel.reports.send(Report::Response(body));
    accepted()
}

async fn error(
    State(channel): State<Arc<Channel>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = read(body).await.unwrap_or_else(|_| Bytes::new());
    if !channel.settle(&id) {
        return unknown(&id);
    }
    let (error_type, body) = runtime_error(&headers, body);
    let _ = channel.reports.send(Report::Error { error_type, body });
    accepted()
}

async fn init_error(State(channel): State<Arc<Channel>>, headers: HeaderMap, body: Body) -> Response {
    let body = read(body).await.unwrap_or_else(|_| Bytes::new());
    let (error_type, body) = runtime_error(&headers, body);
    let _ = channel.reports.send(Report::InitError { error_type, body });
    accepted()
}

async fn publish(
    State(channel): State<Arc<Channel>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(hook) = &channel.publish else {
        return problem(
            StatusCode::NOT_FOUND,
            "UnknownEndpoint",
            "publishing is not available here",
        );
    };
    if lock(&channel.current).is_none() {
        return problem(
            StatusCode::CONFLICT,
            "NoInvocation",
            "events can be published only while an invocation runs; they commit when it succeeds",
        );
    }
    let body = match read(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match hook(&topic, &headers, &body) {
        Ok(events) => {
            let n = events.len();
            lock(&channel.outbox).extend(events.into_iter().map(|e| (topic.clone(), e)));
            (
                StatusCode::ACCEPTED,
                [("content-type", "application/json")],
                serde_json::json!({ "accepted": n, "committed": "when the invocation succeeds" }).to_string(),
            )
                .into_response()
        }
        Err(PublishRefused { status, body }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
    }
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [("content-type", "application/json")],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}

/// The error type a runtime reported (the body's `errorType`, else the
/// header), and the body as the caller will see it: the runtime's own
/// JSON when it sent JSON, else the text wrapped as an error document.
fn runtime_error(headers: &HeaderMap, body: Bytes) -> (String, Bytes) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    // The document's own type first: runtimes send a generic header (Rust's
    // `lambda_runtime` says "unhandled") next to the specific type.
    let error_type = parsed
        .as_ref()
        .and_then(|v| v.get("errorType"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "Unhandled".into());
    match parsed {
        Some(v) if v.is_object() => (error_type, body),
        _ => {
            let message = String::from_utf8_lossy(&body).trim().to_string();
            let body = error_body(&error_type, &message);
            (error_type, body)
        }
    }
}

/// A Lambda error document.
pub(crate) fn error_body(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "errorMessage": message, "errorType": error_type }).to_string())
}
