//! A one-time action that never makes a thread wait for another: safe
//! across `fork`.
//!
//! Why: `std::sync::Once` (and `OnceLock`) make every other caller wait
//! while one thread runs the action. A process forked while some thread is
//! inside the action gets a copy of the `Once` saying "running" with no
//! thread to finish it, and the child's first caller waits for ever. Found
//! in stop 23 (a pool worker hung before its first task, about 1 in 140
//! fresh processes under load): the parent's log-forwarding thread was
//! initialising backoff's machine figures just as the main thread forked
//! the worker. Registering a fork handler widens the window: glibc holds
//! its atfork lock across a `fork`, so a thread inside `pthread_atfork`
//! stays there (its `Once` "running") for the whole fork.
//!
//! `NoWaitOnce` claims the action with one compare-and-swap: the winner
//! runs it, the others go on at once, told that it is not done yet, and
//! decide what to do meanwhile (compute again without caching, or go on
//! without the registration: each caller says). A child forked while the
//! action ran sees it claimed and never runs it.

use std::sync::atomic::{AtomicU8, Ordering};

const NEW: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

/// A one-time action that never blocks a caller (see the module docs).
#[derive(Debug)]
pub struct NoWaitOnce(AtomicU8);

impl NoWaitOnce {
    /// Not run yet.
    pub const fn new() -> Self {
        NoWaitOnce(AtomicU8::new(NEW))
    }

    /// Runs `action` unless a thread claimed it before; true if it is done
    /// (by this call or an earlier one), false while another thread runs it
    /// (or, in a child forked meanwhile, for good).
    pub fn run(&self, action: impl FnOnce()) -> bool {
        match self.0.compare_exchange(NEW, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                action();
                self.0.store(DONE, Ordering::Release);
                true
            }
            Err(state) => state == DONE,
        }
    }

    /// Whether the action is done.
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == DONE
    }
}

impl Default for NoWaitOnce {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_once_and_a_caller_during_the_action_does_not_wait() {
        let once = NoWaitOnce::new();
        let mut runs = 0;
        assert!(once.run(|| {
            runs += 1;
            // A caller while the action runs (here: re-entrant) is told
            // "not done" at once instead of waiting for ever.
            assert!(!once.run(|| panic!("claimed already")));
            assert!(!once.is_done());
        }));
        assert_eq!(runs, 1);
        assert!(once.is_done());
        assert!(once.run(|| panic!("done already")));
    }

    #[test]
    fn a_child_forked_while_the_action_runs_does_not_hang() {
        // The child of a fork made while the action runs (here: by the
        // action itself) finds it claimed: its first call returns at once,
        // where a std Once would wait for ever.
        let once = NoWaitOnce::new();
        let mut child_status = -1;
        once.run(|| {
            // SAFETY: the child only calls `run` (an atomic compare-and-
            // swap) and `_exit`, both async-signal-safe.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let done = once.run(|| {});
                // SAFETY: `_exit` ends the child without running the
                // parent's atexit handlers or destructors.
                unsafe { libc::_exit(if done { 1 } else { 0 }) };
            }
            let mut status = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                // SAFETY: polls our own child; `status` is a valid pointer.
                let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if reaped == pid {
                    child_status = libc::WEXITSTATUS(status);
                    break;
                }
                if std::time::Instant::now() > deadline {
                    // SAFETY: kills our own child, which hung.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("the forked child hung in its first call");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        assert_eq!(child_status, 0, "the child saw the action claimed, not done, and did not wait");
    }
}
