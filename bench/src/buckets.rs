//! The `buckets` scenario: PUT and GET throughput of the S3 API against
//! writing (durably) and reading the same bytes as plain files in the same
//! run, and upload → handler start latency at a steady upload rate.
//!
//! The S3 client is `reqwest` with URLs presigned by `rusty-s3` (SigV4,
//! the admin token as the secret, any key id). The plain-file ceiling
//! gives each write the durability Gale promises for an object's bytes:
//! a new file under a temporary name, written, `sync_all`, renamed into
//! its directory, the directory synced; it lives in the node's data
//! directory, so on the same file system as the node's objects.

use crate::{Node, cpu_seconds, guest, median};
use anyhow::{Context, Result, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The object sizes measured.
const SIZES: [(usize, &str); 2] = [(4 << 10, "4 KiB"), (1 << 20, "1 MiB")];
/// The most bytes one PUT measurement writes (the disk is shared).
const MAX_BYTES: u64 = 256 << 20;
/// The bucket of the throughput measurements (no trigger) and that of the
/// latency measurement (one wasm handler).
const BUCKET: &str = "bench";
const LATENCY_BUCKET: &str = "lat";
/// How long a presigned URL stays valid.
const EXPIRY: Duration = Duration::from_secs(3600);
const MIB: f64 = (1 << 20) as f64;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

/// Bytes that do not compress or repeat (xorshift).
fn payload(size: usize) -> bytes::Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v.into()
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
    Delete,
}

/// One measurement: operations done in `secs`.
#[derive(Clone, Copy)]
struct Rate {
    ops: u64,
    secs: f64,
}

impl Rate {
    fn per_sec(self) -> f64 {
        self.ops as f64 / self.secs
    }
}

struct S3 {
    bucket: Bucket,
    creds: Credentials,
    /// The node's process, whose CPU time each measurement reports.
    pid: u32,
    /// Concurrent clients.
    clients: u32,
}

impl S3 {
    fn url(&self, op: Op, key: &str) -> String {
        let creds = Some(&self.creds);
        match op {
            Op::Put => self.bucket.put_object(creds, key).sign(EXPIRY),
            Op::Get => self.bucket.get_object(creds, key).sign(EXPIRY),
            Op::Delete => self.bucket.delete_object(creds, key).sign(EXPIRY),
        }
        .to_string()
    }

