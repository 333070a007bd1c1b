//! The `gale` binary as a user runs it.

mod common;

use common::process::{Running, gale};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["up", "--help"],
        vec!["deploy", "--help"],
        vec!["ls", "--help"],
        vec!["describe", "--help"],
        vec!["versions", "--help"],
        vec!["rollback", "--help"],
        vec!["rm", "--help"],
        vec!["invoke", "--help"],
        vec!["logs", "--help"],
        vec!["publish", "--help"],
        vec!["topics", "--help"],
        vec!["topics", "create", "--help"],
        vec!["dlq", "ls", "--help"],
        vec!["dlq", "redrive", "--help"],
        vec!["tokens", "create", "--help"],
        vec!["buckets", "create", "--help"],
        vec!["keys", "create", "--help"],
        vec!["replay", "--help"],
        vec!["invocations", "show", "--help"],
        vec!["version", "--help"],
        vec!["completions", "--help"],
    ] {
        let out = gale().args(&cmd).output().unwrap();
        assert!(out.status.success(), "gale {cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "gale {cmd:?}"
        );
    }
}

#[test]
fn bad_manifests_name_file_key_and_fix_before_contacting_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("gale.toml");
    std::fs::write(
        &manifest,
        "[app]\nname = \"x\"\n[functions.f]\nsource = \"f.wasm\"\ntiemout = \"5s\"\n",
    )
    .unwrap();
    let out = gale().arg("deploy").arg("-f").arg(&manifest).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest_invalid") && err.contains("gale.toml") && err.contains("tiemout"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");

    std::fs::write(
        &manifest,
        "[app]\nname = \"x\"\n[functions.f]\nsource = \"missing.wasm\"\n",
    )
    .unwrap();
    let out = gale().arg("deploy").arg("-f").arg(&manifest).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("functions.f.source") && err.contains("missing.wasm"),
        "{err}"
    );
}

