//! Change-data-capture sources: PostgreSQL and MariaDB/MySQL tables.

use super::check_url;
use serde::{Deserialize, Serialize};

/// Whether a change-data-capture source first emits the rows its tables
/// already hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Every existing row as an `op: "r"` event from one consistent
    /// snapshot, then the changes from exactly the snapshot's position.
    Initial,
    /// Only changes committed after the source first started.
    #[default]
    Never,
}

/// `type = "postgres"`: committed row changes of tables, read from a
/// logical replication slot with the `pgoutput` plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// `postgres://user[:password]@host[:port]/database`; without a
    /// password, the node's `PGPASSWORD` is used.
    pub url: String,
    /// The tables to follow, `schema.table` or `table` (in `public`); Gale
    /// keeps a publication of them named after the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// An existing publication to follow instead of `tables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// The replication slot; `gale_<app>_<source>` unless named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The topic every row change is published to.
    pub topic: String,
}

impl PostgresSource {
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        check_url(&self.url, &["postgres", "postgresql"])?;
        match (&self.publication, self.tables.is_empty()) {
            (Some(_), false) => {
                return Err((
                    "publication",
                    "`publication` and `tables` are both set".into(),
                    "name the tables with `tables` (Gale keeps a publication of them), or an existing publication with `publication`, not both",
                ));
            }
            (None, true) => {
                return Err((
                    "tables",
                    "no tables to follow".into(),
                    "list them, like tables = [\"public.orders\"], or name an existing publication",
                ));
            }
            _ => {}
        }
        check_tables(&self.tables)?;
        for (key, name) in [("publication", &self.publication), ("slot", &self.slot)] {
            if let Some(name) = name
                && !valid_pg_name(name)
            {
                return Err((
                    key,
                    format!("{name:?} is not a valid name"),
                    "use lowercase letters, digits and '_', at most 63",
                ));
            }
        }
        Ok(())
    }
}

/// Slot and publication names PostgreSQL takes unquoted.
pub fn valid_pg_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `type = "mysql"`: committed row changes of tables, read from a
/// MariaDB or MySQL server's row-based binlog as a replica would. The
/// server must run with `log_bin`, `binlog_format=ROW` and
/// `binlog_row_image=FULL` (and, so events name columns right while the
/// source catches up across schema changes, preferably
/// `binlog_row_metadata=FULL`); the user needs `REPLICATION SLAVE`,
/// `BINLOG MONITOR` (MySQL: `REPLICATION CLIENT`) and `SELECT` on the tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSource {
    /// `mysql://user[:password]@host[:port]/database`.
    pub url: String,
    /// The tables to follow, `database.table` or `table` (in the URL's
    /// database).
    pub tables: Vec<String>,
    /// The replica id Gale reads the binlog as; unique among the server's
    /// replicas. Derived from the source's name unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The topic every row change is published to.
    pub topic: String,
}

impl MysqlSource {
    pub(super) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        check_url(&self.url, &["mysql", "mariadb"])?;
        if self.tables.is_empty() {
            return Err((
                "tables",
                "no tables to follow".into(),
                "list them, like tables = [\"shop.orders\"]",
            ));
        }
        if self.server_id == Some(0) {
            return Err((
                "server_id",
                "0 is not a replica id".into(),
                "pick a number from 1 to 4294967295 that no other replica of the server uses",
            ));
        }
        check_tables(&self.tables)
    }
}

fn check_tables(tables: &[String]) -> Result<(), (&'static str, String, &'static str)> {
    for t in tables {
        let ok = !t.is_empty()
            && t.split('.').count() <= 2
            && t.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            });
        if !ok {
            return Err((
                "tables",
                format!("{t:?} is not a table name"),
                "write `schema.table` or `table`, letters, digits and '_'",
            ));
        }
    }
    Ok(())
}
