//! Sources: declared in the manifest, run under a lease with a checkpoint,
//! shown by `GET /v1/sources`; and a node that follows changes others make
//! in its store.

mod common;

use common::TestNode;
use gale_core::api::{SourceInfo, StoredEventInfo};
use gale_store::Expect;
use std::time::Duration;

const CLOCK: &str = r#"
[app]
name = "clocks"
[topics.ticks]
[sources.clock]
type = "schedule"
cron = "* * * * * *"
topic = "ticks"
[functions.listener]
source = "testbed.wasm"
[[functions.listener.events]]
topic = "ticks"
[functions.tick]
source = "testbed.wasm"
schedule = [{ cron = "0 0 1 1 *" }]
"#;

async fn sources(node: &TestNode) -> Vec<SourceInfo> {
    node.admin_get("/v1/sources").await
}

async fn ticks(node: &TestNode) -> Vec<StoredEventInfo> {
    node.admin_get("/v1/topics/ticks/events?limit=1000").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_sources_feed_their_topic_show_their_state_and_go_with_the_manifest() {
    let mut node = TestNode::start().await;
    node.deploy(CLOCK).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let all = sources(&node).await;
    let clock = all
        .iter()
        .find(|s| s.name == "clock")
        .expect("the clock is listed");
    let node_id = node.node.as_ref().unwrap().node_id.clone();
    assert_eq!(
        (clock.kind.as_str(), clock.topic.as_str(), clock.state.as_str()),
        ("schedule", "ticks", "running"),
        "{clock:?}"
    );
    assert_eq!(clock.app.as_deref(), Some("clocks"));
    assert_eq!(clock.node.as_deref(), Some(node_id.as_str()));
    assert!(clock.published >= 1, "{clock:?}");
    assert!(
        clock.position.is_some() && clock.last_error.is_none(),
        "{clock:?}"
    );
    // A function's schedule is a source too.
    let tick = all.iter().find(|s| s.name == "tick.schedule.0").expect("listed");
    assert_eq!(
        (tick.function.as_deref(), tick.topic.as_str()),
        (Some("tick"), "_schedule.tick.0")
    );

    // Each firing once, named by the source and its time; the subscriber got them.
    let before = ticks(&node).await;
    assert!(!before.is_empty());
    let ids: Vec<&str> = before.iter().map(|e| e.event["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("clock/")), "{ids:?}");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, ids);
    assert_eq!(before[0].event["source"], "/gale/sources/clock");
    node.logs("listener", 1).await;

    // Across a restart, the checkpoint holds: no firing twice.
    node.stop().await;
    let node = node.restart().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = ticks(&node).await;
    let mut times: Vec<&str> = after.iter().map(|e| e.event["id"].as_str().unwrap()).collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "a firing was published twice");
    assert!(n > before.len(), "the clock runs again after the restart");

    // Gone from the manifest: stopped, its checkpoint and lease dropped.
    let without = CLOCK.replace(
        "[sources.clock]\ntype = \"schedule\"\ncron = \"* * * * * *\"\ntopic = \"ticks\"\n",
        "",
    );
    node.deploy(&without).await.unwrap();
    assert!(sources(&node).await.iter().all(|s| s.name != "clock"));
    let meta = &node.node.as_ref().unwrap().stores().metadata;
    assert_eq!(meta.get("checkpoints/sources/clock").await.unwrap(), None);
    assert_eq!(meta.get("leases/sources/clock").await.unwrap(), None);
    let settled = ticks(&node).await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ticks(&node).await.len(),
        settled,
        "a removed source still publishes"
    );

    // A source must feed a topic that exists.
    let err = node
        .deploy(&CLOCK.replacen(
            "topic = \"ticks\"\n[functions",
            "topic = \"nowhere\"\n[functions",
            1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, gale_core::Code::TopicNotFound);
    assert!(err.message.contains("sources.clock.topic"), "{}", err.message);
}

/// What another node of a cluster would do: write to the store directly.
/// This node must follow without being told through its own API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_follows_changes_others_make_in_its_store() {
    let node = TestNode::start().await;
    let app = |greeting: &str| {
        format!(
            "[app]\nname = \"web\"\n[functions.page]\nsource = \"testbed.wasm\"\nenv = {{ GREETING = \"{greeting}\" }}\nhttp = [{{ route = \"GET /page/env\" }}, {{ route = \"GET /page/publish\" }}]\n"
        )
    };
    node.deploy(&app("one")).await.unwrap();
    node.deploy(&app("two")).await.unwrap();
    let (_, _, body) = node.get("/page/env").await;
    assert!(body.contains("GREETING=two"), "{body}");
    let stores = node.node.as_ref().unwrap().stores().clone();
    // The node reacts to a change within a burst window; give it time.
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    // Another node rolled the app back: routes follow.
    let entry = stores.metadata.get("apps/web").await.unwrap().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    record["functions"]["page"] = 1.into();
    stores
        .metadata
        .put(
            "apps/web",
            serde_json::to_vec(&record).unwrap(),
            Expect::Revision(entry.revision),
        )
        .await
        .unwrap();
    settle().await;
    let (_, _, body) = node.get("/page/env").await;
    assert!(body.contains("GREETING=one"), "{body}");
    assert_eq!(node.describe("page").await.version, 1);

    // Another node made a topic: functions may publish to it.
    let (status, _, body) = node.get("/page/publish?topic=made-elsewhere").await;
    assert_eq!(status, 400, "{body}");
    stores
        .topics
        .put_topic(
            "made-elsewhere",
            gale_store::TopicConfig {
                max_age_ms: 60_000,
                max_bytes: 1 << 20,
                dedup_window_ms: 60_000,
            },
        )
        .await
        .unwrap();
    settle().await;
    let (status, _, body) = node.get("/page/publish?topic=made-elsewhere").await;
    assert_eq!(status, 201, "{body}");

    // Another node issued a publish token: it works here.
    use sha2::Digest;
    let token = "galepub_made_elsewhere";
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let info = serde_json::json!({ "id": &hash[..12], "publish": ["made-elsewhere"], "created_at": 1 });
    stores
        .metadata
        .put(
            &format!("tokens/{hash}"),
            serde_json::to_vec(&info).unwrap(),
            Expect::Absent,
        )
        .await
        .unwrap();
    settle().await;
    let r = node
        .http
        .post(node.url("/_gale/topics/made-elsewhere/events"))
        .bearer_auth(token)
        .header("ce-specversion", "1.0")
        .header("ce-id", "e-1")
        .header("ce-source", "/elsewhere")
        .header("ce-type", "made")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}
