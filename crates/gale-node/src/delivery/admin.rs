//! The delivery plane's endpoints on the admin API (under its auth):
//! replaying a topic through a function, redriving dead letters.

use super::dispatcher::Dispatch;
use super::replay;
use crate::http::{ApiResult, Json, Path};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;

pub fn routes(dispatch: Dispatch) -> Router {
    Router::new()
        .route("/v1/topics/{name}/redrive", post(redrive))
        .route("/v1/topics/{name}/replay", post(replay))
        .with_state(dispatch)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// The function to run the events through.
    function: String,
    /// Unix milliseconds: events published at or after this.
    #[serde(default)]
    from_ms: u64,
    limit: Option<u64>,
}

async fn replay(
    State(dispatch): State<Dispatch>,
    Path(name): Path<String>,
    Json(req): Json<ReplayRequest>,
) -> ApiResult<Json<replay::Replayed>> {
    let limit = req.limit.unwrap_or(10_000).min(100_000);
    Ok(Json(
        replay::replay(&dispatch, &name, &req.function, req.from_ms, limit).await?,
    ))
}

/// Moves a dead-letter topic's events back to the topics they failed on.
async fn redrive(
    State(dispatch): State<Dispatch>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(replay::redrive(&dispatch, &name).await?))
}
