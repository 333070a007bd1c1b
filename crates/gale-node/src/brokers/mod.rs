//! What a broker's source and sink share: connecting, naming errors, the
//! names a broker's events carry. The sources plane reads from brokers
//! and the delivery plane's sinks write to them; both use this floor, so
//! neither imports the other.

pub mod amqp;
pub mod kafka;
pub mod mqtt;
pub mod redis;
