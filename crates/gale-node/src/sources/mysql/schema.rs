//! What a followed table looks like, and its values as JSON.
//!
//! The binlog carries a row as bare values in column order: no names (unless
//! the server runs with `binlog_row_metadata = FULL`), no signedness, and
//! types only as the storage format. So the names, the declared types and
//! the primary key come from `information_schema`, read when the source
//! starts and again when the table may have changed (a TABLE_MAP event with
//! another column count, or DDL naming the table). The same conversion
//! serves the initial snapshot, whose values come from the binary protocol
//! instead (see [`Origin`]).

use base64::Engine;
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use serde_json::{Map, Value as Json, json};

/// A followed table's columns and key.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// How a column's values are written as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// An integer of this many bits; unsigned ones are fixed up (the binlog
    /// decodes them as signed).
    Int {
        bits: u32,
        unsigned: bool,
    },
    Float,
    /// DECIMAL: a string, so no digit is lost.
    Decimal,
    Date,
    DateTime,
    /// TIMESTAMP: an instant, written in UTC.
    Timestamp,
    Time,
    Year,
    Bit,
    Text,
    /// Binary strings and BLOBs: base64.
    Binary,
    /// JSON (MySQL's type, or MariaDB's LONGTEXT with a `json_valid` check).
    Json,
    Enum(Vec<String>),
    Set(Vec<String>),
    /// Anything else: text if it is UTF-8, base64 if not.
    Other,
}

/// Where a value was read: the binlog and the binary protocol write some
/// types differently (TIMESTAMP as seconds or as a date, ENUM as an index or
/// as its label, SET as a bit mask or as text).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Origin {
    Binlog,
    Query,
}

impl Table {
    /// Reads a table's columns and key; `None` if there is no such table.
    pub async fn load(
        conn: &mut mysql_async::Conn,
        db: &str,
        name: &str,
    ) -> Result<Option<Table>, mysql_async::Error> {
        let rows: Vec<(String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            .await?;
        // MariaDB's JSON is LONGTEXT with a `json_valid(`col`)` check. MySQL
        // has no such view before 8.0.16; then there are no such checks.
        let checks: Vec<String> = conn
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (db, name),
            )
            .await
            .unwrap_or_default();
        let json_columns: Vec<String> = checks
            .iter()
            .filter_map(|c| {
                c.strip_prefix("json_valid(`")?
                    .strip_suffix("`)")
                    .map(str::to_string)
            })
            .collect();
        let columns: Vec<Column> = rows
            .into_iter()
            .map(|(name, data_type, column_type)| {
                let kind = if json_columns.contains(&name) {
                    Kind::Json
                } else {
                    Kind::of(&data_type, &column_type)
                };
                Column { name, kind }
            })
            .collect();
        let key = key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Ok(Some(Table { columns, key }))
    }

    /// A row as a JSON object. `values` holds the columns at `present` (the
    /// row image's columns, by index); `names` are the names the binlog
    /// sent, if it sent them (`binlog_row_metadata = FULL`).
    pub fn row(
        &self,
        present: &[usize],
        values: Vec<Value>,
        names: &[Option<String>],
        origin: Origin,
    ) -> Map<String, Json> {
        let mut row = Map::new();
        for (n, (value, &index)) in values.into_iter().zip(present).enumerate() {
            let named = names.get(n).cloned().flatten();
            let column = match &named {
                Some(name) => self.columns.iter().find(|c| &c.name == name),
                None => self.columns.get(index),
            };
            let name = named
                .or_else(|| column.map(|c| c.name.clone()))
                .unwrap_or_else(|| format!("@{index}"));
            let kind = column.map_or(&Kind::Other, |c| &c.kind);
            row.insert(name, to_json(value, kind, origin));
        }
        row
    }

    /// The primary key's columns and values in a row (empty if the table
    /// has none).
    pub fn key_of(&self, row: &Map<String, Json>) -> Vec<(String, Json)> {
        self.key
            .iter()
            .map(|&i| {
                let name = &self.columns[i].name;
                (name.clone(), row.get(name).cloned().unwrap_or(Json::Null))
            })
            .collect()
    }
}

