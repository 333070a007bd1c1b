//! The ingress plane: requests from outside.
//!
//! - [`gateway`]: the HTTP listener users' requests and events arrive on;
//! - [`routes`]: the routing table, following the live functions;
//! - [`events_api`]: publishing CloudEvents over HTTP;
//! - [`invocations_api`]: invoking a function by name, sync or async;
//! - [`invoke_api`] and [`sigv4`]: Lambda's Invoke API for AWS clients;
//! - [`s3`]: the S3-compatible API on its own listener, over the buckets;
//! - [`admin`]: this plane's endpoints on the admin API;
//! - [`context`]: what serving requests takes;
//! - [`listener`]: serving connections, shared by the gateway and the S3 API.

pub mod admin;
pub mod context;
pub mod events_api;
pub mod gateway;
pub mod invocations_api;
pub mod invoke_api;
mod listener;
pub mod routes;
pub mod s3;
pub mod sigv4;
