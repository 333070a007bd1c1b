//! MQTT helpers: publishing with Mosquitto's own client (`mosquitto_pub`),
//! and a throwaway broker (its own port, config and persistence directory,
//! so a restart keeps sessions; run as the `mosquitto` user when the tests
//! run as root), stopped and removed on drop.

use super::redis::{as_user, free_port, give};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Publishes each line as one QoS 1 message on `topic`, in order, with
/// `mosquitto_pub -l`; `extra` like `["-D", "publish", "user-property", "k", "v"]`.
pub fn publish(port: u16, version: u8, topic: &str, lines: &[String], extra: &[&str]) {
    let v = if version == 5 { "mqttv5" } else { "mqttv311" };
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            v,
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// One message with `mosquitto_pub -m`.
pub fn publish_one(port: u16, version: u8, topic: &str, message: &str, extra: &[&str]) {
    let v = if version == 5 { "mqttv5" } else { "mqttv311" };
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            v,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ])
        .args(extra)
        .status()
        .expect("mosquitto_pub runs");
    assert!(ok.success(), "mosquitto_pub failed");
}

pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// With `users`, only those (user, password) may connect.
    pub fn start(users: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\nautosave_interval 1\n",
            dir.path().display()
        );
        if users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            std::fs::write(&passwords, "").unwrap();
            for (user, password) in users {
                let ok = Command::new("mosquitto_passwd")
                    .args(["-b"])
                    .arg(&passwords)
                    .args([user, password])
                    .status()
                    .unwrap();
                assert!(ok.success());
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwords.display()
            ));
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        give(dir.path(), "mosquitto");
        let _ = Command::new("chown")
            .arg("-R")
            .arg("mosquitto")
            .arg(dir.path())
            .status();
        let mut b = Broker {
            port,
            dir,
            child: None,
        };
        b.up();
        b
    }

    pub fn up(&mut self) {
        let child = as_user("mosquitto", "mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker as a restart would (SIGTERM: it saves its
    /// sessions first).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}
