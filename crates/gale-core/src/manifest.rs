//! The app manifest, `gale.toml`.
//!
//! Parsing is strict on purpose: an unknown key is almost always a typo, and a
//! typo silently ignored is a limit silently not applied. Every error names the
//! file, the key and the fix, and validation is pure, so a bad manifest is
//! refused before anything on the node changes.

use crate::error::{Code, Error};
use crate::filter::{Filter, valid_attribute};
use crate::units::{HumanDuration, HumanSize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Path prefixes that belong to Gale itself on the gateway port.
pub const RESERVED_PREFIXES: &[&str] = &["/_gale", "/2015-03-31"];

/// The largest linear memory a function may ask for (wasm32's address space).
pub const MAX_MEMORY: u64 = 4 << 30;
/// The most concurrent instances one function may ask for.
pub const MAX_INSTANCES: u32 = 1000;

/// A whole `gale.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub app: App,
    /// Topics the app declares (created, or their retention updated, at deploy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, TopicSpec>,
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSpec>,
    /// Sources the app declares (`[sources.NAME]`), run while it is deployed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, crate::SourceSpec>,
    /// Sinks the app declares (`[sinks.NAME]`): topics forwarded to brokers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, crate::SinkSpec>,
    /// Buckets the app declares (`[buckets.NAME]`), served by the S3 API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, crate::BucketSpec>,
}

/// A `[topics.NAME]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Events older than this are dropped, handled or not.
    #[serde(default = "defaults::retention")]
    pub retention: HumanDuration,
    /// The oldest events are dropped while the topic holds more than this.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: HumanSize,
    /// An event with the `source` + `id` of one accepted this recently is
    /// accepted but stored once.
    #[serde(default = "defaults::dedup_window")]
    pub dedup_window: HumanDuration,
}

impl TopicSpec {
    /// Checks the settings (for the manifest's `[topics.NAME]` and the admin
    /// API's `PUT /v1/topics/{name}` alike): the failing key, what is wrong
    /// and how to fix it.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.retention.0 < Duration::from_secs(1) {
            return Err((
                "retention",
                "is under one second".into(),
                "write it like \"7d\" or \"12h\"",
            ));
        }
        if self.max_bytes.0 < 1024 {
            return Err(("max_bytes", "is under 1KiB".into(), "write it like \"1GiB\""));
        }
        Ok(())
    }
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            retention: defaults::retention(),
            max_bytes: defaults::max_bytes(),
            dedup_window: defaults::dedup_window(),
        }
    }
}

/// The `[app]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
}

/// How instances of a function are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A WebAssembly component of the `wasi:http/proxy` world.
    #[default]
    Wasm,
    /// An executable speaking the AWS Lambda Runtime API: `source` is its
    /// directory, `command` (or a `bootstrap` file there) starts it.
    Process,
}

/// One `[functions.NAME]` table: the code, its limits and its triggers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Path of the component (or, for `runtime = "process"`, of the
    /// function's directory), relative to the manifest.
    pub source: String,
    /// Shell command that produces `source`, run from the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// `runtime = "process"`: the program and its arguments, run in the
    /// function's directory (default: its `bootstrap` file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `runtime = "process"`: the handler the runtime loads (`_HANDLER`),
    /// like `"app.handler"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Linear memory limit of one instance.
    #[serde(default = "defaults::memory")]
    pub memory: HumanSize,
    /// Wall-clock limit of one invocation.
    #[serde(default = "defaults::timeout")]
    pub timeout: HumanDuration,
    /// CPU time one invocation may use (none: only `timeout` bounds it).
    /// An invocation past it is cut like one past its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<HumanDuration>,
    /// Concurrent invocations (= live instances) at most.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
    /// Requests that may wait for an instance once `max_instances` are busy.
    #[serde(default = "defaults::queue")]
    pub queue: u32,
    /// Requests one instance may serve before it is replaced (1: a fresh
    /// instance for every request, full isolation).
    #[serde(default = "defaults::instance_reuse")]
    pub instance_reuse: u32,
    /// Largest request body accepted.
    #[serde(default = "defaults::max_body")]
    pub max_body: HumanSize,
    /// Environment variables the guest sees (it sees no others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Hosts the guest may reach through `wasi:http/outgoing-handler`:
    /// `"api.example.com"`, `"api.example.com:8443"` or `"*.example.com"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpTrigger>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventTrigger>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ScheduleTrigger>,
    /// Changes to objects in buckets that invoke the function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bucket: Vec<crate::BucketTrigger>,
    /// Buckets the function may read and write besides those its bucket
    /// triggers name (which it may always read and write).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// How asynchronous invocations (`POST /_gale/functions/NAME/invocations`
    /// with `mode=async`) are retried, and where their records go.
    #[serde(default, rename = "async", skip_serializing_if = "AsyncPolicy::is_default")]
    pub async_policy: AsyncPolicy,
}

/// The `[functions.NAME.async]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncPolicy {
    #[serde(default = "defaults::schedule_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Topic that gets a record of each invocation that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// Topic that gets a record of each invocation that failed every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

