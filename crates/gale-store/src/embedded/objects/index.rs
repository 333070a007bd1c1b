//! The object index: buckets, objects and blob references, as SQL on the
//! event database. Functions that change something run inside a job of
//! the writer thread and push the blobs they free onto `freed`; the caller
//! removes their files once the job has committed.

use super::super::{engine_err, topics};
use crate::objects::bare_etag;
use crate::{
    Blob, BucketConfig, BucketInfo, Condition, CopyFrom, NewEvent, ObjectAttrs, ObjectMeta, Result,
    StoreError,
};
use rusqlite::{Connection, OptionalExtension, params};

pub(in crate::embedded) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS buckets (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        max_bytes INTEGER,
        expire_after_ms INTEGER,
        objects INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS objects (
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        content_type TEXT,
        user_meta TEXT NOT NULL,
        modified_at INTEGER NOT NULL,
        parts INTEGER NOT NULL,
        layout BLOB NOT NULL,
        PRIMARY KEY (bucket, key)
    );
    CREATE INDEX IF NOT EXISTS objects_modified ON objects (bucket, modified_at);
    CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        md5 BLOB NOT NULL,
        refs INTEGER NOT NULL DEFAULT 0,
        loose_since INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS blobs_loose ON blobs (loose_since) WHERE loose_since IS NOT NULL;
    CREATE TABLE IF NOT EXISTS blob_trash (id TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        content_type TEXT,
        user_meta TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS uploads_key ON uploads (bucket, key, id);
    CREATE TABLE IF NOT EXISTS upload_parts (
        upload TEXT NOT NULL,
        number INTEGER NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        md5 BLOB NOT NULL,
        modified_at INTEGER NOT NULL,
        PRIMARY KEY (upload, number)
    ) WITHOUT ROWID;
";

/// The blobs of an object, in order, with their sizes.
pub(super) type Layout = Vec<(String, u64)>;

/// Blob ids are this many hex digits.
pub(super) const ID_LEN: usize = 32;

/// A layout as stored: per blob its id, then its size as eight bytes big-endian.
pub(super) fn encode_layout(layout: &Layout) -> Vec<u8> {
    let mut out = Vec::with_capacity(layout.len() * (ID_LEN + 8));
    for (id, size) in layout {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&size.to_be_bytes());
    }
    out
}

pub(super) fn decode_layout(raw: &[u8]) -> Result<Layout> {
    let damaged = || StoreError::Engine("an object's blob list is damaged".into());
    if !raw.len().is_multiple_of(ID_LEN + 8) {
        return Err(damaged());
    }
    raw.chunks(ID_LEN + 8)
        .map(|c| {
            let id = std::str::from_utf8(&c[..ID_LEN]).map_err(|_| damaged())?;
            let size = u64::from_be_bytes(c[ID_LEN..].try_into().map_err(|_| damaged())?);
            Ok((id.to_string(), size))
        })
        .collect()
}

pub(super) fn attrs_json(attrs: &ObjectAttrs) -> String {
    serde_json::to_string(&attrs.user_meta).unwrap_or_else(|_| "[]".into())
}

pub(super) fn user_meta(json: &str) -> Vec<(String, String)> {
    serde_json::from_str(json).unwrap_or_default()
}

/// A bucket's counters and quota.
pub(super) struct BucketRow {
    pub max_bytes: Option<u64>,
    pub objects: u64,
    pub bytes: u64,
}

pub(super) fn bucket_row(c: &Connection, name: &str) -> Result<BucketRow> {
    c.prepare_cached("SELECT max_bytes, objects, bytes FROM buckets WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| {
                Ok(BucketRow {
                    max_bytes: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                    objects: r.get::<_, i64>(1)? as u64,
                    bytes: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()
        })
        .map_err(engine_err)?
        .ok_or_else(|| StoreError::UnknownBucket(name.to_string()))
}

pub(in crate::embedded) fn put_bucket(
    c: &Connection,
    name: &str,
    config: BucketConfig,
    now: u64,
) -> Result<bool> {
    let existed = c
        .prepare_cached("SELECT 1 FROM buckets WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .map_err(engine_err)?;
    c.prepare_cached(
        "INSERT INTO buckets (name, created_at, max_bytes, expire_after_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET max_bytes = excluded.max_bytes,
             expire_after_ms = excluded.expire_after_ms",
    )
    .and_then(|mut s| {
        s.execute(params![
            name,
            now as i64,
            config.max_bytes.map(|v| v as i64),
            config.expire_after_ms.map(|v| v as i64)
        ])
    })
    .map_err(engine_err)?;
    Ok(!existed)
}

const BUCKET_COLUMNS: &str = "name, created_at, max_bytes, expire_after_ms, objects, bytes";

fn bucket_info(r: &rusqlite::Row) -> rusqlite::Result<BucketInfo> {
    Ok(BucketInfo {
        name: r.get(0)?,
        created_at_ms: r.get::<_, i64>(1)? as u64,
        config: BucketConfig {
            max_bytes: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
            expire_after_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        },
        objects: r.get::<_, i64>(4)? as u64,
        bytes: r.get::<_, i64>(5)? as u64,
    })
}

pub(in crate::embedded) fn bucket(c: &Connection, name: &str) -> Result<Option<BucketInfo>> {
    c.prepare_cached(&format!("SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?1"))
        .and_then(|mut s| s.query_row([name], bucket_info).optional())
        .map_err(engine_err)
}

pub(in crate::embedded) fn buckets(c: &Connection) -> Result<Vec<BucketInfo>> {
    c.prepare_cached(&format!("SELECT {BUCKET_COLUMNS} FROM buckets ORDER BY name"))
        .and_then(|mut s| s.query_map([], bucket_info)?.collect())
        .map_err(engine_err)
}

pub(in crate::embedded) fn delete_bucket(c: &Connection, name: &str, freed: &mut Vec<String>) -> Result<()> {
    if bucket_row(c, name)?.objects > 0 {
        return Err(StoreError::BucketNotEmpty(name.to_string()));
    }
    let uploads: Vec<String> = c
        .prepare_cached("SELECT id FROM uploads WHERE bucket = ?1")
        .and_then(|mut s| s.query_map([name], |r| r.get(0))?.collect())
        .map_err(engine_err)?;
    for upload in uploads {
        super::multipart::abort(c, &upload, freed)?;
    }
    c.prepare_cached("DELETE FROM buckets WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .map_err(engine_err)?;
    Ok(())
}

/// Registers a finished blob, not yet used by anything.
pub(in crate::embedded) fn add_blob(c: &Connection, blob: &Blob, now: u64) -> Result<()> {
    c.prepare_cached("INSERT INTO blobs (id, size, md5, loose_since) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![blob.id, blob.size as i64, &blob.md5[..], now as i64]))
        .map_err(engine_err)?;
    Ok(())
}

/// Gives a write its blob: it must be finished and unused, and be what
/// the caller says it is.
pub(super) fn take_blob(c: &Connection, blob: &Blob) -> Result<()> {
    let taken = c
        .prepare_cached(
            "UPDATE blobs SET refs = 1, loose_since = NULL
             WHERE id = ?1 AND size = ?2 AND md5 = ?3 AND loose_since IS NOT NULL",
        )
        .and_then(|mut s| s.execute(params![blob.id, blob.size as i64, &blob.md5[..]]))
        .map_err(engine_err)?;
    if taken == 0 {
        return Err(StoreError::UnknownBlob(blob.id.clone()));
    }
    Ok(())
}

/// Drops a blob that no write took (the write failed): true if it was unused.
pub(in crate::embedded) fn discard_blob(c: &Connection, id: &str) -> Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM blobs WHERE id = ?1 AND loose_since IS NOT NULL")
        .and_then(|mut s| s.execute([id]))
        .map_err(engine_err)?;
    if n > 0 {
        trash(c, id)?;
    }
    Ok(n > 0)
}

/// Blobs finished before `before` and never used, dropped.
pub(in crate::embedded) fn discard_loose(c: &Connection, before: u64) -> Result<Vec<String>> {
    let ids: Vec<String> = c
        .prepare_cached("DELETE FROM blobs WHERE loose_since < ?1 RETURNING id")
        .and_then(|mut s| s.query_map([before as i64], |r| r.get(0))?.collect())
        .map_err(engine_err)?;
    for id in &ids {
        trash(c, id)?;
    }
    Ok(ids)
}

fn trash(c: &Connection, id: &str) -> Result<()> {
    c.prepare_cached("INSERT OR IGNORE INTO blob_trash (id) VALUES (?1)")
        .and_then(|mut s| s.execute([id]))
        .map_err(engine_err)?;
    Ok(())
}

/// Forgets trashed blobs whose files are gone.
pub(in crate::embedded) fn forget_trash(c: &Connection, ids: &[String]) -> Result<()> {
    let mut s = c
        .prepare_cached("DELETE FROM blob_trash WHERE id = ?1")
        .map_err(engine_err)?;
    for id in ids {
        s.execute([id]).map_err(engine_err)?;
    }
    Ok(())
}

pub(super) fn add_refs(c: &Connection, layout: &Layout) -> Result<()> {
    let mut s = c
        .prepare_cached("UPDATE blobs SET refs = refs + 1 WHERE id = ?1")
        .map_err(engine_err)?;
    for (id, _) in layout {
        if s.execute([id]).map_err(engine_err)? == 0 {
            return Err(StoreError::Engine(format!(
                "blob {id} of an object is not registered"
            )));
        }
    }
    Ok(())
}

/// Drops one reference to each blob; those no longer used go to the
/// trash in this transaction and onto `freed`.
pub(super) fn drop_refs(c: &Connection, layout: &Layout, freed: &mut Vec<String>) -> Result<()> {
    let mut dec = c
        .prepare_cached("UPDATE blobs SET refs = refs - 1 WHERE id = ?1 RETURNING refs")
        .map_err(engine_err)?;
    let mut gone = c
        .prepare_cached("DELETE FROM blobs WHERE id = ?1")
        .map_err(engine_err)?;
    for (id, _) in layout {
        let refs: Option<i64> = dec.query_row([id], |r| r.get(0)).optional().map_err(engine_err)?;
        if refs == Some(0) {
            gone.execute([id]).map_err(engine_err)?;
            trash(c, id)?;
            freed.push(id.clone());
        }
    }
    Ok(())
}

/// An object as stored, with its blobs.
pub(super) struct Stored {
    pub meta: ObjectMeta,
    pub layout: Layout,
}

const OBJECT_COLUMNS: &str = "key, size, etag, content_type, user_meta, modified_at, parts";

fn object_meta(bucket: &str, r: &rusqlite::Row) -> rusqlite::Result<ObjectMeta> {
    Ok(ObjectMeta {
        bucket: bucket.to_string(),
        key: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        etag: r.get(2)?,
        attrs: ObjectAttrs {
            content_type: r.get(3)?,
            user_meta: user_meta(&r.get::<_, String>(4)?),
        },
        last_modified_ms: r.get::<_, i64>(5)? as u64,
        parts: r.get::<_, i64>(6)? as u32,
    })
}

/// The object at `key`; [`StoreError::UnknownBucket`] if the bucket is missing.
pub(super) fn object(c: &Connection, bucket: &str, key: &str) -> Result<Option<Stored>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS}, layout FROM objects WHERE bucket = ?1 AND key = ?2"
        ))
        .and_then(|mut s| {
            s.query_row([bucket, key], |r| {
                Ok((object_meta(bucket, r)?, r.get::<_, Vec<u8>>(7)?))
            })
            .optional()
        })
        .map_err(engine_err)?;
    match row {
        Some((meta, raw)) => Ok(Some(Stored {
            meta,
            layout: decode_layout(&raw)?,
        })),
        None => {
            bucket_row(c, bucket)?;
            Ok(None)
        }
    }
}

