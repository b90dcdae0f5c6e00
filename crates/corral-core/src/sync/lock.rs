//! `threading.Lock` across processes: a robust mutex on one futex word.
//!
//! Any thread may release it (as `threading.Lock`). The word records the
//! acquiring process's pid so that a waiter can tell a dead owner: the first
//! waiter to notice frees the lock and gets `SyncError::OwnerDied`, so that
//! its caller learns that the guarded data may be half-updated; the next
//! acquire succeeds. (Taking the lock silently would hide the damage, and
//! raising while holding it would leave `with lock:` blocks stuck.)

use std::time::Instant;

use super::block::{Kind, Shared, SyncBlock, SyncState};
use super::SyncError;
use crate::error::Result;
use crate::sys::liveness::my_pid;
use crate::sys::robust_lock::{Acquired, LockWord};

/// State of a lock in its block.
#[repr(C)]
#[derive(Debug)]
pub struct LockState {
    /// Owner pid (0: free) and sleeper count.
    pub word: LockWord,
}

impl SyncState for LockState {
    const KIND: Kind = Kind::Lock;
}

/// A process-shared `threading.Lock`.
#[derive(Debug, Clone)]
pub struct Lock {
    state: Shared<LockState>,
}

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Self> {
        Ok(Lock { state: Shared::create()? })
    }

    /// The lock behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Lock { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    /// The lock word (owner and sleepers).
    pub fn word(&self) -> &LockWord {
        &self.state.get().word
    }

    /// Takes the lock if free.
    pub fn try_acquire(&self) -> bool {
        self.word().try_lock(my_pid())
    }

    /// Takes the lock, waiting until `deadline` (None: for ever).
    pub fn acquire(&self, deadline: Option<Instant>) -> std::result::Result<(), SyncError> {
        let me = my_pid();
        match self.word().lock(me, deadline) {
            None => Err(SyncError::TimedOut),
            Some(Acquired::Clean) => Ok(()),
            Some(Acquired::OwnerDied(dead)) => {
                self.word().unlock();
                Err(SyncError::OwnerDied(dead))
            }
        }
    }

    /// Releases; false if it was not locked.
    pub fn release(&self) -> bool {
        self.word().unlock_if_locked()
    }

    /// True while some thread holds the lock.
    pub fn locked(&self) -> bool {
        self.word().owner() != 0
    }

    /// Forces the lock free (`_at_fork_reinit`).
    pub fn reset(&self) {
        self.word().unlock_if_locked();
    }
}
