//! An HTTP request through a function: admission, cold start, the run
//! (a wasm component over `wasi:http` or served whole, or a process
//! function through API Gateway's shapes), the invocation log, and what
//! the run published.
//!
//! Shared by the gateway, the admin API's invoke, the Invoke API and the
//! dispatcher (which delivers events to `wasi:http` components as
//! requests).

use super::answers::{publish_failed, timed_out, too_large};
use super::live::{Live, Loaded, Refused};
use super::logs::Started;
use crate::clock::now_ms;
use crate::http::{Body, REQUEST_ID, error};
use crate::publisher::Outbox;
use bytes::Bytes;
use gale_core::api::Outcome;
use gale_wasm::events::GuestEvent;
use gale_wasm::{AbortOnDrop, BodyError, Failure, HyperOutgoingBody};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// What becomes of the events a run publishes.
pub enum Publishes {
    /// Stored if the run ends with a status below 500: before the answer
    /// leaves if the guest ended before answering, else right after. Events
    /// without an id are named after the request.
    Commit,
    /// Sent here when the guest ends (nothing if it failed), for the
    /// caller (a delivery), which stores them with its ack only if the run
    /// handled the event.
    Keep(tokio::sync::oneshot::Sender<Vec<(String, GuestEvent)>>),
}

/// Runs one request through `live`: admission, then [`run`]. Shared by the
/// gateway and the admin API.
pub async fn invoke<B>(live: Arc<Live>, req: Request<B>, id: &str) -> Response<Body>
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
    run(live, permit, req, id, timeout, Vec::new(), Publishes::Commit).await
}

/// Why an event handler takes no request, and what to do instead.
pub fn event_handler_refusal(function: &str) -> String {
    format!(
        "function `{function}` is an event handler: it takes events, not requests; \
         publish to one of its topics, or invoke it asynchronously \
         (`POST /_gale/functions/{function}/invocations?mode=async`)"
    )
}

/// Runs one admitted request (`permit` is its instance slot) for at most
/// `timeout`: cold start if needed, the guest, and the invocation log, which
/// names `events` when the request carries events.
pub async fn run<B>(
    live: Arc<Live>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut req: Request<B>,
    id: &str,
    timeout: Duration,
    events: Vec<String>,
    publishes: Publishes,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let max_body = live.spec.max_body.0;
    let started_at = now_ms();
    let (prepared, cold) = match live.prepared().await {
        Ok((Loaded::Wasm(p), _)) if p.world() == gale_wasm::World::Events => {
            return error(
                StatusCode::BAD_REQUEST,
                "not_http_function",
                &event_handler_refusal(&live.name),
            );
        }
        Ok((Loaded::Wasm(p), cold)) => (p, cold),
        Ok((Loaded::Process(pool), _)) => {
            return super::process::serve_http(live, pool, permit, req, id, timeout).await;
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

    let outbox = Arc::new(Mutex::new(Pending::Open));
    let keep = match publishes {
        Publishes::Keep(tx) => Some(tx),
        Publishes::Commit => None,
    };
    let done = {
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
            if let Some(keep) = keep {
                let ok = c.outcome == Outcome::Ok;
                let _ = keep.send(if ok { published } else { Vec::new() });
            } else if !published.is_empty() && c.outcome == Outcome::Ok && status < 500 {
                let mut slot = crate::lock(&outbox);
                match &*slot {
                    Pending::Open => *slot = Pending::Filled(published),
                    // The answer has left: commit on our own.
                    _ => {
                        let (live, id) = (live.clone(), id.clone());
                        tokio::spawn(async move {
                            if let Err(e) = commit(&live, &id, published).await {
                                tracing::error!(function = %live.name, error = %e, "events published by an invocation were lost");
                            }
                        });
                    }
                }
            }
            let started = Started {
                request_id: id,
                at: started_at,
                cold_start: cold,
                events,
            };
            live.finished(started, c, status);
        }
    };
    let head = req.method() == http::Method::HEAD;
    let served = gale_wasm::serve(prepared, req, timeout, done).await;
    // A guest that published before answering has ended by now: its events
    // are committed before its answer leaves.
    let pending = std::mem::replace(&mut *crate::lock(&outbox), Pending::Closed);
    if let Pending::Filled(published) = pending
        && let Err(e) = commit(&live, id, published).await
    {
        return publish_failed(&live.name, &e);
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
        Err(Failure::Timeout) => timed_out(&live.name, timeout),
        Err(Failure::CpuLimit(limit)) => super::answers::cpu_limit(&live.name, limit),
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

/// Stores what the request `id` published, named after it.
async fn commit(live: &Live, id: &str, events: Vec<(String, GuestEvent)>) -> Result<(), crate::NodeError> {
    live.runtimes
        .publisher
        .commit(Outbox {
            function: &live.name,
            origin: id,
            events,
        })
        .await
}

/// What an HTTP invocation published, between the guest's end and the answer.
enum Pending {
    /// The answer has not left yet.
    Open,
    /// The guest ended with these events before the answer left.
    Filled(Vec<(String, gale_wasm::events::GuestEvent)>),
    /// The answer has left.
    Closed,
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
