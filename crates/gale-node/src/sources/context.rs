//! What a source is and what it may touch while it runs (see the plane's
//! docs in `sources/mod.rs`).

use super::message::Parked;
use crate::NodeError;
use crate::publisher::Publisher;
use gale_core::SourceSpec;
use gale_core::api::SourceInfo;
use gale_store::{Expect, Metadata, NewEvent, Published};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A running source.
#[async_trait::async_trait]
pub trait Source: Send + 'static {
    /// Runs until [`Context::stopped`]; an error ends this run, and the
    /// source runs again (from its checkpoint) after a pause.
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError>;

    /// Releases what the source holds outside Gale (a replication slot, a
    /// publication) once it is removed for good. Runs after the last `run`
    /// ended.
    async fn forget(&mut self) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A source the node should run: a declared one, or a function's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub app: Option<String>,
    pub function: Option<String>,
    pub spec: SourceSpec,
}

/// Where a source's checkpoint and lease live.
pub(super) fn checkpoint_key(name: &str) -> String {
    format!("checkpoints/sources/{name}")
}
pub(super) fn lease_key(name: &str) -> String {
    format!("leases/sources/{name}")
}

/// Who runs a source, until when.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Lease {
    pub(super) node: String,
    /// Unix milliseconds.
    pub(super) expires_at: u64,
}

/// What a running source may touch.
pub struct Context {
    pub(super) name: String,
    pub(super) publisher: Publisher,
    pub(super) meta: Arc<dyn Metadata>,
    /// Revision of the checkpoint as this run last read or wrote it.
    pub(super) checkpoint: Option<u64>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) status: Arc<Mutex<SourceInfo>>,
    /// Where messages the source cannot take are parked.
    pub(super) dead_letter: Option<String>,
}

impl Context {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's metadata, for what a source reads besides its checkpoint.
    pub fn metadata(&self) -> &dyn Metadata {
        &*self.meta
    }

    /// The checkpoint the source saved last, if any.
    pub async fn checkpoint<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NodeError> {
        let key = checkpoint_key(&self.name);
        let Some(entry) = self.meta.get(&key).await? else {
            self.checkpoint = None;
            return Ok(None);
        };
        self.checkpoint = Some(entry.revision);
        match serde_json::from_slice(&entry.value) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "checkpoint unreadable; starting afresh");
                Ok(None)
            }
        }
    }

    /// Saves the checkpoint, if nobody else wrote it since this run read it.
    pub async fn save<T: Serialize>(&mut self, value: &T) -> Result<(), NodeError> {
        let key = checkpoint_key(&self.name);
        let expect = self.checkpoint.map_or(Expect::Absent, Expect::Revision);
        let bytes = serde_json::to_vec(value).expect("checkpoints serialize");
        self.checkpoint = Some(self.meta.put(&key, bytes, expect).await?);
        Ok(())
    }

    /// The id of the event at `position` (and `index`, for several events
    /// at one position): the same position always gives the same id.
    pub fn event_id(&self, position: &str, index: usize) -> String {
        match index {
            0 => format!("{}/{position}", self.name),
            n => format!("{}/{position}/{n}", self.name),
        }
    }

    /// Appends events; returns once they are durable.
    pub async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>, NodeError> {
        let published = self.publisher.publish(topic, events).await?;
        let new = published.iter().filter(|p| !p.duplicate).count() as u64;
        crate::lock(&self.status).published += new;
        Ok(published)
    }

    /// Like [`publish`](Self::publish), as a future that borrows nothing:
    /// a source can read on while the events become durable.
    pub fn publish_owned(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let (publisher, status, topic) = (self.publisher.clone(), self.status.clone(), topic.to_string());
        async move {
            let published = publisher.publish(&topic, events).await?;
            let new = published.iter().filter(|p| !p.duplicate).count() as u64;
            crate::lock(&status).published += new;
            Ok(())
        }
    }

    /// Parks a message the source cannot take in its dead-letter topic
    /// (returning once that is durable), or, without one, logs and drops
    /// it. Either way the source then acknowledges it like any other.
    pub async fn park(&self, parked: Parked) -> Result<(), NodeError> {
        let id = parked.event.id.clone();
        match &self.dead_letter {
            Some(topic) => {
                self.publisher.publish(topic, vec![parked.event]).await?;
                tracing::warn!(source = %self.name, %id, %topic, reason = %parked.reason, "message parked in the dead-letter topic");
            }
            None => {
                tracing::warn!(source = %self.name, %id, reason = %parked.reason, "message dropped: the source has no dead_letter topic");
            }
        }
        crate::lock(&self.status).parked += 1;
        Ok(())
    }

    /// Says where the source has got to, and how far behind it is.
    pub fn report(&self, position: String, lag_ms: Option<u64>) {
        let mut status = crate::lock(&self.status);
        status.position = Some(position);
        status.lag_ms = lag_ms;
    }

    /// Says how many bytes of the log it reads the source is behind.
    pub fn report_log_lag(&self, bytes: Option<u64>) {
        crate::lock(&self.status).lag_bytes = bytes;
    }

    /// Says how many messages the broker holds for the source that it has
    /// not handed over yet.
    pub fn report_lag_messages(&self, messages: Option<u64>) {
        crate::lock(&self.status).lag_messages = messages;
    }

    /// Whether the source has been told to stop.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the source is told to stop.
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`; true if the source was told to stop meanwhile.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stopped() => true,
        };
        stopped || self.is_stopped()
    }
}
