//! `gale deploy`: build, upload, deploy, with each step shown as it happens.

use crate::cli::Format;
use crate::client::Client;
use anyhow::{Context, Result, anyhow, bail};
use gale_core::api::{DeployRequest, DeployResponse};
use gale_core::{Code, Error, Manifest};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Checks and builds locally first, so a bad manifest fails before any node
/// is contacted; `connect` makes the client only when there is something to send.
pub async fn deploy(connect: impl FnOnce() -> Result<Client>, file: &Path, format: Format) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        anyhow!(
            Error::new(
                Code::ManifestInvalid,
                format!("cannot read {}: {e}", file.display())
            )
            .with_hint("pass the manifest with -f, or run in the directory holding gale.toml")
            .render()
        )
    })?;
    let manifest =
        Manifest::from_toml(&text, &file.display().to_string()).map_err(|e| anyhow!(e.render()))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));

    for (name, f) in &manifest.functions {
        if let Some(build) = &f.build {
            step(&format!("building {name}: {build}"));
            let started = Instant::now();
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(build)
                .current_dir(dir)
                .status()
                .await
                .with_context(|| format!("cannot run the build command of function `{name}`"))?;
            if !status.success() {
                bail!(
                    "{}",
                    Error::new(
                        Code::ManifestInvalid,
                        format!("{}: `functions.{name}.build` failed ({status})", file.display())
                    )
                    .with_hint("fix the build, or run it by hand to see its output")
                    .render()
                );
            }
            done(started);
        }
    }

    let mut sources = Vec::new();
    for (name, f) in &manifest.functions {
        let path = dir.join(&f.source);
        if f.runtime == gale_core::manifest::RuntimeKind::Process {
            let packed = gale_process::package::pack(&path).map_err(|e| {
                anyhow!(
                    Error::new(
                        Code::ManifestInvalid,
                        format!("{}: `functions.{name}.source`: {e}", file.display())
                    )
                    .with_hint("a process function's source is its directory (holding its code and, without `command`, a `bootstrap`), relative to the manifest")
                    .render()
                )
            })?;
            sources.push((name.clone(), packed));
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| {
            anyhow!(
                Error::new(
                    Code::ManifestInvalid,
                    format!(
                        "{}: `functions.{name}.source`: cannot read {}: {e}",
                        file.display(),
                        path.display()
                    )
                )
                .with_hint("build the component first (or give `build`), or fix the path; it is relative to the manifest")
                .render()
            )
        })?;
        sources.push((name.clone(), data));
    }

    let client = connect()?;
    let mut artifacts = BTreeMap::new();
    for (name, data) in sources {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let url = format!("/v1/artifacts/{digest}");
        if !client.exists(&url).await? {
            step(&format!("uploading {name} ({} KiB)", data.len() / 1024));
            let started = Instant::now();
            client.put_bytes(&url, data).await?;
            done(started);
        }
        artifacts.insert(name.clone(), digest);
    }

    step(&format!(
        "deploying app {} (compiling on the node)",
        manifest.app.name
    ));
    let started = Instant::now();
    let app = manifest.app.name.clone();
    let response: DeployResponse = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            &DeployRequest { manifest, artifacts },
        )
        .await?;
    done(started);
    crate::output::print(format, &response, summary)
}

fn summary(r: &DeployResponse) -> String {
    let mut out = String::new();
    for f in &r.functions {
        let state = if f.changed { "deployed" } else { "unchanged" };
        out.push_str(&format!(
            "{:<20} v{:<4} {:<10} {}\n",
            f.name,
            f.version,
            state,
            f.routes.join(", ")
        ));
    }
    for name in &r.removed {
        out.push_str(&format!("{name:<20} removed\n"));
    }
    if !r.changed {
        out.push_str("nothing changed\n");
    }
    out
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn done(started: Instant) {
    eprintln!("    done in {:.1?}", started.elapsed());
}
