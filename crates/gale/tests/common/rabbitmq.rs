//! RabbitMQ for the tests: the machine's broker (127.0.0.1:5672,
//! guest/guest) through lapin, RabbitMQ's own view of a queue, and a
//! throwaway broker of the installed server that a test may stop and start.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The machine's broker, default vhost.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection and a channel in confirm mode.
pub async fn client(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, channel)
}

/// Declares a durable queue, classic or quorum.
pub async fn declare(channel: &Channel, queue: &str, quorum: bool) {
    let mut args = FieldTable::default();
    let kind = if quorum { "quorum" } else { "classic" };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
}

pub async fn delete(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Publishes to a queue by the default exchange, persistent, and waits
/// for the broker's confirmation.
pub async fn publish(channel: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// Messages ready in the queue and its consumers, as a passive declare
/// tells (on a channel of its own: a missing queue closes it).
pub async fn counts(conn: &Connection, queue: &str) -> (u32, u32) {
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Messages of a queue of the machine's broker (default vhost) handed to
/// a consumer and not acknowledged, as `rabbitmqctl` shows them.
pub fn unacked(queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(queue)).then(|| parts.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("queue {queue} not listed: {text}"))
}

/// A free TCP port on the loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RabbitMQ server of its own: the installed binaries, on free ports,
/// with its data in a temporary directory, run as the `rabbitmq` user
/// when the tests run as root. Stopped and removed when dropped.
pub struct Broker {
    pub port: u16,
    dist: u16,
    name: String,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl Broker {
    pub fn start(name: &str) -> Broker {
        let dir = std::env::temp_dir().join(format!("gale-rabbitmq-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let mut b = Broker {
            port: free_port(),
            dist: free_port(),
            name: name.to_string(),
            dir,
            child: None,
        };
        std::fs::write(
            b.dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{}\n", b.port),
        )
        .unwrap();
        std::fs::write(b.dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(b.dir.join("env.conf"), "").unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let status = std::process::Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&b.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        b.up();
        b
    }

    /// Starts the server on its data and waits until it takes connections.
    pub fn up(&mut self) {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let vars = [
            ("HOME", "/var/lib/rabbitmq".to_string()),
            ("RABBITMQ_NODENAME", format!("gale-test-{}@localhost", self.name)),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist.to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", d("env.conf")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            (
                "RABBITMQ_SERVER_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ];
        let server = "/usr/lib/rabbitmq/bin/rabbitmq-server";
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "rabbitmq", "--", "env"]);
            for (k, v) in &vars {
                c.arg(format!("{k}={v}"));
            }
            c.arg(server);
            c
        } else {
            let mut c = std::process::Command::new(server);
            c.envs(vars.iter().map(|(k, v)| (k, v)));
            c
        };
        let out = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let log = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
            assert!(Instant::now() < deadline, "rabbitmq-server did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (all its processes), keeping its data.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let group = c.id() as i32;
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = c.wait();
            // The port is free again once the server is gone.
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
