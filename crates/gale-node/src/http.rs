//! What every HTTP-facing part of the node shares: the response body type,
//! JSON error answers in the one shape Gale uses (`{"error": {"code",
//! "message", "hint"}}`), the extractors of Gale's own APIs, and request ids.
//!
//! Handlers never fail: every problem becomes an answer naming a stable
//! code, and every answer of the gateway carries `x-gale-request-id`, the
//! id under which the invocation log records what happened.
//!
//! Why extractors of our own ([`Json`], [`Path`], [`Query`], [`WholeBody`]):
//! axum's answer a request they cannot read in plain text, with statuses
//! of their own (415 and 422 among them), which no client of the admin API
//! can tell apart by code. These wrap axum's and answer in Gale's shape
//! instead, saying what was wrong and how to fix it. [`json_errors`] is the
//! last line behind them: an error answer that is not JSON yet (an
//! extractor added later, a layer's own answer) is put into the same shape
//! on its way out, so the API's promise does not rest on every handler
//! remembering it.

use crate::NodeError;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::middleware::Next;
use axum::response::IntoResponse;
use bytes::Bytes;
use gale_core::error::ErrorBody;
use gale_core::{Code, Error};
use gale_wasm::BodyError;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub type Body = UnsyncBoxBody<Bytes, BodyError>;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-gale-request-id");

/// A whole body.
pub fn full(body: Bytes) -> Body {
    Full::new(body).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON error answer of the gateway (no hint: the message says it).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error answer of Gale's own APIs, with its stable code and hint.
pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(ErrorBody { error: self.0 })).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let user = e.to_user();
        if user.code == Code::Internal || user.code == Code::Storage {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(user)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Where an operation's parameters and body are described, for hints.
const SEE_SCHEMA: &str = "each operation's parameters and body are described in /v1/openapi.json";

/// A JSON request body, or a JSON answer. A request without a JSON
/// content type answers 415 `unsupported_media_type`; a body that is not
/// JSON, or not of the operation's shape (a missing or unknown field, a
/// wrong type), answers 400 `bad_request` naming the place; one over the
/// router's body limit answers 413 `payload_too_large`.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(request.headers())?;
        let WholeBody(bytes) = WholeBody::from_request(request, state).await?;
        parse_json(&bytes)
    }
}

/// An optional JSON body: an empty body is `None`; anything else must be
/// JSON, as for [`Json`] (axum's own `Option<Json>` ignores a body sent
/// without a content type, which would drop the caller's settings unsaid).
impl<T, S> OptionalFromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let json = check_json_content_type(request.headers());
        let WholeBody(bytes) = WholeBody::from_request(request, state).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        json?;
        parse_json(&bytes).map(Some)
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Whether the request says its body is JSON: `application/json` or
/// `application/<something>+json`, parameters allowed.
fn check_json_content_type(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let essence = given.as_deref().map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let json = essence
        .as_deref()
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    if json {
        return Ok(());
    }
    let message = match given {
        Some(given) => {
            format!("this endpoint takes a JSON body, and the request's Content-Type is {given:?}")
        }
        None => "this endpoint takes a JSON body, and the request has no Content-Type".to_string(),
    };
    Err(ApiError(
        Error::new(Code::UnsupportedMediaType, message)
            .with_hint("send the body with `Content-Type: application/json`"),
    ))
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Json<T>, ApiError> {
    let rejection = match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(v)) => return Ok(Json(v)),
        Err(rejection) => rejection,
    };
    // JSON has one kind of number: to JSON Schema, and so to the OpenAPI
    // document, `2.0` is the integer 2. serde takes `2` alone for an
    // integer field, so a body with whole numbers written as decimals is
    // read again with them as integers (what fails then fails as sent).
    if let JsonRejection::JsonDataError(_) = rejection
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && whole_numbers_as_integers(&mut value)
        && let Ok(axum::Json(v)) = axum::Json::<T>::from_bytes(value.to_string().as_bytes())
    {
        return Ok(Json(v));
    }
    let (what, hint) = match &rejection {
        JsonRejection::JsonSyntaxError(_) => (
            "the body is not valid JSON",
            "fix the JSON at the line and column named".to_string(),
        ),
        _ => (
            "the JSON body is not of this endpoint's shape",
            format!("unknown fields are refused, not ignored; {SEE_SCHEMA}"),
        ),
    };
    let message = format!("{what}: {}", detail(&rejection.body_text()));
    Err(ApiError(Error::new(Code::BadRequest, message).with_hint(hint)))
}

