//! Invocations on request: `POST /_gale/functions/{name}/invocations` on
//! the gateway, and `GET /v1/invocations/{id}` on the admin API.
//!
//! `mode=sync` (the default) runs the function at once and answers with its
//! response. `mode=async` answers 202 with an invocation id as soon as the
//! request is durable (see `functions::invocations`).

use super::context::Ingress;
use crate::NodeError;
use crate::functions::invocations::{record, submit};
use crate::functions::invoke::invoke_payload;
use crate::http::{ApiError, ApiResult, Path, Query, request_id};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gale_core::api::InvocationRecord;
use gale_core::{Code, Error};
use http_body_util::BodyExt;
use serde::Deserialize;

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
    State(ingress): State<Ingress>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    ingress
        .tokens
        .require_admin(request.headers(), "invoking a function")?;
    let live = ingress
        .functions
        .get(&name)
        .ok_or_else(|| NodeError::function_not_found(&name))?;
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
            let id = request_id();
            Ok(invoke_payload(live, body, &id).await.map(axum::body::Body::new))
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
            let id = request_id();
            let response = crate::functions::http::invoke(live, request, &id).await;
            Ok(response.map(axum::body::Body::new))
        }
        "async" => {
            let record = submit(
                &ingress.functions,
                &live,
                parts.method.as_str(),
                &path,
                content_type,
                body,
            )
            .await?;
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

/// `GET /v1/invocations/{id}`.
pub async fn show(
    State(ingress): State<Ingress>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<InvocationRecord>> {
    let kv = &*ingress.functions.runtimes().kv;
    match record(kv, &id).await? {
        Some(r) => Ok(axum::Json(r)),
        None => Err(
            Error::new(Code::InvocationNotFound, format!("no invocation {id:?}"))
                .with_hint("use the invocation_id an async invocation answered with")
                .into(),
        ),
    }
}
