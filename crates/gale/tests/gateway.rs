//! The gateway as a user meets it: routing, limits, failures, isolation.

mod common;

use common::{TestNode, testbed_app};
use gale_core::api::Outcome;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_params_not_found_and_wrong_method() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            (
                "echo",
                r#"http = [{ route = "POST /users/{id}/echo" }, { route = "GET /files/{*rest}" }]"#,
            ),
            ("other", r#"http = [{ route = "/other/echo" }]"#),
        ],
    ))
    .await
    .unwrap();

    let r = node
        .http
        .post(node.url("/users/42/echo"))
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-gale-request-id"));
    let seen = r.headers()["x-gale-headers"].to_str().unwrap().to_string();
    assert!(seen.contains("x-gale-param-id=42"), "{seen}");
    assert!(seen.contains("x-gale-route=/users/{id}/echo"), "{seen}");
    assert_eq!(r.text().await.unwrap(), "ping");

    let (status, _, body) = node.get("/files/a/b/c").await;
    assert_eq!((status, body.as_str()), (200, "testbed at /files/a/b/c"));

    // Any method on a route without one; x-gale-* headers come only from Gale.
    let r = node
        .http
        .delete(node.url("/other/echo"))
        .header("x-gale-param-admin", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-method"], "DELETE");
    let seen = r.headers()["x-gale-headers"].to_str().unwrap().to_string();
    assert!(!seen.contains("admin"), "a client forged a parameter: {seen}");

    let (status, headers, body) = node.get("/nowhere").await;
    assert_eq!(status, 404);
    assert!(headers.contains_key("x-gale-request-id"));
    assert!(body.contains("route_not_found"), "{body}");

    let (status, headers, _) = node.get("/users/42/echo").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");

    // HEAD is answered by a GET route, without a body.
    let head = node.http.head(node.url("/files/a")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.text().await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_route_that_takes_the_method_wins() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            ("all", r#"http = [{ route = "/a/{*rest}" }]"#),
            ("one", r#"http = [{ route = "GET /a/echo" }]"#),
            (
                "put",
                r#"http = [{ route = "PUT /b/{id}" }, { route = "/b/{id}/echo" }]"#,
            ),
        ],
    ))
    .await
    .unwrap();
    let route_of = |r: &reqwest::Response| {
        let seen = r.headers()["x-gale-headers"].to_str().unwrap().to_string();
        seen.split(';')
            .find_map(|h| h.strip_prefix("x-gale-route=").map(str::to_string))
            .unwrap_or_default()
    };
    // The static route takes GET; every other method falls to the catch-all.
    let get = node.http.get(node.url("/a/echo")).send().await.unwrap();
    assert_eq!(
        (get.status().as_u16(), route_of(&get)),
        (200, "/a/echo".to_string())
    );
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let r = node
            .http
            .request(method, node.url("/a/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), route_of(&r)),
            (200, "/a/{*rest}".to_string()),
            "the catch-all lost a request it matches"
        );
    }
    // A path no route of the method matches still names the methods that do.
    let r = node.http.get(node.url("/b/7")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("echo", "max_body = \"1KiB\"\nhttp = [{ route = \"/echo\" }]")],
    ))
    .await
    .unwrap();
    let ok = node
        .http
        .post(node.url("/echo"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let declared = node
        .http
        .post(node.url("/echo"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    // Chunked: no Content-Length, the limit bites while streaming.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 512])));
    let streamed = node
        .http
        .post(node.url("/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_a_500_with_the_reason_in_the_log() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("fails", "http = [{ route = \"/fails/trap\" }]")],
    ))
    .await
    .unwrap();
    let (status, headers, body) = node.get("/fails/trap").await;
    assert_eq!(status, 500, "{body}");
    let id = headers["x-gale-request-id"].to_str().unwrap().to_string();
    assert!(body.contains(&id), "the answer names the request: {body}");
    let logs = node.logs("fails", 1).await;
    let log = logs.iter().find(|l| l.request_id == id).unwrap();
    assert_eq!(log.outcome, Outcome::Error);
    assert_eq!(log.status, 500);
    assert!(log.stderr.contains("deliberate failure"), "{log:?}");
    assert!(log.error.as_deref().unwrap_or("").contains("trapped"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_stopped_at_its_limit() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("hog", "memory = \"16MiB\"\nhttp = [{ route = \"/hog\" }]")],
    ))
    .await
    .unwrap();
    let (status, _, _) = node.get("/hog").await;
    assert_eq!(status, 500);
    let log = &node.logs("hog", 1).await[0];
    assert_eq!(log.outcome, Outcome::Error);
    assert!(
        log.error
            .as_deref()
            .unwrap_or("")
            .contains("memory limit of 16.0 MiB"),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out_and_others_keep_serving() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            (
                "spin",
                "timeout = \"1500ms\"\nhttp = [{ route = \"/spin/loop\" }]",
            ),
            ("echo", "http = [{ route = \"/echo\" }]"),
        ],
    ))
    .await
    .unwrap();

    // Reference: echo with nothing else running.
    let quiet = hammer(&node, Duration::from_millis(700)).await;
    assert_eq!(quiet.failures, 0);

    let spinning = {
        let http = node.http.clone();
        let url = node.url("/spin/loop");
        tokio::spawn(async move {
            let started = Instant::now();
            let status = http.get(url).send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = hammer(&node, Duration::from_millis(700)).await;
    let (status, took) = spinning.await.unwrap();

    assert_eq!(status, 504);
    assert!(took < Duration::from_secs(3), "cut at its timeout, took {took:?}");
    // The loop holds one of the two cores, yet no echo request fails or
    // waits for the loop: the guest yields its thread every epoch tick.
    assert_eq!(busy.failures, 0);
    assert!(
        busy.slowest < Duration::from_millis(500),
        "an echo request waited {:?} beside the loop (alone: {:?})",
        busy.slowest,
        quiet.slowest
    );
    assert!(busy.served > 0);
    let log = node.logs("spin", 1).await;
    assert_eq!(log[0].outcome, Outcome::Timeout);
}

struct Load {
    served: usize,
    failures: usize,
    slowest: Duration,
}

/// Sends requests to /echo from 8 concurrent clients for `time`.
async fn hammer(node: &TestNode, time: Duration) -> Load {
    let deadline = Instant::now() + time;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = node.http.clone();
        let url = node.url("/echo");
        tasks.push(tokio::spawn(async move {
            let mut load = Load {
                served: 0,
                failures: 0,
                slowest: Duration::ZERO,
            };
            while Instant::now() < deadline {
                let started = Instant::now();
                match http.post(&url).body("x").send().await {
                    Ok(r) if r.status() == 200 => load.served += 1,
                    _ => load.failures += 1,
                }
                load.slowest = load.slowest.max(started.elapsed());
            }
            load
        }));
    }
    let mut total = Load {
        served: 0,
        failures: 0,
        slowest: Duration::ZERO,
    };
    for t in tasks {
        let l = t.await.unwrap();
        total.served += l.served;
        total.failures += l.failures;
        total.slowest = total.slowest.max(l.slowest);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_instances_requests_queue_then_get_429() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[(
            "slow",
            "max_instances = 2\nqueue = 1\nhttp = [{ route = \"/slow/sleep\" }]",
        )],
    ))
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let http = node.http.clone();
        let url = node.url("/slow/sleep?ms=400");
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").cloned())
        }));
    }
    let mut ok = 0;
    let mut throttled = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, retry_after) => {
                assert!(retry_after.is_some(), "429 carries Retry-After");
                throttled += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, throttled), (3, 3), "2 running + 1 queued succeed");
    assert_eq!(node.describe("slow").await.stats.throttled, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_of_100_runs_at_once() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("slow", "http = [{ route = \"/slow/sleep\" }]")],
    ))
    .await
    .unwrap();
    node.get("/slow/sleep?ms=1").await; // load the code: this test is about instances
    let started = Instant::now();
    let requests = (0..100).map(|_| node.http.get(node.url("/slow/sleep?ms=200")).send());
    let results = futures::future::join_all(requests).await;
    let took = started.elapsed();
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 200));
    // Serialised they would take 20 s; at once, one sleep plus overhead.
    assert!(
        took < Duration::from_millis(1500),
        "100 × 200ms sleeps took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sees_only_granted_env_no_files() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[(
            "probe",
            "env = { GREETING = \"hi\" }\nhttp = [{ route = \"/probe/{what}\" }]",
        )],
    ))
    .await
    .unwrap();
    let (_, _, env) = node.get("/probe/env").await;
    assert_eq!(env, "GREETING=hi", "the guest sees exactly its granted variables");
    let (status, _, body) = node.get("/probe/fs").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_only_to_allowed_hosts() {
    // A real upstream on loopback.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = upstream.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                }),
            ));
        }
    });
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            (
                "allowed",
                &format!("allow_outbound = [\"127.0.0.1:{port}\"]\nhttp = [{{ route = \"/a/outbound\" }}]"),
            ),
            ("denied", "http = [{ route = \"/d/outbound\" }]"),
        ],
    ))
    .await
    .unwrap();
    let target = format!("http://127.0.0.1:{port}/");
    let (status, _, body) = node.get(&format!("/a/outbound?url={target}")).await;
    assert_eq!((status, body.as_str()), (200, "upstream answered 200 OK"));
    let (status, _, body) = node.get(&format!("/d/outbound?url={target}")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the denied request never left the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instance_per_request_unless_reuse_is_granted() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            ("fresh", "http = [{ route = \"/fresh/count\" }]"),
            (
                "reused",
                "instance_reuse = 3\nhttp = [{ route = \"/reused/count\" }]",
            ),
        ],
    ))
    .await
    .unwrap();
    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for _ in 0..4 {
        fresh.push(node.get("/fresh/count").await.2);
        reused.push(node.get("/reused/count").await.2);
    }
    assert_eq!(fresh, ["1", "1", "1", "1"], "no state leaks between requests");
    assert_eq!(
        reused,
        ["1", "2", "3", "1"],
        "an instance serves 3 requests, then a fresh one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_disconnects_releases_its_instance() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[(
            "one",
            "max_instances = 1\nqueue = 5\ntimeout = \"20s\"\nhttp = [{ route = \"/one/{what}\" }]",
        )],
    ))
    .await
    .unwrap();
    let slow = node.http.get(node.url("/one/sleep?ms=10000")).send();
    let _ = tokio::time::timeout(Duration::from_millis(300), slow).await; // gives up, drops the connection
    let started = Instant::now();
    let (status, _, _) = node.get("/one/echo").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the abandoned request held the only instance for {:?}",
        started.elapsed()
    );
    let logs = node.logs("one", 2).await;
    assert_eq!(logs[0].outcome, Outcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app("web", &[("echo", "http = [{ route = \"/echo\" }]")]))
        .await
        .unwrap();
    let huge = "x".repeat(100 * 1024);
    let r = node
        .http
        .get(node.url("/echo"))
        .header("x-big", huge)
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // The node is fine.
    assert_eq!(node.get("/echo").await.0, 200);
}

