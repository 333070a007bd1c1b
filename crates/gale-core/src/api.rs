//! The JSON shapes of the admin API (`/v1/...`), shared by node and CLI.
//!
//! Request bodies refuse fields they do not know, as the manifest does: a
//! misspelt field silently ignored is a setting silently not applied.

use crate::manifest::{FunctionSpec, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/apps/{app}/deploy`: the manifest plus, per function, the
/// digest (`sha256:<hex>`) of an artifact already uploaded with
/// `PUT /v1/artifacts/{digest}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub manifest: Manifest,
    pub artifacts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    pub app: String,
    pub functions: Vec<DeployedFunction>,
    /// Functions the app had before and no longer has.
    pub removed: Vec<String>,
    /// False when the deploy changed nothing at all.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployedFunction {
    pub name: String,
    pub version: u64,
    /// False when the function's code and configuration were already current.
    pub changed: bool,
    pub routes: Vec<String>,
}

/// What `gale ls` and `gale describe` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub app: String,
    pub version: u64,
    pub versions: u64,
    pub artifact: String,
    pub routes: Vec<String>,
    pub spec: FunctionSpec,
    pub stats: FunctionStats,
    /// Unix milliseconds.
    pub updated_at: u64,
}

/// Live counters of one function on this node since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionStats {
    pub invocations: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// Instances running right now.
    pub active: u64,
    /// Requests waiting for an instance right now.
    pub queued: u64,
    /// Requests refused with 429 because the queue was full.
    pub throttled: u64,
    /// CPU time its invocations used, µs, since the node started.
    #[serde(default)]
    pub cpu_us: u64,
    /// Time its invocations were ready to compute but waited for a core
    /// (other work had the node's cores), µs, since the node started.
    #[serde(default)]
    pub cpu_waited_us: u64,
    /// Whether the compiled code is loaded (false: scaled to zero).
    pub warm: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub function: String,
    pub version: u64,
    pub artifact: String,
    pub current: bool,
    pub routes: Vec<String>,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
}

/// `POST /v1/functions/{name}/invoke`: a request to send to the function.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvokeResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub request_id: String,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The guest answered (whatever status it chose).
    Ok,
    /// The guest trapped or failed to answer.
    Error,
    /// The invocation ran past its timeout.
    Timeout,
    /// The client went away before the guest finished.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One invocation log record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationLog {
    /// Position in the node's log, increasing; `gale logs -f` resumes after it.
    pub seq: u64,
    pub request_id: String,
    pub function: String,
    pub version: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    pub duration_us: u64,
    /// CPU time it used (its guest, or its instance's processes), µs.
    #[serde(default)]
    pub cpu_us: u64,
    pub outcome: Outcome,
    /// HTTP status sent to the client.
    pub status: u16,
    pub cold_start: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Ids of the events this invocation handled (event-triggered invocations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// A topic as `gale topics` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    /// Events older than this many milliseconds are dropped.
    pub max_age_ms: u64,
    /// The oldest events are dropped while the topic holds more bytes than this.
    pub max_bytes: u64,
    /// A `source` + `id` seen within this many milliseconds is stored once.
    pub dedup_window_ms: u64,
    /// Events stored now.
    pub depth: u64,
    pub bytes: u64,
    /// Sequence number of the newest event (0: none yet).
    pub last_seq: u64,
    /// Unix milliseconds of the oldest stored event.
    pub oldest_at: Option<u64>,
    /// Events ever accepted (duplicates not counted).
    pub published: u64,
    /// Events accepted per second over the last minute (filled by the node).
    #[serde(default)]
    pub publish_rate: f64,
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription of a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    pub name: String,
    /// At most one event in flight per partition key.
    pub ordered: bool,
    /// Events not yet handled: never delivered, in flight or waiting to be retried.
    pub lag: u64,
    /// Delivered and not yet settled, or waiting for a retry.
    pub pending: u64,
    /// Of those, events that failed at least once and wait for another attempt.
    pub retrying: u64,
    /// Events handled (or dead-lettered) so far.
    pub acked: u64,
    /// Events handled per second over the last minute (filled by the node).
    #[serde(default)]
    pub delivery_rate: f64,
    /// While events wait: what holds them back (filled by the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<Limit>,
}

/// What holds a subscription's waiting events back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// The node's CPU: its function's invocations lately waited for a core
    /// longer than they computed (the node is saturated; more cores, a
    /// higher `--delivery-share` or fewer neighbours help).
    Cpu,
    /// The handler itself: its invocations compute or wait on I/O; more
    /// `max_concurrency` or a faster handler help.
    Handler,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu",
            Limit::Handler => "handler",
        }
    }
}

/// A stored event as `GET /v1/topics/{name}/events` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEventInfo {
    pub seq: u64,
    /// Unix milliseconds.
    pub published_at: u64,
    /// The CloudEvent in its JSON format.
    pub event: serde_json::Value,
}

/// A publish-only token as the node keeps it (the token itself is not kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Names the token in `gale tokens ls` and `gale tokens rm`.
    pub id: String,
    /// Topics the token may publish to.
    pub publish: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub publish: Vec<String>,
}

/// The answer to `POST /v1/tokens`: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// An asynchronous invocation, as `gale invocations show` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub function: String,
    /// `queued`, `retrying`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: u32,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// The function's answer (HTTP functions), its body cut at 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<InvocationResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationResponse {
    pub status: u16,
    pub body: String,
}

/// A source as `gale sources` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub name: String,
    /// Its kind, as the manifest's `type` names it.
    #[serde(rename = "type")]
    pub kind: String,
    /// The app that declared it (`[sources.NAME]`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The function whose schedule it is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The topic it feeds.
    pub topic: String,
    /// `running`, `failed` (it stopped with `last_error` and starts again
    /// after a pause), or `standby` (another node holds its lease).
    pub state: String,
    /// The node that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where it has got to, in its own terms (a firing time, a log position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// How far behind what it reads it is, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// How far behind what it reads it is, in bytes of the log it reads
    /// (a database's write-ahead log or binlog), where that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// How far behind what it reads it is, in messages the broker holds
    /// for it and has not handed over (JetStream's pending count), where
    /// the broker says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_messages: Option<u64>,
    /// Events it published since the node started.
    pub published: u64,
    /// Messages it could not take (too large, or not of its `format`)
    /// since the node started: parked in its `dead_letter` topic, or
    /// dropped without one.
    #[serde(default)]
    pub parked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A bucket, as `GET /v1/buckets` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketInfo {
    pub name: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The most bytes its objects may hold together (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Objects expire this many milliseconds after their last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after_ms: Option<u64>,
    pub objects: u64,
    pub bytes: u64,
}

/// `PUT /v1/buckets/{name}`: creates a bucket, or changes its settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBucketRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<crate::units::HumanSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<crate::units::HumanDuration>,
}

/// An S3 access key, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The access key id clients send.
    pub id: String,
    /// The buckets it may use.
    pub buckets: Vec<String>,
    /// Whether it may only read.
    pub read_only: bool,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub buckets: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
}

/// The answer to `POST /v1/keys`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    pub secret: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}
