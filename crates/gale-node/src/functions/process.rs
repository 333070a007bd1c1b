//! Process functions: the glue between an invocation and the process
//! runtime (`gale-process`), Lambda's way. The payload shapes are in
//! [`super::payloads`]; the Invoke API that AWS clients call is in the
//! ingress plane; what a process function's instances run as and publish
//! through is set where it is loaded ([`super::live`]).

use super::answers::{cpu_limit, publish_failed, timed_out, too_large};
use super::live::Live;
use super::logs::Started;
use super::payloads::{http_event, http_response};
use crate::clock::now_ms;
use crate::http::{Body, error};
use bytes::Bytes;
use gale_core::api::Outcome;
use gale_process::{Completion, Invocation, Pool};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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
        cpu: live.spec.cpu.map(|c| c.0),
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
        cpu: gale_wasm::CpuUse {
            cpu: c.cpu,
            waited: c.waited,
        },
        outbox: Vec::new(),
    };
    live.finished(started, record, status);
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
        Err(_) => return too_large(max as u64),
    };
    let event = http_event(&parts, &body, id);
    let c = invoke(&live, &pool, permit, event, id, timeout, None, Vec::new()).await;
    match c.result {
        Ok(answer) => {
            if let Err(e) = live.runtimes.publisher.publish_all(c.outbox).await {
                return publish_failed(&live.name, &e);
            }
            http_response(&answer)
        }
        Err(e) if e.error_type == "Sandbox.Timedout" => timed_out(&live.name, timeout),
        Err(e) if e.error_type == gale_process::CPU_LIMIT => {
            cpu_limit(&live.name, live.spec.cpu.map_or(Duration::ZERO, |c| c.0))
        }
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
