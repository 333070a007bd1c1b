//! CPU time of an instance, as the kernel counts it.
//!
//! The instance's process clock covers every thread of the runtime to the
//! nanosecond; processes it started and has waited for (a shell handler's
//! commands) are added from `/proc/PID/stat`, at the kernel's tick
//! resolution. `/proc/PID/schedstat` tells how long the runtime's main
//! thread sat ready on a run queue while other threads had the core. The
//! files stay open for the instance's life: a sample is two reads and a
//! clock call.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Nice value an instance takes once one invocation has computed for
/// [`BUSY_AFTER`]: a request that wakes the node's gateway gets the core
/// ahead of it, as ahead of a busy wasm guest.
pub(crate) const BUSY_NICE: i32 = 3;
/// CPU time in one invocation after which an instance counts as busy.
pub(crate) const BUSY_AFTER: Duration = Duration::from_millis(10);
/// How often a running invocation's CPU time is looked at.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(10);

/// What an instance has used since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Sample {
    pub cpu: Duration,
    pub waited: Duration,
}

impl std::ops::Sub for Sample {
    type Output = Sample;
    fn sub(self, earlier: Sample) -> Sample {
        Sample {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            waited: self.waited.saturating_sub(earlier.waited),
        }
    }
}

pub(crate) struct Clock {
    pid: libc::pid_t,
    clock: libc::clockid_t,
    stat: File,
    schedstat: File,
    /// Nanoseconds per clock tick of `/proc/PID/stat`.
    tick_ns: u64,
}

impl Clock {
    pub fn open(pid: libc::pid_t) -> std::io::Result<Clock> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: writes one clockid_t for the given pid.
        let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Clock {
            pid,
            clock,
            stat: File::open(format!("/proc/{pid}/stat"))?,
            schedstat: File::open(format!("/proc/{pid}/schedstat"))?,
            tick_ns: 1_000_000_000 / ticks,
        })
    }

    /// What the instance has used so far; zero for what cannot be read
    /// (the process is gone).
    pub fn sample(&self) -> Sample {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        let own = if unsafe { libc::clock_gettime(self.clock, &mut t) } == 0 {
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        } else {
            0
        };
        let mut buf = [0u8; 1024];
        let children = read(&self.stat, &mut buf)
            .and_then(|s| {
                // Fields after the command name, which is in parentheses and
                // may hold anything: cutime and cstime are the 14th and 15th.
                let rest = &s[s.rfind(')')? + 1..];
                let mut fields = rest.split_ascii_whitespace().skip(13);
                let cutime: u64 = fields.next()?.parse().ok()?;
                let cstime: u64 = fields.next()?.parse().ok()?;
                Some((cutime + cstime) * self.tick_ns)
            })
            .unwrap_or(0);
        let waited = read(&self.schedstat, &mut buf)
            .and_then(|s| s.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Sample {
            cpu: Duration::from_nanos(own + children),
            waited: Duration::from_nanos(waited),
        }
    }

    /// Lowers the priority of the instance's process group (its runtime
    /// and whatever it started).
    pub fn lower_priority(&self, nice: i32) {
        // SAFETY: plain syscall on the instance's own process group; raising
        // a nice value needs no privilege.
        unsafe { libc::setpriority(libc::PRIO_PGRP, self.pid as libc::id_t, nice) };
    }
}

fn read<'a>(file: &File, buf: &'a mut [u8]) -> Option<&'a str> {
    let n = file.read_at(buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_busy_child_and_not_an_idle_one() {
        let busy = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5"])
            .spawn()
            .unwrap();
        let idle = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let (busy_clock, idle_clock) = (
            Clock::open(busy.id() as i32).unwrap(),
            Clock::open(idle.id() as i32).unwrap(),
        );
        let before = busy_clock.sample();
        std::thread::sleep(Duration::from_millis(600));
        let used = busy_clock.sample() - before;
        assert!(used.cpu >= Duration::from_millis(50), "{used:?}");
        assert!(idle_clock.sample().cpu < Duration::from_millis(20));
        for mut child in [busy, idle] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
