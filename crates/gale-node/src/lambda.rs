//! Process functions, Lambda's way: the payloads Lambda handlers expect, and
//! Lambda's Invoke API on the gateway.
//!
//! A process function never sees an HTTP request or a CloudEvent as such:
//! - an HTTP route hands it an API Gateway HTTP API (v2) event, and its
//!   answer (`statusCode`, `headers`, `cookies`, `body`, or any JSON value)
//!   becomes the HTTP response;
//! - an event trigger hands it the CloudEvent in JSON (an array for a
//!   batch), or with `format = "sqs"` an SQS batch whose `batchItemFailures`
//!   answer retries only the events it names;
//! - a schedule hands it EventBridge's scheduled-event shape;
//! - `POST /2015-03-31/functions/{name}/invocations` (what boto3 and the
//!   AWS CLI send) hands it the payload as is.

use crate::scheduler::{Live, Loaded, Refused};
use crate::{NodeError, State, gateway};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cloudevents::{AttributesReader, Data, Event};
use gale_core::api::Outcome;
use gale_process::{Completion, FunctionError, Invocation, Pool};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Account id in the ARNs instances see (Gale has no accounts).
const ACCOUNT: &str = "000000000000";
/// Largest payload of a synchronous invocation, as Lambda's.
const MAX_SYNC_PAYLOAD: usize = 6 << 20;
/// Largest payload of an asynchronous invocation, as Lambda's.
const MAX_ASYNC_PAYLOAD: usize = 1 << 20;
/// Log bytes returned by `X-Amz-Log-Type: Tail`.
const TAIL: usize = 4096;

impl State {
    /// The (uid, gid) a function's instances run as: its own unprivileged
    /// user when the node runs as root (so functions cannot read each
    /// other's files), the node's user otherwise.
    pub(crate) async fn process_user(&self, function: &str) -> Result<Option<(u32, u32)>, NodeError> {
        use gale_store::KeyValue;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        const BASE: u64 = 200_000;
        let n = match self.store.kv_get("_gale", "uids", function).await? {
            Some(v) => String::from_utf8_lossy(&v).parse::<u64>().ok(),
            None => None,
        };
        let n = match n {
            Some(n) => n,
            None => {
                let n = self.store.kv_increment("_gale", "uids", "_next", 1).await?;
                self.store
                    .kv_set("_gale", "uids", function, n.to_string().into_bytes())
                    .await?;
                n
            }
        };
        let id = (BASE + n) as u32;
        Ok(Some((id, id)))
    }

    /// What an instance's `POST $GALE_API/_gale/topics/{topic}/events`
    /// goes through: the same parsing and limits as the gateway's publish.
    pub(crate) fn publish_hook(self: &Arc<Self>) -> gale_process::Publish {
        let node = Arc::downgrade(self);
        Arc::new(move |topic: &str, headers: &HeaderMap, body: &[u8]| {
            let refused = |e: gale_core::Error| gale_process::PublishRefused {
                status: e.code.http_status(),
                body: json!({ "error": e }).to_string(),
            };
            let exists = node.upgrade().is_some_and(|n| n.topic_exists(topic));
            if !exists {
                return Err(refused(
                    gale_core::Error::new(
                        gale_core::Code::TopicNotFound,
                        format!("no topic named `{topic}`"),
                    )
                    .with_hint(
                        "declare it in the manifest's [topics] or create it with `gale topics create`",
                    ),
                ));
            }
            crate::events::parse_for_store(headers, body).map_err(refused)
        })
    }
}

