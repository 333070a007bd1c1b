//! Sources: what feeds topics from outside a function's own code.
//!
//! A `[sources.NAME]` table names its kind with `type` and holds that kind's
//! settings; each kind is a variant of [`SourceSpec`], parsed strictly
//! (unknown keys are refused) and validated here without I/O. The node
//! builds and runs them (`gale-node/src/sources`). A function's
//! `[[functions.NAME.schedule]]` entries are sources too, made by the node
//! from the function's spec, so they share the same guarantees.

use crate::manifest::{Missed, valid_topic};
use serde::{Deserialize, Serialize};

mod databases;
mod kafka;
mod mqtt;
mod nats;
mod rabbitmq;
mod redis;

pub use databases::*;
pub use kafka::*;
pub use mqtt::*;
pub use nats::*;
pub use rabbitmq::*;
pub use redis::*;

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
