//! Lambda's Invoke API on the gateway: `POST
//! /2015-03-31/functions/{name}/invocations`, answered the way botocore and
//! the AWS CLI expect, so `boto3` and `aws lambda invoke` work against Gale
//! with an endpoint and credentials (SigV4, checked in [`super::sigv4`]).

use super::context::Ingress;
use crate::functions::invocations::submit;
use crate::functions::invoke::sync_invoke;
use crate::functions::payloads::{ACCOUNT, aws_error, form_urlencoded};
use crate::http::{Body, full};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

/// Largest payload of a synchronous invocation, as Lambda's.
const MAX_SYNC_PAYLOAD: usize = 6 << 20;
/// Largest payload of an asynchronous invocation, as Lambda's.
const MAX_ASYNC_PAYLOAD: usize = 1 << 20;
/// Log bytes returned by `X-Amz-Log-Type: Tail`.
const TAIL: usize = 4096;

/// `POST /2015-03-31/functions/{name}/invocations`, answered the way
/// botocore and the AWS CLI expect.
pub async fn invoke_api(ingress: &Ingress, req: Request<hyper::body::Incoming>, id: &str) -> Response<Body> {
    let path = req.uri().path().to_string();
    let name = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .map(|n| {
            percent_encoding::percent_decode_str(n)
                .decode_utf8_lossy()
                .into_owned()
        });
    let Some(name) = name.filter(|_| req.method() == http::Method::POST) else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "only Invoke is served: POST /2015-03-31/functions/{name}/invocations",
        );
    };
    // A function may be named by its ARN or as `name:qualifier`.
    let name = match name.split_once(":function:") {
        Some((_, rest)) => rest.to_string(),
        None => name,
    };
    let (name, named_qualifier) = match name.split_once(':') {
        Some((n, q)) => (n.to_string(), Some(q.to_string())),
        None => (name, None),
    };
    let (parts, body) = req.into_parts();
    let payload = match http_body_util::Limited::new(body, MAX_SYNC_PAYLOAD)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return aws_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!("the request payload is larger than {MAX_SYNC_PAYLOAD} bytes"),
            );
        }
    };
    if let Err(why) = super::sigv4::authorize(&ingress.tokens, &parts, &payload) {
        return aws_error(StatusCode::FORBIDDEN, "AccessDeniedException", &why);
    }
    let not_found = |what: String| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: arn:aws:lambda:{}:{ACCOUNT}:function:{what}",
                ingress.functions.runtimes().processes.region
            ),
        )
    };
    let Some(serving) = ingress.functions.get(&name) else {
        return not_found(name);
    };
    let query: Vec<(String, String)> = form_urlencoded(parts.uri.query().unwrap_or("")).collect();
    let qualifier = query
        .iter()
        .find(|(k, _)| k == "Qualifier")
        .map(|(_, q)| q.clone())
        .or(named_qualifier);
    let live = match qualifier.as_deref() {
        None | Some("$LATEST") => serving,
        Some(q) => match q.parse::<u64>() {
            Err(_) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    &format!(
                        "Qualifier {q:?} is neither $LATEST nor a version number (`gale versions {name}` lists them)"
                    ),
                );
            }
            Ok(v) => match ingress.functions.at(&name, v).await {
                Ok(Some(live)) => live,
                Ok(None) => return not_found(format!("{name}:{q}")),
                Err(e) => {
                    return aws_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        &e.to_string(),
                    );
                }
            },
        },
    };
    let get = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let kind = get("x-amz-invocation-type").unwrap_or_else(|| "RequestResponse".into());
    if payload.len() as u64 > live.spec.max_body.0 {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &format!(
                "the request payload is larger than the function's max_body of {}",
                live.spec.max_body
            ),
        );
    }
    let version = live.version.to_string();
    let mut response = match kind.as_str() {
        "DryRun" => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "Event" => {
            if payload.len() > MAX_ASYNC_PAYLOAD {
                return aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &format!("an asynchronous payload may be {MAX_ASYNC_PAYLOAD} bytes at most"),
                );
            }
            match submit(
                &ingress.functions,
                &live,
                "POST",
                "/",
                Some("application/json".into()),
                payload,
            )
            .await
            {
                Ok(record) => {
                    let mut r = Response::new(full(Bytes::new()));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    if let Ok(v) = HeaderValue::from_str(&record.id) {
                        r.headers_mut().insert("x-gale-invocation-id", v);
                    }
                    r
                }
                Err(e) => {
                    return aws_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        &e.to_string(),
                    );
                }
            }
        }
        "RequestResponse" => {
            let client_context = get("x-amz-client-context")
                .and_then(|c| B64.decode(c).ok())
                .map(|c| String::from_utf8_lossy(&c).into_owned());
            let tail = get("x-amz-log-type").as_deref() == Some("Tail");
            match sync_invoke(live, payload, id, client_context).await {
                Err(r) => return r,
                Ok((result, log)) => {
                    let (body, error) = match result {
                        Ok(b) => (b, None),
                        Err(e) => (e.body, Some("Unhandled")),
                    };
                    let mut r = Response::new(full(body));
                    let h = r.headers_mut();
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    if let Some(e) = error {
                        h.insert("x-amz-function-error", HeaderValue::from_static(e));
                    }
                    if tail {
                        let start = log.len().saturating_sub(TAIL);
                        let mut start = start;
                        while !log.is_char_boundary(start) {
                            start += 1;
                        }
                        if let Ok(v) = HeaderValue::from_str(&B64.encode(&log[start..])) {
                            h.insert("x-amz-log-result", v);
                        }
                    }
                    r
                }
            }
        }
        other => {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("X-Amz-Invocation-Type {other:?} is not RequestResponse, Event or DryRun"),
            );
        }
    };
    if let Ok(v) = HeaderValue::from_str(&version) {
        response.headers_mut().insert("x-amz-executed-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}
