//! Requests served whole, through `gale:http/handler`.
//!
//! A `wasi:http/proxy` component that also exports `gale:http/handler`
//! (every `gale_sdk::http` handler does) takes its request in one call and
//! returns its answer from it: method, path, a block of header lines and the
//! body go in; status, header lines and body come out. Through `wasi:http`
//! the same exchange is a dozen calls between host and guest, each with its
//! resource-table work (the request's fields, the response, its body, the
//! body's stream, the outparam), and on a reused instance those calls are
//! most of what the host itself does per request, beside the guest's own
//! work and the kernel's. The component still runs anywhere else through
//! `wasi:http`; Gale prefers this export when it is there.

use crate::host::Host;
use crate::{
    AbortOnDrop, Answer, DoneFn, Elapsed, Failure, Finish, Prepared, Warm, outcome_of, trap_failure, within,
};
use bytes::Bytes;
use gale_core::api::Outcome;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "gale:http/http-handler",
        exports: { default: async },
    });
}

pub(crate) use bindings::HttpHandler;
pub(crate) use bindings::HttpHandlerPre;
use bindings::exports::gale::http::handler::{Request, Response};

/// Serves `request` with an instance of `prepared` through its
/// `gale:http/handler` export; see [`crate::proxy::serve`], whose contract this
/// keeps. The guest has ended when this returns: nothing streams.
pub(crate) async fn serve<B>(
    prepared: Arc<Prepared>,
    pre: HttpHandlerPre<Host>,
    request: hyper::Request<B>,
    timeout: Duration,
    started: Instant,
    done: DoneFn,
    meter: Arc<crate::cpu::Meter>,
) -> Result<Answer, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (mut store, warm, uses, stdout, stderr) = prepared.next_store(&meter);
    let mut finish = Finish {
        done: Some(done),
        started,
        meter,
        stdout,
        stderr,
        answer: Arc::default(),
    };
    let handler = match warm {
        Some(Warm::Whole(h)) => Some(h),
        _ => None,
    };
    let (parts, body) = request.into_parts();
    let headers = header_block(&mut store, &parts.headers);
    let run = async {
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return Ok(Err(Failure::Body(e.into().to_string()))),
        };
        let request = Request {
            method: parts.method.as_str().to_string(),
            path_with_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            headers,
            body: body.into(),
        };
        let handler = match handler {
            Some(h) => h,
            None => pre.instantiate_async(&mut store).await?,
        };
        let response = handler
            .gale_http_handler()
            .call_handle(&mut store, &request)
            .await?;
        wasmtime::Result::Ok(Ok((handler, response)))
    };
    let failure = match within(started + timeout, run).await {
        Ok(Ok(Ok((handler, response)))) => {
            let (response, refused) = match to_hyper(&mut store, response) {
                Ok(response) => (response, None),
                Err(message) => {
                    // As `gale_sdk::http` does over wasi:http: a 500 that says why.
                    finish.stderr.push(format!("{message}\n").as_bytes());
                    (
                        text(StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")),
                        Some(message),
                    )
                }
            };
            finish.answer.status.store(response.status().as_u16(), Relaxed);
            let outbox = match store.data_mut().events.as_mut() {
                Some(host) => host.take_outbox(),
                None => Vec::new(),
            };
            prepared.keep_idle(store, Warm::Whole(handler), uses + 1);
            let outcome = if refused.is_some() {
                Outcome::Error
            } else {
                Outcome::Ok
            };
            finish.finish(outcome, refused, outbox);
            return Ok(Answer {
                response,
                guard: AbortOnDrop(None),
            });
        }
        Ok(Ok(Err(unreadable))) => unreadable,
        Ok(Err(e)) => trap_failure(&e, &prepared.spec),
        Err(Elapsed) => Failure::Timeout,
    };
    let (outcome, error) = outcome_of(Some(&failure), timeout);
    finish.finish(outcome, error, Vec::new());
    Err(failure)
}

/// The request's headers as the guest gets them: `name: value\n` each,
/// without those the host never shows a guest (as `wasi:http` does).
fn header_block(store: &mut Store<Host>, headers: &http::HeaderMap) -> Vec<u8> {
    let http = store.data_mut().http();
    let mut block = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        if http.hooks.is_forbidden_header(name) {
            continue;
        }
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.push(b'\n');
    }
    block
}

