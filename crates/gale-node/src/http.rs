//! What every HTTP-facing part of the node shares: the response body type,
//! JSON error answers in the one shape Gale uses (`{"error": {"code",
//! "message", "hint"}}`), and request ids.
//!
//! Handlers never fail: every problem becomes an answer naming a stable
//! code, and every answer of the gateway carries `x-gale-request-id`, the
//! id under which the invocation log records what happened.

use crate::NodeError;
use axum::Json;
use axum::response::IntoResponse;
use bytes::Bytes;
use gale_core::error::ErrorBody;
use gale_core::{Code, Error};
use gale_wasm::BodyError;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub type Body = UnsyncBoxBody<Bytes, BodyError>;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-gale-request-id");

/// A whole body.
pub fn full(body: Bytes) -> Body {
    Full::new(body).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON error answer of the gateway (no hint: the message says it).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer of Gale's own APIs, with its stable code and hint.
pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let user = e.to_user();
        if user.code == Code::Internal || user.code == Code::Storage {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(user)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A new request (or invocation) id: a UUIDv7, so ids sort by time.
pub fn request_id() -> String {
    use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
    // Ids stay in order per thread. `Uuid::now_v7` orders them process-wide
    // through one mutex, which every request of every worker would take.
    thread_local! {
        static CONTEXT: ContextV7 = const { ContextV7::new() };
    }
    let now = uuid::Timestamp::now(ThreadLocalContext::new(&CONTEXT));
    uuid::Uuid::new_v7(now).simple().to_string()
}

pub fn with_request_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// An answer of Gale's own (small JSON documents), read whole.
pub async fn from_axum(response: axum::response::Response) -> Response<Body> {
    let (parts, body) = response.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(parts, full(body.to_bytes())),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

/// The client's address, as a request extension of requests to process
/// functions (their API Gateway event names it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);
