//! The consumer group loop (see the module docs in `mod.rs`).

use super::message::{Record, record_event};
use crate::NodeError;
use crate::clock::now_ms;
use crate::sources::context::{Context, Source, Wanted};
use futures_util::StreamExt;
use gale_core::{KafkaSource, KafkaStart};
use gale_store::NewEvent;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message as _, Timestamp};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most records published (and committed) at once.
const BATCH: usize = 500;
/// How long the cluster has to answer the first metadata request.
const METADATA: Duration = Duration::from_secs(10);
/// How often `gale sources` gets librdkafka's view of the lag.
const STATS: Duration = Duration::from_secs(2);
/// How long the group waits for a member that stopped heartbeating (a
/// crashed node) before giving its partitions to the others.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic and partition.
type Tp = (String, i32);
/// A batch on its way to being durable.
type Publishing = std::pin::Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

pub struct Kafka {
    name: String,
    spec: KafkaSource,
    group: String,
    /// The bootstrap servers without credentials.
    servers: String,
}

impl Kafka {
    pub fn new(wanted: &Wanted, spec: &KafkaSource) -> Kafka {
        let group = spec
            .group
            .clone()
            .unwrap_or_else(|| format!("gale_{}_{}", wanted.app.as_deref().unwrap_or("node"), wanted.name));
        Kafka {
            name: wanted.name.clone(),
            spec: spec.clone(),
            group,
            servers: crate::brokers::kafka::servers(&spec.url),
        }
    }

    /// The consumer's settings: a group member that commits nothing by
    /// itself.
    fn config(&self) -> Result<ClientConfig, NodeError> {
        let (credentials, servers) = gale_core::sources::kafka_servers(&self.spec.url).ok_or_else(|| {
            NodeError::Source(format!("the source's url is not a Kafka URL ({})", self.servers))
        })?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", servers.join(","))
            .set("client.id", format!("gale-{}", self.name))
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false")
            .set(
                "auto.offset.reset",
                match self.spec.start {
                    KafkaStart::Earliest => "earliest",
                    KafkaStart::Latest => "latest",
                },
            )
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "3000")
            .set("statistics.interval.ms", STATS.as_millis().to_string())
            .set_log_level(RDKafkaLogLevel::Warning);
        if let Some((user, password)) = credentials {
            config
                .set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanisms", "PLAIN")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        Ok(config)
    }

    fn unreachable(&self, e: &dyn std::fmt::Display) -> NodeError {
        NodeError::Source(format!(
            "cannot reach Kafka at {} ({e}); check the hosts and ports in the source's url and that the brokers run",
            self.servers
        ))
    }

