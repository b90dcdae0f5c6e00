//! `threading.RLock` across processes: owned by one thread, named by its
//! kernel tid (unique across processes), with a recursion count that only
//! the owner touches. Robust like `Lock`: an owner thread or process that
//! dies holding it is detected by the waiters, the lock freed and reported.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::block::{Kind, Shared, SyncBlock, SyncState};
use super::{my_tid, SyncError};
use crate::error::Result;
use crate::sys::robust_lock::{Acquired, LockWord};

/// State of a recursive lock in its block.
#[repr(C)]
#[derive(Debug)]
pub struct RLockState {
    /// Owner tid (0: free) and sleeper count.
    pub word: LockWord,
    /// Recursion depth; written only by the owner.
    pub count: AtomicU32,
}

impl SyncState for RLockState {
    const KIND: Kind = Kind::RLock;
}

/// A process-shared `threading.RLock`.
#[derive(Debug, Clone)]
pub struct RLock {
    state: Shared<RLockState>,
}

/// Why a release failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOwned;

impl RLock {
    /// A new, unlocked recursive lock.
    pub fn new() -> Result<Self> {
        Ok(RLock { state: Shared::create()? })
    }

    /// The lock behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(RLock { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    /// The lock word (owner tid and sleepers).
    pub fn word(&self) -> &LockWord {
        &self.st().word
    }

    fn st(&self) -> &RLockState {
        self.state.get()
    }

    /// Takes the lock (again, if the caller owns it), waiting until
    /// `deadline`; `Ok(false)` never: errors say why it failed.
    pub fn acquire(&self, deadline: Option<Instant>) -> std::result::Result<(), SyncError> {
        self.acquire_n(1, deadline)
    }

    /// Takes the lock with recursion depth `n` (restoring a saved state).
    pub fn acquire_n(&self, n: u32, deadline: Option<Instant>) -> std::result::Result<(), SyncError> {
        let me = my_tid();
        let st = self.st();
        if st.word.owner() == me {
            st.count.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        let got = if st.word.try_lock(me) { Some(Acquired::Clean) } else { st.word.lock(me, deadline) };
        match got {
            None => Err(SyncError::TimedOut),
            Some(Acquired::Clean) => {
                st.count.store(n, Ordering::Relaxed);
                Ok(())
            }
            Some(Acquired::OwnerDied(dead)) => {
                st.count.store(0, Ordering::Relaxed);
                st.word.unlock();
                Err(SyncError::OwnerDied(dead))
            }
        }
    }

    /// Takes the lock only if free or already owned.
    pub fn try_acquire(&self) -> bool {
        let me = my_tid();
        let st = self.st();
        if st.word.owner() == me {
            st.count.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if st.word.try_lock(me) {
            st.count.store(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Releases one level; `Err(NotOwned)` if the caller does not own it.
    pub fn release(&self) -> std::result::Result<(), NotOwned> {
        let st = self.st();
        if st.word.owner() != my_tid() {
            return Err(NotOwned);
        }
        if st.count.fetch_sub(1, Ordering::Relaxed) <= 1 {
            st.count.store(0, Ordering::Relaxed);
            st.word.unlock();
        }
        Ok(())
    }

    /// Releases every level and returns the depth (for `Condition.wait`).
    pub fn release_all(&self) -> std::result::Result<u32, NotOwned> {
        let st = self.st();
        if st.word.owner() != my_tid() {
            return Err(NotOwned);
        }
        let n = st.count.swap(0, Ordering::Relaxed);
        st.word.unlock();
        Ok(n)
    }

    /// True if the calling thread owns the lock.
    pub fn is_owned(&self) -> bool {
        self.st().word.owner() == my_tid()
    }

    /// The caller's recursion depth (0 if it does not own the lock).
    pub fn recursion_count(&self) -> u32 {
        if self.is_owned() {
            self.st().count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// True while any thread holds the lock.
    pub fn locked(&self) -> bool {
        self.st().word.owner() != 0
    }

    /// Forces the lock free (`_at_fork_reinit`).
    pub fn reset(&self) {
        self.st().count.store(0, Ordering::Relaxed);
        self.st().word.unlock_if_locked();
    }
}
