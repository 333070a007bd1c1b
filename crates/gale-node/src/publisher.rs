//! The one way events are appended to topics.
//!
//! Every path that stores events goes through [`Publisher`]: publishes over
//! HTTP, schedules and other sources, asynchronous invocations, what a
//! function published (its outbox, on its own or with a delivery's ack),
//! dead letters, replays and redrives, object notifications. So the size limit, the publish
//! meter and the ids of events a function published without one are the
//! same on every path, and a path cannot forget one of them.
//!
//! The publisher also keeps the set of topic names in memory: a function's
//! `publish` host call checks it without waiting for storage.

use crate::NodeError;
use crate::events::{self, MAX_EVENT};
use crate::meters::Meters;
use gale_core::api::TopicInfo;
use gale_core::{Code, Error};
use gale_store::{NewEvent, Published, Settle, TopicConfig, Topics};
use gale_wasm::events::GuestEvent;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Appends events; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    topics: Arc<dyn Topics>,
    meters: Arc<Meters>,
    names: Arc<RwLock<HashSet<String>>>,
}

/// What an invocation published, named after the invocation: events
/// without an id get one derived from `origin` and their place in the
/// outbox, so the same invocation run again publishes the same ids and a
/// topic's dedup drops the second copy.
pub struct Outbox<'a> {
    /// The function that published.
    pub function: &'a str,
    /// What the invocation ran for: the delivered events, or the request.
    pub origin: &'a str,
    pub events: Vec<(String, GuestEvent)>,
}

impl Publisher {
    pub async fn new(topics: Arc<dyn Topics>, meters: Arc<Meters>) -> Result<Publisher, NodeError> {
        let publisher = Publisher {
            topics,
            meters,
            names: Arc::default(),
        };
        publisher.refresh().await?;
        Ok(publisher)
    }

    /// Appends events to a topic; returns once they are durable.
    pub async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>, NodeError> {
        check_sizes(events.iter())?;
        let published = self.topics.publish(topic, events).await?;
        self.meters
            .published(topic, published.iter().filter(|p| !p.duplicate).count() as u64);
        Ok(published)
    }

    /// Appends events to several topics in one transaction: all or none.
    pub async fn publish_all(&self, events: Vec<(String, NewEvent)>) -> Result<(), NodeError> {
        if events.is_empty() {
            return Ok(());
        }
        check_sizes(events.iter().map(|(_, e)| e))?;
        let counts = per_topic(events.iter().map(|(t, _)| t.as_str()));
        self.topics.publish_all(events).await?;
        for (topic, n) in counts {
            self.meters.published(&topic, n);
        }
        Ok(())
    }

    /// Appends `events` through `write`, a storage call that commits them
    /// together with something else (an object and its notification), with
    /// the checks and meters of every other append.
    pub async fn along<T>(
        &self,
        events: Vec<(String, NewEvent)>,
        write: impl AsyncFnOnce(Vec<(String, NewEvent)>) -> gale_store::Result<T>,
    ) -> Result<T, NodeError> {
        check_sizes(events.iter().map(|(_, e)| e))?;
        let counts = per_topic(events.iter().map(|(t, _)| t.as_str()));
        let written = write(events).await?;
        for (topic, n) in counts {
            self.meters.published(&topic, n);
        }
        Ok(written)
    }

    /// What an invocation published, as events ready to store.
    pub fn outbox(outbox: Outbox<'_>) -> Result<Vec<(String, NewEvent)>, String> {
        let mut stored = Vec::with_capacity(outbox.events.len());
        for (index, (topic, mut event)) in outbox.events.into_iter().enumerate() {
            if event.id.is_empty() {
                event.id = events::derived_id(outbox.function, outbox.origin, index);
            }
            let event = events::from_guest(event).map_err(|e| format!("an invalid event: {e}"))?;
            let event = events::encode(&event);
            if event.body.len() > MAX_EVENT {
                return Err(format!(
                    "event {} is {} bytes; the limit is {MAX_EVENT}",
                    event.id,
                    event.body.len()
                ));
            }
            stored.push((topic, event));
        }
        Ok(stored)
    }

