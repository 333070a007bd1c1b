//! What serving requests takes: the handles every ingress endpoint shares.

use super::routes::Routes;
use crate::auth::Tokens;
use crate::functions::Functions;
use crate::publisher::Publisher;
use std::sync::Arc;

/// Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    pub functions: Functions,
    pub routes: Arc<Routes>,
    pub publisher: Publisher,
    pub tokens: Tokens,
}
