//! PostgreSQL change data capture (in progress).

pub mod pgoutput;

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use gale_core::PostgresSource;

pub struct Postgres;

impl Postgres {
    pub fn new(_wanted: &Wanted, _spec: &PostgresSource) -> Postgres {
        Postgres
    }
}

#[async_trait::async_trait]
impl Source for Postgres {
    async fn run(&mut self, _cx: &mut Context) -> Result<(), NodeError> {
        Err(NodeError::Source("the postgres source is not built yet".into()))
    }
}
