//! Text and JSON rendering of CLI results.

use crate::cli::Format;
use anyhow::Result;
use gale_core::BucketTrigger;
use gale_core::api::{
    BucketInfo, FunctionInfo, InvocationLog, SourceInfo, StoredEventInfo, TopicInfo, VersionInfo,
};
use gale_core::manifest::{AsyncPolicy, Backoff, EventTrigger, Ordering, RuntimeKind, ScheduleTrigger};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

pub fn print<T: Serialize>(format: Format, value: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Format::Text => write!(out, "{}", text(value))?,
    }
    Ok(())
}

pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn function_table(functions: &Vec<FunctionInfo>) -> String {
    if functions.is_empty() {
        return "no functions deployed; `gale deploy` deploys gale.toml\n".into();
    }
    let mut out = format!(
        "{:<20} {:<12} {:>7} {:>11} {:>6} {:>10} {:<5} {}\n",
        "FUNCTION", "APP", "VERSION", "INVOCATIONS", "COLD", "CPU", "WARM", "ROUTES"
    );
    for f in functions {
        out.push_str(&format!(
            "{:<20} {:<12} {:>7} {:>11} {:>6} {:>10} {:<5} {}\n",
            f.name,
            f.app,
            f.version,
            f.stats.invocations,
            f.stats.cold_starts,
            format!("{:.1}s", f.stats.cpu_us as f64 / 1e6),
            if f.stats.warm { "yes" } else { "no" },
            f.routes.join(", ")
        ));
    }
    out
}

pub fn describe(f: &FunctionInfo) -> String {
    let s = &f.spec;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16} {v}\n"));
    line("function", f.name.clone());
    line("app", f.app.clone());
    line("version", format!("{} (of {})", f.version, f.versions));
    line("deployed", time(f.updated_at));
    line("artifact", f.artifact.clone());
    line(
        "routes",
        if f.routes.is_empty() {
            "-".into()
        } else {
            f.routes.join(", ")
        },
    );
    for t in &s.events {
        line("events", event_trigger(t));
    }
    for t in &s.schedule {
        line("schedule", schedule(t));
    }
    for t in &s.bucket {
        line("bucket", bucket_trigger(t));
    }
    if !s.buckets.is_empty() {
        line("buckets", format!("{} (read and write)", s.buckets.join(", ")));
    }
    if s.async_policy != AsyncPolicy::default() {
        line("async", async_policy(&s.async_policy));
    }
    if s.runtime == RuntimeKind::Process {
        let mut runtime = "process".to_string();
        if !s.command.is_empty() {
            runtime.push_str(&format!(", command {}", s.command.join(" ")));
        }
        if let Some(h) = &s.handler {
            runtime.push_str(&format!(", handler {h}"));
        }
        line("runtime", runtime);
    }
    line(
        "env",
        if s.env.is_empty() {
            "-".into()
        } else {
            let keys: Vec<&str> = s.env.keys().map(String::as_str).collect();
            format!("{} (values hidden)", keys.join(", "))
        },
    );
    if !s.allow_outbound.is_empty() {
        line("allow_outbound", s.allow_outbound.join(", "));
    }
    line("memory", s.memory.to_string());
    line("timeout", humantime::format_duration(s.timeout.0).to_string());
    if let Some(cpu) = s.cpu {
        line(
            "cpu",
            format!("{} per invocation", humantime::format_duration(cpu.0)),
        );
    }
    line("max_instances", s.max_instances.to_string());
    line("queue", s.queue.to_string());
    line("instance_reuse", s.instance_reuse.to_string());
    line("max_body", s.max_body.to_string());
    line("invocations", f.stats.invocations.to_string());
    line("errors", f.stats.errors.to_string());
    line("cold starts", f.stats.cold_starts.to_string());
    line("throttled", f.stats.throttled.to_string());
    line("cpu time", cpu_time(&f.stats));
    line("instances now", f.stats.active.to_string());
    line("queued now", f.stats.queued.to_string());
    line(
        "warm",
        if f.stats.warm {
            "yes".into()
        } else {
            "no (scaled to zero)".into()
        },
    );
    out
}