/// Rewrites every number of `value` that is a whole number written with a
/// fraction or an exponent (`2.0`, `1e3`) as an integer; true if any was.
fn whole_numbers_as_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) else {
                return false;
            };
            // Within these bounds an integral f64 converts exactly.
            let integer = if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                serde_json::Number::from(f as u64)
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                serde_json::Number::from(f as i64)
            } else {
                return false;
            };
            *n = integer;
            true
        }
        // Every member is visited: not `any`, which would stop at the first.
        Value::Array(items) => {
            items
                .iter_mut()
                .map(whole_numbers_as_integers)
                .filter(|&changed| changed)
                .count()
                > 0
        }
        Value::Object(map) => {
            map.values_mut()
                .map(whole_numbers_as_integers)
                .filter(|&changed| changed)
                .count()
                > 0
        }
        _ => false,
    }
}

/// What an axum rejection's text says past its generic opening
/// ("Failed to deserialize ...: <what serde said>").
fn detail(body_text: &str) -> &str {
    body_text.split_once(": ").map_or(body_text, |(_, detail)| detail)
}

/// The whole request body. One over the router's body limit answers 413
/// `payload_too_large`; one that breaks off answers 400 `bad_request`.
pub struct WholeBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for WholeBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(WholeBody(bytes)),
            Err(BytesRejection::FailedToBufferBody(
                axum::extract::rejection::FailedToBufferBody::LengthLimitError(e),
            )) => Err(ApiError(
                Error::new(
                    Code::PayloadTooLarge,
                    format!("the request body is too large: {}", detail(&e.body_text())),
                )
                .with_hint("the size limits are described in /v1/openapi.json"),
            )),
            Err(e) => Err(ApiError(Error::new(
                Code::BadRequest,
                format!("the request body could not be read: {}", detail(&e.body_text())),
            ))),
        }
    }
}

/// Path parameters. The routes' parameters are plain strings, so this
/// fails only on a parameter that is not UTF-8 once percent-decoded.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) if !e.status().is_server_error() => {
                Err(ApiError(
                    Error::new(
                        Code::BadRequest,
                        format!("the path is not valid: {}", detail(&e.body_text())),
                    )
                    .with_hint(format!("percent-encode names as UTF-8; {SEE_SCHEMA}")),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e.body_text(), "path parameters missing");
                Err(ApiError(Error::new(Code::Internal, e.body_text())))
            }
        }
    }
}

/// Query parameters; a value of the wrong type (or given twice) answers
/// 400 `bad_request` naming it.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| {
                ApiError(
                    Error::new(
                        Code::BadRequest,
                        format!("the query string is not valid: {}", detail(&e.body_text())),
                    )
                    .with_hint(SEE_SCHEMA),
                )
            })
    }
}

/// Middleware: an error answer (status 400 or above) that is not JSON is
/// put into Gale's shape, with the code its status stands for and its text
/// as the message. The headers stay (a 405's `Allow` among them).
pub async fn json_errors(request: Request, next: Next) -> axum::response::Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let code = match status.as_u16() {
        401 => Code::Unauthorized,
        403 => Code::Forbidden,
        404 => Code::EndpointNotFound,
        405 => Code::MethodNotAllowed,
        409 => Code::Conflict,
        413 => Code::PayloadTooLarge,
        415 => Code::UnsupportedMediaType,
        500.. => Code::Internal,
        _ => Code::BadRequest,
    };
    if code == Code::Internal {
        tracing::error!(%status, message, "an answer of the admin API was not in Gale's shape");
    }
    let mut answer = ApiError(Error::new(code, message).with_hint(SEE_SCHEMA)).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// A new request (or invocation) id: a UUIDv7, so ids sort by time.
