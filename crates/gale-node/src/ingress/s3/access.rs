//! Who may use the S3 API.
//!
//! Authentication: `s3s` checks SigV4 and SigV2 signatures (headers and
//! presigned URLs) against the secret [`Auth`] returns for the access key
//! id: an issued key's own secret, a process function's derived one, or,
//! for any other id, the node's admin token (see `crate::keys`).
//!
//! Authorization: [`Access`] looks the key id up again and lets an issued
//! key use only its buckets, and a read-only key only read. Making and
//! deleting buckets takes the admin token; listing buckets takes any key.
//! An unsigned request may do nothing.

use crate::keys::Keys;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

/// The secret behind an access key id.
pub struct Auth(pub Keys);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        Ok(SecretKey::from(self.0.secret(access_key).0))
    }
}

/// What a signed request may do.
pub struct Access(pub Keys);

/// Operations that change nothing.
fn reads(op: &str) -> bool {
    op.starts_with("Get") || op.starts_with("Head") || op.starts_with("List")
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "the request is not signed: sign it with a key from `gale keys create`, or with the node's admin token as the secret"
            ));
        };
        let (_, access) = self.0.secret(&credentials.access_key);
        if access == crate::keys::Access::Admin {
            return Ok(());
        }
        let op = cx.s3_op().name();
        let allowed = match cx.s3_path() {
            S3Path::Root => op == "ListBuckets",
            S3Path::Bucket { .. } if op == "CreateBucket" || op == "DeleteBucket" => false,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => {
                access.allows(bucket, !reads(op)) && copy_source_readable(cx, &access)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(s3_error!(
                AccessDenied,
                "key {} may not {op} here; `gale keys ls` shows what each key may use",
                credentials.access_key
            ))
        }
    }
}

/// A copy reads its source: the key must be allowed to read that bucket too.
fn copy_source_readable(cx: &S3AccessContext<'_>, access: &crate::keys::Access) -> bool {
    let Some(source) = cx
        .headers()
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let source = source.trim_start_matches('/');
    let bucket = source.split('/').next().unwrap_or_default();
    access.allows(bucket, false)
}
