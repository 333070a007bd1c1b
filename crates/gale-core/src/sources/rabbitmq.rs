//! `type = "rabbitmq"`.

use super::MessageFormat;
use serde::{Deserialize, Serialize};

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
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
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

#[cfg(test)]
mod tests {
    use crate::Manifest;

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
}
