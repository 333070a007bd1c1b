//! Invocation log records: what each run of a function did, written in the
//! background in batches so the request path never waits for storage.

use gale_core::api::InvocationLog;
use gale_store::InvocationLogs;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Where finished invocations are counted and logged; cheap to clone.
#[derive(Clone)]
pub struct Logs {
    records: mpsc::Sender<InvocationLog>,
}

/// What is known of an invocation when it starts, for its log record.
pub struct Started {
    pub request_id: String,
    /// Unix milliseconds.
    pub at: u64,
    pub cold_start: bool,
    /// Ids of the events it handles.
    pub events: Vec<String>,
}

impl Logs {
    /// A sender of records and the writer that stores them.
    pub fn new(store: Arc<dyn InvocationLogs>) -> (Logs, Writer) {
        let (records, rx) = mpsc::channel(64 * 1024);
        (Logs { records }, Writer { store, rx })
    }

    /// Files a record, to be stored with the next batch.
    pub fn record(&self, record: InvocationLog) {
        // Logs are diagnostics: if the writer falls far behind, drop rather
        // than grow without bound or slow the request path.
        if self.records.try_send(record).is_err() {
            tracing::warn!("invocation log writer is behind; a record was dropped");
        }
    }
}

/// Stores log records in batches until told to flush and stop.
pub struct Writer {
    store: Arc<dyn InvocationLogs>,
    rx: mpsc::Receiver<InvocationLog>,
}

impl Writer {
    /// One transaction per batch keeps the request path free of storage latency.
    pub async fn run(mut self, mut flush: watch::Receiver<bool>) {
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                r = self.rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => return,
                },
                _ = flush.changed() => {
                    while let Ok(r) = self.rx.try_recv() {
                        batch.push(r);
                    }
                    self.store_batch(batch).await;
                    return;
                }
            }
            // Let a batch gather: one commit per batch, not per invocation.
            tokio::time::sleep(Duration::from_millis(50)).await;
            while batch.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.store_batch(batch).await;
        }
    }

    /// Stores a batch; a failure (the store busy under load) is tried
    /// again a few times before the batch is given up.
    async fn store_batch(&self, batch: Vec<InvocationLog>) {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self.store.append(batch.clone()).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => {
                    tracing::error!(error = %e, records = batch.len(), "writing invocation logs failed; the records are dropped");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "writing invocation logs failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
}
