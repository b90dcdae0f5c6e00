//! `threading.Event` across processes: one futex word holding the flag
//! (bit 0) and a generation (the other bits) bumped by every `set`, so a
//! waiter released by a `set` returns true even if `clear` follows before it
//! runs (as `threading.Event` guarantees).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::block::{Kind, Shared, SyncBlock, SyncState};
use crate::error::Result;
use crate::sys::backoff::{Backoff, Learner, Next};
use crate::sys::deadline::Deadline;
use crate::sys::futex;

/// What the Event waits of this process have learned about spinning
/// (`sys::backoff`).
static WAITS: Learner = Learner::new();

/// State of an event in its block.
#[repr(C)]
#[derive(Debug)]
pub struct EventState {
    /// Bit 0: the flag; bits 1-31: generation, +1 per `set`. The futex word.
    pub flag: AtomicU32,
    /// Threads sleeping (or about to) on `flag`.
    pub sleepers: AtomicU32,
}

impl SyncState for EventState {
    const KIND: Kind = Kind::Event;
}

/// A process-shared event.
#[derive(Debug, Clone)]
pub struct Event {
    state: Shared<EventState>,
}

impl Event {
    /// A new, unset event.
    pub fn new() -> Result<Self> {
        Ok(Event { state: Shared::create()? })
    }

    /// The event behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Event { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    /// The flag word (the futex word) and the sleeper count.
    pub fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let st = self.st();
        (&st.flag, &st.sleepers)
    }

    fn st(&self) -> &EventState {
        self.state.get()
    }

    /// True if set.
    pub fn is_set(&self) -> bool {
        self.st().flag.load(Ordering::Acquire) & 1 != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let st = self.st();
        let _ = st.flag.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some((v | 1).wrapping_add(2)));
        if st.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&st.flag);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.st().flag.fetch_and(!1, Ordering::SeqCst);
    }

    /// Waits until set or `deadline`; returns the flag.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        self.wait_from(self.state_word(), deadline)
    }

    /// The flag and generation now, to start a wait in several slices.
    pub fn state_word(&self) -> u32 {
        self.st().flag.load(Ordering::SeqCst)
    }

    /// Waits until the event is set or has been set since `start` (a
    /// `state_word`), or `deadline`; true if so.
    pub fn wait_from(&self, start: u32, deadline: Option<Instant>) -> bool {
        let st = self.st();
        let deadline = Deadline::from(deadline);
        let mut backoff = Backoff::adaptive(&WAITS);
        loop {
            let now_word = st.flag.load(Ordering::SeqCst);
            if now_word & 1 != 0 || now_word >> 1 != start >> 1 {
                return true;
            }
            match backoff.next(deadline) {
                Next::Retry => {}
                Next::TimedOut => return false,
                Next::Sleep => {
                    futex::sleep_counted(&st.flag, now_word, &st.sleepers, deadline);
                }
            }
        }
    }
}
