//! `gale buckets` and `gale keys`: the S3 API's buckets and access keys.

use super::Ctx;
use crate::cli::{BucketsAction, KeysAction};
use crate::output;
use anyhow::Result;
use gale_core::api::{BucketInfo, CreatedKey, KeyInfo};

pub async fn buckets(ctx: &Ctx, action: Option<BucketsAction>) -> Result<()> {
    let format = ctx.format();
    let client = ctx.client()?;
    match action {
        None => {
            let buckets: Vec<BucketInfo> = client.get("/v1/buckets").await?;
            output::print(format, &buckets, output::bucket_table)
        }
        Some(BucketsAction::Create {
            name,
            max_size,
            expire_after,
        }) => {
            let mut body = serde_json::Map::new();
            if let Some(size) = max_size {
                body.insert("max_size".into(), size.into());
            }
            if let Some(age) = expire_after {
                body.insert("expire_after".into(), age.into());
            }
            let info: BucketInfo = client
                .send(reqwest::Method::PUT, &format!("/v1/buckets/{name}"), &body)
                .await?;
            output::print(format, &info, |b| format!("bucket {} ready\n", b.name))
        }
        Some(BucketsAction::Rm { name }) => {
            client.delete(&format!("/v1/buckets/{name}")).await?;
            output::print(format, &serde_json::json!({ "removed": name }), |_| {
                format!("removed bucket {name}\n")
            })
        }
    }
}

pub async fn keys(ctx: &Ctx, action: KeysAction) -> Result<()> {
    let format = ctx.format();
    let client = ctx.client()?;
    match action {
        KeysAction::Create { buckets, read_only } => {
            let body = serde_json::json!({ "buckets": buckets, "read_only": read_only });
            let created: CreatedKey = client.send(reqwest::Method::POST, "/v1/keys", &body).await?;
            output::print(format, &created, |c| {
                format!(
                    "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n(may {} {}; the secret is shown once: store it now)\n",
                    c.info.id,
                    c.secret,
                    if c.info.read_only {
                        "read"
                    } else {
                        "read and write"
                    },
                    c.info.buckets.join(", ")
                )
            })
        }
        KeysAction::Ls => {
            let keys: Vec<KeyInfo> = client.get("/v1/keys").await?;
            output::print(format, &keys, |list| {
                let mut out = format!("{:<22} {:<25} {:<11} {}\n", "ID", "CREATED", "ACCESS", "BUCKETS");
                for k in list {
                    out.push_str(&format!(
                        "{:<22} {:<25} {:<11} {}\n",
                        k.id,
                        output::time(k.created_at),
                        if k.read_only { "read" } else { "read-write" },
                        k.buckets.join(", ")
                    ));
                }
                out
            })
        }
        KeysAction::Rm { id } => {
            client.delete(&format!("/v1/keys/{id}")).await?;
            output::print(format, &serde_json::json!({ "revoked": id }), |_| {
                format!("revoked key {id}\n")
            })
        }
    }
}
