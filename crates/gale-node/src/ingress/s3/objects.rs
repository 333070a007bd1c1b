//! Buckets and objects: S3's operations on them, over [`Buckets`](crate::buckets::Buckets).
//!
//! Every operation that changes an object builds its notification before
//! the write and passes it along, so that the object and its event are
//! committed together or not at all.

use super::body::{self, Declared};
use super::{ClientIp, S3Api, s3_error, store_error};
use crate::buckets::notify::{self, Notice};
use gale_core::buckets::valid_bucket;
use gale_store::objects::bare_etag;
use gale_store::{ByteRange, Condition, CopyFrom, ObjectAttrs, ObjectMeta, ObjectWrite};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};
use std::time::{Duration, UNIX_EPOCH};

/// The longest key S3 allows, in bytes.
const MAX_KEY: usize = 1024;

pub(super) fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Whole seconds since the epoch: HTTP dates carry no less.
fn seconds(t: &Timestamp) -> i64 {
    let mut buf = Vec::new();
    let _ = t.format(TimestampFormat::EpochSeconds, &mut buf);
    std::str::from_utf8(&buf)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |s| s.floor() as i64)
}

pub(super) fn etag(bare: &str) -> ETag {
    ETag::Strong(bare.to_string())
}

pub(super) fn attrs(content_type: Option<String>, metadata: Option<Metadata>) -> ObjectAttrs {
    let mut user_meta: Vec<(String, String)> = metadata.unwrap_or_default().into_iter().collect();
    user_meta.sort();
    ObjectAttrs {
        content_type,
        user_meta,
    }
}

fn metadata(attrs: &ObjectAttrs) -> Option<Metadata> {
    (!attrs.user_meta.is_empty()).then(|| attrs.user_meta.iter().cloned().collect())
}

pub(super) fn check_key(key: &str) -> S3Result<()> {
    if key.len() > MAX_KEY {
        return Err(s3_error!(KeyTooLongError, "a key is at most 1024 bytes"));
    }
    Ok(())
}

/// The condition of a write, from `If-None-Match: *` and `If-Match`.
pub(super) fn write_condition(
    if_match: Option<&IfMatch>,
    if_none_match: Option<&IfNoneMatch>,
) -> S3Result<Condition> {
    match (if_match, if_none_match) {
        (None, None) => Ok(Condition::Always),
        (None, Some(c)) if c.is_any() => Ok(Condition::Absent),
        (Some(ETagCondition::ETag(e)), None) => Ok(Condition::Etag(e.value().to_string())),
        _ => Err(s3_error!(
            NotImplemented,
            "writes take If-None-Match: * or If-Match: <etag>, one of them"
        )),
    }
}

/// The ids a notification names: this request, and the client's address.
pub(super) fn origin<T>(req: &S3Request<T>) -> (String, String) {
    let ip = req
        .extensions
        .get::<ClientIp>()
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.0.to_string());
    (crate::http::request_id(), ip)
}

fn matches(cond: &ETagCondition, bare: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => bare_etag(e.value()) == bare,
    }
}

/// S3's read preconditions: `If-Match` and `If-Unmodified-Since` fail
/// with 412, `If-None-Match` and `If-Modified-Since` with 304 (each of a
/// pair ignored when the first is present and holds, as in RFC 9110).
pub(super) fn check_read(
    meta: &ObjectMeta,
    if_match: Option<&IfMatch>,
    if_none_match: Option<&IfNoneMatch>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = (meta.last_modified_ms / 1000) as i64;
    match (if_match, if_unmodified_since) {
        (Some(c), _) if !matches(c, &meta.etag) => return Err(s3_error!(PreconditionFailed)),
        (None, Some(t)) if modified > seconds(t) => return Err(s3_error!(PreconditionFailed)),
        _ => {}
    }
    match (if_none_match, if_modified_since) {
        (Some(c), _) if matches(c, &meta.etag) => Err(s3_error!(NotModified)),
        (None, Some(t)) if modified <= seconds(t) => Err(s3_error!(NotModified)),
        _ => Ok(()),
    }
}

/// The bucket and key a copy reads.
pub(super) fn copy_source(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(
            NotImplemented,
            "copies name their source as bucket/key"
        )),
    }
}

pub(super) fn owner() -> Owner {
    Owner {
        display_name: Some(notify::PRINCIPAL.into()),
        id: Some(notify::PRINCIPAL.into()),
    }
}

