//! Deploys, rollbacks and removals: the only ways the registry changes.
//!
//! A deploy checks everything before it writes anything: the manifest, that
//! each artifact was uploaded, that no function belongs to another app, that
//! no route collides with another app's, and that each component compiles and
//! fits the `wasi:http/proxy` world. Only then are versions created and the
//! app record swapped in one compare-and-swap; a failed deploy leaves the
//! previous versions serving.

use super::Control;
use crate::clock::now_ms;
use crate::error::{NodeError, Result};
use crate::functions::triggers::{SCHEDULE_TOPIC, schedule_topic};
use crate::registry::{AppRecord, Declared, FunctionRecord, SINKS, SOURCES, app_key, function_key, identity};
use gale_core::api::{DeployRequest, DeployResponse, DeployedFunction};
use gale_core::{Code, Error, Route};
use gale_store::{Expect, TopicConfig};
use std::collections::{BTreeMap, BTreeSet};

/// The store's form of a manifest's `[topics.NAME]`.
pub fn topic_config(t: &gale_core::TopicSpec) -> TopicConfig {
    TopicConfig {
        max_age_ms: t.retention.0.as_millis() as u64,
        max_bytes: t.max_bytes.0,
        dedup_window_ms: t.dedup_window.0.as_millis() as u64,
    }
}

