//! Events: `publish`, `topics`, `replay`, `sources`, `invocations`,
//! `tokens`, `dlq`.
//!
//! `gale publish` with a publish token goes through the gateway's
//! `POST /_gale/topics/{topic}/events`, the one endpoint such a token opens:
//! the admin API takes only the admin token.

use super::{Ctx, read_arg, unix_ms};
use crate::Exit;
use crate::cli::{ClientCommand, DlqAction, InvocationsAction, TokensAction, TopicsAction};
use crate::client::{Client, base_url};
use crate::output;
use anyhow::{Context, Result};
use gale_core::api::{
    CreateTokenRequest, CreatedToken, InvocationRecord, SourceInfo, StoredEventInfo, TokenInfo, TopicInfo,
};

/// Prefix of publish tokens (`gale tokens create`).
const PUBLISH_TOKEN: &str = "galepub_";

pub async fn run(ctx: &Ctx, command: ClientCommand) -> Result<()> {
    let format = ctx.format();
    match command {
        ClientCommand::Publish {
            topic,
            ty,
            data,
            id,
            source,
            subject,
            partition_key,
        } => {
            let mut event = serde_json::json!({
                "specversion": "1.0",
                "id": id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                "source": source,
                "type": ty,
            });
            if let Some(data) = data {
                let text = read_arg(data, "--data must be JSON")?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| "--data must be JSON (quote a string: --data '\"text\"')")?;
                event["datacontenttype"] = "application/json".into();
                event["data"] = value;
            }
            if let Some(s) = subject {
                event["subject"] = s.into();
            }
            if let Some(k) = partition_key {
                event["partitionkey"] = k.into();
            }
            let token = ctx.token()?;
            let (client, path) = if token.starts_with(PUBLISH_TOKEN) {
                (
                    Client::gateway(&base_url("gateway", &ctx.args.gateway)?, token),
                    format!("/_gale/topics/{topic}/events"),
                )
            } else {
                (ctx.client()?, format!("/v1/topics/{topic}/events"))
            };
            let answer: serde_json::Value = client
                .post_as(&path, "application/cloudevents+json", event.to_string())
                .await?;
            output::print(format, &answer, |a| {
                let e = &a["events"][0];
                if e["duplicate"] == true {
                    format!("duplicate of event {} (seq {}): stored once\n", e["id"], e["seq"])
                } else {
                    format!("published {} to {topic} (seq {})\n", e["id"], e["seq"])
                }
            })
        }
        ClientCommand::Sources => {
            let sources: Vec<SourceInfo> = ctx.client()?.get("/v1/sources").await?;
            output::print(format, &sources, output::source_table)
        }
        ClientCommand::Topics { action: None } => {
            let topics: Vec<TopicInfo> = ctx.client()?.get("/v1/topics").await?;
            output::print(format, &topics, output::topic_table)
        }
        ClientCommand::Topics {
            action:
                Some(TopicsAction::Create {
                    name,
                    retention,
                    max_bytes,
                    dedup_window,
                }),
        } => {
            let spec = serde_json::json!({
                "retention": retention,
                "max_bytes": max_bytes,
                "dedup_window": dedup_window,
            });
            let info: TopicInfo = ctx
                .client()?
                .send(reqwest::Method::PUT, &format!("/v1/topics/{name}"), &spec)
                .await?;
            output::print(format, &info, |t| format!("topic {} ready\n", t.name))
        }
        ClientCommand::Topics {
            action: Some(TopicsAction::Rm { name }),
        } => {
            ctx.client()?.delete(&format!("/v1/topics/{name}")).await?;
            output::print(format, &serde_json::json!({ "removed": name }), |_| {
                format!("removed topic {name}\n")
            })
        }
        ClientCommand::Replay {
            topic,
            from,
            to,
            limit,
        } => {
            let from_ms = unix_ms("from", &from)?;
            let body = serde_json::json!({ "function": to, "from_ms": from_ms, "limit": limit });
            let report: serde_json::Value = ctx
                .client()?
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/topics/{topic}/replay"),
                    &body,
                )
                .await?;
            let failed = report["failed"].as_u64().unwrap_or(0) > 0;
            output::print(format, &report, |r| {
                let mut out = format!(
                    "replayed {} events of {topic} through {to}: {} failed, {} filtered out (up to seq {})\n",
                    r["replayed"], r["failed"], r["filtered"], r["last_seq"]
                );
                for e in r["errors"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  {}\n", e.as_str().unwrap_or_default()));
                }
                out
            })?;
            if failed {
                return Err(Exit(1).into());
            }
            Ok(())
        }
        ClientCommand::Invocations {
            action: InvocationsAction::Show { id },
        } => {
            let record: InvocationRecord = ctx.client()?.get(&format!("/v1/invocations/{id}")).await?;
            output::print(format, &record, |r| {
                let mut out = format!(
                    "invocation {} of {}: {} after {} attempt(s), updated {}\n",
                    r.id,
                    r.function,
                    r.status,
                    r.attempts,
                    output::time(r.updated_at)
                );
                if let Some(resp) = &r.response {
                    out.push_str(&format!("answer {}: {}\n", resp.status, resp.body));
                }
                if let Some(e) = &r.error {
                    out.push_str(&format!("error: {e}\n"));
                }
                out
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Create { publish },
        } => {
            let created: CreatedToken = ctx
                .client()?
                .send(
                    reqwest::Method::POST,
                    "/v1/tokens",
                    &CreateTokenRequest { publish },
                )
                .await?;
            output::print(format, &created, |c| {
                format!(
                    "{}\n(id {}; may publish to {}; shown once: store it now)\n",
                    c.token,
                    c.info.id,
                    c.info.publish.join(", ")
                )
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Ls,
        } => {
            let tokens: Vec<TokenInfo> = ctx.client()?.get("/v1/tokens").await?;
            output::print(format, &tokens, |list| {
                let mut out = format!("{:<14} {:<25} {}\n", "ID", "CREATED", "MAY PUBLISH TO");
                for t in list {
                    out.push_str(&format!(
                        "{:<14} {:<25} {}\n",
                        t.id,
                        output::time(t.created_at),
                        t.publish.join(", ")
                    ));
                }
                out
            })
        }
        ClientCommand::Tokens {
            action: TokensAction::Rm { id },
        } => {
            ctx.client()?.delete(&format!("/v1/tokens/{id}")).await?;
            output::print(format, &serde_json::json!({ "revoked": id }), |_| {
                format!("revoked token {id}\n")
            })
        }
        ClientCommand::Dlq {
            action: DlqAction::Ls { topic, limit },
        } => {
            let events: Vec<StoredEventInfo> = ctx
                .client()?
                .get(&format!("/v1/topics/{topic}/events?limit={limit}"))
                .await?;
            output::print(format, &events, output::dead_letter_table)?;
            if !events.is_empty() && !events.iter().any(dead_lettered) {
                eprintln!(
                    "note: none of these {} events was dead-lettered (none carries galeerror, galetopic, ...): \
                     {topic} is probably not a dead-letter topic; a trigger names its own with dead_letter = \"...\"",
                    events.len()
                );
            }
            Ok(())
        }
        ClientCommand::Dlq {
            action: DlqAction::Redrive { topic },
        } => {
            let answer: serde_json::Value = ctx
                .client()?
                .send(reqwest::Method::POST, &format!("/v1/topics/{topic}/redrive"), &())
                .await?;
            output::print(format, &answer, |a| {
                format!(
                    "moved {} events back to their topics ({} kept)\n",
                    a["moved"], a["kept"]
                )
            })
        }
        _ => unreachable!("not an events command"),
    }
}

/// Whether an event carries the attributes Gale adds to a dead letter.
fn dead_lettered(e: &StoredEventInfo) -> bool {
    gale_node::events::FAILURE_ATTRIBUTES
        .iter()
        .any(|name| !e.event[*name].is_null())
}
