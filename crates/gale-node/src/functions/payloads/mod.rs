//! The payloads Lambda handlers expect, and how their answers read back.
//!
//! A process function never sees an HTTP request or a CloudEvent as such:
//! - an HTTP route hands it an API Gateway HTTP API (v2) event, and its
//!   answer (`statusCode`, `headers`, `cookies`, `body`, or any JSON value)
//!   becomes the HTTP response;
//! - an event trigger hands it the CloudEvent in JSON (an array for a
//!   batch), or with `format = "sqs"` an SQS batch whose `batchItemFailures`
//!   answer retries only the events it names (`format = "dynamodb"`,
//!   `format = "rabbitmq"` and `format = "kafka"` give those services'
//!   batches);
//! - a schedule hands it EventBridge's scheduled-event shape;
//! - the Invoke API hands it the payload as is, and answers errors in the
//!   shape botocore reads.
//!
//! Event triggers' payloads are in `events.rs`; HTTP's and the Invoke API's here.

use crate::http::{Body, error, full};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

mod events;

pub use events::{events_payload, failures};

/// Account id in the ARNs instances see (Gale has no accounts).
pub const ACCOUNT: &str = "000000000000";

/// Whether a body of this content type goes to the handler as text.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("/json")
        || ct.ends_with("+json")
        || ct.ends_with("/xml")
        || ct.ends_with("+xml")
        || ct == "application/javascript"
        || ct == "application/x-www-form-urlencoded"
}

/// The API Gateway HTTP API (payload format 2.0) event for a request.
pub fn http_event(parts: &http::request::Parts, body: &[u8], id: &str) -> Bytes {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    let mut params = Map::new();
    let mut route = None;
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let name = name.as_str();
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| Value::from(c.trim()))
                    .filter(|c| c != ""),
            );
            continue;
        }
        if let Some(p) = name.strip_prefix("x-gale-param-") {
            params.insert(p.to_string(), value.into());
            continue;
        }
        if name == "x-gale-route" {
            route = Some(value);
            continue;
        }
        match headers.get_mut(name) {
            Some(Value::String(v)) => {
                v.push(',');
                v.push_str(&value);
            }
            _ => {
                headers.insert(name.to_string(), value.into());
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query = Map::new();
    for (k, v) in form_urlencoded(raw_query) {
        match query.get_mut(&k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                query.insert(k, v.into());
            }
        }
    }
    let route_key = route
        .map(|r| format!("{} {r}", parts.method))
        .unwrap_or_else(|| "$default".into());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let text = is_text(content_type)
        .then(|| std::str::from_utf8(body).ok())
        .flatten();
    let (body, base64) = match text {
        Some(t) => (t.to_string(), false),
        None => (B64.encode(body), true),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let now = jiff::Timestamp::now();
    let peer = parts
        .extensions
        .get::<crate::http::Peer>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "gale",
            "domainName": header("host"),
            "domainPrefix": header("host").split('.').next().unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": format!("{:?}", parts.version),
                "sourceIp": peer,
                "userAgent": header("user-agent"),
            },
            "requestId": id,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.as_millisecond(),
        },
        "isBase64Encoded": base64,
    });
    let object = event.as_object_mut().expect("an object");
    if !cookies.is_empty() {
        object.insert("cookies".into(), cookies.into());
    }
    if !query.is_empty() {
        object.insert("queryStringParameters".into(), query.into());
    }
    if !params.is_empty() {
        object.insert("pathParameters".into(), params.into());
    }
    if !body.is_empty() {
        object.insert("body".into(), body.into());
    }
    Bytes::from(event.to_string())
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub fn form_urlencoded(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k), decode(v))
    })
}

