//! `type = "kafka"`.

use super::{MessageFormat, redact};
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
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

#[cfg(test)]
mod tests {
    use crate::Manifest;

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
}
