//! `type = "redis"`.

use super::{MessageFormat, redact, valid_host_port};
use crate::units::HumanDuration;
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
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

#[cfg(test)]
mod tests {
    use crate::Manifest;

    #[test]
    fn redis_and_mqtt_settings_are_checked() {
        use crate::sources::{valid_mqtt_filter, valid_mqtt_url, valid_redis_url};
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
        let crate::SourceSpec::Redis(r) = &m.sources["r"] else {
            panic!()
        };
        assert_eq!(
            (r.start, r.claim_after.0.as_secs()),
            (crate::sources::StreamStart::Earliest, 60)
        );
        let crate::SourceSpec::Mqtt(q) = &m.sources["m"] else {
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
}
