//! The admin API: REST + JSON under `/v1/`, bearer-token protected,
//! described by the OpenAPI document at `/v1/openapi.json`.
//!
//! The CLI is a thin client of this API; anything the CLI does, a script can
//! do with curl. So the document is a promise, and the answers keep it:
//! every error, down to a body that is not JSON, a wrong content type, an
//! unknown endpoint or method, is `{"error": {"code", "message", "hint"}}`
//! with a stable code (the extractors of `crate::http`, the fallbacks
//! below, and `json_errors` around it all). `tests/admin_api.rs` runs a
//! property-based client of the document against a live node.

use super::Control;
use crate::NodeError;
use crate::auth::{Grant, Tokens};
use crate::http::{ApiError, ApiResult, Json, Path, Query, REQUEST_ID, WholeBody, json_errors, request_id};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State as Ext};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use gale_core::TopicSpec;
use gale_core::api::{
    CreateTokenRequest, CreatedToken, DeployRequest, FunctionInfo, InvocationLog, InvokeRequest,
    InvokeResponse, RollbackRequest, StoredEventInfo, TokenInfo, TopicInfo, VersionInfo,
};
use gale_core::{Code, Error};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The OpenAPI document, kept beside the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest artifact accepted.
const MAX_ARTIFACT: usize = 256 << 20;
/// Largest body of every other endpoint (a deploy's manifest is the largest
/// JSON body; publishing reads at most `events::MAX_PUBLISH` itself).
const MAX_BODY: usize = 8 << 20;
/// Most records or events one page of logs or events holds; a larger
/// `limit` is taken as this.
const MAX_PAGE: usize = 1000;

/// The admin API: control's own endpoints and `planes` (the other planes'
/// admin endpoints), all behind the admin token.
pub fn router(control: Control, planes: Vec<Router>) -> Router {
    let tokens = control.tokens.clone();
    let mut protected = Router::new()
        .route(
            "/v1/artifacts/{digest}",
            put(put_artifact)
                .layer(DefaultBodyLimit::max(MAX_ARTIFACT))
                .get(artifact_exists),
        )
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{name}", get(describe).delete(remove))
        .route("/v1/functions/{name}/versions", get(versions))
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v1/functions/{name}/logs", get(logs))
        .route("/v1/topics", get(list_topics))
        .route("/v1/topics/{name}", put(put_topic).delete(delete_topic))
        .route("/v1/topics/{name}/events", get(read_events))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", axum::routing::delete(delete_token))
        .with_state(control.clone());
    protected = protected.merge(super::buckets_api::routes(control.clone()));
    for plane in planes {
        protected = protected.merge(plane);
    }
    // Set after the planes are merged: it applies to the routes there are.
    let protected = protected
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(tokens, authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/health", get(health))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(protected)
        .fallback(no_such_endpoint)
        .layer(middleware::from_fn(json_errors))
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError(
        Error::new(
            Code::EndpointNotFound,
            format!("no admin endpoint {method} {}", uri.path()),
        )
        .with_hint("the endpoints are listed in /v1/openapi.json"),
    )
}

/// A known path asked with a method it does not take; axum adds `Allow`.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        Error::new(
            Code::MethodNotAllowed,
            format!("{} does not take {method}", uri.path()),
        )
        .with_hint("the answer's Allow header lists the methods it takes"),
    )
}

