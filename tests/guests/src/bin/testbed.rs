//! One component, many behaviours chosen by path, so tests can deploy it as
//! several functions with different limits.

use std::sync::atomic::{AtomicU64, Ordering};
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

static SERVED: AtomicU64 = AtomicU64::new(0);

fn query(request: &Request<Body>, key: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn text(status: u16, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(body.into())?)
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let path = request.uri().path().to_string();
    let last = path.rsplit('/').next().unwrap_or("").to_string();
    match last.as_str() {
        "echo" => {
            let body = request.body_mut().contents().await?.to_vec();
            let method = request.method().to_string();
            let params: Vec<String> = request
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("x-gale-"))
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("")))
                .collect();
            Ok(Response::builder()
                .header("x-method", method)
                .header("x-gale-headers", params.join(";"))
                .body(body.into())?)
        }
        "env" => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            text(200, vars.join("\n"))
        }
        "fs" => match std::fs::read_to_string("/etc/passwd") {
            Ok(_) => text(200, "read /etc/passwd".into()),
            Err(e) => text(403, format!("no file access: {e}")),
        },
        "trap" => {
            eprintln!("about to fail");
            panic!("deliberate failure");
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "hog" => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                chunks.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&chunks);
            }
        }
        "sleep" => {
            let ms: u64 = query(&request, "ms").and_then(|v| v.parse().ok()).unwrap_or(50);
            wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
            text(200, format!("slept {ms}ms"))
        }
        "outbound" => {
            let url = query(&request, "url").unwrap_or_default();
            let req = Request::get(url).body(Body::empty())?;
            match Client::new().send(req).await {
                Ok(resp) => text(200, format!("upstream answered {}", resp.status())),
                Err(e) => text(502, format!("outbound failed: {e:?}")),
            }
        }
        "print" => {
            let n: usize = query(&request, "n").and_then(|v| v.parse().ok()).unwrap_or(10);
            for i in 0..n {
                println!("line {i} of output from the guest");
            }
            text(200, format!("printed {n} lines"))
        }
        "count" => text(200, served.to_string()),
        // Publishes the body to the topic named by `?topic=`, then answers
        // with the status named by `?status=` (default 201).
        "publish" => {
            let topic = query(&request, "topic").unwrap_or_default();
            let status: u16 = query(&request, "status").and_then(|v| v.parse().ok()).unwrap_or(201);
            let body = request.body_mut().contents().await?.to_vec();
            let event = gale_sdk::Event::new("published").with_json(&serde_json::json!({
                "body": String::from_utf8_lossy(&body),
            }));
            match gale_sdk::publish(&topic, event) {
                Ok(()) => text(status, format!("published to {topic}")),
                Err(e) => text(400, format!("publish failed: {e}")),
            }
        }
        // An event, delivered as a binary-mode CloudEvent: prints it, then
        // behaves as its type says.
        "" if request.headers().contains_key("ce-id") => {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (id, ty) = (header("ce-id"), header("ce-type"));
            let body = request.body_mut().contents().await?.to_vec();
            println!("event {id} {ty} {}", String::from_utf8_lossy(&body));
            match ty.as_str() {
                "fail" => text(500, format!("refusing event {id}")),
                "hang" => {
                    wstd::task::sleep(wstd::time::Duration::from_secs(600)).await;
                    text(200, "woke up".into())
                }
                "slow" => {
                    wstd::task::sleep(wstd::time::Duration::from_millis(20)).await;
                    text(200, format!("handled {id} slowly"))
                }
                // Tells a recorder (RECORD_URL) it handled the event, slowly;
                // fails if the recorder did not hear it.
                "record" => {
                    wstd::task::sleep(wstd::time::Duration::from_millis(10)).await;
                    let url = std::env::var("RECORD_URL").unwrap_or_default();
                    let req = Request::post(url).body(Body::from(id.clone()))?;
                    match Client::new().send(req).await {
                        Ok(resp) if resp.status().is_success() => text(200, format!("recorded {id}")),
                        Ok(resp) => text(500, format!("recorder answered {}", resp.status())),
                        Err(e) => text(500, format!("recorder unreachable: {e:?}")),
                    }
                }
                _ => text(200, format!("handled {id}")),
            }
        }
        _ => text(200, format!("testbed at {path}")),
    }
}
