//! The server a mysql source reads: connecting, the settings a row-based
//! binlog reader needs, and its errors said so a user can act on them.
//!
//! Every failure here is a [`NodeError::Source`] whose message names the
//! server (`host:port`, never the password) and what to change; the sources
//! plane shows it as the source's `last_error` and runs it again later.

use crate::NodeError;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

/// Where and how to connect.
#[derive(Clone)]
pub struct Server {
    opts: Opts,
    /// `host:port`, for messages.
    pub address: String,
    user: String,
}

/// What the server is.
#[derive(Debug, Clone)]
pub struct Facts {
    pub mariadb: bool,
    pub server_id: u32,
}

/// Where the binlog is at.
#[derive(Debug, Clone, PartialEq)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    /// MariaDB's GTID position there (`domain-server-seq`, one per domain,
    /// comma-separated; empty before the first transaction).
    pub gtid: Option<String>,
}

impl Server {
    pub fn new(url: &str) -> Result<Server, NodeError> {
        // mysql_async knows only the `mysql` scheme.
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = Opts::from_url(&url).map_err(|e| {
            NodeError::Source(format!(
                "the source's url is not a MySQL URL ({e}); write it like mysql://user:password@127.0.0.1:3306/shop"
            ))
        })?;
        let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let user = opts.user().unwrap_or("").to_string();
        // Connect where the URL says, not through a local socket the server
        // advertises, and never time out an idle binlog reader.
        let opts = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .stmt_cache_size(16)
            .into();
        Ok(Server { opts, address, user })
    }

    /// The URL's database, if it names one.
    pub fn database(&self) -> Option<&str> {
        self.opts.db_name()
    }

    pub async fn connect(&self) -> Result<Conn, NodeError> {
        Conn::new(self.opts.clone())
            .await
            .map_err(|e| self.error(e, "connecting"))
    }

    /// The settings a row-based binlog reader needs; refuses with what to
    /// change when one is missing.
    pub async fn check(&self, conn: &mut Conn) -> Result<Facts, NodeError> {
        let settings: Option<(i64, String, String, String, u32)> = conn
            .query_first(
                "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, VERSION(), @@GLOBAL.server_id",
            )
            .await
            .map_err(|e| self.error(e, "reading the server's settings"))?;
        let (log_bin, format, image, version, server_id) = settings.unwrap_or_default();
        let at = &self.address;
        if log_bin == 0 {
            return Err(NodeError::Source(format!(
                "the server at {at} does not write a binlog (log_bin is OFF): start it with --log-bin (log_bin in its config file) and binlog_format=ROW, then the source starts by itself"
            )));
        }
        if !format.eq_ignore_ascii_case("ROW") {
            return Err(NodeError::Source(format!(
                "the server at {at} logs with binlog_format={format}, so row changes are not in its binlog: set binlog_format=ROW (SET GLOBAL binlog_format='ROW', and in its config file)"
            )));
        }
        if !image.eq_ignore_ascii_case("FULL") {
            return Err(NodeError::Source(format!(
                "the server at {at} logs with binlog_row_image={image}, so rows are logged incompletely: set binlog_row_image=FULL (SET GLOBAL binlog_row_image='FULL', and in its config file)"
            )));
        }
        Ok(Facts {
            mariadb: version.contains("MariaDB"),
            server_id,
        })
    }

    /// Where the binlog ends now.
    pub async fn current(&self, conn: &mut Conn, facts: &Facts) -> Result<BinlogPosition, NodeError> {
        let status: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| self.error(e, "reading the binlog position (SHOW MASTER STATUS)"))?;
        let Some(status) = status else {
            return Err(NodeError::Source(format!(
                "the server at {} shows no binlog position (SHOW MASTER STATUS is empty): start it with --log-bin",
                self.address
            )));
        };
        let file: String = status.get(0).unwrap_or_default();
        let pos: u64 = status.get(1).unwrap_or_default();
        let gtid = self.gtid_at(conn, facts, &file, pos).await?;
        Ok(BinlogPosition { file, pos, gtid })
    }

    /// MariaDB's GTID position matching a binlog file and offset.
    pub async fn gtid_at(
        &self,
        conn: &mut Conn,
        facts: &Facts,
        file: &str,
        pos: u64,
    ) -> Result<Option<String>, NodeError> {
        if !facts.mariadb {
            return Ok(None);
        }
        let gtid: Option<Option<String>> = conn
            .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos))
            .await
            .map_err(|e| self.error(e, "reading the GTID position (BINLOG_GTID_POS)"))?;
        Ok(gtid.flatten())
    }

    /// The error said for a user: which server, what failed, what to do.
    pub fn error(&self, e: mysql_async::Error, doing: &str) -> NodeError {
        let at = &self.address;
        let user = &self.user;
        let message = match &e {
            mysql_async::Error::Server(s) => match s.code {
                1045 => format!(
                    "the server at {at} refused user {user:?} ({}): check the user name and password in the source's url",
                    s.message
                ),
                1044 | 1049 => format!(
                    "the server at {at} has no database the source's url names, or user {user:?} may not use it ({}): fix the database in the url or grant the user access",
                    s.message
                ),
                1227 | 1142 | 1143 => format!(
                    "user {user:?} lacks a privilege at {at} for {doing} ({}): GRANT REPLICATION SLAVE, BINLOG MONITOR (MySQL and MariaDB before 10.5: REPLICATION CLIENT) ON *.* and SELECT on the followed tables TO the user",
                    s.message
                ),
                1236 => format!(
                    "the server at {at} cannot send its binlog from the source's position ({}): the binlog files there were probably purged; remove the source from the manifest and deploy it again to start from the current position (changes in between are not read)",
                    s.message
                ),
                _ => format!("{doing} at {at} failed: {} (error {})", s.message, s.code),
            },
            mysql_async::Error::Io(io) => format!(
                "cannot reach the MariaDB/MySQL server at {at} ({io}) while {doing}: is it running and listening there?"
            ),
            other => format!("{doing} at {at} failed: {other}"),
        };
        NodeError::Source(message)
    }
}

/// The replica id Gale reads as when the manifest names none: stable for a
/// source name, nonzero, and in the upper half of the range, away from the
/// small ids servers and their replicas usually have.
pub fn default_server_id(source: &str) -> u32 {
    // FNV-1a.
    let mut h: u32 = 0x811c_9dc5;
    for b in source.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_id_is_stable_and_large() {
        let a = default_server_id("orders-db");
        assert_eq!(a, default_server_id("orders-db"));
        assert_ne!(a, default_server_id("orders-db2"));
        assert!(a >= 0x8000_0000);
    }

    #[test]
    fn urls_name_the_server_but_not_the_password() {
        let s = Server::new("mariadb://app:secret@db.local:3307/shop").unwrap();
        assert_eq!(s.address, "db.local:3307");
        assert_eq!(s.database(), Some("shop"));
        let e = s.error(
            mysql_async::Error::Server(mysql_async::ServerError {
                code: 1045,
                message: "Access denied".into(),
                state: "28000".into(),
            }),
            "connecting",
        );
        assert!(e.to_string().contains("db.local:3307"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
