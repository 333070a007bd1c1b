//! `POST /orders` with `{"sku": "apple", "qty": 2}`: checks the order and
//! publishes `order_placed` to the `orders` topic. It does not know who
//! listens. The event is stored before the 201 answer leaves, and only if
//! the order was accepted.

use gale_sdk::{Event, publish};
use serde::{Deserialize, Serialize};
use wstd::http::{Body, Error, Request, Response, StatusCode};

#[derive(Deserialize, Serialize)]
struct Order {
    sku: String,
    qty: u32,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())?)
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?.to_vec();
    let order: Order = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            let error = format!("send {{\"sku\": \"apple\", \"qty\": 2}}: {e}");
            return answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": error }));
        }
    };
    if order.sku.is_empty() || order.qty == 0 {
        let error = "sku must be set and qty at least 1";
        return answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": error }));
    }
    // Orders of one sku are handled in order: the sku is the partition key.
    let event = Event::new("order_placed")
        .with_extension("partitionkey", &order.sku)
        .with_json(&order);
    match publish("orders", event) {
        Ok(()) => {
            println!("order placed: {} x {}", order.qty, order.sku);
            answer(StatusCode::CREATED, serde_json::json!({ "placed": order }))
        }
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e })),
    }
}