    /// Stores what an invocation published, all or nothing.
    pub async fn commit(&self, outbox: Outbox<'_>) -> Result<(), NodeError> {
        let function = outbox.function.to_string();
        let events = Publisher::outbox(outbox).map_err(|e| {
            NodeError::from(Error::new(
                Code::EventInvalid,
                format!("function `{function}` published {e}"),
            ))
        })?;
        self.publish_all(events).await
    }

    /// Settles deliveries of a subscription, with what the handlers
    /// published and the dead letters, in one transaction; `handled`
    /// events count as delivered.
    pub async fn settle(
        &self,
        topic: &str,
        subscription: &str,
        settles: Vec<Settle>,
        handled: u64,
    ) -> Result<(), NodeError> {
        let appended: Vec<&str> = settles
            .iter()
            .flat_map(|s| match s {
                Settle::Ack { outbox, .. } => outbox.iter().map(|(t, _)| t.as_str()).collect(),
                Settle::DeadLetter { topic, .. } => vec![topic.as_str()],
                Settle::Retry { .. } => vec![],
            })
            .collect();
        let counts = per_topic(appended.into_iter());
        self.topics.settle(topic, subscription, settles).await?;
        for (to, n) in counts {
            self.meters.published(&to, n);
        }
        self.meters.delivered(topic, subscription, handled);
        Ok(())
    }

    /// Moves events of `from` to other topics as new events (a redrive).
    pub async fn move_events(
        &self,
        from: &str,
        moves: Vec<(u64, String, NewEvent)>,
    ) -> Result<u64, NodeError> {
        let counts = per_topic(moves.iter().map(|(_, t, _)| t.as_str()));
        let moved = self.topics.move_events(from, moves).await?;
        if moved > 0 {
            for (to, n) in counts {
                self.meters.published(&to, n);
            }
        }
        Ok(moved)
    }

    /// Creates a topic or changes its retention.
    pub async fn put_topic(&self, name: &str, config: TopicConfig) -> Result<(), NodeError> {
        self.topics.put_topic(name, config).await?;
        crate::write(&self.names).insert(name.to_string());
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<bool, NodeError> {
        let deleted = self.topics.delete_topic(name).await?;
        crate::write(&self.names).remove(name);
        Ok(deleted)
    }

    /// Reads the topic names again (at start, and when another node made
    /// or removed a topic).
    pub async fn refresh(&self) -> Result<(), NodeError> {
        let names = self.topics.topics().await?.into_iter().map(|t| t.name).collect();
        *crate::write(&self.names) = names;
        Ok(())
    }

    pub fn exists(&self, topic: &str) -> bool {
        crate::read(&self.names).contains(topic)
    }

    /// Every topic, with its rates over the last minute.
    pub async fn list(&self) -> Result<Vec<TopicInfo>, NodeError> {
        let mut topics = self.topics.topics().await?;
        for t in &mut topics {
            t.publish_rate = self.meters.publish_rate(&t.name);
            for s in &mut t.subscriptions {
                s.delivery_rate = self.meters.delivery_rate(&t.name, &s.name);
            }
        }
        Ok(topics)
    }
}

fn check_sizes<'a>(mut events: impl Iterator<Item = &'a NewEvent>) -> Result<(), NodeError> {
    match events.find(|e| e.body.len() > MAX_EVENT) {
        None => Ok(()),
        Some(big) => Err(Error::new(
            Code::EventTooLarge,
            format!(
                "event {} is {} bytes; the limit is {MAX_EVENT}",
                big.id,
                big.body.len()
            ),
        )
        .with_hint("keep events small: store large payloads elsewhere and send a reference")
        .into()),
    }
}

/// How many of `topics` name each topic.
fn per_topic<'a>(topics: impl Iterator<Item = &'a str>) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for t in topics {
        match counts.iter_mut().find(|(name, _)| name == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.to_string(), 1)),
        }
    }
    counts
}
