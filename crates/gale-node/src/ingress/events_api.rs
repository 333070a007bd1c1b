//! Publishing over HTTP: `POST /_gale/topics/{topic}/events` on the gateway
//! and `POST /v1/topics/{topic}/events` on the admin API, in any of the
//! three HTTP modes of CloudEvents 1.0 (binary, structured, batch). The
//! answer comes once the events are durable.

use super::context::Ingress;
use crate::events::{MAX_PUBLISH, parse_for_store};
use crate::http::{ApiError, ApiResult, Json, Path};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gale_core::{Code, Error};
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// What a publish answers: where each event landed.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishResponse {
    pub events: Vec<Accepted>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    pub seq: u64,
    /// Seen within the topic's dedup window: accepted, stored once.
    pub duplicate: bool,
}

/// Publishes the events of an HTTP request to `topic` (the routers' handler).
pub async fn publish(
    State(ingress): State<Ingress>,
    Path(topic): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    let (parts, body) = request.into_parts();
    let published = publish_request(&ingress, &topic, &parts.headers, body).await?;
    Ok((StatusCode::ACCEPTED, Json(published)))
}

/// The topic of a gateway publish path, `/_gale/topics/{topic}/events`
/// (percent-decoded), if `path` is one.
pub fn publish_topic(path: &str) -> Option<String> {
    let topic = path.strip_prefix("/_gale/topics/")?.strip_suffix("/events")?;
    if topic.is_empty() || topic.contains('/') {
        return None;
    }
    Some(percent_decode_str(topic).decode_utf8().ok()?.into_owned())
}

/// `POST /_gale/topics/{topic}/events` on the gateway, answered without the
/// router: every unbatched event is one such request, and routing,
/// extractors and a re-collected answer would add to each.
pub async fn publish_on_gateway<B>(ingress: &Ingress, topic: &str, request: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    match publish_request(ingress, topic, &parts.headers, body).await {
        Ok(published) => (StatusCode::ACCEPTED, Json(published)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Checks the request's token, reads its events and publishes them.
async fn publish_request<B>(
    ingress: &Ingress,
    topic: &str,
    headers: &HeaderMap,
    body: B,
) -> ApiResult<PublishResponse>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ingress.tokens.may_publish(headers, topic)?;
    let body = http_body_util::Limited::new(body, MAX_PUBLISH)
        .collect()
        .await
        .map_err(|e| {
            Error::new(
                Code::EventTooLarge,
                format!("the request body could not be read: {e}"),
            )
            .with_hint(format!("send at most {MAX_PUBLISH} bytes per request"))
        })?
        .to_bytes();
    let events = parse_for_store(headers, &body)?;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let published = ingress.publisher.publish(topic, events).await?;
    Ok(PublishResponse {
        events: ids
            .into_iter()
            .zip(published)
            .map(|(id, p)| Accepted {
                id,
                seq: p.seq,
                duplicate: p.duplicate,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_paths_name_their_topic() {
        assert_eq!(
            publish_topic("/_gale/topics/orders/events").as_deref(),
            Some("orders")
        );
        assert_eq!(
            publish_topic("/_gale/topics/caf%C3%A9/events").as_deref(),
            Some("café")
        );
        for other in [
            "/_gale/topics//events",
            "/_gale/topics/a/b/events",
            "/_gale/topics/orders",
            "/_gale/functions/f/invocations",
        ] {
            assert_eq!(publish_topic(other), None, "{other}");
        }
    }
}
