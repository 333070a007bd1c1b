//! The admin API keeps the promise of its OpenAPI document: every answer,
//! errors included, is what `/v1/openapi.json` says it is.
//!
//! Two kinds of test. The first asks for the cases a client gets wrong most
//! (a body that is not JSON, the wrong content type, an unknown field, an
//! unknown endpoint, the wrong method, ...) and checks each answer's shape
//! and code. The second hands the document to schemathesis, which reads it,
//! generates requests (valid ones and ones that break the schema on
//! purpose) and checks every answer against the document; it must find
//! nothing. It runs against a real node with an app deployed, a topic with
//! an event and a publish token, so the operations that answer with data
//! are checked with data.

mod common;

use common::TestNode;
use gale_core::Code;
use gale_core::error::ErrorBody;
use std::time::Duration;

/// The schemathesis release the test is written against (`.ci/run`
/// installs it).
const SCHEMATHESIS: &str = "4.32.5";

/// Checks that `response` is an error answer in Gale's shape with `code`
/// (and its status), and returns it.
async fn expect_error(
    response: reqwest::Response,
    code: Code,
) -> (reqwest::header::HeaderMap, gale_core::Error) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status}: {text}"
    );
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body.error.code, code, "{text}");
    assert_eq!(status, code.http_status(), "{text}");
    assert!(!body.error.message.is_empty(), "{text}");
    (headers, body.error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_json_error_with_a_stable_code() {
    let node = TestNode::start().await;
    let url = |path: &str| format!("{}{path}", node.admin);
    let post = |path: &str| node.http.post(url(path)).bearer_auth(&node.token);

    // Malformed JSON.
    let r = post("/v1/tokens")
        .header("content-type", "application/json")
        .body(r#"{"publish": ["orders""#)
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
    assert!(e.hint.is_some());

    // A body of the wrong content type, and one without any.
    let r = post("/v1/tokens")
        .header("content-type", "text/plain")
        .body(r#"{"publish": ["orders"]}"#)
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::UnsupportedMediaType).await;
    assert!(e.message.contains("text/plain"), "{}", e.message);
    assert!(e.hint.unwrap().contains("application/json"));
    let r = post("/v1/tokens")
        .body(r#"{"publish": ["orders"]}"#)
        .send()
        .await
        .unwrap();
    expect_error(r, Code::UnsupportedMediaType).await;

    // An unknown field, at the top and nested in a manifest: named, not ignored.
    let r = post("/v1/tokens")
        .json(&serde_json::json!({ "publish": ["orders"], "pubilsh": ["other"] }))
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(e.message.contains("pubilsh"), "{}", e.message);
    let r = post("/v1/apps/shop/deploy")
        .json(&serde_json::json!({
            "manifest": { "app": { "name": "shop" }, "functions": { "f": { "source": "f.wasm", "tiemout": "5s" } } },
            "artifacts": {},
        }))
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(
        e.message.contains("tiemout") && e.message.contains("manifest.functions.f"),
        "{}",
        e.message
    );

    // A field of the wrong type.
    let r = post("/v1/functions/f/rollback")
        .json(&serde_json::json!({ "version": "one" }))
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(e.message.contains("version"), "{}", e.message);

    // A query parameter of the wrong type.
    let r = node
        .http
        .get(url("/v1/topics/orders/events?limit=many"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(e.message.contains("query"), "{}", e.message);

    // An unknown endpoint, with the token and without.
    for token in [Some(node.token.as_str()), None] {
        let mut request = node.http.get(url("/v1/functionz"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (_, e) = expect_error(request.send().await.unwrap(), Code::EndpointNotFound).await;
        assert!(e.message.contains("/v1/functionz"), "{}", e.message);
    }

    // The wrong method: 405 with the methods the path takes.
    let r = node
        .http
        .delete(url("/v1/tokens"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    let (headers, _) = expect_error(r, Code::MethodNotAllowed).await;
    let allow = headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let r = node.http.post(url("/v1/health")).send().await.unwrap();
    let (headers, _) = expect_error(r, Code::MethodNotAllowed).await;
    assert!(headers["allow"].to_str().unwrap().contains("GET"));

    // A body over the limit.
    let big = format!(r#"{{"publish": ["{}"]}}"#, "a".repeat(9 << 20));
    let r = post("/v1/tokens")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::PayloadTooLarge).await;
    assert!(e.hint.is_some());
    // ...which is the JSON bodies' limit: artifacts may be larger.
    let artifact = vec![7u8; 9 << 20];
    let r = node
        .http
        .put(url(&format!(
            "/v1/artifacts/{}",
            gale_store::digest_of(&artifact)
        )))
        .bearer_auth(&node.token)
        .body(artifact)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Things that are not there.
    let r = node
        .http
        .get(url(&format!("/v1/artifacts/sha256:{}", "0".repeat(64))))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    expect_error(r, Code::ArtifactNotFound).await;
    let r = node
        .http
        .delete(url("/v1/tokens/0123456789ab"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    expect_error(r, Code::TokenNotFound).await;
    let r = node
        .http
        .get(url("/v1/invocations/0197a3c5d2e47a6b8c9d0e1f2a3b4c5d"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    expect_error(r, Code::InvocationNotFound).await;

    // A topic's settings are optional; sent without a content type they
    // are refused rather than dropped, and out of range they are refused.
    let put = |body: &'static str| {
        node.http
            .put(url("/v1/topics/orders"))
            .bearer_auth(&node.token)
            .body(body)
    };
    assert_eq!(put("").send().await.unwrap().status(), 200);
    expect_error(
        put(r#"{"retention": "1d"}"#).send().await.unwrap(),
        Code::UnsupportedMediaType,
    )
    .await;
    let r = put(r#"{"retention": "10ms"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let (_, e) = expect_error(r, Code::BadRequest).await;
    assert!(e.message.contains("retention"), "{}", e.message);
    let r = put(r#"{"retention": "1d"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An invoke path that no request could have.
    let r = post("/v1/functions/nobody/invoke")
        .json(&serde_json::json!({ "path": "no-slash" }))
        .send()
        .await
        .unwrap();
    expect_error(r, Code::BadRequest).await;
}

/// The document's error codes are exactly the codes Gale has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_error_code() {
    let node = TestNode::start().await;
    let doc: serde_json::Value = node
        .http
        .get(format!("{}/v1/openapi.json", node.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> =
        doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, codes);
    let description = doc["info"]["description"].as_str().unwrap();
    for code in Code::ALL {
        assert!(
            description.contains(&format!("`{code}` ({})", code.http_status())),
            "the description does not explain {code}"
        );
    }
}

/// What schemathesis checks, and where it is told to expect less.
///
/// Checks: no 5xx; every status, content type, response header and body
/// as documented; data that breaks the schema refused (4xx), valid data
/// accepted (2xx, or 404/409 for what is not there or clashes); requests
/// without the token refused; undocumented methods answered 405 with
/// `Allow`; `Allow` listing exactly the documented methods.
///
/// Valid data is not expected to be accepted where validity is more than a
/// JSON schema can say: an artifact's bytes must hash to its digest, a
/// deploy names uploaded artifacts and a manifest whose routes do not
/// clash, a published body must be a CloudEvent, and a topic's or a
/// bucket's settings are durations and sizes in words ("7d", "1GiB"). Those operations are still
/// checked for everything else, negative data included.
const CONFIG: &str = r#"
[generation]
database = "none"

[checks]
enabled = false

[checks.not_a_server_error]
enabled = true
[checks.status_code_conformance]
enabled = true
[checks.content_type_conformance]
enabled = true
[checks.response_headers_conformance]
enabled = true
[checks.response_schema_conformance]
enabled = true
[checks.negative_data_rejection]
enabled = true
[checks.positive_data_acceptance]
enabled = true
[checks.ignored_auth]
enabled = true
[checks.unsupported_method]
enabled = true
[checks.allow_header_conformance]
enabled = true

[[operations]]
include-operation-id = ["putArtifact", "deploy", "publish", "putTopic", "putBucket"]
checks.positive_data_acceptance.enabled = false

# An invocation id cannot be guessed: the record the test made is asked for.
[[operations]]
include-operation-id = "showInvocation"
parameters = { "path.id" = "${GALE_INVOCATION_ID}" }
"#;

/// The app the property-based run finds deployed (the document's examples
/// name it: function `hello`, topic `orders`): a function with a route,
/// an event trigger, a dead-letter topic and a schedule (a source), on a
/// short timeout so a generated request cannot hold the run up.
const APP: &str = r#"
[app]
name = "demo"

[topics.orders]

[buckets.uploads]

[functions.hello]
source = "testbed.wasm"
timeout = "2s"
http = [{ route = "GET /hello/{name}" }]

[[functions.hello.events]]
topic = "orders"
dead_letter = "orders-dlq"
max_attempts = 1

[[functions.hello.schedule]]
cron = "0 0 0 1 1 *"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let version = std::process::Command::new("st").arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!(
            "schemathesis is not installed (its `st` command is not on PATH); install it with \
             `python3 -m pip install schemathesis=={SCHEMATHESIS}` (.ci/run does)"
        ),
    };
    if !version.ends_with(SCHEMATHESIS) {
        eprintln!("note: this test is written against schemathesis {SCHEMATHESIS}; found {version}");
    }

    let node = TestNode::start().await;
    node.deploy(APP).await.unwrap();
    let publish = node
        .http
        .post(format!("{}/v1/topics/orders/events", node.admin))
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion": "1.0", "id": "1", "source": "/shop", "type": "order_placed", "data": {"sku": "apple"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 202);
    // The artifact the document's example digest names (of "hello").
    let artifact = node
        .http
        .put(format!(
            "{}/v1/artifacts/{}",
            node.admin,
            gale_store::digest_of(b"hello")
        ))
        .bearer_auth(&node.token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.status(), 201);
    let token = node
        .http
        .post(format!("{}/v1/tokens", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "publish": ["orders"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 201);
    // An invocation, so the function has logs, and an asynchronous one,
    // so there is an invocation record.
    assert_eq!(node.get("/hello/ada").await.0, 200);
    let invocation: serde_json::Value = node
        .http
        .post(node.url("/_gale/functions/hello/invocations?mode=async"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let invocation_id = invocation["invocation_id"].as_str().unwrap().to_string();
    node.logs("hello", 2).await;

    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let seed = std::env::var("GALE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("GALE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".into());
    let mut command = tokio::process::Command::new("st");
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/v1/openapi.json", node.admin))
        .args(["--header", &format!("Authorization: Bearer {}", node.token)])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        // One worker: with two threads, CPython 3.11's `ast.parse` (which
        // hypothesis calls to describe its strategies) now and then fails
        // with "AST constructor recursion depth mismatch", an error of the
        // tool, not a finding.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        // The run's own files (reports, caches) go to a directory that goes.
        .env("GALE_INVOCATION_ID", &invocation_id)
        .current_dir(work.path())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(170), command.output())
        .await
        .expect("schemathesis ran for over 170 s")
        .expect("schemathesis starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}\nschemathesis took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems (seed {seed}; its report is above):\n{stdout}\n{stderr}"
    );
}
