//! `type = "nats"`.

use super::MessageFormat;
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
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

/// `nats://` or `tls://`, optional credentials, a host, an optional port.
pub(super) fn valid_nats_url(url: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use crate::Manifest;

    #[test]
    fn nats_settings_are_checked() {
        use super::valid_nats_url;
        use super::{valid_nats_name, valid_nats_subject};
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
}
