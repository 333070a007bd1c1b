//! Sending to Redis: each event an entry added (`XADD`) to the stream `to`.
//!
//! The entry's fields follow the layout Gale's Redis source reads: in
//! binary mode one `ce_<attribute>` field per attribute, `content-type`
//! for the data's type, and `data` the data as bytes; in structured mode
//! `content-type: application/cloudevents+json` and `data` the whole event
//! as JSON. A batch is sent as one pipeline, and counts as sent once
//! every `XADD` has answered with its entry id: Redis has then added the
//! entries, in order. Entry ids are Redis's own, so a batch sent again
//! after a lost reply adds its entries again; each carries `ce_id` (in
//! structured mode, the event's `id`) for consumers to drop the copies.

use super::{Outgoing, Sink};
use crate::NodeError;
use cloudevents::Event;
use gale_core::SinkSpec;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use std::time::Duration;

/// How long connecting, and the batch's replies, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisSink {
    name: String,
    spec: SinkSpec,
    /// The server as errors may show it: `host:port`, no credentials.
    server: String,
    conn: Option<MultiplexedConnection>,
}

impl RedisSink {
    pub fn new(name: &str, spec: &SinkSpec) -> RedisSink {
        let server = match url::Url::parse(&spec.url) {
            Ok(u) => format!("{}:{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(6379)),
            Err(_) => "the sink's url".into(),
        };
        RedisSink {
            name: name.to_string(),
            spec: spec.clone(),
            server,
            conn: None,
        }
    }

    fn error(&self, e: &redis::RedisError, doing: &str) -> NodeError {
        NodeError::Sink(format!(
            "sink `{}`: {}",
            self.name,
            crate::brokers::redis::describe(e, &self.server, doing, "sink")
        ))
    }

    async fn connect(&self) -> Result<MultiplexedConnection, NodeError> {
        if self.spec.url.starts_with("rediss://") {
            return Err(NodeError::Sink(format!(
                "sink `{}`: Gale is built without TLS for Redis; use a redis:// URL (a TLS tunnel, if the traffic must be encrypted)",
                self.name
            )));
        }
        let client = redis::Client::open(self.spec.url.as_str()).map_err(|_| {
            NodeError::Sink(format!(
                "sink `{}`: the url is not a Redis URL Gale can use; write it like redis://user:password@host:6379/0",
                self.name
            ))
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.error(&e, "connecting"))
    }

    /// The fields of `event`'s entry.
    fn fields(&self, event: &Event) -> Vec<(String, Vec<u8>)> {
        let out = Outgoing::new(event, self.spec.mode, "ce_");
        let mut fields: Vec<(String, Vec<u8>)> = out
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        if let Some(ct) = out.content_type {
            fields.push(("content-type".into(), ct.into_bytes()));
        }
        fields.push(("data".into(), out.body));
        fields
    }

    async fn add(&self, conn: &mut MultiplexedConnection, events: &[Event]) -> Result<(), NodeError> {
        let mut pipe = redis::pipe();
        for event in events {
            let cmd = pipe.cmd("XADD").arg(&self.spec.to).arg("*");
            for (k, v) in self.fields(event) {
                cmd.arg(k).arg(v);
            }
        }
        let ids: Vec<Value> = pipe.query_async(conn).await.map_err(|e| {
            // A pipeline's errors come per command, without one code.
            if e.code() == Some("WRONGTYPE") || e.to_string().contains("WRONGTYPE") {
                NodeError::Sink(format!(
                    "sink `{}`: key `{}` on Redis at {} is not a stream; name a stream (or a key that does not exist yet) in `to`",
                    self.name, self.spec.to, self.server
                ))
            } else {
                self.error(&e, &format!("adding to stream `{}`", self.spec.to))
            }
        })?;
        if ids.len() != events.len()
            || ids
                .iter()
                .any(|v| !matches!(v, Value::BulkString(_) | Value::SimpleString(_)))
        {
            return Err(NodeError::Sink(format!(
                "sink `{}`: Redis at {} did not confirm every entry added to `{}`",
                self.name, self.server, self.spec.to
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for RedisSink {
    async fn send(&mut self, events: &[Event]) -> Result<(), NodeError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let sent = self.add(&mut conn, events).await;
        if sent.is_ok() {
            self.conn = Some(conn);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    const REDIS: &str = "redis://127.0.0.1:6379";

    fn spec(url: &str, to: &str, mode: gale_core::SinkMode) -> SinkSpec {
        SinkSpec {
            kind: gale_core::SinkKind::Redis,
            url: url.into(),
            topic: "orders".into(),
            to: to.into(),
            exchange: None,
            jetstream: true,
            mode,
            max_attempts: 1,
            backoff: Default::default(),
            dead_letter: None,
        }
    }

    fn events(n: u32) -> Vec<Event> {
        (0..n).map(super::super::test_event).collect()
    }

    fn unique() -> String {
        format!("gale:sink:{}", uuid::Uuid::now_v7().simple())
    }

    /// `XRANGE stream - +` as (id, fields) with the fields by name.
    async fn read_back(
        conn: &mut MultiplexedConnection,
        stream: &str,
    ) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
        type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let reply: Entries = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await
            .unwrap();
        reply
            .into_iter()
            .map(|(_, fields)| fields.into_iter().collect())
            .collect()
    }

    #[tokio::test]
    async fn events_are_added_once_each_in_order_in_the_binding_layout() {
        let stream = unique();
        let mut sink = RedisSink::new("s", &spec(REDIS, &stream, gale_core::SinkMode::Binary));
        let sent = events(300);
        sink.send(&sent[..200]).await.unwrap();
        sink.send(&sent[200..]).await.unwrap();
        let mut conn = redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let got = read_back(&mut conn, &stream).await;
        assert_eq!(got.len(), 300, "once each");
        for (i, entry) in got.iter().enumerate() {
            assert_eq!(entry["ce_id"], format!("e-{i}").into_bytes(), "in order");
            assert_eq!(entry["data"], format!(r#"{{"n":{i}}}"#).into_bytes());
        }
        assert_eq!(got[0]["ce_specversion"], b"1.0");
        assert_eq!(got[0]["ce_type"], b"order.placed");
        assert_eq!(got[0]["ce_source"], b"/shop");
        assert_eq!(got[0]["ce_region"], b"eu");
        assert_eq!(got[0]["content-type"], b"application/json");

        // Structured: the whole event in `data`.
        let structured = unique();
        let mut sink = RedisSink::new("s", &spec(REDIS, &structured, gale_core::SinkMode::Structured));
        sink.send(&sent[..1]).await.unwrap();
        let got = read_back(&mut conn, &structured).await;
        assert_eq!(got[0]["content-type"], b"application/cloudevents+json");
        let e = crate::events::decode(&got[0]["data"]).unwrap();
        assert_eq!(e.id(), "e-0");
        for key in [stream, structured] {
            let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_refusing_server_fails_the_batch() {
        let e = RedisSink::new("s", &spec("redis://127.0.0.1:1", "x", Default::default()))
            .send(&events(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot reach Redis at 127.0.0.1:1"), "{e}");
        let e = RedisSink::new(
            "s",
            &spec(
                "redis://galenobody:s3cret@127.0.0.1:6379",
                "x",
                Default::default(),
            ),
        )
        .send(&events(1))
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("user and password") && !e.contains("s3cret"), "{e}");
        // A key that is not a stream.
        let key = unique();
        let mut conn = redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        let e = RedisSink::new("s", &spec(REDIS, &key, Default::default()))
            .send(&events(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a stream"), "{e}");
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }
}