#[test]
fn quickstart_up_serves_hello_and_the_cli_inspects_it() {
    let data = tempfile::tempdir().unwrap();
    let mut up = gale();
    up.arg("up")
        .arg(common::root().join("examples/hello"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path());
    let mut node = Running::spawn(up);
    let gateway = node.wait_for("gateway", Duration::from_secs(30));
    let admin = node.wait_for("admin API", Duration::from_secs(5));
    node.wait_for("admin token", Duration::from_secs(5));
    node.wait_for("ready:", Duration::from_secs(300));

    let hello = reqwest::blocking_get(&format!("{gateway}/hello"));
    assert_eq!(hello, "Hello, world!\n");
    assert_eq!(
        reqwest::blocking_get(&format!("{gateway}/hello/ada")),
        "Hello, ada!\n"
    );

    let cli = |args: &[&str]| {
        let out = gale()
            .args(args)
            .args(["--server", &admin, "--output", "json"])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gale {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let ls: serde_json::Value = serde_json::from_str(&cli(&["ls"])).unwrap();
    assert_eq!(ls[0]["name"], "hello");
    assert_eq!(ls[0]["stats"]["invocations"], 2);
    let invoked: serde_json::Value =
        serde_json::from_str(&cli(&["invoke", "hello", "--path", "/hello"])).unwrap();
    assert_eq!(invoked["body"], "Hello, world!\n");
    // Logs are written in batches, within moments of each invocation.
    let mut logs = String::new();
    for _ in 0..40 {
        logs = cli(&["logs", "hello"]);
        if logs.lines().count() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.contains("greeting ada"), "{logs}");

    // A second node on the same data directory is refused, clearly.
    let out = gale()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another Gale node"));

    assert!(node.stop().success(), "SIGTERM stops the node cleanly");
}

/// A node whose log goes to a pipe (a file, a journal, another program)
/// writes plain text: no ANSI colour codes, only at a terminal.
#[test]
fn node_logs_into_a_pipe_carry_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let mut serve = gale();
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        // The default log level, and nothing else that turns colour off.
        .env_remove("GALE_LOG")
        .env_remove("NO_COLOR");
    let mut node = Running::spawn(serve);
    let started = node.wait_containing("node started", Duration::from_secs(30));
    node.wait_for("admin API", Duration::from_secs(5));
    assert!(started.contains("INFO"), "{started:?}");
    for line in &node.seen {
        assert!(!line.contains('\x1b'), "an escape code in the log: {line:?}");
    }
    assert!(node.stop().success());
}

/// The shop example as the README walks through it: orders → inventory →
/// notifier, through events only.
#[test]
fn shop_example_flows_from_orders_to_inventory_to_notifier() {
    let data = tempfile::tempdir().unwrap();
    let mut up = gale();
    up.arg("up")
        .arg(common::root().join("examples/shop"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path());
    let mut node = Running::spawn(up);
    let gateway = node.wait_for("gateway", Duration::from_secs(30));
    let admin = node.wait_for("admin API", Duration::from_secs(5));
    node.wait_for("ready:", Duration::from_secs(600));

    let cli = |args: &[&str]| {
        let out = gale()
            .args(args)
            .args(["--server", &admin])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gale {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = ::reqwest::Client::new();
        let bad = http
            .post(format!("{gateway}/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        for _ in 0..4 {
            let r = http
                .post(format!("{gateway}/orders"))
                .body(r#"{"sku":"apple","qty":2}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
    // 10 apples, 4 orders of 2: the fourth leaves 2, which is low.
    let mut logs = String::new();
    for _ in 0..100 {
        logs = cli(&["logs", "notifier"]);
        if logs.contains("LOW STOCK") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logs.contains("LOW STOCK: apple has 2 left"), "{logs}");
    let inventory = cli(&["logs", "inventory"]);
    assert!(inventory.contains("2 x apple taken; 8 left"), "{inventory}");
    let topics = cli(&["topics"]);
    assert!(
        topics
            .lines()
            .any(|l| l.starts_with("orders ") && l.contains("inventory")),
        "{topics}"
    );
    assert!(node.stop().success());
}

/// The node is killed (SIGKILL) while 10,000 events are being published to
/// a slow subscriber. After a restart every event whose publish got a 2xx
/// is handled, and only events in flight at the crash are handled twice.
#[test]
fn kill_9_while_publishing_loses_no_acknowledged_event() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The recorder: the handler reports each event it handled here.
        let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let record = record.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let id = req.into_body().collect().await?.to_bytes();
                                *record
                                    .lock()
                                    .unwrap()
                                    .entry(String::from_utf8_lossy(&id).into_owned())
                                    .or_default() += 1;
                                Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Empty::<
                                    bytes::Bytes,
                                >::new(
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });

        let data = tempfile::tempdir().unwrap();
        let serve = || common::process::serve(data.path());
        let (mut node, gateway, admin) = serve();
        let manifest = data.path().join("crash.toml");
        std::fs::write(
            &manifest,
            format!(
                r#"[app]
name = "crash"
[topics.jobs]
[functions.worker]
source = "{wasm}"
timeout = "2s"
env = {{ RECORD_URL = "http://127.0.0.1:{port}/seen" }}
allow_outbound = ["127.0.0.1:{port}"]
[[functions.worker.events]]
topic = "jobs"
max_attempts = 100
backoff = {{ initial = "50ms", max = "200ms" }}
"#,
                wasm = common::guests().join("testbed.wasm").display()
            ),
        )
        .unwrap();
        let out = gale()
            .args(["deploy", "--server", &admin, "-f"])
            .arg(&manifest)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = std::fs::read_to_string(data.path().join("token")).unwrap();

        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let http = ::reqwest::Client::new();
        let publishers: Vec<_> = (0..32)
            .map(|k| {
                let (http, acked, token, url) = (
                    http.clone(),
                    acked.clone(),
                    token.clone(),
                    format!("{gateway}/_gale/topics/jobs/events"),
                );
                tokio::spawn(async move {
                    for i in (k..10_000).step_by(32) {
                        let id = format!("ev-{i}");
                        let sent = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("ce-specversion", "1.0")
                            .header("ce-id", &id)
                            .header("ce-source", "/crash")
                            .header("ce-type", "record")
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 202 => acked.lock().unwrap().push(id),
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        while acked.lock().unwrap().len() < 3000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        for p in publishers {
            p.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let handled_before = seen.lock().unwrap().len();
        assert!(
            handled_before < acked.len(),
            "the subscriber was not behind at the crash"
        );

        let (node, _, _) = serve();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let missing = {
                let seen = seen.lock().unwrap();
                acked.iter().filter(|id| !seen.contains_key(*id)).count()
            };
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} acknowledged events never handled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let twice = seen.lock().unwrap().values().filter(|n| **n > 1).count();
        eprintln!(
            "acknowledged {}, handled before the crash {handled_before}, handled twice {twice}",
            acked.len()
        );
        // At most max_concurrency (10) events were leased when the node died.
        assert!(twice <= 10, "{twice} events were handled more than once");
        assert!(node.stop().success());
    });
}

/// A node in this process, on a runtime of its own, and the `gale` command
/// pointed at it (quicker than a `gale serve` process where signals and
/// listeners are not what is tested).
struct InProcess {
    rt: tokio::runtime::Runtime,
    node: common::TestNode,
}

/// What one `gale` run printed and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl InProcess {
    fn start(manifest: &str) -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let node = rt.block_on(common::TestNode::start());
        if !manifest.is_empty() {
            rt.block_on(node.deploy(manifest)).expect("deploys");
        }
        InProcess { rt, node }
    }

    /// `gale ARGS --server ADMIN --token TOKEN`.
    fn gale(&self, args: &[&str]) -> Ran {
        self.gale_at(&self.node.admin, args)
    }

    /// `gale ARGS --server SERVER --token TOKEN`.
    fn gale_at(&self, server: &str, args: &[&str]) -> Ran {
        let mut c = gale();
        c.args(args)
            .args(["--server", server, "--token", &self.node.token]);
        run(c)
    }
}

fn run(mut c: Command) -> Ran {
    let out = c.output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Uploads acknowledged before a kill -9 are all there after the restart,
/// each with exactly one notification, and no notification names an
/// object that is not there (a crash between an object's commit and its
/// event is impossible: they are one transaction).
#[test]
fn kill_9_while_uploading_loses_no_acknowledged_object_or_notification() {
    let data = tempfile::tempdir().unwrap();
    let serve = || {
        let mut c = gale();
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path());
        let mut node = Running::spawn(c);
        let admin = node.wait_for("admin API", Duration::from_secs(30));
        let s3 = node.wait_for("S3 API", Duration::from_secs(5));
        (node, admin, s3)
    };
    let scripts = common::s3_scripts();
    let python = |script: &str, admin: &str, s3: &str, acked: &std::path::Path| {
        let token = std::fs::read_to_string(data.path().join("token")).unwrap();
        let mut c = Command::new("python3");
        c.arg(scripts.join(script)).arg(acked).current_dir(&scripts);
        common::aws_env(&mut c, s3, admin, token.trim());
        c
    };
    let acked = data.path().join("acked.txt");
    let (mut node, admin, s3) = serve();
    let mut uploads = python("crash_upload.py", &admin, &s3, &acked).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&acked).map_or(0, |t| t.lines().count()) < 300 {
        assert!(Instant::now() < deadline, "uploads did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert!(uploads.wait().unwrap().success(), "the uploader failed");

    let (node, admin, s3) = serve();
    let check = python("crash_check.py", &admin, &s3, &acked).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&check.stdout));
    assert!(node.stop().success());
}

/// Item 4 of issue 22: any answer but a 2xx exits 1, with the status and
/// the error on stderr (or the JSON answer on stdout with --output json).
#[test]
fn invoke_exits_non_zero_unless_the_function_answers_2xx() {
    let n = InProcess::start(&common::testbed_app("inv", &[("small", "max_body = \"1KiB\"")]));
    let ok = n.gale(&["invoke", "small", "--path", "/echo", "-d", "hi"]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert_eq!(ok.stdout, "hi\n");

    let big = "x".repeat(2048);
    let refused = n.gale(&["invoke", "small", "--path", "/echo", "-d", &big]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("413") && refused.stderr.contains("body_too_large"),
        "{refused:?}"
    );
    assert_eq!(refused.stdout, "");

    let json = n.gale(&[
        "invoke", "small", "--path", "/echo", "-d", &big, "--output", "json",
    ]);
    assert_eq!(json.code, Some(1), "{json:?}");
    let answer: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(answer["status"], 413);

    // The function's own 4xx, and a failure (5xx).
    let own = n.gale(&["invoke", "small", "--path", "/fs"]);
    assert_eq!(own.code, Some(1), "{own:?}");
    assert!(
        own.stderr.contains("403") && own.stderr.contains("no file access"),
        "{own:?}"
    );
    let failed = n.gale(&["invoke", "small", "--path", "/trap"]);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(failed.stderr.contains("500"), "{failed:?}");
}

const EVENTS_APP: &str = r#"
[app]
name = "ev"
[topics.jobs]
[topics.orders]
[functions.h]
source = "testbed.wasm"
[[functions.h.events]]
topic = "orders"
max_attempts = 1
dead_letter = "orders-dlq"
"#;

/// Item 6 of issue 22: a publish token publishes through the gateway.
#[test]
fn publish_with_a_publish_token_goes_through_the_gateway() {
    let n = InProcess::start(EVENTS_APP);
    let created = n.gale(&["tokens", "create", "--publish", "jobs", "--output", "json"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let token: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("galepub_"));

    let mut c = gale();
    c.args(["publish", "jobs", "--type", "t", "--data", "{\"n\":1}"])
        .args(["--token", &token, "--gateway", &n.node.gateway])
        // The admin API is not needed (nor reachable with this token).
        .args(["--server", "http://127.0.0.1:9"]);
    let published = run(c);
    assert_eq!(published.code, Some(0), "{published:?}");
    assert!(published.stdout.starts_with("published"), "{published:?}");

    // Through GALE_GATEWAY too; a topic the token does not name is refused.
    let mut c = gale();
    c.args(["publish", "orders", "--type", "t", "--token", &token])
        .env("GALE_GATEWAY", &n.node.gateway);
    let refused = run(c);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("forbidden"), "{refused:?}");
}

/// Item 7 of issue 22: `dlq ls` says when a topic holds no dead letters.
#[test]
fn dlq_ls_says_when_a_topic_is_not_a_dead_letter_topic() {
    let n = InProcess::start(EVENTS_APP);
    assert_eq!(n.gale(&["publish", "jobs", "--type", "t"]).code, Some(0));
    let plain = n.gale(&["dlq", "ls", "jobs"]);
    assert_eq!(plain.code, Some(0), "{plain:?}");
    assert!(
        plain.stderr.contains("jobs is probably not a dead-letter topic"),
        "{plain:?}"
    );

    // A real dead letter: no such note.
    assert_eq!(n.gale(&["publish", "orders", "--type", "fail"]).code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = n.gale(&["dlq", "ls", "orders-dlq", "--output", "json"]);
        let events: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap_or_default();
        if events.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {ls:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dlq = n.gale(&["dlq", "ls", "orders-dlq"]);
    assert_eq!(dlq.code, Some(0), "{dlq:?}");
    assert!(dlq.stdout.contains("refusing event"), "{dlq:?}");
    assert!(!dlq.stderr.contains("not a dead-letter topic"), "{dlq:?}");

    // The node refuses to redrive a topic no trigger dead-letters to; the
    // CLI says so and fails.
    let redrive = n.gale(&["dlq", "redrive", "jobs"]);
    assert_eq!(redrive.code, Some(1), "{redrive:?}");
    assert!(redrive.stderr.contains("not a dead-letter topic"), "{redrive:?}");
}

/// Item 8 of issue 22: `--server` without a scheme, or naming the gateway.
#[test]
fn server_flag_mistakes_are_named() {
    let n = InProcess::start("");
    let bare = n.node.admin.trim_start_matches("http://").to_string();
    let ls = n.gale_at(&bare, &["ls"]);
    assert_eq!(ls.code, Some(0), "a bare HOST:PORT is taken as http://: {ls:?}");

    let gw = n.gale_at(&n.node.gateway, &["ls"]);
    assert_eq!(gw.code, Some(1), "{gw:?}");
    assert!(
        gw.stderr.contains("is a Gale gateway, not the admin API") && gw.stderr.contains("127.0.0.1:8081"),
        "{gw:?}"
    );
    assert!(!gw.stderr.contains("route_not_found"), "{gw:?}");

    let scheme = n.gale_at("ftp://127.0.0.1:1", &["ls"]);
    assert_eq!(scheme.code, Some(1), "{scheme:?}");
    assert!(scheme.stderr.contains("needs a URL like http://"), "{scheme:?}");
}

/// Item 8 of issue 22: a body the admin API cannot take is refused before
/// it is sent, in words; a file that is not text says so.
#[test]
fn invoke_of_a_large_or_binary_file_says_what_is_wrong() {
    let n = InProcess::start(&common::testbed_app("big", &[("echo", "")]));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "a".repeat(9 << 20)).unwrap();
    let sent = n.gale(&[
        "invoke",
        "echo",
        "--path",
        "/echo",
        "-d",
        &format!("@{}", big.display()),
    ]);
    assert_eq!(sent.code, Some(1), "{sent:?}");
    assert!(
        sent.stderr.contains("payload_too_large")
            && sent.stderr.contains("at most 8 MiB")
            && sent.stderr.contains("curl --data-binary"),
        "{sent:?}"
    );
    assert!(!sent.stderr.to_lowercase().contains("broken pipe"), "{sent:?}");

    let bin = dir.path().join("img.bin");
    std::fs::write(&bin, [0x89, b'P', b'N', b'G', 0xff, 0x00]).unwrap();
    let sent = n.gale(&["invoke", "echo", "-d", &format!("@{}", bin.display())]);
    assert_eq!(sent.code, Some(1), "{sent:?}");
    assert!(sent.stderr.contains("is not UTF-8 text"), "{sent:?}");
}

/// Item 8 of issue 22: a node that refuses a large upload with 413 and
/// closes the connection (so the client may see a broken pipe instead)
/// gets the same clear message.
#[test]
fn invoke_says_too_large_when_the_node_cuts_the_upload() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 21\r\nconnection: close\r\n\r\nlength limit exceeded",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.txt");
    std::fs::write(&file, "a".repeat(4 << 20)).unwrap();
    let mut c = gale();
    c.args(["invoke", "f", "-d", &format!("@{}", file.display())])
        .args(["--server", &format!("http://{addr}"), "--token", "t"]);
    let out = run(c);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("payload_too_large") && out.stderr.contains("curl --data-binary"),
        "{out:?}"
    );
    assert!(!out.stderr.to_lowercase().contains("broken pipe"), "{out:?}");
}

/// Item 8 of issue 22: a port in use names the address and the flag, and
/// nothing is created in the data directory.
#[test]
fn a_port_in_use_names_the_flag_and_creates_nothing() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("fresh");
    for (flag, args) in [
        (
            "--listen",
            ["--listen", port.as_str(), "--admin-listen", "127.0.0.1:0"],
        ),
        (
            "--admin-listen",
            ["--listen", "127.0.0.1:0", "--admin-listen", port.as_str()],
        ),
    ] {
        let mut c = gale();
        c.arg("serve").args(args).arg("--data-dir").arg(&data);
        let out = run(c);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            out.stderr.contains(&format!("cannot listen on {port} ({flag})")),
            "{out:?}"
        );
        assert!(out.stderr.contains("hint:"), "{out:?}");
        assert!(!out.stderr.contains("internal"), "{out:?}");
        assert!(!data.exists(), "the data directory was created");
    }
}

/// Item 9 of issue 22: a second Ctrl-C stops a draining node at once.
#[test]
fn a_second_ctrl_c_stops_a_draining_node_at_once() {
    let data = tempfile::tempdir().unwrap();
    let mut serve = gale();
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path());
    let mut node = Running::spawn(serve);
    let gateway = node.wait_for("gateway", Duration::from_secs(30));
    let admin = node.wait_for("admin API", Duration::from_secs(5));
    let manifest = data.path().join("slow.toml");
    std::fs::write(
        &manifest,
        format!(
            "[app]\nname = \"slow\"\n[functions.slow]\nsource = \"{}\"\nhttp = [{{ route = \"GET /sleep\" }}]\n",
            common::guests().join("testbed.wasm").display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut c = gale();
        c.args(args)
            .args(["--server", &admin])
            .arg("--data-dir")
            .arg(data.path());
        run(c)
    };
    let deployed = cli(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert_eq!(deployed.code, Some(0), "{deployed:?}");

    // One request that sleeps 20 s.
    let addr = gateway.trim_start_matches("http://").to_string();
    let mut request = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    request
        .write_all(b"GET /sleep?ms=20000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = cli(&["describe", "slow", "--output", "json"]);
        let info: serde_json::Value = serde_json::from_str(&d.stdout).unwrap_or_default();
        if info["stats"]["active"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the request never ran: {d:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let interrupt = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    let pid = node.child.id();
    interrupt(pid);
    node.wait_containing(
        "stopping: waiting for 1 invocation to finish; Ctrl-C again to stop now",
        Duration::from_secs(5),
    );
    let second = Instant::now();
    interrupt(pid);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(5),
            "still running after a second Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    drop(request);
}

const DESCRIBED: &str = r#"
[app]
name = "shop"
[topics.orders]
[functions.h]
source = "testbed.wasm"
env = { SECRET_KEY = "hunter2", REGION = "eu" }
http = [{ route = "GET /h/{*rest}" }]
[[functions.h.events]]
topic = "orders"
filter = { type = "order_placed" }
max_attempts = 5
dead_letter = "orders-dlq"
[[functions.h.schedule]]
cron = "0 */5 * * * *"
[buckets.uploads]
[[functions.h.bucket]]
bucket = "uploads"
suffix = ".jpg"
[functions.g]
source = "testbed.wasm"
"#;

/// Item 10 of issue 22: describe shows event, schedule and bucket triggers and env keys
/// (not their values).
#[test]
fn describe_shows_triggers_schedules_and_env_keys() {
    let n = InProcess::start(DESCRIBED);
    let d = n.gale(&["describe", "h"]);
    assert_eq!(d.code, Some(0), "{d:?}");
    for wanted in [
        "GET /h/{*rest}",
        "topic orders where type=order_placed; 5 attempts",
        "dead letter orders-dlq",
        "0 */5 * * * * (UTC)",
        "uploads s3:ObjectCreated:* keys *.jpg; ",
        "REGION, SECRET_KEY (values hidden)",
    ] {
        assert!(d.stdout.contains(wanted), "no {wanted:?} in\n{}", d.stdout);
    }
    assert!(!d.stdout.contains("hunter2"), "{}", d.stdout);
}

/// Item 10 of issue 22: `logs --since`, and `logs --app` merging the
/// functions of an app, following them with -f.
#[test]
fn logs_since_and_of_a_whole_app() {
    let n = InProcess::start(DESCRIBED);
    for f in ["h", "g", "h"] {
        let r = n.gale(&["invoke", f, "--path", "/print?n=1"]);
        assert_eq!(r.code, Some(0), "{r:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    n.rt.block_on(async {
        n.node.logs("h", 2).await;
        n.node.logs("g", 1).await;
    });

    let all = n.gale(&["logs", "--app", "shop"]);
    assert_eq!(all.code, Some(0), "{all:?}");
    let records: Vec<&str> = all.stdout.lines().filter(|l| !l.starts_with("  ")).collect();
    let names: Vec<&str> = records.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(names, ["h", "g", "h"], "{}", all.stdout);
    let mut times: Vec<&str> = records.iter().map(|l| l.split(' ').next().unwrap()).collect();
    let in_order = times.clone();
    times.sort();
    assert_eq!(times, in_order);

    let since = n.gale(&["logs", "h", "--since", "1h"]);
    assert_eq!(since.code, Some(0), "{since:?}");
    assert_eq!(
        since.stdout.lines().filter(|l| !l.starts_with("  ")).count(),
        2,
        "{since:?}"
    );
    let none = n.gale(&["logs", "h", "--since", "2100-01-01T00:00:00Z"]);
    assert_eq!(none.code, Some(0), "{none:?}");
    assert_eq!(none.stdout, "");
    let bad = n.gale(&["logs", "h", "--since", "yesterday"]);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stderr.contains("--since"), "{bad:?}");

    // Following the app: a new invocation of either function shows up.
    let mut c = gale();
    c.args(["logs", "--app", "shop", "-f", "--since", "1s"])
        .args(["--server", &n.node.admin, "--token", &n.node.token])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut follow = c.spawn().unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(n.gale(&["invoke", "g", "--path", "/print?n=1"]).code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.split(' ').nth(1) == Some("g") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no record of g followed; saw {seen:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

/// Item 10 of issue 22: `version`, `completions`, and help that lists only
/// the flags a command takes; client flags go before or after the command.
#[test]
fn version_completions_and_flags_where_they_apply() {
    let v = run({
        let mut c = gale();
        c.arg("version");
        c
    });
    assert_eq!(v.stdout, format!("gale {}\n", env!("CARGO_PKG_VERSION")));
    let v = run({
        let mut c = gale();
        c.args(["version", "--output", "json"]);
        c
    });
    let json: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));

    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run({
            let mut c = gale();
            c.args(["completions", shell]);
            c
        });
        assert_eq!(out.code, Some(0), "{shell}: {out:?}");
        assert!(out.stdout.contains("invoke"), "{shell}");
    }

    let help = |args: &[&str]| {
        let mut c = gale();
        c.args(args).arg("--help");
        run(c).stdout
    };
    let serve = help(&["serve"]);
    for flag in ["--server", "--output", "--token", "--gateway"] {
        assert!(!serve.contains(flag), "serve --help lists {flag}:\n{serve}");
    }
    let up = help(&["up"]);
    for flag in ["--server", "--token", "--gateway"] {
        assert!(!up.contains(flag), "up --help lists {flag}:\n{up}");
    }
    assert!(help(&["ls"]).contains("--server"));
    assert!(help(&["dlq", "ls"]).contains("--server"));
    let refused = run({
        let mut c = gale();
        c.args(["serve", "--server", "http://127.0.0.1:1"]);
        c
    });
    assert_ne!(refused.code, Some(0));

    // Before or after the command, against a real node.
    let n = InProcess::start(&common::testbed_app("flags", &[("f", "")]));
    for args in [
        vec![
            "--server",
            n.node.admin.as_str(),
            "--token",
            n.node.token.as_str(),
            "ls",
        ],
        vec![
            "ls",
            "--server",
            n.node.admin.as_str(),
            "--token",
            n.node.token.as_str(),
        ],
        vec![
            "--output",
            "json",
            "ls",
            "--server",
            n.node.admin.as_str(),
            "--token",
            n.node.token.as_str(),
        ],
    ] {
        let out = run({
            let mut c = gale();
            c.args(&args);
            c
        });
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.contains("flags"), "{args:?}: {out:?}");
    }
}

/// A tiny blocking GET without pulling in reqwest's blocking feature.
mod reqwest {
    pub fn blocking_get(url: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

/// Buckets and S3 keys from the CLI: made, listed, refused when wrong,
/// removed; a key's secret is shown once and never listed.
#[test]
fn buckets_and_keys_are_managed_from_the_cli() {
    let n = InProcess::start("[app]\nname = \"files\"\n[buckets.uploads]\nmax_size = \"1GiB\"\n");
    let made = n.gale(&["buckets", "create", "reports", "--expire-after", "30d"]);
    assert_eq!(made.code, Some(0), "{made:?}");
    let ls = n.gale(&["buckets"]);
    assert_eq!(ls.code, Some(0), "{ls:?}");
    assert!(
        ls.stdout.contains("uploads") && ls.stdout.contains("1073741824"),
        "{ls:?}"
    );
    assert!(
        ls.stdout.contains("reports") && ls.stdout.contains("30days"),
        "{ls:?}"
    );
    let bad = n.gale(&["buckets", "create", "Bad_Name"]);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stderr.contains("not a valid bucket name"), "{bad:?}");

    let key = n.gale(&[
        "keys",
        "create",
        "--bucket",
        "uploads",
        "--read-only",
        "--output",
        "json",
    ]);
    assert_eq!(key.code, Some(0), "{key:?}");
    let key: serde_json::Value = serde_json::from_str(&key.stdout).unwrap();
    let (id, secret) = (key["id"].as_str().unwrap(), key["secret"].as_str().unwrap());
    assert!(id.starts_with("GALE") && id.len() == 20, "{key}");
    assert_eq!(secret.len(), 40, "{key}");
    let listed = n.gale(&["keys", "ls"]);
    assert!(
        listed.stdout.contains(id) && listed.stdout.contains("read "),
        "{listed:?}"
    );
    assert!(
        !listed.stdout.contains(secret),
        "a listing shows a secret: {listed:?}"
    );
    let nowhere = n.gale(&["keys", "create", "--bucket", "nosuch"]);
    assert_eq!(nowhere.code, Some(1), "{nowhere:?}");
    assert!(nowhere.stderr.contains("bucket_not_found"), "{nowhere:?}");
    assert_eq!(n.gale(&["keys", "rm", id]).code, Some(0));
    let again = n.gale(&["keys", "rm", id]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("key_not_found"), "{again:?}");

    assert_eq!(n.gale(&["buckets", "rm", "reports"]).code, Some(0));
    let gone = n.gale(&["buckets", "rm", "reports"]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(gone.stderr.contains("bucket_not_found"), "{gone:?}");
}
