//! Which topics a function's triggers read.
//!
//! Besides its `[[functions.NAME.events]]` subscriptions, a function reads
//! two kinds of topics of the node's own, whose names no manifest can
//! declare (they start with `_`):
//! - `_schedule.<function>.<n>`: the firings of its `n`th schedule, which
//!   the schedule's source publishes;
//! - `_async.<function>`: its asynchronous invocations, made on the first;
//!
//! and, for each bucket trigger, the bucket's notification topic
//! `_bucket.<bucket>` (see `crate::buckets`).

use crate::buckets::bucket_topic;
use gale_core::{EventTrigger, FunctionSpec};
use gale_store::TopicConfig;

pub const SCHEDULE_PREFIX: &str = "_schedule.";
pub const ASYNC_PREFIX: &str = "_async.";

/// Retention and dedup of schedule topics: a firing's id repeats only if
/// it was published again after a crash, within a day.
pub const SCHEDULE_TOPIC: TopicConfig = TopicConfig {
    max_age_ms: 7 * 86_400_000,
    max_bytes: 64 << 20,
    dedup_window_ms: 86_400_000,
};

/// Retention and dedup of asynchronous invocation topics.
pub const ASYNC_TOPIC: TopicConfig = TopicConfig {
    max_age_ms: 7 * 86_400_000,
    max_bytes: 1 << 30,
    dedup_window_ms: 600_000,
};

/// The topic of a function's `n`th schedule.
pub fn schedule_topic(function: &str, n: usize) -> String {
    format!("{SCHEDULE_PREFIX}{function}.{n}")
}

/// The topic of a function's asynchronous invocations.
pub fn async_topic(function: &str) -> String {
    format!("{ASYNC_PREFIX}{function}")
}

/// Every trigger of a function that takes events from a topic: its event
/// triggers, then one per schedule (on the schedule's own topic), then one
/// per bucket trigger (on the bucket's notification topic), then its
/// asynchronous invocations (on its own topic).
pub fn triggers(name: &str, spec: &FunctionSpec) -> Vec<EventTrigger> {
    let schedules = spec
        .schedule
        .iter()
        .enumerate()
        .map(|(i, s)| s.as_event_trigger(schedule_topic(name, i)));
    let buckets = spec
        .bucket
        .iter()
        .map(|b| b.as_event_trigger(bucket_topic(&b.bucket)));
    let invocations = spec.async_policy.as_event_trigger(async_topic(name));
    spec.events
        .iter()
        .cloned()
        .chain(schedules)
        .chain(buckets)
        .chain(std::iter::once(invocations))
        .collect()
}
