//! Process functions: the glue between an invocation and the process
//! runtime (`gale-process`), Lambda's way. The payload shapes are in
//! [`super::payloads`]; the Invoke API that AWS clients call is in the
//! ingress plane.

use super::http::Publishes;
use super::live::{Live, Loaded, Refused};
use super::logs::Started;
use super::payloads::{aws_error, http_event, http_response};
use crate::NodeError;
use crate::clock::now_ms;
use crate::http::{Body, error, full};
use crate::publisher::Publisher;
use bytes::Bytes;
use gale_core::api::Outcome;
use gale_process::{Completion, FunctionError, Invocation, Pool};
use gale_store::KeyValue;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The (uid, gid) a function's instances run as: its own unprivileged user
/// when the node runs as root (so functions cannot read each other's
/// files), the node's user otherwise. Numbers are handed out once per
/// function from a counter in the node's key-value store.
pub async fn user(kv: &dyn KeyValue, function: &str) -> Result<Option<(u32, u32)>, NodeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    const BASE: u64 = 200_000;
    let n = match kv.kv_get("_gale", "uids", function).await? {
        Some(v) => String::from_utf8_lossy(&v).parse::<u64>().ok(),
        None => None,
    };
    let n = match n {
        Some(n) => n,
        None => {
            let n = kv.kv_increment("_gale", "uids", "_next", 1).await?;
            kv.kv_set("_gale", "uids", function, n.to_string().into_bytes())
                .await?;
            n
        }
    };
    let id = (BASE + n) as u32;
    Ok(Some((id, id)))
}

/// What an instance's `POST $GALE_API/_gale/topics/{topic}/events` goes
/// through: the same parsing and limits as the gateway's publish.
pub fn publish_hook(publisher: Publisher) -> gale_process::Publish {
    Arc::new(move |topic: &str, headers: &HeaderMap, body: &[u8]| {
        let refused = |e: gale_core::Error| gale_process::PublishRefused {
            status: e.code.http_status(),
            body: json!({ "error": e }).to_string(),
        };
        if !publisher.exists(topic) {
            return Err(refused(
                gale_core::Error::new(
                    gale_core::Code::TopicNotFound,
                    format!("no topic named `{topic}`"),
                )
                .with_hint("declare it in the manifest's [topics] or create it with `gale topics create`"),
            ));
        }
        crate::events::parse_for_store(headers, body).map_err(refused)
    })
}

/// Runs one invocation of a process function and files its log record.
#[allow(clippy::too_many_arguments)]
pub async fn invoke(
    live: &Live,
    pool: &Arc<Pool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    payload: Bytes,
    id: &str,
    timeout: Duration,
    client_context: Option<String>,
    events: Vec<String>,
) -> Completion {
    let at = now_ms();
    let invocation = Invocation {
        request_id: id.to_string(),
        payload,
        timeout,
        client_context,
    };
    let c = pool.invoke(invocation, permit).await;
    if c.cold_start {
        live.counters
            .cold_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let status = match (&c.result, c.outcome) {
        // An API Gateway answer names its status.
        (Ok(answer), _) => serde_json::from_slice::<Value>(answer)
            .ok()
            .and_then(|v| v.get("statusCode").and_then(|s| s.as_u64()))
            .filter(|s| (100..600).contains(s))
            .map_or(200, |s| s as u16),
        (_, Outcome::Timeout) => 504,
        _ => 500,
    };
    let started = Started {
        request_id: id.to_string(),
        at,
        cold_start: c.cold_start,
        events,
    };
    let record = gale_wasm::Completion {
        outcome: c.outcome,
        status: Some(status),
        error: c
            .result
            .as_ref()
            .err()
            .map(|e| format!("{}: {}", e.error_type, e.message())),
        stdout: c.log.clone(),
        stderr: String::new(),
        duration: c.duration,
        outbox: Vec::new(),
    };
    live.runtimes.logs.finished(live, started, record, status);
    c
}

/// An HTTP request to a process function, through the API Gateway v2 shapes.
pub async fn serve_http<B>(
    live: Arc<Live>,
    pool: Arc<Pool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    req: Request<B>,
    id: &str,
    timeout: Duration,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<gale_wasm::BodyError>,
{
    let (parts, body) = req.into_parts();
    let max = live.spec.max_body.0 as usize;
    let body = body.map_err(|e| -> gale_wasm::BodyError { e.into() });
    let body = match http_body_util::Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the request body is larger than the function's max_body of {max} bytes"),
            );
        }
    };
    let event = http_event(&parts, &body, id);
    let c = invoke(&live, &pool, permit, event, id, timeout, None, Vec::new()).await;
    match c.result {
        Ok(answer) => {
            if let Err(e) = live.runtimes.publisher.publish_all(c.outbox).await {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "publish_failed",
                    &format!(
                        "function `{}` ran, but the events it published could not be stored: {e}",
                        live.name
                    ),
                );
            }
            http_response(&answer)
        }
        Err(e) if e.error_type == "Sandbox.Timedout" => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!(
                "function `{}` did not answer within its timeout of {}",
                live.name,
                humantime::format_duration(timeout)
            ),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            &format!(
                "function `{}` failed with {} (request {id}); `gale logs {}` shows why",
                live.name, e.error_type, live.name
            ),
        ),
    }
}

