//! Receiving an upload: streamed into a blob, its checksums checked.
//!
//! `s3s` strips `aws-chunked` framing and checks signatures of signed
//! chunks, but it does not check the checksums a client sends
//! (`x-amz-checksum-*` headers, the same names as trailers after an
//! `aws-chunked` body, `Content-MD5`). Clients send them by default since
//! boto3 1.36, and an upload whose bytes differ from them must store
//! nothing. So the bytes are hashed on their way into the blob, and a
//! mismatch drops the writer before it finishes: no blob, no object, no
//! notification.

use super::store_error;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use gale_store::{Blob, Objects};
use http::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::dto::{Checksum, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders, s3_error};

/// The largest object a single PUT (or part) may carry, as in S3.
pub const MAX_PUT: u64 = 5 << 30;

/// The checksums a client sent with an upload, in headers.
#[derive(Default)]
pub struct Declared {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    /// `Content-MD5`, base64.
    pub md5: Option<String>,
}

/// Streams `body` into a new blob and checks it against the declared
/// checksums and those in the trailers named by `x-amz-trailer`.
pub async fn receive(
    objects: &dyn Objects,
    body: Option<StreamingBlob>,
    headers: &HeaderMap,
    trailers: Option<TrailingHeaders>,
    declared: Declared,
) -> S3Result<Blob> {
    let md5 = match &declared.md5 {
        None => None,
        Some(b64) => Some(
            STANDARD
                .decode(b64.trim())
                .ok()
                .filter(|m| m.len() == 16)
                .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not the base64 of 16 bytes"))?,
        ),
    };
    let trailer = headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let wants = |name: &str, value: &Option<String>| value.is_some() || trailer.as_deref() == Some(name);
    let mut hasher = ChecksumHasher::default();
    if wants("x-amz-checksum-crc32", &declared.crc32) {
        hasher.crc32 = Some(Default::default());
    }
    if wants("x-amz-checksum-crc32c", &declared.crc32c) {
        hasher.crc32c = Some(Default::default());
    }
    if wants("x-amz-checksum-crc64nvme", &declared.crc64nvme) {
        hasher.crc64nvme = Some(Default::default());
    }
    if wants("x-amz-checksum-sha1", &declared.sha1) {
        hasher.sha1 = Some(Default::default());
    }
    if wants("x-amz-checksum-sha256", &declared.sha256) {
        hasher.sha256 = Some(Default::default());
    }

    let mut writer = objects.blob_writer().await.map_err(store_error)?;
    let mut size = 0u64;
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()))?;
            size += chunk.len() as u64;
            if size > MAX_PUT {
                return Err(s3_error!(EntityTooLarge, "a single upload holds at most 5 GiB"));
            }
            hasher.update(&chunk);
            writer.write(&chunk).await.map_err(store_error)?;
        }
    }
    let sent = trailers.and_then(|t| t.read(from_headers)).unwrap_or_default();
    let got = hasher.finalize();
    let pairs = [
        (
            "CRC32",
            declared.crc32.or(sent.checksum_crc32),
            got.checksum_crc32,
        ),
        (
            "CRC32C",
            declared.crc32c.or(sent.checksum_crc32c),
            got.checksum_crc32c,
        ),
        (
            "CRC64NVME",
            declared.crc64nvme.or(sent.checksum_crc64nvme),
            got.checksum_crc64nvme,
        ),
        ("SHA1", declared.sha1.or(sent.checksum_sha1), got.checksum_sha1),
        (
            "SHA256",
            declared.sha256.or(sent.checksum_sha256),
            got.checksum_sha256,
        ),
    ];
    for (name, expected, computed) in pairs {
        if let (Some(expected), Some(computed)) = (expected, computed)
            && expected.trim() != computed
        {
            // Dropping the writer unfinished leaves nothing behind.
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("the {name} you specified did not match the calculated checksum"),
            ));
        }
    }
    let blob = writer.finish().await.map_err(store_error)?;
    if let Some(md5) = md5
        && md5 != blob.md5
    {
        // Never passed to a write, the blob is reclaimed by storage.
        return Err(s3_error!(
            BadDigest,
            "the Content-MD5 you specified did not match what was received"
        ));
    }
    Ok(blob)
}

/// The checksums in trailing headers.
fn from_headers(h: &HeaderMap) -> Checksum {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Checksum {
        checksum_crc32: get("x-amz-checksum-crc32"),
        checksum_crc32c: get("x-amz-checksum-crc32c"),
        checksum_crc64nvme: get("x-amz-checksum-crc64nvme"),
        checksum_sha1: get("x-amz-checksum-sha1"),
        checksum_sha256: get("x-amz-checksum-sha256"),
        checksum_type: None,
    }
}
