//! Row changes: the event both database sources (`postgres`, `mysql`)
//! publish for each committed insert, update, delete or truncate.
//!
//! The data is the envelope Debezium made familiar (`before`, `after`,
//! `op`, `source`, `ts_ms`), so consumers written for it read Gale's events
//! unchanged. The CloudEvent around it says what happened in `type`
//! (`gale.db.row.inserted|updated|deleted|truncated|snapshot`), names the
//! database and table in `source` (and the `table` extension, for
//! filters), carries the row's primary key as `partitionkey` (so
//! `ordering = "partition-key"` keeps each row's changes in order) and
//! the commit time as `time`; the data adds the key's columns as `key`. Its id comes from the change's position in
//! the database's log, so a change read twice is stored once.

use serde::Serialize;
use serde_json::{Map, Value};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row read by the initial snapshot.
    Snapshot,
}

impl Op {
    /// Debezium's `op`.
    fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
            Op::Snapshot => "r",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Op::Insert => "gale.db.row.inserted",
            Op::Update => "gale.db.row.updated",
            Op::Delete => "gale.db.row.deleted",
            Op::Truncate => "gale.db.row.truncated",
            Op::Snapshot => "gale.db.row.snapshot",
        }
    }
}

/// One row change, decoded into JSON values.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub op: Op,
    /// The schema (PostgreSQL) or database (MySQL) of the table.
    pub schema: String,
    pub table: String,
    /// The row before the change, as far as the log holds it (the key
    /// columns only, unless the table logs whole old rows).
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    /// Columns whose value the log did not carry because it did not change
    /// (PostgreSQL's unchanged TOAST values); absent from `after`.
    pub unchanged: Vec<String>,
    /// The primary key's columns and values, in key order (without a
    /// primary key, the columns that identify a row in the log); empty for
    /// truncates.
    pub key: Vec<(String, Value)>,
}

/// Where a change sits in the database's log.
#[derive(Debug, Clone)]
pub struct Position {
    /// `"postgresql"` or `"mysql"`.
    pub connector: &'static str,
    /// The source's name.
    pub name: String,
    pub db: String,
    /// The log position, as the database writes it: an LSN, a GTID, or a
    /// binlog file and offset.
    pub lsn: Option<String>,
    pub gtid: Option<String>,
    pub tx_id: Option<u64>,
    /// Commit time, Unix milliseconds.
    pub commit_ms: i64,
    pub snapshot: bool,
}

impl RowChange {
    /// The partition key: a single key column's value as text, or the
    /// key's values as a JSON array.
    pub fn partition_key(&self) -> Option<String> {
        match self.key.as_slice() {
            [] => None,
            [(_, Value::String(s))] => Some(s.clone()),
            [(_, v)] => Some(v.to_string()),
            many => Some(Value::Array(many.iter().map(|(_, v)| v.clone()).collect()).to_string()),
        }
    }

    /// The change as a stored CloudEvent with the given id, serialized
    /// straight from the change (no intermediate JSON tree: this runs once
    /// per row at the source's full rate).
    pub fn event(&self, id: String, at: &Position, now_ms: i64) -> gale_store::NewEvent {
        let table = format!("{}.{}", self.schema, self.table);
        let source = format!("/gale/{}/{}/{}", at.connector, at.db, table);
        let time = jiff::Timestamp::from_millisecond(at.commit_ms)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let partition_key = self.partition_key();
        let event = Envelope {
            specversion: "1.0",
            id: &id,
            source: &source,
            ty: self.op.event_type(),
            time: &time,
            table: &table,
            subject: partition_key.as_deref(),
            partitionkey: partition_key.as_deref(),
            datacontenttype: "application/json",
            data: Data {
                before: self.before.as_ref(),
                after: self.after.as_ref(),
                op: self.op.code(),
                key: (!self.key.is_empty()).then_some(Key(&self.key)),
                unchanged: (!self.unchanged.is_empty()).then_some(&self.unchanged),
                source: Meta {
                    connector: at.connector,
                    name: &at.name,
                    ts_ms: at.commit_ms,
                    snapshot: if at.snapshot { "true" } else { "false" },
                    db: &at.db,
                    schema: &self.schema,
                    table: &self.table,
                    tx_id: at.tx_id,
                    lsn: at.lsn.as_deref(),
                    gtid: at.gtid.as_deref(),
                },
                ts_ms: now_ms,
            },
        };
        let body = serde_json::to_vec(&event).unwrap_or_default();
        gale_store::NewEvent {
            id,
            source,
            partition_key,
            body,
        }
    }
}