impl Control {
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployResponse> {
        let DeployRequest { manifest, artifacts } = request;
        manifest.validate()?;
        let app = manifest.app.name.clone();
        let _changes = self.changes.lock().await;
        let registry = self.functions.registry();
        let runtimes = self.functions.runtimes();

        // Ownership and artifacts.
        for name in manifest.functions.keys() {
            if let Some((owner, _)) = registry.read::<FunctionRecord>(&function_key(name)).await?
                && owner.app != app
            {
                return Err(Error::new(
                    Code::FunctionOwned,
                    format!("function `{name}` belongs to app `{}`", owner.app),
                )
                .with_hint(format!("rename the function, or `gale rm {name}` first"))
                .into());
            }
            let Some(digest) = artifacts.get(name) else {
                return Err(Error::new(
                    Code::ArtifactInvalid,
                    format!("no artifact given for function `{name}`"),
                )
                .with_hint("upload the component with PUT /v1/artifacts/{digest} and name it in `artifacts`")
                .into());
            };
            if !self.artifacts.contains(digest).await? {
                return Err(Error::new(
                    Code::ArtifactInvalid,
                    format!("artifact {digest} of function `{name}` was not uploaded"),
                )
                .with_hint("upload it with PUT /v1/artifacts/{digest} first")
                .into());
            }
        }

        // Routes against every other app's.
        let others = self.routes_except(|_, owner| owner == app);
        let ours: Vec<(String, Route)> = manifest
            .functions
            .iter()
            .flat_map(|(n, f)| f.routes().into_iter().map(|r| (n.clone(), r)))
            .collect();
        gale_core::manifest::check_routes(ours.iter().chain(&others).map(|(n, r)| (n.as_str(), r)))?;

        // Every trigger's topic is declared here or exists already.
        let existing: BTreeSet<String> = self.publisher.list().await?.into_iter().map(|t| t.name).collect();
        for (name, f) in &manifest.functions {
            for (i, t) in f.events.iter().enumerate() {
                if !manifest.topics.contains_key(&t.topic) && !existing.contains(&t.topic) {
                    return Err(Error::new(
                        Code::TopicNotFound,
                        format!(
                            "`functions.{name}.events[{i}].topic`: topic `{}` is not declared in the manifest \
                             and does not exist on the node",
                            t.topic
                        ),
                    )
                    .with_hint(format!("declare it with a [topics.{}] table", t.topic))
                    .into());
                }
            }
        }

        // Every bucket a function names is declared here or exists already.
        let buckets: BTreeSet<String> = self.buckets.list().await?.into_iter().map(|b| b.name).collect();
        for (name, f) in &manifest.functions {
            let named = f
                .bucket
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("bucket[{i}].bucket"), &b.bucket))
                .chain(f.buckets.iter().map(|b| ("buckets".to_string(), b)));
            for (key, bucket) in named {
                if !manifest.buckets.contains_key(bucket) && !buckets.contains(bucket) {
                    return Err(Error::new(
                        Code::BucketNotFound,
                        format!(
                            "`functions.{name}.{key}`: bucket `{bucket}` is not declared in the manifest \
                             and does not exist on the node"
                        ),
                    )
                    .with_hint(format!("declare it with a [buckets.{bucket}] table"))
                    .into());
                }
            }
        }

        // Sources feed a topic, sinks forward one: declared here or existing
        // already. Each belongs to one app.
        let declared = manifest
            .sources
            .iter()
            .map(|(name, s)| ("sources", name, s.topic()))
            .chain(
                manifest
                    .sinks
                    .iter()
                    .map(|(name, s)| ("sinks", name, s.topic.as_str())),
            );
        let (sources, sinks) = (registry.sources().await?, registry.sinks().await?);
        for (kind, name, topic) in declared {
            let owner = match kind {
                "sources" => sources.iter().find(|s| &s.name == name).map(|s| &s.app),
                _ => sinks.iter().find(|s| &s.name == name).map(|s| &s.app),
            };
            if let Some(other) = owner.filter(|a| **a != app) {
                return Err(Error::new(
                    Code::Conflict,
                    format!("`{kind}.{name}` belongs to app `{other}`"),
                )
                .with_hint("rename it, or remove it from the other app first")
                .into());
            }
            if !manifest.topics.contains_key(topic) && !existing.contains(topic) {
                return Err(Error::new(
                    Code::TopicNotFound,
                    format!(
                        "`{kind}.{name}.topic`: topic `{topic}` is not declared in the manifest \
                         and does not exist on the node"
                    ),
                )
                .with_hint(format!("declare it with a [topics.{topic}] table"))
                .into());
            }
        }

        // Compile (or find compiled) every component. Functions with routes
        // must be HTTP components, so their world is checked even when cached.
        for (name, digest) in &artifacts {
            let Some(spec) = manifest.functions.get(name) else {
                continue;
            };
            if spec.runtime == gale_core::manifest::RuntimeKind::Process {
                self.check_package(name, digest, spec).await?;
                continue;
            }
            if spec.http.is_empty() && runtimes.wasm.is_compiled(digest) {
                continue;
            }
            let Some(wasm) = self.artifacts.get(digest).await? else {
                return Err(Error::new(Code::ArtifactInvalid, format!("artifact {digest} vanished")).into());
            };
            let runtime = runtimes.wasm.clone();
            let digest = digest.clone();
            let world = tokio::task::spawn_blocking(move || runtime.compile(&digest, &wasm))
                .await
                .map_err(|e| NodeError::DataDir(format!("compile task failed: {e}")))?
                .map_err(|source| NodeError::Component {
                    function: name.clone(),
                    source,
                })?;
            if world == gale_wasm::World::Events && !spec.http.is_empty() {
                return Err(Error::new(
                    Code::ComponentInvalid,
                    format!("function `{name}` is an event handler (gale:events/event-handler) but has HTTP routes"),
                )
                .with_hint("remove its `http` routes, or build it as a wasi:http component")
                .into());
            }
        }

        // Topics before the functions that use them: declared ones get their
        // retention; dead-letter and async destination topics are made if missing.
        for (name, t) in &manifest.topics {
            self.publisher.put_topic(name, topic_config(t)).await?;
        }
        for (name, b) in &manifest.buckets {
            let config = gale_store::BucketConfig {
                max_bytes: b.max_size.map(|s| s.0),
                expire_after_ms: b.expire_after.map(|d| d.0.as_millis() as u64),
            };
            self.buckets.put(name, config).await?;
        }
        let dead_letters: BTreeSet<&str> = manifest
            .functions
            .values()
            .flat_map(|f| {
                f.events
                    .iter()
                    .filter_map(|t| t.dead_letter.as_deref())
                    .chain(f.schedule.iter().filter_map(|s| s.dead_letter.as_deref()))
                    .chain(f.bucket.iter().filter_map(|b| b.dead_letter.as_deref()))
                    .chain(f.async_policy.on_success.as_deref())
                    .chain(f.async_policy.on_failure.as_deref())
            })
            .chain(manifest.sources.values().filter_map(|s| s.dead_letter()))
            .chain(manifest.sinks.values().filter_map(|s| s.dead_letter.as_deref()))
            .filter(|d| !manifest.topics.contains_key(*d) && !existing.contains(*d))
            .collect();
        for name in dead_letters {
            self.publisher
                .put_topic(name, topic_config(&Default::default()))
                .await?;
        }
        for (name, f) in &manifest.functions {
            for n in 0..f.schedule.len() {
                self.publisher
                    .put_topic(&schedule_topic(name, n), SCHEDULE_TOPIC)
                    .await?;
            }
        }

        // Versions, then the one atomic switch.
        let key = app_key(&app);
        let (previous, expect) = match registry.read::<AppRecord>(&key).await? {
            Some((record, rev)) => (record, Expect::Revision(rev)),
            None => (AppRecord::default(), Expect::Absent),
        };
        let mut record = AppRecord {
            name: app.clone(),
            functions: BTreeMap::new(),
            updated_at: now_ms(),
        };
        let mut deployed = Vec::new();
        for (name, spec) in &manifest.functions {
            let digest = &artifacts[name];
            let id = identity(digest, spec);
            let current = match previous.functions.get(name) {
                Some(v) => registry.version(name, *v).await?,
                None => None,
            };
            let (version, changed) = match current {
                Some(c) if c.identity == id => (c.version, false),
                // After a rollback, deploying the newer manifest again
                // points back at the version that already holds it.
                _ => match registry
                    .versions(name)
                    .await?
                    .into_iter()
                    .filter(|v| v.identity == id)
                    .map(|v| v.version)
                    .max()
                {
                    Some(existing) => (existing, true),
                    None => (registry.create_version(&app, name, digest, id, spec).await?, true),
                },
            };
            record.functions.insert(name.clone(), version);
            deployed.push(DeployedFunction {
                name: name.clone(),
                version,
                changed,
                routes: spec.routes().iter().map(|r| r.to_string()).collect(),
            });
        }
        let removed: Vec<String> = previous
            .functions
            .keys()
            .filter(|n| !record.functions.contains_key(*n))
            .cloned()
            .collect();
        let sources_changed = self.write_declared(&app, SOURCES, &manifest.sources).await?
            | self.write_declared(&app, SINKS, &manifest.sinks).await?;
        let changed = !removed.is_empty()
            || deployed.iter().any(|d| d.changed)
            || expect == Expect::Absent
            || sources_changed;
        if changed {
            registry.write(&key, &record, expect).await?;
            for name in &removed {
                registry.forget_function(name).await?;
                runtimes.processes.forget(name);
            }
            self.functions.sync().await?;
            // A deploy is a sign traffic is coming: load the new versions now,
            // so their first requests are not cold starts.
            for f in deployed.iter().filter(|d| d.changed) {
                if let Some(live) = self.functions.get(&f.name)
                    && let Err(e) = live.load().await
                {
                    tracing::warn!(function = %f.name, error = %e, "preloading failed");
                }
            }
            tracing::info!(app = %app, functions = record.functions.len(), removed = removed.len(), "deployed");
        }
        Ok(DeployResponse {
            app,
            functions: deployed,
            removed,
            changed,
        })
    }

    /// Points `function` back (or forward) at an existing version.
    pub async fn rollback(&self, function: &str, version: u64) -> Result<()> {
        let _changes = self.changes.lock().await;
        let registry = self.functions.registry();
        let (owner, _) = registry
            .read::<FunctionRecord>(&function_key(function))
            .await?
            .ok_or_else(|| NodeError::function_not_found(function))?;
        let Some(target) = registry.version(function, version).await? else {
            return Err(Error::new(
                Code::VersionNotFound,
                format!("function `{function}` has no version {version}"),
            )
            .with_hint(format!("`gale versions {function}` lists them"))
            .into());
        };
        // The old version's routes must still fit beside everything else.
        let theirs: Vec<(String, Route)> = self.routes_except(|name, _| name == function);
        let ours: Vec<(String, Route)> = target
            .spec
            .routes()
            .into_iter()
            .map(|r| (function.to_string(), r))
            .collect();
        gale_core::manifest::check_routes(ours.iter().chain(&theirs).map(|(n, r)| (n.as_str(), r)))?;
        let key = app_key(&owner.app);
        let (mut record, rev) = registry
            .read::<AppRecord>(&key)
            .await?
            .ok_or_else(|| NodeError::function_not_found(function))?;
        record.functions.insert(function.to_string(), version);
        record.updated_at = now_ms();
        registry.write(&key, &record, Expect::Revision(rev)).await?;
        self.functions.sync().await
    }

    /// Removes a function: its routes stop at once, its versions are forgotten.
    pub async fn remove(&self, function: &str) -> Result<()> {
        let _changes = self.changes.lock().await;
        let registry = self.functions.registry();
        let (owner, _) = registry
            .read::<FunctionRecord>(&function_key(function))
            .await?
            .ok_or_else(|| NodeError::function_not_found(function))?;
        let key = app_key(&owner.app);
        if let Some((mut record, rev)) = registry.read::<AppRecord>(&key).await? {
            record.functions.remove(function);
            record.updated_at = now_ms();
            if record.functions.is_empty() {
                registry.delete(&key, Expect::Revision(rev)).await?;
            } else {
                registry.write(&key, &record, Expect::Revision(rev)).await?;
            }
        }
        registry.forget_function(function).await?;
        self.functions.runtimes().processes.forget(function);
        self.functions.sync().await
    }

    /// Makes the registry's sources (or sinks) of `app` under `prefix` the
    /// manifest's; whether any changed. One of another app's name was
    /// refused before anything was written.
    async fn write_declared<T>(&self, app: &str, prefix: &str, declared: &BTreeMap<String, T>) -> Result<bool>
    where
        T: Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned,
    {
        let registry = self.functions.registry();
        let stored: Vec<Declared<T>> = registry.declared(prefix).await?;
        let mut changed = false;
        for (name, spec) in declared {
            let record = Declared {
                name: name.clone(),
                app: app.to_string(),
                spec: spec.clone(),
            };
            match stored.iter().find(|s| &s.name == name) {
                Some(s) if *s == record => {}
                _ => {
                    registry
                        .write(&format!("{prefix}{name}"), &record, Expect::Any)
                        .await?;
                    changed = true;
                }
            }
        }
        for s in stored
            .iter()
            .filter(|s| s.app == app && !declared.contains_key(&s.name))
        {
            registry
                .delete(&format!("{prefix}{}", s.name), Expect::Any)
                .await?;
            changed = true;
        }
        Ok(changed)
    }
}

