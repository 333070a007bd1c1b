//! A decoder of `pgoutput` (protocol version 1) messages into row changes.
//!
//! The transport hands over each message's bytes; Begin and Commit it
//! decodes itself. What remains are relation messages (a table's columns,
//! sent before its first change and again after it changed, so `ALTER
//! TABLE` mid-stream is followed), and inserts, updates, deletes and
//! truncates referring to them. Values arrive in PostgreSQL's text form
//! and are typed into JSON by the column's type.

use crate::sources::rows::{Op, RowChange, iso_timestamp};
use base64::Engine;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Type OIDs with a JSON form other than a string.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const JSONB: u32 = 3802;
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key, or every column under
    /// `REPLICA IDENTITY FULL`).
    pub identity: bool,
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
}

/// The tables' relations as the stream described them, and their primary
/// keys as read when the source started.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    /// `schema.table` → primary key column names, in key order.
    pub primary_keys: HashMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable pgoutput message: {0}")]
pub struct DecodeError(String);

/// A column's value in a tuple.
enum Datum {
    Null,
    /// An unchanged TOAST value the server did not send.
    Unchanged,
    Text(Vec<u8>),
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError("message ends early".into()));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("string without its end".into()))?;
        let s = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::Unchanged),
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Ok(Datum::Text(self.take(len)?.to_vec()))
                }
                other => Err(DecodeError(format!(
                    "unknown tuple value kind {:?}",
                    other as char
                ))),
            })
            .collect()
    }
}

impl Decoder {
    /// Decodes one message; relation messages update the decoder and yield
    /// nothing, a truncate yields one change per table.
    pub fn decode(&mut self, data: &[u8]) -> Result<Vec<RowChange>, DecodeError> {
        let mut r = Reader { data };
        let kind = r.u8()?;
        match kind {
            b'R' => {
                let oid = r.u32()?;
                let schema = r.string()?;
                let table = r.string()?;
                let _identity = r.u8()?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push(Column {
                        name,
                        type_oid,
                        identity: flags & 1 == 1,
                    });
                }
                self.relations.insert(
                    oid,
                    Relation {
                        schema,
                        table,
                        columns,
                    },
                );
                Ok(Vec::new())
            }
            b'I' => {
                let rel = self.relation(r.u32()?)?;
                expect(&mut r, b'N')?;
                let after = row(rel, r.tuple()?, None);
                Ok(vec![self.change(rel, Op::Insert, None, Some(after))])
            }
            b'U' => {
                let rel = self.relation(r.u32()?)?;
                let mut before = None;
                let mut marker = r.u8()?;
                if marker == b'K' || marker == b'O' {
                    before = Some(row(rel, r.tuple()?, None));
                    marker = r.u8()?;
                }
                if marker != b'N' {
                    return Err(DecodeError(format!(
                        "update without a new row ({:?})",
                        marker as char
                    )));
                }
                let after = row(rel, r.tuple()?, before.as_ref().map(|(b, _)| b));
                Ok(vec![self.change(rel, Op::Update, before, Some(after))])
            }
            b'D' => {
                let rel = self.relation(r.u32()?)?;
                let marker = r.u8()?;
                if marker != b'K' && marker != b'O' {
                    return Err(DecodeError(format!(
                        "delete without an old row ({:?})",
                        marker as char
                    )));
                }
                let before = row(rel, r.tuple()?, None);
                Ok(vec![self.change(rel, Op::Delete, Some(before), None)])
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                let mut changes = Vec::new();
                for _ in 0..n {
                    let rel = self.relation(r.u32()?)?;
                    changes.push(RowChange {
                        op: Op::Truncate,
                        schema: rel.schema.clone(),
                        table: rel.table.clone(),
                        before: None,
                        after: None,
                        unchanged: Vec::new(),
                        key: Vec::new(),
                    });
                }
                Ok(changes)
            }
            // Begin and commit (the transport reads them), origins, types
            // and logical messages carry no row.
            b'B' | b'C' | b'O' | b'Y' | b'M' => Ok(Vec::new()),
            other => Err(DecodeError(format!("unknown message {:?}", other as char))),
        }
    }

    fn relation(&self, oid: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&oid)
            .ok_or_else(|| DecodeError(format!("a change of relation {oid} before its description")))
    }

    /// A change, keyed by the table's primary key (or, without one, its
    /// replica identity columns).
    fn change(
        &self,
        rel: &Relation,
        op: Op,
        before: Option<(Map<String, Value>, Vec<String>)>,
        after: Option<(Map<String, Value>, Vec<String>)>,
    ) -> RowChange {
        let (after, unchanged) = match after {
            Some((row, unchanged)) => (Some(row), unchanged),
            None => (None, Vec::new()),
        };
        let before = before.map(|(row, _)| row);
        let keyed = after.as_ref().or(before.as_ref());
        let key = match self.primary_keys.get(&format!("{}.{}", rel.schema, rel.table)) {
            Some(names) if !names.is_empty() => names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        keyed.and_then(|row| row.get(n)).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
            _ => rel
                .columns
                .iter()
                .filter(|c| c.identity)
                .map(|c| {
                    let v = keyed.and_then(|row| row.get(&c.name)).cloned();
                    (c.name.clone(), v.unwrap_or(Value::Null))
                })
                .collect(),
        };
        RowChange {
            op,
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            before,
            after,
            unchanged,
            key,
        }
    }
}