pub async fn run(app: Router, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn authorize(Ext(tokens): Ext<Tokens>, headers: HeaderMap, request: Request, next: Next) -> Response {
    match tokens.grant(&headers) {
        Some(Grant::Admin) => next.run(request).await,
        _ => ApiError(
            Error::new(Code::Unauthorized, "missing or wrong bearer token").with_hint(
                "send `Authorization: Bearer <token>`; the token is in the node's data directory (token file) \
                 or in GALE_TOKEN",
            ),
        )
        .into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn put_artifact(
    Ext(c): Ext<Control>,
    Path(digest): Path<String>,
    WholeBody(body): WholeBody,
) -> ApiResult<StatusCode> {
    if body.is_empty() {
        return Err(Error::new(Code::ArtifactInvalid, "the body is empty")
            .with_hint("an artifact is a component or a process function's package: send its bytes")
            .into());
    }
    c.artifacts
        .put(&digest, body.to_vec())
        .await
        .map_err(NodeError::from)?;
    Ok(StatusCode::CREATED)
}

async fn deploy(
    Ext(c): Ext<Control>,
    Path(app): Path<String>,
    Json(request): Json<DeployRequest>,
) -> ApiResult<Json<gale_core::api::DeployResponse>> {
    if request.manifest.app.name != app {
        return Err(Error::new(
            Code::BadRequest,
            format!(
                "the path names app `{app}` but the manifest names `{}`",
                request.manifest.app.name
            ),
        )
        .into());
    }
    Ok(Json(c.deploy(request).await?))
}

fn info(live: &crate::functions::live::Live, versions: u64, updated_at: u64) -> FunctionInfo {
    FunctionInfo {
        name: live.name.clone(),
        app: live.app.clone(),
        version: live.version,
        versions,
        artifact: live.artifact.clone(),
        routes: live.spec.routes().iter().map(|r| r.to_string()).collect(),
        spec: (*live.spec).clone(),
        stats: live.stats(),
        updated_at,
    }
}

async fn function_info(c: &Control, name: &str) -> ApiResult<FunctionInfo> {
    let live = c
        .functions
        .get(name)
        .ok_or_else(|| NodeError::function_not_found(name))?;
    let registry = c.functions.registry();
    let record = registry
        .read::<crate::registry::FunctionRecord>(&crate::registry::function_key(name))
        .await?;
    let version = registry.version(name, live.version).await?;
    Ok(info(
        &live,
        record.map(|(r, _)| r.latest).unwrap_or(live.version),
        version.map(|v| v.created_at).unwrap_or(0),
    ))
}

async fn list_functions(Ext(c): Ext<Control>) -> ApiResult<Json<Vec<FunctionInfo>>> {
    let mut names: Vec<String> = c.functions.snapshot().keys().cloned().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Ok(i) = function_info(&c, &name).await {
            out.push(i);
        }
    }
    Ok(Json(out))
}

async fn describe(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(function_info(&c, &name).await?))
}

async fn remove(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    c.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<Json<Vec<VersionInfo>>> {
    let live = c
        .functions
        .get(&name)
        .ok_or_else(|| NodeError::function_not_found(&name))?;
    let versions = c.functions.registry().versions(&name).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|v| VersionInfo {
                current: v.version == live.version,
                routes: v.spec.routes().iter().map(|r| r.to_string()).collect(),
                function: v.function,
                version: v.version,
                artifact: v.artifact,
                created_at: v.created_at,
            })
            .collect(),
    ))
}

async fn rollback(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<Json<FunctionInfo>> {
    c.rollback(&name, req.version).await?;
    Ok(Json(function_info(&c, &name).await?))
}

/// Sends a request to the function as the gateway would, bypassing routes,
/// so functions without an HTTP route can be tried too.
async fn invoke(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    Json(req): Json<InvokeRequest>,
) -> ApiResult<Json<InvokeResponse>> {
    let method = req
        .method
        .as_deref()
        .unwrap_or(if req.body.is_empty() { "GET" } else { "POST" });
    let path = req.path.clone().unwrap_or_else(|| "/".into());
    if !valid_invoke_path(&path) {
        return Err(Error::new(Code::BadRequest, format!("path {path:?} is not a request path"))
            .with_hint(
                "start it with '/', and percent-encode what is not a letter, a digit or one of -._~!$&'()*+,;=:@/?%",
            )
            .into());
    }
    let mut builder = http::Request::builder()
        .method(method)
        .uri(&path)
        .header(header::HOST, "localhost");
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let body = Bytes::from(req.body);
    let request = builder
        .header(header::CONTENT_LENGTH, body.len())
        .body(http_body_util::Full::new(body))
        .map_err(|e| Error::new(Code::BadRequest, format!("cannot build the request: {e}")))?;
    let live = c
        .functions
        .get(&name)
        .ok_or_else(|| NodeError::function_not_found(&name))?;
    let id = request_id();
    // A process function takes the body as its payload, as `aws lambda invoke` does.
    let response = if live.spec.runtime == gale_core::manifest::RuntimeKind::Process {
        let payload = request.into_body().into_inner().unwrap_or_default();
        crate::functions::invoke::invoke_payload(live, payload, &id).await
    } else {
        crate::functions::http::invoke(live, request, &id).await
    };
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|e| Bytes::from(format!("[response body failed: {e}]")));
    Ok(Json(InvokeResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter(|(k, _)| **k != REQUEST_ID)
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        request_id: id,
    }))
}

/// Whether `path` is a path (and query) a request may have: starting with
/// '/', at most 8 KiB, of the characters RFC 3986 allows there unencoded.
/// The OpenAPI document gives the same rule as a pattern.
fn valid_invoke_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 8192
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    tail: bool,
}

