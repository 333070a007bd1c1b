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
use crate::sources::mqtt::{Client, Got, Settings, connect};
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
    _task: crate::sources::mqtt::Task,
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
