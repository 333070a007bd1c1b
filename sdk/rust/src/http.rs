//! HTTP functions (`wasi:http/proxy` components) without an async runtime.
//!
//! A handler is a plain function from [`Request`] to [`Response`], exported
//! with [`http_handler!`](crate::http_handler):
//!
//! ```ignore
//! use gale_sdk::http::{Request, Response};
//!
//! struct Hello;
//!
//! impl gale_sdk::http::Handler for Hello {
//!     fn handle(request: Request) -> Response {
//!         let name = request.param("name").unwrap_or_else(|| "world".into());
//!         Response::text(200, format!("Hello, {name}!\n"))
//!     }
//! }
//!
//! gale_sdk::http_handler!(Hello);
//! ```
//!
//! The result is an ordinary `wasi:http/proxy` component: it runs under
//! `wasmtime serve` as it does under Gale. It also exports
//! `gale:http/handler`, through which Gale hands it the request whole and
//! takes the answer in the same call, instead of the dozen calls between
//! host and guest that `wasi:http` takes (see `wit/deps/gale-http`).
//!
//! Why a second way to write HTTP functions when async crates such as
//! `wstd` exist: most handlers read a request and write one answer, and for
//! them an executor, a reactor and a typed copy of every header are pure
//! overhead. Over `wasi:http` the request is read only as far as the handler
//! asks (a header is one host call, nothing is parsed up front) and the
//! answer goes out with a `content-length` in as few calls as its size
//! allows; under Gale the whole exchange is one call. Gale's `http`
//! benchmark measures a greeter written this way against the same greeter
//! on `wstd`.

#[doc(hidden)]
pub use wasip2 as __wasip2;

#[doc(hidden)]
pub mod __whole {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gale:http/http-handler",
        pub_export_macro: true,
        export_macro_name: "export_whole",
        default_bindings_module: "gale_sdk::http::__whole",
    });
}

use __whole::exports::gale::http::handler as whole;

use std::cell::OnceCell;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// An HTTP function. `handle` runs once per request; a panic fails the
/// request with a 500 and the invocation log says why.
pub trait Handler {
    fn handle(request: Request) -> Response;
}

/// Exports `$handler` (a type implementing [`Handler`]) as the component's
/// `wasi:http/incoming-handler`, and as `gale:http/handler` for Gale.
#[macro_export]
macro_rules! http_handler {
    ($handler:ty) => {
        struct __GaleHttpHandler;

        impl $crate::http::__whole::exports::gale::http::handler::Guest for __GaleHttpHandler {
            fn handle(
                request: $crate::http::__whole::exports::gale::http::handler::Request,
            ) -> $crate::http::__whole::exports::gale::http::handler::Response {
                $crate::http::serve_whole::<$handler>(request)
            }
        }

        $crate::http::__whole::export_whole!(__GaleHttpHandler with_types_in $crate::http::__whole);

        impl $crate::http::__wasip2::exports::http::incoming_handler::Guest for __GaleHttpHandler {
            fn handle(
                request: $crate::http::__wasip2::http::types::IncomingRequest,
                out: $crate::http::__wasip2::http::types::ResponseOutparam,
            ) {
                $crate::http::serve::<$handler>(request, out)
            }
        }

        $crate::http::__wasip2::http::proxy::export!(
            __GaleHttpHandler with_types_in $crate::http::__wasip2
        );
    };
}

/// Runs `H` for one request over `wasi:http` and sends its answer. Used by
/// [`http_handler!`](crate::http_handler).
#[doc(hidden)]
pub fn serve<H: Handler>(request: IncomingRequest, out: ResponseOutparam) {
    let response = H::handle(Request(Source::Wasi {
        inner: request,
        headers: OnceCell::new(),
    }));
    response.send(out);
}

/// Runs `H` for one request handed over whole (`gale:http/handler`). Used
/// by [`http_handler!`](crate::http_handler).
#[doc(hidden)]
pub fn serve_whole<H: Handler>(request: whole::Request) -> whole::Response {
    H::handle(Request(Source::Whole(request))).into_whole()
}

/// A request. Over `wasi:http` each accessor asks the host for just that
/// part; from Gale the request arrives whole and accessors read it.
pub struct Request(Source);

enum Source {
    Wasi {
        inner: IncomingRequest,
        /// The headers resource, asked for on first use.
        headers: OnceCell<Fields>,
    },
    Whole(whole::Request),
}

/// The `name: value` lines of a header block (`gale:http/handler`).
fn header_lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|b| *b == b'\n').filter_map(|line| {
        let colon = line.iter().position(|b| *b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
    })
}

impl Request {
    /// The method, upper case (`GET`, `POST`, ...).
    pub fn method(&self) -> String {
        let inner = match &self.0 {
            Source::Wasi { inner, .. } => inner,
            Source::Whole(r) => return r.method.clone(),
        };
        match inner.method() {
            Method::Get => "GET".into(),
            Method::Head => "HEAD".into(),
            Method::Post => "POST".into(),
            Method::Put => "PUT".into(),
            Method::Delete => "DELETE".into(),
            Method::Connect => "CONNECT".into(),
            Method::Options => "OPTIONS".into(),
            Method::Trace => "TRACE".into(),
            Method::Patch => "PATCH".into(),
            Method::Other(m) => m,
        }
    }