impl Default for AsyncPolicy {
    fn default() -> Self {
        AsyncPolicy {
            max_attempts: defaults::schedule_attempts(),
            backoff: Backoff::default(),
            on_success: None,
            on_failure: None,
        }
    }
}

impl AsyncPolicy {
    fn is_default(&self) -> bool {
        *self == AsyncPolicy::default()
    }

    /// The delivery policy of asynchronous invocations, as a trigger on `topic`.
    pub fn as_event_trigger(&self, topic: String) -> EventTrigger {
        EventTrigger {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            ..EventTrigger::new(&topic)
        }
    }
}

/// A `[[functions.NAME.schedule]]` entry: the function runs at the times a
/// cron expression names, each firing delivered as an event (type
/// `gale.schedule`) with retries like any other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// `"sec min hour day month weekday"` (seconds optional), or a nickname
    /// like `"@hourly"`.
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "defaults::timezone")]
    pub timezone: String,
    /// What to do with firings missed while the node was down.
    #[serde(default)]
    pub missed: Missed,
    #[serde(default = "defaults::schedule_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

/// Firings missed while the node was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Skip them; the next firing comes on time.
    #[default]
    Skip,
    /// Run once, for the latest missed time, then go on as scheduled.
    RunOnce,
}

impl ScheduleTrigger {
    /// When it fires.
    pub fn cron(&self) -> crate::Cron {
        crate::Cron {
            expression: self.cron.clone(),
            timezone: self.timezone.clone(),
            missed: self.missed,
        }
    }

    /// The latest firing time at or before `now_ms` and after `after_ms`
    /// (Unix milliseconds), if any.
    pub fn due(&self, after_ms: i64, now_ms: i64) -> Option<i64> {
        self.cron().due(after_ms, now_ms)
    }

    /// The first firing time after `after_ms`.
    pub fn next(&self, after_ms: i64) -> Option<i64> {
        self.cron().next(after_ms)
    }

    /// The delivery policy of the schedule's firings, as an event trigger on `topic`.
    pub fn as_event_trigger(&self, topic: String) -> EventTrigger {
        EventTrigger {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            dead_letter: self.dead_letter.clone(),
            max_concurrency: 1,
            ..EventTrigger::new(&topic)
        }
    }
}

/// A `[[functions.NAME.events]]` entry: a subscription to a topic and how
/// its events are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    pub topic: String,
    /// Attributes that must equal these values (`{ type = "order_placed" }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// Further filters in the CNCF dialects; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Attempts per event, the first included, before it is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// An attempt still running after this is cut and counted as failed
    /// (default: the function's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<HumanDuration>,
    /// Topic that receives events which failed every attempt (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Events per invocation at most.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// How long a batch may wait to fill up.
    #[serde(default = "defaults::batch_window")]
    pub batch_window: HumanDuration,
    /// Invocations in flight for this trigger at most.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub ordering: Ordering,
    /// How a process function receives the events (wasm functions always
    /// get CloudEvents).
    #[serde(default, skip_serializing_if = "EventFormat::is_default")]
    pub format: EventFormat,
}

/// The payload a process function gets for its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventFormat {
    /// One CloudEvent in JSON (structured mode) per invocation, or a JSON
    /// array of them for a batch.
    #[default]
    Cloudevents,
    /// An SQS-style batch, `{"Records": [...]}`; the handler's
    /// `batchItemFailures` names the events to retry.
    Sqs,
    /// DynamoDB Streams' batch, `{"Records": [...]}`, of row changes from
    /// a `postgres` or `mysql` source: `INSERT`, `MODIFY` or `REMOVE` with
    /// typed `Keys`, `NewImage` and `OldImage`. As for a stream, the
    /// handler's `batchItemFailures` retries the first record it names and
    /// every later one.
    Dynamodb,
    /// Amazon MQ's RabbitMQ event, `{"rmqMessagesByQueue": {...}}`, of
    /// messages from a `rabbitmq` source: per `<queue>::<vhost>`, each
    /// message's `basicProperties`, `redelivered` and base64 `data`. The
    /// batch succeeds or fails as a whole, as on Lambda.
    Rabbitmq,
    /// Lambda's self-managed Kafka event, `{"eventSource":
    /// "SelfManagedKafka", "records": {"<topic>-<partition>": [...]}}`, of
    /// records from a `kafka` source: topic, partition, offset, timestamp,
    /// base64 key and value, headers as bytes. A handler's error retries
    /// the whole batch.
    Kafka,
    /// S3's notification document, `{"Records": [...]}` of each event's
    /// data; set by bucket triggers (`format = "s3"` there), not written
    /// on an event trigger.
    #[serde(skip_deserializing)]
    S3,
}

impl EventFormat {
    fn is_default(&self) -> bool {
        *self == EventFormat::Cloudevents
    }
}

