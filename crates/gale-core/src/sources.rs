//! Sources: what feeds topics from outside a function's own code.
//!
//! A `[sources.NAME]` table names its kind with `type` and holds that kind's
//! settings; each kind is a variant of [`SourceSpec`], parsed strictly
//! (unknown keys are refused) and validated here without I/O. The node
//! builds and runs them (`gale-node/src/sources`). A function's
//! `[[functions.NAME.schedule]]` entries are sources too, made by the node
//! from the function's spec, so they share the same guarantees.

use crate::manifest::{Missed, valid_topic};
use crate::units::HumanDuration;
use serde::{Deserialize, Serialize};

/// A `[sources.NAME]` table, by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceSpec {
    /// Publishes an event to a topic at the times a cron expression names.
    Schedule(ScheduleSource),
    /// Row changes of PostgreSQL tables, by logical replication.
    Postgres(PostgresSource),
    /// Row changes of MariaDB/MySQL tables, from the row-based binlog.
    Mysql(MysqlSource),
    /// Messages of a NATS subject, or of a JetStream stream.
    Nats(NatsSource),
    /// Messages of a RabbitMQ queue.
    Rabbitmq(RabbitmqSource),
    /// Entries of a Redis stream, read by a consumer group.
    Redis(RedisSource),
    /// Messages of MQTT topic filters, on a persistent session.
    Mqtt(MqttSource),
    /// Records of Kafka topics, read in a consumer group.
    Kafka(KafkaSource),
}

impl SourceSpec {
    /// The `type` as written in the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Schedule(_) => "schedule",
            SourceSpec::Postgres(_) => "postgres",
            SourceSpec::Mysql(_) => "mysql",
            SourceSpec::Nats(_) => "nats",
            SourceSpec::Rabbitmq(_) => "rabbitmq",
            SourceSpec::Redis(_) => "redis",
            SourceSpec::Mqtt(_) => "mqtt",
            SourceSpec::Kafka(_) => "kafka",
        }
    }

    /// The topic the source feeds.
    pub fn topic(&self) -> &str {
        match self {
            SourceSpec::Schedule(s) => &s.topic,
            SourceSpec::Postgres(s) => &s.topic,
            SourceSpec::Mysql(s) => &s.topic,
            SourceSpec::Nats(s) => &s.topic,
            SourceSpec::Rabbitmq(s) => &s.topic,
            SourceSpec::Redis(s) => &s.topic,
            SourceSpec::Mqtt(s) => &s.topic,
            SourceSpec::Kafka(s) => &s.topic,
        }
    }

    /// Where messages the source cannot take are parked, if anywhere.
    pub fn dead_letter(&self) -> Option<&str> {
        match self {
            SourceSpec::Nats(s) => s.dead_letter.as_deref(),
            SourceSpec::Rabbitmq(s) => s.dead_letter.as_deref(),
            SourceSpec::Redis(s) => s.dead_letter.as_deref(),
            SourceSpec::Mqtt(s) => s.dead_letter.as_deref(),
            SourceSpec::Kafka(s) => s.dead_letter.as_deref(),
            SourceSpec::Schedule(_) | SourceSpec::Postgres(_) | SourceSpec::Mysql(_) => None,
        }
    }

    /// Checks the settings; the error names the key (relative to the
    /// table), what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if !valid_topic(self.topic()) {
            return Err((
                "topic",
                format!("{:?} is not a valid topic name", self.topic()),
                "name a topic declared under [topics], like \"ticks\"",
            ));
        }
        if let Some(d) = self.dead_letter() {
            if !valid_topic(d) {
                return Err((
                    "dead_letter",
                    format!("{d:?} is not a valid topic name"),
                    "name a topic for messages the source cannot take, like \"orders-dead\"",
                ));
            }
            if d == self.topic() {
                return Err((
                    "dead_letter",
                    "the dead-letter topic is the source's own topic".into(),
                    "name another topic, so subscribers of the source's topic never see messages it could not take",
                ));
            }
        }
        match self {
            SourceSpec::Schedule(s) => s.cron().check(),
            SourceSpec::Postgres(s) => s.check(),
            SourceSpec::Mysql(s) => s.check(),
            SourceSpec::Nats(s) => s.check(),
            SourceSpec::Rabbitmq(s) => s.check(),
            SourceSpec::Redis(s) => s.check(),
            SourceSpec::Mqtt(s) => s.check(),
            SourceSpec::Kafka(s) => s.check(),
        }
    }
}

/// What a broker source takes as a message's body. A message that does
/// not fit is parked in the source's `dead_letter` topic (or, without one,
/// logged and dropped) and acknowledged, so the messages behind it flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageFormat {
    /// Anything: a CloudEvent by the broker's binding is taken as that
    /// event; any other body becomes the data, as JSON, text or base64.
    #[default]
    Any,
    /// A CloudEvent, or a body that is JSON.
    Json,
    /// Only CloudEvents (binary or structured, by the broker's binding).
    Cloudevents,
}

/// Whether a change-data-capture source first emits the rows its tables
/// already hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Every existing row as an `op: "r"` event from one consistent
    /// snapshot, then the changes from exactly the snapshot's position.
    Initial,
    /// Only changes committed after the source first started.
    #[default]
    Never,
}

