//! The delivery plane: events from topics to functions.
//!
//! - [`subscriptions`]: a subscription and a dispatcher per trigger,
//!   following the live functions;
//! - [`dispatcher`]: leases, filters, runs, settles (retries, dead letters);
//! - [`invocations`]: the attempts of asynchronous invocations;
//! - [`replay`]: replays and redrives, asked for through the admin API
//!   ([`admin`]);
//! - [`backoff`]: how long a failed attempt waits.

pub mod admin;
pub mod backoff;
pub mod dispatcher;
pub mod invocations;
pub mod replay;
pub mod subscriptions;
