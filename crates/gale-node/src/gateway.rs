//! The HTTP gateway: user routes to functions.
//!
//! Handlers never fail: every problem becomes an HTTP answer with a JSON
//! body naming a stable code, and every answer carries `x-gale-request-id`,
//! the id under which the invocation log records what happened.

use crate::State;
use crate::routes::Lookup;
use crate::scheduler::{Live, Loaded, Refused};
use bytes::Bytes;
use gale_core::api::Outcome;
use gale_wasm::{AbortOnDrop, BodyError, Failure, HyperOutgoingBody};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = UnsyncBoxBody<Bytes, BodyError>;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-gale-request-id");
/// The route pattern that matched, for the guest.
const ROUTE: HeaderName = HeaderName::from_static("x-gale-route");

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown`, then lets open connections finish their
/// requests (graceful shutdown) for up to 10 s.
pub async fn serve(state: Arc<State>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    // Every connection task holds a clone; the count tells when all are done.
    let open = Arc::new(());
    let gale = crate::events::gateway_router(state.clone());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let gale = gale.clone();
        let mut shutdown = shutdown.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let gale = gale.clone();
                async move {
                    let path = req.uri().path();
                    Ok::<_, std::convert::Infallible>(if path.starts_with("/_gale/") {
                        match crate::events::publish_topic(path)
                            .filter(|_| req.method() == http::Method::POST)
                        {
                            Some(topic) => {
                                let id = request_id();
                                let response = crate::events::publish_on_gateway(&state, &topic, req).await;
                                with_request_id(from_axum(response).await, &id)
                            }
                            None => own_endpoint(gale, req).await,
                        }
                    } else if path.starts_with("/2015-03-31/") {
                        let id = request_id();
                        with_request_id(crate::lambda::invoke_api(state, req, &id).await, &id)
                    } else {
                        handle(state, req, Peer(peer)).await
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_header_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&open) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The client's address, as a request extension of requests to process
/// functions (their API Gateway event names it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Gale's own endpoints under `/_gale/`, answered by an axum router.
async fn own_endpoint(router: axum::Router, req: Request<Incoming>) -> Response<Body> {
    use tower::ServiceExt;
    let id = request_id();
    let response = match router.oneshot(req.map(axum::body::Body::new)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    with_request_id(from_axum(response).await, &id)
}

/// An answer of Gale's own (small JSON documents), read whole.
async fn from_axum(response: axum::response::Response) -> Response<Body> {
    let (parts, body) = response.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(
            parts,
            Full::new(body.to_bytes())
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

fn with_request_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// A new request (or invocation) id: a UUIDv7, so ids sort by time.
pub(crate) fn request_id() -> String {
    use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
    // Ids stay in order per thread. `Uuid::now_v7` orders them process-wide
    // through one mutex, which every request of every worker would take.
    thread_local! {
        static CONTEXT: ContextV7 = const { ContextV7::new() };
    }
    let now = uuid::Timestamp::now(ThreadLocalContext::new(&CONTEXT));
    uuid::Uuid::new_v7(now).simple().to_string()
}

async fn handle(state: Arc<State>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let id = request_id();
    let routes = state.routes();
    let response = match routes.lookup(req.method(), req.uri().path()) {
        Lookup::Found {
            live,
            pattern,
            params,
        } => {
            let mut req = req;
            let headers = req.headers_mut();
            // Only Gale sets x-gale-* headers; a client must not forge them.
            let forged: Vec<_> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("x-gale-"))
                .cloned()
                .collect();
            for name in forged {
                headers.remove(name);
            }
            if let Some(v) = pattern {
                headers.insert(ROUTE, v.clone());
            }
            for (name, value) in params {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(format!("x-gale-param-{name}").as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
            if live.spec.runtime == gale_core::manifest::RuntimeKind::Process {
                req.extensions_mut().insert(peer);
            }
            invoke(&state, live, req, &id).await
        }
        Lookup::NotFound => error(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no route matches this path",
        ),
        Lookup::MethodNotAllowed(allow) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("this path accepts {allow}"),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
    };
    with_request_id(response, &id)
}

/// Runs one request through `live`: admission, then [`run`]. Shared by the
/// gateway and the admin API.
pub async fn invoke<B>(state: &Arc<State>, live: Arc<Live>, req: Request<B>, id: &str) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let max_body = live.spec.max_body.0;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return too_large(max_body);
    }
    let permit = match live.admit().await {
        Ok(p) => p,
        Err(Refused::Busy) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                &format!(
                    "function `{}` is at max_instances = {} and its queue is full",
                    live.name, live.spec.max_instances
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let timeout = live.spec.timeout.0;
    run(state, live, permit, req, id, timeout, Vec::new()).await
}

/// Runs one admitted request (`permit` is its instance slot) for at most
/// `timeout`: cold start if needed, the guest, and the invocation log, which
/// names `events` when the request carries events.
pub async fn run<B>(
    state: &Arc<State>,
    live: Arc<Live>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut req: Request<B>,
    id: &str,
    timeout: Duration,
    events: Vec<String>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let max_body = live.spec.max_body.0;
    let started_at = crate::registry::now_ms();
    let (prepared, cold) = match live.prepared(state).await {
        Ok((Loaded::Wasm(p), cold)) => (p, cold),
        Ok((Loaded::Process(pool), _)) => {
            return crate::lambda::serve_http(state, live, pool, permit, req, id, timeout).await;
        }
        Err(e) => {
            tracing::error!(function = %live.name, error = %e, "loading function failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "load_failed", &e.to_string());
        }
    };
    if req.headers().get(header::HOST).is_none() {
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| Limited {
        inner,
        remaining: max_body,
        exceeded: exceeded.clone(),
    });

    let outbox = Arc::new(std::sync::Mutex::new(Outbox::Open));
    let done = {
        let state = state.clone();
        let live = live.clone();
        let id = id.to_string();
        let exceeded = exceeded.clone();
        let outbox = outbox.clone();
        move |mut c: gale_wasm::Completion| {
            drop(permit);
            let status = match (c.status, c.outcome) {
                (Some(s), _) => s,
                _ if exceeded.load(Relaxed) => 413,
                (None, Outcome::Timeout) => 504,
                (None, Outcome::Cancelled) => 499,
                (None, _) => 500,
            };
            // What the invocation published counts only if it succeeded.
            let published = std::mem::take(&mut c.outbox);
            if !published.is_empty() && c.outcome == Outcome::Ok && status < 500 {
                let mut slot = outbox.lock().unwrap_or_else(|p| p.into_inner());
                match &*slot {
                    Outbox::Open => *slot = Outbox::Filled(published),
                    // The answer has left: commit on our own.
                    _ => {
                        let (state, live) = (state.clone(), live.clone());
                        tokio::spawn(async move {
                            if let Err(e) = state.commit_outbox(&live, published).await {
                                tracing::error!(function = %live.name, error = %e, "events published by an invocation were lost");
                            }
                        });
                    }
                }
            }
            let started = crate::Started {
                request_id: id,
                at: started_at,
                cold_start: cold,
                events,
            };
            state.finished(&live, started, c, status);
        }
    };
    let head = req.method() == http::Method::HEAD;
    let served = gale_wasm::serve(prepared, req, timeout, done).await;
    // A guest that published before answering has ended by now: its events
    // are committed before its answer leaves.
    let pending = std::mem::replace(
        &mut *outbox.lock().unwrap_or_else(|p| p.into_inner()),
        Outbox::Closed,
    );
    if let Outbox::Filled(published) = pending
        && let Err(e) = state.commit_outbox(&live, published).await
    {
        tracing::error!(function = %live.name, error = %e, "committing published events failed");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "publish_failed",
            &format!(
                "function `{}` ran, but the events it published could not be stored: {e}",
                live.name
            ),
        );
    }
    match served {
        // The guest got a truncated body; whatever it answered, the answer is 413.
        _ if exceeded.load(Relaxed) => too_large(max_body),
        Ok(mut answer) => {
            // hyper never reads these bodies: do not take that as the client leaving.
            let status = answer.response.status();
            if head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                answer.guard.disarm();
            }
            answer.response.map(|inner| {
                Guarded {
                    inner,
                    guard: Some(answer.guard),
                }
                .boxed_unsync()
            })
        }
        Err(Failure::Overloaded) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_busy",
                "every instance slot of this node is in use; try again shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(Failure::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!(
                "function `{}` did not answer within its timeout of {}",
                live.name,
                humantime::format_duration(timeout)
            ),
        ),
        Err(Failure::Body(message)) => error(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            &format!("the request body could not be read: {message}"),
        ),
        Err(Failure::Guest(message)) => {
            tracing::debug!(function = %live.name, request_id = id, %message, "invocation failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "function_failed",
                &format!(
                    "function `{}` failed (request {id}); `gale logs {}` shows why",
                    live.name, live.name
                ),
            )
        }
    }
}

fn too_large(max: u64) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body is larger than the function's max_body of {max} bytes"),
    )
}

/// What an HTTP invocation published, between the guest's end and the answer.
enum Outbox {
    /// The answer has not left yet.
    Open,
    /// The guest ended with these events before the answer left.
    Filled(Vec<(String, gale_wasm::events::GuestEvent)>),
    /// The answer has left.
    Closed,
}

/// A JSON error answer of the gateway.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A request body that stops at the function's `max_body`.
struct Limited<B> {
    inner: B,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.exceeded.store(true, Relaxed);
                        return Poll::Ready(Some(Err(BodyError::HttpRequestBodySize(None))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that cancels the guest if dropped before its end (the
/// client went away), and lets it finish on its own once fully sent.
struct Guarded {
    inner: HyperOutgoingBody,
    guard: Option<AbortOnDrop>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The end of the body, or its trailers (hyper may stop polling after
        // them): the response is complete, the guest may wind down.
        let complete = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            _ => false,
        };
        if complete && let Some(mut guard) = self.guard.take() {
            guard.disarm();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
