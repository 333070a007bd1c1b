//! Sending to an MQTT broker: each event a QoS 1 message on the topic `to`.
//!
//! A batch counts as sent once the broker acknowledged (`PUBACK`) every
//! message of it; an MQTT 5 acknowledgement with a refusal reason (not
//! authorized, quota exceeded...) fails the batch. Messages follow the
//! CloudEvents MQTT binding:
//! - MQTT 5 (the default): in binary mode the data is the payload, the
//!   attributes are user properties named as they are (`id`, `source`,
//!   `type`...), the data's type is the content type property; in
//!   structured mode the payload is the whole event as JSON, with content
//!   type `application/cloudevents+json`;
//! - MQTT 3.1.1 (`?version=3` at the end of the url): the protocol has no
//!   properties, so events are always sent in structured mode, whatever
//!   `mode` says.
//!
//! The sink connects with a clean session and a client id of its own: a
//! batch whose acknowledgements were lost is sent again whole, and the
//! broker may deliver some of it twice; each message carries its event's
//! id for consumers to drop the copies.

use super::{Outgoing, Sink};
use crate::NodeError;
use crate::brokers::mqtt::{Client, Got, Settings, connect};
use cloudevents::Event;
use gale_core::{SinkMode, SinkSpec};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the broker has to accept the connection.
const CONNECT: Duration = Duration::from_secs(10);

struct Connection {
    client: Client,
    events: mpsc::Receiver<Result<Got, String>>,
    _task: crate::brokers::mqtt::Task,
}

pub struct MqttSink {
    name: String,
    spec: SinkSpec,
    /// The url without `?version=...`, and whether it speaks MQTT 5.
    url: String,
    v5: bool,
    conn: Option<Connection>,
}