/// `type = "postgres"`: committed row changes of tables, read from a
/// logical replication slot with the `pgoutput` plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// `postgres://user[:password]@host[:port]/database`; without a
    /// password, the node's `PGPASSWORD` is used.
    pub url: String,
    /// The tables to follow, `schema.table` or `table` (in `public`); Gale
    /// keeps a publication of them named after the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// An existing publication to follow instead of `tables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// The replication slot; `gale_<app>_<source>` unless named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The topic every row change is published to.
    pub topic: String,
}

impl PostgresSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        check_url(&self.url, &["postgres", "postgresql"])?;
        match (&self.publication, self.tables.is_empty()) {
            (Some(_), false) => {
                return Err((
                    "publication",
                    "`publication` and `tables` are both set".into(),
                    "name the tables with `tables` (Gale keeps a publication of them), or an existing publication with `publication`, not both",
                ));
            }
            (None, true) => {
                return Err((
                    "tables",
                    "no tables to follow".into(),
                    "list them, like tables = [\"public.orders\"], or name an existing publication",
                ));
            }
            _ => {}
        }
        check_tables(&self.tables)?;
        for (key, name) in [("publication", &self.publication), ("slot", &self.slot)] {
            if let Some(name) = name
                && !valid_pg_name(name)
            {
                return Err((
                    key,
                    format!("{name:?} is not a valid name"),
                    "use lowercase letters, digits and '_', at most 63",
                ));
            }
        }
        Ok(())
    }
}

/// Slot and publication names PostgreSQL takes unquoted.
pub fn valid_pg_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `type = "mysql"`: committed row changes of tables, read from a
/// MariaDB or MySQL server's row-based binlog as a replica would. The
/// server must run with `log_bin`, `binlog_format=ROW` and
/// `binlog_row_image=FULL` (and, so events name columns right while the
/// source catches up across schema changes, preferably
/// `binlog_row_metadata=FULL`); the user needs `REPLICATION SLAVE`,
/// `BINLOG MONITOR` (MySQL: `REPLICATION CLIENT`) and `SELECT` on the tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSource {
    /// `mysql://user[:password]@host[:port]/database`.
    pub url: String,
    /// The tables to follow, `database.table` or `table` (in the URL's
    /// database).
    pub tables: Vec<String>,
    /// The replica id Gale reads the binlog as; unique among the server's
    /// replicas. Derived from the source's name unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The topic every row change is published to.
    pub topic: String,
}

impl MysqlSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        check_url(&self.url, &["mysql", "mariadb"])?;
        if self.tables.is_empty() {
            return Err((
                "tables",
                "no tables to follow".into(),
                "list them, like tables = [\"shop.orders\"]",
            ));
        }
        if self.server_id == Some(0) {
            return Err((
                "server_id",
                "0 is not a replica id".into(),
                "pick a number from 1 to 4294967295 that no other replica of the server uses",
            ));
        }
        check_tables(&self.tables)
    }
}

/// `type = "nats"`: messages published on NATS subjects, each copied to
/// a topic as a CloudEvent.
///
/// Without `stream`, a core NATS subscription: NATS itself delivers at
/// most once, so messages published while the source is not subscribed
/// (the node restarting, the connection lost) are not seen by it, and a
/// message received but not yet durable when the node crashes is lost.
/// Use it for telemetry-like subjects, or put a JetStream stream in front.
///
/// With `stream`, a durable JetStream pull consumer on that stream: a
/// message is acknowledged only once its event is durable in the topic, so
/// nothing is lost while the node is down or crashes; a message redelivered
/// after a crash keeps its event id (stream and sequence) and the topic's
/// dedup drops the second copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// `nats://[user:password@]host[:port]` (or `tls://...`; `token@host`
    /// for a token), percent-encoded; a comma-separated list names several
    /// servers of one cluster.
    pub url: String,
    /// The subject to take messages of; `*` matches one token and a final
    /// `>` the rest, like `orders.>`. With `stream`, the consumer's filter
    /// (a subject of the stream, or `>` for all of them).
    pub subject: String,
    /// A JetStream stream to consume durably instead of subscribing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable consumer's name (created if missing, with explicit acks
    /// and delivering the stream from its start); `gale_<app>_<source>`
    /// unless named. Only with `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// What the source takes as a message.
    #[serde(default)]
    pub format: MessageFormat,
    /// The topic every message is published to.
    pub topic: String,
    /// Where messages the source cannot take are parked, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

impl NatsSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        let url_hint = "write it like \"nats://127.0.0.1:4222\" or \"nats://user:password@nats.local:4222\"";
        for server in self.url.split(',') {
            if !valid_nats_url(server.trim()) {
                return Err(("url", format!("{:?} is not a NATS URL", self.url), url_hint));
            }
        }
        if !valid_nats_subject(&self.subject) {
            return Err((
                "subject",
                format!("{:?} is not a NATS subject", self.subject),
                "write tokens separated by '.', with `*` for one whole token and a final `>` for the rest, like \"orders.*.created\" or \"orders.>\"",
            ));
        }
        for (key, name) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if let Some(name) = name
                && !valid_nats_name(name)
            {
                return Err((
                    key,
                    format!("{name:?} is not a valid JetStream name"),
                    "use letters, digits, '-' and '_' (no spaces, '.', '*', '>', '/' or '\\'), at most 255",
                ));
            }
        }
        if self.consumer.is_some() && self.stream.is_none() {
            return Err((
                "consumer",
                "`consumer` is set without `stream`".into(),
                "name the JetStream stream to consume with `stream`, or remove `consumer` for a core NATS subscription",
            ));
        }
        Ok(())
    }
}

