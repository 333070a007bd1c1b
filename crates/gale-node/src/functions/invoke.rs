//! A synchronous invocation with a payload, whatever the function's
//! runtime (Lambda's Invoke API, `gale invoke`): a process function takes
//! the payload as its event, a `wasi:http` function as the body of
//! `POST /`, and an event handler is refused (it takes events from topics).

use super::http::{Publishes, event_handler_refusal, run};
use super::live::{Live, Loaded, Refused};
use super::payloads::aws_error;
use super::process::invoke;
use crate::http::{Body, full};
use bytes::Bytes;
use gale_process::FunctionError;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use std::sync::Arc;

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
                &event_handler_refusal(&live.name),
            ))
        }
        Ok((Loaded::Wasm(_), _)) => {
            // A wasi:http function gets the payload as `POST /`.
            let request = Request::post("/")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, payload.len())
                .body(http_body_util::Full::new(payload))
                .expect("a valid request");
            let response = run(live, permit, request, id, timeout, Vec::new(), Publishes::Commit).await;
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
