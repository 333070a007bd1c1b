//! MQTT: messages of topic filters, copied into a topic as CloudEvents.
//!
//! The source subscribes with QoS 1 on a persistent session: MQTT 3.1.1
//! with `clean_session = false`, MQTT 5 with `clean_start = false` and a
//! session that outlives a disconnect by [`SESSION_EXPIRY`]. The broker
//! then keeps the subscriptions while the source is away, queues the QoS 1
//! messages published meanwhile (up to its own limit per client), and
//! sends again every message it sent and did not get a `PUBACK` for.
//! Acknowledgements are manual: a message is acknowledged only once its
//! event is durable in the topic, so a crash of the node loses nothing
//! the broker handed over.
//!
//! MQTT gives a message no identity the broker keeps (the packet id is
//! reused), so each event's id is a fresh UUIDv7: a message in flight
//! when the node crashes (durable, not yet acknowledged) comes back and
//! is stored twice. Consumers that must not see a copy compare the data.
//!
//! With `share`, the filters are subscribed as `$share/<group>/<filter>`
//! and the broker splits their messages among the group's clients (each
//! with its own `client_id`).
//!
//! Reading and storing overlap as in the other broker sources: one batch
//! is made durable while the next is read, and its acknowledgements go
//! out once it is. A lost connection ends the run with an error saying so
//! (`gale sources` shows `failed` and the reason); the plane connects
//! again after a pause that doubles up to 30 s, and the session resumes.

pub mod message;

use crate::brokers::mqtt::{Got, Received, Settings, connect};

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use gale_core::MqttSource;
use gale_store::NewEvent;
use std::time::Duration;

/// The most messages published (and acknowledged) at once.
const BATCH: usize = 500;
/// MQTT 5: how long the broker keeps the session after a disconnect.
pub const SESSION_EXPIRY: u32 = 7 * 24 * 3600;
/// MQTT 5: unacknowledged messages the broker may have out to the source:
/// a batch being read and one being stored.
const RECEIVE_MAXIMUM: u16 = 2 * BATCH as u16;
/// How long the broker has to accept the connection and the subscription.
const SETUP: Duration = Duration::from_secs(15);

/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

pub struct Mqtt {
    name: String,
    spec: MqttSource,
    client_id: String,
}

impl Mqtt {
    pub fn new(wanted: &Wanted, spec: &MqttSource) -> Mqtt {
        let client_id = spec
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gale_{}_{}", wanted.app.as_deref().unwrap_or("node"), wanted.name));
        Mqtt {
            name: wanted.name.clone(),
            spec: spec.clone(),
            client_id,
        }
    }

    fn settings(&self) -> Result<Settings, NodeError> {
        let mut s = Settings::from_url(&self.spec.url, self.client_id.clone(), self.spec.version == 5)
            .map_err(|e| NodeError::Source(format!("the source's url: {e}")))?;
        s.manual_acks = true;
        s.session_expiry = Some(SESSION_EXPIRY);
        s.receive_maximum = Some(RECEIVE_MAXIMUM);
        Ok(s)
    }

    /// The filters as subscribed (in a shared subscription if asked).
    fn filters(&self) -> Vec<String> {
        self.spec
            .filters
            .iter()
            .map(|f| match &self.spec.share {
                Some(group) => format!("$share/{group}/{f}"),
                None => f.clone(),
            })
            .collect()
    }

    /// The event's `source` for a message of `topic`: the broker, then
    /// the (first) filter it matched.
    fn source_of(&self, server: &str, topic: &str) -> String {
        let filter = self
            .spec
            .filters
            .iter()
            .find(|f| message::matches(f, topic))
            .unwrap_or(&self.spec.filters[0]);
        format!("mqtt://{server}/{filter}")
    }
}

