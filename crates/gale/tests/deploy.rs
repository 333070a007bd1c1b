//! Deploys, versions, rollback, removal, restarts and the admin API's guard.

mod common;

use common::{TestNode, options, testbed_app};
use gale_core::Code;
use gale_core::api::VersionInfo;
use std::time::Duration;

fn greeter(greeting: &str) -> String {
    testbed_app(
        "web",
        &[(
            "greet",
            &format!("env = {{ GREETING = \"{greeting}\" }}\nhttp = [{{ route = \"/greet/env\" }}]"),
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_immutable_unchanged_deploys_change_nothing_rollback_switches() {
    let node = TestNode::start().await;
    let first = node.deploy(&greeter("hello")).await.unwrap();
    assert!(first.changed);
    assert_eq!(first.functions[0].version, 1);

    let again = node.deploy(&greeter("hello")).await.unwrap();
    assert!(!again.changed, "an unchanged app changes nothing");
    assert_eq!(again.functions[0].version, 1);

    let second = node.deploy(&greeter("bonjour")).await.unwrap();
    assert_eq!(second.functions[0].version, 2);
    assert_eq!(node.get("/greet/env").await.2, "GREETING=bonjour");

    let versions: Vec<VersionInfo> = node.admin_get("/v1/functions/greet/versions").await;
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.current))
            .collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );

    let r = node.rollback("greet", 1).await;
    assert_eq!(r.status(), 200);
    assert_eq!(node.get("/greet/env").await.2, "GREETING=hello");
    assert_eq!(node.describe("greet").await.version, 1);

    // Deploying v2's manifest again points back at v2: no new version of
    // old code.
    let forward = node.deploy(&greeter("bonjour")).await.unwrap();
    assert!(forward.changed);
    assert_eq!(forward.functions[0].version, 2);
    assert_eq!(node.get("/greet/env").await.2, "GREETING=bonjour");
    let versions: Vec<VersionInfo> = node.admin_get("/v1/functions/greet/versions").await;
    assert_eq!(
        versions.len(),
        2,
        "{:?}",
        versions.iter().map(|v| v.version).collect::<Vec<_>>()
    );
    node.rollback("greet", 1).await;

    let r = node.rollback("greet", 9).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_and_the_previous_version_keeps_serving() {
    let node = TestNode::start().await;
    node.deploy(&greeter("hello")).await.unwrap();

    let wrong_world = "[app]\nname = \"web\"\n[functions.greet]\nsource = \"command.wasm\"\nhttp = [{ route = \"/greet/env\" }]\n";
    let err = node.deploy(wrong_world).await.unwrap_err();
    assert_eq!(err.code, Code::ComponentInvalid);
    assert!(
        err.message.contains("greet") && err.message.contains("wasi:http/proxy"),
        "{}",
        err.message
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let junk = "[app]\nname = \"web\"\n[functions.greet]\nsource = \"junk.wasm\"\nhttp = [{ route = \"/greet/env\" }]\n";
    let err = node.deploy_from(junk, dir.path()).await.unwrap_err();
    assert_eq!(err.code, Code::ComponentInvalid, "{}", err.message);

    std::fs::write(dir.path().join("text.wasm"), b"not wasm at all").unwrap();
    let text = junk.replace("junk.wasm", "text.wasm");
    assert_eq!(
        node.deploy_from(&text, dir.path()).await.unwrap_err().code,
        Code::ComponentInvalid
    );

    assert_eq!(node.get("/greet/env").await.2, "GREETING=hello");
    assert_eq!(node.describe("greet").await.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_names_are_checked_across_apps() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "one",
        &[("a", "http = [{ route = \"GET /shared/{id}\" }]")],
    ))
    .await
    .unwrap();
    let err = node
        .deploy(&testbed_app(
            "two",
            &[("b", "http = [{ route = \"/shared/{name}\" }]")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::RouteConflict, "{}", err.message);
    let err = node
        .deploy(&testbed_app(
            "two",
            &[("a", "http = [{ route = \"/elsewhere\" }]")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::FunctionOwned, "{}", err.message);
    // Nothing of app two exists.
    assert_eq!(node.get("/elsewhere").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_stops_routes_and_redeploy_drops_missing_functions() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[
            ("a", "http = [{ route = \"/a/echo\" }]"),
            ("b", "http = [{ route = \"/b/echo\" }]"),
        ],
    ))
    .await
    .unwrap();
    let r = node
        .http
        .delete(format!("{}/v1/functions/a", node.admin))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(node.get("/a/echo").await.0, 404);
    assert_eq!(node.get("/b/echo").await.0, 200);

    let r = node
        .deploy(&testbed_app("web", &[("c", "http = [{ route = \"/c/echo\" }]")]))
        .await
        .unwrap();
    assert_eq!(r.removed, ["b"]);
    assert_eq!(node.get("/b/echo").await.0, 404);
    assert_eq!(node.get("/c/echo").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_survive_a_restart_and_one_data_dir_has_one_node() {
    let mut node = TestNode::start().await;
    node.deploy(&greeter("persisted")).await.unwrap();
    let token = node.token.clone();

    let err = gale_node::start(options(node.dir.path()))
        .await
        .err()
        .expect("second node refused");
    assert!(err.to_string().contains("in use by another Gale node"), "{err}");

    node.stop().await;
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    let o = options(dir.path());
    let node = TestNode::start_with(dir, o).await;
    assert_eq!(node.token, token, "the token is generated once");
    assert_eq!(node.get("/greet/env").await.2, "GREETING=persisted");
    let logs = node.logs("greet", 1).await;
    assert!(
        logs[0].cold_start,
        "first request after a restart is a cold start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_functions_scale_to_zero_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.idle_timeout = Duration::from_millis(200);
    let node = TestNode::start_with(dir, o).await;
    node.deploy(&testbed_app("web", &[("echo", "http = [{ route = \"/echo\" }]")]))
        .await
        .unwrap();
    // A deploy loads the new code, so the first request is warm.
    assert_eq!(node.get("/echo").await.0, 200);
    assert_eq!(node.get("/echo").await.0, 200);
    let warm = node.describe("echo").await.stats;
    assert!(warm.warm);
    assert_eq!(warm.cold_starts, 0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!node.describe("echo").await.stats.warm, "idle code is unloaded");
    assert_eq!(node.get("/echo").await.0, 200);
    assert_eq!(node.describe("echo").await.stats.cold_starts, 1);
    let logs = node.logs("echo", 3).await;
    assert_eq!(
        logs.iter().map(|l| l.cold_start).collect::<Vec<_>>(),
        [false, false, true]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_logs_carry_ids_output_and_are_capped() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("chatty", "http = [{ route = \"/chatty/print\" }]")],
    ))
    .await
    .unwrap();
    let (_, headers, _) = node.get("/chatty/print?n=3").await;
    let id = headers["x-gale-request-id"].to_str().unwrap().to_string();
    let (status, _, _) = node.get("/chatty/print?n=100000").await;
    assert_eq!(status, 200, "a chatty guest is not failed for its output");
    let logs = node.logs("chatty", 2).await;
    assert_eq!(logs[0].request_id, id);
    assert_eq!(logs[0].stdout.lines().count(), 3);
    assert_eq!(logs[0].version, 1);
    assert!(
        logs[1].stdout.len() < 20 * 1024,
        "{} bytes kept",
        logs[1].stdout.len()
    );
    assert!(logs[1].stdout.ends_with("[output truncated]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_documents_itself() {
    let node = TestNode::start().await;
    let url = format!("{}/v1/functions", node.admin);
    assert_eq!(node.http.get(&url).send().await.unwrap().status(), 401);
    let wrong = node
        .http
        .get(&url)
        .bearer_auth("gale_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        node.http
            .get(&url)
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let spec: serde_json::Value = node
        .http
        .get(format!("{}/v1/openapi.json", node.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    for path in [
        "/v1/artifacts/{digest}",
        "/v1/apps/{app}/deploy",
        "/v1/functions",
        "/v1/functions/{name}",
        "/v1/functions/{name}/versions",
        "/v1/functions/{name}/rollback",
        "/v1/functions/{name}/invoke",
        "/v1/functions/{name}/logs",
        "/v1/topics",
        "/v1/topics/{name}",
        "/v1/topics/{name}/events",
        "/v1/topics/{name}/redrive",
    ] {
        assert!(spec["paths"][path].is_object(), "openapi.json documents {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_reaches_functions_without_routes() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app("web", &[("hidden", "")])).await.unwrap();
    let r: serde_json::Value = node
        .http
        .post(format!("{}/v1/functions/hidden/invoke", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "path": "/echo", "body": "hi there" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], 200);
    assert_eq!(r["body"], "hi there");
    assert_eq!(r["headers"]["x-method"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_requests_finish_and_keeps_their_logs() {
    let mut node = TestNode::start().await;
    node.deploy(&testbed_app(
        "web",
        &[("slow", "http = [{ route = \"/slow/sleep\" }]")],
    ))
    .await
    .unwrap();
    let running = tokio::spawn(node.http.get(node.url("/slow/sleep?ms=600")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.stop().await;
    let answer = running.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "slept 600ms");

    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    let o = options(dir.path());
    let node = TestNode::start_with(dir, o).await;
    let logs = node.logs("slow", 1).await;
    assert_eq!(logs[0].stdout, "", "the in-flight invocation was logged");
    assert_eq!(logs[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_cannot_take_back_a_route_another_app_now_owns() {
    let node = TestNode::start().await;
    node.deploy(&testbed_app("one", &[("a", "http = [{ route = \"/x/echo\" }]")]))
        .await
        .unwrap();
    node.deploy(&testbed_app("one", &[("a", "http = [{ route = \"/y/echo\" }]")]))
        .await
        .unwrap();
    node.deploy(&testbed_app("two", &[("b", "http = [{ route = \"/x/echo\" }]")]))
        .await
        .unwrap();
    let r = node.rollback("a", 1).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_conflict");
    assert_eq!(node.describe("a").await.version, 2);
    assert_eq!(node.get("/y/echo").await.0, 200);
}