/// The HTTP response for a handler's answer to an API Gateway v2 event.
pub fn http_response(answer: &[u8]) -> Response<Body> {
    let value: Option<Value> = serde_json::from_slice(answer).ok();
    let shaped = value
        .as_ref()
        .and_then(|v| v.as_object())
        .filter(|o| o.contains_key("statusCode"));
    let Some(o) = shaped else {
        // Any other JSON value (or text) is the body of a 200.
        let mut r = Response::new(full(Bytes::copy_from_slice(answer)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return r;
    };
    let status = o
        .get("statusCode")
        .and_then(|s| s.as_u64())
        .and_then(|s| StatusCode::from_u16(s as u16).ok());
    let Some(status) = status else {
        return error(
            StatusCode::BAD_GATEWAY,
            "bad_function_response",
            "the function answered with a statusCode that is not an HTTP status",
        );
    };
    let body = match o.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if o.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            match B64.decode(s) {
                Ok(b) => Bytes::from(b),
                Err(_) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "bad_function_response",
                        "the function's body is marked isBase64Encoded but is not base64",
                    );
                }
            }
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    let pairs = o.get("headers").and_then(|h| h.as_object()).into_iter().flatten();
    let multi = o
        .get("multiValueHeaders")
        .and_then(|h| h.as_object())
        .into_iter()
        .flatten()
        .flat_map(|(k, v)| v.as_array().into_iter().flatten().map(move |v| (k, v)));
    for (name, value) in pairs.chain(multi) {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
    for cookie in o.get("cookies").and_then(|c| c.as_array()).into_iter().flatten() {
        if let Some(Ok(v)) = cookie.as_str().map(HeaderValue::from_str) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// An error in the shape botocore reads: the type in `X-Amzn-ErrorType`,
/// the message in the body.
pub fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let body = json!({ "Type": "User", "message": message, "Message": message }).to_string();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(error_type) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn an_http_request_becomes_an_api_gateway_v2_event() {
        let req = Request::post("/orders/42?a=1&b=x%20y&a=2")
            .header("host", "shop.local")
            .header("content-type", "application/json")
            .header("cookie", "s=1; t=2")
            .header("x-gale-route", "/orders/{id}")
            .header("x-gale-param-id", "42")
            .header("accept", "a")
            .header("accept", "b")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let event: Value = serde_json::from_slice(&http_event(&parts, br#"{"n":1}"#, "r1")).unwrap();
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["routeKey"], "POST /orders/{id}");
        assert_eq!(event["rawPath"], "/orders/42");
        assert_eq!(event["rawQueryString"], "a=1&b=x%20y&a=2");
        assert_eq!(event["queryStringParameters"]["a"], "1,2");
        assert_eq!(event["queryStringParameters"]["b"], "x y");
        assert_eq!(event["pathParameters"]["id"], "42");
        assert_eq!(event["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(event["headers"]["accept"], "a,b");
        assert!(event["headers"].get("cookie").is_none());
        assert!(event["headers"].get("x-gale-route").is_none());
        assert_eq!(event["requestContext"]["http"]["method"], "POST");
        assert_eq!(event["requestContext"]["requestId"], "r1");
        assert_eq!(event["body"], r#"{"n":1}"#);
        assert_eq!(event["isBase64Encoded"], false);

        let req = Request::put("/f")
            .header("content-type", "image/png")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let event: Value = serde_json::from_slice(&http_event(&parts, &[0, 159, 146, 150], "r2")).unwrap();
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(
            B64.decode(event["body"].as_str().unwrap()).unwrap(),
            vec![0, 159, 146, 150]
        );
        assert_eq!(event["routeKey"], "$default");
    }

    #[test]
    fn handler_answers_become_http_responses() {
        let r = http_response(
            br#"{"statusCode":201,"headers":{"x-a":"1"},"cookies":["a=1","b=2"],"body":"made"}"#,
        );
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let r = http_response(br#"{"statusCode":200,"body":"aGk=","isBase64Encoded":true}"#);
        assert_eq!(r.status(), 200);
        let r = http_response(br#"{"message":"no status code"}"#);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let r = http_response(br#"{"statusCode":"teapot"}"#);
        assert_eq!(r.status(), 502);
    }
}
