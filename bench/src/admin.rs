//! The admin API as the scenarios that run a node and a source use it:
//! topics' counts, sources' states, waiting for events to arrive and to be
//! handled.

use crate::Node;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    pub fn of(node: &Node) -> Result<Admin> {
        Ok(Admin {
            http: reqwest::Client::new(),
            url: node.admin.clone(),
            token: std::fs::read_to_string(node.dir.join("token"))?
                .trim()
                .to_string(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn topic(&self, topic: &str) -> Result<serde_json::Value> {
        let topics = self.get("/v1/topics").await?;
        topics
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == topic))
            .cloned()
            .with_context(|| format!("topic {topic} missing"))
    }

    /// The sources, for error messages.
    pub async fn sources(&self) -> String {
        self.get("/v1/sources")
            .await
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    /// Waits until `topic` has accepted `n` events.
    pub async fn wait_published(&self, topic: &str, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let t = self.topic(topic).await?;
            if t["published"].as_u64().unwrap_or(0) >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{topic}: {} of {n} events arrived; sources: {}",
                    t["published"],
                    self.sources().await
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every subscription of `topic` has acked `n` events.
    pub async fn wait_acked(&self, topic: &str, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let t = self.topic(topic).await?;
            let subs = t["subscriptions"].as_array().cloned().unwrap_or_default();
            if !subs.is_empty() && subs.iter().all(|s| s["acked"].as_u64().unwrap_or(0) >= n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{topic}: not all {n} events handled in time: {t}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until source `name` streams (it reported a position).
    pub async fn wait_streaming(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.get("/v1/sources").await?;
            let s = all.as_array().and_then(|a| a.iter().find(|s| s["name"] == name));
            if let Some(s) = s
                && s["state"] == "running"
                && s.get("position").is_some_and(|p| !p.is_null())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("source {name} never streamed: {all}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When `function`'s handler started for each event (its invocation
    /// log's `started_at`, ms), by event id; waits up to a minute for the
    /// logs of `n` events (they are written in batches).
    pub async fn handler_starts(&self, function: &str, n: usize) -> Result<HashMap<String, f64>> {
        let mut started = HashMap::new();
        let (mut after, deadline) = (0u64, Instant::now() + Duration::from_secs(60));
        while started.len() < n && Instant::now() < deadline {
            let logs = self
                .get(&format!("/v1/functions/{function}/logs?after={after}&limit=1000"))
                .await?;
            let logs = logs.as_array().context("logs are a list")?;
            if logs.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            for l in logs {
                after = l["seq"].as_u64().unwrap_or(after);
                if let (Some(id), Some(at)) = (l["events"][0].as_str(), l["started_at"].as_f64()) {
                    // A retried event keeps its first start.
                    started.entry(id.to_string()).or_insert(at);
                }
            }
        }
        Ok(started)
    }
}