/// The CloudEvent, in structured mode.
#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    time: &'a str,
    table: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitionkey: Option<&'a str>,
    datacontenttype: &'static str,
    data: Data<'a>,
}

/// Debezium's envelope, with the key's columns and the columns not sent.
#[derive(Serialize)]
struct Data<'a> {
    before: Option<&'a Map<String, Value>>,
    after: Option<&'a Map<String, Value>>,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Key<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unchanged: Option<&'a Vec<String>>,
    source: Meta<'a>,
    ts_ms: i64,
}

#[derive(Serialize)]
struct Meta<'a> {
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gtid: Option<&'a str>,
}

/// Key columns as a JSON object, in key order.
struct Key<'a>(&'a [(String, Value)]);

impl Serialize for Key<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A database's text form of a timestamp (`2026-12-07 10:00:00.5+00`, or
/// without a zone) as RFC 3339 (`2026-12-07T10:00:00.5Z`); other text is
/// returned as it is.
pub fn iso_timestamp(text: &str) -> String {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return t.to_string();
    }
    // `+00` offsets without minutes are PostgreSQL's; jiff wants `+00:00`.
    let padded = match text.rfind(['+', '-']) {
        Some(i) if i > 10 && text.len() - i == 3 => format!("{text}:00"),
        _ => text.to_string(),
    };
    if let Ok(t) = padded.parse::<jiff::Timestamp>() {
        return t.to_string();
    }
    text.replacen(' ', "T", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;
    use serde_json::json;

    #[test]
    fn the_event_is_a_cloudevent_with_debezium_data() {
        let change = RowChange {
            op: Op::Update,
            schema: "public".into(),
            table: "orders".into(),
            before: Some(Map::from_iter([("id".to_string(), json!(7))])),
            after: Some(Map::from_iter([
                ("id".to_string(), json!(7)),
                ("qty".to_string(), json!(2)),
            ])),
            unchanged: vec!["note".into()],
            key: vec![("id".into(), json!(7))],
        };
        let at = Position {
            connector: "postgresql",
            name: "orders-cdc".into(),
            db: "shop".into(),
            lsn: Some("0/16B3748".into()),
            gtid: None,
            tx_id: Some(731),
            commit_ms: 1_765_000_000_123,
            snapshot: false,
        };
        let stored = change.event("orders-cdc/0/16B3748/1".into(), &at, 1_765_000_000_200);
        assert_eq!(stored.partition_key.as_deref(), Some("7"));
        let event: cloudevents::Event = serde_json::from_slice(&stored.body).unwrap();
        assert_eq!(event.ty(), "gale.db.row.updated");
        assert_eq!(event.source().to_string(), "/gale/postgresql/shop/public.orders");
        assert_eq!(event.extension("table").unwrap().to_string(), "public.orders");
        let Some(cloudevents::Data::Json(data)) = event.data() else {
            panic!("json data")
        };
        assert_eq!(data["op"], "u");
        assert_eq!(data["after"]["qty"], 2);
        assert_eq!(data["source"]["lsn"], "0/16B3748");
        assert_eq!(data["source"]["txId"], 731);
        assert_eq!(data["unchanged"], json!(["note"]));
        assert_eq!(data["key"], json!({"id": 7}));
    }

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(
            iso_timestamp("2026-12-07 10:00:00.5+00"),
            "2026-12-07T10:00:00.5Z"
        );
        assert_eq!(iso_timestamp("2026-12-07 12:00:00+02"), "2026-12-07T10:00:00Z");
        assert_eq!(iso_timestamp("2026-12-07 10:00:00"), "2026-12-07T10:00:00");
    }
}