impl S3Api {
    pub(super) async fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        match self.buckets.get(bucket).await.map_err(s3_error)? {
            Some(_) => Ok(()),
            None => Err(s3_error!(NoSuchBucket)),
        }
    }

    pub(super) async fn create_bucket_op(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = &req.input.bucket;
        if !valid_bucket(name) {
            return Err(s3_error!(
                InvalidBucketName,
                "{}",
                gale_core::buckets::BUCKET_NAME_RULE
            ));
        }
        // `put` would also reset an existing bucket's settings (its manifest's).
        if self.buckets.get(name).await.map_err(s3_error)?.is_some() {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        self.buckets
            .put(name, gale_store::BucketConfig::default())
            .await
            .map_err(s3_error)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    pub(super) async fn head_bucket_op(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket_exists(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(super::REGION.into()),
            ..Default::default()
        }))
    }

    pub(super) async fn list_buckets_op(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.buckets.list().await.map_err(s3_error)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        creation_date: Some(timestamp(b.created_at_ms)),
                        name: Some(b.name),
                        bucket_region: Some(super::REGION.into()),
                    })
                    .collect(),
            ),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    pub(super) async fn delete_bucket_op(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.buckets.delete(&req.input.bucket).await.map_err(s3_error)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    pub(super) async fn put_object_op(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (request_id, ip) = origin(&req);
        let S3Request {
            input,
            method,
            headers,
            trailing_headers,
            ..
        } = req;
        // A browser form upload (presigned POST) arrives here too; S3 names it apart.
        let name = if method == http::Method::POST {
            "ObjectCreated:Post"
        } else {
            "ObjectCreated:Put"
        };
        check_key(&input.key)?;
        let cond = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let declared = Declared {
            crc32: input.checksum_crc32,
            crc32c: input.checksum_crc32c,
            crc64nvme: input.checksum_crc64nvme,
            sha1: input.checksum_sha1,
            sha256: input.checksum_sha256,
            md5: input.content_md5,
        };
        let objects = &*self.buckets.objects;
        let blob = body::receive(objects, input.body, &headers, trailing_headers, declared).await?;
        let size = blob.size;
        let md5 = hex::encode(blob.md5);
        let event = notify::event(Notice {
            bucket: &input.bucket,
            key: &input.key,
            name,
            object: Some((size, &md5)),
            request_id: &request_id,
            source_ip: &ip,
            principal: notify::PRINCIPAL,
        });
        let write = ObjectWrite {
            blob,
            attrs: attrs(input.content_type, input.metadata),
        };
        let meta = self
            .buckets
            .publisher
            .along(vec![event], async |events| {
                objects
                    .put_object(&input.bucket, &input.key, write, cond, events)
                    .await
            })
            .await
            .map_err(s3_error)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            size: Some(meta.size as i64),
            ..Default::default()
        }))
    }

    pub(super) async fn get_object_op(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let i = &req.input;
        if i.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "reading one part of an object is not supported"
            ));
        }
        let range = i.range.map(|r| match r {
            Range::Int {
                first,
                last: Some(last),
            } => ByteRange::Span {
                start: first,
                end: last,
            },
            Range::Int { first, last: None } => ByteRange::From(first),
            Range::Suffix { length } => ByteRange::Last(length),
        });
        let read = self
            .buckets
            .objects
            .get_object(&i.bucket, &i.key, range)
            .await
            .map_err(store_error)?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        check_read(
            &read.meta,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        let meta = read.meta;
        let (start, end) = (read.range.start, read.range.end);
        // A reader need not be `Sync`, a response body must: a task reads,
        // the body takes from a channel (and dropping it ends the task).
        let mut reader = read.body;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let next = match reader.next_chunk().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => return,
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        // The `response-*` overrides a signed request (a presigned
        // download link above all) may ask for, as S3 honors them.
        let i = req.input;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            accept_ranges: Some("bytes".into()),
            content_length: Some((end - start) as i64),
            content_range: range.map(|_| format!("bytes {start}-{}/{}", end - 1, meta.size)),
            content_type: i
                .response_content_type
                .or_else(|| meta.attrs.content_type.clone()),
            content_disposition: i.response_content_disposition,
            cache_control: i.response_cache_control,
            content_encoding: i.response_content_encoding,
            content_language: i.response_content_language,
            expires: i.response_expires,
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata(&meta.attrs),
            parts_count: (meta.parts > 0).then_some(meta.parts as i32),
            ..Default::default()
        }))
    }

    pub(super) async fn head_object_op(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = &req.input;
        let meta = self
            .buckets
            .objects
            .head_object(&i.bucket, &i.key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        check_read(
            &meta,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: Some(meta.size as i64),
            content_type: meta.attrs.content_type.clone(),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata(&meta.attrs),
            parts_count: (meta.parts > 0).then_some(meta.parts as i32),
            ..Default::default()
        }))
    }

    pub(super) async fn delete_object_op(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (request_id, ip) = origin(&req);
        let i = &req.input;
        let event = notify::event(Notice {
            bucket: &i.bucket,
            key: &i.key,
            name: "ObjectRemoved:Delete",
            object: None,
            request_id: &request_id,
            source_ip: &ip,
            principal: notify::PRINCIPAL,
        });
        let objects = &self.buckets.objects;
        self.buckets
            .publisher
            .along(vec![event], async |events| {
                objects.delete_object(&i.bucket, &i.key, events).await
            })
            .await
            .map_err(s3_error)?;
        Ok(S3Response::with_status(
            DeleteObjectOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }

    pub(super) async fn delete_objects_op(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let (request_id, ip) = origin(&req);
        let i = &req.input;
        if i.delete.objects.len() > super::listing::MAX_KEYS {
            return Err(s3_error!(MalformedXML, "one request deletes at most 1000 keys"));
        }
        let deletes: Vec<(String, Vec<_>)> = i
            .delete
            .objects
            .iter()
            .map(|o| {
                let event = notify::event(Notice {
                    bucket: &i.bucket,
                    key: &o.key,
                    name: "ObjectRemoved:Delete",
                    object: None,
                    request_id: &request_id,
                    source_ip: &ip,
                    principal: notify::PRINCIPAL,
                });
                (o.key.clone(), vec![event])
            })
            .collect();
        let all: Vec<_> = deletes.iter().flat_map(|(_, e)| e.clone()).collect();
        let objects = &self.buckets.objects;
        // The checks and meters of `along` count every event; storage
        // appends only those of keys that held an object.
        self.buckets
            .publisher
            .along(all, async |_| objects.delete_objects(&i.bucket, deletes).await)
            .await
            .map_err(s3_error)?;
        let quiet = i.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then(|| {
                i.delete
                    .objects
                    .iter()
                    .map(|o| DeletedObject {
                        key: Some(o.key.clone()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn copy_object_op(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (request_id, ip) = origin(&req);
        let i = &req.input;
        check_key(&i.key)?;
        let (bucket, key) = copy_source(&i.copy_source)?;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && bucket == i.bucket.as_str() && key == i.key.as_str() {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object to itself needs the REPLACE metadata directive"
            ));
        }
        let new_attrs = replace.then(|| attrs(i.content_type.clone(), i.metadata.clone()));
        let asked = match &i.copy_source_if_match {
            None => None,
            Some(ETagCondition::ETag(e)) => Some(bare_etag(e.value()).to_string()),
            Some(ETagCondition::Any) => None,
        };
        let objects = &self.buckets.objects;
        // The notification names the copy's size and entity tag, known
        // only from the source: read it, then copy it only if it is still
        // that object; retry if it changed meanwhile.
        let mut attempts = 0;
        let meta = loop {
            attempts += 1;
            let source = objects
                .head_object(bucket, key)
                .await
                .map_err(store_error)?
                .ok_or_else(|| s3_error!(NoSuchKey, "the copy's source does not exist"))?;
            check_read(
                &source,
                i.copy_source_if_match.as_ref(),
                i.copy_source_if_none_match.as_ref(),
                i.copy_source_if_modified_since.as_ref(),
                i.copy_source_if_unmodified_since.as_ref(),
            )
            .map_err(|_| s3_error!(PreconditionFailed))?;
            let event = notify::event(Notice {
                bucket: &i.bucket,
                key: &i.key,
                name: "ObjectCreated:Copy",
                object: Some((source.size, &source.etag)),
                request_id: &request_id,
                source_ip: &ip,
                principal: notify::PRINCIPAL,
            });
            let from = CopyFrom {
                bucket: bucket.to_string(),
                key: key.to_string(),
                if_match: Some(source.etag.clone()),
            };
            let copied = self
                .buckets
                .publisher
                .along(vec![event], async |events| {
                    objects
                        .copy_object(
                            from,
                            &i.bucket,
                            &i.key,
                            new_attrs.clone(),
                            Condition::Always,
                            events,
                        )
                        .await
                })
                .await;
            match copied {
                Err(crate::NodeError::Store(gale_store::StoreError::PreconditionFailed { .. }))
                    if asked.is_none() && attempts < 3 => {}
                other => break other.map_err(s3_error)?,
            }
        };
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(timestamp(meta.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}
