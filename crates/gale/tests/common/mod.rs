//! Shared helpers of the integration tests: build the guest components once,
//! start real nodes on ephemeral ports, deploy through the admin API.

#![allow(dead_code)]

pub mod mariadb;
pub mod mqtt;
pub mod postgres;
pub mod process;
pub mod rabbitmq;
pub mod redis;

use gale_core::Manifest;
use gale_core::api::{DeployRequest, DeployResponse, FunctionInfo, InvocationLog};
use gale_core::error::ErrorBody;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds `tests/guests` (once per test process; cargo's own lock makes
/// parallel test processes wait for each other) and returns the directory
/// holding the `.wasm` files.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("tests/guests");
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
        assert!(
            status.success(),
            "building the test guests failed; is the wasm32-wasip2 target installed?"
        );
        dir.join("target/wasm32-wasip2/release")
    })
}

pub struct TestNode {
    pub node: Option<gale_node::NodeHandle>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub gateway: String,
    pub admin: String,
    /// The S3-compatible API.
    pub s3: String,
    pub token: String,
}

pub fn options(dir: &Path) -> gale_node::Options {
    let mut o = gale_node::Options::new(dir);
    o.listen = "127.0.0.1:0".parse().unwrap();
    o.admin_listen = "127.0.0.1:0".parse().unwrap();
    o.s3_listen = "127.0.0.1:0".parse().unwrap();
    o
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let o = options(dir.path());
        Self::start_with(dir, o).await
    }

    pub async fn start_with(dir: tempfile::TempDir, options: gale_node::Options) -> TestNode {
        let node = gale_node::start(options).await.expect("node starts");
        TestNode {
            gateway: format!("http://{}", node.gateway),
            admin: format!("http://{}", node.admin),
            s3: format!("http://{}", node.s3),
            token: node.token.clone(),
            node: Some(node),
            dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(200)
                .build()
                .unwrap(),
        }
    }

    /// A client of a node running in another process (`gale serve` on
    /// `dir`; addresses as it prints them), whose token is in the data
    /// directory.
    pub fn attach(dir: tempfile::TempDir, gateway: &str, admin: &str) -> TestNode {
        let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
        TestNode {
            node: None,
            gateway: gateway.to_string(),
            admin: admin.to_string(),
            s3: String::new(),
            token: token.trim().to_string(),
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the node and starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestNode {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let o = options(dir.path());
        TestNode::start_with(dir, o).await
    }

    /// Stops the node, keeping its data directory.
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// Deploys a manifest whose `source`s name files in the guests directory.
    pub async fn deploy(&self, manifest: &str) -> Result<DeployResponse, gale_core::Error> {
        self.deploy_from(manifest, guests()).await
    }

    pub async fn deploy_from(&self, manifest: &str, dir: &Path) -> Result<DeployResponse, gale_core::Error> {
        let manifest = Manifest::from_toml(manifest, "gale.toml")?;
        let mut artifacts = std::collections::BTreeMap::new();
        for (name, f) in &manifest.functions {
            let data = if f.runtime == gale_core::manifest::RuntimeKind::Process {
                gale_process::package::pack(&dir.join(&f.source)).unwrap()
            } else {
                std::fs::read(dir.join(&f.source)).unwrap()
            };
            let digest = gale_store::digest_of(&data);
            let r = self
                .http
                .put(format!("{}/v1/artifacts/{digest}", self.admin))
                .bearer_auth(&self.token)
                .body(data)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "upload: {}", r.status());
            artifacts.insert(name.clone(), digest);
        }
        let app = manifest.app.name.clone();
        let r = self
            .http
            .post(format!("{}/v1/apps/{app}/deploy", self.admin))
            .bearer_auth(&self.token)
            .json(&DeployRequest { manifest, artifacts })
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            Ok(r.json().await.unwrap())
        } else {
            Err(r.json::<ErrorBody>().await.unwrap().error)
        }
    }

    pub async fn admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = self
            .http
            .get(format!("{}{path}", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A source as `GET /v1/sources` shows it, if listed.
    pub async fn source(&self, name: &str) -> Option<gale_core::api::SourceInfo> {
        let all: Vec<gale_core::api::SourceInfo> = self.admin_get("/v1/sources").await;
        all.into_iter().find(|s| s.name == name)
    }

    /// Waits until a source streams: running, with a position read (what
    /// changes after this is not missed).
    pub async fn wait_streaming(&self, name: &str) -> gale_core::api::SourceInfo {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.source(name).await;
            if let Some(s) = &s
                && s.state == "running"
                && s.position.is_some()
            {
                return s.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the source never streamed: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until source `name` runs and has published twice: a schedule
    /// beside failing sources still fires.
    pub async fn wait_firing(&self, name: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.source(name).await.unwrap();
            if s.state == "running" && s.published >= 2 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a source failed, and returns its last error.
    pub async fn wait_failure(&self, name: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.source(name).await;
            if let Some(e) = s.as_ref().and_then(|s| s.last_error.clone()) {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the source never failed: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stored event of a topic (the CloudEvents), oldest first.
    pub async fn topic_events(&self, topic: &str) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page: Vec<gale_core::api::StoredEventInfo> = self
                .admin_get(&format!("/v1/topics/{topic}/events?after={after}&limit=1000"))
                .await;
            let Some(last) = page.last() else {
                return all;
            };
            after = last.seq;
            all.extend(page.into_iter().map(|e| e.event));
        }
    }

    /// Waits until a topic holds at least `n` events; returns them all.
    pub async fn wait_topic_events(&self, topic: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let topics: Vec<gale_core::api::TopicInfo> = self.admin_get("/v1/topics").await;
            let have = topics.iter().find(|t| t.name == topic).map_or(0, |t| t.depth) as usize;
            if have >= n {
                return self.topic_events(topic).await;
            }
            if std::time::Instant::now() > deadline {
                let sources: Vec<gale_core::api::SourceInfo> = self.admin_get("/v1/sources").await;
                panic!("{have} of {n} events on {topic} after {within:?}; sources: {sources:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn rollback(&self, function: &str, version: u64) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/functions/{function}/rollback", self.admin))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .unwrap()
    }

    pub async fn describe(&self, function: &str) -> FunctionInfo {
        self.admin_get(&format!("/v1/functions/{function}")).await
    }

    /// The invocation logs of `function`, waiting until at least `n` exist
    /// (logs are written in the background; a chain of cold process
    /// functions on a busy machine may take a while).
    pub async fn logs(&self, function: &str, n: usize) -> Vec<InvocationLog> {
        for _ in 0..600 {
            let logs: Vec<InvocationLog> = self
                .admin_get(&format!("/v1/functions/{function}/logs?limit=1000"))
                .await;
            if logs.len() >= n {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} invocation logs for {function}");
    }

    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }
}

/// A manifest of one app with functions all running the testbed component.
pub fn testbed_app(app: &str, functions: &[(&str, &str)]) -> String {
    let mut m = format!("[app]\nname = \"{app}\"\n");
    for (name, extra) in functions {
        m.push_str(&format!(
            "[functions.{name}]\nsource = \"testbed.wasm\"\n{extra}\n"
        ));
    }
    m
}

/// `tests/s3`: the Python scripts that drive the S3 API with real clients.
pub fn s3_scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3")
}

/// Points an AWS client (boto3, the AWS CLI) at a node's S3 API as an
/// operator would: any access key id, the admin token as the secret, no
/// profile or config of the machine's; and tells the scripts where the
/// admin API is.
pub fn aws_env(cmd: &mut std::process::Command, s3: &str, admin: &str, token: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", "operator")
        .env("AWS_SECRET_ACCESS_KEY", token)
        .env("AWS_ENDPOINT_URL", s3)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("GALE_ADMIN", admin)
        .env("GALE_TOKEN", token)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REQUEST_CHECKSUM_CALCULATION")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

/// Runs a script of `tests/s3` against the node; panics with its output
/// if it fails.
pub async fn s3_script(node: &TestNode, script: &str) {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(s3_scripts().join(script)).current_dir(s3_scripts());
    aws_env(&mut cmd, &node.s3, &node.admin, &node.token);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python3 runs (boto3 and awscli: pip install boto3 awscli)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Deploys a manifest without functions (nothing to build).
pub async fn deploy(node: &TestNode, manifest: &str) {
    node.deploy_from(manifest, Path::new(".")).await.unwrap();
}