/// `gale_sdk::http`: what a handler reads of the request, and what its
/// answer sends (status, headers, a body over several writes, errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_http_handlers_read_requests_and_answer() {
    let node = TestNode::start().await;
    node.deploy(
        "[app]\nname = \"sdk\"\n[functions.sdk]\nsource = \"gale_test_http_sdk.wasm\"\n\
         instance_reuse = 4\nmax_body = \"1KiB\"\n\
         http = [{ route = \"/items/{id}/inspect\" }, { route = \"/sdk/{*rest}\" }]\n",
    )
    .await
    .unwrap();

    let r = node
        .http
        .post(node.url("/items/7/inspect?a=1&q=hi"))
        .header("X-Test", "yes")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "method": "POST",
            "path": "/items/7/inspect",
            "path_with_query": "/items/7/inspect?a=1&q=hi",
            "query": "hi",
            "header": "yes",
            "param": "7",
            "body": "the body",
        })
    );

    let (status, headers, body) = node.get("/sdk/status").await;
    assert_eq!((status, body.as_str()), (418, ""));
    assert_eq!(headers["x-teapot"], "short and stout");
    assert_eq!(headers["content-length"], "0");

    // 100,000 bytes take 25 writes of at most 4,096; the length is declared.
    let (status, headers, body) = node.get("/sdk/big?n=100000").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "100000");
    assert!(body.len() == 100_000 && body.bytes().all(|b| b == b'x'));

    let json = |body: &'static str| node.http.post(node.url("/sdk/json")).body(body).send();
    let r = json(r#"{"a":[1,2]}"#).await.unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"got":{"a":[1,2]}}"#);
    let r = json(r#"{"a":"#).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not that JSON"));

    // A body over max_body: 413, whatever the handler would answer.
    let r = node
        .http
        .post(node.url("/sdk/json"))
        .body(vec![b' '; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A header the host refuses (a bad name, one the host sets itself, a
    // line break that would start another header): a 500 that says so, not
    // a hang or a trap.
    for path in ["/sdk/bad-header", "/sdk/forbidden-header", "/sdk/injected-header"] {
        let (status, headers, body) = node.get(path).await;
        assert_eq!(status, 500, "{path}");
        assert!(body.contains("invalid header"), "{path}: {body}");
        assert!(headers.get("x-injected").is_none());
    }

    // A panic fails the request; the log has the panic message.
    let (status, headers, _) = node.get("/sdk/panic").await;
    assert_eq!(status, 500);
    let id = headers["x-gale-request-id"].to_str().unwrap().to_string();
    let logs = node.logs("sdk", 7).await;
    let log = logs.iter().find(|l| l.request_id == id).unwrap();
    assert!(log.stderr.contains("the handler gave up"), "{log:?}");
    // The next request is served (an instance that trapped is never reused).
    let (status, _, _) = node.get("/sdk/status").await;
    assert_eq!(status, 418);
}