fn expect(r: &mut Reader, want: u8) -> Result<(), DecodeError> {
    let got = r.u8()?;
    if got == want {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "expected {:?}, got {:?}",
            want as char, got as char
        )))
    }
}

/// A tuple as a JSON object, and the columns whose unchanged value was not
/// sent (filled from `old` where the old row has them).
fn row(
    rel: &Relation,
    tuple: Vec<Datum>,
    old: Option<&Map<String, Value>>,
) -> (Map<String, Value>, Vec<String>) {
    let mut map = Map::new();
    let mut unchanged = Vec::new();
    for (column, datum) in rel.columns.iter().zip(tuple) {
        match datum {
            Datum::Null => {
                map.insert(column.name.clone(), Value::Null);
            }
            Datum::Text(text) => {
                map.insert(column.name.clone(), typed(column.type_oid, &text));
            }
            Datum::Unchanged => match old.and_then(|o| o.get(&column.name)) {
                Some(v) => {
                    map.insert(column.name.clone(), v.clone());
                }
                None => unchanged.push(column.name.clone()),
            },
        }
    }
    (map, unchanged)
}

/// A value in PostgreSQL's text form as JSON: numbers and booleans as
/// such, `numeric` as a string (it may not fit a double), `json`/`jsonb`
/// as JSON, `bytea` as base64, timestamps in RFC 3339, the rest as text.
pub fn typed(type_oid: u32, text: &[u8]) -> Value {
    let s = String::from_utf8_lossy(text);
    match type_oid {
        oid::BOOL => Value::Bool(s == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.into_owned())),
        oid::FLOAT4 | oid::FLOAT8 => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::from(f),
            _ => Value::String(s.into_owned()),
        },
        oid::JSON | oid::JSONB => {
            serde_json::from_slice(text).unwrap_or_else(|_| Value::String(s.into_owned()))
        }
        oid::BYTEA => match s.strip_prefix("\\x").and_then(|h| hex::decode(h).ok()) {
            Some(bytes) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => Value::String(s.into_owned()),
        },
        oid::TIMESTAMP | oid::TIMESTAMPTZ => Value::String(iso_timestamp(&s)),
        _ => Value::String(s.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16385u32.to_be_bytes());
        m.extend(b"public\0orders\0");
        m.push(b'd');
        m.extend(3u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 23u32), (0, "paid", 16), (0, "note", 25)] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    fn text(v: &str) -> Vec<u8> {
        let mut m = vec![b't'];
        m.extend((v.len() as u32).to_be_bytes());
        m.extend(v.as_bytes());
        m
    }

    #[test]
    fn relations_then_changes_decode_into_typed_rows() {
        let mut d = Decoder::default();
        assert!(d.decode(&relation_message()).unwrap().is_empty());

        let mut update = vec![b'U'];
        update.extend(16385u32.to_be_bytes());
        update.push(b'N');
        update.extend(3u16.to_be_bytes());
        update.extend(text("7"));
        update.extend(text("t"));
        update.push(b'u');
        let changes = d.decode(&update).unwrap();
        let c = &changes[0];
        assert_eq!(c.op, Op::Update);
        assert_eq!(
            c.after,
            Some(Map::from_iter([
                ("id".into(), json!(7)),
                ("paid".into(), json!(true))
            ]))
        );
        assert_eq!(c.unchanged, vec!["note".to_string()]);
        assert_eq!(c.key, vec![("id".to_string(), json!(7))]);
        assert_eq!(c.partition_key().as_deref(), Some("7"));

        let mut unknown = vec![b'I'];
        unknown.extend(99u32.to_be_bytes());
        assert!(d.decode(&unknown).is_err());
        assert!(d.decode(&[b'I', 0]).is_err());
    }

    #[test]
    fn values_are_typed_by_column_type() {
        assert_eq!(typed(oid::INT8, b"9007199254740993"), json!(9007199254740993i64));
        assert_eq!(typed(1700, b"12.50"), json!("12.50"));
        assert_eq!(typed(oid::FLOAT8, b"NaN"), json!("NaN"));
        assert_eq!(typed(oid::JSONB, br#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(typed(oid::BYTEA, b"\\x0102ff"), json!("AQL/"));
        assert_eq!(
            typed(oid::TIMESTAMPTZ, b"2026-12-07 10:00:00.25+00"),
            json!("2026-12-07T10:00:00.25Z")
        );
        assert_eq!(typed(25, b"hello"), json!("hello"));
    }
}
