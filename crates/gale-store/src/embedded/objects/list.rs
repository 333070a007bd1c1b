//! Listing with S3's ListObjectsV2 semantics.
//!
//! Keys are read in batches in key order. With a delimiter, the first key
//! that rolls up into a common prefix ends its batch, and the next batch
//! starts past every key under that prefix: a prefix holding a great many
//! keys costs one seek, not a scan of its keys.

use super::index::{bucket_row, objects_in};
use crate::{ListQuery, Listing, Result};
use rusqlite::Connection;

/// Where a batch starts.
pub(super) struct Bound {
    pub key: Vec<u8>,
    pub inclusive: bool,
}

/// The least byte string above every string that starts with `prefix`
/// (`None` for the empty prefix, which every string starts with). Valid
/// UTF-8 has no `0xFF` byte, so bumping the last byte always works.
fn above_all_with(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The common prefix `key` rolls up into: up to and with the first
/// `delimiter` after `prefix`.
fn rolled_up<'k>(key: &'k str, prefix: &str, delimiter: &str) -> Option<&'k str> {
    if delimiter.is_empty() {
        return None;
    }
    let rest = key.strip_prefix(prefix)?;
    rest.find(delimiter)
        .map(|i| &key[..prefix.len() + i + delimiter.len()])
}

pub(in crate::embedded) fn list(c: &Connection, bucket: &str, q: &ListQuery) -> Result<Listing> {
    bucket_row(c, bucket)?;
    let mut out = Listing::default();
    if q.limit == 0 {
        return Ok(out);
    }
    let prefix = q.prefix.as_str();
    let delimiter = q.delimiter.as_deref().unwrap_or("");
    // Past every valid key: a lone 0xFF byte.
    let below = above_all_with(prefix.as_bytes()).unwrap_or_else(|| vec![0xFF]);
    let mut from = Bound {
        key: prefix.as_bytes().to_vec(),
        inclusive: true,
    };
    if let Some(after) = q.start_after.as_deref() {
        if rolled_up(after, prefix, delimiter) == Some(after) {
            // Continuing after a common prefix: skip its keys too.
            from.key = above_all_with(after.as_bytes()).unwrap_or_else(|| vec![0xFF]);
        } else if after.as_bytes() >= prefix.as_bytes() {
            from = Bound {
                key: after.as_bytes().to_vec(),
                inclusive: false,
            };
        }
    }
    let mut entries = 0;
    let mut last: Option<String> = None;
    'batches: loop {
        // One more than fits tells whether the listing is truncated.
        let want = q.limit - entries + 1;
        let rows = objects_in(c, bucket, &from, &below, want)?;
        let got = rows.len();
        let mut next = None;
        for meta in rows {
            if entries == q.limit {
                out.truncated = true;
                break 'batches;
            }
            entries += 1;
            if let Some(common) = rolled_up(&meta.key, prefix, delimiter) {
                let common = common.to_string();
                next = Some(Bound {
                    key: above_all_with(common.as_bytes()).unwrap_or_else(|| vec![0xFF]),
                    inclusive: true,
                });
                out.common_prefixes.push(common.clone());
                last = Some(common);
                break;
            }
            last = Some(meta.key.clone());
            next = Some(Bound {
                key: meta.key.as_bytes().to_vec(),
                inclusive: false,
            });
            out.objects.push(meta);
        }
        match next {
            // After a common prefix there may be more; after a short batch there is not.
            Some(bound) if bound.inclusive || got == want => from = bound,
            _ => break,
        }
    }
    if out.truncated {
        out.next_start_after = last;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_roll_ups() {
        assert_eq!(above_all_with(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(above_all_with(b""), None);
        assert_eq!(above_all_with("é".as_bytes()), Some(vec![0xC3, 0xAA]));
        assert_eq!(
            rolled_up("photos/2024/a.jpg", "photos/", "/"),
            Some("photos/2024/")
        );
        assert_eq!(rolled_up("photos/a.jpg", "photos/", "/"), None);
        assert_eq!(rolled_up("a--b--c", "", "--"), Some("a--"));
        assert_eq!(rolled_up("a/b", "", ""), None);
        assert_eq!(rolled_up("b/c", "a", "/"), None);
    }
}
