//! One MQTT connection, 3.1.1 or 5, as the source and the sink use it.
//!
//! rumqttc's event loop has to be polled for anything to happen (reading,
//! sending, acknowledging, pinging), so it runs in a task of its own and
//! hands over what arrives through a channel. It stops at the first
//! connection error rather than reconnecting by itself: the caller ends
//! its run with that error (`gale sources` shows it) and connects again
//! after the plane's pause, and the broker's session carries over what
//! was not acknowledged.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5p;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long connecting may take.
const CONNECT_TIMEOUT: u64 = 10;
/// How often the connection is pinged when quiet.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    pub client_id: String,
    pub v5: bool,
    /// False: the broker keeps the session (subscriptions, unacknowledged
    /// and queued QoS 1 messages) while the client is away.
    pub clean: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: Option<u32>,
    /// Acknowledge received messages only when told to.
    pub manual_acks: bool,
    /// MQTT 5: how many unacknowledged messages the broker may send.
    pub receive_maximum: Option<u16>,
}

impl Settings {
    /// From an `mqtt://[user:password@]host[:port]` URL.
    pub fn from_url(url: &str, client_id: String, v5: bool) -> Result<Settings, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not an MQTT URL ({e})"))?;
        if u.scheme() != "mqtt" {
            return Err(format!(
                "{}:// is not supported; use mqtt:// (Gale speaks MQTT over plain TCP)",
                u.scheme()
            ));
        }
        let host = u
            .host_str()
            .ok_or("the URL names no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials =
            (!u.username().is_empty()).then(|| (decode(u.username()), decode(u.password().unwrap_or(""))));
        Ok(Settings {
            host,
            port: u.port().unwrap_or(1883),
            credentials,
            client_id,
            v5,
            clean: false,
            session_expiry: None,
            manual_acks: false,
            receive_maximum: None,
        })
    }

    /// `host:port`, for errors and event sources (no credentials).
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A message received, and what acknowledging it takes.
pub(crate) struct Received {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5's content type property.
    pub content_type: Option<String>,
    /// MQTT 5's user properties.
    pub properties: Vec<(String, String)>,
    handle: Handle,
}

enum Handle {
    V3(rumqttc::Publish),
    V5(v5p::Publish),
}

/// What the connection reports.
pub(crate) enum Got {
    Connected {
        session_present: bool,
    },
    Message(Box<Received>),
    /// Per filter, whether the broker took the subscription.
    Subscribed(Vec<bool>),
    /// A publish of ours left with this packet id.
    Sent(u16),
    /// The broker acknowledged the publish with this packet id; a refusal
    /// (MQTT 5 reason codes) says why.
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
}

pub(crate) enum Client {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Connects in the background: the client, and what the connection
/// reports (an `Err` once, then nothing: the connection is gone).
pub(crate) fn connect(s: &Settings) -> (Client, mpsc::Receiver<Result<Got, String>>, Task) {
    let (tx, rx) = mpsc::channel(1024);
    let server = s.server();
    if s.v5 {
        let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, &s.host, s.port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_start(s.clean)
            .set_manual_acks(s.manual_acks)
            .set_connection_timeout(CONNECT_TIMEOUT);
        o.set_session_expiry_interval(s.session_expiry);
        o.set_receive_maximum(s.receive_maximum);
        if let Some((user, password)) = &s.credentials {
            o.set_credentials(user, password);
        }
        let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 1024);
        let task = tokio::spawn(async move {
            use rumqttc::v5::{Event, Incoming};
            loop {
                let got = match events.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(c))) => Got::Connected {
                        session_present: c.session_present,
                    },
                    Ok(Event::Incoming(Incoming::Publish(p))) => Got::Message(Box::new(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.clone(),
                        content_type: p.properties.as_ref().and_then(|p| p.content_type.clone()),
                        properties: p
                            .properties
                            .as_ref()
                            .map(|p| p.user_properties.clone())
                            .unwrap_or_default(),
                        handle: Handle::V5(p),
                    })),
                    Ok(Event::Incoming(Incoming::SubAck(a))) => Got::Subscribed(
                        a.return_codes
                            .iter()
                            .map(|c| matches!(c, v5p::SubscribeReasonCode::Success(_)))
                            .collect(),
                    ),
                    Ok(Event::Incoming(Incoming::PubAck(a))) => Got::Acked {
                        pkid: a.pkid,
                        refused: match a.reason {
                            v5p::PubAckReason::Success | v5p::PubAckReason::NoMatchingSubscribers => None,
                            other => Some(format!("{other:?}")),
                        },
                    },
                    Ok(Event::Incoming(Incoming::Disconnect(d))) => {
                        let _ = tx
                            .send(Err(format!(
                                "the broker at {server} closed the session ({:?})",
                                d.reason_code
                            )))
                            .await;
                        return;
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Got::Sent(pkid),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(describe_v5(&e, &server))).await;
                        return;
                    }
                };
                if tx.send(Ok(got)).await.is_err() {
                    return;
                }
            }
        });
        (Client::V5(client), rx, Task(task))
    } else {
        let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(s.clean)
            .set_manual_acks(s.manual_acks);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT);
        if let Some((user, password)) = &s.credentials {
            o.set_credentials(user, password);
        }
        let (client, mut events) = rumqttc::AsyncClient::new(o, 1024);
        events.set_network_options(network);
        let task = tokio::spawn(async move {
            use rumqttc::{Event, Incoming};
            loop {
                let got = match events.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(c))) => Got::Connected {
                        session_present: c.session_present,
                    },
                    Ok(Event::Incoming(Incoming::Publish(p))) => Got::Message(Box::new(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        content_type: None,
                        properties: Vec::new(),
                        handle: Handle::V3(p),
                    })),
                    Ok(Event::Incoming(Incoming::SubAck(a))) => Got::Subscribed(
                        a.return_codes
                            .iter()
                            .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                            .collect(),
                    ),
                    Ok(Event::Incoming(Incoming::PubAck(a))) => Got::Acked {
                        pkid: a.pkid,
                        refused: None,
                    },
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Got::Sent(pkid),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(describe_v3(&e, &server))).await;
                        return;
                    }
                };
                if tx.send(Ok(got)).await.is_err() {
                    return;
                }
            }
        });
        (Client::V3(client), rx, Task(task))
    }
}