impl Kind {
    /// From `information_schema.COLUMNS`' `DATA_TYPE` and `COLUMN_TYPE`.
    pub fn of(data_type: &str, column_type: &str) -> Kind {
        let unsigned = column_type.contains("unsigned");
        match data_type.to_ascii_lowercase().as_str() {
            "tinyint" => Kind::Int { bits: 8, unsigned },
            "smallint" => Kind::Int { bits: 16, unsigned },
            "mediumint" => Kind::Int { bits: 24, unsigned },
            "int" | "integer" => Kind::Int { bits: 32, unsigned },
            "bigint" => Kind::Int { bits: 64, unsigned },
            "float" | "double" | "real" => Kind::Float,
            "decimal" | "numeric" => Kind::Decimal,
            "date" => Kind::Date,
            "datetime" => Kind::DateTime,
            "timestamp" => Kind::Timestamp,
            "time" => Kind::Time,
            "year" => Kind::Year,
            "bit" => Kind::Bit,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => Kind::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
            "json" => Kind::Json,
            "enum" => Kind::Enum(labels(column_type)),
            "set" => Kind::Set(labels(column_type)),
            _ => Kind::Other,
        }
    }
}

/// The labels of `enum('a','b')` / `set('a','b')`.
fn labels(column_type: &str) -> Vec<String> {
    let Some(inner) = column_type
        .find('(')
        .and_then(|i| column_type[i + 1..].strip_suffix(')'))
    else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.extend(chars.next()),
                c => label.push(c),
            }
        }
        labels.push(label);
    }
    labels
}

/// One value as JSON, typed by its column.
pub fn to_json(value: Value, kind: &Kind, origin: Origin) -> Json {
    match value {
        Value::NULL => Json::Null,
        Value::Int(v) => match kind {
            Kind::Int { bits, unsigned: true } if v < 0 => {
                let mask = if *bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
                json!((v as u64) & mask)
            }
            Kind::Enum(labels) if origin == Origin::Binlog => match v {
                0 => json!(""),
                n => labels.get(n as usize - 1).map_or_else(|| json!(n), |l| json!(l)),
            },
            _ => json!(v),
        },
        Value::UInt(v) => json!(v),
        Value::Float(v) => number(v as f64),
        Value::Double(v) => number(v),
        Value::Date(y, mo, d, h, mi, s, us) => match kind {
            Kind::Date => json!(format!("{y:04}-{mo:02}-{d:02}")),
            // A snapshot reads TIMESTAMPs in a UTC session.
            Kind::Timestamp => json!(format!("{}Z", datetime(y, mo, d, h, mi, s, us))),
            _ => json!(datetime(y, mo, d, h, mi, s, us)),
        },
        Value::Time(negative, days, h, m, s, us) => {
            let hours = days * 24 + h as u32;
            let sign = if negative { "-" } else { "" };
            json!(format!("{sign}{hours:02}:{m:02}:{s:02}{}", fraction(us)))
        }
        Value::Bytes(bytes) => bytes_to_json(bytes, kind, origin),
    }
}

