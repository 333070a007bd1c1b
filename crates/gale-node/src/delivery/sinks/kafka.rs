//! Sending to Kafka: each event a record of the sink's Kafka topic, in the
//! CloudEvents Kafka binding (`ce_` headers and the data's type in
//! `content-type` in binary mode).
//!
//! The producer is idempotent with `acks=all`: a record counts as sent
//! once every in-sync replica has it, and librdkafka's own retries within
//! a batch neither duplicate nor reorder records. The batch's records are
//! queued together and their delivery reports awaited together; one that
//! failed fails the batch, which the plane sends again later. The record's
//! key is the event's `partitionkey`, so one key's events land in one
//! partition, in order. Gale does not create Kafka topics: a topic the
//! cluster does not have is an error naming it.

use super::Sink;
use crate::NodeError;
use cloudevents::Event;
use gale_core::SinkSpec;

#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub struct KafkaSink {
    name: String,
    spec: SinkSpec,
    /// The bootstrap servers without credentials.
    servers: String,
    #[cfg(feature = "kafka")]
    producer: Option<rdkafka::producer::FutureProducer>,
}

impl KafkaSink {
    pub fn new(name: &str, spec: &SinkSpec) -> KafkaSink {
        KafkaSink {
            name: name.to_string(),
            spec: spec.clone(),
            servers: crate::brokers::kafka::servers(&spec.url),
            #[cfg(feature = "kafka")]
            producer: None,
        }
    }
}

#[cfg(not(feature = "kafka"))]
#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn send(&mut self, _: &[Event]) -> Result<(), NodeError> {
        Err(NodeError::Sink(format!(
            "sink `{}`: this gale was built without Kafka; build it with the `kafka` feature (on by default)",
            self.name
        )))
    }
}

#[cfg(feature = "kafka")]
mod producing {
    use super::super::Outgoing;
    use super::*;
    use cloudevents::AttributesReader;
    use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use std::time::Duration;

    /// How long the cluster has to answer the first metadata request.
    const METADATA: Duration = Duration::from_secs(5);
    /// How long librdkafka tries to deliver a record; within the plane's
    /// deadline for the batch's confirmation.
    const DELIVERY: Duration = Duration::from_secs(20);

    impl KafkaSink {
        fn failed(&self, e: &dyn std::fmt::Display) -> NodeError {
            NodeError::Sink(format!(
                "sink `{}`: producing to Kafka topic `{}` at {} failed: {e}",
                self.name, self.spec.to, self.servers
            ))
        }

        /// A producer, once the cluster said it has the topic.
        async fn connect(&self) -> Result<FutureProducer, NodeError> {
            let (credentials, servers) =
                gale_core::sources::kafka_servers(&self.spec.url).ok_or_else(|| {
                    NodeError::Sink(format!("sink `{}`: the url is not a Kafka URL", self.name))
                })?;
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", servers.join(","))
                .set("client.id", format!("gale-sink-{}", self.name))
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("allow.auto.create.topics", "false")
                .set("delivery.timeout.ms", DELIVERY.as_millis().to_string())
                .set("linger.ms", "5")
                .set_log_level(RDKafkaLogLevel::Error);
            if let Some((user, password)) = credentials {
                config
                    .set("security.protocol", "SASL_PLAINTEXT")
                    .set("sasl.mechanisms", "PLAIN")
                    .set("sasl.username", user)
                    .set("sasl.password", password);
            }
            let producer: FutureProducer = config.create().map_err(|e| {
                NodeError::Sink(format!("sink `{}`: cannot make a Kafka producer: {e}", self.name))
            })?;
            let (p, topic) = (producer.clone(), self.spec.to.clone());
            let metadata = tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&topic), METADATA))
                .await
                .map_err(|e| self.failed(&e))?
                .map_err(|e| {
                    NodeError::Sink(format!(
                        "sink `{}`: cannot reach Kafka at {} ({e}); check the hosts and ports in the sink's url and that the brokers run",
                        self.name, self.servers
                    ))
                })?;
            let known = metadata
                .topics()
                .iter()
                .find(|t| t.name() == self.spec.to)
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
            if !known {
                return Err(NodeError::Sink(format!(
                    "sink `{}`: Kafka at {} has no topic `{}`; create it (kafka-topics.sh --create --topic {}) or fix `to` in the sink",
                    self.name, self.servers, self.spec.to, self.spec.to
                )));
            }
            Ok(producer)
        }

        async fn produce(&self, producer: &FutureProducer, events: &[Event]) -> Result<(), NodeError> {
            let mut deliveries = Vec::with_capacity(events.len());
            for event in events {
                let out = Outgoing::new(event, self.spec.mode, "ce_");
                let mut headers = OwnedHeaders::new_with_capacity(out.headers.len() + 1);
                for (k, v) in &out.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                if let Some(ct) = &out.content_type {
                    headers = headers.insert(Header {
                        key: "content-type",
                        value: Some(ct.as_bytes()),
                    });
                }
                let key = event.extension("partitionkey").map(|k| k.to_string());
                let mut record = FutureRecord::<str, [u8]>::to(&self.spec.to)
                    .payload(&out.body)
                    .headers(headers);
                if let Some(key) = &key {
                    record = record.key(key.as_str());
                }
                if let Some(t) = event.time() {
                    record = record.timestamp(t.timestamp_millis());
                }
                let delivery = producer.send_result(record).map_err(|(e, _)| self.failed(&e))?;
                deliveries.push(delivery);
            }
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(self.failed(&e)),
                    Err(_) => return Err(self.failed(&"the producer went away")),
                }
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Sink for KafkaSink {
        async fn send(&mut self, events: &[Event]) -> Result<(), NodeError> {
            if self.producer.is_none() {
                self.producer = Some(self.connect().await?);
            }
            let producer = self.producer.clone().expect("connected");
            let sent = self.produce(&producer, events).await;
            if sent.is_err() {
                // A producer left with records queued is dropped off the
                // async threads: its destructor waits for them.
                self.producer = None;
                tokio::task::spawn_blocking(move || drop(producer));
            }
            sent
        }
    }
}

