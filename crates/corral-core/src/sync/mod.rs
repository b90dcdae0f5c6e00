//! Synchronization primitives shared between threads and processes, with
//! `threading`'s semantics: each lives in its own small memfd block
//! (`block`), its state made of futex words.
//!
//! - `Lock`: a robust mutex; a waiter that finds the owner dead frees the
//!   lock and reports it (`SyncError::OwnerDied`) instead of waiting for ever.
//! - `RLock`: a recursive lock owned by a thread (kernel tid, unique across
//!   processes), robust the same way.
//! - `Semaphore` (optionally bounded), `Event`.
//! - `Condition`: the wait queue of a condition variable (the lock dance is
//!   the caller's, as in `threading.Condition`), waking exactly the number of
//!   waiters asked for, oldest first.
//! - `Barrier`: `threading.Barrier`, each waiter's outcome in its own slot,
//!   broken by a timeout, `abort`, or a party that died waiting.
//! - `Counters`: a few shared 64-bit integers (for tests and benchmarks).

pub mod async_wait;
pub mod barrier;
pub mod block;
pub mod condition;
pub mod counters;
pub mod event;
pub mod lock;
pub mod rlock;
pub mod semaphore;

pub use barrier::{Arrival, Barrier, BarrierError};

use crate::error::CoreError;

/// Why an acquire or wait did not succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncError {
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The owner (a process, or for an RLock a thread) died holding the
    /// lock; the lock was freed, the data it guarded may be inconsistent.
    #[error("the owner ({0}) of the lock died holding it; the lock was released")]
    OwnerDied(u32),
}

impl From<SyncError> for CoreError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::TimedOut => CoreError::Timeout,
            SyncError::OwnerDied(pid) => CoreError::OwnerDied(pid),
        }
    }
}

/// The calling thread's kernel id (unique system-wide), cached per thread
/// and re-read in a forked child (whose thread has a new id).
pub fn my_tid() -> u32 {
    thread_local! {
        /// (pid, tid) when the tid was read.
        static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }
    let pid = crate::sys::liveness::my_pid();
    TID.with(|t| {
        let (cached_pid, tid) = t.get();
        if cached_pid == pid {
            return tid;
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        t.set((pid, tid));
        tid
    })
}

/// What the lock-like primitives (`Lock`, `RLock`, `Semaphore`) share: a
/// non-blocking try and a wait bounded by a deadline.
pub trait Acquire: Sync {
    /// Takes the primitive if it is free now.
    fn try_acquire(&self) -> bool;
    /// Takes it, waiting until `deadline` (None: for ever).
    fn acquire(&self, deadline: Option<std::time::Instant>) -> Result<(), SyncError>;
}

macro_rules! impl_acquire {
    ($($t:ty),*) => {$(
        impl Acquire for $t {
            fn try_acquire(&self) -> bool {
                <$t>::try_acquire(self)
            }
            fn acquire(&self, deadline: Option<std::time::Instant>) -> Result<(), SyncError> {
                <$t>::acquire(self, deadline)
            }
        }
    )*};
}

impl_acquire!(lock::Lock, rlock::RLock, semaphore::Semaphore);
