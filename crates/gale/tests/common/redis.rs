//! A throwaway redis-server for tests that restart the broker: its own
//! port and directory, the stream kept in an append-only file synced on
//! every write (so a restart keeps the stream and its groups), run as the
//! `redis` user when the tests run as root. Stopped and removed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Runs `program` as `user` when the tests run as root (servers refuse
/// or should not run as root), directly otherwise.
pub fn as_user(user: &str, program: &str) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // setpriv executes the program in its own place (no parent left
        // behind), so killing the child kills the server.
        let mut c = Command::new("setpriv");
        c.args(["--reuid", user, "--regid", user, "--init-groups", program]);
        c
    } else {
        Command::new(program)
    }
}

/// Lets `user` write `dir` when the tests run as root.
pub fn give(dir: &std::path::Path, user: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown").arg(user).arg(dir).status().unwrap();
        assert!(ok.success(), "chown {user} {}", dir.display());
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        give(dir.path(), "redis");
        let mut s = Server {
            port: free_port(),
            dir,
            child: None,
        };
        s.up();
        s
    }

    pub fn up(&mut self) {
        let child = as_user("redis", "redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL): what it confirmed is in its file.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
    }
}