    /// Runs `op` on keys `prefix/0`, `prefix/1`, … from `self.clients`
    /// concurrent clients, until `limit` operations are done or `within`
    /// has passed. Reads go round the first `keys` keys. The clients run
    /// on a thread of their own, on one core's worth of runtime, so that
    /// the load generator leaves as much of the machine as it can to the node.
    fn load(
        self: &Arc<Self>,
        op: Op,
        prefix: &str,
        keys: u64,
        body: &bytes::Bytes,
        limit: u64,
        within: Duration,
    ) -> Result<Rate> {
        let (s3, prefix, body, clients) = (self.clone(), prefix.to_string(), body.clone(), self.clients);
        let (node_cpu, own_cpu) = (cpu_seconds(self.pid), cpu_seconds(std::process::id()));
        let thread = std::thread::spawn(move || -> Result<Rate> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(clients as usize)
                    .build()?;
                let next = Arc::new(AtomicU64::new(0));
                let done = Arc::new(AtomicU64::new(0));
                let started = Instant::now();
                let tasks: Vec<_> = (0..clients)
                    .map(|_| {
                        let (s3, prefix, body, http, next, done) = (
                            s3.clone(),
                            prefix.clone(),
                            body.clone(),
                            http.clone(),
                            next.clone(),
                            done.clone(),
                        );
                        tokio::spawn(async move {
                            loop {
                                // Time first: every key taken is then done, so
                                // the keys written are `0..ops`.
                                if started.elapsed() >= within {
                                    return Ok::<_, anyhow::Error>(());
                                }
                                let i = next.fetch_add(1, Relaxed);
                                if i >= limit {
                                    return Ok(());
                                }
                                let key = match op {
                                    Op::Get => format!("{prefix}/{}", i % keys.max(1)),
                                    _ => format!("{prefix}/{i}"),
                                };
                                let url = s3.url(op, &key);
                                let request = match op {
                                    Op::Put => http.put(url).body(body.clone()),
                                    Op::Get => http.get(url),
                                    Op::Delete => http.delete(url),
                                };
                                let answer = request.send().await?;
                                let status = answer.status();
                                let got = answer.bytes().await?;
                                if !status.is_success() {
                                    bail!("{key}: {status}: {}", String::from_utf8_lossy(&got));
                                }
                                if op == Op::Get && got.len() != body.len() {
                                    bail!("{key}: {} bytes read, {} written", got.len(), body.len());
                                }
                                done.fetch_add(1, Relaxed);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                Ok(Rate {
                    ops: done.load(Relaxed),
                    secs: started.elapsed().as_secs_f64(),
                })
            })
        });
        let rate = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the clients' thread panicked"))??;
        if op != Op::Delete {
            eprintln!(
                "  gale {:<3} {:>6} objects in {:.2} s; CPU per object: node {:.0} µs, clients {:.0} µs",
                if op == Op::Put { "PUT" } else { "GET" },
                rate.ops,
                rate.secs,
                (cpu_seconds(self.pid) - node_cpu) * 1e6 / rate.ops.max(1) as f64,
                (cpu_seconds(std::process::id()) - own_cpu) * 1e6 / rate.ops.max(1) as f64
            );
        }
        Ok(rate)
    }
}

/// The same work on plain files in `dir`, from `tasks` threads: writes
/// create `dir/tmp/<n>`, write, `sync_all`, rename it to `dir/<xx>/<n>`
/// (256 directories, as Gale spreads its blobs) and sync that directory;
/// reads read a whole file.
fn plain(
    op: Op,
    dir: &Path,
    keys: u64,
    body: &[u8],
    tasks: u32,
    limit: u64,
    within: Duration,
) -> Result<Rate> {
    use std::io::Write;
    let path = |i: u64| dir.join(format!("{:02x}", i % 256)).join(i.to_string());
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        if started.elapsed() >= within {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Relaxed);
                        if i >= limit {
                            return Ok(());
                        }
                        match op {
                            Op::Put => {
                                let (tmp, path) = (dir.join("tmp").join(i.to_string()), path(i));
                                let mut f = std::fs::File::create(&tmp)?;
                                f.write_all(body)?;
                                f.sync_all()?;
                                drop(f);
                                std::fs::rename(&tmp, &path)?;
                                std::fs::File::open(path.parent().context("a parent")?)?.sync_all()?;
                            }
                            Op::Get => {
                                let got = std::fs::read(path(i % keys.max(1)))?;
                                if got.len() != body.len() {
                                    bail!("{} bytes read, {} written", got.len(), body.len());
                                }
                            }
                            Op::Delete => std::fs::remove_file(path(i))?,
                        }
                        done.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
    })?;
    Ok(Rate {
        ops: done.load(Relaxed),
        secs: started.elapsed().as_secs_f64(),
    })
}

fn fresh_dir(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("tmp"))?;
    for i in 0..256 {
        std::fs::create_dir_all(dir.join(format!("{i:02x}")))?;
    }
    Ok(())
}

/// Medians over the rounds of one size and operation.
#[derive(Default)]
struct Figures {
    gale: Vec<f64>,
    plain: Vec<f64>,
    ratios: Vec<f64>,
}

impl Figures {
    fn push(&mut self, gale: Rate, plain: Rate) {
        self.gale.push(gale.per_sec());
        self.plain.push(plain.per_sec());
        self.ratios.push(gale.per_sec() / plain.per_sec());
    }
}

