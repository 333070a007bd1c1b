//! Subscriptions follow the live functions: every trigger that reads a
//! topic has a subscription in the store and a dispatcher task delivering
//! it. On every change of functions, new triggers subscribe (from the
//! topic's next event), changed ones get a fresh dispatcher, and removed
//! ones unsubscribe (their backlog goes).

use super::dispatcher::{Dispatch, Subscriber};
use crate::NodeError;
use crate::functions::triggers::{ASYNC_PREFIX, triggers};
use crate::functions::{Follow, Snapshot};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// The subscriptions the live functions' triggers call for. A function's
/// first trigger on a topic subscribes as the function's name, later ones as
/// `name#2`, `name#3`... The async invocation trigger only once the
/// function's invocation topic exists (its first async invocation makes it).
pub fn desired(functions: &Snapshot, topic_exists: impl Fn(&str) -> bool) -> Vec<Subscriber> {
    let mut out = Vec::new();
    for live in functions.values() {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, t) in triggers(&live.name, &live.spec).iter().enumerate() {
            if t.topic.starts_with(ASYNC_PREFIX) && !topic_exists(&t.topic) {
                continue;
            }
            let n = seen.entry(t.topic.clone()).or_default();
            *n += 1;
            out.push(Subscriber {
                topic: t.topic.clone(),
                subscription: if *n == 1 {
                    live.name.clone()
                } else {
                    format!("{}#{n}", live.name)
                },
                function: live.name.clone(),
                index,
                ordered: t.ordering == gale_core::manifest::Ordering::PartitionKey,
            });
        }
    }
    out
}

/// The running dispatchers, by (topic, subscription).
pub struct Subscriptions {
    dispatch: Dispatch,
    running: Mutex<HashMap<(String, String), Running>>,
    /// Whether the node is stopping (no new dispatchers then).
    stopping: watch::Sender<bool>,
}

/// A subscription's dispatcher task and the switch that stops it.
struct Running {
    subscriber: Subscriber,
    stop: watch::Sender<bool>,
}

impl Subscriptions {
    pub fn new(dispatch: Dispatch) -> Subscriptions {
        Subscriptions {
            dispatch,
            running: Mutex::default(),
            stopping: watch::channel(false).0,
        }
    }

    /// Stops every dispatcher; their leased events are delivered again after a restart.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
        for (_, d) in crate::lock(&self.running).drain() {
            let _ = d.stop.send(true);
        }
    }
}

#[async_trait::async_trait]
impl Follow for Subscriptions {
    async fn functions_changed(&self, functions: &Snapshot) -> Result<(), NodeError> {
        let publisher = &self.dispatch.publisher;
        let wanted = desired(functions, |t| publisher.exists(t));
        let topics = &self.dispatch.topics;
        let key = |s: &Subscriber| (s.topic.clone(), s.subscription.clone());
        for sub in &wanted {
            let running = crate::lock(&self.running)
                .get(&key(sub))
                .map(|d| d.subscriber.clone());
            if running.as_ref() == Some(sub) {
                continue;
            }
            if let Err(e) = topics
                .put_subscription(&sub.topic, &sub.subscription, sub.ordered)
                .await
            {
                tracing::error!(topic = %sub.topic, function = %sub.function, error = %e, "subscribing failed");
                continue;
            }
            if *self.stopping.borrow() {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let previous = crate::lock(&self.running).insert(
                key(sub),
                Running {
                    subscriber: sub.clone(),
                    stop,
                },
            );
            if let Some(previous) = previous {
                let _ = previous.stop.send(true);
            }
            self.dispatch.runtime.spawn(super::dispatcher::run(
                self.dispatch.clone(),
                sub.clone(),
                stopped,
            ));
        }
        let gone: Vec<(String, String)> = crate::lock(&self.running)
            .keys()
            .filter(|k| !wanted.iter().any(|s| key(s) == **k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(d) = crate::lock(&self.running).remove(&k) {
                let _ = d.stop.send(true);
            }
            topics.delete_subscription(&k.0, &k.1).await?;
        }
        // Subscriptions left in the store by triggers removed while no
        // dispatcher ran (a node stopped mid-change); sinks keep theirs.
        for topic in topics.topics().await? {
            for s in topic.subscriptions {
                if !s.name.starts_with(super::sinks::SUBSCRIPTION_PREFIX)
                    && !wanted
                        .iter()
                        .any(|w| w.topic == topic.name && w.subscription == s.name)
                {
                    topics.delete_subscription(&topic.name, &s.name).await?;
                }
            }
        }
        Ok(())
    }
}
