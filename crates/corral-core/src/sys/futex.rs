//! Futex wait and wake on a 32-bit word that may live in shared memory.
//!
//! The calls never use `FUTEX_PRIVATE_FLAG`: a private futex is keyed by the
//! virtual address of one process and cannot wake a waiter in another one.

use std::sync::atomic::{AtomicU32, Ordering};

use rustix::io::Errno;
use rustix::thread::futex;

use super::deadline::Deadline;

/// Why a wait returned. Callers re-check their condition in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken, interrupted by a signal, or the word no longer held the
    /// expected value when the call started.
    Maybe,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word == expected`, at most until `deadline` (None: no limit).
pub fn wait(word: &AtomicU32, expected: u32, deadline: impl Into<Deadline>) -> Wake {
    let deadline = deadline.into();
    if deadline.expired() {
        return Wake::TimedOut;
    }
    let timeout = deadline.timespec();
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) => Wake::Maybe,
        Err(Errno::TIMEDOUT) => Wake::TimedOut,
        // EAGAIN: the value changed; EINTR: a signal. Both: re-check.
        Err(_) => Wake::Maybe,
    }
}

/// `wait`, counted in `sleepers` while it sleeps: the count a waker reads
/// to skip the system call when nobody sleeps. The increment is SeqCst, so a
/// waker that changes `word` then reads `sleepers` (SeqCst) either sees this
/// sleeper or is seen by the kernel's check of `word`.
pub fn sleep_counted(word: &AtomicU32, expected: u32, sleepers: &AtomicU32, deadline: impl Into<Deadline>) -> Wake {
    sleepers.fetch_add(1, Ordering::SeqCst);
    let r = wait(word, expected, deadline);
    sleepers.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Wakes up to `count` waiters on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, count: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), count).unwrap_or(0)
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_times_out_when_nobody_wakes() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        let r = wait(&w, 0, Some(Instant::now() + Duration::from_millis(30)));
        assert_eq!(r, Wake::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn wait_returns_at_once_when_value_differs() {
        let w = AtomicU32::new(1);
        assert_eq!(wait(&w, 0, Some(Instant::now() + Duration::from_secs(5))), Wake::Maybe);
    }

    #[test]
    fn wake_releases_a_waiting_thread() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Some(Instant::now() + Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake_all(&w);
        h.join().unwrap();
    }
}
