//! The delivery plane: events from topics to functions, and to brokers.
//!
//! - [`subscriptions`]: a subscription and a dispatcher per trigger,
//!   following the live functions;
//! - [`dispatcher`]: leases, filters, runs, settles (retries, dead letters);
//! - [`invocations`]: the attempts of asynchronous invocations;
//! - [`replay`]: replays and redrives, asked for through the admin API
//!   ([`admin`]);
//! - [`sinks`]: topics forwarded to brokers outside Gale (`[sinks.NAME]`);
//! - [`backoff`]: how long a failed attempt waits.

pub mod admin;
pub mod backoff;
pub mod dispatcher;
pub mod invocations;
pub mod replay;
pub mod sinks;
pub mod subscriptions;
