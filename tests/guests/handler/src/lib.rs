//! An event handler (gale:events/event-handler) for Gale's tests and
//! benchmarks: keeps counts in key-value, publishes, fails on request;
//! type `noop` does nothing at all.

use gale_sdk::{Event, Handler, kv, publish};
use std::sync::atomic::{AtomicU32, Ordering};

/// Events of type `instance` this instance has handled: shows whether
/// instances are fresh or reused.
static SERVED: AtomicU32 = AtomicU32::new(0);

struct Testbed;

impl Handler for Testbed {
    fn handle(event: Event) -> Result<(), String> {
        if event.type_ == "noop" {
            return Ok(());
        }
        println!("handling {} {}", event.id, event.type_);
        gale_sdk::log::info(&format!("type {}", event.type_));
        let seen = || kv::open("counts")?.increment(&event.type_, 1);
        match event.type_.as_str() {
            // Publishes a reply, then fails: the reply must not leak.
            "publish-then-fail" => {
                let seen = seen()?;
                publish(
                    "replies",
                    Event::new("reply").with_json(&serde_json::json!({ "to": event.id })),
                )?;
                Err(format!("failing after publishing (attempt {seen})"))
            }
            "publish" => publish(
                "replies",
                Event::new("reply")
                    .with_subject(&event.id)
                    .with_json(&serde_json::json!({ "to": event.id, "seen": seen()? })),
            ),
            "publish-nowhere" => publish("no-such-topic", Event::new("x")),
            "instance" => publish(
                "replies",
                Event::new("served").with_json(&serde_json::json!({
                    "to": event.id,
                    "served": SERVED.fetch_add(1, Ordering::Relaxed) + 1,
                })),
            ),
            "trap" => panic!("deliberate trap in {}", event.id),
            _ => Ok(()),
        }
    }
}

gale_sdk::export!(Testbed);