/// `POST /_gale/functions/{name}/invocations` (and the admin API's invoke)
/// on a process function: the body is the payload; the answer is the
/// function's, or its error document with status 500 (504 for a timeout)
/// and `x-amz-function-error`.
pub async fn invoke_payload(live: Arc<Live>, payload: Bytes, id: &str) -> Response<Body> {
    match sync_invoke(live, payload, id, None).await {
        Err(r) => r,
        Ok((Ok(body), _)) => {
            let mut r = Response::new(full(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok((Err(e), _)) => {
            let status = if e.error_type == "Sandbox.Timedout" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut r = Response::new(full(e.body));
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
            r
        }
    }
}

/// A synchronous invoke of any function: the answer (or function error)
/// and the invocation's log.
pub async fn sync_invoke(
    live: Arc<Live>,
    payload: Bytes,
    id: &str,
    client_context: Option<String>,
) -> Result<(Result<Bytes, FunctionError>, String), Response<Body>> {
    let permit = match live.admit().await {
        Ok(p) => p,
        Err(Refused::Busy) => {
            let mut r = aws_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                &format!(
                    "Rate Exceeded: function `{}` is at max_instances = {}",
                    live.name, live.spec.max_instances
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(r);
        }
    };
    let timeout = live.spec.timeout.0;
    match live.prepared().await {
        Err(e) => Err(aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            &e.to_string(),
        )),
        Ok((Loaded::Process(pool), _)) => {
            let c = invoke(
                &live,
                &pool,
                permit,
                payload,
                id,
                timeout,
                client_context,
                Vec::new(),
            )
            .await;
            if c.result.is_ok()
                && let Err(e) = live.runtimes.publisher.publish_all(c.outbox).await
            {
                return Ok((
                    Err(FunctionError::new("Gale.PublishFailed", &e.to_string())),
                    c.log,
                ));
            }
            Ok((c.result, c.log))
        }
        Ok((Loaded::Wasm(prepared), _)) if prepared.world() == gale_wasm::World::Events => {
            drop(permit);
            Err(aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!(
                    "function `{}` is an event handler: publish to its topic instead",
                    live.name
                ),
            ))
        }
        Ok((Loaded::Wasm(_), _)) => {
            // A wasi:http function gets the payload as `POST /`.
            let request = Request::post("/")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, payload.len())
                .body(http_body_util::Full::new(payload))
                .expect("a valid request");
            let response =
                super::http::run(live, permit, request, id, timeout, Vec::new(), Publishes::Commit).await;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let result = if status.is_server_error() {
                Err(FunctionError::new(
                    "Unhandled",
                    &format!(
                        "the function answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                ))
            } else {
                Ok(body)
            };
            Ok((result, String::new()))
        }
    }
}
