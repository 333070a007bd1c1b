//! Listings: ListObjectsV2 and ListObjects (v1), paged the way S3 pages
//! them (continuation tokens, markers, common prefixes), keys URL-encoded
//! when the client asks for `encoding-type=url`.

use super::objects::{etag, owner, timestamp};
use super::{S3Api, store_error};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gale_store::{ListQuery, ObjectMeta};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

/// The most entries one listing returns (and keys one DeleteObjects
/// takes), as in S3.
pub(super) const MAX_KEYS: usize = 1000;

fn listed(meta: ObjectMeta, encode: bool) -> Object {
    Object {
        e_tag: Some(etag(&meta.etag)),
        key: Some(url_encode(meta.key, encode)),
        last_modified: Some(timestamp(meta.last_modified_ms)),
        size: Some(meta.size as i64),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        owner: Some(owner()),
        ..Default::default()
    }
}

/// A key or prefix as `encoding-type=url` asks for it.
pub(super) fn url_encode(s: String, encode: bool) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    if encode {
        percent_encoding::utf8_percent_encode(&s, KEEP).to_string()
    } else {
        s
    }
}

fn wants_url(e: Option<&EncodingType>) -> bool {
    e.is_some_and(|e| e.as_str() == EncodingType::URL)
}

fn limit(max_keys: Option<i32>) -> usize {
    max_keys.map_or(MAX_KEYS, |n| (n.max(0) as usize).min(MAX_KEYS))
}

impl S3Api {
    pub(super) async fn list_objects_v2_op(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let after = match &i.continuation_token {
            Some(token) => Some(
                URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(InvalidArgument, "the continuation token is not one Gale gave")
                    })?,
            ),
            None => i.start_after.clone(),
        };
        let max = limit(i.max_keys);
        let listing = self
            .list(&i.bucket, i.prefix.clone(), i.delimiter.clone(), after, max)
            .await?;
        let encode = wants_url(i.encoding_type.as_ref());
        let contents: Vec<Object> = listing.objects.into_iter().map(|o| listed(o, encode)).collect();
        let prefixes: Vec<CommonPrefix> = listing
            .common_prefixes
            .into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(url_encode(p, encode)),
            })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            prefix: Some(url_encode(i.prefix.unwrap_or_default(), encode)),
            delimiter: i.delimiter.map(|d| url_encode(d, encode)),
            start_after: i.start_after.map(|s| url_encode(s, encode)),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            continuation_token: i.continuation_token,
            next_continuation_token: listing.next_start_after.map(|k| URL_SAFE_NO_PAD.encode(k)),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn list_objects_op(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        let max = limit(i.max_keys);
        let listing = self
            .list(
                &i.bucket,
                i.prefix.clone(),
                i.delimiter.clone(),
                i.marker.clone(),
                max,
            )
            .await?;
        let encode = wants_url(i.encoding_type.as_ref());
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            contents: Some(listing.objects.into_iter().map(|o| listed(o, encode)).collect()),
            common_prefixes: Some(
                listing
                    .common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(url_encode(p, encode)),
                    })
                    .collect(),
            ),
            prefix: Some(url_encode(i.prefix.unwrap_or_default(), encode)),
            delimiter: i.delimiter.map(|d| url_encode(d, encode)),
            marker: Some(url_encode(i.marker.unwrap_or_default(), encode)),
            next_marker: listing.next_start_after.map(|k| url_encode(k, encode)),
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        start_after: Option<String>,
        limit: usize,
    ) -> S3Result<gale_store::Listing> {
        if limit == 0 {
            self.bucket_exists(bucket).await?;
            return Ok(gale_store::Listing::default());
        }
        let query = ListQuery {
            prefix: prefix.unwrap_or_default(),
            delimiter: delimiter.filter(|d| !d.is_empty()),
            start_after,
            limit,
        };
        self.buckets
            .objects
            .list_objects(bucket, query)
            .await
            .map_err(store_error)
    }
}
