//! `gale logs`: invocation logs of one function, or of every function of
//! an app merged in start-time order.
//!
//! The admin API serves each function's records in `seq` order, after a
//! `seq` (`?after=`) or the newest ones (`?tail=true`). That is enough for
//! everything here, so the node needs nothing new: `--since` pages through
//! a function's records (a node keeps at most `--log-keep` of them, 1000 by
//! default, one page) and keeps those started since then; `--app` reads
//! each function of the app and merges; `-f` asks each function for what
//! came after the last record it printed.

use super::Ctx;
use crate::client::Client;
use crate::output;
use anyhow::{Result, bail};
use gale_core::api::{FunctionInfo, InvocationLog};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Records per request (the admin API's largest page).
const PAGE: usize = 1000;
/// How often `-f` asks for new records.
const POLL: Duration = Duration::from_millis(300);
/// How often `--app -f` looks for functions deployed to the app meanwhile.
const RELIST: Duration = Duration::from_secs(3);

pub async fn run(
    ctx: &Ctx,
    function: Option<String>,
    app: Option<String>,
    follow: bool,
    limit: Option<usize>,
    since_ms: Option<u64>,
) -> Result<()> {
    let limit = limit.unwrap_or(if since_ms.is_some() { usize::MAX } else { 20 });
    let client = ctx.client()?;
    let format = ctx.format();
    // Per function, the seq of the last record read.
    let mut after: BTreeMap<String, u64> = BTreeMap::new();
    match (&function, &app) {
        (Some(f), _) => {
            after.insert(f.clone(), 0);
        }
        (None, Some(app)) => {
            let functions = functions_of(&client, app).await?;
            if functions.is_empty() {
                bail!(
                    "no function of app `{app}` is deployed\n  hint: `gale ls` lists the deployed functions and their apps"
                );
            }
            after.extend(functions.into_iter().map(|f| (f, 0)));
        }
        (None, None) => bail!("name a function, or an app with --app"),
    }
    let named = app.is_some();

    let mut first = Vec::new();
    for (name, last) in after.iter_mut() {
        let records = match since_ms {
            Some(since) => {
                let mut kept = Vec::new();
                loop {
                    let page = page(&client, name, *last).await?;
                    let full = page.len() == PAGE;
                    for log in page {
                        *last = log.seq;
                        if log.started_at >= since {
                            kept.push(log);
                        }
                    }
                    if !full {
                        break;
                    }
                }
                kept
            }
            None => {
                let tail: Vec<InvocationLog> = client
                    .get(&format!(
                        "/v1/functions/{name}/logs?tail=true&limit={}",
                        limit.min(PAGE)
                    ))
                    .await?;
                if let Some(log) = tail.last() {
                    *last = log.seq;
                }
                tail
            }
        };
        first.extend(records);
    }
    sort(&mut first);
    let skip = first.len().saturating_sub(limit);
    for log in &first[skip..] {
        output::print_log(format, log, named)?;
    }
    if !follow {
        return Ok(());
    }

    let mut listed = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(app) = &app
            && listed.elapsed() >= RELIST
        {
            listed = Instant::now();
            for f in functions_of(&client, app).await? {
                after.entry(f).or_insert(0);
            }
        }
        let mut next = Vec::new();
        let mut gone = Vec::new();
        for (name, last) in after.iter_mut() {
            match page(&client, name, *last).await {
                Ok(records) => {
                    if let Some(log) = records.last() {
                        *last = log.seq;
                    }
                    next.extend(records);
                }
                // A function removed while followed along with its app.
                Err(_) if named => gone.push(name.clone()),
                Err(e) => return Err(e),
            }
        }
        for name in gone {
            after.remove(&name);
        }
        sort(&mut next);
        for log in &next {
            output::print_log(format, log, named)?;
        }
    }
}

/// The records of `function` after `after`, oldest first, one page.
async fn page(client: &Client, function: &str, after: u64) -> Result<Vec<InvocationLog>> {
    client
        .get(&format!(
            "/v1/functions/{function}/logs?after={after}&limit={PAGE}"
        ))
        .await
}

async fn functions_of(client: &Client, app: &str) -> Result<Vec<String>> {
    let all: Vec<FunctionInfo> = client.get("/v1/functions").await?;
    Ok(all.into_iter().filter(|f| f.app == app).map(|f| f.name).collect())
}

/// Start-time order; records of one function that started in the same
/// millisecond stay in their log order.
fn sort(records: &mut [InvocationLog]) {
    records.sort_by_key(|r| (r.started_at, r.seq));
}