/// `type = "rabbitmq"`: messages of a RabbitMQ queue, each copied to a
/// topic as a CloudEvent.
///
/// The source consumes the queue with manual acknowledgements: a message
/// is acknowledged only once its event is durable in the topic, so a crash
/// of the node or a lost connection returns what was in flight to the
/// queue, and the broker hands it over again. A message whose publisher
/// set the `message_id` property keeps its event id across such a
/// redelivery, and the topic's dedup drops the second copy; one without
/// gets a fresh id each time, so it may be stored twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSource {
    /// `amqp://user:password@host[:port]/vhost`, the parts
    /// percent-encoded (the default vhost `/` is `%2f`).
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// Declares the queue (durable) if it is missing; without it the
    /// queue must exist.
    #[serde(default, skip_serializing_if = "is_false")]
    pub declare: bool,
    /// The type of a queue the source declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_type: Option<QueueType>,
    /// Messages the broker hands over before the first of them is
    /// acknowledged.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// What the source takes as a message.
    #[serde(default)]
    pub format: MessageFormat,
    /// The topic every message is published to.
    pub topic: String,
    /// Where messages the source cannot take are parked, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

/// The kind of queue a `rabbitmq` source declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueType {
    /// A classic queue, on one node.
    #[default]
    Classic,
    /// A quorum queue, replicated across the cluster's nodes.
    Quorum,
}

impl QueueType {
    /// The value of the queue's `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

fn default_prefetch() -> u16 {
    500
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl RabbitmqSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        AmqpUrl::parse(&self.url).map_err(|(message, hint)| ("url", message, hint))?;
        if let Err(message) = check_amqp_name(&self.queue) {
            return Err((
                "queue",
                format!("{:?} is not a queue name: {message}", self.queue),
                "name the queue to consume, like \"orders\"",
            ));
        }
        if self.declare && self.queue.starts_with("amq.") {
            return Err((
                "queue",
                format!(
                    "{:?} starts with `amq.`, which RabbitMQ keeps for itself",
                    self.queue
                ),
                "name the queue otherwise, or consume an existing one without `declare`",
            ));
        }
        if self.queue_type.is_some() && !self.declare {
            return Err((
                "queue_type",
                "`queue_type` is set without `declare = true`".into(),
                "set declare = true so Gale declares the queue of that type, or remove `queue_type` to consume an existing queue",
            ));
        }
        if self.prefetch == 0 {
            return Err((
                "prefetch",
                "0 would let the broker hand over the whole queue at once".into(),
                "set how many unacknowledged messages the source may hold, like 500",
            ));
        }
        Ok(())
    }
}

/// A queue, exchange or routing key as AMQP carries it: at most 255 bytes,
/// no control characters.
pub fn check_amqp_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 255 {
        return Err(format!("it is {} bytes long; AMQP allows 255", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err("it holds control characters".into());
    }
    Ok(())
}

/// What an `amqp://` URL names. Its `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AmqpUrl({}, user {:?}, vhost {:?})",
            self.server(),
            self.user,
            self.vhost
        )
    }
}

impl AmqpUrl {
    /// Reads `amqp://user:password@host[:port]/vhost` (percent-encoded
    /// parts; no path is the default vhost `/`). The credentials must be
    /// there: Gale does not fall back to `guest`. `amqps://` is refused:
    /// the node speaks plain AMQP.
    pub fn parse(url: &str) -> Result<AmqpUrl, (String, &'static str)> {
        const HINT: &str = "write it like \"amqp://user:password@127.0.0.1:5672/%2f\" (the vhost percent-encoded, %2f for the default `/`)";
        let parsed = url::Url::parse(url).map_err(|e| (format!("it is not an AMQP URL ({e})"), HINT))?;
        match parsed.scheme() {
            "amqp" => {}
            "amqps" => {
                return Err((
                    "amqps:// (AMQP over TLS) is not built into Gale".into(),
                    "use amqp:// to a listener without TLS, or reach a remote broker through a TLS tunnel (stunnel, an SSH tunnel) on a local port",
                ));
            }
            other => return Err((format!("{other}:// is not AMQP"), HINT)),
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(("the URL names no host".into(), HINT)),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
        };
        let user = decode(parsed.username()).map_err(|_| ("the user is not UTF-8".to_string(), HINT))?;
        let password = parsed
            .password()
            .map(decode)
            .transpose()
            .map_err(|_| ("the password is not UTF-8".to_string(), HINT))?;
        let (user, password) = match (user, password) {
            (u, Some(p)) if !u.is_empty() => (u, p),
            _ => {
                return Err((
                    "the URL names no user and password".into(),
                    "write them into it, like \"amqp://gale:secret@127.0.0.1:5672/%2f\" (percent-encoded); Gale does not assume guest/guest",
                ));
            }
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err((
                "the URL has a query or fragment, which Gale does not read".into(),
                HINT,
            ));
        }
        let vhost = match parsed.path() {
            "" => "/".to_string(),
            "/" => {
                return Err((
                    "the URL names an empty vhost (a path of just `/`)".into(),
                    "end it with %2f for the default vhost `/`, or name the vhost, like \"amqp://user:password@host:5672/shop\"",
                ));
            }
            path => {
                let raw = &path[1..];
                if raw.contains('/') {
                    return Err((
                        format!("the vhost {raw:?} holds a `/`"),
                        "percent-encode `/` in a vhost as %2f, like \"amqp://user:password@host:5672/%2fshop\"",
                    ));
                }
                decode(raw).map_err(|_| ("the vhost is not UTF-8".to_string(), HINT))?
            }
        };
        Ok(AmqpUrl {
            host,
            port: parsed.port().unwrap_or(5672),
            user,
            password,
            vhost,
        })
    }