fn bytes_to_json(bytes: Vec<u8>, kind: &Kind, origin: Origin) -> Json {
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    match kind {
        Kind::Decimal => json!(text()),
        // The binlog writes TIMESTAMP as Unix seconds, with `.micros` if any.
        Kind::Timestamp => {
            let t = text();
            let (secs, micros) = t.split_once('.').unwrap_or((&t, "0"));
            let at = secs.parse::<i64>().ok().and_then(|s| {
                let micros: i64 = format!("{micros:0<6}")[..6].parse().ok()?;
                jiff::Timestamp::from_microsecond(s * 1_000_000 + micros).ok()
            });
            at.map_or_else(|| json!(t), |at| json!(at.to_string()))
        }
        Kind::Year | Kind::Int { .. } => text().parse::<i64>().map_or_else(|_| json!(text()), |n| json!(n)),
        Kind::Bit => {
            let n = bytes.iter().fold(0u64, |n, b| (n << 8) | *b as u64);
            json!(n)
        }
        Kind::Set(labels) if origin == Origin::Binlog => {
            // A little-endian bit mask over the labels.
            let chosen: Vec<&str> = labels
                .iter()
                .enumerate()
                .filter(|(i, _)| bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                .map(|(_, l)| l.as_str())
                .collect();
            json!(chosen.join(","))
        }
        Kind::Json => serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(text())),
        Kind::Binary => json!(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        Kind::Other => match String::from_utf8(bytes) {
            Ok(s) => json!(s),
            Err(e) => json!(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        },
        _ => json!(text()),
    }
}

fn number(v: f64) -> Json {
    serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
}

fn datetime(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, us: u32) -> String {
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}", fraction(us))
}

/// Microseconds as `.678` (no trailing zeros), or nothing.
fn fraction(us: u32) -> String {
    if us == 0 {
        return String::new();
    }
    format!(".{us:06}").trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_by_their_column() {
        let int = |bits, unsigned| Kind::Int { bits, unsigned };
        assert_eq!(to_json(Value::Int(-1), &int(8, true), Origin::Binlog), json!(255));
        assert_eq!(to_json(Value::Int(-1), &int(8, false), Origin::Binlog), json!(-1));
        assert_eq!(
            to_json(Value::Int(-1), &int(64, true), Origin::Binlog),
            json!(u64::MAX)
        );
        assert_eq!(
            to_json(Value::Bytes(b"12.50".to_vec()), &Kind::Decimal, Origin::Binlog),
            json!("12.50")
        );
        assert_eq!(
            to_json(
                Value::Bytes(b"1765100000.5".to_vec()),
                &Kind::Timestamp,
                Origin::Binlog
            ),
            json!("2025-12-07T09:33:20.5Z")
        );
        assert_eq!(
            to_json(
                Value::Date(2025, 12, 7, 9, 33, 20, 0),
                &Kind::Timestamp,
                Origin::Query
            ),
            json!("2025-12-07T09:33:20Z")
        );
        assert_eq!(
            to_json(Value::Date(2025, 12, 7, 0, 0, 0, 0), &Kind::Date, Origin::Binlog),
            json!("2025-12-07")
        );
        assert_eq!(
            to_json(
                Value::Date(2025, 12, 7, 1, 2, 3, 678_000),
                &Kind::DateTime,
                Origin::Binlog
            ),
            json!("2025-12-07T01:02:03.678")
        );
        assert_eq!(
            to_json(Value::Bytes(vec![0, 255]), &Kind::Binary, Origin::Binlog),
            json!("AP8=")
        );
        assert_eq!(
            to_json(
                Value::Bytes(br#"{"a":[1]}"#.to_vec()),
                &Kind::Json,
                Origin::Binlog
            ),
            json!({"a": [1]})
        );
        let colors = vec!["red".to_string(), "green".to_string(), "blue".to_string()];
        assert_eq!(
            to_json(Value::Int(2), &Kind::Enum(colors.clone()), Origin::Binlog),
            json!("green")
        );
        assert_eq!(
            to_json(Value::Bytes(vec![0b101]), &Kind::Set(colors), Origin::Binlog),
            json!("red,blue")
        );
        assert_eq!(
            to_json(Value::Time(true, 1, 2, 3, 4, 0), &Kind::Time, Origin::Binlog),
            json!("-26:03:04")
        );
    }

    #[test]
    fn enum_labels_are_read_from_the_column_type() {
        assert_eq!(labels("enum('a','it''s','c,d')"), vec!["a", "it's", "c,d"]);
        assert_eq!(
            Kind::of("int", "int(10) unsigned"),
            Kind::Int {
                bits: 32,
                unsigned: true
            }
        );
    }
}
