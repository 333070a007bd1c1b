//! The registry: apps, functions and their immutable versions, persisted on
//! the metadata store.
//!
//! Keys:
//! - `apps/{app}`: the app's functions and the version each one serves. This
//!   single key is the routing state of the app, so a deploy or a rollback is
//!   one compare-and-swap: all of an app's routes switch at once or not at all.
//! - `functions/{name}`: owner app and the last version number handed out.
//! - `versions/{name}/{version:010}`: one immutable version (code digest and
//!   configuration).
//! - `sources/{name}`, `sinks/{name}`: a source or sink the manifest
//!   declares (`[sources.NAME]`, `[sinks.NAME]`) and the app it belongs to.
//!
//! Every plane reads these records (the gateway's routes, the dispatchers'
//! triggers, the sources, the sinks); only deploys write them.

use crate::clock::now_ms;
use crate::error::Result;
use gale_core::{FunctionSpec, SinkSpec, SourceSpec};
use gale_store::{Entry, Expect, Metadata};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    /// Function name → the version it serves.
    pub functions: BTreeMap<String, u64>,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: String,
    pub app: String,
    pub latest: u64,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: String,
    pub version: u64,
    pub app: String,
    /// `sha256:<hex>` of the component.
    pub artifact: String,
    /// Digest of the code plus the configuration that shapes its behaviour;
    /// a deploy with the same identity creates no new version.
    pub identity: String,
    pub spec: FunctionSpec,
    pub created_at: u64,
}

/// A source (`[sources.NAME]`) or sink (`[sinks.NAME]`) an app declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declared<T> {
    pub name: String,
    pub app: String,
    pub spec: T,
}

pub type SourceRecord = Declared<SourceSpec>;
pub type SinkRecord = Declared<SinkSpec>;

/// Where declared sources and sinks are kept: `<prefix><name>`.
pub const SOURCES: &str = "sources/";
pub const SINKS: &str = "sinks/";

/// Whether a change of `key` may change what the node runs.
pub fn is_registry_key(key: &str) -> bool {
    ["apps/", "functions/", "versions/", SOURCES, SINKS]
        .iter()
        .any(|p| key.starts_with(p))
}

pub fn app_key(app: &str) -> String {
    format!("apps/{app}")
}
pub fn function_key(name: &str) -> String {
    format!("functions/{name}")
}
pub fn version_key(name: &str, version: u64) -> String {
    format!("versions/{name}/{version:010}")
}

/// The identity of a version: code digest plus configuration (not where the
/// source file was or how it was built).
pub fn identity(artifact: &str, spec: &FunctionSpec) -> String {
    let mut spec = spec.clone();
    spec.source.clear();
    spec.build = None;
    let config = serde_json::to_vec(&spec).unwrap_or_default();
    let mut bytes = artifact.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&config);
    gale_store::digest_of(&bytes)
}

fn decode<T: DeserializeOwned>(key: &str, entry: &Entry) -> Result<T> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| gale_store::StoreError::Engine(format!("record {key} is unreadable: {e}")).into())
}

/// Typed access to the registry's records. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub meta: Arc<dyn Metadata>,
}

impl Registry {
    pub async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.meta.get(key).await? {
            Some(entry) => Ok(Some((decode(key, &entry)?, entry.revision))),
            None => Ok(None),
        }
    }

    pub async fn write<T: Serialize>(&self, key: &str, value: &T, expect: Expect) -> Result<u64> {
        let bytes = serde_json::to_vec(value).expect("records serialize");
        Ok(self.meta.put(key, bytes, expect).await?)
    }

    /// Every app; an unreadable record is logged and skipped.
    pub async fn apps(&self) -> Result<Vec<AppRecord>> {
        let mut apps = Vec::new();
        for (key, entry) in self.meta.list("apps/").await? {
            match decode(&key, &entry) {
                Ok(app) => apps.push(app),
                Err(e) => tracing::error!(error = %e, "app record skipped"),
            }
        }
        Ok(apps)
    }

    pub async fn versions(&self, function: &str) -> Result<Vec<VersionRecord>> {
        let mut versions = Vec::new();
        for (key, entry) in self.meta.list(&format!("versions/{function}/")).await? {
            versions.push(decode(&key, &entry)?);
        }
        Ok(versions)
    }

    pub async fn version(&self, function: &str, version: u64) -> Result<Option<VersionRecord>> {
        Ok(self.read(&version_key(function, version)).await?.map(|(v, _)| v))
    }

    /// Hands out the next version number of `function` (creating the
    /// function record on first deploy) and stores the version under it.
    pub async fn create_version(
        &self,
        app: &str,
        function: &str,
        artifact: &str,
        identity: String,
        spec: &FunctionSpec,
    ) -> Result<u64> {
        let key = function_key(function);
        let (mut record, expect) = match self.read::<FunctionRecord>(&key).await? {
            Some((r, rev)) => (r, Expect::Revision(rev)),
            None => (
                FunctionRecord {
                    name: function.into(),
                    app: app.into(),
                    latest: 0,
                    created_at: now_ms(),
                },
                Expect::Absent,
            ),
        };
        record.latest += 1;
        self.write(&key, &record, expect).await?;
        let version = VersionRecord {
            function: function.into(),
            version: record.latest,
            app: app.into(),
            artifact: artifact.into(),
            identity,
            spec: spec.clone(),
            created_at: now_ms(),
        };
        self.write(&version_key(function, record.latest), &version, Expect::Absent)
            .await?;
        Ok(record.latest)
    }

    /// Removes a function's record and all its versions (after it left its app).
    pub async fn forget_function(&self, function: &str) -> Result<()> {
        for (key, _) in self.meta.list(&format!("versions/{function}/")).await? {
            self.meta.delete(&key, Expect::Any).await?;
        }
        self.meta.delete(&function_key(function), Expect::Any).await?;
        Ok(())
    }
}

impl Registry {
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<()> {
        Ok(self.meta.delete(key, expect).await?)
    }

    /// Every declared source.
    pub async fn sources(&self) -> Result<Vec<SourceRecord>> {
        self.declared(SOURCES).await
    }

    /// Every declared sink.
    pub async fn sinks(&self) -> Result<Vec<SinkRecord>> {
        self.declared(SINKS).await
    }

    /// The records under `prefix`; an unreadable one is logged and skipped.
    pub async fn declared<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Declared<T>>> {
        let mut declared = Vec::new();
        for (key, entry) in self.meta.list(prefix).await? {
            match decode(&key, &entry) {
                Ok(s) => declared.push(s),
                Err(e) => tracing::error!(error = %e, "{prefix} record skipped"),
            }
        }
        Ok(declared)
    }
}
