//! Subscribed to `stock_low`: tells someone. Here that is its log
//! (`gale logs notifier`); a real one would call out over HTTP to an
//! allow-listed host.

use gale_sdk::{Event, Handler};

struct Notifier;

impl Handler for Notifier {
    fn handle(event: Event) -> Result<(), String> {
        let low: serde_json::Value = event.json()?;
        println!("LOW STOCK: {} has {} left", low["sku"].as_str().unwrap_or("?"), low["left"]);
        Ok(())
    }
}

gale_sdk::export!(Notifier);
