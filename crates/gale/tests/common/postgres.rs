//! A throwaway PostgreSQL server for change-data-capture tests: made with
//! the installed `initdb` in a temporary directory, configured for logical
//! replication, listening on a free loopback port, and removed on drop.
//! The machine's shared server (wal_level = replica) is never touched.
//! Under root the server runs as the `postgres` user, as PostgreSQL
//! requires.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Pg {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The user and group the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
    server: std::sync::Mutex<Option<std::process::Child>>,
}

/// The newest installed PostgreSQL's binaries.
fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    /// Initializes and starts a server with `wal_level = logical`; the
    /// superuser `postgres` connects without a password, the role `app`
    /// (password `secret`, no REPLICATION) with one.
    pub fn start() -> Pg {
        Pg::start_with(&["-c", "wal_level=logical"])
    }

    /// A server with the given `postgres` options (`-c name=value`...).
    pub fn start_with(options: &[&str]) -> Pg {
        let owner = (id(&["-u"]) == 0).then(|| (id(&["-u", "postgres"]), id(&["-g", "postgres"])));
        let dir = tempfile::Builder::new()
            .prefix("gale-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let pg = Pg {
            port: free_port(),
            dir,
            bin: bindir(),
            owner,
            server: Default::default(),
        };
        let init = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // `app` signs in with a password; everyone else is trusted.
        let hba = "host all app 127.0.0.1/32 scram-sha-256\nhost replication app 127.0.0.1/32 scram-sha-256\n\
                   host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\nlocal all all trust\n";
        std::fs::write(pg.data().join("pg_hba.conf"), hba).unwrap();
        let mut conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             max_wal_senders = 10\nmax_replication_slots = 10\nwal_sender_timeout = 10s\n",
            pg.port,
            pg.dir.display()
        );
        for pair in options.chunks(2) {
            if let [_, setting] = pair {
                conf.push_str(&format!("{setting}\n"));
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        pg.run();
        pg.psql("CREATE ROLE app LOGIN PASSWORD 'secret'");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        c.current_dir(&self.dir);
        c
    }

    /// Starts the server on its data directory and waits until it answers
    /// (a server killed a moment ago may take a few tries while its
    /// orphaned backends end).
    pub fn run(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut child = self
                .command("postgres")
                .arg("-D")
                .arg(self.data())
                .stdout(log.try_clone().unwrap())
                .stderr(log.try_clone().unwrap())
                .spawn()
                .unwrap();
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.ready() {
                    *self.server.lock().unwrap() = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "PostgreSQL did not start: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ready(&self) -> bool {
        self.command("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&self) {
        if let Some(mut child) = self.server.lock().unwrap().take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        // Its backends end once they notice; wait for the port to free.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql as the superuser; its output, unaligned.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A client for writing rows, as an application would.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.lock().unwrap().take() {
            // SIGQUIT: PostgreSQL's immediate shutdown, backends included.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
