//! The HTTP gateway: user routes to functions, and Gale's own endpoints
//! beside them (`/_gale/...`: publishing, invocations; `/2015-03-31/...`:
//! Lambda's Invoke API).
//!
//! Handlers never fail: every problem becomes an HTTP answer with a JSON
//! body naming a stable code, and every answer carries `x-gale-request-id`,
//! the id under which the invocation log records what happened.

use super::context::Ingress;
use super::routes::Lookup;
use super::{events_api, invocations_api, invoke_api};
use crate::events::MAX_PUBLISH;
use crate::functions::http::invoke;
use crate::http::{ApiError, Body, Peer, error, from_axum, request_id, with_request_id};
use axum::Router;
use axum::routing::post;
use gale_core::{Code, Error};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
/// The route pattern that matched, for the guest.
const ROUTE: HeaderName = HeaderName::from_static("x-gale-route");

/// Serves until `shutdown`, then lets open connections finish their
/// requests (graceful shutdown) for up to 10 s.
pub async fn serve(ingress: Ingress, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let gale = gateway_router(ingress.clone());
    super::listener::serve(listener, shutdown, move |peer| {
        let (ingress, gale) = (ingress.clone(), gale.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let ingress = ingress.clone();
            let gale = gale.clone();
            async move {
                let path = req.uri().path();
                Ok::<_, std::convert::Infallible>(if path.starts_with("/_gale/") {
                    match events_api::publish_topic(path).filter(|_| req.method() == http::Method::POST) {
                        Some(topic) => {
                            let id = request_id();
                            let response = events_api::publish_on_gateway(&ingress, &topic, req).await;
                            with_request_id(from_axum(response).await, &id)
                        }
                        None => own_endpoint(gale, req).await,
                    }
                } else if path.starts_with("/2015-03-31/") {
                    let id = request_id();
                    with_request_id(invoke_api::invoke_api(&ingress, req, &id).await, &id)
                } else {
                    handle(&ingress, req, Peer(peer)).await
                })
            }
        })
    })
    .await
}

/// Gale's own endpoints under `/_gale/`, answered by an axum router.
async fn own_endpoint(router: axum::Router, req: Request<Incoming>) -> Response<Body> {
    use tower::ServiceExt;
    let id = request_id();
    let response = match router.oneshot(req.map(axum::body::Body::new)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    with_request_id(from_axum(response).await, &id)
}

async fn handle(ingress: &Ingress, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let id = request_id();
    let routes = ingress.routes.table();
    let response = match routes.lookup(req.method(), req.uri().path()) {
        Lookup::Found {
            live,
            pattern,
            params,
        } => {
            let mut req = req;
            let headers = req.headers_mut();
            // Only Gale sets x-gale-* headers; a client must not forge them.
            let forged: Vec<_> = headers
                .keys()
                .filter(|k| k.as_str().starts_with("x-gale-"))
                .cloned()
                .collect();
            for name in forged {
                headers.remove(name);
            }
            if let Some(v) = pattern {
                headers.insert(ROUTE, v.clone());
            }
            for (name, value) in params {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(format!("x-gale-param-{name}").as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
            if live.spec.runtime == gale_core::manifest::RuntimeKind::Process {
                req.extensions_mut().insert(peer);
            }
            invoke(live, req, &id).await
        }
        Lookup::NotFound => error(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no route matches this path",
        ),
        Lookup::MethodNotAllowed(allow) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("this path accepts {allow}"),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
    };
    with_request_id(response, &id)
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