/// Runs one invocation of a process function and files its log record.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn invoke(
    state: &Arc<State>,
    live: &Arc<Live>,
    pool: &Arc<Pool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    payload: Bytes,
    id: &str,
    timeout: Duration,
    client_context: Option<String>,
    events: Vec<String>,
) -> Completion {
    let at = crate::registry::now_ms();
    let invocation = Invocation {
        request_id: id.to_string(),
        payload,
        timeout,
        client_context,
    };
    let c = pool.invoke(invocation, permit).await;
    if c.cold_start {
        live.counters
            .cold_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let status = match (&c.result, c.outcome) {
        // An API Gateway answer names its status.
        (Ok(answer), _) => serde_json::from_slice::<Value>(answer)
            .ok()
            .and_then(|v| v.get("statusCode").and_then(|s| s.as_u64()))
            .filter(|s| (100..600).contains(s))
            .map_or(200, |s| s as u16),
        (_, Outcome::Timeout) => 504,
        _ => 500,
    };
    let started = crate::Started {
        request_id: id.to_string(),
        at,
        cold_start: c.cold_start,
        events,
    };
    let record = gale_wasm::Completion {
        outcome: c.outcome,
        status: Some(status),
        error: c
            .result
            .as_ref()
            .err()
            .map(|e| format!("{}: {}", e.error_type, e.message())),
        stdout: c.log.clone(),
        stderr: String::new(),
        duration: c.duration,
        outbox: Vec::new(),
    };
    state.finished(live, started, record, status);
    c
}

/// An HTTP request to a process function, through the API Gateway v2 shapes.
pub(crate) async fn serve_http<B>(
    state: &Arc<State>,
    live: Arc<Live>,
    pool: Arc<Pool>,
    permit: tokio::sync::OwnedSemaphorePermit,
    req: Request<B>,
    id: &str,
    timeout: Duration,
) -> Response<gateway::Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<gale_wasm::BodyError>,
{
    let (parts, body) = req.into_parts();
    let max = live.spec.max_body.0 as usize;
    let body = body.map_err(|e| -> gale_wasm::BodyError { e.into() });
    let body = match http_body_util::Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return gateway::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the request body is larger than the function's max_body of {max} bytes"),
            );
        }
    };
    let event = http_event(&parts, &body, id);
    let c = invoke(state, &live, &pool, permit, event, id, timeout, None, Vec::new()).await;
    match c.result {
        Ok(answer) => {
            if let Err(e) = state.store_outbox(c.outbox).await {
                return gateway::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "publish_failed",
                    &format!(
                        "function `{}` ran, but the events it published could not be stored: {e}",
                        live.name
                    ),
                );
            }
            http_response(&answer)
        }
        Err(e) if e.error_type == "Sandbox.Timedout" => gateway::error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!(
                "function `{}` did not answer within its timeout of {}",
                live.name,
                humantime::format_duration(timeout)
            ),
        ),
        Err(e) => gateway::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            &format!(
                "function `{}` failed with {} (request {id}); `gale logs {}` shows why",
                live.name, e.error_type, live.name
            ),
        ),
    }
}

