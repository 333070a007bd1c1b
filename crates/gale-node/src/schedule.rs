//! Schedules: cron expressions that fire functions.
//!
//! A firing is an event (type `gale.schedule`) published to the schedule's
//! own topic, `_schedule.<function>.<n>` (a name no manifest can declare),
//! whose subscription delivers it like any other event: retries, dead
//! letters, logs. The event id is `<function>/<n>/<time>`, and the last
//! firing time is stored per schedule (`schedules/<function>/<n>` in
//! metadata) after the publish. A crash between the two publishes the same
//! id again on restart, which the topic's dedup window (a day) drops, so a
//! firing is never doubled; firings missed while the node was down are
//! skipped or run once, as the schedule says.

use crate::State;
use crate::registry::now_ms;
use gale_core::ScheduleTrigger;
use gale_core::manifest::Missed;
use gale_store::{Expect, Metadata, TopicConfig, Topics};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A firing this late still counts as on time (the loop looks every
/// 500 ms); later, it was missed while the node was down.
const GRACE_MS: i64 = 2_000;

/// The topic of a function's `n`th schedule.
/// Schedule topics are `_schedule.<function>.<n>`.
pub const TOPIC_PREFIX: &str = "_schedule.";

pub fn topic(function: &str, n: usize) -> String {
    format!("{TOPIC_PREFIX}{function}.{n}")
}

/// Retention and dedup of schedule topics.
pub const TOPIC: TopicConfig = TopicConfig {
    max_age_ms: 7 * 86_400_000,
    max_bytes: 64 << 20,
    dedup_window_ms: 86_400_000,
};

/// What is stored per schedule.
#[derive(Debug, Serialize, Deserialize)]
struct Fired {
    cron: String,
    timezone: String,
    /// Unix ms of the last firing (or of when the schedule started).
    last: i64,
}

/// Fires due schedules until `stop`.
pub async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = tick(&state).await {
            tracing::warn!(error = %e, "schedules: a check failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn tick(state: &Arc<State>) -> Result<(), crate::NodeError> {
    let schedules: Vec<(String, usize, ScheduleTrigger)> = state
        .functions
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .flat_map(|l| {
            l.spec
                .schedule
                .iter()
                .enumerate()
                .map(|(i, s)| (l.name.clone(), i, s.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (function, n, schedule) in schedules {
        let key = format!("schedules/{function}/{n}");
        let now = now_ms() as i64;
        let (fired, expect) = match state.store.get(&key).await? {
            Some(entry) => match serde_json::from_slice::<Fired>(&entry.value) {
                Ok(f) if f.cron == schedule.cron && f.timezone == schedule.timezone => {
                    (f, Expect::Revision(entry.revision))
                }
                // A new or changed schedule starts now: nothing before counts as missed.
                _ => (fresh(&schedule, now), Expect::Revision(entry.revision)),
            },
            None => (fresh(&schedule, now), Expect::Absent),
        };
        let Some(due) = schedule.due(fired.last, now) else {
            if expect == Expect::Absent {
                write(state, &key, &fired, expect).await?;
            }
            continue;
        };
        let on_time = now - due <= GRACE_MS;
        if on_time || schedule.missed == Missed::RunOnce {
            fire(state, &function, n, &schedule, due).await?;
        } else {
            tracing::info!(
                function,
                schedule = n,
                "firing missed while the node was down; skipped"
            );
        }
        write(state, &key, &Fired { last: due, ..fired }, expect).await?;
    }
    Ok(())
}

fn fresh(schedule: &ScheduleTrigger, now: i64) -> Fired {
    Fired {
        cron: schedule.cron.clone(),
        timezone: schedule.timezone.clone(),
        last: now,
    }
}

async fn write(state: &State, key: &str, fired: &Fired, expect: Expect) -> Result<(), crate::NodeError> {
    let value = serde_json::to_vec(fired).expect("schedule records serialize");
    state.store.put(key, value, expect).await?;
    Ok(())
}

async fn fire(
    state: &State,
    function: &str,
    n: usize,
    schedule: &ScheduleTrigger,
    at: i64,
) -> Result<(), crate::NodeError> {
    let time = jiff::Timestamp::from_millisecond(at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": format!("{function}/{n}/{at}"),
        "source": format!("/gale/schedules/{function}"),
        "type": "gale.schedule",
        "time": time,
        "subject": schedule.cron,
        "datacontenttype": "application/json",
        "data": { "cron": schedule.cron, "timezone": schedule.timezone, "scheduled_at": time },
    });
    let event: cloudevents::Event = serde_json::from_value(event)
        .map_err(|e| crate::NodeError::DataDir(format!("schedule event: {e}")))?;
    let topic = topic(function, n);
    state
        .store
        .publish(&topic, vec![crate::events::encode(&event)])
        .await?;
    tracing::debug!(function, schedule = n, at, "schedule fired");
    Ok(())
}

/// Makes the topics of every schedule in `functions` (at deploy).
pub async fn ensure_topics(state: &State, functions: &[(String, usize)]) -> Result<(), crate::NodeError> {
    for (function, n) in functions {
        state.put_topic(&topic(function, *n), TOPIC).await?;
    }
    Ok(())
}
