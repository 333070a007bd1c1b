//! The gateway's answers when a function gave none of its own (too big a
//! body, a timeout, events it published that could not be stored), the
//! same whether the function is a wasm component or a process.

use crate::http::{Body, error};
use http::{Response, StatusCode};
use std::time::Duration;

pub fn too_large(max: u64) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body is larger than the function's max_body of {max} bytes"),
    )
}

pub fn timed_out(function: &str, timeout: Duration) -> Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        &format!(
            "function `{function}` did not answer within its timeout of {}",
            humantime::format_duration(timeout)
        ),
    )
}

pub fn cpu_limit(function: &str, limit: Duration) -> Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "cpu_limit",
        &format!(
            "function `{function}` used its CPU limit of {} before answering (`cpu` in its manifest)",
            humantime::format_duration(limit)
        ),
    )
}

pub fn publish_failed(function: &str, e: &crate::NodeError) -> Response<Body> {
    tracing::error!(function, error = %e, "committing published events failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "publish_failed",
        &format!("function `{function}` ran, but the events it published could not be stored: {e}"),
    )
}
