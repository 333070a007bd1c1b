//! Multipart uploads: parts are blobs referenced by the upload until it
//! completes (the object takes the listed parts' blobs, in order, without
//! copying a byte) or is aborted.

use super::super::engine_err;
use super::index::{Layout, add_refs, attrs_json, bucket_row, drop_refs, store, take_blob, user_meta};
use crate::objects::{MAX_PART_NUMBER, bare_etag, multipart_etag};
use crate::{
    Blob, Condition, NewEvent, ObjectAttrs, ObjectMeta, Page, PartInfo, Result, StoreError, UploadInfo,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::atomic::{AtomicU64, Ordering};

const UPLOAD_COLUMNS: &str = "id, bucket, key, content_type, user_meta, created_at";

fn upload_info(r: &rusqlite::Row) -> rusqlite::Result<UploadInfo> {
    Ok(UploadInfo {
        id: r.get(0)?,
        bucket: r.get(1)?,
        key: r.get(2)?,
        attrs: ObjectAttrs {
            content_type: r.get(3)?,
            user_meta: user_meta(&r.get::<_, String>(4)?),
        },
        created_at_ms: r.get::<_, i64>(5)? as u64,
    })
}

pub(in crate::embedded) fn upload(c: &Connection, id: &str) -> Result<Option<UploadInfo>> {
    c.prepare_cached(&format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], upload_info).optional())
        .map_err(engine_err)
}

fn existing(c: &Connection, id: &str) -> Result<UploadInfo> {
    upload(c, id)?.ok_or_else(|| StoreError::NoSuchUpload(id.to_string()))
}

/// A new upload's id: the start time and a count within its millisecond
/// first, so that one key's uploads sort in the order they started, then
/// random digits.
pub(in crate::embedded) fn new_id(now: u64) -> Result<String> {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let stamp = now << 16;
    let stamp = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(stamp.max(last + 1))
    }) {
        Ok(last) | Err(last) => stamp.max(last + 1),
    };
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| StoreError::Engine(format!("no random numbers: {e}")))?;
    Ok(format!("{stamp:016x}{}", hex::encode(random)))
}

pub(in crate::embedded) fn create(
    c: &Connection,
    id: &str,
    bucket: &str,
    key: &str,
    attrs: &ObjectAttrs,
    now: u64,
) -> Result<()> {
    bucket_row(c, bucket)?;
    c.prepare_cached(
        "INSERT INTO uploads (id, bucket, key, content_type, user_meta, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            bucket,
            key,
            attrs.content_type,
            attrs_json(attrs),
            now as i64
        ])
    })
    .map_err(engine_err)?;
    Ok(())
}

struct Part {
    number: u32,
    blob: String,
    size: u64,
    md5: [u8; 16],
}

fn parts(c: &Connection, upload: &str) -> Result<Vec<Part>> {
    c.prepare_cached("SELECT number, blob, size, md5 FROM upload_parts WHERE upload = ?1 ORDER BY number")
        .and_then(|mut s| {
            s.query_map([upload], |r| {
                let md5: Vec<u8> = r.get(3)?;
                Ok(Part {
                    number: r.get::<_, i64>(0)? as u32,
                    blob: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    md5: md5.try_into().unwrap_or_default(),
                })
            })?
            .collect()
        })
        .map_err(engine_err)
}

pub(in crate::embedded) fn put_part(
    c: &Connection,
    upload: &str,
    number: u32,
    blob: &Blob,
    now: u64,
    freed: &mut Vec<String>,
) -> Result<String> {
    if !(1..=MAX_PART_NUMBER).contains(&number) {
        return Err(StoreError::InvalidPartNumber(number));
    }
    existing(c, upload)?;
    take_blob(c, blob)?;
    let earlier: Option<(String, i64)> = c
        .prepare_cached("SELECT blob, size FROM upload_parts WHERE upload = ?1 AND number = ?2")
        .and_then(|mut s| {
            s.query_row(params![upload, number], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(engine_err)?;
    if let Some((id, size)) = earlier {
        drop_refs(c, &vec![(id, size as u64)], freed)?;
    }
    c.prepare_cached(
        "INSERT INTO upload_parts (upload, number, blob, size, md5, modified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(upload, number) DO UPDATE SET blob = excluded.blob, size = excluded.size,
             md5 = excluded.md5, modified_at = excluded.modified_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            upload,
            number,
            blob.id,
            blob.size as i64,
            &blob.md5[..],
            now as i64
        ])
    })
    .map_err(engine_err)?;
    Ok(hex::encode(blob.md5))
}

pub(in crate::embedded) fn abort(c: &Connection, upload: &str, freed: &mut Vec<String>) -> Result<()> {
    existing(c, upload)?;
    end(c, upload, freed)
}

