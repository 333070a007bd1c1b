//! Who may use a bucket, as a user meets it with real clients (boto3 and
//! the AWS CLI, run as the Python scripts under `tests/s3/`): keys issued
//! for some buckets (read-write or read-only), revoked keys, wrong secrets,
//! the admin token; and presigned URLs (SigV2, as boto3 presigns by
//! default, and SigV4) fetched by a client that signs nothing.

mod common;

use common::{TestNode, s3_script};

#[tokio::test(flavor = "multi_thread")]
async fn issued_keys_reach_only_their_buckets_and_revoked_or_wrong_ones_nothing() {
    let node = TestNode::start().await;
    s3_script(&node, "keys.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_urls_work_unsigned_until_they_expire_or_are_tampered_with() {
    let node = TestNode::start().await;
    s3_script(&node, "presign.py").await;
}
