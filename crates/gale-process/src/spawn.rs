//! Starting an instance's process without `fork`.
//!
//! The node reserves terabytes of address space for wasmtime's pooling
//! allocator, in many mappings, and `fork` copies every one of them:
//! milliseconds per process, most of a cold start. `posix_spawn` avoids that by
//! sharing the parent's memory until `exec` (`CLONE_VM | CLONE_VFORK`), but
//! cannot switch users or set limits. So this module does what
//! `posix_spawn` does, plus those steps: the child runs on a small stack of
//! its own in the parent's memory, makes only async-signal-safe system
//! calls on data prepared beforehand, and execs; the parent is suspended
//! until then, and reads a failed step's errno from the shared memory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the new process gets.
pub(crate) struct Spec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub user: Option<(u32, u32)>,
    /// RLIMIT_DATA, bytes.
    pub memory: u64,
}

/// A started process: its pid (also its process group) and the read ends
/// of its stdout and stderr.
pub(crate) struct Spawned {
    pub pid: libc::pid_t,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Everything the child touches, prepared by the parent.
struct Child {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    user: Option<(u32, u32)>,
    memory: libc::rlim_t,
    /// The errno of the step that failed (0: exec succeeded).
    error: libc::c_int,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are owned here alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The program's path: as given if it names a directory, else found on the
/// child's `PATH` (the child cannot search: it may not allocate).
fn resolve(program: &Path, env: &[(String, String)]) -> io::Result<std::path::PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if let Ok(c) = cstring(candidate.as_os_str().as_bytes()) {
            // SAFETY: access only reads the NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{}` is not on the instance's PATH ({path})", program.display()),
    ))
}

/// Starts the process in a process group of its own.
pub(crate) fn spawn(spec: &Spec) -> io::Result<Spawned> {
    let program = cstring(resolve(spec.program, spec.env)?.as_os_str().as_bytes())?;
    let mut strings = Vec::with_capacity(spec.args.len() + spec.env.len() + 1);
    strings.push(cstring(spec.program.as_os_str().as_bytes())?);
    for a in spec.args {
        strings.push(cstring(a.as_bytes())?);
    }
    let argc = strings.len();
    for (k, v) in spec.env {
        strings.push(cstring(format!("{k}={v}").as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());

    let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let mut child = Child {
        program,
        argv,
        envp,
        cwd: cstring(spec.cwd.as_os_str().as_bytes())?,
        stdin: null.as_raw_fd(),
        stdout: out_write.as_raw_fd(),
        stderr: err_write.as_raw_fd(),
        user: spec.user,
        memory: spec.memory as libc::rlim_t,
        error: 0,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // The stack grows down: hand over its (16-byte aligned) top.
    let top = ((stack.as_mut_ptr() as usize + stack.len()) & !15) as *mut libc::c_void;
    // SAFETY: CLONE_VM | CLONE_VFORK suspends this thread until the child
    // has exec'd or exited, so `child` and `stack` outlive its use of them;
    // the child only makes async-signal-safe calls on prepared data.
    // Every signal stays blocked across the clone, so no handler of the
    // node runs in the child (on the node's memory) before it has reset
    // them; the child unblocks once its handlers are the defaults.
    let (pid, clone_error) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            run_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut child as *mut Child).cast(),
        );
        let error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        (pid, error)
    };
    if pid < 0 {
        return Err(clone_error);
    }
    if child.error != 0 {
        // The child exited before exec: reap it.
        let mut status = 0;
        // SAFETY: waiting for our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(child.error));
    }
    Ok(Spawned {
        pid,
        stdout: out_read,
        stderr: err_read,
    })
}

/// The child's side, up to exec. Runs in the parent's memory on its own
/// stack: no allocation, no locks, only system calls.
extern "C" fn run_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive until exec (CLONE_VFORK).
    let child = unsafe { &mut *(arg as *mut Child) };
    // SAFETY: async-signal-safe system calls on prepared data.
    unsafe {
        let fail = |child: &mut Child| -> libc::c_int {
            child.error = *libc::__errno_location();
            if child.error == 0 {
                child.error = libc::EINVAL;
            }
            libc::_exit(127)
        };
        // Handlers the node installed are the node's code: back to the
        // defaults (as posix_spawn does). Rust ignores SIGPIPE; a runtime's
        // own pipes need the default back too. Then unblock everything.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut current) == 0
                && (current.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && current.sa_sigaction != libc::SIG_DFL
            {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0
            || libc::dup2(child.stdin, 0) < 0
            || libc::dup2(child.stdout, 1) < 0
            || libc::dup2(child.stderr, 2) < 0
        {
            return fail(child);
        }
        let limit = libc::rlimit {
            rlim_cur: child.memory,
            rlim_max: child.memory,
        };
        if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
            return fail(child);
        }
        // Raw system calls: glibc's wrappers would ask every thread of the
        // (shared) parent to switch users too.
        if let Some((uid, gid)) = child.user
            && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0)
        {
            return fail(child);
        }
        // After the user switch, which would clear it: die with the node.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::chdir(child.cwd.as_ptr()) != 0 {
            return fail(child);
        }
        libc::execve(child.program.as_ptr(), child.argv.as_ptr(), child.envp.as_ptr());
        fail(child)
    }
}

/// A started process, waited for through a pidfd (no SIGCHLD handling, no
/// reaper thread). Dropping it kills its process group and reaps it.
pub(crate) struct Process {
    pid: libc::pid_t,
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    status: Option<std::process::ExitStatus>,
}

impl Process {
    pub fn new(pid: libc::pid_t) -> io::Result<Process> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just opened and is owned here alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an OwnedFd stays open, and is the same fd, until dropped.
        let pidfd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Process {
            pid,
            pidfd,
            status: None,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The exit status if the process has ended (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waiting for our own child without blocking.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => {}
                n if n < 0 => return Err(io::Error::last_os_error()),
                _ => self.status = Some(std::process::ExitStatus::from_raw(status)),
            }
        }
        Ok(self.status)
    }

    /// Waits for the process to end. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            // The pidfd turns readable when the process exits.
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Kills the process group (the process and whatever it started).
    pub fn kill(&self) {
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        self.kill();
        let pid = self.pid;
        let reap = move || {
            let mut status = 0;
            // SAFETY: waiting for our own child, which was just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(reap)),
            Err(_) => reap(),
        }
    }
}
