//! The `gale` binary as a user runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn gale() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gale"));
    for var in [
        "GALE_SERVER",
        "GALE_TOKEN",
        "GALE_DATA_DIR",
        "GALE_LISTEN",
        "GALE_ADMIN_LISTEN",
    ] {
        c.env_remove(var);
    }
    // Every node of these tests listens on ephemeral ports, the S3 API too.
    c.env("GALE_S3_LISTEN", "127.0.0.1:0");
    c
}

/// A `gale serve`/`gale up` process whose stderr is read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix` and returns the rest.
    fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let line = self.wait_until(within, |line| line.starts_with(prefix), "starting with", prefix);
        line[prefix.len()..].trim().to_string()
    }

    /// Waits for a line containing `needle` and returns it whole.
    fn wait_containing(&mut self, needle: &str, within: Duration) -> String {
        self.wait_until(within, |line| line.contains(needle), "containing", needle)
    }

    fn wait_until(
        &mut self,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
        how: &str,
        what: &str,
    ) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line {how} {what:?}; saw:\n{}", self.seen.join("\n"));
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    /// A test that fails half-way leaves no node running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
        vec!["replay", "--help"],
        vec!["invocations", "show", "--help"],
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
            let gateway = node.wait_for("gateway", Duration::from_secs(30));
            let admin = node.wait_for("admin API", Duration::from_secs(5));
            (node, gateway, admin)
        };
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