    /// `amqp://host:port`: the server, without credentials.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("amqp://[{}]:{}", self.host, self.port)
        } else {
            format!("amqp://{}:{}", self.host, self.port)
        }
    }
}

/// Where a consumer group Gale creates starts reading its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamStart {
    /// Every entry the stream holds (`0`).
    #[default]
    Earliest,
    /// Only entries added after the group was created (`$`).
    Latest,
}

/// `type = "redis"`: entries of a Redis stream, read by a consumer group
/// and copied to a topic as CloudEvents.
///
/// An entry is acknowledged (`XACK`) only once its event is durable in the
/// topic, so entries read but not yet durable when the node crashes stay
/// pending in the group and are read again, with the same event id
/// (`<source>/<stream>/<entry id>`), which the topic's dedup drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSource {
    /// `redis://[user:password@]host[:port][/db]`, percent-encoded.
    pub url: String,
    /// The stream's key; created empty (with the group) if missing.
    pub stream: String,
    /// The consumer group; `gale_<app>_<source>` unless named. Created if
    /// missing, at the position `start` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where a group Gale creates starts: `earliest` (the whole stream)
    /// or `latest` (entries added from then on).
    #[serde(default)]
    pub start: StreamStart,
    /// The consumer's name in the group; the source's name unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// How long an entry another consumer of the group was handed may sit
    /// unacknowledged before this source claims it (`XAUTOCLAIM`).
    #[serde(default = "default_claim_after")]
    pub claim_after: HumanDuration,
    /// What the source takes as an entry.
    #[serde(default)]
    pub format: MessageFormat,
    /// The topic every entry is published to.
    pub topic: String,
    /// Where entries the source cannot take are parked, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

fn default_claim_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

impl RedisSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        if !valid_redis_url(&self.url) {
            return Err((
                "url",
                format!("{:?} is not a Redis URL", redact(&self.url)),
                "write it like \"redis://127.0.0.1:6379\" or \"redis://user:password@redis.local:6379/0\" (TLS, rediss://, is not supported)",
            ));
        }
        for (key, name) in [
            ("stream", Some(&self.stream)),
            ("group", self.group.as_ref()),
            ("consumer", self.consumer.as_ref()),
        ] {
            if let Some(name) = name
                && (name.is_empty()
                    || name.len() > 512
                    || name.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err((
                    key,
                    format!("{name:?} is not a usable name"),
                    "use a non-empty name without spaces or control characters, like \"orders\"",
                ));
            }
        }
        if self.claim_after.0 < std::time::Duration::from_secs(1) {
            return Err((
                "claim_after",
                "must be at least 1s".into(),
                "give other consumers time to acknowledge what they were handed, like \"60s\"",
            ));
        }
        Ok(())
    }
}

/// `redis://`, optional credentials, a host, an optional port, an
/// optional database number.
pub fn valid_redis_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("redis://") else {
        return false;
    };
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    if !(db.is_empty() || db.parse::<u32>().is_ok()) || authority.contains(['?', '#', ' ']) {
        return false;
    }
    valid_host_port(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// `host[:port]` (IPv6 in brackets), the port not 0.
fn valid_host_port(host_port: &str) -> bool {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    !host.is_empty()
        && !host.contains(['/', '@'])
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A URL as errors may show it: without its password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_string(),
    }
}

/// `type = "mqtt"`: messages of MQTT topic filters, received with QoS 1
/// on a persistent session and copied to a topic as CloudEvents.
///
/// A message is acknowledged (`PUBACK`) only once its event is durable,
/// and the broker keeps the session (subscriptions and QoS 1 messages)
/// while the source is away. MQTT gives a message no identity of its own,
/// so event ids are fresh: a message in flight when the node crashes is
/// sent again by the broker and stored twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// `mqtt://[user:password@]host[:port]` (port 1883 unless given),
    /// percent-encoded.
    pub url: String,
    /// The topic filters to subscribe to, with `+` for one level and a
    /// final `#` for the rest, like `sensors/+/temp`.
    pub filters: Vec<String>,
    /// The session's client id; `gale_<app>_<source>` unless set. The
    /// broker keeps one session per client id: no other client may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The protocol: 5 (MQTT 5, the default) or 3 (MQTT 3.1.1).
    #[serde(default = "default_mqtt_version")]
    pub version: u8,
    /// A shared subscription's group: the filters are subscribed as
    /// `$share/<group>/<filter>`, and the broker splits their messages
    /// among the group's clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// What the source takes as a message.
    #[serde(default)]
    pub format: MessageFormat,
    /// The topic every message is published to.
    pub topic: String,
    /// Where messages the source cannot take are parked, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

fn default_mqtt_version() -> u8 {
    5
}

