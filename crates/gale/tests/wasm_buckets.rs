//! Wasm functions use buckets through `gale:buckets` (`gale_sdk::buckets`):
//! an upload through the S3 API triggers a handler that reads it and
//! writes a result, notified as any put (so it triggers the next
//! function); a bucket the manifest does not grant is refused with the
//! manifest key to add.

mod common;

use common::{TestNode, s3_script};
use std::time::Duration;

const MANIFEST: &str = r#"
[app]
name = "pics"
[buckets.uploads]
[buckets.results]
[buckets.elsewhere]
[functions.shout]
source = "gale_test_handler.wasm"
buckets = ["results"]
[[functions.shout.bucket]]
bucket = "uploads"
max_attempts = 1
[functions.after]
source = "gale_test_handler.wasm"
[[functions.after.bucket]]
bucket = "results"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_triggers_a_wasm_function_that_writes_a_result_only_where_granted_and_chains() {
    let node = TestNode::start().await;
    node.deploy(MANIFEST).await.unwrap();
    s3_script(&node, "wasm_buckets.py").await;

    // The second upload (under `deny/`) made the function write to a
    // bucket its manifest does not grant: that invocation failed, naming
    // the bucket and the key to add.
    let mut denied = None;
    for _ in 0..200 {
        let logs = node.logs("shout", 1).await;
        denied = logs
            .into_iter()
            .find(|l| l.error.as_deref().is_some_and(|e| e.contains("elsewhere")));
        if denied.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let denied = denied.expect("the write to `elsewhere` failed its invocation");
    let error = denied.error.unwrap();
    assert!(
        error.contains("may not use bucket `elsewhere`") && error.contains(r#"buckets = ["elsewhere"]"#),
        "{error}"
    );
    let ok = node.logs("shout", 2).await;
    assert!(
        ok.iter()
            .any(|l| l.stdout.contains("wrote results/docs/hello world.txt")),
        "{ok:?}"
    );
    // The put was notified like any other: it triggered the function
    // watching `results`, which read what `shout` wrote.
    let after = node.logs("after", 1).await;
    assert!(
        after
            .iter()
            .any(|l| l.stdout.contains("saw results/docs/hello world.txt: HELLO, GALE")),
        "{after:?}"
    );
    // Nothing landed in the bucket it was refused.
    let notified: Vec<serde_json::Value> = node.admin_get("/v1/topics/_bucket.elsewhere/events").await;
    assert!(notified.is_empty(), "{notified:?}");
}

/// An HTTP function (`wasi:http/proxy` with `gale:http/handler`) imports
/// `gale:buckets` too: it writes and reads objects of its granted bucket,
/// each write notified, and is refused any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_functions_use_granted_buckets_too() {
    let node = TestNode::start().await;
    node.deploy(
        "[app]\nname = \"notes\"\n[buckets.notes]\n[buckets.secret]\n[functions.sdk]\n\
         source = \"gale_test_http_sdk.wasm\"\nbuckets = [\"notes\"]\n\
         http = [{ route = \"/sdk/{*rest}\" }]\n",
    )
    .await
    .unwrap();
    let object = |method: reqwest::Method, bucket: &str, body: &'static str| {
        node.http
            .request(
                method,
                node.url(&format!("/sdk/object?bucket={bucket}&key=a.txt")),
            )
            .body(body)
            .send()
    };
    let r = object(reqwest::Method::PUT, "notes", "a note").await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.text().await.unwrap();
    let r = object(reqwest::Method::GET, "notes", "").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a note");

    let r = object(reqwest::Method::PUT, "secret", "no").await.unwrap();
    assert_eq!(r.status(), 403);
    let said = r.text().await.unwrap();
    assert!(
        said.contains(r#"add `buckets = ["secret"]` to [functions.sdk]"#),
        "{said}"
    );
    let r = object(reqwest::Method::GET, "secret", "").await.unwrap();
    assert_eq!(r.status(), 403);

    let notified: Vec<serde_json::Value> = node.admin_get("/v1/topics/_bucket.notes/events").await;
    assert_eq!(notified.len(), 1, "{notified:?}");
    let record = &notified[0]["event"]["data"];
    assert_eq!(record["eventName"], "ObjectCreated:Put");
    assert_eq!(record["s3"]["object"]["eTag"], etag.as_str());
    assert_eq!(record["userIdentity"]["principalId"], "sdk");
    let secret: Vec<serde_json::Value> = node.admin_get("/v1/topics/_bucket.secret/events").await;
    assert!(secret.is_empty(), "{secret:?}");
}
