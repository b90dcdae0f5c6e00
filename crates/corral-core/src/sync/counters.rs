//! A few shared 64-bit integers, read and written with SeqCst: shared
//! counters for tests and benchmarks across processes (`Barrier` has its own
//! block, `barrier.rs`).

use std::sync::atomic::{AtomicI64, Ordering};

use super::block::{Kind, Shared, SyncBlock, SyncState};
use crate::error::{CoreError, Result};

/// How many integers a block holds.
pub const COUNTERS: usize = 8;

/// State of a counter block.
#[repr(C)]
#[derive(Debug)]
pub struct CountersState {
    /// The integers, all 0 at creation.
    pub values: [AtomicI64; COUNTERS],
}

impl SyncState for CountersState {
    const KIND: Kind = Kind::Counters;
}

/// Shared integers.
#[derive(Debug, Clone)]
pub struct Counters {
    state: Shared<CountersState>,
}

impl Counters {
    /// A new block of zeros.
    pub fn new() -> Result<Self> {
        Ok(Counters { state: Shared::create()? })
    }

    /// The counters behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Counters { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    fn slot(&self, i: usize) -> Result<&AtomicI64> {
        self.state.get().values.get(i).ok_or_else(|| CoreError::Invalid(format!("counter index {i} out of range")))
    }

    /// Reads integer `i`.
    pub fn get(&self, i: usize) -> Result<i64> {
        Ok(self.slot(i)?.load(Ordering::SeqCst))
    }

    /// Writes integer `i`.
    pub fn set(&self, i: usize, v: i64) -> Result<()> {
        self.slot(i)?.store(v, Ordering::SeqCst);
        Ok(())
    }

    /// Adds to integer `i`; returns the new value.
    pub fn add(&self, i: usize, d: i64) -> Result<i64> {
        Ok(self.slot(i)?.fetch_add(d, Ordering::SeqCst) + d)
    }
}