impl State {
    /// Stores what an invocation published (it succeeded).
    pub(crate) async fn store_outbox(
        &self,
        outbox: Vec<(String, gale_store::NewEvent)>,
    ) -> Result<(), NodeError> {
        if !outbox.is_empty() {
            use gale_store::Topics;
            self.store.publish_all(outbox).await?;
        }
        Ok(())
    }
}

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
fn http_event(parts: &http::request::Parts, body: &[u8], id: &str) -> Bytes {
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
        .get::<gateway::Peer>()
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
fn form_urlencoded(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
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
fn http_response(answer: &[u8]) -> Response<gateway::Body> {
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
        return gateway::error(
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
                    return gateway::error(
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

fn full(body: Bytes) -> gateway::Body {
    http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The payload for a chunk of events, by the trigger's format.
pub(crate) fn events_payload(
    format: gale_core::manifest::EventFormat,
    topic: &str,
    region: &str,
    events: &[(&Event, u32)],
) -> Bytes {
    use gale_core::manifest::EventFormat;
    if let Some(n) = topic.strip_prefix(crate::schedule::TOPIC_PREFIX)
        && let [(event, _)] = events
    {
        return scheduled_event(event, n, region);
    }
    let value = match format {
        EventFormat::Cloudevents => {
            let mut all: Vec<Value> = events
                .iter()
                .map(|(e, _)| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect();
            if all.len() == 1 {
                all.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(all)
            }
        }
        EventFormat::Sqs => {
            json!({ "Records": events.iter().map(|(e, attempts)| sqs_record(e, *attempts, topic, region)).collect::<Vec<_>>() })
        }
    };
    Bytes::from(value.to_string())
}

fn sqs_record(event: &Event, attempts: u32, topic: &str, region: &str) -> Value {
    let body = match event.data() {
        Some(Data::String(s)) => s.clone(),
        Some(Data::Json(v)) => v.to_string(),
        Some(Data::Binary(b)) => B64.encode(b),
        None => String::new(),
    };
    let sent = event.time().map_or(0, |t| t.timestamp_millis());
    let mut attributes = Map::new();
    let mut put = |name: &str, value: String| {
        attributes.insert(name.to_string(), json!({ "stringValue": value, "dataType": "String", "stringListValues": [], "binaryListValues": [] }));
    };
    put("ce-type", event.ty().to_string());
    put("ce-source", event.source().to_string());
    if let Some(s) = event.subject() {
        put("ce-subject", s.to_string());
    }
    if let Some(ct) = event.datacontenttype() {
        put("content-type", ct.to_string());
    }
    for (name, value) in event.iter_extensions() {
        put(&format!("ce-{name}"), value.to_string());
    }
    json!({
        "messageId": event.id(),
        "receiptHandle": format!("{topic}/{}", event.id()),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": attempts.to_string(),
            "SentTimestamp": sent.to_string(),
            "SenderId": event.source().to_string(),
            "ApproximateFirstReceiveTimestamp": sent.to_string(),
        },
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:{region}:{ACCOUNT}:{topic}"),
        "awsRegion": region,
    })
}

/// EventBridge's scheduled event for a schedule firing (`rule` is the
/// schedule topic's `<function>.<n>`).
fn scheduled_event(event: &Event, rule: &str, region: &str) -> Bytes {
    let time = event
        .time()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    Bytes::from(
        json!({
            "version": "0",
            "id": event.id(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": time,
            "region": region,
            "resources": [format!("arn:aws:events:{region}:{ACCOUNT}:rule/{rule}")],
            "detail": {},
        })
        .to_string(),
    )
}

/// Which events of a chunk failed, from the handler's answer: all of them
/// for an error, none for success, or those an SQS-format answer names in
/// `batchItemFailures` (a malformed answer fails the whole batch).
pub(crate) fn failures(
    format: gale_core::manifest::EventFormat,
    result: &Result<Bytes, FunctionError>,
    ids: &[&str],
) -> Vec<Option<String>> {
    let all = |why: String| ids.iter().map(|_| Some(why.clone())).collect();
    let answer = match result {
        Err(e) => return all(format!("{}: {}", e.error_type, e.message())),
        Ok(a) => a,
    };
    if format != gale_core::manifest::EventFormat::Sqs {
        return vec![None; ids.len()];
    }
    let value: Value = match serde_json::from_slice(answer) {
        Ok(v) => v,
        Err(_) if answer.is_empty() => return vec![None; ids.len()],
        Err(_) => return all("the handler's answer is not JSON".into()),
    };
    let failed = match value.get("batchItemFailures") {
        None | Some(Value::Null) => return vec![None; ids.len()],
        Some(Value::Array(items)) => {
            let named: Option<Vec<&str>> = items
                .iter()
                .map(|i| i.get("itemIdentifier").and_then(|v| v.as_str()))
                .collect();
            match named {
                Some(n) if n.iter().all(|id| ids.contains(id)) => n,
                _ => return all("the handler's batchItemFailures names unknown or malformed items".into()),
            }
        }
        Some(_) => return all("the handler's batchItemFailures is not a list".into()),
    };
    ids.iter()
        .map(|id| {
            failed
                .contains(id)
                .then(|| "the handler listed it in batchItemFailures".to_string())
        })
        .collect()
}

// ---- The Invoke API ----

/// `POST /2015-03-31/functions/{name}/invocations`, answered the way
/// botocore and the AWS CLI expect.
pub(crate) async fn invoke_api(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
    id: &str,
) -> Response<gateway::Body> {
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
    if let Err(why) = crate::sigv4::authorize(&state, &parts, &payload) {
        return aws_error(StatusCode::FORBIDDEN, "AccessDeniedException", &why);
    }
    let not_found = |what: String| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: arn:aws:lambda:{}:{ACCOUNT}:function:{what}",
                state.processes.region
            ),
        )
    };
    let Some(serving) = state.function(&name) else {
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
            Ok(v) => match state.function_at(&name, v).await {
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
            match crate::invocations::submit(
                &state,
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
            match sync_invoke(&state, live, payload, id, client_context).await {
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

/// `POST /_gale/functions/{name}/invocations` on a process function: the
/// body is the payload; the answer is the function's, or its error
/// document with status 500 (504 for a timeout) and `x-amz-function-error`.
pub(crate) async fn invoke_payload(
    state: &Arc<State>,
    live: Arc<Live>,
    payload: Bytes,
    id: &str,
) -> Response<gateway::Body> {
    match sync_invoke(state, live, payload, id, None).await {
        Err(r) => r,
        Ok((Ok(body), _)) => {
            let mut r = Response::new(full(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok((Err(e), _)) => {
            let status = if e.error_type == "Sandbox.Timedout" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut r = Response::new(full(e.body));
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
            r
        }
    }
}

/// A synchronous invoke of any function: the answer (or function error)
/// and the invocation's log.
async fn sync_invoke(
    state: &Arc<State>,
    live: Arc<Live>,
    payload: Bytes,
    id: &str,
    client_context: Option<String>,
) -> Result<(Result<Bytes, FunctionError>, String), Response<gateway::Body>> {
    let permit = match live.admit().await {
        Ok(p) => p,
        Err(Refused::Busy) => {
            let mut r = aws_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                &format!(
                    "Rate Exceeded: function `{}` is at max_instances = {}",
                    live.name, live.spec.max_instances
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(r);
        }
    };
    let timeout = live.spec.timeout.0;
    match live.prepared(state).await {
        Err(e) => Err(aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            &e.to_string(),
        )),
        Ok((Loaded::Process(pool), _)) => {
            let c = invoke(
                state,
                &live,
                &pool,
                permit,
                payload,
                id,
                timeout,
                client_context,
                Vec::new(),
            )
            .await;
            if c.result.is_ok()
                && let Err(e) = state.store_outbox(c.outbox).await
            {
                return Ok((
                    Err(FunctionError::new("Gale.PublishFailed", &e.to_string())),
                    c.log,
                ));
            }
            Ok((c.result, c.log))
        }
        Ok((Loaded::Wasm(prepared), _)) if prepared.world() == gale_wasm::World::Events => {
            drop(permit);
            Err(aws_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!(
                    "function `{}` is an event handler: publish to its topic instead",
                    live.name
                ),
            ))
        }
        Ok((Loaded::Wasm(_), _)) => {
            // A wasi:http function gets the payload as `POST /`.
            let request = Request::post("/")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, payload.len())
                .body(http_body_util::Full::new(payload))
                .expect("a valid request");
            let response = gateway::run(state, live, permit, request, id, timeout, Vec::new()).await;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let result = if status.is_server_error() {
                Err(FunctionError::new(
                    "Unhandled",
                    &format!(
                        "the function answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                ))
            } else {
                Ok(body)
            };
            Ok((result, String::new()))
        }
    }
}

/// An error in the shape botocore reads: the type in `X-Amzn-ErrorType`,
/// the message in the body.
fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response<gateway::Body> {
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
    use gale_core::manifest::EventFormat;

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

    #[test]
    fn sqs_answers_retry_only_the_named_items() {
        let ids = ["a", "b", "c"];
        let ok = |s: &str| Ok(Bytes::from(s.to_string()));
        assert_eq!(failures(EventFormat::Sqs, &ok(""), &ids), vec![None, None, None]);
        assert_eq!(
            failures(EventFormat::Sqs, &ok("null"), &ids),
            vec![None, None, None]
        );
        assert_eq!(
            failures(EventFormat::Sqs, &ok(r#"{"batchItemFailures":[]}"#), &ids),
            vec![None, None, None]
        );
        let partial = failures(
            EventFormat::Sqs,
            &ok(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#),
            &ids,
        );
        assert!(partial[0].is_none() && partial[1].is_some() && partial[2].is_none());
        let malformed = failures(EventFormat::Sqs, &ok(r#"{"batchItemFailures":[{"x":1}]}"#), &ids);
        assert!(malformed.iter().all(Option::is_some));
        let error = Err(FunctionError::new("E", "boom"));
        assert!(
            failures(EventFormat::Sqs, &error, &ids)
                .iter()
                .all(Option::is_some)
        );
        assert!(
            failures(EventFormat::Cloudevents, &error, &ids)
                .iter()
                .all(Option::is_some)
        );
    }
}
