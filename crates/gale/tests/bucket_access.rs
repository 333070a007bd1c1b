//! Who may use a bucket, as a user meets it with real clients (boto3 and
//! the AWS CLI, run as the Python scripts under `tests/s3/`): keys issued
//! for some buckets (read-write or read-only), revoked keys, wrong secrets,
//! the admin token; and presigned URLs (SigV2, as boto3 presigns by
//! default, and SigV4) fetched by a client that signs nothing.

mod common;

use common::TestNode;
use std::path::PathBuf;
use std::process::Command;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/s3")
}

/// Runs a script of `tests/s3` against the node, configured as an operator
/// would (any access key id, the admin token as the secret; the scripts
/// issue their own keys through the admin API); panics with its output if
/// it fails.
async fn run(node: &TestNode, script: &str) {
    let mut cmd = Command::new("python3");
    cmd.arg(scripts().join(script))
        .current_dir(scripts())
        .env("AWS_ACCESS_KEY_ID", "operator")
        .env("AWS_SECRET_ACCESS_KEY", &node.token)
        .env("AWS_ENDPOINT_URL", &node.s3)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("GALE_ADMIN", &node.admin)
        .env("GALE_TOKEN", &node.token)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
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
async fn issued_keys_reach_only_their_buckets_and_revoked_or_wrong_ones_nothing() {
    let node = TestNode::start().await;
    run(&node, "keys.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_urls_work_unsigned_until_they_expire_or_are_tampered_with() {
    let node = TestNode::start().await;
    run(&node, "presign.py").await;
}
