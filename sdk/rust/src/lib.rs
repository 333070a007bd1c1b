//! Gale functions in Rust: HTTP handlers ([`http`]) and event handlers.
//!
//! An event handler is a type implementing [`Handler`], exported with
//! [`export!`]; build it with `cargo build --target wasm32-wasip2` and
//! subscribe it to a topic in `gale.toml`:
//!
//! ```ignore
//! use gale_sdk::{Event, Handler, kv, publish};
//!
//! struct Inventory;
//!
//! impl Handler for Inventory {
//!     fn handle(event: Event) -> Result<(), String> {
//!         let order: serde_json::Value = event.json()?;
//!         let sku = order["sku"].as_str().ok_or("no sku")?;
//!         let sold = kv::open("sold")?.increment(sku, 1)?;
//!         publish("sales", Event::new("item_sold").with_json(&serde_json::json!({ "sku": sku, "sold": sold })))
//!     }
//! }
//!
//! gale_sdk::export!(Inventory);
//! ```
//!
//! Events published during an invocation are stored only if it succeeds;
//! a handler that returns an error (or traps) publishes nothing and its
//! event is retried as the trigger's delivery policy says.
//!
//! Objects in the buckets a function's manifest grants are read and
//! written with [`buckets`].

pub mod http;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gale:events/event-handler",
        pub_export_macro: true,
        default_bindings_module: "gale_sdk::bindings",
        generate_all,
    });
}

pub use bindings::export;
pub use bindings::gale::events::types::Event;

/// An event handler. Implement `handle`; `handle_batch` (triggers with
/// `batch_size` > 1) calls it for each event unless you override it.
pub trait Handler {
    fn handle(event: Event) -> Result<(), String>;

    /// One result per event, in order; failed events alone are retried.
    fn handle_batch(events: Vec<Event>) -> Vec<Result<(), String>> {
        events.into_iter().map(Self::handle).collect()
    }
}

impl<T: Handler> bindings::exports::gale::events::handler::Guest for T {
    fn handle(event: Event) -> Result<(), String> {
        <T as Handler>::handle(event)
    }

    fn handle_batch(events: Vec<Event>) -> Vec<Result<(), String>> {
        <T as Handler>::handle_batch(events)
    }
}

/// Publishes `event` to `topic` when this invocation succeeds. An empty id
/// gets a fresh unique one; an empty source becomes the function's.
pub fn publish(topic: &str, event: Event) -> Result<(), String> {
    bindings::gale::events::publisher::publish(topic, &event)
}

impl Event {
    /// A new event of type `ty` (id and source filled in by Gale).
    pub fn new(ty: &str) -> Event {
        Event {
            id: String::new(),
            source: String::new(),
            type_: ty.to_string(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The data, parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.data)
            .map_err(|e| format!("event {} has no JSON data of that shape: {e}", self.id))
    }

    /// Sets JSON data (and its content type).
    pub fn with_json<T: serde::Serialize>(mut self, value: &T) -> Event {
        self.data = serde_json::to_vec(value).unwrap_or_default();
        self.datacontenttype = Some("application/json".into());
        self
    }

    pub fn with_subject(mut self, subject: &str) -> Event {
        self.subject = Some(subject.into());
        self
    }

    /// Sets an extension attribute (e.g. `partitionkey`).
    pub fn with_extension(mut self, name: &str, value: &str) -> Event {
        self.extensions.retain(|(n, _)| n != name);
        self.extensions.push((name.into(), value.into()));
        self
    }

    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Log records (`wasi:logging`): each becomes a line of the invocation's
/// log, with its level (`gale logs FN`).
pub mod log {
    use crate::bindings::wasi::logging::logging::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, "", message);
    }

    pub fn info(message: &str) {
        log(Level::Info, "", message);
    }

    pub fn warn(message: &str) {
        log(Level::Warn, "", message);
    }

    pub fn error(message: &str) {
        log(Level::Error, "", message);
    }
}

/// Key-value buckets of the function's app (`wasi:keyvalue`), created on
/// first use and shared by the app's functions.
pub mod kv {
    use crate::bindings::wasi::keyvalue::{atomics, store};

    pub use store::Error;

    /// A bucket of byte values by string key.
    pub struct Bucket(store::Bucket);

    /// Opens (creating if needed) the bucket `name`.
    pub fn open(name: &str) -> Result<Bucket, String> {
        store::open(name).map(Bucket).map_err(describe)
    }

