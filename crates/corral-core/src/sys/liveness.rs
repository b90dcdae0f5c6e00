//! Is a process still alive? Used to detect a peer that died holding a lock,
//! half-way through a message, or as the last producer of a queue.
//!
//! A zombie (exited, not yet reaped by its parent) counts as dead: the
//! parent of a crashed producer is often its consumer, and it has not called
//! `join` yet. A process is named by its pid plus its start time (in clock
//! ticks since boot), so a recycled pid is not mistaken for the old process.

use std::fs;

/// A process identity that survives pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// Kernel process id (thread group id).
    pub pid: u32,
    /// Start time from `/proc/<pid>/stat` (field 22); 0 if unknown.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> Self {
        Self::of(std::process::id())
    }

    /// The process `pid` as it is now (start time 0 if it is already gone).
    pub fn of(pid: u32) -> Self {
        ProcessId { pid, start_time: stat_of(pid).map(|s| s.start_time).unwrap_or(0) }
    }

    /// True while the process exists, is not a zombie, and (when known) has
    /// the same start time.
    pub fn is_alive(&self) -> bool {
        match stat_of(self.pid) {
            None => false,
            Some(s) => !s.dead && (self.start_time == 0 || s.start_time == self.start_time),
        }
    }

    /// Like `is_alive`, for an identity that kept only the low `bits` bits
    /// of the start time (a compact slot in shared memory).
    pub fn is_alive_low_bits(&self, bits: u32) -> bool {
        let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
        match stat_of(self.pid) {
            None => false,
            Some(s) => !s.dead && (self.start_time == 0 || s.start_time & mask == self.start_time & mask),
        }
    }
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    stat_of(pid).is_some_and(|s| !s.dead)
}

struct Stat {
    dead: bool,
    start_time: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?; // field 3
    let start_time = fields.nth(18)?.parse().ok()?; // field 22
    Some(Stat { dead: matches!(state, "Z" | "X" | "x"), start_time })
}

static CACHED_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn forget_pid_after_fork() {
    CACHED_PID.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// The calling process's pid, cached (getpid is a system call, and the hot
/// paths of the channels need it on every message). Reset in a forked child.
pub fn my_pid() -> u32 {
    use std::sync::atomic::Ordering;
    let pid = CACHED_PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    // Not a std `Once`: a child forked while another thread registers
    // would wait for ever at its first call (see `sys::once`).
    static ATFORK: super::once::NoWaitOnce = super::once::NoWaitOnce::new();
    let registered = ATFORK.run(|| {
        // SAFETY: registers a handler that only does an atomic store, which
        // is async-signal-safe and valid in a freshly forked child.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_after_fork)) };
    });
    let pid = std::process::id();
    // Cached only once the handler that forgets it in a child is in place.
    if registered {
        CACHED_PID.store(pid, Ordering::Relaxed);
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive() {
        let me = ProcessId::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        assert!(pid_alive(me.pid));
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait until it has exited but is not reaped: a zombie.
        for _ in 0..200 {
            if !pid_alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!pid_alive(pid), "a zombie must count as dead");
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn a_different_start_time_is_another_process() {
        let mut me = ProcessId::current();
        me.start_time += 1;
        assert!(!me.is_alive());
    }
}
