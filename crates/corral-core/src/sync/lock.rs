//! `threading.Lock` across processes: a robust mutex on one futex word.
//!
//! Any thread may release it (as `threading.Lock`). The word records the
//! acquiring process's pid so that a waiter can tell a dead owner: the first
//! waiter to notice frees the lock and gets `SyncError::OwnerDied`, so that
//! its caller learns that the guarded data may be half-updated; the next
//! acquire succeeds. (Taking the lock silently would hide the damage, and
//! raising while holding it would leave `with lock:` blocks stuck.)

use std::sync::Arc;
use std::time::Instant;

use super::block::{Kind, SyncBlock};
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

/// A process-shared `threading.Lock`.
#[derive(Debug, Clone)]
pub struct Lock {
    block: Arc<SyncBlock>,
}

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Self> {
        Ok(Lock { block: Arc::new(SyncBlock::create::<LockState>(Kind::Lock)?) })
    }

    /// The lock behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Lock { block: Arc::new(SyncBlock::open::<LockState>(fd, Kind::Lock)?) })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        &self.block
    }

    fn word(&self) -> &LockWord {
        // SAFETY: the block was created or checked as a LockState.
        unsafe { &self.block.state::<LockState>().word }
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