#[async_trait::async_trait]
impl Source for Mqtt {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let settings = self.settings()?;
        let server = settings.server();
        let (client, mut events, task) = connect(&settings);
        let failed = |e: String| NodeError::Source(e);
        // Connected, then subscribed; messages of the session may come
        // before the subscription's answer.
        let mut early: Vec<Received> = Vec::new();
        let session_present = match tokio::time::timeout(SETUP, events.recv()).await {
            Ok(Some(Ok(Got::Connected { session_present }))) => session_present,
            Ok(Some(Err(e))) => return Err(failed(e)),
            Ok(_) => {
                return Err(failed(format!(
                    "the MQTT broker at {server} did not accept the connection"
                )));
            }
            Err(_) => {
                return Err(failed(format!(
                    "the MQTT broker at {server} did not answer within {SETUP:?}"
                )));
            }
        };
        client.subscribe(&self.filters()).await.map_err(failed)?;
        let deadline = tokio::time::Instant::now() + SETUP;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(Got::Subscribed(ok)))) => {
                    if let Some(at) = ok.iter().position(|ok| !ok) {
                        return Err(failed(format!(
                            "the MQTT broker at {server} refused the subscription to `{}`; check that the user may read it{}",
                            self.filters().get(at).cloned().unwrap_or_default(),
                            if self.spec.share.is_some() {
                                " and that the broker supports shared subscriptions"
                            } else {
                                ""
                            }
                        )));
                    }
                    break;
                }
                Ok(Some(Ok(Got::Message(m)))) => early.push(*m),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(failed(e)),
                Ok(None) => {
                    return Err(failed(format!(
                        "lost the connection to the MQTT broker at {server}"
                    )));
                }
                Err(_) => {
                    return Err(failed(format!(
                        "the MQTT broker at {server} did not answer the subscription within {SETUP:?}"
                    )));
                }
            }
        }
        tracing::info!(source = %self.name, client_id = %self.client_id, session_present, "subscribed");
        let mut received: u64 = 0;
        cx.report(format!("subscribed, {received} messages"), Some(0));

        let v5 = self.spec.version == 5;
        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        let mut acks: Vec<Received> = Vec::with_capacity(BATCH);
        let mut inflight: Option<(Publishing, Vec<Received>, u64)> = None;
        let mut early = early.into_iter();
        let ended: Result<(), NodeError> = loop {
            if inflight.is_none() && !acks.is_empty() {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let done = std::mem::replace(&mut acks, Vec::with_capacity(BATCH));
                let publishing: Publishing = if events.is_empty() {
                    Box::pin(async { Ok(()) })
                } else {
                    Box::pin(cx.publish_owned(&self.spec.topic, events))
                };
                inflight = Some((publishing, done, received));
            }
            let next = if let Some(m) = early.next() {
                Some(Ok(Got::Message(Box::new(m))))
            } else {
                tokio::select! {
                    biased;
                    r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                        if let Err(e) = r {
                            break Err(e);
                        }
                        let (_, done, upto) = inflight.take().expect("guarded");
                        let mut acked = Ok(());
                        for m in &done {
                            if let Err(e) = client.ack(m).await {
                                acked = Err(failed(e));
                                break;
                            }
                        }
                        if let Err(e) = acked {
                            break Err(e);
                        }
                        cx.report(format!("subscribed, {upto} messages"), Some(0));
                        continue;
                    }
                    m = events.recv(), if acks.len() < BATCH => m,
                    _ = cx.stopped() => break Ok(()),
                }
            };
            let m = match next {
                Some(Ok(Got::Message(m))) => *m,
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(failed(e)),
                None => {
                    break Err(failed(format!(
                        "lost the connection to the MQTT broker at {server}"
                    )));
                }
            };
            received += 1;
            let id = uuid::Uuid::now_v7().to_string();
            let source = self.source_of(&server, &m.topic);
            match message::message_event(&m, v5, id, &source, self.spec.format) {
                Ok(event) => batch.push(event),
                Err(parked) => {
                    if let Err(e) = cx.park(parked).await {
                        break Err(e);
                    }
                }
            }
            acks.push(m);
        };
        if ended.is_ok() {
            // Told to stop: what is read is made durable and acknowledged.
            if let Some((publishing, done, _)) = inflight.take() {
                publishing.await?;
                for m in &done {
                    client.ack(m).await.map_err(failed)?;
                }
            }
            if !acks.is_empty() {
                if !batch.is_empty() {
                    cx.publish(&self.spec.topic, batch).await?;
                }
                for m in &acks {
                    client.ack(m).await.map_err(failed)?;
                }
            }
            client.disconnect().await;
            task.finish(Duration::from_secs(2)).await;
        }
        ended
    }

    /// Ends the broker's session for the client id (its subscriptions and
    /// the messages queued for it) by connecting once with a clean one.
    async fn forget(&mut self) -> Result<(), NodeError> {
        let mut settings = self.settings()?;
        settings.clean = true;
        settings.session_expiry = Some(0);
        let (client, mut events, task) = connect(&settings);
        if let Ok(Some(Ok(Got::Connected { .. }))) = tokio::time::timeout(SETUP, events.recv()).await {
            client.disconnect().await;
            task.finish(Duration::from_secs(2)).await;
            tracing::info!(source = %self.name, client_id = %self.client_id, "MQTT session ended");
        }
        Ok(())
    }
}
