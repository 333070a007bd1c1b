//! AMQP 0-9-1 (RabbitMQ), as the `rabbitmq` source and sink share it.

use gale_core::AmqpUrl;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// How the CloudEvents AMQP binding prefixes attribute headers.
pub const PREFIX: &str = "cloudEvents:";
/// How long connecting may take.
const CONNECT: Duration = Duration::from_secs(10);

/// Connects to the broker at `url`; `name` shows in its connection list.
pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Connection, lapin::Error> {
    let uri = lapin::uri::AMQPUri {
        scheme: lapin::uri::AMQPScheme::AMQP,
        authority: lapin::uri::AMQPAuthority {
            userinfo: lapin::uri::AMQPUserInfo {
                username: url.user.clone(),
                password: url.password.clone(),
            },
            host: url.host.clone(),
            port: url.port,
        },
        vhost: url.vhost.clone(),
        query: Default::default(),
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT, Connection::connect_uri(uri, properties)).await {
        Ok(r) => r,
        Err(_) => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT:?}"),
        ))),
    }
}
