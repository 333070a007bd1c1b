//! Rates over the last minute, for `gale topics`: events published per
//! topic and handled per subscription. Counts go into one-second buckets of
//! a ring, so reading a rate is a sum of sixty numbers and recording one is
//! an increment. Recording runs on every publish and every settle, so it
//! looks rings up by the names it is given and allocates only for a name it
//! has not seen before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const WINDOW: usize = 60;

/// Events per second over the last minute, by topic and subscription.
pub struct Meters {
    start: Instant,
    topics: Mutex<HashMap<String, TopicRings>>,
}

#[derive(Default)]
struct TopicRings {
    published: Ring,
    delivered: HashMap<String, Ring>,
}

struct Ring {
    /// (second, count) per slot; a slot from an older second counts as zero.
    slots: [(u64, u64); WINDOW],
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            slots: [(0, 0); WINDOW],
        }
    }
}

impl Ring {
    fn add(&mut self, second: u64, n: u64) {
        let slot = &mut self.slots[second as usize % WINDOW];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += n;
    }

    fn rate(&self, now: u64) -> f64 {
        let total: u64 = self
            .slots
            .iter()
            .filter(|(second, _)| now.saturating_sub(*second) < WINDOW as u64)
            .map(|(_, n)| n)
            .sum();
        // A node younger than the window divides by its age.
        total as f64 / (now + 1).min(WINDOW as u64) as f64
    }
}

/// The entry for `key`, made only if missing.
fn entry<'a, T: Default>(map: &'a mut HashMap<String, T>, key: &str) -> &'a mut T {
    if !map.contains_key(key) {
        map.insert(key.to_string(), T::default());
    }
    map.get_mut(key).expect("inserted above")
}

impl Meters {
    pub fn new() -> Meters {
        Meters {
            start: Instant::now(),
            topics: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, topic: &str, subscription: Option<&str>, n: u64) {
        if n == 0 {
            return;
        }
        let second = self.start.elapsed().as_secs();
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let rings = entry(&mut topics, topic);
        match subscription {
            None => rings.published.add(second, n),
            Some(s) => entry(&mut rings.delivered, s).add(second, n),
        }
    }

    fn rate(&self, topic: &str, subscription: Option<&str>) -> f64 {
        let now = self.start.elapsed().as_secs();
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let ring = topics.get(topic).and_then(|rings| match subscription {
            None => Some(&rings.published),
            Some(s) => rings.delivered.get(s),
        });
        ring.map_or(0.0, |r| r.rate(now))
    }

    pub fn published(&self, topic: &str, n: u64) {
        self.record(topic, None, n);
    }

    pub fn delivered(&self, topic: &str, subscription: &str, n: u64) {
        self.record(topic, Some(subscription), n);
    }

    pub fn publish_rate(&self, topic: &str) -> f64 {
        self.rate(topic, None)
    }

    pub fn delivery_rate(&self, topic: &str, subscription: &str) -> f64 {
        self.rate(topic, Some(subscription))
    }
}

#[cfg(test)]
mod tests {
    use super::Meters;

    #[test]
    fn rates_are_kept_apart_by_topic_and_subscription() {
        let m = Meters::new();
        m.published("orders", 30);
        m.delivered("orders", "inventory", 20);
        m.delivered("orders", "audit", 10);
        m.published("orders", 0);
        // All in one second, divided by the node's age in seconds.
        let audit = m.delivery_rate("orders", "audit");
        assert!(audit > 0.0);
        assert_eq!(m.publish_rate("orders"), 3.0 * audit);
        assert_eq!(m.delivery_rate("orders", "inventory"), 2.0 * audit);
        assert_eq!(m.delivery_rate("orders", "nobody"), 0.0);
        assert_eq!(m.publish_rate("stock"), 0.0);
    }
}