    /// Asks the cluster for each topic's metadata: an unreachable cluster
    /// or a topic it does not have is an error naming it.
    async fn check(&self, consumer: &Arc<StreamConsumer<Hooks>>) -> Result<(), NodeError> {
        for topic in &self.spec.topics {
            let (c, t) = (consumer.clone(), topic.clone());
            let metadata = tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), METADATA))
                .await
                .map_err(|e| NodeError::Source(e.to_string()))?
                .map_err(|e| self.unreachable(&e))?;
            let known = metadata
                .topics()
                .iter()
                .find(|m| m.name() == topic)
                .is_some_and(|m| m.error().is_none() && !m.partitions().is_empty());
            if !known {
                return Err(self.unknown_topic(topic));
            }
        }
        Ok(())
    }

    fn unknown_topic(&self, topic: &str) -> NodeError {
        NodeError::Source(format!(
            "Kafka at {} has no topic `{topic}`; create it (kafka-topics.sh --create --topic {topic}) or fix `topics` in the source",
            self.servers
        ))
    }

    /// What an error the consumer handed over means for the run.
    fn consumer_error(&self, e: KafkaError) -> Result<(), NodeError> {
        match &e {
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown) => {
                Err(NodeError::Source(format!(
                    "lost the connection to Kafka at {}: no broker is reachable; connecting again",
                    self.servers
                )))
            }
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            ) => Err(NodeError::Source(format!(
                "Kafka at {} no longer has one of the topics {:?} ({e}); create it or fix `topics` in the source",
                self.servers, self.spec.topics
            ))),
            KafkaError::MessageConsumption(
                code @ (RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed),
            ) => Err(NodeError::Source(format!(
                "Kafka at {} refused the source ({code}); check the user and password in the source's url and its ACLs",
                self.servers
            ))),
            KafkaError::MessageConsumptionFatal(code) => Err(NodeError::Source(format!(
                "the Kafka consumer failed for good ({code}); it starts again"
            ))),
            _ => {
                tracing::debug!(source = %self.name, error = %e, "Kafka consumer");
                Ok(())
            }
        }
    }

    /// Commits what is durable of the partitions this consumer holds, and
    /// says how far the source got.
    fn commit(&self, cx: &Context, consumer: &StreamConsumer<Hooks>, mode: CommitMode) {
        let hooks = consumer.context();
        let list = hooks.take_durable();
        if list.count() > 0
            && let Err(e) = consumer.commit(&list, mode)
        {
            tracing::warn!(source = %self.name, error = %e, "committing offsets failed; they are committed with the next batch");
            hooks.restore(&list);
        }
        self.report(cx, hooks);
    }

    fn report(&self, cx: &Context, hooks: &Hooks) {
        let state = crate::lock(&hooks.state);
        let position = if state.position.is_empty() {
            format!("group {}, nothing read yet", self.group)
        } else {
            state
                .position
                .iter()
                .map(|((t, p), o)| format!("{t}/{p}@{o}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lag: Option<u64> = (!state.assigned.is_empty())
            .then(|| {
                state
                    .assigned
                    .iter()
                    .map(|tp| state.lag.get(tp).copied())
                    .sum::<Option<i64>>()
            })
            .flatten()
            .map(|l| l.max(0) as u64);
        let lag_ms = match lag {
            Some(0) => Some(0),
            _ => state.last_time.map(|t| (now_ms() as i64 - t).max(0) as u64),
        };
        drop(state);
        cx.report(position, lag_ms);
        cx.report_lag_messages(lag);
    }

    async fn consume(&self, cx: &mut Context, consumer: Arc<StreamConsumer<Hooks>>) -> Result<(), NodeError> {
        self.check(&consumer).await?;
        let topics: Vec<&str> = self.spec.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| NodeError::Source(format!("cannot subscribe to {topics:?}: {e}")))?;
        self.report(cx, consumer.context());
        tracing::info!(source = %self.name, group = %self.group, ?topics, "consuming");
        let mut stream = consumer.stream();
        let mut stats = tokio::time::interval(STATS);
        let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
        // The next offset of each partition read into `batch`, and the
        // timestamp of its last record.
        let mut read: BTreeMap<Tp, i64> = BTreeMap::new();
        let mut last_time: Option<i64> = None;
        let mut inflight: Option<(Publishing, BTreeMap<Tp, i64>, Option<i64>)> = None;
        loop {
            if inflight.is_none() && !batch.is_empty() {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let publishing = Box::pin(cx.publish_owned(&self.spec.topic, events));
                inflight = Some((publishing, std::mem::take(&mut read), last_time));
            }
            let next = tokio::select! {
                biased;
                r = async { inflight.as_mut().expect("guarded").0.as_mut().await }, if inflight.is_some() => {
                    r?;
                    let (_, done, time) = inflight.take().expect("guarded");
                    consumer.context().durable(done, time);
                    self.commit(cx, &consumer, CommitMode::Async);
                    continue;
                }
                m = stream.next(), if batch.len() < BATCH => m,
                _ = stats.tick() => {
                    self.report(cx, consumer.context());
                    continue;
                }
                _ = cx.stopped() => break,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.consumer_error(e)?;
                    continue;
                }
                None => return Err(NodeError::Source("the Kafka consumer's stream ended".into())),
            };
            let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
            let timestamp = match message.timestamp() {
                Timestamp::CreateTime(t) if t >= 0 => Some((t, "CREATE_TIME")),
                Timestamp::LogAppendTime(t) if t >= 0 => Some((t, "LOG_APPEND_TIME")),
                _ => None,
            };
            let headers = message
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            let record = Record {
                topic,
                partition,
                offset,
                timestamp,
                key: message.key(),
                value: message.payload().unwrap_or_default(),
                headers,
            };
            let id = cx.event_id(&format!("{topic}/{partition}/{offset}"), 0);
            match record_event(&record, id, &self.servers, self.spec.format) {
                Ok(event) => batch.push(event),
                Err(parked) => cx.park(parked).await?,
            }
            read.insert((topic.to_string(), partition), offset + 1);
            last_time = timestamp.map(|(t, _)| t).or(last_time);
        }
        // Told to stop: what is read is made durable and committed.
        if let Some((publishing, done, time)) = inflight.take() {
            publishing.await?;
            consumer.context().durable(done, time);
        }
        if !batch.is_empty() {
            cx.publish(&self.spec.topic, batch).await?;
            consumer.context().durable(read, last_time);
        }
        self.commit(cx, &consumer, CommitMode::Sync);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for Kafka {
    async fn run(&mut self, cx: &mut Context) -> Result<(), NodeError> {
        let hooks = Hooks {
            name: self.name.clone(),
            state: Mutex::default(),
        };
        let consumer: StreamConsumer<Hooks> = self
            .config()?
            .create_with_context(hooks)
            .map_err(|e| NodeError::Source(format!("cannot make a Kafka consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let ended = self.consume(cx, consumer.clone()).await;
        // Leaving the group commits what is durable (the revoke) and waits
        // for the brokers: off the async threads, and waited for only when
        // stopping (after a failure the brokers may not answer for long).
        let closing = tokio::task::spawn_blocking(move || drop(consumer));
        if ended.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
        ended
    }
}

/// What the consumer's callbacks share with the loop.
#[derive(Default)]
struct State {
    /// The partitions the group gave this consumer.
    assigned: BTreeSet<Tp>,
    /// Next offsets whose records are durable, not yet committed.
    durable: BTreeMap<Tp, i64>,
    /// Next offsets durable, for `gale sources`.
    position: BTreeMap<Tp, i64>,
    /// Records past the committed offset, by librdkafka's statistics.
    lag: BTreeMap<Tp, i64>,
    /// The timestamp of the last durable record.
    last_time: Option<i64>,
}

struct Hooks {
    name: String,
    state: Mutex<State>,
}

impl Hooks {
    /// Records that the records before these offsets are durable.
    fn durable(&self, done: BTreeMap<Tp, i64>, time: Option<i64>) {
        let mut state = crate::lock(&self.state);
        for (tp, next) in done {
            let d = state.durable.entry(tp.clone()).or_insert(next);
            *d = (*d).max(next);
            let p = state.position.entry(tp).or_insert(next);
            *p = (*p).max(next);
        }
        if time.is_some() {
            state.last_time = time;
        }
    }

    /// The durable offsets of assigned partitions, to commit now.
    fn take_durable(&self) -> TopicPartitionList {
        let mut state = crate::lock(&self.state);
        let durable = std::mem::take(&mut state.durable);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in durable {
            if state.assigned.contains(&(topic.clone(), partition)) {
                let _ = list.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
        }
        list
    }

    /// Offsets whose commit failed, to commit with the next ones.
    fn restore(&self, list: &TopicPartitionList) {
        let mut state = crate::lock(&self.state);
        for e in list.elements() {
            if let Offset::Offset(next) = e.offset() {
                state
                    .durable
                    .entry((e.topic().to_string(), e.partition()))
                    .or_insert(next);
            }
        }
    }
}

impl ClientContext for Hooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(source = %self.name, ?level, fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(source = %self.name, %error, "librdkafka: {reason}");
    }

    fn stats(&self, stats: Statistics) {
        let mut state = crate::lock(&self.state);
        for (name, topic) in &stats.topics {
            for (p, partition) in &topic.partitions {
                if *p >= 0 && partition.consumer_lag >= 0 {
                    state.lag.insert((name.clone(), *p), partition.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Hooks {
    /// Partitions taken away: what is durable of them is committed first,
    /// so their next reader starts right after it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let list = self.take_durable();
        if list.count() > 0
            && let Err(e) = consumer.commit(&list, CommitMode::Sync)
        {
            tracing::warn!(source = %self.name, error = %e, "committing the offsets of revoked partitions failed; their records are read again");
        }
        let mut state = crate::lock(&self.state);
        for e in revoked.elements() {
            let tp = (e.topic().to_string(), e.partition());
            state.assigned.remove(&tp);
            state.lag.remove(&tp);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut state = crate::lock(&self.state);
            for e in assigned.elements() {
                state.assigned.insert((e.topic().to_string(), e.partition()));
            }
            tracing::info!(source = %self.name, partitions = assigned.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(source = %self.name, error = %e, "committing offsets failed; they are committed with the next batch");
            self.restore(offsets);
        }
    }
}
