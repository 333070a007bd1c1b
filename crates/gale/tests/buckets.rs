//! Buckets as a user meets them: the S3 API with real clients (boto3 and
//! the AWS CLI, run as the Python scripts under `tests/s3/`), and the
//! notification every acknowledged change leaves on the bucket's topic.

mod common;

use common::{TestNode, s3_script};

#[tokio::test(flavor = "multi_thread")]
async fn boto3_round_trips_lists_copies_deletes_and_notifies_once_per_change() {
    let node = TestNode::start().await;
    s3_script(&node, "boto3_api.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_copies_lists_and_removes() {
    let node = TestNode::start().await;
    s3_script(&node, "aws_cli.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_chunked_uploads_with_trailing_checksums_are_verified() {
    let node = TestNode::start().await;
    s3_script(&node, "chunked.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buckets_expire_after_deletes_old_objects_with_a_notification() {
    let node = TestNode::start().await;
    s3_script(&node, "expiry.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_parts_copy_ranges_of_existing_objects() {
    let node = TestNode::start().await;
    s3_script(&node, "part_copy.py").await;
}
