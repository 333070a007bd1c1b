//! Running a topic's stored events through a function again (replay), and
//! moving a dead-letter topic's events back to where they failed (redrive).

use super::dispatcher::Dispatch;
use crate::NodeError;
use crate::events::{self, FAILURE_ATTRIBUTES, attribute, decode, encode};
use crate::functions::events::attempt;
use crate::functions::triggers::triggers;
use cloudevents::AttributesReader;
use gale_core::{Code, Error, EventTrigger};

/// What a replay did.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Replayed {
    /// Events run through the function.
    pub replayed: u64,
    /// Of those, events whose run failed (not retried: run the replay again).
    pub failed: u64,
    /// Events skipped by the function's filters for the topic.
    pub filtered: u64,
    /// Sequence number of the last event looked at (resume after it).
    pub last_seq: u64,
    /// The first few failures.
    pub errors: Vec<String>,
}

/// Runs the events of `topic` published at or after `from_ms` through
/// `function`, oldest first, at most `limit`: for a new version or a fixed
/// bug. The function's filters for the topic apply if it subscribes to
/// it; what it publishes is stored; failures are reported, not retried.
///
/// A replay covers the events the topic held when it started: a function
/// that publishes to the topic it replays would otherwise feed itself its
/// own output until the limit.
pub async fn replay(
    dispatch: &Dispatch,
    topic: &str,
    function: &str,
    from_ms: u64,
    limit: u64,
) -> Result<Replayed, NodeError> {
    let live = dispatch
        .functions
        .get(function)
        .ok_or_else(|| NodeError::function_not_found(function))?;
    let trigger = triggers(&live.name, &live.spec)
        .into_iter()
        .find(|t| t.topic == topic)
        .unwrap_or_else(|| EventTrigger::new(topic));
    let mut report = Replayed {
        replayed: 0,
        failed: 0,
        filtered: 0,
        last_seq: 0,
        errors: Vec::new(),
    };
    let end = dispatch
        .topics
        .topics()
        .await?
        .into_iter()
        .find(|t| t.name == topic)
        .map_or(0, |t| t.last_seq);
    let mut after = 0;
    'pages: while after < end {
        let page = dispatch.topics.read(topic, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in page {
            if stored.seq > end {
                break 'pages;
            }
            if stored.published_at < from_ms {
                continue;
            }
            if report.replayed + report.filtered >= limit {
                break 'pages;
            }
            report.last_seq = stored.seq;
            let Ok(event) = events::decode(&stored.body) else {
                continue;
            };
            if !trigger.accepts(&|name| attribute(&event, name)) {
                report.filtered += 1;
                continue;
            }
            report.replayed += 1;
            // Named after the function and the event: replaying it again
            // (a replay that failed part way, run once more) publishes the
            // same ids, which dedup drops.
            let origin = format!("replay {topic}\n{} {}", event.source(), event.id());
            let (mut results, outbox) = attempt(&live, &trigger, topic, &origin, &[(&event, 1)]).await;
            match results.pop().unwrap_or(Err("no result".into())) {
                Ok(()) => dispatch.publisher.publish_all(outbox).await?,
                Err(e) => {
                    report.failed += 1;
                    if report.errors.len() < 10 {
                        report.errors.push(format!("{}: {e}", event.id()));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Moves every event of the dead-letter topic `dlq` back to the topic
/// named by its `galetopic` attribute, without Gale's failure attributes.
/// Events without that attribute stay. A topic that no trigger names as
/// its dead letter and that holds no dead-lettered event is refused, so a
/// typo does not read as "nothing to move".
pub async fn redrive(dispatch: &Dispatch, dlq: &str) -> Result<serde_json::Value, NodeError> {
    let named = dispatch.functions.snapshot().values().any(|live| {
        triggers(&live.name, &live.spec)
            .iter()
            .any(|t| t.dead_letter.as_deref() == Some(dlq))
    }) || dispatch
        .functions
        .registry()
        .sinks()
        .await?
        .iter()
        .any(|s| s.spec.dead_letter.as_deref() == Some(dlq));
    let (mut moved, mut kept, mut after) = (0, 0, 0);
    loop {
        let page = dispatch.topics.read(dlq, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let mut moves = Vec::new();
        for stored in page {
            let Ok(mut event) = decode(&stored.body) else {
                kept += 1;
                continue;
            };
            let Some(topic) = event.extension("galetopic").map(|v| v.to_string()) else {
                kept += 1;
                continue;
            };
            for name in FAILURE_ATTRIBUTES {
                event.remove_extension(name);
            }
            moves.push((stored.seq, topic, encode(&event)));
        }
        moved += dispatch.publisher.move_events(dlq, moves).await?;
    }
    if moved == 0 && !named {
        return Err(Error::new(
            Code::Conflict,
            format!("topic `{dlq}` is not a dead-letter topic: no trigger or sink names it as `dead_letter` and none of its {kept} events failed a delivery"),
        )
        .with_hint("a trigger's `dead_letter` key names its dead-letter topic; `gale describe FN` shows a function's")
        .into());
    }
    Ok(serde_json::json!({ "moved": moved, "kept": kept }))
}
