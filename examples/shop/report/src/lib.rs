//! Runs every minute (a schedule): prints what has been sold so far, from
//! the `sold` bucket the inventory function counts in.

use gale_sdk::{Event, Handler, kv};

struct Report;

impl Handler for Report {
    fn handle(event: Event) -> Result<(), String> {
        let sold = kv::open("sold")?;
        let keys = sold.keys()?;
        if keys.is_empty() {
            println!("report for {}: nothing sold yet", event.time.unwrap_or_default());
            return Ok(());
        }
        println!("report for {}:", event.time.unwrap_or_default());
        for sku in keys {
            println!("  {sku}: {} sold", sold.number(&sku)?);
        }
        Ok(())
    }
}

gale_sdk::export!(Report);