/// The CPU its invocations used since the node started, per invocation,
/// and how long they waited for a core.
fn cpu_time(s: &gale_core::api::FunctionStats) -> String {
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    let mut text = ms(s.cpu_us);
    if let Some(each) = s.cpu_us.checked_div(s.invocations) {
        text.push_str(&format!(" ({} per invocation)", ms(each)));
    }
    if s.cpu_waited_us > 0 {
        text.push_str(&format!(", waited {} for a core", ms(s.cpu_waited_us)));
    }
    text
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn retries(max_attempts: u32, b: &Backoff) -> String {
    format!(
        "{max_attempts} attempts, backoff {}..{} x{}",
        duration(b.initial.0),
        duration(b.max.0),
        b.multiplier
    )
}

/// One `[[functions.NAME.events]]` entry on one line.
fn event_trigger(t: &EventTrigger) -> String {
    let mut out = format!("topic {}", t.topic);
    let mut filters: Vec<String> = t.filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
    filters.extend(
        t.filters
            .iter()
            .map(|f| serde_json::to_string(f).unwrap_or_default()),
    );
    if !filters.is_empty() {
        out.push_str(&format!(" where {}", filters.join(", ")));
    }
    out.push_str(&delivery(t));
    out
}

/// One `[[functions.NAME.bucket]]` entry on one line.
fn bucket_trigger(t: &BucketTrigger) -> String {
    let mut out = format!("{} {}", t.bucket, t.events.join(", "));
    if let Some(p) = &t.prefix {
        out.push_str(&format!(" keys {p}*"));
    }
    if let Some(s) = &t.suffix {
        out.push_str(&format!(" keys *{s}"));
    }
    out.push_str(&delivery(&t.as_event_trigger(String::new())));
    out
}

/// How a trigger's events are delivered: "; 5 attempts, ...; dead letter ...".
fn delivery(t: &EventTrigger) -> String {
    let mut out = format!("; {}", retries(t.max_attempts, &t.backoff));
    match &t.dead_letter {
        Some(dl) => out.push_str(&format!("; dead letter {dl}")),
        None => out.push_str("; no dead letter (failures are dropped)"),
    }
    if let Some(ack) = &t.ack_timeout {
        out.push_str(&format!("; ack timeout {}", duration(ack.0)));
    }
    if t.batch_size > 1 {
        out.push_str(&format!(
            "; batches of {} within {}",
            t.batch_size,
            duration(t.batch_window.0)
        ));
    }
    out.push_str(&format!("; concurrency {}", t.max_concurrency));
    if t.ordering == Ordering::PartitionKey {
        out.push_str("; ordered by partition key");
    }
    out
}

/// One `[[functions.NAME.schedule]]` entry on one line.
fn schedule(t: &ScheduleTrigger) -> String {
    let missed = serde_json::to_value(t.missed)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!(
        "{} ({}); missed firings: {missed}; {}",
        t.cron,
        t.timezone,
        retries(t.max_attempts, &t.backoff)
    );
    if let Some(dl) = &t.dead_letter {
        out.push_str(&format!("; dead letter {dl}"));
    }
    out
}

fn async_policy(p: &AsyncPolicy) -> String {
    let mut out = retries(p.max_attempts, &p.backoff);
    if let Some(t) = &p.on_success {
        out.push_str(&format!("; on success {t}"));
    }
    if let Some(t) = &p.on_failure {
        out.push_str(&format!("; on failure {t}"));
    }
    out
}

pub fn version_table(versions: &Vec<VersionInfo>) -> String {
    let mut out = format!(
        "{:<8} {:<8} {:<25} {:<20} {}\n",
        "VERSION", "CURRENT", "CREATED", "ARTIFACT", "ROUTES"
    );
    for v in versions {
        out.push_str(&format!(
            "{:<8} {:<8} {:<25} {:<20} {}\n",
            v.version,
            if v.current { "*" } else { "" },
            time(v.created_at),
            &v.artifact[..v.artifact.len().min(19)],
            v.routes.join(", ")
        ));
    }
    out
}

/// One invocation log record; `named` puts the function's name after the time.
pub fn print_log(format: Format, log: &InvocationLog, named: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string(log)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{}{} {} v{} {} {} {}µs cpu {}µs{}{}",
        time(log.started_at),
        if named {
            format!(" {}", log.function)
        } else {
            String::new()
        },
        log.request_id,
        log.version,
        log.outcome.as_str(),
        log.status,
        log.duration_us,
        log.cpu_us,
        if log.cold_start { " cold" } else { "" },
        log.error
            .as_ref()
            .map(|e| format!(" error: {e}"))
            .unwrap_or_default()
    )?;
    if !log.events.is_empty() {
        writeln!(out, "  events| {}", log.events.join(", "))?;
    }
    for (stream, text) in [("stdout", &log.stdout), ("stderr", &log.stderr)] {
        for l in text.lines() {
            writeln!(out, "  {stream}| {l}")?;
        }
    }
    Ok(())
}