/// Retry delays: `initial`, then times `multiplier` per attempt up to `max`,
/// each scaled by a random factor in [0.5, 1] so retries of many events
/// spread out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "defaults::backoff_initial")]
    pub initial: HumanDuration,
    #[serde(default = "defaults::backoff_max")]
    pub max: HumanDuration,
    #[serde(default = "defaults::backoff_multiplier")]
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: defaults::backoff_initial(),
            max: defaults::backoff_max(),
            multiplier: defaults::backoff_multiplier(),
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let grown =
            self.initial.0.as_secs_f64() * self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max.0.as_secs_f64()))
    }
}

/// Delivery order within a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Events are handled concurrently, in no particular order.
    #[default]
    None,
    /// At most one event per CloudEvents `partitionkey` in flight; events of
    /// one key are handled in the order they were published.
    PartitionKey,
}

impl EventTrigger {
    /// A trigger on `topic` with the default delivery policy and no filter.
    pub fn new(topic: &str) -> EventTrigger {
        EventTrigger {
            topic: topic.to_string(),
            filter: BTreeMap::new(),
            filters: Vec::new(),
            max_attempts: defaults::max_attempts(),
            backoff: Backoff::default(),
            ack_timeout: None,
            dead_letter: None,
            batch_size: 1,
            batch_window: HumanDuration(Duration::ZERO),
            max_concurrency: defaults::max_concurrency(),
            ordering: Ordering::None,
            format: EventFormat::Cloudevents,
        }
    }

    /// Whether an event with these attributes is for this trigger.
    pub fn accepts(&self, attribute: &dyn Fn(&str) -> Option<String>) -> bool {
        self.filter
            .iter()
            .all(|(name, want)| attribute(name).as_deref() == Some(want.as_str()))
            && self.filters.iter().all(|f| f.matches(attribute))
    }
}

pub(crate) mod defaults {
    use super::*;
    pub fn memory() -> HumanSize {
        HumanSize(128 << 20)
    }
    pub fn timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn max_instances() -> u32 {
        100
    }
    pub fn queue() -> u32 {
        100
    }
    pub fn instance_reuse() -> u32 {
        1
    }
    pub fn max_body() -> HumanSize {
        HumanSize(6 << 20)
    }
    pub fn retention() -> HumanDuration {
        HumanDuration(Duration::from_secs(7 * 24 * 3600))
    }
    pub fn max_bytes() -> HumanSize {
        HumanSize(1 << 30)
    }
    pub fn dedup_window() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn batch_size() -> u32 {
        1
    }
    pub fn batch_window() -> HumanDuration {
        HumanDuration(Duration::ZERO)
    }
    pub fn max_concurrency() -> u32 {
        10
    }
    pub fn backoff_initial() -> HumanDuration {
        HumanDuration(Duration::from_millis(200))
    }
    pub fn backoff_max() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn backoff_multiplier() -> f64 {
        2.0
    }
    pub fn timezone() -> String {
        "UTC".into()
    }
    pub fn schedule_attempts() -> u32 {
        3
    }
}

/// A `[[functions.NAME.http]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// `"METHOD /path/{param}/{*rest}"`, or just a path for every method.
    pub route: String,
}

/// A parsed route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// `None` matches every method.
    pub method: Option<String>,
    pub path: String,
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

impl Route {
    /// Parses `"GET /users/{id}"` or `"/users/{id}"`.
    pub fn parse(text: &str) -> Result<Route, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m.to_ascii_uppercase()), p.trim()),
            None => (None, text),
        };
        if let Some(m) = &method
            && !METHODS.contains(&m.as_str())
        {
            return Err(format!(
                "unknown method {m:?} in route {text:?}; use one of {}",
                METHODS.join(", ")
            ));
        }
        if !path.starts_with('/') {
            return Err(format!(
                "route {text:?} must have a path starting with '/', like \"GET /hello\""
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!("route {text:?} must not contain a query or fragment"));
        }
        for prefix in RESERVED_PREFIXES {
            if path == *prefix || path.starts_with(&format!("{prefix}/")) {
                return Err(format!(
                    "route {text:?} is under {prefix}/, which Gale reserves for its own endpoints"
                ));
            }
        }
        // Let the router judge the parameter syntax it will later run.
        matchit::Router::new()
            .insert(path, ())
            .map_err(|e| format!("route {text:?} is not a valid pattern: {e}"))?;
        Ok(Route {
            method,
            path: path.to_string(),
        })
    }

    fn overlaps(&self, other: &Route) -> bool {
        self.method.is_none() || other.method.is_none() || self.method == other.method
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.path),
            None => write!(f, "{}", self.path),
        }
    }
}

