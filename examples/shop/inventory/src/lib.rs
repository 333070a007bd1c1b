//! Subscribed to `order_placed`: takes the ordered quantity out of stock
//! (every sku starts with 10), counts sales, and publishes `stock_low` to
//! the `stock` topic when fewer than 3 are left. State lives in the app's
//! key-value buckets; the subscription is ordered by sku, so two orders of
//! one sku never update its stock at once.

use gale_sdk::{Event, Handler, kv, publish};
use serde::Deserialize;

const INITIAL_STOCK: u64 = 10;
const LOW: u64 = 3;

#[derive(Deserialize)]
struct Order {
    sku: String,
    qty: u64,
}

struct Inventory;

impl Handler for Inventory {
    fn handle(event: Event) -> Result<(), String> {
        let order: Order = event.json()?;
        let stock = kv::open("stock")?;
        let have = match stock.get(&order.sku)? {
            Some(v) => String::from_utf8_lossy(&v).parse().map_err(|e| format!("stock of {}: {e}", order.sku))?,
            None => INITIAL_STOCK,
        };
        if order.qty > have {
            // Not retried: an order for more than there is will not succeed later.
            println!("cannot fill {} x {}: {have} in stock", order.qty, order.sku);
            return Ok(());
        }
        let left = have - order.qty;
        stock.set(&order.sku, left.to_string().as_bytes())?;
        kv::open("sold")?.increment(&order.sku, order.qty)?;
        println!("{} x {} taken; {left} left", order.qty, order.sku);
        if left < LOW {
            let low = Event::new("stock_low").with_json(&serde_json::json!({ "sku": order.sku, "left": left }));
            publish("stock", low)?;
        }
        Ok(())
    }
}

gale_sdk::export!(Inventory);
