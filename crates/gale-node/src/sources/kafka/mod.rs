//! Kafka: records of topics, read in a consumer group and copied into a
//! Gale topic as CloudEvents.
//!
//! The guarantee comes from when offsets are committed: never
//! automatically, only once the records before them are durable in the
//! topic (per partition, the next offset to read). A crash of the node
//! therefore re-reads, from the group's committed offsets, at most what
//! was in flight, and those records keep their event ids
//! (`<source>/<topic>/<partition>/<offset>`), which the topic's dedup
//! drops. Reading and storing overlap as in the other sources: one batch
//! is being made durable while the next is read, and its offsets are
//! committed once it is.
//!
//! A rebalance that takes partitions away first commits what is durable of
//! them, so the consumer that gets them next starts right after it;
//! records of theirs still in flight are read again there and dropped by
//! the dedup.
//!
//! librdkafka reconnects by itself after a broker goes away; once no broker
//! of the cluster is reachable the run ends with an error saying so (`gale
//! sources` shows `failed` and the reason), and the plane starts it again
//! after a pause that doubles up to 30 s, from the committed offsets.
//! Before joining the group the source asks the cluster for the topics'
//! metadata, so an unreachable cluster or an unknown topic is named at
//! once rather than waited on.
//!
//! `gale sources` shows the next offset of each partition whose records
//! are durable, and, from librdkafka's statistics, how many records the
//! partitions hold past the committed offsets.

pub mod message;

#[cfg(feature = "kafka")]
mod consumer;

#[cfg(feature = "kafka")]
pub use consumer::Kafka;

/// Built without the `kafka` feature: the source says so.
#[cfg(not(feature = "kafka"))]
pub struct Kafka;

#[cfg(not(feature = "kafka"))]
impl Kafka {
    pub fn new(_: &super::context::Wanted, _: &gale_core::KafkaSource) -> Kafka {
        Kafka
    }
}

#[cfg(not(feature = "kafka"))]
#[async_trait::async_trait]
impl super::context::Source for Kafka {
    async fn run(&mut self, _: &mut super::context::Context) -> Result<(), crate::NodeError> {
        Err(crate::NodeError::Source(
            "this gale was built without Kafka; build it with the `kafka` feature (on by default)".into(),
        ))
    }
}
