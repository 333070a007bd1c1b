//! One instance: an OS process running a Lambda runtime, its Runtime API
//! listener, and the capture of its output.
//!
//! The process starts in a process group of its own (a timeout kills the
//! whole group, children included), with a cleared environment, its own
//! temporary directory, a data-size limit (`RLIMIT_DATA` = the function's
//! memory) and, when the node runs as root, the function's own unprivileged
//! user. It dies with the node (`PR_SET_PDEATHSIG`), so a killed node leaves
//! no orphans behind.

use crate::api::{self, Channel, Report, Work};
use crate::{FunctionConfig, FunctionError, ProcessError};
use crate::{cpu, spawn};
use bytes::Bytes;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::unix::pipe::Receiver;
use tokio::sync::mpsc;

/// Time a runtime has from its start to its first `/next`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Output kept per invocation (the end of it, where errors are).
pub const LOG_LIMIT: usize = 16 * 1024;

/// How one invocation on an instance ended.
pub(crate) enum Ended {
    Response(Bytes),
    /// The runtime reported an error (the handler's, or its own init's).
    Error(FunctionError),
    /// The process exited or was killed; the instance is gone.
    Exited(FunctionError),
    Timeout,
    /// It used its CPU limit; the instance was stopped.
    CpuLimit(Duration),
}

pub(crate) struct Instance {
    child: spawn::Process,
    /// Its CPU time (none if the kernel would not tell).
    clock: Option<cpu::Clock>,
    /// Whether it runs at [`cpu::BUSY_NICE`] already.
    busy: bool,
    /// Its CPU time when its last invocation ended (or its init did):
    /// what the next one counts from, so an invocation costs one sample.
    used: cpu::Sample,
    channel: Arc<Channel>,
    work: mpsc::Sender<Work>,
    reports: mpsc::UnboundedReceiver<Report>,
    log: Arc<Log>,
    /// Its stdout and stderr, read by tasks of their own; held here so
    /// the fds stay valid for [`Instance::take_log`]'s check.
    pipes: [Arc<Receiver>; 2],
    server: tokio::task::JoinHandle<()>,
    tmp: PathBuf,
    /// Time from spawn to the first `/next`, until an invocation reports it.
    pub init: Option<Duration>,
    pub last_used: Instant,
    ready: bool,
}

/// The instance's output, shared with the tasks reading its pipes.
#[derive(Default)]
struct Log {
    bytes: Mutex<Vec<u8>>,
}

impl Log {
    fn append(&self, chunk: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        bytes.extend_from_slice(chunk);
        if bytes.len() > 2 * LOG_LIMIT {
            let cut = bytes.len() - LOG_LIMIT;
            bytes.drain(..cut);
        }
    }

    fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()));
        let start = bytes.len().saturating_sub(LOG_LIMIT);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl Instance {
    /// Starts an instance; its runtime initialises in the background.
    pub async fn start(config: &FunctionConfig, number: u64) -> Result<Instance, ProcessError> {
        let tmp = config
            .instances_dir
            .join(format!("{}-{}-{number}", config.name, config.version));
        let io = |what: &str, e: std::io::Error| ProcessError::Start(format!("{what}: {e}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io("cannot make the instance's directory", e))?;
        if let Some((uid, gid)) = config.user {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .map_err(|e| io("cannot hand over its directory", e))?;
        }
        set_mode(&tmp, 0o700).map_err(|e| io("cannot protect its directory", e))?;

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| io("cannot open its Runtime API port", e))?;
        let api = listener
            .local_addr()
            .map_err(|e| io("no local address", e))?
            .to_string();
        let (channel, work, reports) = Channel::new(config.publish.clone());
        let server = tokio::spawn({
            let router = api::router(channel.clone());
            async move {
                let _ = axum::serve(listener, router).await;
            }
        });

        let (program, args) = match config.command.split_first() {
            Some((p, a)) => (PathBuf::from(p), a.to_vec()),
            None => (config.root.join("bootstrap"), Vec::new()),
        };
        // Later entries win: the manifest's env may move the bytecode cache,
        // but not change what the runtime is told about itself.
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "PYTHONPYCACHEPREFIX".to_string(),
            config.cache.display().to_string(),
        );
        env.extend(config.env.clone());
        env.extend(config.lambda_env(&api, number, &tmp));
        let env: Vec<(String, String)> = env.into_iter().collect();
        let spawn = {
            let (program, root, user, memory) =
                (program.clone(), config.root.clone(), config.user, config.memory);
            move || {
                spawn::spawn(&spawn::Spec {
                    program: &program,
                    args: &args,
                    env: &env,
                    cwd: &root,
                    user,
                    memory,
                })
            }
        };
        // Started from a thread at the node's own priority: one that
        // delivers events runs lower, and a child would inherit that.
        let spawned = match &config.spawner {
            Some(node) => node
                .spawn_blocking(spawn)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            None => spawn(),
        }
        .map_err(|e| {
            ProcessError::Start(format!(
                "cannot start `{}` in {}: {e}",
                program.display(),
                config.root.display()
            ))
        })?;
        let child = spawn::Process::new(spawned.pid).map_err(|e| io("cannot watch the process", e))?;
        let clock = cpu::Clock::open(spawned.pid)
            .inspect_err(|e| tracing::debug!(error = %e, "an instance's CPU time cannot be read"))
            .ok();
        let log = Arc::new(Log::default());
        let receiver = |fd| {
            Receiver::from_owned_fd(fd)
                .map(Arc::new)
                .map_err(|e| io("cannot read its output", e))
        };
        let pipes = [receiver(spawned.stdout)?, receiver(spawned.stderr)?];
        for pipe in &pipes {
            tokio::spawn(pump(pipe.clone(), log.clone()));
        }
        Ok(Instance {
            child,
            clock,
            busy: false,
            used: cpu::Sample::default(),
            channel,
            work,
            reports,
            log,
            pipes,
            server,
            tmp,
            init: None,
            last_used: Instant::now(),
            ready: false,
        })
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the runtime asks for work (its init is over).
    pub async fn ready(&mut self, started: Instant) -> Result<(), Ended> {
        if self.ready {
            return Ok(());
        }
        let deadline = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                report = self.reports.recv() => match report {
                    Some(Report::Ready) => {
                        self.ready = true;
                        self.init = Some(started.elapsed());
                        self.used = self.sample();
                        return Ok(());
                    }
                    Some(Report::InitError { error_type, body }) => {
                        return Err(Ended::Error(FunctionError { error_type, body }));
                    }
                    Some(_) | None => {}
                },
                status = self.child.wait() => {
                    return Err(Ended::Exited(exited(status, "during init")));
                }
                _ = &mut deadline => {
                    self.kill().await;
                    return Err(Ended::Exited(FunctionError::new(
                        "Runtime.InitTimeout",
                        &format!("the runtime did not ask for an invocation within {} s of starting", INIT_TIMEOUT.as_secs()),
                    )));
                }
            }
        }
    }

    /// Runs one invocation, cut at `timeout` or once it used `cpu`; its
    /// output is in [`Instance::take_log`] after. Returns how it ended and
    /// what it used.
    pub async fn run(
        &mut self,
        work: Work,
        timeout: Duration,
        cpu: Option<Duration>,
    ) -> (Ended, cpu::Sample) {
        let before = self.used;
        if self.work.send(work).await.is_err() {
            let ended = Ended::Exited(FunctionError::new("Runtime.ExitError", "the instance stopped"));
            return (ended, cpu::Sample::default());
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // The CPU time is looked at while it runs only when there is a limit
        // to keep or a busy instance to lower.
        let mut watch =
            tokio::time::interval_at(tokio::time::Instant::now() + cpu::WATCH_EVERY, cpu::WATCH_EVERY);
        let watching = self.clock.is_some() && (cpu.is_some() || !self.busy);
        let (ended, used) = loop {
            tokio::select! {
                report = self.reports.recv() => match report {
                    Some(Report::Response(body)) => break (Ended::Response(body), None),
                    Some(Report::Error { error_type, body }) | Some(Report::InitError { error_type, body }) => {
                        break (Ended::Error(FunctionError { error_type, body }), None);
                    }
                    Some(Report::Ready) => {}
                    None => {
                        let stopped = FunctionError::new("Runtime.ExitError", "the instance stopped");
                        break (Ended::Exited(stopped), None);
                    }
                },
                status = self.child.wait() => break (Ended::Exited(exited(status, "during the invocation")), None),
                _ = &mut deadline => {
                    let used = self.sample() - before;
                    self.kill().await;
                    break (Ended::Timeout, Some(used));
                }
                _ = watch.tick(), if watching => {
                    let used = self.sample() - before;
                    if let Some(limit) = cpu.filter(|l| used.cpu > *l) {
                        self.kill().await;
                        break (Ended::CpuLimit(limit), Some(used));
                    }
                    if !self.busy && used.cpu >= cpu::BUSY_AFTER {
                        if let Some(clock) = &self.clock {
                            clock.lower_priority(cpu::BUSY_NICE);
                        }
                        self.busy = true;
                    }
                }
            }
        };
        self.last_used = Instant::now();
        // Once it is stopped its clock reads nothing: what it used then was
        // taken just before.
        let used = used.unwrap_or_else(|| {
            self.used = self.sample();
            self.used - before
        });
        (ended, used)
    }

    fn sample(&self) -> cpu::Sample {
        self.clock.as_ref().map(cpu::Clock::sample).unwrap_or_default()
    }

    /// Ends the current invocation on the API side; returns what it published.
    pub fn finish(&self) -> Vec<(String, gale_store::NewEvent)> {
        self.channel.finish()
    }

    /// The output since the last call, once the pipes are drained (output
    /// written just before the answer may still sit in a pipe).
    pub async fn take_log(&self) -> String {
        for _ in 0..50 {
            if self.pipes.iter().all(|p| unread(p.as_raw_fd()) == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // The reader tasks may hold a chunk they took from the pipe.
        tokio::task::yield_now().await;
        self.log.take()
    }

    /// Peak resident memory of the runtime process, in bytes.
    pub fn max_memory(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Kills the process group and waits for the runtime process.
    pub async fn kill(&mut self) {
        self.child.kill();
        let _ = self.child.wait().await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The process group is killed as `child` drops.
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Bytes waiting in a pipe.
fn unread(fd: RawFd) -> i32 {
    if fd < 0 {
        return 0;
    }
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the fd belongs to a pipe we hold open.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

async fn pump(pipe: Arc<Receiver>, log: Arc<Log>) {
    let mut buf = vec![0u8; 8192];
    loop {
        if pipe.readable().await.is_err() {
            return;
        }
        match pipe.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => log.append(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The error a caller sees when the runtime process ended.
fn exited(status: std::io::Result<ExitStatus>, when: &str) -> FunctionError {
    use std::os::unix::process::ExitStatusExt;
    let how = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (_, Some(libc::SIGKILL)) => "signal: killed".into(),
            (_, Some(libc::SIGABRT)) => "signal: aborted".into(),
            (_, Some(sig)) => format!("signal {sig}"),
            _ => "unknown status".into(),
        },
        Err(e) => e.to_string(),
    };
    FunctionError::new(
        "Runtime.ExitError",
        &format!("Runtime exited {when} with error: {how}"),
    )
}

fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