    /// The path and query, e.g. `/hello/ada?lang=en`.
    pub fn path_with_query(&self) -> String {
        match &self.0 {
            Source::Wasi { inner, .. } => inner.path_with_query().unwrap_or_else(|| "/".into()),
            Source::Whole(r) => r.path_with_query.clone(),
        }
    }

    /// The path alone, without the query.
    pub fn path(&self) -> String {
        let mut p = self.path_with_query();
        if let Some(q) = p.find('?') {
            p.truncate(q);
        }
        p
    }

    /// A query parameter's raw value (not percent-decoded); `Some("")` for a
    /// bare `?flag`.
    pub fn query(&self, name: &str) -> Option<String> {
        let p = self.path_with_query();
        let (_, query) = p.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_string())
        })
    }

    /// The first value of header `name` (any case), as text. Values that are
    /// not UTF-8 read as absent; [`Request::header_bytes`] has them.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_bytes(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case), as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        match &self.0 {
            Source::Wasi { inner, headers } => headers
                .get_or_init(|| inner.headers())
                .get(&name.to_ascii_lowercase())
                .into_iter()
                .next(),
            Source::Whole(r) => header_lines(&r.headers)
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.to_vec()),
        }
    }

    /// Every header, in the order received.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        match &self.0 {
            Source::Wasi { inner, headers } => headers.get_or_init(|| inner.headers()).entries(),
            Source::Whole(r) => header_lines(&r.headers)
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                .collect(),
        }
    }

    /// A route parameter: for route `GET /hello/{name}`, `param("name")` on
    /// `/hello/ada` is `ada`. Gale passes them as `x-gale-param-<name>`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.header(&format!("x-gale-param-{name}"))
    }

    /// The whole body. Gale has already cut it at the function's `max_body`.
    pub fn body(self) -> Result<Vec<u8>, String> {
        let (inner, headers) = match self.0 {
            Source::Wasi { inner, headers } => (inner, headers),
            Source::Whole(r) => return Ok(r.body),
        };
        drop(headers);
        let body = inner
            .consume()
            .map_err(|()| "the request body was already taken".to_string())?;
        let mut data = Vec::new();
        {
            let stream = body
                .stream()
                .map_err(|()| "the request body stream was already taken".to_string())?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(format!(
                            "reading the request body failed: {}",
                            e.to_debug_string()
                        ));
                    }
                }
            }
        }
        drop(IncomingBody::finish(body));
        Ok(data)
    }

    /// The body as UTF-8 text.
    pub fn text(self) -> Result<String, String> {
        String::from_utf8(self.body()?).map_err(|e| format!("the request body is not UTF-8: {e}"))
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_slice(&self.body()?).map_err(|e| format!("the request body is not that JSON: {e}"))
    }
}

/// An answer: status, headers and a body sent whole.
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty answer with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` answer.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(serde_json::to_vec(value).unwrap_or_default())
    }

    /// Adds a header (names are sent lower case).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Response {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The answer as `gale:http/handler` returns it. A header that cannot
    /// be written as a `name: value` line makes it a 500 that says which,
    /// as a header the host refuses does over `wasi:http`.
    fn into_whole(self) -> whole::Response {
        let mut headers = Vec::with_capacity(self.headers.len() * 32);
        for (name, value) in &self.headers {
            if name.is_empty()
                || name.bytes().any(|b| matches!(b, b':' | b'\r' | b'\n'))
                || value.iter().any(|b| matches!(b, b'\r' | b'\n'))
            {
                let message = format!("the function's response has an invalid header: {name:?}\n");
                eprint!("{message}");
                return Response::text(500, message).into_whole();
            }
            headers.extend_from_slice(name.as_bytes());
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(value);
            headers.push(b'\n');
        }
        whole::Response {
            status: self.status,
            headers,
            body: self.body,
        }
    }

    fn send(mut self, out: ResponseOutparam) {
        self.headers.retain(|(n, _)| n != "content-length");
        self.headers
            .push(("content-length".into(), self.body.len().to_string().into_bytes()));
        let fields = match Fields::from_list(&self.headers) {
            Ok(f) => f,
            Err(e) => {
                // A header the host refuses (a bad name, a forbidden header):
                // answer 500 and say which.
                let message = format!("the function's response has an invalid header: {e:?}\n");
                eprint!("{message}");
                return Response::text(500, message).send(out);
            }
        };
        let response = OutgoingResponse::new(fields);
        // A new response is a 200 already: one host call fewer for most answers.
        if self.status != 200 && response.set_status_code(self.status).is_err() {
            eprintln!("the function answered with an invalid status {}", self.status);
            return Response::text(500, format!("invalid status {}\n", self.status)).send(out);
        }
        let body = response.body().expect("a new response's body is available");
        ResponseOutparam::set(out, Ok(response));
        {
            let stream = body.write().expect("a new body's stream is available");
            // blocking-write-and-flush takes at most 4096 bytes a call.
            for chunk in self.body.chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    // The client went away: nothing more to send.
                    return;
                }
            }
        }
        drop(OutgoingBody::finish(body, None));
    }
}
