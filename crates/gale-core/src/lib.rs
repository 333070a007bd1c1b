//! Gale's shared vocabulary.
//!
//! Everything the node and the CLI must agree on lives here and nowhere else:
//! the manifest (`gale.toml`) and its validation, the JSON shapes of the admin
//! API, human-friendly durations and sizes, and the stable error codes users
//! see. The crate has no I/O and no heavy dependencies so that every other
//! crate (and the CLI) can use it cheaply.

pub mod api;
pub mod buckets;
pub mod error;
pub mod filter;
pub mod manifest;
pub mod sinks;
pub mod sources;
pub mod units;

pub use buckets::{BucketFormat, BucketSpec, BucketTrigger};
pub use error::{Code, Error};
pub use filter::Filter;
pub use manifest::{EventTrigger, FunctionSpec, HttpTrigger, Manifest, Route, ScheduleTrigger, TopicSpec};
pub use sinks::{SinkKind, SinkMode, SinkSpec};
pub use sources::{
    AmqpUrl, Cron, KafkaSource, KafkaStart, MessageFormat, MqttSource, MysqlSource, NatsSource,
    PostgresSource, QueueType, RabbitmqSource, RedisSource, ScheduleSource, SnapshotMode, SourceSpec,
    StreamStart,
};
