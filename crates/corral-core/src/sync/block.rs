//! The shared block behind one synchronization primitive: a header naming
//! its kind, then its state. One memfd per primitive, so that a primitive
//! can be handed to any process on its own.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::error::{CoreError, Result};
use crate::sys::shm::SharedMemory;

/// First word of a primitive's block ("CRLSYNC1").
pub const SYNC_MAGIC: u64 = u64::from_le_bytes(*b"CRLSYNC1");
/// Layout version.
pub const SYNC_VERSION: u32 = 1;
/// Offset of the state after the header.
pub const STATE_OFFSET: usize = 64;

/// Which primitive a block holds.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `lock::LockState`.
    Lock = 1,
    /// `rlock::RLockState`.
    RLock = 2,
    /// `semaphore::SemaphoreState`.
    Semaphore = 3,
    /// `event::EventState`.
    Event = 4,
    /// `condition::ConditionState`.
    Condition = 5,
    /// `counters::Counters`.
    Counters = 6,
    /// `barrier::BarrierState`.
    Barrier = 7,
}

/// The header at offset 0 of the block.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SyncHeader {
    /// `SYNC_MAGIC`.
    pub magic: u64,
    /// `SYNC_VERSION`.
    pub version: u32,
    /// `Kind` as a number.
    pub kind: u32,
    /// Bytes of state after the header.
    pub state_len: u64,
}

const _: () = assert!(std::mem::size_of::<SyncHeader>() == STATE_OFFSET);

/// A mapped block holding one primitive of kind `kind`.
#[derive(Debug)]
pub struct SyncBlock {
    shm: SharedMemory,
}

impl SyncBlock {
    /// A fresh zeroed block for a `T` state (zero must be a valid state;
    /// `init` may then set fields).
    pub fn create<T>(kind: Kind) -> Result<Self> {
        let state_len = std::mem::size_of::<T>();
        let shm = SharedMemory::create("corral-sync", STATE_OFFSET + state_len)?;
        // SAFETY: fresh mapping, large enough for the header (checked by
        // construction), exclusively ours until returned.
        unsafe {
            shm.as_ptr().cast::<SyncHeader>().write(SyncHeader {
                magic: SYNC_MAGIC,
                version: SYNC_VERSION,
                kind: kind as u32,
                state_len: state_len as u64,
            });
        }
        Ok(SyncBlock { shm })
    }

    /// Maps a block received from another process, checking that it holds
    /// a `T` of kind `kind`.
    pub fn open<T>(fd: OwnedFd, kind: Kind) -> Result<Self> {
        let shm = SharedMemory::open(fd)?;
        let need = STATE_OFFSET + std::mem::size_of::<T>();
        if shm.len() < need {
            return Err(CoreError::corrupt("sync block", format!("{} bytes, need {need}", shm.len())));
        }
        // SAFETY: in bounds (checked); the header is written once at creation.
        let h = unsafe { shm.as_ptr().cast::<SyncHeader>().read() };
        if h.magic != SYNC_MAGIC || h.version != SYNC_VERSION {
            return Err(CoreError::corrupt("sync block", format!("magic {:#x} version {}", h.magic, h.version)));
        }
        if h.kind != kind as u32 || h.state_len != std::mem::size_of::<T>() as u64 {
            return Err(CoreError::Invalid(format!("descriptor holds a primitive of kind {}, not {:?}", h.kind, kind)));
        }
        Ok(SyncBlock { shm })
    }

    /// The state, shared with every process that maps the block.
    ///
    /// # Safety
    /// `T` must be the type the block was created for (guaranteed by
    /// `create`/`open`), made only of atomics and plain integers.
    pub unsafe fn state<T>(&self) -> &T {
        // SAFETY: the block holds a T at STATE_OFFSET (64-aligned in a
        // page-aligned mapping) for as long as `self` lives.
        unsafe { &*self.shm.as_ptr().add(STATE_OFFSET).cast::<T>() }
    }

    /// The memfd, to hand to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shm.fd()
    }
}

/// A state type that lives in a sync block: made only of atomics and plain
/// integers, zero being a valid initial value.
pub trait SyncState: Sized + std::fmt::Debug {
    /// The kind recorded in (and checked against) the block header.
    const KIND: Kind;
}

/// A typed handle on a block holding a `T`: the one place where a block's
/// bytes become a `&T`, after `create` or `open` checked the type.
#[derive(Debug)]
pub struct Shared<T: SyncState> {
    block: std::sync::Arc<SyncBlock>,
    _state: std::marker::PhantomData<T>,
}

impl<T: SyncState> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared { block: self.block.clone(), _state: std::marker::PhantomData }
    }
}

impl<T: SyncState> Shared<T> {
    /// A fresh, zeroed `T`.
    pub fn create() -> Result<Self> {
        Ok(Shared { block: std::sync::Arc::new(SyncBlock::create::<T>(T::KIND)?), _state: std::marker::PhantomData })
    }

    /// The `T` behind a descriptor from another process, checked.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        Ok(Shared { block: std::sync::Arc::new(SyncBlock::open::<T>(fd, T::KIND)?), _state: std::marker::PhantomData })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        &self.block
    }

    /// The shared state.
    pub fn get(&self) -> &T {
        // SAFETY: `create`/`open` made or checked the block as a `T` of
        // kind `T::KIND`, and `T` is atomics and plain integers only.
        unsafe { self.block.state::<T>() }
    }
}