impl MqttSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        if !valid_mqtt_url(&self.url) {
            return Err((
                "url",
                format!("{:?} is not an MQTT URL", redact(&self.url)),
                "write it like \"mqtt://127.0.0.1:1883\" or \"mqtt://user:password@broker.local:1883\" (TLS, mqtts://, is not supported)",
            ));
        }
        if self.filters.is_empty() {
            return Err((
                "filters",
                "no topic filters".into(),
                "list them, like filters = [\"sensors/+/temp\"]",
            ));
        }
        for f in &self.filters {
            if !valid_mqtt_filter(f) || f.starts_with("$share/") {
                return Err((
                    "filters",
                    format!("{f:?} is not an MQTT topic filter"),
                    "write levels separated by '/', with `+` for one whole level and a final `#` for the rest, like \"sensors/+/temp\"; for a shared subscription set `share` instead of writing $share/",
                ));
            }
        }
        if !matches!(self.version, 3 | 5) {
            return Err((
                "version",
                format!("{} is not an MQTT version Gale speaks", self.version),
                "write 5 (MQTT 5) or 3 (MQTT 3.1.1)",
            ));
        }
        for (key, name) in [("client_id", &self.client_id), ("share", &self.share)] {
            if let Some(name) = name
                && (name.is_empty()
                    || name.len() > 256
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#')))
            {
                return Err((
                    key,
                    format!("{name:?} is not a usable name"),
                    "use letters, digits, '-' and '_', like \"gale-orders\"",
                ));
            }
        }
        Ok(())
    }
}

/// `mqtt://`, optional credentials, a host, an optional port.
pub fn valid_mqtt_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("mqtt://") else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    !authority.contains(['/', '?', '#', ' '])
        && valid_host_port(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// Levels separated by '/'; `+` only as a whole level, `#` only as the
/// whole last one.
pub fn valid_mqtt_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && filter.len() <= 65535
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (*l == "+" || !l.contains('+')) && (*l == "#" && i == levels.len() - 1 || !l.contains('#'))
        })
}

/// Where a consumer group new to a topic begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaStart {
    /// From the oldest record the topic still holds.
    #[default]
    Earliest,
    /// From records produced after the group first joined.
    Latest,
}

/// `type = "kafka"`: records of Kafka topics, each copied to a topic as a
/// CloudEvent.
///
/// The source reads in a consumer group and commits a partition's offset
/// only once the records before it are durable in the topic, so nothing is
/// lost while the node is down or crashes: the group resumes from its
/// committed offsets, and a record read again keeps its event id (topic,
/// partition and offset), which the topic's dedup drops. Records of one
/// partition keep their order; their key is the event's `partitionkey`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// `kafka://host:port[,host:port...]`, the bootstrap servers; with
    /// `kafka://user:password@...` (percent-encoded) the source signs in
    /// with SASL PLAIN.
    pub url: String,
    /// The Kafka topics to read.
    pub topics: Vec<String>,
    /// The consumer group; `gale_<app>_<source>` unless named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where the group begins on a partition it has no offset for.
    #[serde(default)]
    pub start: KafkaStart,
    /// What the source takes as a record's value.
    #[serde(default)]
    pub format: MessageFormat,
    /// The topic every record is published to.
    pub topic: String,
    /// Where records the source cannot take are parked, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

impl KafkaSource {
    fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        if kafka_servers(&self.url).is_none() {
            return Err((
                "url",
                format!("{:?} is not a Kafka URL", redact(&self.url)),
                "write the bootstrap servers like \"kafka://127.0.0.1:9092\" or \"kafka://user:password@k1:9092,k2:9092\"",
            ));
        }
        if self.topics.is_empty() {
            return Err((
                "topics",
                "no topics to read".into(),
                "list them, like topics = [\"orders\"]",
            ));
        }
        for t in &self.topics {
            if !valid_kafka_topic(t) {
                return Err((
                    "topics",
                    format!("{t:?} is not a Kafka topic name"),
                    "use letters, digits, '.', '_' and '-', at most 249",
                ));
            }
        }
        if let Some(g) = &self.group
            && (g.is_empty() || g.len() > 255 || g.chars().any(char::is_control))
        {
            return Err((
                "group",
                format!("{g:?} is not a consumer group id"),
                "name it like \"orders-to-gale\", at most 255 characters, or leave it out for gale_<app>_<source>",
            ));
        }
        Ok(())
    }
}

/// A `kafka://` URL's credentials (percent-decoded) and bootstrap servers
/// (`host:port`, port 9092 unless named), or `None` if it is not one.
#[allow(clippy::type_complexity)]
pub fn kafka_servers(url: &str) -> Option<(Option<(String, String)>, Vec<String>)> {
    let rest = url.strip_prefix("kafka://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((c, h)) => {
            let (user, password) = c.split_once(':')?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            };
            let user = decode(user).filter(|u| !u.is_empty())?;
            (Some((user, decode(password)?)), h)
        }
        None => (None, rest),
    };
    let mut servers = Vec::new();
    for server in hosts.split(',') {
        let server = server.trim();
        if server.is_empty() || server.contains(['/', '?', '#', ' ', '@']) {
            return None;
        }
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (server, None),
        };
        if host.is_empty() || !port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) {
            return None;
        }
        servers.push(format!("{host}:{}", port.unwrap_or("9092")));
    }
    Some((credentials, servers))
}

/// Topic names Kafka accepts.
pub fn valid_kafka_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `nats://` or `tls://`, optional credentials, a host, an optional port.
fn valid_nats_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "nats" | "tls") {
        return false;
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', ' ']) {
        return false;
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host_port, None),
    };
    !host.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Tokens separated by '.', none empty; `*` only as a whole token, `>`
