//! `type = "mqtt"`.

use super::{MessageFormat, redact, valid_host_port};
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
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
