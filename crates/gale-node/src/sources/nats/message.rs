//! What a NATS message becomes (see [`super::super::message`]).

use crate::sources::message::{Message, Origin, Parked};
use gale_core::MessageFormat;
use gale_store::NewEvent;

/// The CloudEvents `type` of a message that is not itself a CloudEvent.
///
/// NATS messages carry no type of their own, so there is one type for all
/// of them, named like Gale's other generated events (`gale.db.row.*`):
/// `gale.` for a Gale-made event, then where it came from and what it is.
/// Subscriptions tell messages apart by `subject` (the NATS subject) and
/// `source` (the stream or subscription).
pub const MESSAGE_TYPE: &str = "gale.nats.message";

/// A NATS message as the event stored for it: `subject` and the default
/// `partitionkey` are the NATS subject (NATS orders messages per subject,
/// and subjects usually name the entity, like `orders.42`); CloudEvents
/// come by the NATS binding (`ce-` headers).
pub fn message_event(
    message: &async_nats::Message,
    id: String,
    source: &str,
    time: Option<&str>,
    format: MessageFormat,
) -> Result<NewEvent, Parked> {
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(k, values)| {
            let k: &str = k.as_ref();
            values
                .iter()
                .map(move |v| (k.to_string(), v.as_str().to_string()))
        })
        .collect();
    let subject = message.subject.as_str();
    let m = Message {
        body: &message.payload,
        content_type: None,
        headers: &headers,
        prefix: "ce-",
    };
    let origin = Origin {
        ty: MESSAGE_TYPE,
        id,
        source,
        subject: Some(subject),
        time,
        key: Some(subject),
    };
    m.event(origin, format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;
    use bytes::Bytes;
    use cloudevents::AttributesReader;

    #[test]
    fn a_nats_message_is_named_by_its_subject_and_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.append("Region", "eu");
        h.append("Region", "us");
        h.append("ce-id", "not a CloudEvent without ce-specversion");
        let m = async_nats::Message {
            subject: "orders.42".into(),
            reply: None,
            payload: Bytes::from_static(br#"{"qty":2}"#),
            headers: Some(h),
            status: None,
            description: None,
            length: 9,
        };
        let stored = message_event(&m, "q/S/7".into(), "/gale/nats/S", None, MessageFormat::Any).unwrap();
        let e = crate::events::decode(&stored.body).unwrap();
        assert_eq!((e.ty(), e.subject()), (MESSAGE_TYPE, Some("orders.42")));
        assert_eq!(stored.partition_key.as_deref(), Some("orders.42"));
        assert_eq!(e.extension("region").unwrap().to_string(), "eu,us");
    }
}