/// Drops an upload and its parts' references.
fn end(c: &Connection, upload: &str, freed: &mut Vec<String>) -> Result<()> {
    let layout: Layout = parts(c, upload)?.into_iter().map(|p| (p.blob, p.size)).collect();
    drop_refs(c, &layout, freed)?;
    c.prepare_cached("DELETE FROM upload_parts WHERE upload = ?1")
        .and_then(|mut s| s.execute([upload]))
        .map_err(engine_err)?;
    c.prepare_cached("DELETE FROM uploads WHERE id = ?1")
        .and_then(|mut s| s.execute([upload]))
        .map_err(engine_err)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(in crate::embedded) fn complete(
    c: &Connection,
    upload: &str,
    listed: &[(u32, String)],
    min_part_size: u64,
    cond: &Condition,
    events: Vec<(String, NewEvent)>,
    now: u64,
    freed: &mut Vec<String>,
) -> Result<ObjectMeta> {
    let info = existing(c, upload)?;
    if listed.is_empty() {
        return Err(StoreError::NoParts);
    }
    if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(StoreError::InvalidPartOrder(upload.to_string()));
    }
    let uploaded = parts(c, upload)?;
    let mut chosen = Vec::with_capacity(listed.len());
    for (number, etag) in listed {
        let part = uploaded
            .binary_search_by_key(number, |p| p.number)
            .ok()
            .map(|i| &uploaded[i])
            .filter(|p| hex::encode(p.md5).eq_ignore_ascii_case(bare_etag(etag)))
            .ok_or_else(|| StoreError::InvalidPart {
                upload: upload.to_string(),
                part: *number,
            })?;
        chosen.push(part);
    }
    if let Some(small) = chosen[..chosen.len() - 1].iter().find(|p| p.size < min_part_size) {
        return Err(StoreError::EntityTooSmall {
            upload: upload.to_string(),
            part: small.number,
            size: small.size,
            min: min_part_size,
        });
    }
    let layout: Layout = chosen.iter().map(|p| (p.blob.clone(), p.size)).collect();
    let meta = ObjectMeta {
        size: layout.iter().map(|(_, s)| s).sum(),
        etag: multipart_etag(chosen.iter().map(|p| &p.md5)),
        parts: chosen.len() as u32,
        bucket: info.bucket,
        key: info.key,
        attrs: info.attrs,
        last_modified_ms: now,
    };
    // The object's references first, then the upload's go: listed parts
    // stay, the others are freed.
    add_refs(c, &layout)?;
    let meta = store(c, meta, &layout, cond, events, freed)?;
    end(c, upload, freed)?;
    Ok(meta)
}

pub(in crate::embedded) fn list_parts(
    c: &Connection,
    upload: &str,
    after: u32,
    limit: usize,
) -> Result<Page<PartInfo>> {
    existing(c, upload)?;
    let mut items: Vec<PartInfo> = c
        .prepare_cached(
            "SELECT number, size, md5, modified_at FROM upload_parts WHERE upload = ?1 AND number > ?2
             ORDER BY number LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![upload, after, limit as i64 + 1], |r| {
                Ok(PartInfo {
                    number: r.get::<_, i64>(0)? as u32,
                    size: r.get::<_, i64>(1)? as u64,
                    etag: hex::encode(r.get::<_, Vec<u8>>(2)?),
                    last_modified_ms: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect()
        })
        .map_err(engine_err)?;
    let truncated = items.len() > limit;
    items.truncate(limit);
    Ok(Page { items, truncated })
}

pub(in crate::embedded) fn list_uploads(
    c: &Connection,
    bucket: &str,
    prefix: &str,
    after: Option<&(String, Option<String>)>,
    limit: usize,
) -> Result<Page<UploadInfo>> {
    bucket_row(c, bucket)?;
    // Keys after the marker key, and that key's uploads after the marker id;
    // a key alone skips all of its own (no id sorts after U+10FFFF).
    let (after_key, after_id) = match after {
        Some((key, id)) => (Some(key.as_str()), id.as_deref().unwrap_or("\u{10FFFF}")),
        None => (None, ""),
    };
    let mut items: Vec<UploadInfo> = c
        .prepare_cached(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads
             WHERE bucket = ?1 AND substr(key, 1, length(?2)) = ?2
               AND (?3 IS NULL OR key > ?3 OR (key = ?3 AND id > ?4))
             ORDER BY key, id LIMIT ?5"
        ))
        .and_then(|mut s| {
            s.query_map(
                params![bucket, prefix, after_key, after_id, limit as i64 + 1],
                upload_info,
            )?
            .collect()
        })
        .map_err(engine_err)?;
    let truncated = items.len() > limit;
    items.truncate(limit);
    Ok(Page { items, truncated })
}
