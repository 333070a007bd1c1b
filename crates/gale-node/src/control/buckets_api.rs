//! The admin API's buckets and S3 keys: `gale buckets` and `gale keys`.
//! Objects themselves are read and written through the S3 API.

use super::Control;
use crate::NodeError;
use crate::http::{ApiResult, Json, Path};
use axum::Router;
use axum::extract::State as Ext;
use axum::http::StatusCode;
use axum::routing::{get, post};
use gale_core::api::{BucketInfo, CreateKeyRequest, CreatedKey, KeyInfo, PutBucketRequest};
use gale_core::{Code, Error};
use gale_store::BucketConfig;

pub fn routes(control: Control) -> Router {
    Router::new()
        .route("/v1/buckets", get(list_buckets))
        .route(
            "/v1/buckets/{name}",
            get(get_bucket).put(put_bucket).delete(delete_bucket),
        )
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(delete_key))
        .with_state(control)
}

fn info(b: gale_store::BucketInfo) -> BucketInfo {
    BucketInfo {
        name: b.name,
        created_at: b.created_at_ms,
        max_bytes: b.config.max_bytes,
        expire_after_ms: b.config.expire_after_ms,
        objects: b.objects,
        bytes: b.bytes,
    }
}

fn not_found(name: &str) -> NodeError {
    Error::new(Code::BucketNotFound, format!("no bucket named `{name}`"))
        .with_hint("`gale buckets` lists them; `gale buckets create NAME` makes one")
        .into()
}

async fn list_buckets(Ext(c): Ext<Control>) -> ApiResult<Json<Vec<BucketInfo>>> {
    Ok(Json(c.buckets.list().await?.into_iter().map(info).collect()))
}

async fn get_bucket(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<Json<BucketInfo>> {
    let bucket = c.buckets.get(&name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(info(bucket)))
}

/// A JSON object of the shape `T`: serde would also take a struct from an
/// array of its fields in order, which no client means.
fn object<T: serde::de::DeserializeOwned>(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::Object(body)).map_err(|e| {
        Error::new(
            Code::BadRequest,
            format!("the body is not of the expected shape: {e}"),
        )
    })
}

async fn put_bucket(
    Ext(c): Ext<Control>,
    Path(name): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<(StatusCode, Json<BucketInfo>)> {
    let req: PutBucketRequest = object(body)?;
    let config = BucketConfig {
        max_bytes: req.max_size.map(|s| s.0),
        expire_after_ms: req.expire_after.map(|d| d.0.as_millis() as u64),
    };
    if config.max_bytes == Some(0) || config.expire_after_ms == Some(0) {
        return Err(
            Error::new(Code::BadRequest, "max_size and expire_after must be more than 0")
                .with_hint("leave one out for no limit")
                .into(),
        );
    }
    let created = c.buckets.put(&name, config).await?;
    let bucket = c.buckets.get(&name).await?.ok_or_else(|| not_found(&name))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(bucket))))
}

async fn delete_bucket(Ext(c): Ext<Control>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    c.buckets.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_key(
    Ext(c): Ext<Control>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let req: CreateKeyRequest = object(body)?;
    for bucket in &req.buckets {
        if c.buckets.get(bucket).await?.is_none() {
            return Err(not_found(bucket).into());
        }
    }
    let (secret, info) = c.keys.create(req.buckets, req.read_only).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { secret, info })))
}

async fn list_keys(Ext(c): Ext<Control>) -> Json<Vec<KeyInfo>> {
    Json(c.keys.list())
}

async fn delete_key(Ext(c): Ext<Control>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match c.keys.delete(&id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Error::new(Code::KeyNotFound, format!("no key with id {id:?}"))
            .with_hint("`gale keys ls` lists them")
            .into()),
    }
}