async fn logs(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<InvocationLog>>> {
    if c.functions.get(&name).is_none() {
        return Err(NodeError::function_not_found(&name).into());
    }
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    Ok(Json(
        c.logs
            .query(&name, q.after, limit, q.tail)
            .await
            .map_err(NodeError::from)?,
    ))
}

async fn list_topics(Ext(c): Ext<Control>) -> ApiResult<Json<Vec<TopicInfo>>> {
    let mut topics = c.publisher.list().await?;
    let functions = c.functions.snapshot();
    for s in topics.iter_mut().flat_map(|t| t.subscriptions.iter_mut()) {
        // A function's subscriptions are named after it (`NAME`, `NAME#2`).
        let function = s.name.split('#').next().unwrap_or_default();
        if let Some(live) = functions.get(function).filter(|_| s.lag > 0) {
            s.limited_by = Some(live.limited_by());
        }
    }
    Ok(Json(topics))
}

async fn put_topic(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    body: Option<Json<TopicSpec>>,
) -> ApiResult<Json<TopicInfo>> {
    if !gale_core::manifest::valid_topic(&name) {
        return Err(
            Error::new(Code::BadRequest, format!("{name:?} is not a valid topic name"))
                .with_hint("use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit")
                .into(),
        );
    }
    let spec = body.map(|Json(s)| s).unwrap_or_default();
    spec.validate().map_err(|(key, message, hint)| {
        Error::new(Code::BadRequest, format!("`{key}`: {message}")).with_hint(hint)
    })?;
    c.publisher
        .put_topic(&name, super::deploy::topic_config(&spec))
        .await?;
    let topics = c.publisher.list().await?;
    let info = topics.into_iter().find(|t| t.name == name);
    info.map(Json)
        .ok_or_else(|| NodeError::from(gale_store::StoreError::UnknownTopic(name)).into())
}

async fn delete_topic(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let used_by: Vec<String> = c
        .functions
        .snapshot()
        .values()
        .filter(|l| l.spec.events.iter().any(|t| t.topic == name))
        .map(|l| l.name.clone())
        .collect();
    if !used_by.is_empty() {
        return Err(Error::new(
            Code::Conflict,
            format!("topic `{name}` has subscribers: {}", used_by.join(", ")),
        )
        .with_hint("remove their event triggers first")
        .into());
    }
    match c.publisher.delete_topic(&name).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(NodeError::from(gale_store::StoreError::UnknownTopic(name)).into()),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// Stored events of a topic as CloudEvents JSON, with their sequence numbers.
async fn read_events(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<Json<Vec<StoredEventInfo>>> {
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let events = c
        .topics
        .read(&name, q.after, limit)
        .await
        .map_err(NodeError::from)?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| StoredEventInfo {
                seq: e.seq,
                published_at: e.published_at,
                event: serde_json::from_slice(&e.body)
                    .unwrap_or_else(|err| serde_json::json!({ "unreadable": err.to_string() })),
            })
            .collect(),
    ))
}

async fn create_token(
    Ext(c): Ext<Control>,
    Json(req): Json<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    // A token for a topic that does not exist is a typo more often than a
    // plan: name it now rather than on the first refused publish.
    if let Some(missing) = req
        .publish
        .iter()
        .find(|t| gale_core::manifest::valid_topic(t) && !c.publisher.exists(t))
    {
        return Err(Error::new(Code::TopicNotFound, format!("topic `{missing}` does not exist"))
            .with_hint(format!(
                "create it first (`gale topics create {missing}`, or declare [topics.{missing}] in an app's manifest)"
            ))
            .into());
    }
    let (token, info) = c.tokens.create(req.publish).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

async fn list_tokens(Ext(c): Ext<Control>) -> Json<Vec<TokenInfo>> {
    Json(c.tokens.list())
}

async fn delete_token(Ext(c): Ext<Control>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match c.tokens.delete(&id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(
            Error::new(Code::TokenNotFound, format!("no token with id {id:?}"))
                .with_hint("`gale tokens ls` lists them")
                .into(),
        ),
    }
}

async fn artifact_exists(Ext(c): Ext<Control>, Path(digest): Path<String>) -> ApiResult<StatusCode> {
    match c.artifacts.contains(&digest).await.map_err(NodeError::from)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(
            Error::new(Code::ArtifactNotFound, format!("no artifact {digest}"))
                .with_hint("upload it with PUT /v1/artifacts/{digest}")
                .into(),
        ),
    }
}
