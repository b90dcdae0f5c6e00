//! `threading.Semaphore` and `BoundedSemaphore` across processes: a counter
//! that is itself the futex word. Acquire decrements it by compare-and-swap
//! when positive and sleeps on it at zero; release adds and wakes as many
//! sleepers as permits were added.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::block::{Kind, Shared, SyncBlock, SyncState};
use super::SyncError;
use crate::error::{CoreError, Result};
use crate::sys::backoff::{Backoff, Learner, Next};
use crate::sys::deadline::Deadline;
use crate::sys::futex;

/// What the Semaphore acquires of this process have learned about spinning
/// (`sys::backoff`).
static WAITS: Learner = Learner::new();

/// State of a semaphore in its block.
#[repr(C)]
#[derive(Debug)]
pub struct SemaphoreState {
    /// Permits available now; the futex word.
    pub value: AtomicU32,
    /// Threads sleeping (or about to) on `value`.
    pub sleepers: AtomicU32,
    /// The initial value (the bound of a bounded semaphore).
    pub initial: AtomicU32,
    /// 1 for a BoundedSemaphore.
    pub bounded: AtomicU32,
}

impl SyncState for SemaphoreState {
    const KIND: Kind = Kind::Semaphore;
}

/// A process-shared semaphore.
#[derive(Debug, Clone)]
pub struct Semaphore {
    state: Shared<SemaphoreState>,
}

impl Semaphore {
    /// A semaphore with `value` permits; `bounded` refuses releases past it.
    pub fn new(value: u32, bounded: bool) -> Result<Self> {
        let state = Shared::<SemaphoreState>::create()?;
        let st = state.get();
        st.value.store(value, Ordering::Release);
        st.initial.store(value, Ordering::Release);
        st.bounded.store(u32::from(bounded), Ordering::Release);
        Ok(Semaphore { state })
    }

    /// The semaphore behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Semaphore { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    /// The value word (the futex word) and the sleeper count.
    pub fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let st = self.st();
        (&st.value, &st.sleepers)
    }

    fn st(&self) -> &SemaphoreState {
        self.state.get()
    }

    /// Takes a permit if one is available.
    pub fn try_acquire(&self) -> bool {
        let v = &self.st().value;
        let mut cur = v.load(Ordering::Relaxed);
        while cur > 0 {
            match v.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// Takes a permit, waiting until `deadline` (None: for ever).
    pub fn acquire(&self, deadline: Option<Instant>) -> std::result::Result<(), SyncError> {
        let st = self.st();
        let deadline = Deadline::from(deadline);
        let mut backoff = Backoff::adaptive(&WAITS);
        loop {
            if self.try_acquire() {
                return Ok(());
            }
            match backoff.next(deadline) {
                Next::Retry => {}
                Next::TimedOut => return Err(SyncError::TimedOut),
                Next::Sleep => {
                    futex::sleep_counted(&st.value, 0, &st.sleepers, deadline);
                }
            }
        }
    }

    /// Adds `n` permits. A bounded semaphore refuses to go past its
    /// initial value (and adds none).
    pub fn release(&self, n: u32) -> Result<()> {
        let st = self.st();
        let bound = if st.bounded.load(Ordering::Relaxed) != 0 { st.initial.load(Ordering::Relaxed) } else { u32::MAX };
        let mut cur = st.value.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(n).filter(|&v| v <= bound).ok_or_else(|| {
                CoreError::Invalid(if bound == u32::MAX {
                    "semaphore value overflow".into()
                } else {
                    "Semaphore released too many times".into()
                })
            })?;
            // SeqCst: the `sleepers` load below must not move before it.
            match st.value.compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if st.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&st.value, n);
        }
        Ok(())
    }

    /// Permits available now.
    pub fn value(&self) -> u32 {
        self.st().value.load(Ordering::Acquire)
    }

    /// The initial value.
    pub fn initial(&self) -> u32 {
        self.st().initial.load(Ordering::Relaxed)
    }

    /// True for a bounded semaphore.
    pub fn bounded(&self) -> bool {
        self.st().bounded.load(Ordering::Relaxed) != 0
    }
}