pub fn topic_table(topics: &Vec<TopicInfo>) -> String {
    if topics.is_empty() {
        return "no topics; declare them under [topics] in gale.toml or `gale topics create NAME`\n".into();
    }
    let mut out = format!(
        "{:<24} {:>8} {:>10} {:>9} {:<25} {}\n",
        "TOPIC",
        "DEPTH",
        "PUBLISHED",
        "RATE/S",
        "OLDEST",
        "SUBSCRIPTIONS (lag, retrying, rate/s[, limited by])"
    );
    for t in topics {
        let subs: Vec<String> = t
            .subscriptions
            .iter()
            .map(|s| {
                let limit = s
                    .limited_by
                    .map(|l| format!(", {}-limited", l.as_str()))
                    .unwrap_or_default();
                format!(
                    "{} ({}, {}, {:.1}{limit})",
                    s.name, s.lag, s.retrying, s.delivery_rate
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<24} {:>8} {:>10} {:>9.1} {:<25} {}\n",
            t.name,
            t.depth,
            t.published,
            t.publish_rate,
            t.oldest_at.map(time).unwrap_or_else(|| "-".into()),
            if subs.is_empty() {
                "-".into()
            } else {
                subs.join(", ")
            }
        ));
    }
    out
}

pub fn source_table(sources: &Vec<SourceInfo>) -> String {
    if sources.is_empty() {
        return "no sources; declare them under [sources] in gale.toml (schedules of functions are sources too)\n"
            .into();
    }
    let mut out = format!(
        "{:<28} {:<9} {:<24} {:<9} {:>9} {:>7} {:<26} {:>16} {}\n",
        "SOURCE", "TYPE", "TOPIC", "STATE", "PUBLISHED", "PARKED", "POSITION", "LAG", "LAST ERROR"
    );
    for s in sources {
        let mut lag = s
            .lag_ms
            .map(|ms| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string())
            .unwrap_or_else(|| "-".into());
        if let Some(bytes) = s.lag_bytes {
            lag = format!("{lag} ({bytes} B)");
        }
        if let Some(messages) = s.lag_messages {
            lag = format!("{lag} ({messages} msgs)");
        }
        out.push_str(&format!(
            "{:<28} {:<9} {:<24} {:<9} {:>9} {:>7} {:<26} {:>16} {}\n",
            s.name,
            s.kind,
            s.topic,
            s.state,
            s.published,
            s.parked,
            s.position.as_deref().unwrap_or("-"),
            lag,
            s.last_error.as_deref().unwrap_or("-"),
        ));
    }
    out
}

pub fn dead_letter_table(events: &Vec<StoredEventInfo>) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut out = format!(
        "{:<6} {:<25} {:<24} {:<16} {:>8} {}\n",
        "SEQ", "PARKED", "ID", "FUNCTION", "ATTEMPTS", "ERROR"
    );
    for e in events {
        let attr = |name: &str| match &e.event[name] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{:<6} {:<25} {:<24} {:<16} {:>8} {}\n",
            e.seq,
            time(e.published_at),
            attr("id"),
            attr("galefunction"),
            attr("galeattempts"),
            attr("galeerror")
        ));
    }
    out
}

pub fn bucket_table(buckets: &Vec<BucketInfo>) -> String {
    if buckets.is_empty() {
        return "no buckets; declare [buckets.NAME] in a manifest, or `gale buckets create NAME`\n".into();
    }
    let mut out = format!(
        "{:<24} {:>9} {:>12} {:>12} {}\n",
        "BUCKET", "OBJECTS", "BYTES", "MAX", "EXPIRE AFTER"
    );
    for b in buckets {
        out.push_str(&format!(
            "{:<24} {:>9} {:>12} {:>12} {}\n",
            b.name,
            b.objects,
            b.bytes,
            b.max_bytes.map_or("-".into(), |m| m.to_string()),
            b.expire_after_ms.map_or("-".into(), |ms| {
                humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
            })
        ));
    }
    out
}
