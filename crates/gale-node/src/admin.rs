//! The admin API: REST + JSON under `/v1/`, bearer-token protected,
//! described by the OpenAPI document at `/v1/openapi.json`.
//!
//! The CLI is a thin client of this API; anything the CLI does, a script can
//! do with curl.

use crate::deploy::not_found;
use crate::gateway::{self, REQUEST_ID};
use crate::tokens::Grant;
use crate::{NodeError, State};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as Ext};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use gale_core::TopicSpec;
use gale_core::api::{
    CreateTokenRequest, CreatedToken, DeployRequest, FunctionInfo, InvocationLog, InvokeRequest,
    InvokeResponse, RollbackRequest, StoredEventInfo, TokenInfo, TopicInfo, VersionInfo,
};
use gale_core::error::ErrorBody;
use gale_core::{Code, Error};
use gale_store::{Artifacts, InvocationLogs, Topics};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The OpenAPI document, kept beside the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest artifact accepted.
const MAX_ARTIFACT: usize = 256 << 20;

/// An error answer in the JSON shape every Gale endpoint uses.
pub(crate) struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let user = e.to_user();
        if user.code == Code::Internal || user.code == Code::Storage {
            tracing::error!(error = %e, "admin request failed");
        }
        ApiError(user)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<State>) -> Router {
    let protected = Router::new()
        .route("/v1/artifacts/{digest}", put(put_artifact).get(artifact_exists))
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{name}", get(describe).delete(remove))
        .route("/v1/functions/{name}/versions", get(versions))
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v1/functions/{name}/logs", get(logs))
        .route("/v1/topics", get(list_topics))
        .route("/v1/topics/{name}", put(put_topic).delete(delete_topic))
        .route(
            "/v1/topics/{name}/events",
            post(crate::events::publish).get(read_events),
        )
        .route("/v1/topics/{name}/redrive", post(redrive))
        .route("/v1/topics/{name}/replay", post(replay))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/invocations/{id}", get(crate::invocations::show))
        .route("/v1/tokens/{id}", axum::routing::delete(delete_token))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(MAX_ARTIFACT));
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/health", get(health))
        .merge(protected)
        .fallback(|| async {
            ApiError(Error::new(Code::BadRequest, "no such admin endpoint").with_hint("see /v1/openapi.json"))
        })
        .with_state(state)
}

pub async fn run(state: Arc<State>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let app = router(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

pub(crate) async fn authorize(
    Ext(state): Ext<Arc<State>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match state.grant(&headers) {
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

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn put_artifact(
    Ext(state): Ext<Arc<State>>,
    Path(digest): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    state
        .store
        .put(&digest, body.to_vec())
        .await
        .map_err(NodeError::from)?;
    Ok(StatusCode::CREATED)
}

async fn deploy(
    Ext(state): Ext<Arc<State>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<gale_core::api::DeployResponse>> {
    let request: DeployRequest = serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            Code::BadRequest,
            format!("the deploy request is not valid JSON of the right shape: {e}"),
        )
    })?;
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
    Ok(Json(state.deploy(request).await?))
}

fn info(state: &State, live: &crate::scheduler::Live, versions: u64, updated_at: u64) -> FunctionInfo {
    let _ = state;
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

async fn function_info(state: &State, name: &str) -> ApiResult<FunctionInfo> {
    let live = state.function(name).ok_or_else(|| not_found(name))?;
    let record = state
        .registry
        .read::<crate::registry::FunctionRecord>(&crate::registry::function_key(name))
        .await?;
    let version = state.registry.version(name, live.version).await?;
    Ok(info(
        state,
        &live,
        record.map(|(r, _)| r.latest).unwrap_or(live.version),
        version.map(|v| v.created_at).unwrap_or(0),
    ))
}

async fn list_functions(Ext(state): Ext<Arc<State>>) -> ApiResult<Json<Vec<FunctionInfo>>> {
    let mut names: Vec<String> = state
        .functions
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Ok(i) = function_info(&state, &name).await {
            out.push(i);
        }
    }
    Ok(Json(out))
}

async fn describe(Ext(state): Ext<Arc<State>>, Path(name): Path<String>) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(function_info(&state, &name).await?))
}