impl MqttSink {
    pub fn new(name: &str, spec: &SinkSpec) -> MqttSink {
        let (url, v5) = match spec.url.split_once('?') {
            Some((url, query)) => (url.to_string(), !query.split('&').any(|kv| kv == "version=3")),
            None => (spec.url.clone(), true),
        };
        MqttSink {
            name: name.to_string(),
            spec: spec.clone(),
            url,
            v5,
            conn: None,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> NodeError {
        NodeError::Sink(format!("sink `{}`: {e}", self.name))
    }

    async fn connect(&self) -> Result<Connection, NodeError> {
        let client_id = format!(
            "gale-sink-{}-{}",
            self.name,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let mut settings = Settings::from_url(&self.url, client_id, self.v5)
            .map_err(|e| self.error(format!("the url: {e}")))?;
        settings.clean = true;
        let server = settings.server();
        let (client, mut events, task) = connect(&settings);
        match tokio::time::timeout(CONNECT, events.recv()).await {
            Ok(Some(Ok(Got::Connected { .. }))) => Ok(Connection {
                client,
                events,
                _task: task,
            }),
            Ok(Some(Err(e))) => Err(self.error(e)),
            Ok(_) => Err(self.error(format!(
                "the MQTT broker at {server} did not accept the connection"
            ))),
            Err(_) => Err(self.error(format!(
                "the MQTT broker at {server} did not answer within {CONNECT:?}"
            ))),
        }
    }

    async fn publish(&self, conn: &mut Connection, events: &[Event]) -> Result<(), NodeError> {
        let mode = if self.v5 {
            self.spec.mode
        } else {
            SinkMode::Structured
        };
        for event in events {
            let out = Outgoing::new(event, mode, "");
            conn.client
                .publish(&self.spec.to, out.body, out.content_type, out.headers)
                .await
                .map_err(|e| self.error(e))?;
        }
        // Every publish leaves with a packet id; each must come back acked.
        let (mut sent, mut waiting, mut acked) = (0usize, HashSet::new(), 0usize);
        while acked < events.len() {
            match conn.events.recv().await {
                Some(Ok(Got::Sent(pkid))) => {
                    sent += 1;
                    waiting.insert(pkid);
                }
                Some(Ok(Got::Acked { pkid, refused })) => {
                    if let Some(why) = refused {
                        return Err(self.error(format!(
                            "the MQTT broker refused a message to `{}` ({why}); check that the user may publish there",
                            self.spec.to
                        )));
                    }
                    if waiting.remove(&pkid) {
                        acked += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(self.error(e)),
                None => return Err(self.error("the MQTT connection is gone")),
            }
        }
        debug_assert!(sent >= acked);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for MqttSink {
    async fn send(&mut self, events: &[Event]) -> Result<(), NodeError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let sent = self.publish(&mut conn, events).await;
        if sent.is_ok() {
            self.conn = Some(conn);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    const MQTT: &str = "mqtt://127.0.0.1:1883";

    fn spec(url: &str, to: &str, mode: SinkMode) -> SinkSpec {
        SinkSpec {
            kind: gale_core::SinkKind::Mqtt,
            url: url.into(),
            topic: "orders".into(),
            to: to.into(),
            exchange: None,
            jetstream: true,
            mode,
            max_attempts: 1,
            backoff: Default::default(),
            dead_letter: None,
        }
    }

    fn events(n: u32) -> Vec<Event> {
        (0..n).map(super::super::test_event).collect()
    }

    /// A subscriber (rumqttc, MQTT 5) of `topic`, once the broker took the
    /// subscription.
    async fn subscriber(
        topic: &str,
    ) -> (
        Client,
        mpsc::Receiver<Result<Got, String>>,
        crate::brokers::mqtt::Task,
    ) {
        let mut s =
            Settings::from_url(MQTT, format!("gale-test-{}", uuid::Uuid::now_v7().simple()), true).unwrap();
        s.clean = true;
        let (client, mut rx, task) = connect(&s);
        assert!(matches!(rx.recv().await, Some(Ok(Got::Connected { .. }))));
        client.subscribe(&[topic.to_string()]).await.unwrap();
        loop {
            if let Some(Ok(Got::Subscribed(ok))) = rx.recv().await {
                assert_eq!(ok, vec![true]);
                break;
            }
        }
        (client, rx, task)
    }

    async fn received(
        rx: &mut mpsc::Receiver<Result<Got, String>>,
        n: usize,
    ) -> Vec<crate::brokers::mqtt::Received> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Ok(Got::Message(m)))) => out.push(*m),
                Ok(Some(Ok(_))) => {}
                other => panic!(
                    "{} of {n} messages, then {:?}",
                    out.len(),
                    other.map(|o| o.map(|r| r.err()))
                ),
            }
        }
        out
    }

    #[tokio::test]
    async fn events_arrive_once_each_in_order_with_user_properties() {
        let topic = format!("gale/sink/{}", uuid::Uuid::now_v7().simple());
        let (_c, mut rx, _t) = subscriber(&topic).await;
        let mut sink = MqttSink::new("s", &spec(MQTT, &topic, SinkMode::Binary));
        let sent = events(300);
        sink.send(&sent[..200]).await.unwrap();
        sink.send(&sent[200..]).await.unwrap();
        let got = received(&mut rx, 300).await;
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.payload, format!(r#"{{"n":{i}}}"#).as_bytes(), "in order");
            assert!(
                m.properties.contains(&("id".into(), format!("e-{i}"))),
                "{:?}",
                m.properties
            );
        }
        assert!(got[0].properties.contains(&("specversion".into(), "1.0".into())));
        assert!(got[0].properties.contains(&("region".into(), "eu".into())));
        assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
        // Nothing more: once each.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    if let Some(Ok(Got::Message(_))) = rx.recv().await {
                        break;
                    }
                }
            })
            .await
            .is_err()
        );

        // MQTT 3.1.1: structured mode, the whole event as the payload.
        let mut sink = MqttSink::new("s", &spec(&format!("{MQTT}?version=3"), &topic, SinkMode::Binary));
        sink.send(&sent[..1]).await.unwrap();
        let got = received(&mut rx, 1).await;
        let e = crate::events::decode(&got[0].payload).unwrap();
        assert_eq!(e.id(), "e-0");
    }

    #[tokio::test]
    async fn a_refusing_broker_fails_the_batch() {
        let e = MqttSink::new("s", &spec("mqtt://u:secret@127.0.0.1:1", "x", SinkMode::Binary))
            .send(&events(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot reach the MQTT broker at 127.0.0.1:1") && !e.contains("secret"),
            "{e}"
        );
        // A topic no message may be published to.
        let e = MqttSink::new("s", &spec(MQTT, "a/#", SinkMode::Binary))
            .send(&events(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink `s`"), "{e}");
    }
}
