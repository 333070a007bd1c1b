//! Buckets as a user meets them: the S3 API with real clients (boto3 and
//! the AWS CLI, run as the Python scripts under `tests/s3/`), and the
//! notification every acknowledged change leaves on the bucket's topic.

mod common;

use common::TestNode;
use std::path::PathBuf;
use std::process::Command;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3")
}

/// Runs a script of `tests/s3` against the node, as an AWS user would
/// configure a client; panics with its output if it fails.
async fn run(node: &TestNode, script: &str) {
    let mut cmd = Command::new("python3");
    cmd.arg(scripts().join(script))
        .current_dir(scripts())
        .env("AWS_ACCESS_KEY_ID", "anything")
        .env("AWS_SECRET_ACCESS_KEY", &node.token)
        .env("AWS_ENDPOINT_URL", &node.s3)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("GALE_ADMIN", &node.admin)
        .env("GALE_TOKEN", &node.token)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REQUEST_CHECKSUM_CALCULATION")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python3 runs (boto3 and awscli: pip install boto3 awscli)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_round_trips_lists_copies_deletes_and_notifies_once_per_change() {
    let node = TestNode::start().await;
    run(&node, "boto3_api.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_copies_lists_and_removes() {
    let node = TestNode::start().await;
    run(&node, "aws_cli.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_chunked_uploads_with_trailing_checksums_are_verified() {
    let node = TestNode::start().await;
    run(&node, "chunked.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buckets_expire_after_deletes_old_objects_with_a_notification() {
    let node = TestNode::start().await;
    run(&node, "expiry.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_parts_copy_ranges_of_existing_objects() {
    let node = TestNode::start().await;
    run(&node, "part_copy.py").await;
}
