//! The process runtime with the real Lambda clients: Python handlers under
//! `awslambdaric`, invoked over HTTP routes, events, boto3 and the AWS CLI.

mod common;

use common::{TestNode, root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// `tests/lambda/python` with awslambdaric vendored next to the handlers,
/// as a Lambda deployment package holds its dependencies. pip runs once.
fn python_package() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/lambda-fixtures/python");
        if !dir.join("awslambdaric").is_dir() {
            let status = std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&dir)
                .arg("awslambdaric==4.2.2")
                .status()
                .expect("python3 -m pip runs");
            assert!(status.success(), "installing awslambdaric from PyPI failed");
        }
        for file in ["app.py", "broken.py", "s3copy.py"] {
            std::fs::copy(root().join("tests/lambda/python").join(file), dir.join(file)).unwrap();
        }
        dir
    })
}

fn python_function(name: &str, handler: &str, extra: &str) -> String {
    format!(
        "[functions.{name}]\nruntime = \"process\"\nsource = \"{}\"\n\
         command = [\"python3\", \"-m\", \"awslambdaric\", \"{handler}\"]\n{extra}\n",
        python_package().display()
    )
}

async fn invoke(
    node: &TestNode,
    function: &str,
    payload: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = node
        .http
        .post(node.url(&format!("/2015-03-31/functions/{function}/invocations")))
        .bearer_auth(&node.token)
        .json(&payload);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_serves_an_http_route_through_api_gateway_events() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"py\"\n{}[[functions.web.http]]\nroute = \"POST /orders/{{id}}\"\n",
        python_function("web", "app.web", "[[functions.web.http]]\nroute = \"GET /hello\"")
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();

    let r = node
        .http
        .get(node.url("/hello?name=gale"))
        .header("cookie", "a=1; b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-handler"], "web");
    assert_eq!(r.headers()["set-cookie"], "seen=1; Path=/");
    let request_id = r.headers()["x-gale-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["route"], "GET /hello");
    assert_eq!(body["name"], "gale");
    assert_eq!(body["cookies"], json!(["a=1", "b=2"]));
    assert_eq!(body["request_id"], request_id.as_str());
    assert_eq!(body["function"], "web");
    assert_eq!(body["memory"], "128");
    assert!(body["remaining_ms"].as_u64().unwrap() > 20_000, "{body}");

    let r = node
        .http
        .post(node.url("/orders/42"))
        .json(&json!({"sku": "apple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "42");
    assert_eq!(body["base64"], false);
    assert_eq!(
        serde_json::from_str::<Value>(body["body"].as_str().unwrap()).unwrap()["sku"],
        "apple"
    );

    // One instance served both: one cold start; the log has Lambda's records.
    assert_eq!(node.describe("web").await.stats.cold_starts, 1);
    let logs = node.logs("web", 2).await;
    let first = logs.iter().find(|l| l.request_id == request_id).unwrap();
    assert!(
        first.stdout.contains(&format!("START RequestId: {request_id}")),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("web handled /hello"), "{}", first.stdout);
    assert!(first.stdout.contains("REPORT RequestId:"), "{}", first.stdout);
    assert!(first.stdout.contains("Max Memory Used:"), "{}", first.stdout);
}

/// Runs a Python script with boto3 against the node; returns what it prints.
fn python(script: &str, node: &TestNode) -> Value {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("GATEWAY", &node.gateway)
        .env("TOKEN", &node.token)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_invoke_functions() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"py\"\n{}{}",
        python_function("echo", "app.echo", ""),
        python_function("fail", "app.fail", "")
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();

    let out = python(
        r#"
import base64, json, os, boto3, botocore
def client(secret):
    return boto3.client("lambda", endpoint_url=os.environ["GATEWAY"], region_name="local",
                        aws_access_key_id="gale", aws_secret_access_key=secret)
c = client(os.environ["TOKEN"])
out = {}
r = c.invoke(FunctionName="echo", Payload=json.dumps({"n": 1}), LogType="Tail",
             ClientContext=base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode())
out["sync"] = {"status": r["StatusCode"], "payload": json.load(r["Payload"]),
               "version": r.get("ExecutedVersion"), "log": base64.b64decode(r["LogResult"]).decode(),
               "error": r.get("FunctionError")}
r = c.invoke(FunctionName="fail", Payload=b'{"x": 2}')
out["fail"] = {"status": r["StatusCode"], "error": r.get("FunctionError"), "payload": json.load(r["Payload"])}
r = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"async": true}')
out["event"] = r["StatusCode"]
r = c.invoke(FunctionName="echo", InvocationType="DryRun")
out["dry"] = r["StatusCode"]
try:
    c.invoke(FunctionName="nope", Payload=b"{}")
except botocore.exceptions.ClientError as e:
    out["missing"] = e.response["Error"]["Code"]
try:
    client("wrong-secret").invoke(FunctionName="echo", Payload=b"{}")
except botocore.exceptions.ClientError as e:
    out["denied"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#,
        &node,
    );
    let sync = &out["sync"];
    assert_eq!(sync["status"], 200);
    assert_eq!(sync["payload"]["echo"], json!({"n": 1}));
    assert_eq!(sync["payload"]["client_context"], json!({"k": "v"}));
    assert_eq!(sync["version"], "1");
    assert!(sync["error"].is_null());
    assert!(sync["log"].as_str().unwrap().contains("echo handling"), "{sync}");
    assert!(
        sync["log"].as_str().unwrap().contains("REPORT RequestId"),
        "{sync}"
    );
    assert_eq!(out["fail"]["status"], 200);
    assert_eq!(out["fail"]["error"], "Unhandled");
    assert_eq!(out["fail"]["payload"]["errorType"], "ValueError");
    assert!(
        out["fail"]["payload"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("bad input")
    );
    assert_eq!(out["event"], 202);
    assert_eq!(out["dry"], 204);
    assert_eq!(out["missing"], "ResourceNotFoundException");
    assert_eq!(out["denied"], "AccessDeniedException");

    // The asynchronous invocation ran in the background.
    let logs = node.logs("echo", 2).await;
    assert!(logs.iter().any(|l| l.stdout.contains("echo handling")));

    // The AWS CLI writes the function's answer to its outfile.
    let outfile = node.dir.path().join("answer.json");
    let cli = std::process::Command::new("aws")
        .args([
            "lambda",
            "invoke",
            "--endpoint-url",
            &node.gateway,
            "--function-name",
            "echo",
        ])
        .args(["--payload", r#"{"from": "cli"}"#])
        .arg(&outfile)
        .env("AWS_ACCESS_KEY_ID", "gale")
        .env("AWS_SECRET_ACCESS_KEY", &node.token)
        .env("AWS_DEFAULT_REGION", "local")
        .output()
        .expect("the aws CLI runs");
    assert!(
        cli.status.success(),
        "aws: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["StatusCode"], 200);
    let answer: Value = serde_json::from_slice(&std::fs::read(&outfile).unwrap()).unwrap();
    assert_eq!(answer["echo"], json!({"from": "cli"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_handlers_get_the_right_errors_and_the_node_keeps_serving() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"faults\"\n{}{}{}{}{}{}",
        python_function("echo", "app.echo", ""),
        python_function("crash", "app.crash", ""),
        python_function(
            "hang",
            "app.hang",
            "timeout = \"1s\"\n[[functions.hang.http]]\nroute = \"GET /hang\""
        ),
        python_function("hog", "app.hog", "memory = \"256MiB\""),
        python_function("broken", "broken.handler", ""),
        python_function("fail", "app.fail", ""),
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();

    // A healthy function under load the whole time.
    let load = {
        let (http, url, token) = (
            node.http.clone(),
            node.url("/2015-03-31/functions/echo/invocations"),
            node.token.clone(),
        );
        tokio::spawn(async move {
            let mut ok = 0;
            let until = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < until {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert!(r.headers().get("x-amz-function-error").is_none());
                ok += 1;
            }
            ok
        })
    };

    let error_of = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-amz-function-error"], "Unhandled");
        r.json::<Value>().await.unwrap()
    };
    let raised = error_of(invoke(&node, "fail", json!({}), &[]).await).await;
    assert_eq!(raised["errorType"], "ValueError");

    let crashed = error_of(invoke(&node, "crash", json!({}), &[]).await).await;
    assert_eq!(crashed["errorType"], "Runtime.ExitError");
    assert!(
        crashed["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 7"),
        "{crashed}"
    );

    let started = std::time::Instant::now();
    let hung = error_of(invoke(&node, "hang", json!({}), &[]).await).await;
    assert_eq!(hung["errorType"], "Sandbox.Timedout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut at its 1 s timeout, not after its 60 s sleep"
    );
    let (status, _, _) = node.get("/hang").await;
    assert_eq!(status, 504, "over HTTP a timeout is a 504");

    let oom = error_of(invoke(&node, "hog", json!({}), &[]).await).await;
    assert_eq!(oom["errorType"], "Runtime.OutOfMemory", "{oom}");

    let init = error_of(invoke(&node, "broken", json!({}), &[]).await).await;
    // The runtime's own report of the failed import, passed on as Lambda does.
    assert_eq!(init["errorType"], "RuntimeError", "{init}");
    assert!(
        init["errorMessage"]
            .as_str()
            .unwrap()
            .contains("init failed on purpose"),
        "{init}"
    );

    // Each faulty function recovers with a fresh instance.
    let again = error_of(invoke(&node, "crash", json!({}), &[]).await).await;
    assert_eq!(again["errorType"], "Runtime.ExitError");
    assert!(load.await.unwrap() > 10, "the healthy function kept serving");
    let logs = node.logs("hang", 2).await;
    assert!(logs.iter().any(|l| l.outcome == gale_core::api::Outcome::Timeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_process_functions_with_outbox_and_sqs_partial_failures() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"ev\"\n[topics.in]\n[topics.out]\n[topics.jobs]\n{}[[functions.publisher.events]]\ntopic = \"in\"\nmax_attempts = 1\n\
         {}[[functions.worker.events]]\ntopic = \"jobs\"\nformat = \"sqs\"\nbatch_size = 10\nbatch_window = \"300ms\"\n\
         max_attempts = 2\nbackoff = {{ initial = \"50ms\", max = \"100ms\" }}\ndead_letter = \"jobs-dlq\"\n",
        python_function("publisher", "app.publish", ""),
        python_function("worker", "app.sqs", ""),
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    let publish = |topic: &str, id: &str, data: Value| {
        let r = node
            .http
            .post(node.url(&format!("/_gale/topics/{topic}/events")))
            .bearer_auth(&node.token)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/tests")
            .header("ce-type", "t")
            .json(&data)
            .send();
        async move { assert_eq!(r.await.unwrap().status(), 202) }
    };
    publish("in", "good", json!({"n": 1})).await;
    publish("in", "bad", json!({"n": 2, "fail": true})).await;
    for (id, body) in [("j1", "fine"), ("j2", "bad one"), ("j3", "fine too")] {
        publish("jobs", id, json!(body)).await;
    }

    // Only the successful invocation's event was committed.
    let mut out = Vec::new();
    for _ in 0..100 {
        out = node
            .admin_get::<Vec<gale_core::api::StoredEventInfo>>("/v1/topics/out/events")
            .await;
        let logs: Vec<gale_core::api::InvocationLog> =
            node.admin_get("/v1/functions/publisher/logs?limit=10").await;
        if logs.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = out
        .iter()
        .map(|e| e.event["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec!["out-good".to_string()],
        "a failed attempt publishes nothing"
    );

    // The SQS batch retried only the item the handler named, then parked it.
    let mut dlq = Vec::new();
    for _ in 0..100 {
        dlq = node
            .admin_get::<Vec<gale_core::api::StoredEventInfo>>("/v1/topics/jobs-dlq/events")
            .await;
        if !dlq.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].event["id"], "j2");
    assert_eq!(dlq[0].event["galeattempts"], 2);
    // Logs are written in the background: wait for the second attempt's.
    let mut handled = Vec::new();
    for _ in 0..50 {
        let logs = node.logs("worker", 2).await;
        handled = logs.into_iter().flat_map(|l| l.events).collect::<Vec<String>>();
        if handled.iter().filter(|id| *id == "j2").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(handled.iter().filter(|id| *id == "j1").count(), 1, "{handled:?}");
    assert_eq!(handled.iter().filter(|id| *id == "j2").count(), 2, "{handled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_isolated_from_the_host_and_each_other() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"iso\"\n{}{}",
        python_function("alice", "app.whoami", "env = { GREETING = \"hi\" }"),
        python_function("bob", "app.whoami", ""),
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    let bob: Value = invoke(&node, "bob", json!({}), &[]).await.json().await.unwrap();
    let other = Path::new(bob["task_root"].as_str().unwrap()).join("app.py");
    let alice: Value = invoke(&node, "alice", json!({"other": other}), &[])
        .await
        .json()
        .await
        .unwrap();
    let env: Vec<&str> = alice["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"GREETING") && env.contains(&"AWS_LAMBDA_RUNTIME_API"),
        "{env:?}"
    );
    assert!(
        !env.contains(&"CARGO") && !env.contains(&"USER"),
        "no host variable leaks in: {env:?}"
    );
    assert_eq!(alice["cwd"], alice["task_root"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(
            alice["uid"], 0,
            "a root node runs functions as unprivileged users"
        );
        assert_ne!(alice["uid"], bob["uid"], "each function has its own user");
        assert_eq!(alice["other_readable"], false, "alice cannot read bob's code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_deliver_eventbridge_events_and_gale_invoke_passes_payloads() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"tick\"\n{}[[functions.tick.schedule]]\ncron = \"* * * * * *\"\n",
        python_function("tick", "app.echo", ""),
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    let r = node
        .http
        .post(node.url("/_gale/functions/tick/invocations"))
        .bearer_auth(&node.token)
        .body(r#"{"direct": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["echo"], json!({"direct": true}));
    let mut fired = false;
    for _ in 0..60 {
        let logs: Vec<gale_core::api::InvocationLog> =
            node.admin_get("/v1/functions/tick/logs?limit=50").await;
        if logs.iter().any(|l| l.stdout.contains("Scheduled Event")) {
            fired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fired,
        "a firing reached the handler as an EventBridge scheduled event"
    );
}

/// Runs an example's `build` the way `gale deploy` would; returns its manifest.
fn build_example(name: &str) -> (String, PathBuf) {
    let dir = root().join("examples").join(name);
    let text = std::fs::read_to_string(dir.join("gale.toml")).unwrap();
    let manifest = gale_core::Manifest::from_toml(&text, "gale.toml").unwrap();
    for f in manifest.functions.values() {
        if let Some(build) = &f.build {
            let status = std::process::Command::new("sh")
                .args(["-c", build])
                .current_dir(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "building examples/{name}: {build}");
        }
    }
    (text, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_examples_run_unmodified() {
    let node = TestNode::start().await;

    // A Rust lambda_runtime handler, on a route and an event trigger.
    let (manifest, dir) = build_example("lambda-rust");
    node.deploy_from(&manifest, &dir).await.unwrap();
    // From another loopback address, so the event's sourceIp shows it is the
    // client's own address and not a default.
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = client
        .post(node.url("/echo"))
        .body(r#"{"hello":"lambda"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["function"], "echo");
    assert_eq!(
        body["echo"]["body"], r#"{"hello":"lambda"}"#,
        "it got an API Gateway event: {body}"
    );
    assert_eq!(body["echo"]["requestContext"]["http"]["sourceIp"], "127.0.0.2");
    for (id, ty) in [("ok-1", "order_placed"), ("bad-1", "fail")] {
        let r = node
            .http
            .post(node.url("/_gale/topics/orders/events"))
            .bearer_auth(&node.token)
            .header("content-type", "application/cloudevents+json")
            .body(
                json!({"specversion": "1.0", "id": id, "source": "/tests", "type": ty, "data": {"n": 1}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut dlq = Vec::new();
    for _ in 0..100 {
        dlq = node
            .admin_get::<Vec<gale_core::api::StoredEventInfo>>("/v1/topics/orders-dlq/events")
            .await;
        if !dlq.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dlq.len(), 1, "the failing event was parked");
    assert_eq!(dlq[0].event["id"], "bad-1");
    assert!(
        dlq[0].event["galeerror"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{}",
        dlq[0].event
    );
    let logs = node.logs("echo", 4).await;
    assert!(
        logs.iter()
            .any(|l| l.events == ["ok-1"] && l.outcome == gale_core::api::Outcome::Ok)
    );

    // A shell custom runtime.
    let (manifest, dir) = build_example("lambda-shell");
    node.deploy_from(&manifest, &dir).await.unwrap();
    let (status, _, body) = node.get("/sh").await;
    assert_eq!(status, 200);
    assert!(body.contains("hello from sh"), "{body}");

    // A Python awslambdaric handler.
    let (manifest, dir) = build_example("lambda-python");
    node.deploy_from(&manifest, &dir).await.unwrap();
    let (status, _, body) = node.get("/hello?name=gale").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["hello"], "gale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoke_api_runs_the_version_a_qualifier_names() {
    let node = TestNode::start().await;
    for greeting in ["one", "two"] {
        let manifest = format!(
            "[app]\nname = \"q\"\n{}",
            python_function(
                "who",
                "app.whoami",
                &format!("env = {{ GREETING = \"{greeting}\" }}")
            )
        );
        node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    }
    let call = |qualifier: &str| {
        let url = node.url(&format!("/2015-03-31/functions/who/invocations{qualifier}"));
        let r = node.http.post(url).bearer_auth(&node.token).body("{}").send();
        async move {
            let r = r.await.unwrap();
            let status = r.status().as_u16();
            let version = r
                .headers()
                .get("x-amz-executed-version")
                .map(|v| v.to_str().unwrap().to_string());
            let error = r
                .headers()
                .get("x-amzn-errortype")
                .map(|v| v.to_str().unwrap().to_string());
            (status, version, error)
        }
    };
    assert_eq!(call("").await, (200, Some("2".into()), None));
    assert_eq!(call("?Qualifier=%24LATEST").await, (200, Some("2".into()), None));
    assert_eq!(
        call("?Qualifier=1").await,
        (200, Some("1".into()), None),
        "the older version runs"
    );
    assert_eq!(
        call("?Qualifier=9").await,
        (404, None, Some("ResourceNotFoundException".into()))
    );
    assert_eq!(
        call("?Qualifier=prod").await,
        (400, None, Some("InvalidParameterValueException".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_function_is_throttled_the_way_lambda_clients_expect() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"busy\"\n{}",
        python_function(
            "slow",
            "app.hang",
            "timeout = \"2s\"\nmax_instances = 1\nqueue = 0"
        )
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();
    let first = {
        let (http, url, token) = (
            node.http.clone(),
            node.url("/2015-03-31/functions/slow/invocations"),
            node.token.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = invoke(&node, "slow", json!({}), &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        first.await.unwrap(),
        200,
        "the running invocation ends with its timeout error"
    );
}

/// Runs a boto3 snippet against the node's S3 API with the admin token;
/// returns what it prints.
async fn boto3(node: &TestNode, code: &str) -> String {
    let script = format!("import boto3, sys\ns3 = boto3.client('s3')\n{code}\n");
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", &script]);
    common::aws_env(&mut cmd, &node.s3, &node.admin, &node.token);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_handler_runs_for_each_upload_and_writes_with_its_own_key() {
    let node = TestNode::start().await;
    let manifest = format!(
        "[app]\nname = \"files\"\n[buckets.uploads]\n[buckets.results]\n[buckets.private]\n{}{}",
        python_function(
            "upper",
            "s3copy.handler",
            "buckets = [\"results\"]\nenv = { RESULTS = \"results\" }\n\
             [[functions.upper.bucket]]\nbucket = \"uploads\"\nsuffix = \".txt\"\n\
             max_attempts = 1",
        ),
        python_function(
            "sneaky",
            "s3copy.denied",
            "env = { RESULTS = \"private\" }\n[[functions.sneaky.bucket]]\nbucket = \"uploads\"\n\
             prefix = \"sneak/\"\nmax_attempts = 1",
        ),
    );
    node.deploy_from(&manifest, Path::new("/")).await.unwrap();

    boto3(
        &node,
        "s3.put_object(Bucket='uploads', Key='in/hello world.txt', Body=b'hello')\n\
         s3.put_object(Bucket='uploads', Key='in/photo.bin', Body=b'raw')\n\
         s3.put_object(Bucket='uploads', Key='sneak/x', Body=b'x')",
    )
    .await;

    // The handler read the upload and wrote the result with its own key.
    let mut copied = String::new();
    for _ in 0..100 {
        copied = boto3(
            &node,
            "try:\n    print(s3.get_object(Bucket='results', Key='in/hello world.txt')['Body'].read().decode())\n\
             except s3.exceptions.NoSuchKey:\n    print('missing')",
        )
        .await;
        if copied.trim() != "missing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(copied.trim(), "HELLO");

    // It received S3's notification document, key URL-encoded; the suffix
    // filter kept it from the .bin upload.
    let logs = node.logs("upper", 1).await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    let event: Value = serde_json::from_str(
        logs[0]
            .stdout
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("the handler printed its event"),
    )
    .unwrap();
    let record = &event["Records"][0];
    assert_eq!(record["eventSource"], "aws:s3");
    assert_eq!(record["eventVersion"], "2.1");
    assert_eq!(record["eventName"], "ObjectCreated:Put");
    assert_eq!(record["s3"]["bucket"]["name"], "uploads");
    assert_eq!(record["s3"]["object"]["key"], "in/hello+world.txt");
    assert_eq!(record["s3"]["object"]["size"], 5);
    assert_eq!(record["s3"]["object"]["eTag"], "5d41402abc4b2a76b9719d911017c592");
    assert!(record["s3"]["object"]["sequencer"].is_string(), "{record}");

    // A function's key reaches only the buckets its manifest names.
    let logs = node.logs("sneaky", 1).await;
    assert_eq!(logs[0].outcome, gale_core::api::Outcome::Error, "{logs:?}");
    let said = format!("{}{}", logs[0].stdout, logs[0].stderr);
    assert!(said.contains("403"), "{said}");
    let private = boto3(
        &node,
        "print(s3.list_objects_v2(Bucket='private').get('KeyCount'))",
    )
    .await;
    assert_eq!(private.trim(), "0");
}

/// `examples/csv-import`, as its README walks through it: `aws s3 cp` of a
/// CSV, the boto3 handler's report in the other bucket, the event it
/// published handled by `notify`; a broken CSV dead-lettered after retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_import_example_runs_as_its_readme_says() {
    let node = TestNode::start().await;
    let (manifest, dir) = build_example("csv-import");
    node.deploy_from(&manifest, &dir).await.unwrap();
    let aws = |args: Vec<String>| {
        let mut cmd = std::process::Command::new("aws");
        cmd.args(&args);
        common::aws_env(&mut cmd, &node.s3, &node.admin, &node.token);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let csv = dir.join("orders.csv").display().to_string();
    let (ok, _) = aws(vec![
        "s3".into(),
        "cp".into(),
        csv,
        "s3://imports/2026/orders.csv".into(),
    ])
    .await;
    assert!(ok, "aws s3 cp failed");
    let notified = node.logs("notify", 1).await;
    assert!(
        notified[0]
            .stdout
            .contains("3 orders worth 67.0 imported from s3://imports/2026/orders.csv"),
        "{}",
        notified[0].stdout
    );
    let (ok, report) = aws(vec![
        "s3".into(),
        "cp".into(),
        "s3://reports/2026/orders.json".into(),
        "-".into(),
    ])
    .await;
    assert!(ok, "the report is missing");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["orders"], 3);
    assert_eq!(report["customers"], json!(["ada", "grace"]));

    let broken = std::env::temp_dir().join(format!("broken-{}.csv", std::process::id()));
    std::fs::write(&broken, "id,who\n1,ada\n").unwrap();
    let (ok, _) = aws(vec![
        "s3".into(),
        "cp".into(),
        broken.display().to_string(),
        "s3://imports/broken.csv".into(),
    ])
    .await;
    std::fs::remove_file(&broken).ok();
    assert!(ok);
    let mut parked = Vec::new();
    for _ in 0..300 {
        parked = node
            .admin_get::<Vec<gale_core::api::StoredEventInfo>>("/v1/topics/imports-failed/events")
            .await;
        if !parked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(parked.len(), 1, "the broken CSV was not dead-lettered");
    assert_eq!(parked[0].event["subject"], "broken.csv");
    assert!(
        parked[0].event["galeerror"]
            .as_str()
            .unwrap_or_default()
            .contains("no column amount"),
        "{}",
        parked[0].event
    );
}

/// examples/orders-db as its README walks through it, on a throwaway
/// PostgreSQL with `wal_level = logical`: an HTTP request writes a row,
/// the row change reaches an unmodified DynamoDB Streams handler, whose
/// own update of the row is captured too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_db_example_runs_as_its_readme_says() {
    let pg = common::postgres::Pg::start();
    pg.psql("CREATE DATABASE shop");
    let (manifest, dir) = build_example("orders-db");
    pg.psql_in("shop", &std::fs::read_to_string(dir.join("schema.sql")).unwrap());
    let manifest = manifest.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", pg.port));
    let node = TestNode::start().await;
    node.deploy_from(&manifest, &dir).await.unwrap();

    let place = |body: Value| {
        let http = node.http.clone();
        let url = node.url("/orders");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = place(json!({"customer": "ada", "item": "tea", "qty": 2})).await;
    assert_eq!((status, &body["status"]), (201, &json!("placed")), "{body}");
    let id = body["id"].as_i64().unwrap();
    let (status, _) = place(json!({"customer": "ada"})).await;
    assert_eq!(status, 400);

    let shipped = node.logs("ship", 1).await;
    assert!(
        shipped[0]
            .stdout
            .contains(&format!("shipping order {id}: 2 x tea to ada")),
        "{}",
        shipped[0].stdout
    );
    let status = || pg.psql_in("shop", &format!("SELECT status FROM orders WHERE id = {id}"));
    for _ in 0..100 {
        if status() == "shipped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(), "shipped");
    // The insert and ship's update are both on the topic, in order.
    let mut types = Vec::new();
    for _ in 0..100 {
        let events: Vec<gale_core::api::StoredEventInfo> =
            node.admin_get("/v1/topics/order-rows/events").await;
        types = events.iter().map(|e| e.event["type"].clone()).collect();
        if types.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        types,
        vec![json!("gale.db.row.inserted"), json!("gale.db.row.updated")]
    );
}

/// `examples/bridge`: orders sent to RabbitMQ with pika reach the Amazon MQ
/// handler, and what it ships arrives on NATS JetStream, read with nats-py,
/// both scripts run as the README runs them (with a queue, subject and
/// stream of this test's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_example_runs_as_its_readme_says() {
    let id = common::unique("");
    let (queue, subject, stream) = (
        format!("orders-{id}"),
        format!("shop.shipped.{id}"),
        format!("SHIPPED_{id}"),
    );
    let (manifest, dir) = build_example("bridge");
    let manifest = manifest
        .replace("queue = \"orders\"", &format!("queue = \"{queue}\""))
        .replace("to = \"shop.shipped\"", &format!("to = \"{subject}\""));
    let node = TestNode::start().await;
    node.deploy_from(&manifest, &dir).await.unwrap();
    node.wait_streaming("orders-in").await;

    let script = |name: &str, n: &str| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(dir.join(name))
            .arg(n)
            .env("QUEUE", &queue)
            .env("SUBJECT", &subject)
            .env("STREAM", &stream)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    // The warehouse first: it makes the stream the sink publishes to.
    let mut reader = script("read_shipped.py", "3").spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(reader.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first)
        .await
        .unwrap();
    assert_eq!(first.trim(), "waiting for shipments");
    let sent = script("send_orders.py", "3").output().await.unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), "sent 3 orders");

    let mut rest = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read_to_string(&mut lines, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "3 shipments within 60 s; read so far: {rest}");
    let status = reader.wait().await.unwrap();
    assert!(status.success());
    // Batches may run side by side: the order of shipments is not fixed.
    let mut shipped: Vec<&str> = rest.lines().collect();
    shipped.sort();
    assert_eq!(
        shipped,
        vec![
            "order_shipped shipped-1: order 1 for grace, total 3.5",
            "order_shipped shipped-2: order 2 for alan, total 7.0",
            "order_shipped shipped-3: order 3 for ada, total 10.5",
        ]
    );
    // Batches may split: each invocation logs the orders it shipped.
    let logs = node.logs("fulfil", 1).await;
    assert!(
        logs[0].stdout.contains(&format!("{queue}::/: order ")),
        "{}",
        logs[0].stdout
    );

    // Clean up the broker side.
    let nats = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await
        .unwrap();
    let deleted = tokio::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import pika; c = pika.BlockingConnection(pika.URLParameters('amqp://guest:guest@127.0.0.1:5672/%2f')); c.channel().queue_delete(queue='{queue}'); c.close()"
            ),
        ])
        .status()
        .await
        .unwrap();
    assert!(deleted.success());
}