pub async fn run(seconds: f64, clients: u32, rounds: u32, rate: u32, latency_seconds: u32) -> Result<()> {
    let testbed = guest("tests/guests", "testbed")?;
    let handler = testbed.with_file_name("gale_test_handler.wasm");
    let node = Node::start_with(&["--log-keep", "1000000"])?;
    node.deploy(&format!(
        "[app]\nname = \"bench\"\n[buckets.{BUCKET}]\n[buckets.{LATENCY_BUCKET}]\n\
         [functions.h]\nsource = \"{}\"\n[[functions.h.bucket]]\nbucket = \"{LATENCY_BUCKET}\"\nmax_concurrency = 64\n",
        handler.display()
    ))?;
    let token = std::fs::read_to_string(node.dir.join("token"))?
        .trim()
        .to_string();
    let endpoint = format!("http://{}", node.s3).parse()?;
    let s3 = Arc::new(S3 {
        bucket: Bucket::new(endpoint, UrlStyle::Path, BUCKET, "us-east-1")?,
        creds: Credentials::new("bench", token.clone()),
        pid: node.pid,
        clients,
    });
    let plain_dir: PathBuf = node.dir.join("plain");
    let within = Duration::from_secs_f64(seconds);

    // Warm up: connections, the bucket's index, the blocking pools.
    let warm = payload(4 << 10);
    let n = s3.load(Op::Put, "warm", 0, &warm, 200, within)?.ops;
    s3.load(Op::Get, "warm", n, &warm, 200, within)?;
    fresh_dir(&plain_dir)?;
    plain(Op::Put, &plain_dir, 0, &warm, clients, 200, within)?;

    let mut puts: Vec<Figures> = SIZES.iter().map(|_| Figures::default()).collect();
    let mut gets: Vec<Figures> = SIZES.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds.max(1) {
        for (s, &(size, label)) in SIZES.iter().enumerate() {
            let body = payload(size);
            let limit = MAX_BYTES / size as u64;
            let prefix = format!("r{round}-{size}");
            eprintln!("round {} {label}:", round + 1);
            fresh_dir(&plain_dir)?;
            let plain_put = plain(Op::Put, &plain_dir, 0, &body, clients, limit, within)?;
            let gale_put = s3.load(Op::Put, &prefix, 0, &body, limit, within)?;
            let plain_get = plain(
                Op::Get,
                &plain_dir,
                plain_put.ops,
                &body,
                clients,
                u64::MAX,
                within,
            )?;
            let gale_get = s3.load(Op::Get, &prefix, gale_put.ops, &body, u64::MAX, within)?;
            eprintln!(
                "  PUT gale {:.0}/s, plain files {:.0}/s = {:.0} %; GET gale {:.0}/s, plain files {:.0}/s = {:.0} %",
                gale_put.per_sec(),
                plain_put.per_sec(),
                gale_put.per_sec() / plain_put.per_sec() * 100.0,
                gale_get.per_sec(),
                plain_get.per_sec(),
                gale_get.per_sec() / plain_get.per_sec() * 100.0
            );
            puts[s].push(gale_put, plain_put);
            gets[s].push(gale_get, plain_get);
            // Large objects go (the disk is shared); small ones stay, few bytes.
            if size >= 1 << 20 {
                s3.load(Op::Delete, &prefix, 0, &body, gale_put.ops, Duration::MAX)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&plain_dir);

    let lat_bucket = Bucket::new(
        format!("http://{}", node.s3).parse()?,
        UrlStyle::Path,
        LATENCY_BUCKET,
        "us-east-1",
    )?;
    let lat = latency(&node, &token, &lat_bucket, &s3.creds, rate, latency_seconds).await?;

    println!(
        "\nbuckets: S3 API (presigned SigV4 over HTTP/1.1, {clients} clients) vs plain files \
         ({clients} threads; writes: create a temporary file, write, sync_all, rename, sync the directory)"
    );
    println!(
        "{seconds} s per measurement at most ({} MiB per PUT measurement), {rounds} rounds: medians",
        MAX_BYTES >> 20
    );
    for (s, &(size, label)) in SIZES.iter().enumerate() {
        for (op, f, goal) in [
            (
                "PUT",
                &puts[s],
                if size >= 1 << 20 { " (goal ≥ 50 %)" } else { "" },
            ),
            (
                "GET",
                &gets[s],
                if size >= 1 << 20 { " (goal ≥ 70 %)" } else { "" },
            ),
        ] {
            let (g, p) = (median(f.gale.clone()), median(f.plain.clone()));
            println!(
                "{op} {label:<6} gale {g:>8.0} objects/s {:>8.1} MiB/s   plain files {p:>8.0} objects/s {:>8.1} MiB/s   = {:>3.0} % of the ceiling{goal}",
                g * size as f64 / MIB,
                p * size as f64 / MIB,
                median(f.ratios.clone()) * 100.0
            );
        }
    }
    println!(
        "latency upload → handler start at {rate} uploads/s for {latency_seconds} s ({} uploads of 1 KiB, ms resolution):",
        lat.count
    );
    println!(
        "  from the PUT's start: p50 {:.1} ms, p99 {:.1} ms (goal p99 < 20 ms)",
        lat.from_sent.0, lat.from_sent.1
    );
    println!(
        "  from the PUT's answer: p50 {:.1} ms, p99 {:.1} ms; from the notification's commit: p50 {:.1} ms, p99 {:.1} ms",
        lat.from_acked.0, lat.from_acked.1, lat.from_commit.0, lat.from_commit.1
    );
    println!(
        "  the PUT itself (start → answer): p50 {:.1} ms, p99 {:.1} ms",
        lat.put.0, lat.put.1
    );
    Ok(())
}

struct Latency {
    count: usize,
    from_sent: (f64, f64),
    from_acked: (f64, f64),
    from_commit: (f64, f64),
    put: (f64, f64),
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Uploads at a steady `rate` for `seconds` into `bucket`, whose handler
/// `h` runs for each upload, and measures upload → handler start from the
/// invocation logs: each log names its event, the bucket's topic names the
/// event's key.
async fn latency(
    node: &Node,
    token: &str,
    bucket: &Bucket,
    creds: &Credentials,
    rate: u32,
    seconds: u32,
) -> Result<Latency> {
    let total = (rate * seconds) as usize;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let body = payload(1 << 10);
    // Warm up the handler (code loaded, first instance) before measuring.
    let url = bucket.put_object(Some(creds), "warm").sign(EXPIRY);
    let answer = http.put(url.as_str()).body(body.clone()).send().await?;
    if !answer.status().is_success() {
        bail!("warm-up upload: {}", answer.status());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let key = format!("up-{i}");
        let url = bucket.put_object(Some(creds), &key).sign(EXPIRY);
        let (http, body) = (http.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let sent = now_ms();
            let answer = http.put(url.as_str()).body(body).send().await?;
            let acked = now_ms();
            if !answer.status().is_success() {
                bail!("upload {key}: {}", answer.status());
            }
            Ok::<_, anyhow::Error>((key, sent, acked))
        }));
    }
    let mut uploads = HashMap::with_capacity(total);
    for t in tasks {
        let (key, sent, acked) = t.await??;
        uploads.insert(key, (sent, acked));
    }

    // Logs are written in batches: wait until every upload's is there.
    let admin = |path: String| {
        let (http, token) = (http.clone(), token.to_string());
        let url = format!("{}{path}", node.admin);
        async move {
            let v: serde_json::Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok::<_, anyhow::Error>(v)
        }
    };
    let mut started = HashMap::new(); // event id → handler start (ms)
    let (mut after, deadline) = (0u64, Instant::now() + Duration::from_secs(60));
    while started.len() < total + 1 && Instant::now() < deadline {
        let logs = admin(format!("/v1/functions/h/logs?after={after}&limit=1000")).await?;
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
    // The notifications: which key each event is about, and its commit time.
    let topic = format!("_bucket.{LATENCY_BUCKET}");
    let mut after = 0u64;
    let (mut from_sent, mut from_acked, mut from_commit, mut put) = (vec![], vec![], vec![], vec![]);
    loop {
        let events = admin(format!("/v1/topics/{topic}/events?after={after}&limit=1000")).await?;
        let events = events.as_array().context("events are a list")?;
        if events.is_empty() {
            break;
        }
        for e in events {
            after = e["seq"].as_u64().unwrap_or(after);
            let (id, key) = (e["event"]["id"].as_str(), e["event"]["subject"].as_str());
            let (Some(id), Some(key)) = (id, key) else {
                continue;
            };
            let (Some(&(sent, acked)), Some(&start)) = (uploads.get(key), started.get(id)) else {
                continue;
            };
            from_sent.push((start - sent).max(0.0));
            from_acked.push((start - acked).max(0.0));
            if let Some(commit) = e["published_at"].as_f64() {
                from_commit.push((start - commit).max(0.0));
            }
            put.push(acked - sent);
        }
    }
    if from_sent.len() < total {
        bail!(
            "{} of {total} uploads matched to a handler start (logs found: {})",
            from_sent.len(),
            started.len()
        );
    }
    Ok(Latency {
        count: from_sent.len(),
        from_sent: p50_p99(from_sent),
        from_acked: p50_p99(from_acked),
        from_commit: p50_p99(from_commit),
        put: p50_p99(put),
    })
}
