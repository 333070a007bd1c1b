//! A throwaway MariaDB server for a test: made from the installed binaries
//! (`mariadb-install-db`, `mariadbd`) in a temporary directory, on a free
//! loopback port, writing a row-based binlog; run as the `mysql` user when
//! the tests run as root (mariadbd refuses root). The machine's own server
//! is never touched. Killed and removed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// The user and group the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
}

impl MariaDb {
    /// Installs and starts a server; panics with its error log if it does
    /// not come up.
    pub async fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let owner = mysql_user();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        // Its own temporary directory: servers bootstrapping at the same
        // time in a shared /tmp clash on their temporary tables' names.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
        }
        let mut install = Command::new("mariadb-install-db");
        install
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            install.uid(uid).gid(gid);
        }
        let out = install
            .output()
            .expect("mariadb-install-db runs (apt-get install mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut db = MariaDb {
            dir,
            port,
            child: None,
            owner,
        };
        db.run().await;
        db
    }

    /// A URL of the server as `root` (no password), for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection as root.
    pub async fn conn(&self) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(&self.url("")).unwrap();
        let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
        mysql_async::Conn::new(opts).await.unwrap()
    }

    /// `kill -9` of the server: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its data directory and port (after
    /// [`MariaDb::kill`]): it recovers as after a crash.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn run(&mut self) {
        let p = |name: &str| self.path(name).display().to_string();
        let mut cmd = Command::new(mariadbd());
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", p("data")))
            .arg(format!("--port={}", self.port))
            .arg(format!("--tmpdir={}", p("tmp")))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", p("sock")))
            .arg(format!("--pid-file={}", p("pid")))
            .arg(format!("--log-error={}", p("error.log")))
            .arg(format!("--log-bin={}", p("binlog")))
            .arg("--binlog-format=ROW")
            .arg("--server-id=1")
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--max-connections=50")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("mariadbd starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let opts =
                mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&self.url("")).unwrap())
                    .prefer_socket(false);
            if let Ok(conn) = mysql_async::Conn::new(opts).await {
                let _ = conn.disconnect().await;
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.path("error.log")).unwrap_or_default();
                panic!("mariadbd did not come up ({exited:?}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// mariadbd is in /usr/sbin, often not on a user's PATH.
fn mariadbd() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("mariadbd");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("mariadbd")
}

/// The `mysql` user's ids when running as root.
fn mysql_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("mysql:"))
        .expect("running as root needs a `mysql` user for mariadbd (installed with mariadb-server)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
