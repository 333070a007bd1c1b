//! The delivery plane: events from topics to functions.
//!
//! - [`subscriptions`]: a subscription and a dispatcher per trigger,
//!   following the live functions;
//! - [`dispatcher`]: leases, filters, runs, settles (retries, dead letters);
//! - [`invocations`]: the attempts of asynchronous invocations;
//! - [`replay`]: replays and redrives, asked for through the admin API.

pub mod dispatcher;
pub mod invocations;
pub mod replay;
pub mod subscriptions;

use crate::functions::Functions;
use crate::http::{ApiResult, Json, Path};
use crate::publisher::Publisher;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use gale_store::Topics;
use serde::Deserialize;
use std::sync::Arc;

/// What delivering takes; cheap to clone.
#[derive(Clone)]
pub struct Dispatch {
    pub functions: Functions,
    pub publisher: Publisher,
    /// Fetching, for dispatchers; appends go through the publisher.
    pub topics: Arc<dyn Topics>,
    /// Where dispatchers run: threads of their own at a lower priority, so
    /// publishers and requests are answered first.
    pub runtime: tokio::runtime::Handle,
}

/// The admin API's delivery endpoints (under its auth).
pub fn admin_routes(dispatch: Dispatch) -> Router {
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
