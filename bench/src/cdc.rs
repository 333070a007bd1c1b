//! The `cdc` scenario: PostgreSQL change data capture (a source of
//! `type = "postgres"`) from committed rows to durable topic events,
//! against `pg_recvlogical`, PostgreSQL's own logical replication client,
//! reading the same changes from its own slot in the same run; then
//! commit → handler start latency at a steady rate of changes.
//!
//! The server is a throwaway PostgreSQL made with the installed `initdb`
//! in a temporary directory (`wal_level = logical`, `fsync = off`: the
//! readers are measured, not the server's disk; `autovacuum = off`, as
//! the table only grows and a vacuum would land on whichever reader runs
//! first), on a free loopback port,
//! run as the `postgres` user when the benchmark runs as root, and removed
//! at the end. The machine's shared server is never touched.

use crate::admin::Admin;
use crate::{Node, cpu_seconds, free_port, guest, median};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DB: &str = "bench";
/// The publication both readers follow (the benchmark's, not Gale's, so
/// removing a source leaves it in place).
const PUBLICATION: &str = "bench_pub";
const INSERT: &str = "INSERT INTO orders (id, sku, qty, note) VALUES ($1, $2, $3, $4)";

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

pub async fn run(rows: u32, writers: u32, rounds: u32, rate: u32, seconds: u32) -> Result<()> {
    let handler = guest("tests/guests", "testbed")?.with_file_name("gale_test_handler.wasm");
    let pg = Pg::start().await?;
    pg.client("postgres")
        .await?
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await?;
    let db = pg.client(DB).await?;
    db.batch_execute(&format!(
        "CREATE TABLE orders (id bigint PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, note text, \
         at timestamptz NOT NULL DEFAULT now());
         CREATE PUBLICATION {PUBLICATION} FOR TABLE orders"
    ))
    .await?;

    let node = Node::start_with(&["--log-keep", "1000000"])?;
    let gale = Gale {
        node: &node,
        admin: Admin::of(&node)?,
        url: format!("postgres://postgres@127.0.0.1:{}/{DB}", pg.port),
        handler,
        rounds: rounds.max(1),
    };
    gale.deploy(None)?;
    let ids = AtomicU64::new(1);

    // Throughput: both readers catch up on the same WAL, in turn.
    let (mut recv_rates, mut gale_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut recv_cpu, mut gale_cpu, mut pg_cpu_recv, mut pg_cpu_gale) = (vec![], vec![], vec![], vec![]);
    for round in 1..=gale.rounds {
        let (gale_slot, recv_slot) = (format!("gale_r{round}"), format!("recv_r{round}"));
        for slot in [&gale_slot, &recv_slot] {
            db.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .await?;
        }
        let first = ids.fetch_add(rows as u64, Relaxed);
        let (_, written) = write_rows(&pg, first, rows, writers).await?;
        let end: String = db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        eprintln!(
            "round {round}: {rows} rows written by {writers} writers in {written:.2} s ({:.0}/s), up to {end}",
            rows as f64 / written
        );
        let mut recv = None;
        let mut ours = None;
        // The order alternates, so neither always reads the WAL first.
        for turn in 0..2 {
            if (turn + round) % 2 == 1 {
                let pg_cpu = pg.cpu();
                let r = tokio::task::block_in_place(|| pg.recvlogical(&recv_slot, &end, rows))?;
                pg_cpu_recv.push((pg.cpu() - pg_cpu) * 1e6 / rows as f64);
                eprintln!(
                    "round {round}: pg_recvlogical read {rows} changes in {:.2} s ({:.0}/s; {} bytes out; its CPU {:.1} µs/change)",
                    r.secs,
                    rows as f64 / r.secs,
                    r.bytes,
                    r.cpu * 1e6 / rows as f64
                );
                recv_cpu.push(r.cpu * 1e6 / rows as f64);
                recv = Some(rows as f64 / r.secs);
            } else {
                let (pg_cpu, cpu, threads) = (pg.cpu(), cpu_seconds(node.pid), thread_cpu(node.pid));
                let topic = format!("rows{round}");
                let started = Instant::now();
                gale.deploy(Some(Source {
                    name: &format!("cdc{round}"),
                    slot: Some(&gale_slot),
                    topic: &topic,
                }))?;
                gale.admin
                    .wait_published(&topic, 1, Duration::from_secs(60))
                    .await?;
                let first = started.elapsed().as_secs_f64();
                gale.admin
                    .wait_published(&topic, rows as u64, Duration::from_secs(600))
                    .await?;
                let secs = started.elapsed().as_secs_f64();
                let node_cpu = (cpu_seconds(node.pid) - cpu) * 1e6 / rows as f64;
                pg_cpu_gale.push((pg.cpu() - pg_cpu) * 1e6 / rows as f64);
                let mut by_thread: Vec<(String, f64)> = thread_cpu(node.pid)
                    .into_iter()
                    .map(|(name, secs)| {
                        let before = threads.get(&name).copied().unwrap_or(0.0);
                        (name, (secs - before) * 1e6 / rows as f64)
                    })
                    .filter(|(_, us)| *us >= 0.5)
                    .collect();
                by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
                let by_thread: Vec<String> = by_thread
                    .iter()
                    .map(|(name, us)| format!("{name} {us:.1}"))
                    .collect();
                eprintln!(
                    "round {round}: Gale published {rows} changes durably in {secs:.2} s ({:.0}/s; the first after {:.0} ms, \
                     {:.0}/s from there; node CPU {node_cpu:.1} µs/change, by thread: {})",
                    rows as f64 / secs,
                    first * 1e3,
                    (rows - 1) as f64 / (secs - first),
                    by_thread.join(", ")
                );
                gale_cpu.push(node_cpu);
                ours = Some(rows as f64 / secs);
                // Stop reading: the next writes are for the next round.
                gale.deploy(None)?;
            }
        }
        let (recv, ours) = (recv.unwrap(), ours.unwrap());
        db.batch_execute(&format!("SELECT pg_drop_replication_slot('{recv_slot}')"))
            .await?;
        recv_rates.push(recv);
        gale_rates.push(ours);
        ratios.push(ours / recv);
    }

    // Live: Gale streaming while the writers write.
    gale.deploy(Some(Source {
        name: "live",
        slot: None,
        topic: "live",
    }))?;
    gale.admin.wait_streaming("live").await?;
    let (cpu, pg_cpu) = (cpu_seconds(node.pid), pg.cpu());
    let first = ids.fetch_add(rows as u64, Relaxed);
    let (started, written) = write_rows(&pg, first, rows, writers).await?;
    gale.admin
        .wait_published("live", rows as u64, Duration::from_secs(600))
        .await?;
    let live_secs = started.elapsed().as_secs_f64();
    let live_node_cpu = (cpu_seconds(node.pid) - cpu) * 1e6 / rows as f64;
    let live_pg_cpu = (pg.cpu() - pg_cpu) * 1e6 / rows as f64;
    eprintln!(
        "live: {rows} rows written in {written:.2} s ({:.0}/s), all durable in Gale after {live_secs:.2} s; \
         CPU per change: node {live_node_cpu:.1} µs, PostgreSQL (writers' backends and walsender) {live_pg_cpu:.1} µs",
        rows as f64 / written
    );

    // Latency: a handler subscribed to the source's topic.
    let lat = gale.latency(&pg, &ids, writers, rate, seconds).await?;

    let rounds = gale.rounds;
    let (recv, ours, ratio) = (median(recv_rates), median(gale_rates), median(ratios));
    let recv_cpu_all = median(recv_cpu.iter().zip(&pg_cpu_recv).map(|(a, b)| a + b).collect());
    println!(
        "\ncdc: PostgreSQL {} logical replication (pgoutput) of single-row INSERT transactions from {writers} writers",
        pg.version
    );
    println!(
        "throughput: both readers catch up on the same WAL. Each round creates both slots, writes {rows} rows \
         with both readers stopped, then times each reader in turn (the order alternates) from its start \
         (process start / deploy of the source) to the last change: pg_recvlogical until --endpos (the WAL \
         position after the last commit), Gale until the last change is a durable event in the topic"
    );
    println!(
        "pg_recvlogical (pgoutput, to a file)            {recv:>9.0} changes/s  (median of {rounds}; its CPU {:.1} µs/change, PostgreSQL's {:.1} µs/change)",
        median(recv_cpu),
        median(pg_cpu_recv)
    );
    println!(
        "Gale source → durable topic events              {ours:>9.0} changes/s  = {:.0} % of pg_recvlogical (median of the rounds' ratios; goals ≥ 50 %, ≥ 10,000/s)",
        ratio * 100.0
    );
    let (gale_cpu, pg_cpu_gale) = (median(gale_cpu), median(pg_cpu_gale));
    println!("  CPU per change: Gale node {gale_cpu:.1} µs, PostgreSQL (walsender) {pg_cpu_gale:.1} µs");
    println!(
        "  CPU per change, reader and PostgreSQL together (steadier than rates on a shared machine): \
         Gale {:.1} µs, pg_recvlogical {:.1} µs",
        gale_cpu + pg_cpu_gale,
        recv_cpu_all
    );
    println!(
        "live, Gale streaming while {writers} writers insert {rows} rows: writers {:.0} rows/s; first commit → last event durable {:.0} changes/s",
        rows as f64 / written,
        rows as f64 / live_secs
    );
    println!(
        "latency commit → handler start at {rate} changes/s for {seconds} s ({} changes): p50 {:.1} ms, p99 {:.1} ms \
         from the commit's return to the writer (goal p99 < 50 ms); p50 {:.1} ms, p99 {:.1} ms from the server's commit time (ms resolution)",
        lat.count, lat.p50, lat.p99, lat.server_p50, lat.server_p99
    );
    let [read, store, dispatch] = lat.stages;
    let (worst, when, [w_read, w_store, w_dispatch]) = lat.worst;
    println!(
        "  by stage, p50 / p99: commit → read by the source {:.1} / {:.1} ms, read → durable in the topic {:.1} / {:.1} ms, \
         durable → handler start {:.1} / {:.1} ms; the slowest change {worst:.1} ms (committed {when:.1} s in: \
         {w_read:.0} + {w_store:.0} + {w_dispatch:.0} ms)",
        read.0, read.1, store.0, store.1, dispatch.0, dispatch.1
    );
    drop(db);
    // The node's data directory holds every change of the run.
    let dir = node.dir.clone();
    drop(gale);
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Inserts rows `first..first + n`, one per transaction, from `writers`
/// connections; returns when the first began and the seconds taken.
async fn write_rows(pg: &Pg, first: u64, n: u32, writers: u32) -> Result<(Instant, f64)> {
    let end = first + n as u64;
    let next = Arc::new(AtomicU64::new(first));
    let mut clients = Vec::new();
    for _ in 0..writers {
        let client = pg.client(DB).await?;
        let insert = client.prepare(INSERT).await?;
        clients.push((client, insert));
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(client, insert)| {
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Relaxed);
                    if id >= end {
                        return Ok::<_, anyhow::Error>(());
                    }
                    insert_row(&client, &insert, id).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((started, started.elapsed().as_secs_f64()))
}

async fn insert_row(
    client: &tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    id: u64,
) -> Result<()> {
    let sku = format!("sku-{}", id % 1000);
    let note = "two apples, one pear, delivered to the back door";
    client
        .execute(insert, &[&(id as i64), &sku, &((id % 7) as i32 + 1), &note])
        .await?;
    Ok(())
}

/// The source a deploy adds, if any.
struct Source<'a> {
    name: &'a str,
    /// An existing slot to read from; without one, Gale makes its own.
    slot: Option<&'a str>,
    topic: &'a str,
}

struct Gale<'a> {
    node: &'a Node,
    admin: Admin,
    url: String,
    handler: PathBuf,
    rounds: u32,
}

