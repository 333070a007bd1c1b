//! MariaDB/MySQL change data capture from the row-based binlog (not built
//! yet: the source fails with a message saying so).

use super::context::{Context, Source, Wanted};
use crate::NodeError;
use gale_core::MysqlSource;

pub struct Mysql;

impl Mysql {
    pub fn new(_wanted: &Wanted, _spec: &MysqlSource) -> Mysql {
        Mysql
    }
}

#[async_trait::async_trait]
impl Source for Mysql {
    async fn run(&mut self, _cx: &mut Context) -> Result<(), NodeError> {
        Err(NodeError::Source("the mysql source is not built yet".into()))
    }
}
