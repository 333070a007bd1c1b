//! Redis, as the `redis` source and sink share it.

use redis::RedisError;

/// A Redis error as a sentence naming the server, what was being done and
/// what to check; never the password.
pub fn describe(e: &RedisError, server: &str, doing: &str, what: &str) -> String {
    let code = e.code().unwrap_or_default();
    if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
    {
        let hint = if code == "NOPERM" {
            "give the user the stream commands (XREADGROUP, XACK, XAUTOCLAIM, XADD, XINFO, XGROUP) on the key"
        } else {
            "check the user and password"
        };
        return format!("Redis at {server} refused the {what} ({e}); {hint} in the {what}'s url");
    }
    if e.is_connection_refusal() || e.is_timeout() || (e.is_io_error() && doing == "connecting") {
        return format!(
            "cannot reach Redis at {server} ({e}); check the host and port in the {what}'s url and that the server runs"
        );
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return format!("lost the connection to Redis at {server} while {doing} ({e}); connecting again");
    }
    format!("Redis at {server}: {doing} failed: {e}")
}