/// only as the whole last one.
pub fn valid_nats_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
                && (*t == "*" || !t.contains('*'))
                && (*t == ">" && i == tokens.len() - 1 || !t.contains('>'))
        })
}

/// Stream and consumer names JetStream takes (they become subject tokens).
pub fn valid_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

fn check_url(url: &str, schemes: &[&str]) -> Result<(), (&'static str, String, &'static str)> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if scheme.is_some_and(|s| schemes.contains(&s)) && url.len() > scheme.map_or(0, str::len) + 3 {
        return Ok(());
    }
    Err((
        "url",
        format!("{url:?} is not a {} URL", schemes[0]),
        "write it like \"postgres://user@127.0.0.1:5432/shop\" or \"mysql://user@127.0.0.1:3306/shop\"",
    ))
}

fn check_tables(tables: &[String]) -> Result<(), (&'static str, String, &'static str)> {
    for t in tables {
        let ok = !t.is_empty()
            && t.split('.').count() <= 2
            && t.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            });
        if !ok {
            return Err((
                "tables",
                format!("{t:?} is not a table name"),
                "write `schema.table` or `table`, letters, digits and '_'",
            ));
        }
    }
    Ok(())
}

/// `type = "schedule"`: a cron source of its own, whose firings any number
/// of functions (or none yet) may subscribe to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSource {
    /// `"sec min hour day month weekday"` (seconds optional), or a nickname
    /// like `"@hourly"`.
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// What to do with firings missed while no node ran the source.
    #[serde(default)]
    pub missed: Missed,
    /// The topic each firing is published to.
    pub topic: String,
}

impl ScheduleSource {
    pub fn cron(&self) -> Cron {
        Cron {
            expression: self.cron.clone(),
            timezone: self.timezone.clone(),
            missed: self.missed,
        }
    }
}

fn default_timezone() -> String {
    "UTC".into()
}

/// When a schedule fires: a cron expression in a time zone, and what
/// happens to firings missed while it did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    pub expression: String,
    pub timezone: String,
    pub missed: Missed,
}