#[cfg(all(test, feature = "kafka"))]
mod tests {
    use super::*;
    use gale_core::{SinkKind, SinkMode};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;

    fn spec(url: &str, to: &str) -> SinkSpec {
        SinkSpec {
            kind: SinkKind::Kafka,
            url: url.into(),
            topic: "orders".into(),
            to: to.into(),
            exchange: None,
            jetstream: true,
            mode: SinkMode::Binary,
            max_attempts: 3,
            backoff: Default::default(),
            dead_letter: None,
        }
    }

    fn event(n: u32, key: &str) -> Event {
        let body = serde_json::json!({"specversion": "1.0", "id": format!("e-{n}"), "source": "/shop",
            "type": "order.placed", "partitionkey": key, "region": "eu",
            "datacontenttype": "application/json", "data": {"n": n}});
        let stored = crate::events::parse_for_store(
            &http::HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/cloudevents+json"),
            )]),
            body.to_string().as_bytes(),
        )
        .unwrap();
        crate::events::decode(&stored[0].body).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_arrive_once_in_order_with_binary_mode_headers() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("shipped", 3, 1).unwrap();
        let url = format!("kafka://{}", cluster.bootstrap_servers());
        let mut sink = KafkaSink::new("out", &spec(&url, "shipped"));
        let events: Vec<Event> = (0..30).map(|n| event(n, &format!("c{}", n % 4))).collect();
        sink.send(&events[..10]).await.unwrap();
        sink.send(&events[10..]).await.unwrap();

        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "sink-test")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["shipped"]).unwrap();
        let mut got: Vec<(String, u64)> = Vec::new();
        while got.len() < 30 {
            let m = tokio::time::timeout(std::time::Duration::from_secs(20), consumer.recv())
                .await
                .expect("records arrive")
                .unwrap();
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let headers: Vec<(String, String)> = m
                .headers()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                    )
                })
                .collect();
            let n = body["n"].as_u64().unwrap();
            assert!(
                headers.contains(&("ce_id".into(), format!("e-{n}"))),
                "{headers:?}"
            );
            assert!(
                headers.contains(&("ce_type".into(), "order.placed".into())),
                "{headers:?}"
            );
            assert!(
                headers.contains(&("ce_region".into(), "eu".into())),
                "{headers:?}"
            );
            assert!(
                headers.contains(&("content-type".into(), "application/json".into())),
                "{headers:?}"
            );
            got.push((key, n));
        }
        // Once each; in order within a key (one key, one partition).
        let mut all: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
        all.sort();
        assert_eq!(all, (0..30).collect::<Vec<u64>>());
        for k in 0..4 {
            let of_key: Vec<u64> = got
                .iter()
                .filter(|(key, _)| *key == format!("c{k}"))
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(of_key, (0..30).filter(|n| n % 4 == k).collect::<Vec<u64>>());
        }
        let more = tokio::time::timeout(std::time::Duration::from_secs(1), consumer.recv()).await;
        assert!(more.is_err(), "nothing twice");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusing_cluster_is_an_error() {
        let cluster = MockCluster::new(1).unwrap();
        let url = format!("kafka://{}", cluster.bootstrap_servers());
        let mut sink = KafkaSink::new("out", &spec(&url, "missing"));
        let e = sink.send(&[event(1, "k")]).await.unwrap_err().to_string();
        assert!(e.contains("has no topic `missing`"), "{e}");

        let mut sink = KafkaSink::new("out", &spec("kafka://u:secret@127.0.0.1:1", "t"));
        let e = sink.send(&[event(1, "k")]).await.unwrap_err().to_string();
        assert!(e.contains("cannot reach Kafka at 127.0.0.1:1"), "{e}");
        assert!(!e.contains("secret"), "{e}");

        // The broker goes down under a running producer: the batch fails
        // within the delivery timeout.
        cluster.create_topic("gone", 1, 1).unwrap();
        let mut sink = KafkaSink::new("out", &spec(&url, "gone"));
        sink.send(&[event(1, "k")]).await.unwrap();
        cluster.broker_down(1).unwrap();
        let started = std::time::Instant::now();
        assert!(sink.send(&[event(2, "k")]).await.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        cluster.broker_up(1).unwrap();
    }
}