pub fn request_id() -> String {
    use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
    // Ids stay in order per thread. `Uuid::now_v7` orders them process-wide
    // through one mutex, which every request of every worker would take.
    thread_local! {
        static CONTEXT: ContextV7 = const { ContextV7::new() };
    }
    let now = uuid::Timestamp::now(ThreadLocalContext::new(&CONTEXT));
    uuid::Uuid::new_v7(now).simple().to_string()
}

pub fn with_request_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// An answer of Gale's own (small JSON documents), read whole.
pub async fn from_axum(response: axum::response::Response) -> Response<Body> {
    let (parts, body) = response.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(parts, full(body.to_bytes())),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

/// The client's address, as a request extension of requests to process
/// functions (their API Gateway event names it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        count: u64,
        #[serde(default)]
        nested: Vec<i32>,
        #[serde(default)]
        ratio: f64,
    }

    fn json(text: &str) -> Result<Sample, Error> {
        parse_json::<Sample>(text.as_bytes())
            .map(|Json(s)| s)
            .map_err(|ApiError(e)| e)
    }

    #[test]
    fn whole_numbers_written_as_decimals_are_integers() {
        let s = json(r#"{"count": 2.0, "nested": [-3.0, 4], "ratio": 1.0}"#).unwrap();
        assert_eq!((s.count, s.nested, s.ratio), (2, vec![-3, 4], 1.0));
        assert_eq!(json(r#"{"count": 1e3}"#).unwrap().count, 1000);
        // A fraction stays a fraction, and the error names what was sent.
        let e = json(r#"{"count": 2.5}"#).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        assert!(
            e.message.contains("count") && e.message.contains("2.5"),
            "{}",
            e.message
        );
        // Beyond the integers a field can hold, no rewriting helps.
        let e = json(r#"{"count": -1.0}"#).unwrap_err();
        assert!(e.message.contains("count"), "{}", e.message);
    }

    #[test]
    fn json_errors_say_what_and_where() {
        let e = json(r#"{"count": 1, "cuont": 2}"#).unwrap_err();
        assert!(e.message.contains("unknown field `cuont`"), "{}", e.message);
        let e = json(r#"{"count": 1"#).unwrap_err();
        assert!(
            e.message.starts_with("the body is not valid JSON"),
            "{}",
            e.message
        );
        let e = json(r#"{"count": "1"}"#).unwrap_err();
        assert!(e.message.contains("count: invalid type"), "{}", e.message);
    }

    async fn answer(
        app: Router,
        request: http::Request<axum::body::Body>,
    ) -> (StatusCode, http::HeaderMap, Error) {
        let response = app.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        assert_eq!(parts.headers[header::CONTENT_TYPE], "application/json");
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        (parts.status, parts.headers, body.error)
    }

    /// What axum answers in plain text reaches the client in Gale's shape
    /// when `json_errors` is around it, with its headers.
    #[tokio::test]
    async fn plain_error_answers_are_put_into_the_shape() {
        #[derive(serde::Deserialize)]
        struct Page {
            #[allow(dead_code)]
            limit: u32,
        }
        let app = Router::new()
            .route("/page", get(|_: axum::extract::Query<Page>| async { "ok" }))
            .route("/only-post", post(|| async { "ok" }))
            .layer(axum::middleware::from_fn(json_errors));
        let request = |method: &str, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };

        let (status, _, e) = answer(app.clone(), request("GET", "/page?limit=x")).await;
        assert_eq!((status, e.code), (StatusCode::BAD_REQUEST, Code::BadRequest));
        assert!(e.message.contains("limit"), "{}", e.message);

        let (status, headers, e) = answer(app.clone(), request("GET", "/only-post")).await;
        assert_eq!(
            (status, e.code),
            (StatusCode::METHOD_NOT_ALLOWED, Code::MethodNotAllowed)
        );
        assert_eq!(headers[header::ALLOW], "POST");

        let (status, _, e) = answer(app, request("GET", "/nothing")).await;
        assert_eq!((status, e.code), (StatusCode::NOT_FOUND, Code::EndpointNotFound));
    }
}