impl Cron {
    fn parse(&self) -> Result<(croner::Cron, jiff::tz::TimeZone), String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&self.expression)
            .map_err(|e| format!("{:?} is not a cron expression: {e}", self.expression))?;
        let tz = jiff::tz::TimeZone::get(&self.timezone)
            .map_err(|e| format!("{:?} is not a known time zone: {e}", self.timezone))?;
        Ok((cron, tz))
    }

    /// The expression and the zone parse; the error names which key is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        self.parse().map(|_| ()).map_err(|message| {
            let key = if message.contains("time zone") {
                "timezone"
            } else {
                "cron"
            };
            (
                key,
                message,
                "write cron like \"0 */5 * * * *\" (seconds first, optional) and zones like \"Europe/Berlin\"",
            )
        })
    }

    /// The latest firing time at or before `now_ms` and after `after_ms`
    /// (Unix milliseconds), if any.
    pub fn due(&self, after_ms: i64, now_ms: i64) -> Option<i64> {
        let (cron, tz) = self.parse().ok()?;
        let now = jiff::Timestamp::from_millisecond(now_ms).ok()?.to_zoned(tz);
        let latest = cron.find_previous_occurrence(&now, true).ok()?;
        let ms = latest.timestamp().as_millisecond();
        (ms > after_ms).then_some(ms)
    }

    /// The first firing time after `after_ms`.
    pub fn next(&self, after_ms: i64) -> Option<i64> {
        let (cron, tz) = self.parse().ok()?;
        let after = jiff::Timestamp::from_millisecond(after_ms).ok()?.to_zoned(tz);
        Some(
            cron.find_next_occurrence(&after, false)
                .ok()?
                .timestamp()
                .as_millisecond(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::Manifest;

    #[test]
    fn sources_parse_by_type_and_refuse_unknown_keys() {
        let m = Manifest::from_toml(
            r#"
            [app]
            name = "a"
            [topics.ticks]
            [sources.clock]
            type = "schedule"
            cron = "*/5 * * * * *"
            topic = "ticks"
            "#,
            "gale.toml",
        )
        .unwrap();
        let s = &m.sources["clock"];
        assert_eq!((s.kind(), s.topic()), ("schedule", "ticks"));
        m.validate().unwrap();

        let unknown = Manifest::from_toml(
            "[app]\nname = \"a\"\n[sources.clock]\ntype = \"schedule\"\ncron = \"@hourly\"\ntopic = \"t\"\ncrn = 1\n",
            "gale.toml",
        )
        .unwrap_err();
        assert!(unknown.message.contains("crn"), "{}", unknown.message);
        let kind = Manifest::from_toml(
            "[app]\nname = \"a\"\n[sources.db]\ntype = \"oracle\"\n",
            "gale.toml",
        )
        .unwrap_err();
        assert!(kind.message.contains("oracle"), "{}", kind.message);
    }

    #[test]
    fn nats_settings_are_checked() {
        use super::{valid_nats_name, valid_nats_subject, valid_nats_url};
        for ok in [
            "nats://127.0.0.1:4222",
            "nats://u:p%40w@nats.local",
            "tls://a:4222/",
            "nats://[::1]:4222",
        ] {
            assert!(valid_nats_url(ok), "{ok}");
        }
        for bad in [
            "http://a:4222",
            "nats://",
            "nats://a:0",
            "nats://a:x",
            "nats://a/b",
            "127.0.0.1:4222",
        ] {
            assert!(!valid_nats_url(bad), "{bad}");
        }
        for ok in ["orders", "orders.*.created", "orders.>", ">", "a-b_c.D9"] {
            assert!(valid_nats_subject(ok), "{ok}");
        }
        for bad in [
            "", "orders.", ".orders", "a..b", "or*ders", "a.>.b", "a b", "a.b>",
        ] {
            assert!(!valid_nats_subject(bad), "{bad}");
        }
        assert!(valid_nats_name("ORDERS_1-x"));
        assert!(!valid_nats_name("a.b") && !valid_nats_name("a b") && !valid_nats_name(""));
        let err = Manifest::from_toml(
            "[app]\nname = \"a\"\n[sources.q]\ntype = \"nats\"\nurl = \"nats://h\"\nsubject = \"a.>\"\nconsumer = \"c\"\ntopic = \"t\"\n",
            "gale.toml",
        )
        .unwrap_err();
        assert!(err.message.contains("sources.q.consumer"), "{}", err.message);
        let m = Manifest::from_toml(
            "[app]\nname = \"a\"\n[topics.t]\n[sources.q]\ntype = \"nats\"\nurl = \"nats://h:4222\"\nsubject = \"a.>\"\nstream = \"A\"\ntopic = \"t\"\n",
            "gale.toml",
        )
        .unwrap();
        m.validate().unwrap();
    }

    #[test]
    fn rabbitmq_settings_are_checked() {
        use super::AmqpUrl;
        let u = AmqpUrl::parse("amqp://gale:p%40ss@mq.local:5673/shop%2Fa").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str(), u.password.as_str()),
            ("mq.local", 5673, "gale", "p@ss")
        );
        assert_eq!(u.vhost, "shop/a");
        assert_eq!(u.server(), "amqp://mq.local:5673");
        assert!(!format!("{u:?}").contains("p@ss"));
        let u = AmqpUrl::parse("amqp://g:g@10.1.2.3").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("10.1.2.3", 5672, "/")
        );
        assert_eq!(AmqpUrl::parse("amqp://g:g@h/%2f").unwrap().vhost, "/");
        for (bad, says) in [
            ("amqps://g:g@h/%2f", "TLS"),
            ("amqp://h:5672/%2f", "user and password"),
            ("amqp://g@h/%2f", "user and password"),
            ("amqp://g:g@h/", "empty vhost"),
            ("amqp://g:g@h/a/b", "`/`"),
            ("amqp://g:g@h/%2f?heartbeat=5", "query"),
            ("nats://g:g@h", "not AMQP"),
            ("amqp://g:g@h:99999", "not an AMQP URL"),
        ] {
            let (message, _) = AmqpUrl::parse(bad).unwrap_err();
            assert!(message.contains(says), "{bad}: {message}");
        }
        let m = Manifest::from_toml(
            "[app]\nname = \"a\"\n[topics.t]\n[sources.q]\ntype = \"rabbitmq\"\nurl = \"amqp://g:g@h/%2f\"\nqueue = \"orders\"\ndeclare = true\nqueue_type = \"quorum\"\ntopic = \"t\"\ndead_letter = \"t-dead\"\n",
            "gale.toml",
        )
        .unwrap();
        m.validate().unwrap();
        let crate::SourceSpec::Rabbitmq(r) = &m.sources["q"] else {
            panic!()
        };
        assert_eq!((r.prefetch, r.queue_type), (500, Some(super::QueueType::Quorum)));
        assert_eq!(m.sources["q"].dead_letter(), Some("t-dead"));
        for (extra, key) in [
            ("queue = \"amq.x\"\ndeclare = true", "sources.q.queue"),
            ("queue = \"q\"\nqueue_type = \"classic\"", "sources.q.queue_type"),
            ("queue = \"q\"\nprefetch = 0", "sources.q.prefetch"),
        ] {
            let err = Manifest::from_toml(
                &format!("[app]\nname = \"a\"\n[sources.q]\ntype = \"rabbitmq\"\nurl = \"amqp://g:g@h\"\ntopic = \"t\"\n{extra}\n"),
                "gale.toml",
            )
            .unwrap_err();
            assert!(err.message.contains(key), "{key}: {}", err.message);
        }
    }

    #[test]
    fn redis_and_mqtt_settings_are_checked() {
        use super::{valid_mqtt_filter, valid_mqtt_url, valid_redis_url};
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://u:p%40w@h/0",
            "redis://h",
            "redis://:pw@h:1/15",
        ] {
            assert!(valid_redis_url(ok), "{ok}");
        }
        for bad in [
            "rediss://h",
            "redis://",
            "redis://h:0",
            "redis://h/x",
            "http://h",
            "redis://h?x=1",
        ] {
            assert!(!valid_redis_url(bad), "{bad}");
        }
        for ok in ["mqtt://127.0.0.1:1883", "mqtt://u:p@h", "mqtt://h/"] {
            assert!(valid_mqtt_url(ok), "{ok}");
        }
        for bad in ["mqtts://h", "mqtt://", "mqtt://h:x", "tcp://h:1883", "mqtt://h/a"] {
            assert!(!valid_mqtt_url(bad), "{bad}");
        }
        for ok in ["a/b", "a/+/c", "#", "a/#", "+", "/a"] {
            assert!(valid_mqtt_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+/b", "a/b#"] {
            assert!(!valid_mqtt_filter(bad), "{bad}");
        }
        let m = Manifest::from_toml(
            "[app]\nname = \"a\"\n[topics.t]\n[sources.r]\ntype = \"redis\"\nurl = \"redis://h\"\nstream = \"s\"\ntopic = \"t\"\n\
             [sources.m]\ntype = \"mqtt\"\nurl = \"mqtt://h\"\nfilters = [\"a/#\"]\ntopic = \"t\"\n",
            "gale.toml",
        )
        .unwrap();
        m.validate().unwrap();
        let super::SourceSpec::Redis(r) = &m.sources["r"] else {
            panic!()
        };
        assert_eq!(
            (r.start, r.claim_after.0.as_secs()),
            (super::StreamStart::Earliest, 60)
        );
        let super::SourceSpec::Mqtt(q) = &m.sources["m"] else {
            panic!()
        };
        assert_eq!(q.version, 5);
        for (table, key) in [
            (
                "type = \"redis\"\nurl = \"redis://h\"\nstream = \"s\"\nclaim_after = \"10ms\"",
                "claim_after",
            ),
            ("type = \"redis\"\nurl = \"redis://h\"\nstream = \"\"", "stream"),
            (
                "type = \"mqtt\"\nurl = \"mqtt://h\"\nfilters = [\"$share/g/a\"]",
                "filters",
            ),
            (
                "type = \"mqtt\"\nurl = \"mqtt://h\"\nfilters = [\"a\"]\nclient_id = \"a b\"",
                "client_id",
            ),
        ] {
            let err = Manifest::from_toml(
                &format!("[app]\nname = \"a\"\n[topics.t]\n[sources.q]\ntopic = \"t\"\n{table}\n"),
                "gale.toml",
            )
            .unwrap_err();
            assert!(
                err.message.contains(&format!("sources.q.{key}")),
                "{key}: {}",
                err.message
            );
        }
    }

    #[test]
    fn kafka_settings_are_checked() {
        use super::{kafka_servers, valid_kafka_topic};
        let (c, s) = kafka_servers("kafka://127.0.0.1:9092,k2,[::1]:9093/").unwrap();
        assert_eq!(
            (c, s),
            (
                None,
                vec!["127.0.0.1:9092".into(), "k2:9092".into(), "[::1]:9093".into()]
            )
        );
        let (c, _) = kafka_servers("kafka://u:p%40w@k1:9092").unwrap();
        assert_eq!(c, Some(("u".into(), "p@w".into())));
        for bad in [
            "http://k:9092",
            "kafka://",
            "kafka://k:0",
            "kafka://k:x",
            "kafka://k/t",
            "k:9092",
            "kafka://a,,b",
            "kafka://u@k",
        ] {
            assert!(kafka_servers(bad).is_none(), "{bad}");
        }
        assert!(valid_kafka_topic("orders.v1_x-2"));
        assert!(!valid_kafka_topic("a b") && !valid_kafka_topic("..") && !valid_kafka_topic(""));
        let m = Manifest::from_toml(
            "[app]\nname = \"a\"\n[topics.t]\n[sources.k]\ntype = \"kafka\"\nurl = \"kafka://k:9092\"\ntopics = [\"orders\"]\nstart = \"latest\"\ntopic = \"t\"\ndead_letter = \"t-dead\"\n",
            "gale.toml",
        )
        .unwrap();
        m.validate().unwrap();
        assert_eq!(m.sources["k"].dead_letter(), Some("t-dead"));
        for (settings, key) in [
            (
                "url = \"kafka://u:secret@k:x\"\ntopics = [\"o\"]",
                "sources.k.url",
            ),
            ("url = \"kafka://k\"\ntopics = []", "sources.k.topics"),
            ("url = \"kafka://k\"\ntopics = [\"o/1\"]", "sources.k.topics"),
            (
                "url = \"kafka://k\"\ntopics = [\"o\"]\ngroup = \"\"",
                "sources.k.group",
            ),
        ] {
            let err = Manifest::from_toml(
                &format!("[app]\nname = \"a\"\n[sources.k]\ntype = \"kafka\"\ntopic = \"t\"\n{settings}\n"),
                "gale.toml",
            )
            .unwrap_err();
            assert!(err.message.contains(key), "{key}: {}", err.message);
            assert!(!err.message.contains("secret"), "{}", err.message);
        }
    }

    #[test]
    fn bad_sources_name_the_key() {
        for (table, key) in [
            (
                "type = \"schedule\"\ncron = \"soon\"\ntopic = \"t\"",
                "sources.clock.cron",
            ),
            (
                "type = \"schedule\"\ncron = \"@hourly\"\ntimezone = \"Mars/Olympus\"\ntopic = \"t\"",
                "sources.clock.timezone",
            ),
            (
                "type = \"schedule\"\ncron = \"@hourly\"\ntopic = \"Bad Topic\"",
                "sources.clock.topic",
            ),
        ] {
            let err = Manifest::from_toml(
                &format!("[app]\nname = \"a\"\n[sources.clock]\n{table}\n"),
                "gale.toml",
            )
            .unwrap_err();
            assert!(err.message.contains(key), "{key}: {}", err.message);
        }
        let err = Manifest::from_toml(
            "[app]\nname = \"a\"\n[sources.Clock]\ntype = \"schedule\"\ncron = \"@hourly\"\ntopic = \"t\"\n",
            "gale.toml",
        )
        .unwrap_err();
        assert!(err.message.contains("sources.Clock"), "{}", err.message);
    }
}
