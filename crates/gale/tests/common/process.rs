//! The `gale` binary as a separate process: a node that can be killed
//! with SIGKILL, and whose log lines a test waits for.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `gale` without the environment that would point it elsewhere.
pub fn gale() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gale"));
    for var in [
        "GALE_SERVER",
        "GALE_TOKEN",
        "GALE_DATA_DIR",
        "GALE_LISTEN",
        "GALE_ADMIN_LISTEN",
        "GALE_GATEWAY",
    ] {
        c.env_remove(var);
    }
    // Every node of these tests listens on ephemeral ports, the S3 API too.
    c.env("GALE_S3_LISTEN", "127.0.0.1:0");
    c
}

/// A `gale serve`/`gale up` process whose stderr is read line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
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
    pub fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let line = self.wait_until(within, |line| line.starts_with(prefix), "starting with", prefix);
        line[prefix.len()..].trim().to_string()
    }

    /// Waits for a line containing `needle` and returns it whole.
    pub fn wait_containing(&mut self, needle: &str, within: Duration) -> String {
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

    pub fn stop(mut self) -> std::process::ExitStatus {
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

/// `gale serve` on `data`, on ephemeral ports; the process and the
/// gateway's and admin API's addresses.
pub fn serve(data: &std::path::Path) -> (Running, String, String) {
    let mut c = gale();
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(data);
    let mut node = Running::spawn(c);
    let gateway = node.wait_for("gateway", Duration::from_secs(30));
    let admin = node.wait_for("admin API", Duration::from_secs(5));
    (node, gateway, admin)
}