/// The event loop's task, stopped when dropped.
pub(crate) struct Task(tokio::task::JoinHandle<()>);

impl Task {
    /// Waits (a little) for the event loop to send what was asked of it
    /// and end.
    pub async fn finish(mut self, within: Duration) {
        let _ = tokio::time::timeout(within, &mut self.0).await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn client_error(e: impl std::fmt::Display) -> String {
    format!("the MQTT connection is gone ({e})")
}

impl Client {
    /// Subscribes to the filters with QoS 1.
    pub async fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)),
                )
                .await
                .map_err(client_error),
            Client::V5(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| v5p::Filter::new(f.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)),
                )
                .await
                .map_err(client_error),
        }
    }

    /// Acknowledges a message (`PUBACK`).
    pub async fn ack(&self, r: &Received) -> Result<(), String> {
        match (self, &r.handle) {
            (Client::V3(c), Handle::V3(p)) => c.ack(p).await.map_err(client_error),
            (Client::V5(c), Handle::V5(p)) => c.ack(p).await.map_err(client_error),
            _ => Err("a message acknowledged on another connection".into()),
        }
    }

    /// Publishes with QoS 1; MQTT 5 carries the content type and user
    /// properties, MQTT 3.1.1 neither.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        content_type: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        match self {
            Client::V3(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| format!("cannot publish to `{topic}` ({e})")),
            Client::V5(c) => {
                let props = v5p::PublishProperties {
                    content_type,
                    user_properties: properties,
                    ..Default::default()
                };
                c.publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                )
                .await
                .map_err(|e| format!("cannot publish to `{topic}` ({e})"))
            }
        }
    }

    /// Disconnects cleanly (after what was asked before).
    pub async fn disconnect(&self) {
        match self {
            Client::V3(c) => {
                let _ = c.disconnect().await;
            }
            Client::V5(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

fn describe_v3(e: &rumqttc::ConnectionError, server: &str) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized) => format!(
            "the MQTT broker at {server} refused the connection ({e}); check the user and password in the url"
        ),
        E::ConnectionRefused(C::BadClientId) => {
            format!("the MQTT broker at {server} refused the client id ({e}); set another `client_id`")
        }
        E::ConnectionRefused(C::RefusedProtocolVersion) => {
            format!("the MQTT broker at {server} does not speak MQTT 3.1.1 ({e}); set version = 5")
        }
        E::Io(_) | E::NetworkTimeout | E::FlushTimeout => format!(
            "cannot reach the MQTT broker at {server} ({e}); check the host and port in the url and that the broker runs"
        ),
        _ => format!("lost the connection to the MQTT broker at {server} ({e}); connecting again"),
    }
}

fn describe_v5(e: &rumqttc::v5::ConnectionError, server: &str) -> String {
    use rumqttc::v5::ConnectionError as E;
    use v5p::ConnectReturnCode as C;
    match e {
        E::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized) => format!(
            "the MQTT broker at {server} refused the connection ({e}); check the user and password in the url"
        ),
        E::ConnectionRefused(C::ClientIdentifierNotValid | C::BadClientId) => {
            format!("the MQTT broker at {server} refused the client id ({e}); set another `client_id`")
        }
        E::ConnectionRefused(C::UnsupportedProtocolVersion | C::RefusedProtocolVersion) => {
            format!("the MQTT broker at {server} does not speak MQTT 5 ({e}); set version = 3")
        }
        E::Io(_) | E::Timeout(_) => format!(
            "cannot reach the MQTT broker at {server} ({e}); check the host and port in the url and that the broker runs"
        ),
        _ => format!("lost the connection to the MQTT broker at {server} ({e}); connecting again"),
    }
}
