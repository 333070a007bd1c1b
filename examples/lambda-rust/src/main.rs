//! An unmodified AWS Lambda handler: Gale's process runtime speaks the
//! Lambda Runtime API, so `lambda_runtime` works as it does on AWS.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let started = std::time::Instant::now();
    let (payload, context) = event.into_parts();
    // A CloudEvent with `type = "fail"` fails, so retries and the
    // dead-letter topic can be watched.
    if payload["type"] == "fail" {
        return Err(Diagnostic {
            error_type: "AskedToFail".into(),
            error_message: "asked to fail".into(),
        });
    }
    Ok(json!({
        "echo": payload,
        "request_id": context.request_id,
        "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        // The handler's own time, so a benchmark can tell it from the platform's.
        "handler_us": started.elapsed().as_secs_f64() * 1e6,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