impl Control {
    /// A process function's artifact must be a package (its directory,
    /// packed) holding something to run.
    async fn check_package(&self, name: &str, digest: &str, spec: &gale_core::FunctionSpec) -> Result<()> {
        let Some(bytes) = self.artifacts.get(digest).await? else {
            return Err(Error::new(Code::ArtifactInvalid, format!("artifact {digest} vanished")).into());
        };
        let contents = tokio::task::spawn_blocking(move || gale_process::package::inspect(&bytes))
            .await
            .map_err(|e| NodeError::DataDir(format!("inspect task failed: {e}")))?
            .map_err(|e| {
                Error::new(Code::ArtifactInvalid, format!("function `{name}`: {e}"))
                    .with_hint("`gale deploy` packs a process function's `source` directory; upload that")
            })?;
        if spec.command.is_empty() && contents.bootstrap != Some(true) {
            let what = match contents.bootstrap {
                Some(false) => "its `bootstrap` file is not executable",
                _ => "it has no `command` and its directory holds no `bootstrap` file",
            };
            return Err(Error::new(Code::ManifestInvalid, format!("function `{name}`: {what}"))
                .with_hint("give `command = [\"python3\", \"-m\", \"awslambdaric\", \"app.handler\"]`, or add an executable `bootstrap`")
                .into());
        }
        Ok(())
    }

    /// Routes of live functions, leaving out those `skip(name, app)` names.
    fn routes_except(&self, skip: impl Fn(&str, &str) -> bool) -> Vec<(String, Route)> {
        self.functions
            .snapshot()
            .values()
            .filter(|l| !skip(&l.name, &l.app))
            .flat_map(|l| l.spec.routes().into_iter().map(|r| (l.name.clone(), r)))
            .collect()
    }
}