struct Latency {
    count: usize,
    p50: f64,
    p99: f64,
    server_p50: f64,
    server_p99: f64,
    /// p50 and p99 of each stage: commit → read by the source (the
    /// event's `ts_ms`), read → durable in the topic, durable → handler start.
    stages: [(f64, f64); 3],
    /// The slowest change: its latency, when it committed (seconds into
    /// the measurement) and its stages.
    worst: (f64, f64, [f64; 3]),
}

impl Gale<'_> {
    /// Deploys the app: every topic, the latency handler, and `source`.
    fn deploy(&self, source: Option<Source>) -> Result<()> {
        let mut m = String::from("[app]\nname = \"cdc\"\n");
        for r in 1..=self.rounds {
            m.push_str(&format!("[topics.rows{r}]\n"));
        }
        m.push_str("[topics.live]\n[topics.latency]\n");
        m.push_str(&format!(
            "[functions.h]\nsource = \"{}\"\n[[functions.h.events]]\ntopic = \"latency\"\nmax_concurrency = 64\n",
            self.handler.display()
        ));
        if let Some(s) = source {
            m.push_str(&format!(
                "[sources.{}]\ntype = \"postgres\"\nurl = \"{}\"\npublication = \"{PUBLICATION}\"\ntopic = \"{}\"\n",
                s.name, self.url, s.topic
            ));
            if let Some(slot) = s.slot {
                m.push_str(&format!("slot = \"{slot}\"\n"));
            }
        }
        tokio::task::block_in_place(|| self.node.deploy(&m))
    }

    /// Inserts rows at a steady `rate` for `seconds` while a handler
    /// follows the source's topic; commit → handler start (the invocation
    /// log's start, in ms) of each row.
    async fn latency(
        &self,
        pg: &Pg,
        ids: &AtomicU64,
        writers: u32,
        rate: u32,
        seconds: u32,
    ) -> Result<Latency> {
        self.deploy(Some(Source {
            name: "lat",
            slot: None,
            topic: "latency",
        }))?;
        self.admin.wait_streaming("lat").await?;
        let mut clients = Vec::new();
        for _ in 0..writers.max(1) {
            let client = pg.client(DB).await?;
            let insert = client.prepare(INSERT).await?;
            clients.push(Arc::new((client, insert)));
        }
        // Warm up the handler (code loaded, first instance).
        let (client, insert) = &*clients[0];
        insert_row(client, insert, ids.fetch_add(1, Relaxed)).await?;
        self.admin
            .wait_acked("latency", 1, Duration::from_secs(60))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let total = (rate * seconds) as usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            tick.tick().await;
            let id = ids.fetch_add(1, Relaxed);
            let writer = clients[i % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                insert_row(&writer.0, &writer.1, id).await?;
                Ok::<_, anyhow::Error>((id, now_ms()))
            }));
        }
        let mut committed = HashMap::with_capacity(total);
        for t in tasks {
            let (id, at) = t.await??;
            committed.insert(id, at);
        }
        self.admin
            .wait_acked("latency", total as u64 + 1, Duration::from_secs(120))
            .await?;

        let started = self.admin.handler_starts("h", total + 1).await?;
        // The events: which row each is, and the server's commit time.
        let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
        let mut stages: [Vec<f64>; 3] = Default::default();
        let first_commit = committed.values().copied().fold(f64::INFINITY, f64::min);
        let mut worst = (0.0, 0.0, [0.0; 3]);
        let mut after = 0u64;
        loop {
            let events = self
                .admin
                .get(&format!("/v1/topics/latency/events?after={after}&limit=1000"))
                .await?;
            let events = events.as_array().context("events are a list")?;
            if events.is_empty() {
                break;
            }
            for e in events {
                after = e["seq"].as_u64().unwrap_or(after);
                let event = &e["event"];
                let row = &event["data"]["after"]["id"];
                let row = row.as_u64().or_else(|| row.as_str().and_then(|s| s.parse().ok()));
                let (Some(row), Some(start)) = (row, event["id"].as_str().and_then(|id| started.get(id)))
                else {
                    continue;
                };
                if let Some(at) = committed.get(&row) {
                    let total = (start - at).max(0.0);
                    from_client.push(total);
                    if let (Some(read), Some(durable)) =
                        (event["data"]["ts_ms"].as_f64(), e["published_at"].as_f64())
                    {
                        let split = [
                            (read - at).max(0.0),
                            (durable - read).max(0.0),
                            (start - durable).max(0.0),
                        ];
                        for (v, x) in stages.iter_mut().zip(split) {
                            v.push(x);
                        }
                        if total > worst.0 {
                            worst = (total, (at - first_commit) / 1e3, split);
                        }
                    }
                }
                if let Some(at) = event["data"]["source"]["ts_ms"].as_f64() {
                    from_server.push((start - at).max(0.0));
                }
            }
        }
        if from_client.len() < total {
            bail!(
                "latency: {} of {total} changes matched a handler start",
                from_client.len()
            );
        }
        let pct = |v: &mut Vec<f64>, q: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * q) as usize]
        };
        Ok(Latency {
            count: from_client.len(),
            p50: pct(&mut from_client, 0.5),
            p99: pct(&mut from_client, 0.99),
            server_p50: pct(&mut from_server, 0.5),
            server_p99: pct(&mut from_server, 0.99),
            stages: stages.map(|mut v| (pct(&mut v, 0.5), pct(&mut v, 0.99))),
            worst,
        })
    }
}