    fn describe(e: Error) -> String {
        match e {
            Error::NoSuchStore => "no such bucket".into(),
            Error::AccessDenied => "access to the bucket denied".into(),
            Error::Other(m) => m,
        }
    }

    impl Bucket {
        pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.0.get(key).map_err(describe)
        }

        pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.set(key, value).map_err(describe)
        }

        pub fn delete(&self, key: &str) -> Result<(), String> {
            self.0.delete(key).map_err(describe)
        }

        pub fn exists(&self, key: &str) -> Result<bool, String> {
            self.0.exists(key).map_err(describe)
        }

        /// Every key, in order.
        pub fn keys(&self) -> Result<Vec<String>, String> {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = self.0.list_keys(cursor).map_err(describe)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => return Ok(keys),
                }
            }
        }

        /// Adds `delta` to the number at `key` (missing: 0); returns the sum.
        pub fn increment(&self, key: &str, delta: u64) -> Result<u64, String> {
            atomics::increment(&self.0, key, delta).map_err(describe)
        }

        /// The number at `key` (missing: 0), as `increment` keeps it.
        pub fn number(&self, key: &str) -> Result<u64, String> {
            match self.get(key)? {
                None => Ok(0),
                Some(v) => String::from_utf8_lossy(&v)
                    .trim()
                    .parse()
                    .map_err(|e| format!("the value of {key} is not a number: {e}")),
            }
        }
    }
}

/// Objects in Gale's buckets (`gale:buckets`): the buckets the S3 API
/// serves, read and written whole.
///
/// A function may use the buckets its bucket triggers watch and those its
/// manifest lists in `buckets = ["NAME"]`; any other fails with an error
/// that says which key to add. One call carries at most 64 MiB.
///
/// Unlike [`publish`](crate::publish), a change takes effect at once,
/// whether or not the invocation then succeeds, and is notified like a
/// change through the S3 API (`ObjectCreated:Put`, `ObjectRemoved:Delete`):
/// a put into a bucket that triggers a function invokes it. So a handler
/// retried after a put writes again; make the write idempotent (same key,
/// same bytes).
///
/// ```ignore
/// use gale_sdk::{Event, Handler, buckets};
///
/// struct Upper;
///
/// impl Handler for Upper {
///     fn handle(event: Event) -> Result<(), String> {
///         let key = event.subject.clone().ok_or("no key")?;
///         let text = buckets::get("uploads", &key)?.ok_or("the object is gone")?;
///         buckets::put("results", &key, &text.to_ascii_uppercase(), Some("text/plain"))?;
///         Ok(())
///     }
/// }
/// ```
pub mod buckets {
    use crate::bindings::gale::buckets::objects;

    pub use crate::bindings::gale::buckets::types::{Error, Listing, ObjectInfo};

    /// The error's message (each case carries one).
    pub fn describe(e: Error) -> String {
        match e {
            Error::AccessDenied(m) | Error::NoSuchBucket(m) | Error::TooLarge(m) | Error::Other(m) => m,
        }
    }

    /// The object's bytes; `None` when `key` holds no object.
    pub fn get(bucket: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        objects::get(bucket, key).map_err(describe)
    }

    /// Stores `data` at `key`, replacing what is there; returns its entity tag.
    pub fn put(bucket: &str, key: &str, data: &[u8], content_type: Option<&str>) -> Result<String, String> {
        objects::put(bucket, key, data, content_type).map_err(describe)
    }

    /// Deletes the object at `key`; nothing there is no error.
    pub fn delete(bucket: &str, key: &str) -> Result<(), String> {
        objects::delete(bucket, key).map_err(describe)
    }

    /// The object's size, entity tag, content type and modification time;
    /// `None` when `key` holds no object.
    pub fn head(bucket: &str, key: &str) -> Result<Option<ObjectInfo>, String> {
        objects::head(bucket, key).map_err(describe)
    }

    /// One page of up to `limit` (at most 1000) objects whose keys start
    /// with `prefix`, after `start_after`; `next_start_after` continues it.
    pub fn list(
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Listing, String> {
        objects::list(bucket, prefix, start_after, limit).map_err(describe)
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub fn list_all(bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, String> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = list(bucket, prefix, after.as_deref(), 1000)?;
            all.extend(page.objects);
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
}
