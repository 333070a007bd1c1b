//! The S3-compatible API: buckets for unmodified AWS clients.
//!
//! Users already have boto3, the AWS CLI and every SDK; speaking S3 lets
//! them upload into Gale with no new client, and an upload is what most
//! often starts a serverless function. The protocol (routing, XML, SigV4
//! and SigV2, `aws-chunked` bodies) is the `s3s` crate's; this module maps
//! its operations onto [`Buckets`] and commits every change to an object
//! with its notification event ([`notify`]) in one transaction, through
//! [`Publisher::along`](crate::publisher::Publisher::along).
//!
//! It has a listener of its own: S3 clients address buckets by path or by
//! host name (`bucket.localhost`), and both would collide with the
//! gateway's user routes.
//!
//! - [`objects`]: buckets, objects, copies;
//! - [`listing`]: object listings, paged as S3 pages them;
//! - [`multipart`]: multipart uploads;
//! - [`body`]: receiving an upload, its checksums checked before it counts;
//! - [`notify`]: the notification events, S3's record in a CloudEvent;
//! - [`access`]: who may do what.

mod access;
mod body;
mod listing;
mod multipart;
mod objects;

use crate::NodeError;
use crate::buckets::Buckets;
use crate::keys::Keys;
use gale_store::StoreError;
use s3s::dto::*;
use s3s::host::{S3Host, VirtualHost};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The region Gale answers as: clients must sign for some region, and
/// this is the one they default to.
pub use crate::buckets::REGION;

/// The S3 API's state; cheap to clone.
#[derive(Clone)]
pub struct S3Api {
    buckets: Buckets,
    keys: Keys,
    /// Where the API listens, for virtual-host addressing.
    addr: SocketAddr,
}

/// The address of the client, handed from the listener to the operations
/// (for `sourceIPAddress` in notifications).
#[derive(Clone, Copy)]
struct ClientIp(IpAddr);

impl S3Api {
    pub fn new(buckets: Buckets, keys: Keys, addr: SocketAddr) -> S3Api {
        S3Api { buckets, keys, addr }
    }

    fn service(self) -> s3s::service::S3Service {
        let hosts = Hosts::new(self.addr);
        let auth = access::Auth(self.keys.clone());
        let access = access::Access(self.keys.clone());
        let mut builder = s3s::service::S3ServiceBuilder::new(self);
        builder.set_host(hosts);
        builder.set_auth(auth);
        builder.set_access(access);
        builder.build()
    }
}

/// Serves until `shutdown`, then lets open connections finish their
/// requests for up to 10 s, as the gateway does.
pub async fn serve(api: S3Api, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let service = api.service();
    super::listener::serve(listener, shutdown, move |peer| {
        let (service, ip) = (service.clone(), ClientIp(peer.ip()));
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ip);
            let service = service.clone();
            async move { service.call(req.map(s3s::Body::from)).await }
        })
    })
    .await
}

/// Virtual-host addressing: `BUCKET.localhost` (and `BUCKET.` + the
/// listen host when it is a name) name a bucket; any other host, an IP
/// address above all, is path-style. `s3s`'s own parsers take an unknown
/// host for a bucket name, which would turn `127.0.0.1:8082` into one.
struct Hosts {
    domains: Vec<String>,
}

impl Hosts {
    fn new(addr: SocketAddr) -> Hosts {
        let mut domains = vec!["localhost".to_string()];
        if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
            domains.push(addr.ip().to_string());
        }
        Hosts { domains }
    }
}

impl S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if name.parse::<IpAddr>().is_err() {
            for domain in &self.domains {
                if let Some(bucket) = name
                    .strip_suffix(domain.as_str())
                    .and_then(|b| b.strip_suffix('.'))
                {
                    return Ok(VirtualHost::new(domain.as_str()).with_bucket(bucket));
                }
            }
        }
        Ok(VirtualHost::new(name))
    }
}

/// S3's error for what went wrong.
fn s3_error(e: NodeError) -> S3Error {
    use S3ErrorCode as C;
    let (code, message) = match &e {
        NodeError::Store(s) => match s {
            StoreError::UnknownBucket(_) => (C::NoSuchBucket, s.to_string()),
            StoreError::BucketNotEmpty(_) => (C::BucketNotEmpty, s.to_string()),
            StoreError::NoSuchKey { .. } => (C::NoSuchKey, s.to_string()),
            StoreError::PreconditionFailed { .. } => (C::PreconditionFailed, s.to_string()),
            StoreError::QuotaExceeded { .. } => (C::EntityTooLarge, s.to_string()),
            StoreError::InvalidRange { .. } => (C::InvalidRange, s.to_string()),
            StoreError::NoSuchUpload(_) => (C::NoSuchUpload, s.to_string()),
            StoreError::InvalidPartNumber(_) => (C::InvalidArgument, s.to_string()),
            StoreError::InvalidPart { .. } | StoreError::NoParts => (C::InvalidPart, s.to_string()),
            StoreError::InvalidPartOrder(_) => (C::InvalidPartOrder, s.to_string()),
            StoreError::EntityTooSmall { .. } => (C::EntityTooSmall, s.to_string()),
            StoreError::BadDigest(_) | StoreError::DigestMismatch { .. } => (C::BadDigest, s.to_string()),
            _ => {
                tracing::error!(error = %e, "S3 request failed in storage");
                (
                    C::InternalError,
                    "storage failed; the node's log says why".to_string(),
                )
            }
        },
        NodeError::User(u) => (C::InvalidArgument, u.message.clone()),
        _ => {
            tracing::error!(error = %e, "S3 request failed");
            (C::InternalError, e.to_string())
        }
    };
    S3Error::with_message(code, message)
}

fn store_error(e: StoreError) -> S3Error {
    s3_error(NodeError::Store(e))
}

/// Every operation of this increment; the rest answer `NotImplemented`.
#[async_trait::async_trait]
impl S3 for S3Api {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.create_bucket_op(req).await
    }
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.head_bucket_op(req).await
    }
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.list_buckets_op(req).await
    }
    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.delete_bucket_op(req).await
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket_exists(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.put_object_op(req).await
    }
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.get_object_op(req).await
    }
    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.head_object_op(req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.delete_object_op(req).await
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.delete_objects_op(req).await
    }
    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.copy_object_op(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_objects_v2_op(req).await
    }
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_objects_op(req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_multipart_upload_op(req).await
    }
    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_op(req).await
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.upload_part_copy_op(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_multipart_upload_op(req).await
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_multipart_upload_op(req).await
    }
    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_parts_op(req).await
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_multipart_uploads_op(req).await
    }
}
