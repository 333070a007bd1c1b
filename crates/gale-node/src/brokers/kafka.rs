//! Kafka, as the `kafka` source, its sink and Lambda's Kafka payload share
//! it.

/// The extensions the Lambda payload is built from.
pub const EXT_TOPIC: &str = "kafkatopic";
pub const EXT_PARTITION: &str = "kafkapartition";
pub const EXT_OFFSET: &str = "kafkaoffset";
pub const EXT_TIMESTAMP: &str = "kafkatimestamp";
pub const EXT_TIMESTAMP_TYPE: &str = "kafkatimestamptype";
pub const EXT_SERVERS: &str = "kafkaservers";
pub const EXT_KEY: &str = "kafkakey";
pub const EXT_HEADERS: &str = "kafkaheaders";

/// The bootstrap servers as `gale sources` and errors may show them:
/// without credentials.
pub fn servers(url: &str) -> String {
    gale_core::sources::kafka_servers(url)
        .map(|(_, s)| s.join(","))
        .unwrap_or_else(|| "the url's servers".into())
}
