//! Events as a user meets them: publishing CloudEvents, subscribed
//! functions, retries, dead letters, ordering.

mod common;

use common::TestNode;
use gale_core::api::{InvocationLog, Outcome, StoredEventInfo, TopicInfo};
use std::time::Duration;

/// An app with `[topics]` and testbed functions subscribed by `extra` tables.
fn app(topics: &[&str], functions: &[(&str, &str)]) -> String {
    let mut m = String::from("[app]\nname = \"shop\"\n");
    for t in topics {
        m.push_str(&format!("[topics.{t}]\n"));
    }
    for (name, extra) in functions {
        m.push_str(&format!(
            "[functions.{name}]\nsource = \"testbed.wasm\"\n{extra}\n"
        ));
    }
    m
}

impl TestNode {
    /// Publishes one binary-mode CloudEvent through the gateway.
    async fn publish(&self, topic: &str, id: &str, ty: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self
            .http
            .post(self.url(&format!("/_gale/topics/{topic}/events")))
            .bearer_auth(&self.token)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/tests")
            .header("ce-type", ty)
            .header("content-type", "application/json");
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.body(format!("{{\"order\":\"{id}\"}}")).send().await.unwrap()
    }

    /// Waits until `function`'s logs name `n` handled events, and returns the logs.
    async fn event_logs(&self, function: &str, n: usize) -> Vec<InvocationLog> {
        for _ in 0..200 {
            let logs: Vec<InvocationLog> = self
                .admin_get(&format!("/v1/functions/{function}/logs?limit=1000"))
                .await;
            if logs.iter().map(|l| l.events.len()).sum::<usize>() >= n {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{function} did not handle {n} events in time");
    }

    async fn dead_letters(&self, topic: &str, n: usize) -> Vec<StoredEventInfo> {
        for _ in 0..200 {
            let events: Vec<StoredEventInfo> = self.admin_get(&format!("/v1/topics/{topic}/events")).await;
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{topic} did not get {n} events in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_reach_subscribers_once_per_id() {
    let node = TestNode::start().await;
    node.deploy(&app(
        &["orders"],
        &[
            (
                "inventory",
                "events = [{ topic = \"orders\", filter = { type = \"order_placed\" } }]",
            ),
            // A user route may use paths that look like Gale's admin API.
            ("api", "http = [{ route = \"POST /v1/orders\" }]"),
        ],
    ))
    .await
    .unwrap();

    let r = node.publish("orders", "o-1", "order_placed", &[]).await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("x-gale-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["events"][0]["duplicate"], false);
    // Same source and id again: accepted, stored once.
    let again: serde_json::Value = node
        .publish("orders", "o-1", "order_placed", &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["events"][0]["duplicate"], true);
    // Filtered out: never reaches the function.
    node.publish("orders", "o-2", "order_cancelled", &[]).await;
    // Structured and batch modes.
    let structured = node
        .http
        .post(node.url("/_gale/topics/orders/events"))
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"o-3","source":"/tests","type":"order_placed","data":{"n":3}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(structured.status(), 202);
    let batch = node
        .http
        .post(node.url("/_gale/topics/orders/events"))
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents-batch+json")
        .body(
            r#"[{"specversion":"1.0","id":"o-4","source":"/tests","type":"order_placed"},
                {"specversion":"1.0","id":"o-5","source":"/tests","type":"order_placed"}]"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202);

    let logs = node.event_logs("inventory", 4).await;
    let mut handled: Vec<String> = logs.iter().flat_map(|l| l.events.clone()).collect();
    handled.sort();
    assert_eq!(handled, ["o-1", "o-3", "o-4", "o-5"]);
    let first = logs.iter().find(|l| l.events == ["o-1"]).unwrap();
    assert_eq!(first.outcome, Outcome::Ok);
    assert!(
        first.stdout.contains(r#"event o-1 order_placed {"order":"o-1"}"#),
        "{}",
        first.stdout
    );

    let (status, _, body) = {
        let r = node
            .http
            .post(node.url("/v1/orders"))
            .body("x")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), (), r.text().await.unwrap())
    };
    assert_eq!((status, body.as_str()), (200, "testbed at /v1/orders"));

    let topics: Vec<TopicInfo> = node.admin_get("/v1/topics").await;
    let orders = topics.iter().find(|t| t.name == "orders").unwrap();
    assert_eq!((orders.depth, orders.published), (5, 5));
    let sub = &orders.subscriptions[0];
    assert_eq!((sub.name.as_str(), sub.lag), ("inventory", 0));
    assert!(orders.publish_rate > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_refuses_bad_requests_with_clear_errors() {
    let node = TestNode::start().await;
    node.deploy(&app(&["orders"], &[])).await.unwrap();
    let url = node.url("/_gale/topics/orders/events");

    let r = node.http.post(&url).header("ce-id", "1").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = node.publish("nowhere", "1", "t", &[]).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("topic_not_found"));
    let r = node
        .http
        .post(&url)
        .bearer_auth(&node.token)
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("event_invalid") && text.contains("`source`"),
        "{text}"
    );
    let r = node
        .http
        .post(&url)
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents+json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = node
        .http
        .post(&url)
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents+json")
        .body(format!(
            r#"{{"specversion":"1.0","id":"big","source":"s","type":"t","data":"{}"}}"#,
            "x".repeat(2 << 20)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = node.http.get(node.url("/_gale/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Nothing bad was stored.
    let topics: Vec<TopicInfo> = node.admin_get("/v1/topics").await;
    assert_eq!(topics[0].depth, 0);

    // A publish token may publish to its topics and do nothing else.
    node.deploy(&app(&["orders", "audit"], &[])).await.unwrap();
    let typo = node
        .http
        .post(format!("{}/v1/tokens", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "publish": ["orders", "ordres"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 404, "a token for a topic that does not exist");
    let body = typo.text().await.unwrap();
    assert!(
        body.contains("topic_not_found") && body.contains("ordres"),
        "{body}"
    );
    let created: serde_json::Value = node
        .http
        .post(format!("{}/v1/tokens", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "publish": ["orders"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap();
    let publish_with = |topic: &str| {
        node.http
            .post(node.url(&format!("/_gale/topics/{topic}/events")))
            .bearer_auth(token)
            .header("ce-specversion", "1.0")
            .header("ce-id", "p-1")
            .header("ce-source", "/tests")
            .header("ce-type", "t")
            .send()
    };
    assert_eq!(publish_with("orders").await.unwrap().status(), 202);
    let r = publish_with("audit").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("forbidden"));
    let r = node
        .http
        .get(format!("{}/v1/functions", node.admin))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a publish token is not an admin token");
    let r = node
        .http
        .delete(format!(
            "{}/v1/tokens/{}",
            node.admin,
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(publish_with("orders").await.unwrap().status(), 401, "revoked");

    // A trigger on a topic nobody declared is refused at deploy.
    let err = node
        .deploy(&app(&[], &[("f", "events = [{ topic = \"ordrs\" }]")]))
        .await
        .unwrap_err();
    assert_eq!(err.code, gale_core::Code::TopicNotFound);
    assert!(err.message.contains("ordrs"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_retried_with_backoff_then_dead_lettered() {
    let node = TestNode::start().await;
    node.deploy(&app(
        &["orders"],
        &[(
            "inventory",
            r#"[[functions.inventory.events]]
topic = "orders"
max_attempts = 3
backoff = { initial = "100ms", max = "1s" }
dead_letter = "orders-dlq"
"#,
        )],
    ))
    .await
    .unwrap();
    node.publish("orders", "poison", "fail", &[]).await;
    for i in 0..5 {
        node.publish("orders", &format!("fine-{i}"), "ok", &[]).await;
    }

    let dead = node.dead_letters("orders-dlq", 1).await;
    let event = &dead[0].event;
    assert_eq!(event["id"], "poison");
    assert_eq!(event["galeattempts"], 3);
    assert_eq!(event["galefunction"], "inventory");
    assert_eq!(event["galetopic"], "orders");
    assert!(
        event["galeerror"]
            .as_str()
            .unwrap()
            .contains("refusing event poison"),
        "{event}"
    );

    let logs = node.event_logs("inventory", 8).await;
    let mut attempts: Vec<&InvocationLog> = logs.iter().filter(|l| l.events == ["poison"]).collect();
    attempts.sort_by_key(|l| l.started_at);
    assert_eq!(attempts.len(), 3, "exactly max_attempts attempts");
    // Delays grow: jitter keeps each in [0.5, 1] of 100 ms, then of 200 ms.
    let gap1 = attempts[1].started_at - attempts[0].started_at;
    let gap2 = attempts[2].started_at - attempts[1].started_at;
    assert!(gap1 >= 50 && gap2 >= 100, "gaps {gap1} ms, {gap2} ms");
    // The events behind it were not held up by it.
    let fine_done = logs
        .iter()
        .filter(|l| l.events.iter().any(|e| e.starts_with("fine-")))
        .map(|l| l.started_at)
        .max()
        .unwrap();
    assert!(
        fine_done < attempts[2].started_at,
        "the poison event held others back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_handler_is_cut_at_its_timeout_and_retried() {
    let node = TestNode::start().await;
    node.deploy(&app(
        &["jobs"],
        &[(
            "worker",
            r#"timeout = "300ms"
[[functions.worker.events]]
topic = "jobs"
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }
dead_letter = "jobs-dlq"
"#,
        )],
    ))
    .await
    .unwrap();
    node.publish("jobs", "stuck", "hang", &[]).await;
    let dead = node.dead_letters("jobs-dlq", 1).await;
    assert_eq!(dead[0].event["galeattempts"], 2);
    let logs = node.event_logs("worker", 2).await;
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|l| l.outcome == Outcome::Timeout), "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_subscription_holds_only_the_failing_key() {
    let node = TestNode::start().await;
    node.deploy(&app(
        &["accounts"],
        &[(
            "ledger",
            r#"[[functions.ledger.events]]
topic = "accounts"
ordering = "partition-key"
max_attempts = 3
backoff = { initial = "200ms", max = "200ms" }
dead_letter = "accounts-dlq"
"#,
        )],
    ))
    .await
    .unwrap();
    node.publish("accounts", "a-1", "fail", &[("ce-partitionkey", "alice")])
        .await;
    node.publish("accounts", "a-2", "ok", &[("ce-partitionkey", "alice")])
        .await;
    node.publish("accounts", "b-1", "ok", &[("ce-partitionkey", "bob")])
        .await;

    let logs = node.event_logs("ledger", 5).await;
    let start = |id: &str| {
        logs.iter()
            .filter(|l| l.events == [id])
            .map(|l| l.started_at)
            .collect::<Vec<_>>()
    };
    let (a1, a2, b1) = (start("a-1"), start("a-2"), start("b-1"));
    assert_eq!((a1.len(), a2.len(), b1.len()), (3, 1, 1));
    // bob did not wait for alice; alice's second event waited for her first.
    assert!(b1[0] < *a1.iter().max().unwrap());
    assert!(a2[0] >= *a1.iter().max().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_handlers_publish_only_when_they_succeed_and_keep_state() {
    let node = TestNode::start().await;
    let manifest = r#"
[app]
name = "shop"
[topics.jobs]
[topics.replies]
[functions.worker]
source = "gale_test_handler.wasm"
[[functions.worker.events]]
topic = "jobs"
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }
dead_letter = "jobs-dlq"
"#;
    node.deploy(manifest).await.unwrap();
    node.publish("jobs", "j-1", "publish", &[]).await;
    node.publish("jobs", "j-2", "publish-then-fail", &[]).await;
    node.publish("jobs", "j-3", "publish-nowhere", &[]).await;
    node.publish("jobs", "j-4", "trap", &[]).await;

    let dead = node.dead_letters("jobs-dlq", 3).await;
    let error_of = |id: &str| {
        dead.iter()
            .find(|d| d.event["id"] == id)
            .map(|d| d.event["galeerror"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{id} was not dead-lettered"))
    };
    assert!(
        error_of("j-2").contains("failing after publishing (attempt 2)"),
        "{}",
        error_of("j-2")
    );
    assert!(
        error_of("j-3").contains("topic `no-such-topic` does not exist"),
        "{}",
        error_of("j-3")
    );
    assert!(error_of("j-4").contains("deliberate trap"), "{}", error_of("j-4"));

    // One more, after the failures: state kept in key-value across instances.
    node.publish("jobs", "j-5", "publish", &[]).await;
    let replies = node.dead_letters("replies", 2).await;
    assert_eq!(
        replies.len(),
        2,
        "a failed attempt published nothing: {replies:?}"
    );
    let reply = |to: &str| {
        replies
            .iter()
            .find(|r| r.event["data"]["to"] == to)
            .unwrap()
            .event
            .clone()
    };
    let first = reply("j-1");
    assert_eq!(
        (
            first["type"].as_str(),
            first["subject"].as_str(),
            first["source"].as_str()
        ),
        (Some("reply"), Some("j-1"), Some("/gale/functions/worker"))
    );
    assert_eq!(first["data"]["seen"], 1);
    assert_eq!(reply("j-5")["data"]["seen"], 2);

    let logs = node.event_logs("worker", 8).await;
    let j1 = logs.iter().find(|l| l.events == ["j-1"]).unwrap();
    assert_eq!(j1.outcome, Outcome::Ok);
    assert!(j1.stdout.contains("handling j-1 publish"), "{}", j1.stdout);
    assert_eq!(logs.iter().filter(|l| l.events == ["j-2"]).count(), 2);

    // Replay runs history through the function again: j-1 and j-5 succeed
    // (and publish again), j-2, j-3 and j-4 fail again and are reported.
    let replay = || async {
        node.http
            .post(format!("{}/v1/topics/jobs/replay", node.admin))
            .bearer_auth(&node.token)
            .json(&serde_json::json!({ "function": "worker", "from_ms": 0 }))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let report = replay().await;
    assert_eq!(
        (report["replayed"].as_u64(), report["failed"].as_u64()),
        (Some(5), Some(3)),
        "{report}"
    );
    assert_eq!(node.dead_letters("replies", 4).await.len(), 4);
    // Run again (a replay that failed part way is run once more), the same
    // invocations publish the same ids: what they published is stored once.
    let again = replay().await;
    assert_eq!(again["replayed"].as_u64(), Some(5), "{again}");
    let topics: Vec<gale_core::api::TopicInfo> = node.admin_get("/v1/topics").await;
    let replies = topics.iter().find(|t| t.name == "replies").unwrap();
    assert_eq!(
        replies.depth, 4,
        "a replayed invocation's events were stored twice"
    );

    // A replay covers the events the topic held when it started: replaying
    // `replies` through a function that publishes to `replies` does not
    // run its own output through it again.
    for id in ["r-1", "r-2", "r-3"] {
        node.publish("replies", id, "publish", &[]).await;
    }
    let report: serde_json::Value = node
        .http
        .post(format!("{}/v1/topics/replies/replay", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "function": "worker", "from_ms": 0 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (report["replayed"].as_u64(), report["failed"].as_u64()),
        (Some(7), Some(0)),
        "{report}"
    );
    let topics: Vec<gale_core::api::TopicInfo> = node.admin_get("/v1/topics").await;
    let replies = topics.iter().find(|t| t.name == "replies").unwrap();
    assert_eq!(replies.depth, 10, "each `publish` event replied once");

    // An event handler cannot take HTTP routes.
    let err = node
        .deploy(&manifest.replace(
            "[[functions.worker.events]]",
            "http = [{ route = \"/w\" }]\n[[functions.worker.events]]",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, gale_core::Code::ComponentInvalid);
    assert!(err.message.contains("event handler"), "{}", err.message);

    // Nor does it answer requests: invoking it says what to do instead.
    let answer: gale_core::api::InvokeResponse = node
        .http
        .post(format!("{}/v1/functions/worker/invoke", node.admin))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({ "body": "{}" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("not_http_function") && answer.body.contains("mode=async"),
        "{}",
        answer.body
    );

    // A redrive sends dead letters back; a topic that is none is refused.
    let n = &node;
    let redrive = |topic: &'static str| async move {
        n.http
            .post(format!("{}/v1/topics/{topic}/redrive", n.admin))
            .bearer_auth(&n.token)
            .send()
            .await
            .unwrap()
    };
    let r = redrive("replies").await;
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap();
    assert!(body.contains("not a dead-letter topic"), "{body}");
    let moved: serde_json::Value = redrive("jobs-dlq").await.json().await.unwrap();
    assert_eq!(moved["moved"], 3, "{moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_handlers_reuse_instances_only_when_allowed() {
    let node = TestNode::start().await;
    let function = |name: &str, reuse: &str| {
        format!(
            "[functions.{name}]\nsource = \"gale_test_handler.wasm\"\n{reuse}\n\
             [[functions.{name}.events]]\ntopic = \"jobs\"\nmax_concurrency = 1\nmax_attempts = 1\n\
             dead_letter = \"jobs-dlq\"\n"
        )
    };
    let manifest = format!(
        "[app]\nname = \"shop\"\n[topics.jobs]\n[topics.replies]\n{}{}",
        function("warm", "instance_reuse = 3"),
        function("fresh", "")
    );
    node.deploy(&manifest).await.unwrap();
    for i in 1..=4 {
        node.publish("jobs", &format!("i-{i}"), "instance", &[]).await;
    }
    // A trap ends the instance it happened in: the next event gets a new one.
    node.publish("jobs", "t-1", "trap", &[]).await;
    node.publish("jobs", "i-5", "instance", &[]).await;

    let replies = node.dead_letters("replies", 10).await;
    let served = |function: &str| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = replies
            .iter()
            .filter(|r| r.event["source"] == format!("/gale/functions/{function}"))
            .map(|r| {
                let data = &r.event["data"];
                (
                    data["to"].as_str().unwrap().to_string(),
                    data["served"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let expect = |counts: [u64; 5]| -> Vec<(String, u64)> {
        (1..=5).map(|i| (format!("i-{i}"), counts[i - 1])).collect()
    };
    // One instance serves three events, then a new one takes over.
    assert_eq!(served("warm"), expect([1, 2, 3, 1, 1]));
    // Without instance_reuse every event gets a fresh instance.
    assert_eq!(served("fresh"), expect([1, 1, 1, 1, 1]));
    // The trap was reported as usual.
    let dead = node.dead_letters("jobs-dlq", 2).await;
    assert!(dead.iter().all(|d| d.event["id"] == "t-1"), "{dead:?}");
}

/// The scheduled times of `function`'s firings so far, from its logs.
async fn firings(node: &TestNode, function: &str) -> Vec<i64> {
    let logs: Vec<InvocationLog> = node
        .admin_get(&format!("/v1/functions/{function}/logs?limit=1000"))
        .await;
    let mut times: Vec<i64> = logs
        .iter()
        .flat_map(|l| l.events.iter())
        .map(|id| id.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_on_time_never_twice_and_handle_missed_firings() {
    let mut node = TestNode::start().await;
    let tick = "[functions.tick]\nsource = \"testbed.wasm\"\nschedule = [{ cron = \"* * * * * *\" }]\n";
    node.deploy(&format!("[app]\nname = \"cron\"\n{tick}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Two more, firing once a minute at a second four seconds from now,
    // while the node will be down.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let soon = (now + 4) % 60;
    node.deploy(&format!(
        r#"[app]
name = "cron"
{tick}
[functions.skip]
source = "testbed.wasm"
schedule = [{{ cron = "{soon} * * * * *" }}]
[functions.once]
source = "testbed.wasm"
schedule = [{{ cron = "{soon} * * * * *", missed = "run-once" }}]
"#
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    node.stop().await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let node = node.restart().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let ticks = firings(&node, "tick").await;
    assert!(ticks.len() >= 3, "{ticks:?}");
    let mut unique = ticks.clone();
    unique.dedup();
    assert_eq!(unique, ticks, "a firing ran twice");
    assert!(
        ticks.iter().all(|t| t % 1000 == 0),
        "firings are at whole seconds: {ticks:?}"
    );
    // The ticks missed while the node was down were skipped.
    assert!(ticks.windows(2).any(|w| w[1] - w[0] >= 4000), "{ticks:?}");
    assert_eq!(
        firings(&node, "skip").await,
        Vec::<i64>::new(),
        "a missed firing was not skipped"
    );
    let once = firings(&node, "once").await;
    assert_eq!(once.len(), 1, "a missed firing runs once: {once:?}");
    assert_eq!((once[0] / 1000) % 60, soon as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_functions_publish_only_when_they_succeed() {
    let node = TestNode::start().await;
    node.deploy(&app(
        &["orders"],
        &[("api", "http = [{ route = \"POST /orders/publish\" }]")],
    ))
    .await
    .unwrap();
    let post = |query: &str, body: &str| {
        node.http
            .post(node.url(&format!("/orders/publish?{query}")))
            .body(body.to_string())
            .send()
    };
    let r = post("topic=orders", "first").await.unwrap();
    assert_eq!(r.status(), 201);
    // The answer left after the event was stored.
    let stored: Vec<StoredEventInfo> = node.admin_get("/v1/topics/orders/events").await;
    assert_eq!(stored.len(), 1);
    let event = &stored[0].event;
    assert_eq!(
        (
            event["type"].as_str(),
            event["source"].as_str(),
            event["data"]["body"].as_str()
        ),
        (Some("published"), Some("/gale/functions/api"), Some("first"))
    );
    assert!(!event["id"].as_str().unwrap().is_empty());

    // A failed invocation (5xx) publishes nothing; a 4xx is an answer, not a failure.
    assert_eq!(
        post("topic=orders&status=503", "lost").await.unwrap().status(),
        503
    );
    assert_eq!(
        post("topic=orders&status=409", "kept").await.unwrap().status(),
        409
    );
    let r = post("topic=nowhere", "x").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("topic `nowhere` does not exist"));
    let stored: Vec<StoredEventInfo> = node.admin_get("/v1/topics/orders/events").await;
    let bodies: Vec<&str> = stored
        .iter()
        .map(|e| e.event["data"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["first", "kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_are_durable_retried_and_recorded() {
    let node = TestNode::start().await;
    node.deploy(
        r#"
[app]
name = "jobs"
[functions.api]
source = "testbed.wasm"
[functions.api.async]
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }
on_success = "done"
on_failure = "failed"
"#,
    )
    .await
    .unwrap();
    let invoke = |query: &str, body: &str, token: Option<&str>| {
        let mut r = node
            .http
            .post(node.url(&format!("/_gale/functions/api/invocations?{query}")))
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let token = Some(node.token.as_str());
    assert_eq!(invoke("mode=async", "", None).await.unwrap().status(), 401);
    // Sync: the function's own answer.
    let r = invoke("path=/echo", "now", token).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "now");

    let accepted = invoke("mode=async&path=/echo", "later", token).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let ok_id = accepted.json::<serde_json::Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let failing: serde_json::Value = invoke("mode=async&path=/trap", "", token)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bad_id = failing["invocation_id"].as_str().unwrap().to_string();

    let node = &node;
    let record = |id: String| async move {
        for _ in 0..200 {
            let r: serde_json::Value = node.admin_get(&format!("/v1/invocations/{id}")).await;
            if r["status"] == "succeeded" || r["status"] == "failed" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("invocation {id} did not end");
    };
    let ok = record(ok_id.clone()).await;
    assert_eq!(
        (ok["status"].as_str(), ok["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    assert_eq!(
        (ok["response"]["status"].as_u64(), ok["response"]["body"].as_str()),
        (Some(200), Some("later"))
    );
    let bad = record(bad_id.clone()).await;
    assert_eq!(
        (bad["status"].as_str(), bad["attempts"].as_u64()),
        (Some("failed"), Some(2)),
        "{bad}"
    );
    assert_eq!(bad["response"]["status"], 500);

    let done = node.dead_letters("done", 1).await;
    assert_eq!(done[0].event["type"], "gale.invocation.succeeded");
    assert_eq!(done[0].event["data"]["id"], ok_id.as_str());
    let failed = node.dead_letters("failed", 1).await;
    assert_eq!(failed[0].event["type"], "gale.invocation.failed");
    assert_eq!(failed[0].event["subject"], bad_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_an_event_handler_in_one_invocation() {
    let node = TestNode::start().await;
    node.deploy(
        r#"
[app]
name = "batch"
[topics.jobs]
[functions.worker]
source = "gale_test_handler.wasm"
[[functions.worker.events]]
topic = "jobs"
batch_size = 5
batch_window = "500ms"
max_concurrency = 1
"#,
    )
    .await
    .unwrap();
    let events: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({ "specversion": "1.0", "id": format!("b-{i}"), "source": "/t", "type": "plain" }))
        .collect();
    let r = node
        .http
        .post(node.url("/_gale/topics/jobs/events"))
        .bearer_auth(&node.token)
        .header("content-type", "application/cloudevents-batch+json")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let logs = node.event_logs("worker", 5).await;
    assert_eq!(logs.len(), 1, "one invocation for the batch: {logs:?}");
    assert_eq!(logs[0].events, ["b-0", "b-1", "b-2", "b-3", "b-4"]);
    // wasi:logging records land in the invocation's stderr, with their level.
    assert!(logs[0].stderr.contains("INFO type plain"), "{}", logs[0].stderr);
}
