//! The ingress plane's endpoints on the admin API (under its auth):
//! publishing, and reading an asynchronous invocation's record.

use super::context::Ingress;
use super::{events_api, invocations_api};
use axum::Router;
use axum::routing::{get, post};

pub fn routes(ingress: Ingress) -> Router {
    Router::new()
        .route("/v1/topics/{name}/events", post(events_api::publish))
        .route("/v1/invocations/{id}", get(invocations_api::show))
        .with_state(ingress)
}