async fn remove(Ext(state): Ext<Arc<State>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<VersionInfo>>> {
    let live = state.function(&name).ok_or_else(|| not_found(&name))?;
    let versions = state.registry.versions(&name).await?;
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
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<Json<FunctionInfo>> {
    state.rollback(&name, req.version).await?;
    Ok(Json(function_info(&state, &name).await?))
}

/// Sends a request to the function as the gateway would, bypassing routes,
/// so functions without an HTTP route can be tried too.
async fn invoke(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Json(req): Json<InvokeRequest>,
) -> ApiResult<Json<InvokeResponse>> {
    let live = state.function(&name).ok_or_else(|| not_found(&name))?;
    let method = req
        .method
        .as_deref()
        .unwrap_or(if req.body.is_empty() { "GET" } else { "POST" });
    let path = req.path.clone().unwrap_or_else(|| "/".into());
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
    let id = gateway::request_id();
    // A process function takes the body as its payload, as `aws lambda invoke` does.
    let response = if live.spec.runtime == gale_core::manifest::RuntimeKind::Process {
        crate::lambda::invoke_payload(
            &state,
            live,
            request.into_body().into_inner().unwrap_or_default(),
            &id,
        )
        .await
    } else {
        gateway::invoke(&state, live, request, &id).await
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

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    tail: bool,
}

async fn logs(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<InvocationLog>>> {
    if state.function(&name).is_none() {
        return Err(not_found(&name).into());
    }
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(
        state
            .store
            .query(&name, q.after, limit, q.tail)
            .await
            .map_err(NodeError::from)?,
    ))
}

async fn list_topics(Ext(state): Ext<Arc<State>>) -> ApiResult<Json<Vec<TopicInfo>>> {
    Ok(Json(state.topics().await?))
}

async fn put_topic(
    Ext(state): Ext<Arc<State>>,
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
    state.put_topic(&name, crate::deploy::topic_config(&spec)).await?;
    let topics = state.topics().await?;
    let info = topics.into_iter().find(|t| t.name == name);
    info.map(Json)
        .ok_or_else(|| NodeError::from(gale_store::StoreError::UnknownTopic(name)).into())
}

async fn delete_topic(Ext(state): Ext<Arc<State>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let used_by: Vec<String> = state
        .functions
        .read()
        .unwrap_or_else(|p| p.into_inner())
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
    match state.delete_topic(&name).await? {
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
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<Json<Vec<StoredEventInfo>>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let events = state
        .store
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
    Ext(state): Ext<Arc<State>>,
    Json(req): Json<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let (token, info) = state.create_token(req.publish).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

async fn list_tokens(Ext(state): Ext<Arc<State>>) -> Json<Vec<TokenInfo>> {
    Json(state.list_tokens())
}

async fn delete_token(Ext(state): Ext<Arc<State>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match state.delete_token(&id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Error::new(Code::BadRequest, format!("no token with id {id}"))
            .with_hint("`gale tokens ls` lists them")
            .into()),
    }
}

#[derive(Deserialize)]
struct ReplayRequest {
    /// The function to run the events through.
    function: String,
    /// Unix milliseconds: events published at or after this.
    #[serde(default)]
    from_ms: u64,
    limit: Option<u64>,
}

async fn replay(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
    Json(req): Json<ReplayRequest>,
) -> ApiResult<Json<crate::dispatch::Replayed>> {
    let limit = req.limit.unwrap_or(10_000).min(100_000);
    Ok(Json(
        crate::dispatch::replay(&state, &name, &req.function, req.from_ms, limit).await?,
    ))
}

/// Moves a dead-letter topic's events back to the topics they failed on.
async fn redrive(
    Ext(state): Ext<Arc<State>>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.redrive(&name).await?))
}

async fn artifact_exists(Ext(state): Ext<Arc<State>>, Path(digest): Path<String>) -> ApiResult<StatusCode> {
    match state.store.contains(&digest).await.map_err(NodeError::from)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Ok(StatusCode::NOT_FOUND),
    }
}