/// Checks that no two routes could match the same request ambiguously.
/// `routes` pairs each route with the name of the function that owns it.
pub fn check_routes<'a>(routes: impl IntoIterator<Item = (&'a str, &'a Route)>) -> Result<(), Error> {
    let mut by_path: BTreeMap<&str, Vec<(&str, &Route)>> = BTreeMap::new();
    for (owner, route) in routes {
        let same_path = by_path.entry(route.path.as_str()).or_default();
        if let Some((other_owner, other)) = same_path.iter().find(|(_, r)| r.overlaps(route)) {
            return Err(conflict(owner, route, other_owner, other));
        }
        same_path.push((owner, route));
    }
    let mut router = matchit::Router::new();
    let mut owners: Vec<(&str, &Route)> = Vec::new();
    for (path, entries) in &by_path {
        if let Err(e) = router.insert(*path, ()) {
            let (owner, route) = entries[0];
            let (other_owner, other) = match &e {
                matchit::InsertError::Conflict { with } => owners
                    .iter()
                    .find(|(_, r)| r.path == *with)
                    .copied()
                    .unwrap_or((owner, route)),
                _ => (owner, route),
            };
            return Err(conflict(owner, route, other_owner, other).with_hint(
                "the two paths take the same requests with differently named parameters; \
                 name the parameters alike, or give the routes distinct static segments",
            ));
        }
        owners.push(entries[0]);
    }
    Ok(())
}

fn conflict(owner: &str, route: &Route, other_owner: &str, other: &Route) -> Error {
    Error::new(
        Code::RouteConflict,
        format!(
            "route \"{route}\" of function `{owner}` conflicts with route \"{other}\" of function `{other_owner}`"
        ),
    )
    .with_hint("change or remove one of the two routes")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// A topic name: lowercase letters, digits, '-', '_' and '.', starting with
/// a letter or digit, at most 100 characters.
pub fn valid_topic(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '0'..='9'))
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Manifest {
    /// Parses and validates a manifest; `file` names it in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Manifest, Error> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            Error::new(
                Code::ManifestInvalid,
                format!("{file}: {}", e.to_string().trim_end()),
            )
            .with_hint("see the manifest reference in Gale's README")
        })?;
        manifest.validate().map_err(|mut e| {
            e.message = format!("{file}: {}", e.message);
            e
        })?;
        Ok(manifest)
    }

    /// Checks everything that can be checked without touching the node.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |key: &str, message: String, hint: &str| {
            Error::new(Code::ManifestInvalid, format!("`{key}`: {message}")).with_hint(hint)
        };
        if !valid_name(&self.app.name) {
            return Err(invalid(
                "app.name",
                format!("{:?} is not a valid app name", self.app.name),
                "use lowercase letters, digits and '-', starting with a letter (at most 63)",
            ));
        }
        for (name, t) in &self.topics {
            let key = format!("topics.{name}");
            if !valid_topic(name) {
                return Err(invalid(
                    &key,
                    format!("{name:?} is not a valid topic name"),
                    "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit (at most 100)",
                ));
            }
            t.validate()
                .map_err(|(k, message, hint)| invalid(&format!("{key}.{k}"), message, hint))?;
        }
        let mut routes = Vec::new();
        for (name, f) in &self.functions {
            let key = |k: &str| format!("functions.{name}.{k}");
            if !valid_name(name) {
                return Err(invalid(
                    &format!("functions.{name}"),
                    format!("{name:?} is not a valid function name"),
                    "use lowercase letters, digits and '-', starting with a letter (at most 63)",
                ));
            }
            f.validate_runtime()
                .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
            if f.source.trim().is_empty() {
                return Err(invalid(
                    &key("source"),
                    "is empty".into(),
                    "set it to the path of the .wasm component, relative to the manifest",
                ));
            }
            if f.memory.0 < (1 << 20) || f.memory.0 > MAX_MEMORY {
                return Err(invalid(
                    &key("memory"),
                    format!("{} is out of range", f.memory),
                    "choose between \"1MiB\" and \"4GiB\"",
                ));
            }
            if f.timeout.0.is_zero() || f.timeout.0 > Duration::from_secs(900) {
                return Err(invalid(
                    &key("timeout"),
                    format!("{} is out of range", humantime::format_duration(f.timeout.0)),
                    "choose between \"1ms\" and \"15m\"",
                ));
            }
            if let Some(cpu) = f.cpu
                && (cpu.0 < Duration::from_millis(10) || cpu.0 > Duration::from_secs(900))
            {
                return Err(invalid(
                    &key("cpu"),
                    format!("{} is out of range", humantime::format_duration(cpu.0)),
                    "choose between \"10ms\" and \"15m\"",
                ));
            }
            if f.max_instances == 0 || f.max_instances > MAX_INSTANCES {
                return Err(invalid(
                    &key("max_instances"),
                    format!("{} is out of range", f.max_instances),
                    "choose between 1 and 1000",
                ));
            }
            if f.instance_reuse == 0 {
                return Err(invalid(
                    &key("instance_reuse"),
                    "must be at least 1".into(),
                    "1 gives every request a fresh instance; N lets one instance serve N requests",
                ));
            }
            if let Some(bad) = f.env.keys().find(|k| !valid_env_name(k)) {
                return Err(invalid(
                    &key("env"),
                    format!("{bad:?} is not a valid variable name"),
                    "use letters, digits and '_', not starting with a digit",
                ));
            }
            if let Some(bad) = f
                .allow_outbound
                .iter()
                .find(|h| h.is_empty() || h.contains('/') || h.contains(char::is_whitespace))
            {
                return Err(invalid(
                    &key("allow_outbound"),
                    format!("{bad:?} is not a host"),
                    "list hosts like \"api.example.com\", \"api.example.com:8443\" or \"*.example.com\"",
                ));
            }
            for t in &f.http {
                let route = Route::parse(&t.route)
                    .map_err(|m| invalid(&key("http.route"), m, "write routes like \"GET /users/{id}\""))?;
                routes.push((name.as_str(), route));
            }
            for (i, t) in f.events.iter().enumerate() {
                let key = |k: &str| format!("functions.{name}.events[{i}].{k}");
                t.validate()
                    .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
            }
            {
                let a = &f.async_policy;
                let key = |k: &str| format!("functions.{name}.async.{k}");
                a.as_event_trigger("async".into())
                    .validate()
                    .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
                for (k, topic) in [("on_success", &a.on_success), ("on_failure", &a.on_failure)] {
                    if let Some(t) = topic
                        && !valid_topic(t)
                    {
                        return Err(invalid(
                            &key(k),
                            format!("{t:?} is not a valid topic name"),
                            "name a topic, like \"orders-done\"",
                        ));
                    }
                }
            }
            for (i, b) in f.bucket.iter().enumerate() {
                let key = |k: &str| format!("functions.{name}.bucket[{i}].{k}");
                b.validate().map_err(|(k, message)| {
                    invalid(&key(k), message, "see the bucket trigger keys in the README")
                })?;
                b.as_event_trigger("bucket".into())
                    .validate()
                    .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
            }
            if let Some(bad) = f.buckets.iter().find(|b| !crate::buckets::valid_bucket(b)) {
                return Err(invalid(
                    &key("buckets"),
                    format!("{bad:?} is not a valid bucket name"),
                    crate::buckets::BUCKET_NAME_RULE,
                ));
            }
            for (i, s) in f.schedule.iter().enumerate() {
                let key = |k: &str| format!("functions.{name}.schedule[{i}].{k}");
                s.cron()
                    .check()
                    .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
                s.as_event_trigger("schedule".into())
                    .validate()
                    .map_err(|(k, message, hint)| invalid(&key(k), message, hint))?;
            }
        }
        for (name, b) in &self.buckets {
            if !crate::buckets::valid_bucket(name) {
                return Err(invalid(
                    &format!("buckets.{name}"),
                    format!("{name:?} is not a valid bucket name"),
                    crate::buckets::BUCKET_NAME_RULE,
                ));
            }
            if b.max_size.is_some_and(|s| s.0 == 0) {
                return Err(invalid(
                    &format!("buckets.{name}.max_size"),
                    "must be more than 0".into(),
                    "leave it out for no limit",
                ));
            }
            if b.expire_after.is_some_and(|d| d.0.is_zero()) {
                return Err(invalid(
                    &format!("buckets.{name}.expire_after"),
                    "must be more than 0".into(),
                    "leave it out to keep objects until deleted",
                ));
            }
        }
        for (name, source) in &self.sources {
            if !valid_name(name) {
                return Err(invalid(
                    &format!("sources.{name}"),
                    format!("{name:?} is not a valid source name"),
                    "use lowercase letters, digits and '-', starting with a letter (at most 63)",
                ));
            }
            source
                .validate()
                .map_err(|(k, message, hint)| invalid(&format!("sources.{name}.{k}"), message, hint))?;
        }
        for (name, sink) in &self.sinks {
            if !valid_name(name) {
                return Err(invalid(
                    &format!("sinks.{name}"),
                    format!("{name:?} is not a valid sink name"),
                    "use lowercase letters, digits and '-', starting with a letter (at most 63)",
                ));
            }
            sink.validate()
                .map_err(|(k, message, hint)| invalid(&format!("sinks.{name}.{k}"), message, hint))?;
        }
        check_routes(routes.iter().map(|(n, r)| (*n, r)))
    }
}

