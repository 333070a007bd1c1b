//! Multipart uploads: how clients send anything large (boto3 and the CLI
//! switch to them at 8 MiB), parts in any order, often in parallel.
//!
//! Completing one is what notifies (`ObjectCreated:CompleteMultipartUpload`),
//! and the notification names the object's size and entity tag before the
//! commit: both follow from the parts the client lists, whose tags storage
//! checks in the same transaction.

use super::body::{self, Declared};
use super::listing::url_encode;
use super::objects::{attrs, check_key, check_read, copy_source, etag, origin, timestamp};
use super::{S3Api, s3_error, store_error};
use crate::buckets::notify::{self, Notice};
use gale_store::objects::{MAX_PART_NUMBER, S3_MIN_PART_SIZE, bare_etag, multipart_etag};
use gale_store::{ByteRange, UploadInfo};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

/// The most parts or uploads one listing returns, as in S3.
const MAX_LISTED: usize = 1000;

impl S3Api {
    /// The upload `id`, if it is one of `bucket`'s to `key`.
    async fn upload_of(&self, bucket: &str, key: &str, id: &str) -> S3Result<UploadInfo> {
        match self.buckets.objects.upload(id).await.map_err(store_error)? {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u),
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    pub(super) async fn create_multipart_upload_op(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        check_key(&i.key)?;
        let id = self
            .buckets
            .objects
            .create_upload(&i.bucket, &i.key, attrs(i.content_type, i.metadata))
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part_op(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let number = part_number(input.part_number)?;
        self.upload_of(&input.bucket, &input.key, &input.upload_id)
            .await?;
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
        let tag = objects
            .put_part(&input.upload_id, number, blob)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    /// A part copied from (a range of) an existing object: its bytes are
    /// read and written as a new blob, so the part does not depend on the
    /// source staying as it is.
    pub(super) async fn upload_part_copy_op(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let i = req.input;
        let number = part_number(i.part_number)?;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let (bucket, key) = copy_source(&i.copy_source)?;
        let range = i.copy_source_range.as_deref().map(copy_range).transpose()?;
        let objects = &*self.buckets.objects;
        let mut read = objects
            .get_object(bucket, key, range)
            .await
            .map_err(store_error)?
            .ok_or_else(|| s3_error!(NoSuchKey, "the copy's source does not exist"))?;
        check_read(
            &read.meta,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|_| s3_error!(PreconditionFailed))?;
        let mut writer = objects.blob_writer().await.map_err(store_error)?;
        while let Some(chunk) = read.body.next_chunk().await.map_err(store_error)? {
            writer.write(&chunk).await.map_err(store_error)?;
        }
        let blob = writer.finish().await.map_err(store_error)?;
        let tag = objects
            .put_part(&i.upload_id, number, blob)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(timestamp(crate::clock::now_ms())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn complete_multipart_upload_op(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (request_id, ip) = origin(&req);
        let i = &req.input;
        let upload = self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let cond = super::objects::write_condition(i.if_match.as_ref(), i.if_none_match.as_ref())?;
        let mut listed = Vec::new();
        for p in i.multipart_upload.iter().flat_map(|m| m.parts.iter().flatten()) {
            let number = p.part_number.and_then(|n| u32::try_from(n).ok());
            let tag = p.e_tag.as_ref().map(|e| bare_etag(e.value()).to_string());
            match (number, tag) {
                (Some(n), Some(t)) => listed.push((n, t)),
                _ => {
                    return Err(s3_error!(
                        InvalidPart,
                        "every part names its number and entity tag"
                    ));
                }
            }
        }
        // Size and entity tag of the object to be, for its notification.
        let stored = self.all_parts(&upload.id).await?;
        let mut size = 0;
        let mut md5s = Vec::with_capacity(listed.len());
        for (number, tag) in &listed {
            let part = stored
                .iter()
                .find(|p| p.number == *number && p.etag == *tag)
                .ok_or_else(|| {
                    s3_error!(InvalidPart, "part {number} was not uploaded with that entity tag")
                })?;
            size += part.size;
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(&part.etag, &mut md5)
                .map_err(|_| s3_error!(InternalError, "a stored part's entity tag is not an MD5"))?;
            md5s.push(md5);
        }
        let tag = multipart_etag(md5s.iter());
        let event = notify::event(Notice {
            bucket: &i.bucket,
            key: &i.key,
            name: "ObjectCreated:CompleteMultipartUpload",
            object: Some((size, &tag)),
            request_id: &request_id,
            source_ip: &ip,
            principal: notify::PRINCIPAL,
        });
        let objects = &self.buckets.objects;
        let meta = self
            .buckets
            .publisher
            .along(vec![event], async |events| {
                objects
                    .complete_upload(&upload.id, listed, S3_MIN_PART_SIZE, cond, events)
                    .await
            })
            .await
            .map_err(s3_error)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            e_tag: Some(etag(&meta.etag)),
            location: Some(format!("/{}/{}", i.bucket, i.key)),
            ..Default::default()
        }))
    }

    async fn all_parts(&self, upload: &str) -> S3Result<Vec<gale_store::PartInfo>> {
        let mut parts = Vec::new();
        loop {
            let after = parts.last().map_or(0, |p: &gale_store::PartInfo| p.number);
            let page = self
                .buckets
                .objects
                .list_parts(upload, after, MAX_LISTED)
                .await
                .map_err(store_error)?;
            parts.extend(page.items);
            if !page.truncated {
                return Ok(parts);
            }
        }
    }

    pub(super) async fn abort_multipart_upload_op(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let i = &req.input;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        self.buckets
            .objects
            .abort_upload(&i.upload_id)
            .await
            .map_err(store_error)?;
        Ok(S3Response::with_status(
            AbortMultipartUploadOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }

    pub(super) async fn list_parts_op(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let i = req.input;
        self.upload_of(&i.bucket, &i.key, &i.upload_id).await?;
        let after = u32::try_from(i.part_number_marker.unwrap_or(0))
            .map_err(|_| s3_error!(InvalidArgument, "part-number-marker is a part number"))?;
        let max = i
            .max_parts
            .map_or(MAX_LISTED, |n| (n.max(0) as usize).min(MAX_LISTED));
        let page = self
            .buckets
            .objects
            .list_parts(&i.upload_id, after, max)
            .await
            .map_err(store_error)?;
        let next = page.items.last().map(|p| p.number as i32);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(page.truncated),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            parts: Some(
                page.items
                    .into_iter()
                    .map(|p| Part {
                        e_tag: Some(etag(&p.etag)),
                        last_modified: Some(timestamp(p.last_modified_ms)),
                        part_number: Some(p.number as i32),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    pub(super) async fn list_multipart_uploads_op(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = req.input;
        let max = i
            .max_uploads
            .map_or(MAX_LISTED, |n| (n.max(0) as usize).min(MAX_LISTED));
        let after = i.key_marker.clone().map(|k| (k, i.upload_id_marker.clone()));
        let prefix = i.prefix.clone().unwrap_or_default();
        let page = self
            .buckets
            .objects
            .list_uploads(&i.bucket, &prefix, after, max)
            .await
            .map_err(store_error)?;
        let encode = i
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let last = page.items.last().map(|u| (u.key.clone(), u.id.clone()));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: Some(url_encode(prefix, encode)),
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            next_key_marker: last.as_ref().map(|(k, _)| url_encode(k.clone(), encode)),
            next_upload_id_marker: last.map(|(_, id)| id),
            max_uploads: Some(max as i32),
            is_truncated: Some(page.truncated),
            uploads: Some(
                page.items
                    .into_iter()
                    .map(|u| MultipartUpload {
                        initiated: Some(timestamp(u.created_at_ms)),
                        key: Some(url_encode(u.key, encode)),
                        upload_id: Some(u.id),
                        ..Default::default()
                    })
                    .collect(),
            ),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

/// `x-amz-copy-source-range`: `bytes=FIRST-LAST`, both given.
fn copy_range(range: &str) -> S3Result<ByteRange> {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .map(|(start, end)| ByteRange::Span { start, end })
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "x-amz-copy-source-range must look like bytes=FIRST-LAST"
            )
        })
}

/// A part number as S3 allows it, 1 to 10000.
fn part_number(n: i32) -> S3Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| s3_error!(InvalidArgument, "part numbers go from 1 to 10000"))
}
