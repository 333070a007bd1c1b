//! Schedules: a cron expression that publishes an event at each firing.
//!
//! A function's `[[functions.NAME.schedule]]` entry is a schedule source
//! publishing to the function's own topic `_schedule.<function>.<n>`,
//! delivered like any event (retries, dead letters, logs); a declared
//! `[sources.NAME] type = "schedule"` publishes to a topic of the app's.
//!
//! The checkpoint holds the last firing time. A firing is published first
//! (its id comes from the source and the firing time) and the checkpoint
//! saved after: a crash between the two publishes the same id again on
//! restart, which the topic's dedup window drops, so a firing is never
//! doubled. Firings missed while no node ran the schedule are skipped, or
//! run once for the latest, as the schedule says.

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use crate::clock::now_ms;
use gale_core::manifest::Missed;
use gale_core::{Cron, ScheduleSource};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A firing this late still counts as on time; later, it was missed while
/// the schedule did not run.
const GRACE_MS: i64 = 2_000;
/// The longest sleep between looks at the clock (so a clock that jumped is
/// noticed).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The source name of a function's `n`th schedule (a name no manifest can
/// give a source: those have no dots).
pub fn function_source(function: &str, n: usize) -> String {
    format!("{function}.schedule.{n}")
}

pub struct Schedule {
    cron: Cron,
    topic: String,
    /// The events' `source` attribute.
    event_source: String,
    /// Where a function's schedule kept its last firing before schedules
    /// were sources; read once if there is no checkpoint yet.
    legacy_key: Option<String>,
}

/// The checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Fired {
    cron: String,
    timezone: String,
    /// Unix ms of the last firing (or of when the schedule started).
    last: i64,
}

impl Schedule {
    pub fn new(wanted: &Wanted, spec: &ScheduleSource) -> Schedule {
        let (event_source, legacy_key) = match &wanted.function {
            Some(f) => {
                let n = wanted.name.rsplit('.').next().unwrap_or("0");
                (format!("/gale/schedules/{f}"), Some(format!("schedules/{f}/{n}")))
            }
            None => (format!("/gale/sources/{}", wanted.name), None),
        };
        Schedule {
            cron: spec.cron(),
            topic: spec.topic.clone(),
            event_source,
            legacy_key,
        }
    }

    fn fresh(&self, now: i64) -> Fired {
        Fired {
            cron: self.cron.expression.clone(),
            timezone: self.cron.timezone.clone(),
            last: now,
        }
    }

    /// The checkpoint, if it is of this very schedule: a new or changed
    /// schedule starts now, and nothing before counts as missed.
    async fn start(&self, cx: &mut Context) -> Result<Fired, NodeError> {
        let mut saved: Option<Fired> = cx.checkpoint().await?;
        if saved.is_none()
            && let Some(key) = &self.legacy_key
        {
            let entry = cx.metadata().get(key).await?;
            saved = entry.and_then(|e| serde_json::from_slice(&e.value).ok());
        }
        match saved {
            Some(f) if f.cron == self.cron.expression && f.timezone == self.cron.timezone => Ok(f),
            _ => {
                let fired = self.fresh(now_ms() as i64);
                cx.save(&fired).await?;
                Ok(fired)
            }
        }
    }

    async fn fire(&self, cx: &Context, at: i64) -> Result<(), NodeError> {
        let time = jiff::Timestamp::from_millisecond(at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": cx.event_id(&at.to_string(), 0),
            "source": self.event_source,
            "type": "gale.schedule",
            "time": time,
            "subject": self.cron.expression,
            "datacontenttype": "application/json",
            "data": {
                "cron": self.cron.expression,
                "timezone": self.cron.timezone,
                "scheduled_at": time,
            },
        });
        let event: cloudevents::Event =
            serde_json::from_value(event).map_err(|e| NodeError::DataDir(format!("schedule event: {e}")))?;
        cx.publish(&self.topic, vec![crate::events::encode(&event)])
            .await?;
        tracing::debug!(source = %cx.name(), at, "schedule fired");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for Schedule {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let mut fired = self.start(cx).await?;
        loop {
            let now = now_ms() as i64;
            if let Some(due) = self.cron.due(fired.last, now) {
                let late = now - due;
                if late <= GRACE_MS || self.cron.missed == Missed::RunOnce {
                    self.fire(cx, due).await?;
                } else {
                    tracing::info!(source = %cx.name(), "a firing was missed while the schedule did not run; skipped");
                }
                fired.last = due;
                cx.save(&fired).await?;
                cx.report(time_of(due), Some(late.max(0) as u64));
                continue;
            }
            let next = self.cron.next(fired.last.max(now)).unwrap_or(now + 60_000);
            let wait = Duration::from_millis((next - now).max(1) as u64).min(MAX_SLEEP);
            if cx.sleep(wait).await {
                return Ok(());
            }
        }
    }
}

fn time_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
