//! Who may use the S3 API.
//!
//! Authentication: `s3s` checks SigV4 and SigV2 signatures (headers and
//! presigned URLs) against the secret [`Auth`] returns for the access key
//! id. Today the node's admin token is the secret for any key id, as for
//! the Lambda Invoke API, so `AWS_SECRET_ACCESS_KEY=<admin token>` is all
//! a client needs.
//!
//! Authorization: [`Access`] is the seam for keys the node will issue per
//! bucket (`gale keys create --bucket NAME [--read-only]`, the next step):
//! it will look the key id up, and allow only that bucket, and only reads
//! for a read-only key. Now every signed request is the admin principal
//! and may do everything; an unsigned one may do nothing.

use crate::auth::Tokens;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

/// The secret behind an access key id: the admin token for all of them.
pub struct Auth(pub Tokens);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, _access_key: &str) -> S3Result<SecretKey> {
        Ok(SecretKey::from(self.0.admin()))
    }
}

/// What a signed request may do.
pub struct Access;

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        match cx.credentials() {
            // The admin principal: every operation on every bucket.
            Some(_) => Ok(()),
            None => Err(s3_error!(
                AccessDenied,
                "the request is not signed: use the node's admin token as the secret access key"
            )),
        }
    }
}
