//! Rates over the last minute, for `gale topics`: events published per
//! topic and handled per subscription. Counts go into one-second buckets of
//! a ring, so reading a rate is a sum of sixty numbers and recording one is
//! an increment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const WINDOW: usize = 60;

/// Events per second over the last minute, by key.
pub struct Meters {
    start: Instant,
    rings: Mutex<HashMap<String, Ring>>,
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

impl Meters {
    pub fn new() -> Meters {
        Meters {
            start: Instant::now(),
            rings: Mutex::new(HashMap::new()),
        }
    }

    fn add(&self, key: String, n: u64) {
        if n == 0 {
            return;
        }
        let second = self.start.elapsed().as_secs();
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut rings.entry(key).or_default().slots[second as usize % WINDOW];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += n;
    }

    fn rate(&self, key: &str) -> f64 {
        let now = self.start.elapsed().as_secs();
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ring) = rings.get(key) else { return 0.0 };
        let total: u64 = ring
            .slots
            .iter()
            .filter(|(second, _)| now.saturating_sub(*second) < WINDOW as u64)
            .map(|(_, n)| n)
            .sum();
        // A node younger than the window divides by its age.
        total as f64 / (now + 1).min(WINDOW as u64) as f64
    }

    pub fn published(&self, topic: &str, n: u64) {
        self.add(format!("p/{topic}"), n);
    }

    pub fn delivered(&self, topic: &str, subscription: &str, n: u64) {
        self.add(format!("d/{topic}/{subscription}"), n);
    }

    pub fn publish_rate(&self, topic: &str) -> f64 {
        self.rate(&format!("p/{topic}"))
    }

    pub fn delivery_rate(&self, topic: &str, subscription: &str) -> f64 {
        self.rate(&format!("d/{topic}/{subscription}"))
    }
}
