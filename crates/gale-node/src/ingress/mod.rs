//! The ingress plane: requests from outside.
//!
//! - [`gateway`]: the HTTP listener users' requests and events arrive on;
//! - [`routes`]: the routing table, following the live functions;
//! - [`events_api`]: publishing CloudEvents over HTTP;
//! - [`invocations_api`]: invoking a function by name, sync or async;
//! - [`invoke_api`] and [`sigv4`]: Lambda's Invoke API for AWS clients.

pub mod events_api;
pub mod gateway;
pub mod invocations_api;
pub mod invoke_api;
pub mod routes;
pub mod sigv4;

use crate::auth::Tokens;
use crate::events::MAX_PUBLISH;
use crate::functions::Functions;
use crate::http::ApiError;
use crate::publisher::Publisher;
use axum::Router;
use axum::routing::{get, post};
use gale_core::{Code, Error};
use routes::Routes;
use std::sync::Arc;

/// What serving requests takes; cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    pub functions: Functions,
    pub routes: Arc<Routes>,
    pub publisher: Publisher,
    pub tokens: Tokens,
}

/// The gateway's own endpoints under `/_gale/`: publishing takes the admin
/// token or a publish token naming the topic.
fn gateway_router(ingress: Ingress) -> Router {
    // The gateway answers POST /_gale/topics/{topic}/events itself
    // (`publish_on_gateway`); the route stays for the other methods' 405.
    Router::new()
        .route("/_gale/topics/{topic}/events", post(events_api::publish))
        .route(
            "/_gale/functions/{name}/invocations",
            post(invocations_api::invoke),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PUBLISH))
        .fallback(|| async {
            ApiError(Error::new(Code::BadRequest, "no such Gale endpoint").with_hint(
                "Gale's gateway endpoints: POST /_gale/topics/{topic}/events and \
                 POST /_gale/functions/{name}/invocations; paths under /_gale/ are reserved",
            ))
        })
        .with_state(ingress)
}

/// The admin API's ingress endpoints (under its auth).
pub fn admin_routes(ingress: Ingress) -> Router {
    Router::new()
        .route("/v1/topics/{name}/events", post(events_api::publish))
        .route("/v1/invocations/{id}", get(invocations_api::show))
        .with_state(ingress)
}
