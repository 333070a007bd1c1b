//! Asynchronous invocations, as a queue: an invocation asked for with
//! `mode=async` (or the Invoke API's `Event` type) is stored as an event
//! (type `gale.invocation`, the body as data, method and path as
//! `galemethod` / `galepath`) on the function's own topic
//! `_async.<function>`, made on its first asynchronous invocation, and
//! answered 202 once durable. Each invocation keeps a record (status,
//! attempts, the answer or the error) in the node's key-value store; the
//! dispatcher runs the attempts (`delivery::invocations`).

use super::Functions;
use super::live::Live;
use super::triggers::{ASYNC_TOPIC, async_topic};
use crate::NodeError;
use crate::clock::now_ms;
use crate::http::request_id;
use bytes::Bytes;
use cloudevents::{AttributesReader, AttributesWriter, Data, Event};
use gale_core::api::InvocationRecord;
use gale_store::KeyValue;
use http::header;

/// Where records live: a key-value bucket of the node's own.
const SCOPE: &str = "_gale";
const BUCKET: &str = "invocations";

/// Stores an asynchronous invocation; returns its record once durable.
pub async fn submit(
    functions: &Functions,
    live: &Live,
    method: &str,
    path: &str,
    content_type: Option<String>,
    body: Bytes,
) -> Result<InvocationRecord, NodeError> {
    let publisher = &functions.runtimes().publisher;
    let topic = async_topic(&live.name);
    if !publisher.exists(&topic) {
        // The first async invocation of this function: its topic, and the
        // subscription the dispatchers make for it.
        publisher.put_topic(&topic, ASYNC_TOPIC).await?;
        functions.refollow().await?;
    }
    let id = request_id();
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/gale/invocations",
        "type": "gale.invocation",
        "galemethod": method,
        "galepath": path,
    });
    let mut event: Event =
        serde_json::from_value(event).map_err(|e| NodeError::DataDir(format!("invocation event: {e}")))?;
    if !body.is_empty() {
        event.set_data_unchecked(Data::Binary(body.to_vec()));
    }
    event.set_datacontenttype(content_type);
    let now = now_ms();
    let record = InvocationRecord {
        id: id.clone(),
        function: live.name.clone(),
        status: "queued".into(),
        attempts: 0,
        created_at: now,
        updated_at: now,
        response: None,
        error: None,
    };
    save(&*functions.runtimes().kv, &record).await?;
    publisher
        .publish(&topic, vec![crate::events::encode(&event)])
        .await?;
    Ok(record)
}

pub async fn save(kv: &dyn KeyValue, record: &InvocationRecord) -> Result<(), NodeError> {
    let value = serde_json::to_vec(record).expect("records serialize");
    kv.kv_set(SCOPE, BUCKET, &record.id, value).await?;
    Ok(())
}

/// The record of invocation `id`, if there is one.
pub async fn record(kv: &dyn KeyValue, id: &str) -> Result<Option<InvocationRecord>, NodeError> {
    match kv.kv_get(SCOPE, BUCKET, id).await? {
        None => Ok(None),
        Some(value) => serde_json::from_slice(&value)
            .map(Some)
            .map_err(|e| NodeError::DataDir(format!("invocation record {id}: {e}"))),
    }
}

/// The body an invocation event carries (a process function's payload).
pub fn body_of(event: &Event) -> Bytes {
    match event.data() {
        Some(Data::Binary(b)) => Bytes::from(b.clone()),
        Some(Data::String(s)) => Bytes::from(s.clone()),
        Some(Data::Json(v)) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        None => Bytes::new(),
    }
}

/// The request an invocation event stands for.
pub fn request_of(event: &Event) -> http::Request<Bytes> {
    let ext = |name: &str| event.extension(name).map(|v| v.to_string());
    let body = body_of(event);
    let mut builder = http::Request::builder()
        .method(ext("galemethod").as_deref().unwrap_or("POST"))
        .uri(ext("galepath").as_deref().unwrap_or("/"))
        .header(header::HOST, "localhost")
        .header("x-gale-invocation-id", event.id());
    if let Some(ct) = event.datacontenttype() {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| http::Request::new(Bytes::new()))
}