/// A throwaway PostgreSQL server, stopped and removed when dropped.
struct Pg {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    version: String,
    /// The user and group it runs as when the benchmark runs as root.
    owner: Option<(u32, u32)>,
    server: Option<Child>,
}

/// What one run of `pg_recvlogical` took.
struct Recv {
    secs: f64,
    /// Its own CPU time (user and system), seconds.
    cpu: f64,
    bytes: u64,
}

fn id_of(args: &[&str]) -> Result<u32> {
    let out = Command::new("id").args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

impl Pg {
    async fn start() -> Result<Pg> {
        // The newest installed version.
        let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL is not installed under /usr/lib/postgresql")?
            .filter_map(|e| {
                let e = e.ok()?;
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        bins.sort();
        let (version, bin) = bins.pop().context("no initdb under /usr/lib/postgresql/*/bin")?;
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some((id_of(&["-u", "postgres"])?, id_of(&["-g", "postgres"])?))
        } else {
            None
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gale-bench-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let mut pg = Pg {
            port,
            dir,
            bin,
            version: version.to_string(),
            owner,
            server: None,
        };
        let data = pg.dir.join("data");
        let init = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()?;
        if !init.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&init.stderr));
        }
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nfsync = off\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             max_wal_size = 4GB\nwal_sender_timeout = 10s\nautovacuum = off\n",
            pg.dir.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        let log = std::fs::File::create(pg.dir.join("server.log"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(pg.dir.join("server.log"), Some(uid), Some(gid))?;
        }
        pg.server = Some(
            pg.command("postgres")
                .arg("-D")
                .arg(&data)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.client("postgres").await.is_err() {
            if Instant::now() > deadline
                || pg
                    .server
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                bail!(
                    "PostgreSQL did not start: {}",
                    std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(pg)
    }

    /// One of the server's programs, as the server's owner.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        c.current_dir(&self.dir);
        c
    }

    async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Reads slot `slot` up to `end` with `pg_recvlogical` into a file.
    fn recvlogical(&self, slot: &str, end: &str, rows: u32) -> Result<Recv> {
        let out = self.dir.join(format!("{slot}.out"));
        let started = Instant::now();
        let child = self
            .command("pg_recvlogical")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-d", DB, "--slot", slot, "--start", "--no-loop", "--endpos", end])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={PUBLICATION}"))
            .arg("-f")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let (status, cpu) = wait_with_cpu(&child)?;
        let secs = started.elapsed().as_secs_f64();
        let mut child = child;
        let mut error = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut error)?;
        }
        if !status.success() {
            bail!("pg_recvlogical: {status}: {error}");
        }
        let bytes = std::fs::metadata(&out)?.len();
        let _ = std::fs::remove_file(&out);
        // Each insert is one message, of more than 40 bytes here.
        if bytes < rows as u64 * 40 {
            bail!("pg_recvlogical wrote only {bytes} bytes for {rows} changes: {error}");
        }
        Ok(Recv { secs, cpu, bytes })
    }

    /// CPU seconds the server has used: the postmaster, the children it
    /// has reaped (ended backends and walsenders) and those still running.
    fn cpu(&self) -> f64 {
        let Some(postmaster) = self.server.as_ref().map(Child::id) else {
            return 0.0;
        };
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let pid: u32 = head
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            // After the name: state, ppid (1), ..., utime (11), stime (12), cutime (13), cstime (14).
            if f.len() < 15 {
                continue;
            }
            if pid == postmaster {
                ticks += f[11] + f[12] + f[13] + f[14];
            } else if f[1] == postmaster as u64 {
                ticks += f[11] + f[12];
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        ticks as f64 / hz as f64
    }
}

/// CPU seconds of each of process `pid`'s threads, summed by thread name
/// (`gale-events` is the storage engine's writer; `tokio-rt-worker` runs
/// the sources, the APIs and the dispatch).
fn thread_cpu(pid: u32) -> HashMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = head[open + 1..].to_string();
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        *out.entry(name).or_insert(0.0) += ticks as f64 / hz;
    }
    out
}

/// Waits for `child` to end; its exit status and CPU time (seconds).
fn wait_with_cpu(child: &Child) -> Result<(std::process::ExitStatus, f64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; the pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        std::process::ExitStatus::from_raw(status),
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SIGQUIT: PostgreSQL's immediate shutdown, backends included.
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