impl FunctionSpec {
    /// Checks the keys that belong to one runtime and not the other.
    fn validate_runtime(&self) -> Result<(), (&'static str, String, &'static str)> {
        match self.runtime {
            RuntimeKind::Wasm => {
                if !self.command.is_empty() {
                    return Err((
                        "command",
                        "applies only to runtime = \"process\"".into(),
                        "remove it, or set runtime = \"process\" for an executable",
                    ));
                }
                if self.handler.is_some() {
                    return Err((
                        "handler",
                        "applies only to runtime = \"process\"".into(),
                        "remove it, or set runtime = \"process\" for an executable",
                    ));
                }
                if self.events.iter().any(|t| t.format != EventFormat::Cloudevents) {
                    return Err((
                        "events.format",
                        "applies only to runtime = \"process\"".into(),
                        "wasm functions always receive CloudEvents; remove `format`",
                    ));
                }
            }
            RuntimeKind::Process => {
                if self.command.first().is_some_and(|c| c.trim().is_empty()) {
                    return Err((
                        "command",
                        "names no program".into(),
                        "write it like [\"python3\", \"-m\", \"awslambdaric\", \"app.handler\"], or leave it out to run `bootstrap`",
                    ));
                }
                if !self.allow_outbound.is_empty() {
                    return Err((
                        "allow_outbound",
                        "applies only to wasm functions".into(),
                        "a process function is an ordinary program with the node's network; remove the key",
                    ));
                }
                if self.instance_reuse != 1 {
                    return Err((
                        "instance_reuse",
                        "applies only to wasm functions".into(),
                        "process instances always serve invocations one after another while warm; remove the key",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl EventTrigger {
    /// Checks one trigger: the failing key, what is wrong and how to fix it.
    fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if !valid_topic(&self.topic) {
            return Err((
                "topic",
                format!("{:?} is not a valid topic name", self.topic),
                "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
            ));
        }
        if let Some(bad) = self.filter.keys().find(|k| !valid_attribute(k)) {
            return Err((
                "filter",
                format!("{bad:?} is not a CloudEvents attribute name"),
                "attribute names are lowercase letters and digits, like `type`, `source` or `subject`",
            ));
        }
        for f in &self.filters {
            f.validate().map_err(|m| {
                (
                    "filters",
                    m,
                    "write filters like { prefix = { type = \"com.shop.\" } } (dialects: exact, prefix, suffix, all, any, not)",
                )
            })?;
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err((
                "max_attempts",
                format!("{} is out of range", self.max_attempts),
                "choose between 1 and 100",
            ));
        }
        let b = &self.backoff;
        if b.initial.0.is_zero() || b.max.0 < b.initial.0 || b.max.0 > Duration::from_secs(12 * 3600) {
            return Err((
                "backoff",
                format!(
                    "initial {} and max {} do not make a backoff",
                    humantime::format_duration(b.initial.0),
                    humantime::format_duration(b.max.0)
                ),
                "use an initial delay above zero and a max between it and \"12h\"",
            ));
        }
        if !(1.0..=10.0).contains(&b.multiplier) {
            return Err((
                "backoff.multiplier",
                format!("{} is out of range", b.multiplier),
                "choose between 1 and 10",
            ));
        }
        if let Some(t) = self.ack_timeout
            && (t.0.is_zero() || t.0 > Duration::from_secs(900))
        {
            return Err((
                "ack_timeout",
                "is out of range".into(),
                "choose between \"1ms\" and \"15m\"",
            ));
        }
        if let Some(d) = &self.dead_letter {
            if !valid_topic(d) {
                return Err((
                    "dead_letter",
                    format!("{d:?} is not a valid topic name"),
                    "name a topic, like \"orders-dlq\"",
                ));
            }
            if *d == self.topic {
                return Err((
                    "dead_letter",
                    "is the trigger's own topic: failed events would come back forever".into(),
                    "name a separate topic, like \"orders-dlq\"",
                ));
            }
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err((
                "batch_size",
                format!("{} is out of range", self.batch_size),
                "choose between 1 and 1000",
            ));
        }
        if self.batch_window.0 > Duration::from_secs(60) {
            return Err((
                "batch_window",
                "is over a minute".into(),
                "choose between \"0s\" and \"1m\"",
            ));
        }
        if !(1..=MAX_INSTANCES).contains(&self.max_concurrency) {
            return Err((
                "max_concurrency",
                format!("{} is out of range", self.max_concurrency),
                "choose between 1 and 1000",
            ));
        }
        Ok(())
    }
}

impl FunctionSpec {
    /// The parsed routes (valid once the manifest validated).
    pub fn routes(&self) -> Vec<Route> {
        self.http
            .iter()
            .filter_map(|t| Route::parse(&t.route).ok())
            .collect()
    }

    /// The buckets the function may read and write: those its bucket
    /// triggers watch, then those `buckets` lists, each once.
    pub fn granted_buckets(&self) -> Vec<String> {
        let mut granted: Vec<String> = Vec::new();
        for b in self.bucket.iter().map(|b| &b.bucket).chain(&self.buckets) {
            if !granted.contains(b) {
                granted.push(b.clone());
            }
        }
        granted
    }

    /// Whether a guest may send a request to `authority` (`host` or `host:port`).
    pub fn allows_outbound(&self, authority: &str) -> bool {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.allow_outbound.iter().any(|allowed| {
            if let Some(suffix) = allowed.strip_prefix("*.") {
                host.ends_with(&format!(".{suffix}"))
            } else if allowed.contains(':') {
                allowed.eq_ignore_ascii_case(authority)
            } else {
                allowed.eq_ignore_ascii_case(host)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, Error> {
        Manifest::from_toml(text, "gale.toml")
    }

    #[test]
    fn a_function_is_granted_its_trigger_buckets_and_its_listed_ones_once() {
        let m = parse(
            r#"
            [app]
            name = "pics"
            [functions.f]
            source = "f.wasm"
            buckets = ["results", "uploads"]
            [[functions.f.bucket]]
            bucket = "uploads"
            [[functions.f.bucket]]
            bucket = "archive"
            "#,
        )
        .unwrap();
        assert_eq!(
            m.functions["f"].granted_buckets(),
            ["uploads", "archive", "results"]
        );
    }

    #[test]
    fn full_manifest_parses_with_defaults() {
        let m = parse(
            r#"
            [app]
            name = "shop"
            [functions.orders]
            source = "orders.wasm"
            memory = "64MiB"
            timeout = "5s"
            env = { GREETING = "hi" }
            [[functions.orders.http]]
            route = "POST /orders"
            [functions.hello]
            source = "hello.wasm"
            [[functions.hello.http]]
            route = "/hello/{name}"
            "#,
        )
        .unwrap();
        let orders = &m.functions["orders"];
        assert_eq!(orders.memory.0, 64 << 20);
        assert_eq!(orders.timeout.0, Duration::from_secs(5));
        assert_eq!(orders.routes()[0].to_string(), "POST /orders");
        let hello = &m.functions["hello"];
        assert_eq!(hello.max_instances, 100);
        assert_eq!(hello.instance_reuse, 1);
        assert_eq!(hello.routes()[0].method, None);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err =
            parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\ntiemout = \"5s\"\n").unwrap_err();
        assert_eq!(err.code, Code::ManifestInvalid);
        assert!(err.message.starts_with("gale.toml:"), "{}", err.message);
        assert!(err.message.contains("tiemout"), "{}", err.message);
        assert!(err.message.contains("line 5"), "{}", err.message);
    }

    #[test]
    fn bad_duration_and_size_explain_the_form() {
        let err = parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\ntimeout = \"5 parsecs\"\n")
            .unwrap_err();
        assert!(err.message.contains("\"500ms\""), "{}", err.message);
        let err = parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\nmemory = \"lots\"\n")
            .unwrap_err();
        assert!(err.message.contains("\"64MiB\""), "{}", err.message);
    }

    #[test]
    fn limits_out_of_range_name_the_key() {
        let err = parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\nmemory = \"8GiB\"\n")
            .unwrap_err();
        assert!(err.message.contains("functions.f.memory"), "{}", err.message);
        let err = parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\nmax_instances = 0\n")
            .unwrap_err();
        assert!(
            err.message.contains("functions.f.max_instances"),
            "{}",
            err.message
        );
    }

    #[test]
    fn duplicate_and_conflicting_routes_are_refused() {
        let dup = r#"
            [app]
            name = "a"
            [functions.f]
            source = "f.wasm"
            http = [{ route = "GET /x" }]
            [functions.g]
            source = "g.wasm"
            http = [{ route = "/x" }]
        "#;
        let err = parse(dup).unwrap_err();
        assert_eq!(err.code, Code::RouteConflict);
        assert!(
            err.message.contains("`f`") && err.message.contains("`g`"),
            "{}",
            err.message
        );

        let params = r#"
            [app]
            name = "a"
            [functions.f]
            source = "f.wasm"
            http = [{ route = "GET /users/{id}" }, { route = "POST /users/{name}" }]
        "#;
        let err = parse(params).unwrap_err();
        assert_eq!(err.code, Code::RouteConflict);
        let hint = err.hint.clone().unwrap_or_default();
        assert!(
            hint.contains("name the parameters alike") && !hint.contains("Insertion failed"),
            "{hint}"
        );

        let fine = r#"
            [app]
            name = "a"
            [functions.f]
            source = "f.wasm"
            http = [{ route = "GET /users/{id}" }, { route = "POST /users/{id}" }, { route = "GET /users/me" }]
        "#;
        parse(fine).unwrap();
    }

    #[test]
    fn reserved_and_malformed_routes_are_refused() {
        for route in ["GET /_gale/topics", "FETCH /x", "x", "GET /a/{b"] {
            assert!(Route::parse(route).is_err(), "{route}");
        }
        assert!(Route::parse("GET /files/{*rest}").is_ok());
    }

    #[test]
    fn runtime_keys_belong_to_their_runtime() {
        let m = parse(
            "[app]\nname = \"a\"\n[functions.f]\nsource = \"f\"\nruntime = \"process\"\n\
             command = [\"python3\", \"-m\", \"awslambdaric\"]\nhandler = \"app.handler\"\n\
             [[functions.f.events]]\ntopic = \"t\"\nformat = \"sqs\"\n",
        )
        .unwrap();
        assert_eq!(m.functions["f"].events[0].format, EventFormat::Sqs);
        let err =
            parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\nhandler = \"x\"\n").unwrap_err();
        assert!(err.message.contains("functions.f.handler"), "{}", err.message);
        let err = parse(
            "[app]\nname = \"a\"\n[functions.f]\nsource = \"f\"\nruntime = \"process\"\nallow_outbound = [\"x.com\"]\n",
        )
        .unwrap_err();
        assert!(
            err.message.contains("functions.f.allow_outbound"),
            "{}",
            err.message
        );
        let err = parse(
            "[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\n[[functions.f.events]]\ntopic = \"t\"\nformat = \"sqs\"\n",
        )
        .unwrap_err();
        assert!(
            err.message.contains("functions.f.events.format"),
            "{}",
            err.message
        );
    }

    #[test]
    fn outbound_allow_list_matches_hosts() {
        let mut f = parse("[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\n")
            .unwrap()
            .functions
            .remove("f")
            .unwrap();
        f.allow_outbound = vec![
            "api.example.com".into(),
            "*.corp.net".into(),
            "localhost:9000".into(),
        ];
        assert!(f.allows_outbound("api.example.com"));
        assert!(f.allows_outbound("api.example.com:443"));
        assert!(f.allows_outbound("db.corp.net"));
        assert!(!f.allows_outbound("corp.net"));
        assert!(f.allows_outbound("localhost:9000"));
        assert!(!f.allows_outbound("localhost:9001"));
        assert!(!f.allows_outbound("evil.com"));
    }

    #[test]
    fn event_triggers_parse_with_defaults_and_policies() {
        let m = parse(
            r#"
            [app]
            name = "shop"
            [topics.orders]
            retention = "2d"
            [functions.inventory]
            source = "inventory.wasm"
            [[functions.inventory.events]]
            topic = "orders"
            filter = { type = "order_placed" }
            filters = [{ prefix = { source = "/shop" } }]
            max_attempts = 3
            backoff = { initial = "100ms", max = "1s" }
            dead_letter = "orders-dlq"
            ordering = "partition-key"
            [[functions.inventory.events]]
            topic = "restock"
            "#,
        )
        .unwrap();
        assert_eq!(m.topics["orders"].retention.0, Duration::from_secs(2 * 86400));
        assert_eq!(m.topics["orders"].dedup_window.0, Duration::from_secs(600));
        let t = &m.functions["inventory"].events;
        assert_eq!((t[0].max_attempts, t[0].ordering), (3, Ordering::PartitionKey));
        assert_eq!(t[0].backoff.delay(1), Duration::from_millis(100));
        assert_eq!(t[0].backoff.delay(3), Duration::from_millis(400));
        assert_eq!(t[0].backoff.delay(30), Duration::from_secs(1));
        let attrs = |n: &str| match n {
            "type" => Some("order_placed".to_string()),
            "source" => Some("/shop/eu".to_string()),
            _ => None,
        };
        assert!(t[0].accepts(&attrs));
        assert!(t[1].accepts(&|_: &str| None));
        assert_eq!(
            (t[1].max_attempts, t[1].batch_size, t[1].ordering),
            (5, 1, Ordering::None)
        );
    }

    #[test]
    fn schedules_parse_validate_and_find_firings() {
        let m = parse(
            r#"
            [app]
            name = "a"
            [functions.report]
            source = "r.wasm"
            [[functions.report.schedule]]
            cron = "0 */5 * * * *"
            [[functions.report.schedule]]
            cron = "0 0 9 * * *"
            timezone = "Europe/Berlin"
            missed = "run-once"
            "#,
        )
        .unwrap();
        let s = &m.functions["report"].schedule;
        assert_eq!(
            (s[0].timezone.as_str(), s[0].missed, s[0].max_attempts),
            ("UTC", Missed::Skip, 3)
        );
        // 2026-01-01T00:07:30Z: the latest five-minute mark is 00:05:00.
        let now = 1_767_226_050_000;
        assert_eq!(s[0].due(0, now), Some(1_767_225_900_000));
        assert_eq!(s[0].due(1_767_225_900_000, now), None, "already fired");
        assert_eq!(s[0].next(now), Some(1_767_226_200_000));
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(s[1].next(now), Some(1_767_254_400_000));

        for (extra, key) in [
            ("cron = \"every day\"\n", "schedule[0].cron"),
            (
                "cron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\n",
                "schedule[0].timezone",
            ),
            (
                "cron = \"* * * * *\"\nmax_attempts = 0\n",
                "schedule[0].max_attempts",
            ),
        ] {
            let err = parse(&format!(
                "[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\n[[functions.f.schedule]]\n{extra}"
            ))
            .unwrap_err();
            assert!(err.message.contains(key), "{extra}: {}", err.message);
        }
    }

    #[test]
    fn bad_event_triggers_name_the_key() {
        let base = "[app]\nname = \"a\"\n[functions.f]\nsource = \"f.wasm\"\n[[functions.f.events]]\n";
        for (extra, key) in [
            ("topic = \"Orders\"\n", "events[0].topic"),
            (
                "topic = \"o\"\nfilters = [{ prefix = { type = \"\" } }]\n",
                "events[0].filters",
            ),
            ("topic = \"o\"\ndead_letter = \"o\"\n", "events[0].dead_letter"),
            ("topic = \"o\"\nmax_attempts = 0\n", "events[0].max_attempts"),
            (
                "topic = \"o\"\nbackoff = { initial = \"5s\", max = \"1s\" }\n",
                "events[0].backoff",
            ),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.message.contains(key), "{extra}: {}", err.message);
        }
        let err = parse(&format!(
            "{base}topic = \"o\"\nfilters = [{{ regex = {{ type = \"x\" }} }}]\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("regex"), "{}", err.message);
    }
}