pub(super) fn check_condition(
    cond: &Condition,
    current: Option<&ObjectMeta>,
    bucket: &str,
    key: &str,
) -> Result<()> {
    let holds = match cond {
        Condition::Always => true,
        Condition::Absent => current.is_none(),
        Condition::Etag(etag) => current.is_some_and(|m| m.etag.eq_ignore_ascii_case(bare_etag(etag))),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

/// Appends an operation's events (with dedup, as an outbox).
pub(super) fn publish(c: &Connection, events: Vec<(String, NewEvent)>, now: u64) -> Result<()> {
    for (topic, event) in events {
        topics::publish(c, &topic, vec![event], true, now)?;
    }
    Ok(())
}

/// Makes `meta` (whose blobs the caller has referenced already) the object
/// at its key: checks the condition and the quota, replaces the previous
/// version, keeps the bucket's counters, appends the events.
pub(super) fn store(
    c: &Connection,
    meta: ObjectMeta,
    layout: &Layout,
    cond: &Condition,
    events: Vec<(String, NewEvent)>,
    freed: &mut Vec<String>,
) -> Result<ObjectMeta> {
    let (bucket, key) = (meta.bucket.as_str(), meta.key.as_str());
    let counters = bucket_row(c, bucket)?;
    let old = object(c, bucket, key)?;
    check_condition(cond, old.as_ref().map(|o| &o.meta), bucket, key)?;
    let old_size = old.as_ref().map_or(0, |o| o.meta.size);
    let needed = (counters.bytes - old_size.min(counters.bytes)).saturating_add(meta.size);
    if let Some(max_bytes) = counters.max_bytes
        && needed > max_bytes
    {
        return Err(StoreError::QuotaExceeded {
            bucket: bucket.to_string(),
            max_bytes,
            needed,
        });
    }
    c.prepare_cached(
        "INSERT INTO objects (bucket, key, size, etag, content_type, user_meta, modified_at, parts, layout)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
             content_type = excluded.content_type, user_meta = excluded.user_meta,
             modified_at = excluded.modified_at, parts = excluded.parts, layout = excluded.layout",
    )
    .and_then(|mut s| {
        s.execute(params![
            bucket,
            key,
            meta.size as i64,
            meta.etag,
            meta.attrs.content_type,
            attrs_json(&meta.attrs),
            meta.last_modified_ms as i64,
            meta.parts as i64,
            encode_layout(layout)
        ])
    })
    .map_err(engine_err)?;
    c.prepare_cached("UPDATE buckets SET objects = ?2, bytes = ?3 WHERE name = ?1")
        .and_then(|mut s| {
            s.execute(params![
                bucket,
                (counters.objects + u64::from(old.is_none())) as i64,
                needed as i64
            ])
        })
        .map_err(engine_err)?;
    if let Some(old) = old {
        drop_refs(c, &old.layout, freed)?;
    }
    publish(c, events, meta.last_modified_ms)?;
    Ok(meta)
}

pub(in crate::embedded) fn put(
    c: &Connection,
    meta: ObjectMeta,
    blob: &Blob,
    cond: &Condition,
    events: Vec<(String, NewEvent)>,
    freed: &mut Vec<String>,
) -> Result<ObjectMeta> {
    bucket_row(c, &meta.bucket)?;
    take_blob(c, blob)?;
    store(c, meta, &vec![(blob.id.clone(), blob.size)], cond, events, freed)
}

#[allow(clippy::too_many_arguments)]
pub(in crate::embedded) fn copy(
    c: &Connection,
    from: &CopyFrom,
    bucket: &str,
    key: &str,
    attrs: Option<ObjectAttrs>,
    cond: &Condition,
    events: Vec<(String, NewEvent)>,
    now: u64,
    freed: &mut Vec<String>,
) -> Result<ObjectMeta> {
    let source = object(c, &from.bucket, &from.key)?.ok_or_else(|| StoreError::NoSuchKey {
        bucket: from.bucket.clone(),
        key: from.key.clone(),
    })?;
    if let Some(etag) = &from.if_match {
        check_condition(
            &Condition::Etag(etag.clone()),
            Some(&source.meta),
            &from.bucket,
            &from.key,
        )?;
    }
    add_refs(c, &source.layout)?;
    let meta = ObjectMeta {
        bucket: bucket.to_string(),
        key: key.to_string(),
        attrs: attrs.unwrap_or(source.meta.attrs),
        last_modified_ms: now,
        ..source.meta
    };
    store(c, meta, &source.layout, cond, events, freed)
}

pub(in crate::embedded) fn delete(
    c: &Connection,
    bucket: &str,
    key: &str,
    events: Vec<(String, NewEvent)>,
    now: u64,
    freed: &mut Vec<String>,
) -> Result<Option<ObjectMeta>> {
    let Some(old) = object(c, bucket, key)? else {
        return Ok(None);
    };
    c.prepare_cached("DELETE FROM objects WHERE bucket = ?1 AND key = ?2")
        .and_then(|mut s| s.execute([bucket, key]))
        .map_err(engine_err)?;
    c.prepare_cached("UPDATE buckets SET objects = objects - 1, bytes = bytes - ?2 WHERE name = ?1")
        .and_then(|mut s| s.execute(params![bucket, old.meta.size as i64]))
        .map_err(engine_err)?;
    drop_refs(c, &old.layout, freed)?;
    publish(c, events, now)?;
    Ok(Some(old.meta))
}

pub(in crate::embedded) fn head(c: &Connection, bucket: &str, key: &str) -> Result<Option<ObjectMeta>> {
    Ok(object(c, bucket, key)?.map(|o| o.meta))
}

pub(in crate::embedded) fn expired(
    c: &Connection,
    bucket: &str,
    before: u64,
    limit: usize,
) -> Result<Vec<ObjectMeta>> {
    bucket_row(c, bucket)?;
    c.prepare_cached(&format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND modified_at < ?2
         ORDER BY modified_at LIMIT ?3"
    ))
    .and_then(|mut s| {
        s.query_map(params![bucket, before as i64, limit as i64], |r| {
            object_meta(bucket, r)
        })?
        .collect()
    })
    .map_err(engine_err)
}

/// Rows of a listing: objects of `bucket` with keys in a range, in order.
pub(super) fn objects_in(
    c: &Connection,
    bucket: &str,
    from: &super::list::Bound,
    below: &[u8],
    limit: usize,
) -> Result<Vec<ObjectMeta>> {
    let op = if from.inclusive { ">=" } else { ">" };
    c.prepare_cached(&format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key {op} ?2 AND key < ?3
         ORDER BY key LIMIT ?4"
    ))
    .and_then(|mut s| {
        s.query_map(
            params![bucket, RawText(&from.key), RawText(below), limit as i64],
            |r| object_meta(bucket, r),
        )?
        .collect()
    })
    .map_err(engine_err)
}

/// Bytes bound as text without checking that they are UTF-8: bounds of
/// key ranges may end inside a character, and SQLite compares text
/// byte by byte.
pub(super) struct RawText<'a>(pub &'a [u8]);

impl rusqlite::ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.0),
        ))
    }
}
