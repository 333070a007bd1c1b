//! Sending to NATS: each event a message on the sink's subject, in the
//! CloudEvents NATS binding (`ce-` headers in binary mode).
//!
//! With JetStream (the default) each message is published to the stream
//! that captures the subject and counts as sent once the stream's ack
//! came back; the batch's publishes are pipelined and their acks awaited
//! together. Each message carries `Nats-Msg-Id` = its event's id, so a
//! batch sent again after a lost ack is dropped by the stream's duplicate
//! window instead of stored twice. With `jetstream = false` the messages
//! are published with core NATS: sent once the server has them (a flush),
//! with nothing to say whether any subscriber did.

use super::{Outgoing, Sink};
use crate::NodeError;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use gale_core::SinkSpec;
use std::time::Duration;

pub struct NatsSink {
    name: String,
    spec: SinkSpec,
    /// The server as errors may show it: without credentials.
    server: String,
    client: Option<(async_nats::Client, jetstream::Context)>,
}

impl NatsSink {
    pub fn new(name: &str, spec: &SinkSpec) -> NatsSink {
        let server = match url::Url::parse(&spec.url) {
            Ok(u) => format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().unwrap_or(4222)
            ),
            Err(_) => "the sink's url".into(),
        };
        NatsSink {
            name: name.to_string(),
            spec: spec.clone(),
            server,
            client: None,
        }
    }

    async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context), NodeError> {
        let url = url::Url::parse(&self.spec.url)
            .map_err(|e| NodeError::Sink(format!("sink `{}`: the url is not a NATS URL ({e})", self.name)))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("gale sink {}", self.name))
            .connection_timeout(Duration::from_secs(5));
        if !url.username().is_empty() {
            options = match url.password() {
                Some(password) => options.user_and_password(decode(url.username()), decode(password)),
                None => options.token(decode(url.username())),
            };
        }
        let addr = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(4222)
        );
        let client = options.connect(addr).await.map_err(|e| {
            NodeError::Sink(format!(
                "sink `{}`: cannot connect to NATS at {} ({e}); check the host, port and credentials in the sink's url",
                self.name, self.server
            ))
        })?;
        let js = jetstream::new(client.clone());
        Ok((client, js))
    }

    async fn publish(
        &self,
        (client, js): &(async_nats::Client, jetstream::Context),
        events: &[Event],
    ) -> Result<(), NodeError> {
        let failed = |e: &dyn std::fmt::Display| {
            NodeError::Sink(format!(
                "sink `{}`: publishing to `{}` on NATS at {} failed: {e}",
                self.name, self.spec.to, self.server
            ))
        };
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let out = Outgoing::new(event, self.spec.mode, "ce-");
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in &out.headers {
                headers.insert(k.as_str(), v.as_str());
            }
            if let Some(ct) = &out.content_type {
                headers.insert("Content-Type", ct.as_str());
            }
            let body = Bytes::from(out.body);
            if self.spec.jetstream {
                headers.insert("Nats-Msg-Id", event.id());
                let ack = js
                    .publish_with_headers(self.spec.to.clone(), headers, body)
                    .await
                    .map_err(|e| failed(&e))?;
                acks.push(ack);
            } else {
                client
                    .publish_with_headers(self.spec.to.clone(), headers, body)
                    .await
                    .map_err(|e| failed(&e))?;
            }
        }
        for ack in acks {
            ack.await.map_err(|e| match e.kind() {
                PublishErrorKind::StreamNotFound => NodeError::Sink(format!(
                    "sink `{}`: no JetStream stream on NATS at {} captures subject `{}`; add one (nats stream add --subjects '{}') or set jetstream = false to publish without confirmation",
                    self.name, self.server, self.spec.to, self.spec.to
                )),
                _ => failed(&e),
            })?;
        }
        client.flush().await.map_err(|e| failed(&e))
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    async fn send(&mut self, events: &[Event]) -> Result<(), NodeError> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let sent = self
            .publish(self.client.as_ref().expect("connected"), events)
            .await;
        if sent.is_err() {
            self.client = None;
        }
        sent
    }
}