/// The guest's answer as a hyper response, or why it cannot be sent.
fn to_hyper(
    store: &mut Store<Host>,
    response: Response,
) -> Result<hyper::Response<crate::HyperOutgoingBody>, String> {
    let status = StatusCode::from_u16(response.status)
        .map_err(|_| format!("the function answered with an invalid status {}", response.status))?;
    let mut answer = hyper::Response::new(full(response.body));
    *answer.status_mut() = status;
    let http = store.data_mut().http();
    let headers = answer.headers_mut();
    let invalid = |why: String| format!("the function's response has an invalid header: {why}");
    for line in response.headers.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(invalid(format!(
                "{:?} is not a `name: value` line",
                String::from_utf8_lossy(line)
            )));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        let name = HeaderName::from_bytes(name).map_err(|_| {
            invalid(format!(
                "{:?} is not a header name",
                String::from_utf8_lossy(name)
            ))
        })?;
        if http.hooks.is_forbidden_header(&name) {
            return Err(invalid(format!("{name} is set by the host")));
        }
        // The host counts the body itself.
        if name == header::CONTENT_LENGTH {
            continue;
        }
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| invalid(format!("the value of {name} is not a valid header value")))?;
        headers.append(name, value);
    }
    Ok(answer)
}

fn full(body: Vec<u8>) -> crate::HyperOutgoingBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, message: String) -> hyper::Response<crate::HyperOutgoingBody> {
    let mut r = hyper::Response::new(full(message.into_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    //! The test guest written with `gale_sdk::http` answers the same served
    //! whole as over `wasi:http` (as `wasmtime serve` and other hosts run
    //! it), request by request.

    use super::*;
    use crate::{Kind, Runtime, RuntimeConfig};
    use std::path::Path;

    /// Builds the test guests, as the node's integration tests do.
    fn sdk_guest() -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/guests");
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--workspace",
                "--quiet",
            ])
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the test guests failed");
        std::fs::read(dir.join("target/wasm32-wasip2/release/gale_test_http_sdk.wasm")).unwrap()
    }

    async fn answer(
        prepared: &Arc<Prepared>,
        request: hyper::Request<Full<Bytes>>,
    ) -> (u16, Vec<(String, String)>, Bytes) {
        let answer = crate::serve(prepared.clone(), request, Duration::from_secs(5), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        let (parts, body) = answer.response.into_parts();
        let mut headers: Vec<_> = parts
            .headers
            .iter()
            .filter(|(n, _)| *n != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        (
            parts.status.as_u16(),
            headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn served_whole_as_over_wasi_http() {
        let cache = std::env::temp_dir().join(format!("gale-wasm-whole-{}", std::process::id()));
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: cache.clone(),
            max_instances: 8,
        })
        .unwrap();
        runtime.compile("sha256:sdk", &sdk_guest()).unwrap();
        let manifest = gale_core::Manifest::from_toml(
            "[app]\nname = \"t\"\n[functions.sdk]\nsource = \"sdk.wasm\"\ninstance_reuse = 4\n",
            "gale.toml",
        )
        .unwrap();
        let spec = Arc::new(manifest.functions["sdk"].clone());
        let whole = Arc::new(runtime.load("sha256:sdk", spec.clone(), None).unwrap());
        let mut wasi = runtime.load("sha256:sdk", spec, None).unwrap();
        assert!(matches!(whole.kind, Kind::Http { whole: Some(_), .. }));
        if let Kind::Http { whole, .. } = &mut wasi.kind {
            *whole = None;
        }
        let wasi = Arc::new(wasi);

        let request = |method: &str, uri: &str, headers: &[(&str, &str)], body: &'static str| {
            let mut r = hyper::Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "localhost");
            for (n, v) in headers {
                r = r.header(*n, *v);
            }
            r.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()
        };
        let cases = [
            (
                "POST",
                "/items/7/inspect?a=1&q=hi",
                vec![("x-test", "yes"), ("x-gale-param-id", "7")],
                "the body",
            ),
            ("GET", "/sdk/status", vec![], ""),
            ("GET", "/sdk/big?n=100000", vec![], ""),
            ("POST", "/sdk/json", vec![], r#"{"a":[1,2]}"#),
            ("POST", "/sdk/json", vec![], r#"{"a":"#),
            ("GET", "/sdk/bad-header", vec![], ""),
            ("GET", "/sdk/forbidden-header", vec![], ""),
            ("GET", "/sdk/injected-header", vec![], ""),
        ];
        // Twice: the second round runs on reused instances.
        for _ in 0..2 {
            for (method, uri, headers, body) in &cases {
                let over_wasi = answer(&wasi, request(method, uri, headers, body)).await;
                let served_whole = answer(&whole, request(method, uri, headers, body)).await;
                if uri.ends_with("-header") {
                    // Refused either way; the hosts word why differently.
                    for (status, _, text) in [&served_whole, &over_wasi] {
                        assert_eq!(*status, 500, "{uri}");
                        assert!(String::from_utf8_lossy(text).contains("invalid header"), "{uri}");
                    }
                } else {
                    assert_eq!(served_whole, over_wasi, "{method} {uri}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(cache);
    }
}
