//! An event handler (gale:events/event-handler) for Gale's tests and
//! benchmarks: keeps counts in key-value, publishes, fails on request;
//! type `noop` does nothing at all, type `work` only computes (as many
//! rounds as its JSON data says). A bucket notification (an upload)
//! makes it write the object, upper-cased, to `results` ([`transform`]).

use gale_sdk::{Event, Handler, buckets, kv, publish};
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
        if event.type_ == "work" {
            let rounds: u64 = event.json().unwrap_or(1_000_000);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..rounds {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x = std::hint::black_box(x);
            }
            return Ok(());
        }
        if event.type_.starts_with("com.amazonaws.s3.ObjectCreated:") {
            return transform(&event);
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

/// Reads the uploaded object the notification names (`s3.object.key` of
/// its record) and writes it upper-cased to `results/<key>`, or, for a
/// key under `deny/`, to the bucket `elsewhere`, which the manifest does
/// not grant. An object of `results` is only printed.
fn transform(event: &Event) -> Result<(), String> {
    let record: serde_json::Value = event.json()?;
    let bucket = record["s3"]["bucket"]["name"].as_str().ok_or("no bucket")?;
    let key = form_decode(record["s3"]["object"]["key"].as_str().ok_or("no key")?);
    let data = buckets::get(bucket, &key)?.ok_or_else(|| format!("{bucket}/{key} is gone"))?;
    // A result, written by this function in another invocation: the end of
    // the chain.
    if bucket == "results" {
        println!("saw results/{key}: {}", String::from_utf8_lossy(&data));
        return Ok(());
    }
    let target = if key.starts_with("deny/") {
        "elsewhere"
    } else {
        "results"
    };
    let etag = buckets::put(target, &key, &data.to_ascii_uppercase(), Some("text/plain"))?;
    let info = buckets::head(target, &key)?.ok_or("the result is missing")?;
    if info.etag != etag || info.size != data.len() as u64 {
        return Err(format!("head says {info:?}, put said {etag}"));
    }
    let listed = buckets::list_all(target, &key)?;
    if !listed.iter().any(|o| o.key == key) {
        return Err(format!("the listing lacks {key}: {listed:?}"));
    }
    println!("wrote {target}/{key} ({etag})");
    Ok(())
}

/// A key as S3 writes it in a record (`+` for a space, `%XX` escapes), decoded.
fn form_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

gale_sdk::export!(Testbed);
