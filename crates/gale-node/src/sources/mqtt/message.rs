//! What an MQTT message becomes (see [`super::super::message`]).
//!
//! CloudEvents come by the MQTT binding: with MQTT 5, binary mode (the
//! attributes as user properties named as they are, the data's type in
//! the content type property) or structured mode (content type
//! `application/cloudevents+json`); plain messages keep their user
//! properties as extension attributes. MQTT 3.1.1 has neither properties
//! nor a content type, so the binding knows only structured mode there,
//! with nothing on the message to say so: a 3.1.1 body is read as a
//! CloudEvent only with `format = "cloudevents"`, never guessed from JSON
//! that happens to look like one.

use crate::brokers::mqtt::Received;
use crate::sources::message::{Message, Origin, Parked};
use gale_core::MessageFormat;
use gale_store::NewEvent;

/// The CloudEvents `type` of a message that is not itself a CloudEvent.
///
/// MQTT messages carry no type of their own, so there is one type for all
/// of them, named like Gale's other generated events; subscriptions tell
/// messages apart by `subject` (the MQTT topic) and `source` (the broker
/// and the filter).
pub const MESSAGE_TYPE: &str = "gale.mqtt.message";

/// A message as the event stored for it: `subject` and the default
/// `partitionkey` are the MQTT topic (the broker orders messages per
/// topic, and topics usually name the device or entity).
pub(crate) fn message_event(
    m: &Received,
    v5: bool,
    id: String,
    source: &str,
    format: MessageFormat,
) -> Result<NewEvent, Parked> {
    let content_type = if v5 {
        m.content_type.as_deref()
    } else if format == MessageFormat::Cloudevents {
        Some("application/cloudevents+json")
    } else {
        None
    };
    let message = Message {
        body: &m.payload,
        content_type,
        headers: &m.properties,
        prefix: "",
    };
    let origin = Origin {
        ty: MESSAGE_TYPE,
        id,
        source,
        subject: Some(&m.topic),
        time: None,
        key: Some(&m.topic),
    };
    message.event(origin, format)
}

/// Whether an MQTT topic filter matches a topic name.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a") && matches("a/#", "a/b/c") && matches("#", "x/y"));
        assert!(!matches("a/+", "a/b/c") && !matches("a/b", "a/c") && !matches("#", "$SYS/x"));
    }
}
