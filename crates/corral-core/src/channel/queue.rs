//! The shared queue behind `corral.Queue`: one memfd holding a header, a
//! ring of message descriptors and an arena for large parts.
//!
//! A message is a descriptor in the ring (see `frame`): small parts inline,
//! large parts as arena blocks. The queue adds to the ring what
//! `multiprocessing.Queue` users expect: blocking with timeouts, a bound on
//! the number of items, and an end: `get` raises once the queue is empty and
//! every *other* process that holds the queue has closed it or died (and the
//! caller's own process has not put into it, since one of its threads may
//! still be producing). A process counts from the moment it maps the queue,
//! not from its first put, so a worker still importing numpy is waited for.
//!
//! Holders are tracked in a table of `MAX_HOLDERS` one-word slots (pid,
//! state, start time packed together, so a slot changes in one atomic step
//! and a reader never sees half of an update). A slot whose process closed
//! the queue or died is taken over by the next new holder when no slot is
//! free, so any number of processes may hold the queue over its life. At
//! most `MAX_HOLDERS` may hold it *at once*: mapping it in one more process
//! fails with a clear error (`CoreError::Invalid`) rather than switching
//! end-of-data detection off or guessing.
//!
//! Lent handles. A queue pickled outside a process start (into a pool
//! task, or a message through another queue or pipe) reaches a process
//! that claims its own slot only when it loads the pickle: until then no
//! slot says that data may still come from it. So the exporter adds one to
//! the `lent` counter next to its own slot (`lend`) when it pickles the
//! queue, and the counter is taken back when the registration ends
//! (`Lent` dropped: a pool task done, lost or cancelled, whose worker
//! holds its own slot by then) or when the receiver has claimed its slot
//! (`release_lent`, a one-shot handle). A slot whose counter is above zero
//! is not gone while its process lives, whatever its state and even when
//! it is the consumer's own process; a dead exporter's lends are void.
//! One counter per slot, so any number of pickles use no more slots.
//!
//! Arena blocks and crashes. A block is WRITING (held by its producer's
//! pid) from its allocation until its message is published, QUEUED while
//! the message is in the ring, HELD (by the consumer's pid) once taken.
//! The arena reclaims WRITING and HELD blocks of dead holders by itself;
//! a QUEUED block belongs to a message, and only the queue can tell
//! whether that message still exists. So the two flips happen under the
//! ring's locks, next to the step that makes the message exist or not:
//!
//! - put: the blocks are filled and stay WRITING while the producer waits
//!   for room (`maxsize`, ring bytes); they turn QUEUED inside
//!   `WriteGuard::try_push_with`, under the write lock, once the frame is
//!   written and fits, just before `tail` publishes it. A producer killed
//!   while waiting leaves WRITING blocks of a dead pid: `reclaim_dead`.
//! - get: each frame's descriptor is decoded and its blocks marked HELD
//!   right after `try_pop`, before the read lock is released (copying the
//!   inline parts waits until after). A consumer killed once they are HELD
//!   leaves blocks of a dead pid: `reclaim_dead`.
//!
//! What is left is a process killed inside one of those two windows of a
//! few instructions, holding the ring's write lock (flipped, not published)
//! or read lock (consumed, not marked): its blocks are QUEUED and in no
//! unread frame. When an allocation finds no room even after
//! `reclaim_dead`, `reclaim_orphans` takes the write lock then the read
//! lock (the order of `Ring::recount`; taking either over from a dead
//! owner is the case it exists for), lists the arena offsets of every
//! unread frame, then, under the arena lock (always taken last, and
//! never held while waiting for a ring lock), frees each QUEUED block
//! outside that list: with both ring locks held, no live process is inside
//! either window, so such a block is garbage. A committed frame keeps its
//! blocks whoever wrote it, a producer that exited since included. The
//! sweep runs at most once per `LIVENESS_CHECK` of a waiting put, costs a
//! walk of the unread frames and of the arena's blocks, and is skipped
//! (frees nothing) if an unread descriptor does not decode.
//!
//! Chosen over the alternatives: flipping to QUEUED before the wait (the
//! old order) leaked the blocks of every producer killed while waiting,
//! 12.6 MiB after 362 kills in the 5-minute soak; marking HELD inside
//! `try_pop_with`, before `head` moves, would leave HELD blocks of a dead
//! consumer in a frame the next consumer reads again, and `reclaim_dead`
//! would free them under that message.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arena::{arena_bytes, Arena};
use crate::error::{CoreError, Result};
use crate::frame::{self, Descriptor, Location, Segment};
use crate::ring::{ring_bytes, Ring};
use crate::sys::liveness::{my_pid, ProcessId};
use crate::sys::shm::{fit_reservation, SharedMemory};
use crate::sys::signal::{wait_for, Signal};

/// First word of a queue block ("CRLQUEUE").
pub const QUEUE_MAGIC: u64 = u64::from_le_bytes(*b"CRLQUEUE");
/// Layout version (2: one-word holder slots, 1024 of them; 3: a `lent`
/// counter per slot after the table; 4: the signals' `seq` counts in steps
/// of 2 and bit 0 says a waiter may sleep, `sys::signal`).
pub const QUEUE_VERSION: u32 = 4;
/// Most processes that may hold one queue at the same time (closed or dead
/// holders do not count: their slots are reused).
pub const MAX_HOLDERS: usize = 1024;
/// How often a blocked `get` checks whether its producers still live.
const LIVENESS_CHECK: Duration = Duration::from_millis(50);
/// Inline parts above this size go to the arena.
const INLINE_MAX: usize = 64 * 1024;

/// Holds the queue, has not put yet.
const SLOT_HOLDER: u32 = 1;
/// Has put into the queue.
const SLOT_PRODUCER: u32 = 2;
/// Called `close()`: puts no more.
const SLOT_CLOSED: u32 = 3;
/// Bits of the start time kept in a slot (see `HolderSlot`).
const START_BITS: u32 = 30;

/// Geometry and identity, written once by the creator.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct QueueInfo {
    /// `QUEUE_MAGIC`.
    pub magic: u64,
    /// `QUEUE_VERSION`.
    pub version: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Offset of the ring block from the start of the memfd.
    pub ring_offset: u64,
    /// Length of the ring block.
    pub ring_len: u64,
    /// Offset of the arena block.
    pub arena_offset: u64,
    /// Length of the arena block.
    pub arena_len: u64,
    /// Most items in the queue at once; 0 for no bound but memory.
    pub maxsize: u64,
    /// Total length of the memfd.
    pub total_len: u64,
}

/// One holder of the queue, packed in one word so that claiming, taking
/// over, upgrading and closing a slot are each one compare-and-swap:
///
/// ```text
/// bits  0..32  pid (0: the slot was never used)
/// bits 32..34  state: SLOT_HOLDER, SLOT_PRODUCER or SLOT_CLOSED
/// bits 34..64  start time of the process mod 2^30 clock ticks (0: unknown)
/// ```
///
/// The start time tells a recycled pid from the process that held the slot
/// (2^30 ticks at USER_HZ=100 is 124 days: a new process would need the
/// same pid *and* a start time equal modulo 124 days to be mistaken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HolderSlot {
    pid: u32,
    state: u32,
    start: u64,
}

impl HolderSlot {
    fn new(id: ProcessId, state: u32) -> Self {
        HolderSlot { pid: id.pid, state, start: id.start_time & ((1 << START_BITS) - 1) }
    }

    fn pack(self) -> u64 {
        u64::from(self.pid) | (u64::from(self.state & 3) << 32) | (self.start << 34)
    }

    fn unpack(w: u64) -> Self {
        HolderSlot { pid: w as u32, state: ((w >> 32) & 3) as u32, start: w >> 34 }
    }

    /// True once the process is gone (dead, a zombie, or its pid now names
    /// another process).
    fn is_dead(self) -> bool {
        !ProcessId { pid: self.pid, start_time: self.start }.is_alive_low_bits(START_BITS)
    }
}

/// Counters and wake-up words, each on its own cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Padded<T>(pub T);

/// The queue header at offset 0 of the memfd.
#[repr(C)]
#[derive(Debug)]
pub struct QueueHeader {
    /// Geometry.
    pub info: QueueInfo,
    /// Notified on every put and close: consumers wait here.
    pub data: Padded<Signal>,
    /// Notified on every get and arena free: producers wait here.
    pub space: Padded<Signal>,
    /// Slots ever used (a high-water mark): readers scan only `[0, n)`.
    /// Raised before a slot at its index is written.
    pub slots_used: AtomicU32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The holder table: one packed `HolderSlot` per word, 0 when unused.
    pub holders: [AtomicU64; MAX_HOLDERS],
    /// `lent[i]`: handles of the queue that the process of `holders[i]`
    /// pickled outside a process start and that no receiver has claimed
    /// yet (see the module docs, "Lent handles"). Reset to 0 when a dead
    /// holder's slot is taken over; a live holder's slot with a count above
    /// 0 is never taken over.
    pub lent: [AtomicU32; MAX_HOLDERS],
}

const _: () = assert!(std::mem::size_of::<QueueHeader>() % 64 == 0);

/// Finds or claims the slot of `want.pid` in `holders` and moves it to
/// `want.state`: a holder never downgrades a producer. In order: the
/// process's own slot (its parent may have added it), a never-used slot, the
/// slot of a holder that departed (closed the queue, or `is_dead`). `None`
/// when every slot belongs to a live holder that has not closed (or that
/// closed with handles still `lent`). `by_parent`: the claim is made for
/// another process (`add_holder`), which does not reopen a slot that
/// process already closed itself. Pure bookkeeping on the table (the
/// liveness test is passed in), so it is unit-tested as a plain value.
fn claim_in(
    holders: &[AtomicU64],
    lent: &[AtomicU32],
    slots_used: &AtomicU32,
    want: HolderSlot,
    by_parent: bool,
    is_dead: impl Fn(HolderSlot) -> bool,
) -> Option<usize> {
    let used = (slots_used.load(Ordering::Acquire) as usize).min(holders.len());
    // 1. Its own slot.
    for (i, slot) in holders[..used].iter().enumerate() {
        let mut w = slot.load(Ordering::Acquire);
        loop {
            let cur = HolderSlot::unpack(w);
            if cur.pid != want.pid || (cur.start != 0 && want.start != 0 && cur.start != want.start) {
                break;
            }
            let keep = (want.state == SLOT_HOLDER && cur.state == SLOT_PRODUCER)
                || (by_parent && want.state == SLOT_HOLDER && cur.state == SLOT_CLOSED);
            let state = if keep { cur.state } else { want.state };
            let next = HolderSlot { state, start: if want.start != 0 { want.start } else { cur.start }, ..cur };
            match slot.compare_exchange(w, next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(i),
                Err(now) => w = now,
            }
        }
    }
    // 2. A slot never used. The high-water mark is raised first, so a reader
    //    scanning [0, slots_used) cannot miss the new holder.
    for (i, slot) in holders.iter().enumerate() {
        if slot.load(Ordering::Acquire) != 0 {
            continue;
        }
        slots_used.fetch_max(i as u32 + 1, Ordering::AcqRel);
        if slot.compare_exchange(0, want.pack(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return Some(i);
        }
    }
    // 3. The slot of a holder that departed, replaced in one step: a reader
    //    sees either the departed holder or the new one, never a mix.
    //    A closed holder with handles still lent keeps its slot while it
    //    lives; a dead one's lends are void and its counter restarts at 0.
    for (i, slot) in holders.iter().enumerate() {
        let w = slot.load(Ordering::Acquire);
        let cur = HolderSlot::unpack(w);
        let Some(count) = lent.get(i) else { break };
        let dead = is_dead(cur);
        if (dead || (cur.state == SLOT_CLOSED && count.load(Ordering::Acquire) == 0))
            && slot.compare_exchange(w, want.pack(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            if dead {
                count.store(0, Ordering::Release);
            }
            return Some(i);
        }
    }
    None
}

/// True when nothing more can arrive from other processes, judged from the
/// table alone: every holder but `me` closed the queue or `is_dead` (None:
/// do not check liveness, count them as alive), at least one other existed,
/// `me` has not put, and no live holder (`me` included) has a handle `lent`
/// that no receiver has claimed yet. A slot
/// taken over from a departed holder is never emptied, so a table that once
/// had other holders keeps showing at least one.
fn others_gone(
    holders: &[AtomicU64],
    lent: &[AtomicU32],
    slots_used: &AtomicU32,
    me: u32,
    is_dead: Option<&dyn Fn(HolderSlot) -> bool>,
) -> bool {
    let used = (slots_used.load(Ordering::Acquire) as usize).min(holders.len());
    let mut seen_other = false;
    for (slot, count) in holders[..used].iter().zip(lent) {
        let s = HolderSlot::unpack(slot.load(Ordering::Acquire));
        if s.pid == 0 {
            continue;
        }
        if count.load(Ordering::Acquire) > 0 {
            // A handle on its way to a receiver: not gone while the
            // exporter lives (its own death voids it; `me` lives).
            match is_dead {
                Some(dead) if s.pid != me && dead(s) => {}
                _ => return false,
            }
        }
        if s.pid == me {
            if s.state == SLOT_PRODUCER {
                return false;
            }
            continue;
        }
        seen_other = true;
        if s.state == SLOT_CLOSED {
            continue;
        }
        match is_dead {
            Some(dead) if dead(s) => {}
            _ => return false,
        }
    }
    seen_other
}

/// Sizes of a new queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Bytes of the descriptor ring.
    pub ring_bytes: u64,
    /// Bytes of the arena (virtual: pages are used only when touched).
    pub arena_bytes: u64,
    /// Most items at once; 0 for no bound.
    pub maxsize: u64,
}

/// Arena of a queue whose size the user did not choose: 1 GiB of address
/// space (pages are used only when touched)...
pub const DEFAULT_ARENA_BYTES: u64 = 1 << 30;
/// ...or, under an address-space limit, this share of the room left
/// (`sys::shm::fit_reservation`): a process that creates many queues under
/// `ulimit -v` still fits them all.
pub const DEFAULT_ARENA_SHARE: u64 = 8;

impl Default for QueueConfig {
    /// A 4 MiB ring, no item bound, and the default arena (see
    /// `DEFAULT_ARENA_BYTES`), sized now against this process's limit.
    fn default() -> Self {
        QueueConfig {
            ring_bytes: 4 << 20,
            arena_bytes: fit_reservation(DEFAULT_ARENA_BYTES, DEFAULT_ARENA_SHARE),
            maxsize: 0,
        }
    }
}

/// The parts of a message to put: the in-band pickle and any large
/// out-of-band buffers.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The pickle stream.
    pub inband: &'a [u8],
    /// Buffers that go to the arena.
    pub buffers: &'a [&'a [u8]],
}

/// One out-of-band part of a message to put (`put_parts`).
#[derive(Debug, Clone, Copy)]
pub enum OutPart<'a> {
    /// Bytes to copy (inline or into a fresh arena block, by size).
    Bytes(&'a [u8]),
    /// A block of this queue's arena that this process allocated with
    /// `alloc_block` and filled: it travels as it is.
    Block {
        /// Data offset in the arena (as `alloc_block` returned it).
        offset: u64,
        /// Bytes of it that make the part (at most the allocated length).
        len: u64,
    },
}

/// One received part.
#[derive(Debug)]
pub enum Part {
    /// Bytes copied out of the ring.
    Inline(Vec<u8>),
    /// An arena block, held by this process until `free_block`.
    Block {
        /// Data offset in the arena.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// A queue mapped in this process. Cheap to share between threads (`Arc`).
#[derive(Debug)]
pub struct SharedQueue {
    shm: SharedMemory,
    ring: Ring,
    arena: Arena,
    /// Index + 1 of this process's slot as last seen by this handle (0: none).
    slot: AtomicU32,
}

impl SharedQueue {
    /// Creates a new queue.
    pub fn create(config: QueueConfig) -> Result<Arc<Self>> {
        let header = std::mem::size_of::<QueueHeader>() as u64;
        let ring_len = ring_bytes(config.ring_bytes.max(4096)) as u64;
        let ring_offset = header;
        let arena_offset = (ring_offset + ring_len).div_ceil(64) * 64;
        let arena_len = arena_bytes(config.arena_bytes.max(1 << 16)) as u64;
        let total_len = arena_offset + arena_len;
        let shm = SharedMemory::create("corral-queue", total_len as usize)?;
        let base = shm.as_ptr();
        // SAFETY: the mapping is fresh, page-aligned and `total_len` long;
        // the header, ring and arena ranges are disjoint and inside it. It
        // maps `shm`'s memfd from offset 0, which `shm` keeps open as long
        // as the views live.
        let (ring, arena) = unsafe {
            let h = base.cast::<QueueHeader>();
            // The memfd is zero-filled: zero is a valid state for every
            // atomic, counter and slot; only the info needs writing.
            std::ptr::addr_of_mut!((*h).info).write(QueueInfo {
                magic: QUEUE_MAGIC,
                version: QUEUE_VERSION,
                reserved: 0,
                ring_offset,
                ring_len,
                arena_offset,
                arena_len,
                maxsize: config.maxsize,
                total_len,
            });
            (
                Ring::init(base.add(ring_offset as usize), ring_len as usize)?,
                Arena::init(base.add(arena_offset as usize), arena_len as usize)?.backed_by(shm.raw_fd(), arena_offset),
            )
        };
        let q = SharedQueue { shm, ring, arena, slot: AtomicU32::new(0) };
        q.claim_slot(SLOT_HOLDER)?;
        Ok(Arc::new(q))
    }

    /// Maps a queue received from another process, checking its layout.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Arc<Self>> {
        let shm = SharedMemory::open(fd)?;
        let len = shm.len() as u64;
        if len < std::mem::size_of::<QueueHeader>() as u64 {
            return Err(CoreError::corrupt("queue", "block smaller than a queue header"));
        }
        let base = shm.as_ptr();
        // SAFETY: in bounds (checked); the info is written once at creation.
        let info = unsafe { std::ptr::addr_of!((*base.cast::<QueueHeader>()).info).read() };
        if info.magic != QUEUE_MAGIC || info.version != QUEUE_VERSION {
            return Err(CoreError::corrupt("queue", format!("magic {:#x} version {}", info.magic, info.version)));
        }
        let fits = |off: u64, l: u64| off % 64 == 0 && off.checked_add(l).is_some_and(|e| e <= len);
        if info.total_len != len || !fits(info.ring_offset, info.ring_len) || !fits(info.arena_offset, info.arena_len) {
            return Err(CoreError::corrupt("queue", "geometry does not fit the block"));
        }
        // SAFETY: both ranges lie inside the mapping (checked) and are kept
        // mapped by `shm`, which lives as long as the views and keeps its
        // memfd, mapped from offset 0, open as long.
        let (ring, arena) = unsafe {
            (
                Ring::attach(base.add(info.ring_offset as usize), info.ring_len as usize)?,
                Arena::attach(base.add(info.arena_offset as usize), info.arena_len as usize)?
                    .backed_by(shm.raw_fd(), info.arena_offset),
            )
        };
        let q = SharedQueue { shm, ring, arena, slot: AtomicU32::new(0) };
        q.claim_slot(SLOT_HOLDER)?;
        Ok(Arc::new(q))
    }

    /// The signal bumped when a message arrives (or a producer closes).
    pub fn data_signal(&self) -> &Signal {
        &self.hdr().data.0
    }

    /// The signal bumped when room is freed.
    pub fn space_signal(&self) -> &Signal {
        &self.hdr().space.0
    }

    fn hdr(&self) -> &QueueHeader {
        // SAFETY: the mapping holds a checked QueueHeader at offset 0 for
        // the lifetime of `self.shm`; shared fields are atomics.
        unsafe { &*self.shm.as_ptr().cast::<QueueHeader>() }
    }

    /// The memfd, to share with another process.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shm.fd()
    }

    /// The bound on items (0: none).
    pub fn maxsize(&self) -> u64 {
        self.hdr().info.maxsize
    }

    /// Items in the queue now (see `ring::RingCount` for what a crash
    /// can do to it).
    pub fn len(&self) -> u64 {
        self.ring.frames()
    }

    /// True when no item is queued (exact).
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// True when the queue holds `maxsize` items.
    pub fn is_full(&self) -> bool {
        let max = self.maxsize();
        max > 0 && self.len() >= max
    }

    /// The largest message this queue accepts.
    pub fn max_message(&self) -> u64 {
        self.arena.max_alloc()
    }

    /// Inline bytes a descriptor may carry.
    fn inline_max(&self) -> usize {
        INLINE_MAX.min(self.ring.max_frame() as usize / 2)
    }

    /// The most parts (in-band pickle + buffers) one message may have: its
    /// descriptor, with up to `inline_max` inline bytes, must fit a frame
    /// of the ring, and its count the descriptor's header.
    pub fn max_parts(&self) -> usize {
        frame::segments_within((self.ring.max_frame() as usize).saturating_sub(self.inline_max()))
    }

    /// Finds or claims this process's slot and moves it to `state`.
    fn claim_slot(&self, state: u32) -> Result<()> {
        let i = self.claim_slot_for(ProcessId::of(my_pid()), state, false)?;
        self.slot.store(i as u32 + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Records `pid` as a holder of the queue, before it maps the queue
    /// itself: a parent calls this for a child it just started with the
    /// queue, so that a consumer does not see the end of data while the
    /// child is still starting up. Fails when `MAX_HOLDERS` live processes
    /// already hold the queue (the child then fails the same way when it
    /// maps it).
    /// A child that already closed the queue (it ran and closed before its
    /// parent got here) stays closed.
    pub fn add_holder(&self, pid: u32) -> Result<()> {
        self.claim_slot_for(ProcessId::of(pid), SLOT_HOLDER, true).map(|_| ())
    }

    /// Counts one handle of the queue as lent by this process (see the
    /// module docs, "Lent handles"): until the `Lent` is dropped, or
    /// `release_lent(slot, pid)` is called with its `slot()` and `pid()`
    /// (then `forget` it), a consumer is not told the data ended while this
    /// process lives. Fails like `add_holder` when this process has no slot
    /// and `MAX_HOLDERS` live processes hold the queue.
    pub fn lend(self: &Arc<Self>) -> Result<Lent> {
        let me = ProcessId::of(my_pid());
        let h = self.hdr();
        for _ in 0..8 {
            let i = self.own_slot(me)?;
            h.lent[i].fetch_add(1, Ordering::AcqRel);
            // A closed slot could have been taken over between finding it
            // and counting: then take the count back and look again.
            let now = HolderSlot::unpack(h.holders[i].load(Ordering::Acquire));
            if now.pid == me.pid {
                return Ok(Lent { queue: Arc::clone(self), slot: i as u32, pid: me.pid, armed: true });
            }
            let _ = h.lent[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        Err(CoreError::Invalid("could not record the queue as lent: its holder table changes too fast".into()))
    }

    /// This process's slot: the one it holds, or a new one in state
    /// CLOSED when it closed the queue and its slot was taken over since
    /// (a lend must not reopen it).
    fn own_slot(&self, me: ProcessId) -> Result<usize> {
        let h = self.hdr();
        let used = (h.slots_used.load(Ordering::Acquire) as usize).min(MAX_HOLDERS);
        let mine = HolderSlot::new(me, 0);
        let found = h.holders[..used].iter().position(|w| {
            let s = HolderSlot::unpack(w.load(Ordering::Acquire));
            s.pid == mine.pid && (s.start == 0 || mine.start == 0 || s.start == mine.start)
        });
        match found {
            Some(i) => Ok(i),
            None => self.claim_slot_for(me, SLOT_CLOSED, false),
        }
    }

    /// Takes back one handle lent by process `pid` from slot `slot` (a
    /// receiver calls this once it has claimed its own slot). Does nothing
    /// when the slot no longer belongs to `pid` (it died, its lends are
    /// void) or holds no lend. Wakes consumers, which may now see the end.
    pub fn release_lent(&self, slot: u32, pid: u32) {
        let h = self.hdr();
        let Some(count) = h.lent.get(slot as usize) else { return };
        if HolderSlot::unpack(h.holders[slot as usize].load(Ordering::Acquire)).pid != pid {
            return;
        }
        let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        h.data.0.notify();
    }

    /// Finds or claims the slot of `id` and moves it to `state` (see
    /// `claim_in`).
    fn claim_slot_for(&self, id: ProcessId, state: u32, by_parent: bool) -> Result<usize> {
        let h = self.hdr();
        claim_in(&h.holders, &h.lent, &h.slots_used, HolderSlot::new(id, state), by_parent, HolderSlot::is_dead)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "more than {MAX_HOLDERS} live processes hold this queue at once (corral tracks at most \
                 {MAX_HOLDERS} at a time to tell when its data has ended); share it with fewer processes, \
                 or close() it in those that no longer use it"
                ))
            })
    }

    /// Marks this process as a producer (cheap when it already is).
    fn register_producer(&self) -> Result<()> {
        let i = self.slot.load(Ordering::Relaxed) as usize;
        if i > 0 && i <= MAX_HOLDERS {
            let slot = HolderSlot::unpack(self.hdr().holders[i - 1].load(Ordering::Relaxed));
            if slot.pid == my_pid() && slot.state == SLOT_PRODUCER {
                return Ok(());
            }
        }
        self.claim_slot(SLOT_PRODUCER)
    }

    /// This process will put no more (`multiprocessing.Queue.close`).
    /// Consumers are woken so that they can see the end of the data.
    pub fn close_producer(&self) {
        let me = my_pid();
        let h = self.hdr();
        let used = (h.slots_used.load(Ordering::Acquire) as usize).min(MAX_HOLDERS);
        for slot in &h.holders[..used] {
            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let cur = HolderSlot::unpack(w);
                (cur.pid == me).then(|| HolderSlot { state: SLOT_CLOSED, ..cur }.pack())
            });
        }
        h.data.0.notify();
    }

    /// True when nothing more can arrive: every other process that holds
    /// the queue has closed it or died (at least one existed), and this
    /// process has not put into it.
    fn producers_gone(&self, check_liveness: bool) -> bool {
        let h = self.hdr();
        let liveness: &dyn Fn(HolderSlot) -> bool = &HolderSlot::is_dead;
        others_gone(&h.holders, &h.lent, &h.slots_used, my_pid(), check_liveness.then_some(liveness))
    }

    /// Puts one message, waiting for room until `deadline` (`Some(now)`
    /// or earlier: do not wait). `Err(Full)` when the wait ends first.
    ///
    /// Placement: parts go inline (copied through the ring) while the
    /// inline total stays within `INLINE_MAX`, in order; the rest go to
    /// arena blocks (copied once; the consumer maps them).
    pub fn put(&self, msg: Outgoing<'_>, deadline: Option<Instant>) -> Result<()> {
        let parts: Vec<OutPart<'_>> = msg.buffers.iter().map(|b| OutPart::Bytes(b)).collect();
        self.put_parts(msg.inband, &parts, deadline)
    }

    /// `put` of a message some of whose buffers already lie in arena
    /// blocks of this queue that this process allocated (`alloc_block`,
    /// state WRITING): those travel without a copy, and belong to the
    /// message from the moment `put_parts` is called (freed here if the
    /// put fails).
    pub fn put_parts(&self, inband: &[u8], buffers: &[OutPart<'_>], deadline: Option<Instant>) -> Result<()> {
        let adopted = || {
            buffers
                .iter()
                .filter_map(|p| if let OutPart::Block { offset, .. } = p { Some((*offset, 0)) } else { None })
                .collect::<Vec<_>>()
        };
        if let Err(e) = self.register_producer() {
            self.release_blocks(&adopted());
            return Err(e);
        }
        let me = my_pid();
        for p in buffers {
            if let OutPart::Block { offset, len } = *p {
                if let Err(e) = self.arena.check_writing(offset, len, me) {
                    // Not ours to free: the caller keeps it.
                    let ours: Vec<(u64, u64)> =
                        adopted().into_iter().filter(|&(o, _)| self.arena.check_writing(o, 0, me).is_ok()).collect();
                    self.release_blocks(&ours);
                    return Err(e);
                }
            }
        }
        let inline_max = self.inline_max();
        let parts: Vec<OutPart<'_>> = std::iter::once(OutPart::Bytes(inband)).chain(buffers.iter().copied()).collect();
        if parts.len() > self.max_parts() {
            self.release_blocks(&adopted());
            return Err(CoreError::Invalid(format!(
                "a message of {} out-of-band buffers exceeds this queue's limit of {} (a larger ring_bytes \
                 raises it, up to {})",
                parts.len() - 1,
                self.max_parts().saturating_sub(1),
                frame::MAX_SEGMENTS - 1
            )));
        }
        let mut inline_total = 0usize;
        let mut in_arena = Vec::with_capacity(parts.len());
        for p in &parts {
            let inline = match p {
                OutPart::Bytes(b) => inline_total + b.len() <= inline_max,
                OutPart::Block { .. } => false,
            };
            if let (true, OutPart::Bytes(b)) = (inline, p) {
                inline_total += b.len();
            }
            in_arena.push(!inline);
        }
        let big: Vec<&[u8]> = parts
            .iter()
            .zip(&in_arena)
            .filter_map(|(p, &a)| match p {
                OutPart::Bytes(b) if a => Some(*b),
                _ => None,
            })
            .collect();
        let total: u64 = big.iter().map(|b| b.len() as u64).sum();
        if total > self.arena.max_alloc() {
            self.release_blocks(&adopted());
            return Err(CoreError::TooLarge { size: total, limit: self.arena.max_alloc() });
        }
        // 1. Arena blocks for the large parts, filled before the message
        //    becomes visible (adopted blocks are filled already).
        let mut filled: Vec<(u64, u64)> = Vec::with_capacity(big.len());
        let mut blocks = adopted();
        if let Err(e) = self.alloc_blocks(&big, deadline, &mut filled) {
            blocks.extend_from_slice(&filled);
            self.release_blocks(&blocks);
            return Err(e);
        }
        blocks.extend_from_slice(&filled);
        // 2. The descriptor: segment table, then the inline parts.
        let mut segments = Vec::with_capacity(parts.len());
        let mut next_block = filled.iter();
        let mut inline_at = 0u64;
        let mut inline_parts: Vec<&[u8]> = Vec::with_capacity(parts.len());
        for (p, &arena) in parts.iter().zip(&in_arena) {
            match p {
                OutPart::Block { offset, len } => {
                    segments.push(Segment { location: Location::Arena, offset: *offset, len: *len });
                }
                OutPart::Bytes(_) if arena => {
                    let Some(&(offset, len)) = next_block.next() else {
                        self.release_blocks(&blocks);
                        return Err(CoreError::Invalid("block count mismatch".into()));
                    };
                    segments.push(Segment { location: Location::Arena, offset, len });
                }
                OutPart::Bytes(b) => {
                    segments.push(Segment { location: Location::Inline, offset: inline_at, len: b.len() as u64 });
                    inline_at += b.len() as u64;
                    inline_parts.push(b);
                }
            }
        }
        let mut desc = Vec::with_capacity(frame::descriptor_len(segments.len(), 0));
        if let Err(e) = frame::encode_table(&segments, &mut desc) {
            self.release_blocks(&blocks);
            return Err(e);
        }
        // 3. Into the ring, waiting for room and for the item bound; the
        //    blocks turn QUEUED as the frame is published.
        let r = self.push_descriptor(&desc, &inline_parts, &blocks, deadline);
        if r.is_err() {
            self.release_blocks(&blocks);
        }
        r
    }

    /// Allocates an arena block of `len` bytes for this process to fill
    /// (state WRITING, held by this pid), without waiting for room:
    /// `Ok(None)` when there is none now or the arena lock is busy past
    /// `deadline`. The block is given back with `free_block`, or travels
    /// in a message with `put_parts` (`OutPart::Block`); if this process
    /// dies first, the arena reclaims it (`reclaim_dead_blocks`).
    pub fn alloc_block(&self, len: u64, deadline: Option<Instant>) -> Result<Option<u64>> {
        self.arena.alloc(len, my_pid(), deadline)
    }

    /// Frees the blocks that dead processes were writing or holding (the
    /// arena does it by itself only when an allocation finds no room);
    /// returns how many. A process that takes over from a dead one (a
    /// respawned pool worker) calls it so their memory is reused at once.
    pub fn reclaim_dead_blocks(&self, deadline: Option<Instant>) -> Result<usize> {
        let freed = self.arena.reclaim_dead_locked(my_pid(), deadline)?;
        if freed > 0 {
            self.hdr().space.0.notify();
        }
        Ok(freed)
    }

    /// Allocates and fills one arena block per part; they stay WRITING
    /// (held by this process) until `push_descriptor` publishes them.
    fn alloc_blocks(&self, parts: &[&[u8]], deadline: Option<Instant>, out: &mut Vec<(u64, u64)>) -> Result<()> {
        let me = my_pid();
        let mut swept: Option<Instant> = None;
        for part in parts {
            let len = part.len() as u64;
            let space = &self.hdr().space.0;
            let attempt = || {
                if let Some(offset) = self.arena.alloc(len, me, deadline)? {
                    return Ok(Some(offset));
                }
                // No room even after the arena reclaimed the blocks of dead
                // holders: look for orphaned QUEUED blocks too, at most once
                // per `LIVENESS_CHECK` of waiting (it locks the ring).
                if swept.is_some_and(|t| t.elapsed() < LIVENESS_CHECK) {
                    return Ok(None);
                }
                swept = Some(Instant::now());
                if self.reclaim_orphans(me, deadline)? == 0 {
                    return Ok(None);
                }
                self.arena.alloc(len, me, deadline)
            };
            let got = wait_for(space, deadline, LIVENESS_CHECK, attempt, || Ok(()))?;
            let offset = got.ok_or(CoreError::Full)?;
            out.push((offset, len));
            let dst = self.arena.data_ptr(offset, len)?;
            // SAFETY: the block [offset, offset+len) is ours (state WRITING)
            // and inside the arena (checked by data_ptr); `part` is a
            // private buffer, so they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len()) };
        }
        Ok(())
    }

    /// Frees the arena blocks that are QUEUED but referenced by no unread
    /// message: those of a producer that died between flipping them and
    /// publishing its frame, or of a consumer that died between taking a
    /// frame and marking its blocks HELD (see the module docs). Takes the
    /// write lock, then the read lock (the order of `Ring::recount`), then
    /// the arena lock; returns how many blocks were freed, 0 when a lock
    /// was not had by `deadline` or an unread descriptor does not decode
    /// (then nothing can be proven garbage).
    fn reclaim_orphans(&self, me: u32, deadline: Option<Instant>) -> Result<usize> {
        let Some(w) = self.ring.lock_write(me, deadline) else { return Ok(0) };
        let Some(r) = self.ring.lock_read(me, deadline) else { return Ok(0) };
        let arena_len = self.arena.size();
        let mut referenced = Vec::new();
        let walked = r.for_each_unread(&w, |desc| {
            let d = frame::decode(desc, arena_len)?;
            referenced.extend(d.segments.iter().filter(|s| s.location == Location::Arena).map(|s| s.offset));
            Ok(())
        });
        if walked.is_err() {
            return Ok(0);
        }
        referenced.sort_unstable();
        let freed = self.arena.reclaim_unreferenced(me, deadline, |off| referenced.binary_search(&off).is_ok())?;
        drop(r);
        drop(w);
        if freed > 0 {
            self.hdr().space.0.notify();
        }
        Ok(freed)
    }

    fn release_blocks(&self, blocks: &[(u64, u64)]) {
        for &(offset, _) in blocks {
            let _ = self.arena.free(offset);
        }
        if !blocks.is_empty() {
            self.hdr().space.0.notify();
        }
    }

    fn push_descriptor(
        &self,
        desc: &[u8],
        inline: &[&[u8]],
        blocks: &[(u64, u64)],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let h = self.hdr();
        let me = my_pid();
        let max = h.info.maxsize;
        let mut all: Vec<&[u8]> = Vec::with_capacity(inline.len() + 1);
        all.push(desc);
        all.extend_from_slice(inline);
        // WRITING -> QUEUED once the frame is in place, under the write
        // lock, just before it becomes visible (a consumer that takes it
        // at once finds the blocks QUEUED).
        let publish = || {
            for &(offset, _) in blocks {
                self.arena.mark_queued(offset)?;
            }
            #[cfg(feature = "testing")]
            crate::testing::reached(crate::testing::Point::QueuePublishing);
            Ok(())
        };
        let pushed = wait_for::<(), CoreError>(
            &h.space.0,
            deadline,
            LIVENESS_CHECK,
            || {
                if max > 0 && self.ring.frames() >= max {
                    return Ok(None);
                }
                let Some(mut w) = self.ring.lock_write(me, deadline) else {
                    return Ok(None);
                };
                if max > 0 && self.ring.frames() >= max {
                    return Ok(None);
                }
                Ok(w.try_push_with(&all, publish)?.then_some(()))
            },
            || Ok(()),
        )?;
        match pushed {
            Some(()) => {
                h.data.0.notify();
                Ok(())
            }
            None => Err(CoreError::Full),
        }
    }

    /// Takes up to `max_items` messages (at least one), waiting until
    /// `deadline` for the first. `Err(Empty)` when the wait ends first,
    /// `Err(Closed)` when every producer is gone and the queue is empty.
    pub fn get_many(&self, max_items: usize, deadline: Option<Instant>) -> Result<Vec<Vec<Part>>> {
        let h = self.hdr();
        let me = my_pid();
        let max_items = max_items.max(1);
        let got = wait_for(
            &h.data.0,
            deadline,
            LIVENESS_CHECK,
            || {
                // Producers before emptiness: a producer's last put happens
                // before its close or death, so this order cannot miss it.
                if self.ring.is_empty() {
                    if self.producers_gone(false) && self.ring.is_empty() {
                        return Err(self.closed_error());
                    }
                    return Ok(None);
                }
                let Some(mut r) = self.ring.lock_read(me, deadline) else {
                    return Ok(None);
                };
                let mut frames = Vec::new();
                while frames.len() < max_items {
                    let f = match r.try_pop() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        // Hand over what was taken; the error comes back on
                        // the next call.
                        Err(_) if !frames.is_empty() => break,
                        Err(e) => return Err(e),
                    };
                    #[cfg(feature = "testing")]
                    crate::testing::reached(crate::testing::Point::QueuePopped);
                    // Its blocks become ours before the read lock goes (see
                    // the module docs).
                    match self.hold(&f, me) {
                        Ok(d) => frames.push((f, d)),
                        Err(e) => {
                            drop(r);
                            for (_, d) in &frames {
                                self.release_held(d);
                            }
                            h.space.0.notify();
                            return Err(e);
                        }
                    }
                }
                drop(r);
                if frames.is_empty() {
                    return Ok(None);
                }
                Ok(Some(frames))
            },
            || {
                if self.producers_gone(true) && self.is_empty() {
                    Err(self.closed_error())
                } else {
                    Ok(())
                }
            },
        )?;
        let frames = got.ok_or(CoreError::Empty)?;
        h.space.0.notify();
        Ok(frames.iter().map(|(f, d)| unpack(f, d)).collect())
    }

    fn closed_error(&self) -> CoreError {
        CoreError::Closed("the queue is empty and every process that put into it has closed it or died".into())
    }

    /// Decodes a consumed frame's descriptor and marks its arena blocks
    /// HELD by `me`. On failure the blocks it marked are freed (the others
    /// are left QUEUED, for `reclaim_orphans`: a descriptor that failed
    /// cannot be trusted to name them).
    fn hold(&self, desc: &[u8], me: u32) -> Result<Descriptor> {
        let d = frame::decode(desc, self.arena.size())?;
        for (i, s) in d.segments.iter().enumerate() {
            if s.location != Location::Arena {
                continue;
            }
            if let Err(e) = self.arena.mark_held(s.offset, s.len, me) {
                let marked = Descriptor { segments: d.segments[..i].to_vec(), inline_start: d.inline_start };
                self.release_held(&marked);
                return Err(e);
            }
        }
        Ok(d)
    }

    /// Frees the arena blocks of a descriptor that `hold` took.
    fn release_held(&self, d: &Descriptor) {
        for s in d.segments.iter().filter(|s| s.location == Location::Arena) {
            let _ = self.arena.free(s.offset);
        }
    }

    /// Address and length of a received block, valid until `free_block`.
    pub fn block_ptr(&self, offset: u64, len: u64) -> Result<*mut u8> {
        self.arena.data_ptr(offset, len)
    }

    /// Returns a received block to the arena and wakes waiting producers.
    pub fn free_block(&self, offset: u64) -> Result<()> {
        let r = self.arena.free(offset);
        self.hdr().space.0.notify();
        r
    }

    /// Gives back the arena blocks of a received message that no one will
    /// read (this process holds them since `get_many`); a block that cannot
    /// be freed (corrupt) is left as it is.
    pub fn free_parts(&self, parts: &[Part]) {
        for p in parts {
            if let Part::Block { offset, .. } = p {
                let _ = self.free_block(*offset);
            }
        }
    }

    /// Address and length of this process's mapping of the arena's block
    /// area: every block pointer (`block_ptr`) lies inside it.
    pub fn arena_span(&self) -> Result<(*mut u8, u64)> {
        Ok((self.arena.data_ptr(0, self.arena.size())?, self.arena.size()))
    }

    /// Bytes of the arena in use (for tests and stats).
    pub fn arena_used(&self) -> Result<u64> {
        self.arena.used()
    }
}

/// One handle of a queue lent by this process (`SharedQueue::lend`):
/// taken back when dropped, unless `forget` handed that job to the
/// receiver. Dropped in another process (a forked child that inherited
/// it), it does nothing: the lend is its parent's.
#[derive(Debug)]
pub struct Lent {
    queue: Arc<SharedQueue>,
    slot: u32,
    pid: u32,
    armed: bool,
}

impl Lent {
    /// The lender's slot, for the receiver's `release_lent`.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The lender's pid, for the receiver's `release_lent`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Leaves the lend counted: the receiver takes it back.
    pub fn forget(mut self) {
        self.armed = false;
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.armed && my_pid() == self.pid {
            self.queue.release_lent(self.slot, self.pid);
        }
    }
}

/// The parts of a frame whose blocks `hold` took: inline parts are copied
/// out of the descriptor (checked by `frame::decode`).
fn unpack(desc: &[u8], d: &Descriptor) -> Vec<Part> {
    d.segments
        .iter()
        .map(|s| match s.location {
            Location::Inline => {
                let at = d.inline_start + s.offset as usize;
                Part::Inline(desc[at..at + s.len as usize].to_vec())
            }
            Location::Arena => Part::Block { offset: s.offset, len: s.len },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn arena_queue() -> Arc<SharedQueue> {
        SharedQueue::create(QueueConfig { ring_bytes: 1 << 16, arena_bytes: 8 << 20, maxsize: 0 }).unwrap()
    }

    #[test]
    fn a_block_written_in_place_travels_as_it_is_and_is_freed_by_its_receiver() {
        let q = arena_queue();
        let len = 1 << 20;
        let off = q.alloc_block(len, None).unwrap().unwrap();
        let p = q.block_ptr(off, len).unwrap();
        // SAFETY: the block is ours (WRITING) and `len` bytes long.
        unsafe { std::ptr::write_bytes(p, 0x5A, len as usize) };
        let small = [1u8; 100];
        let parts = [OutPart::Bytes(&small), OutPart::Block { offset: off, len: len - 64 }];
        q.put_parts(b"pickle", &parts, None).unwrap();
        let got = q.get_many(1, None).unwrap().pop().unwrap();
        assert!(matches!(&got[0], Part::Inline(v) if v == b"pickle"));
        assert!(matches!(&got[1], Part::Inline(v) if v == &small));
        let Part::Block { offset, len: l } = got[2] else { panic!("not a block: {:?}", got[2]) };
        assert_eq!((offset, l), (off, len - 64), "the same block, not a copy");
        assert_eq!(q.arena_used().unwrap(), len + 64, "one block in use: the adopted one");
        // SAFETY: the received block, held by us until free_block.
        assert_eq!(unsafe { *q.block_ptr(offset, l).unwrap().add(10) }, 0x5A);
        q.free_block(offset).unwrap();
        assert_eq!(q.arena_used().unwrap(), 0);
    }

    #[test]
    fn only_a_block_this_process_is_writing_with_room_for_the_part_is_sent_as_it_is() {
        let q = arena_queue();
        let off = q.alloc_block(4096, None).unwrap().unwrap();
        let too_long = [OutPart::Block { offset: off, len: 1 << 20 }];
        assert!(matches!(q.put_parts(b"x", &too_long, None), Err(CoreError::Invalid(_))));
        assert_eq!(q.arena_used().unwrap(), 0, "the message's blocks are freed when its put fails");
        let off = q.alloc_block(4096, None).unwrap().unwrap();
        q.put_parts(b"x", &[OutPart::Block { offset: off, len: 4096 }], None).unwrap();
        // Now QUEUED: sending it again (a replay) is refused and frees nothing.
        let again = [OutPart::Block { offset: off, len: 4096 }];
        assert!(matches!(q.put_parts(b"x", &again, None), Err(CoreError::Invalid(_))));
        assert_eq!(q.len(), 1);
        let got = q.get_many(1, None).unwrap().pop().unwrap();
        assert!(matches!(got[1], Part::Block { offset, .. } if offset == off));
        q.free_block(off).unwrap();
        assert_eq!(q.arena_used().unwrap(), 0);
    }

    #[test]
    fn blocks_of_a_dead_writer_are_reclaimed_on_request() {
        let q = arena_queue();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let off = q.arena.alloc(1 << 20, dead, None).unwrap().unwrap();
        let mine = q.alloc_block(1 << 20, None).unwrap().unwrap();
        assert_eq!(q.reclaim_dead_blocks(None).unwrap(), 1);
        assert_eq!(q.arena.state_of(off).unwrap(), crate::arena::FREE);
        assert_eq!(q.arena.state_of(mine).unwrap(), crate::arena::WRITING);
    }

    fn table() -> (Vec<AtomicU64>, Vec<AtomicU32>, AtomicU32) {
        (
            (0..MAX_HOLDERS).map(|_| AtomicU64::new(0)).collect(),
            (0..MAX_HOLDERS).map(|_| AtomicU32::new(0)).collect(),
            AtomicU32::new(0),
        )
    }

    fn holder(pid: u32, state: u32) -> HolderSlot {
        HolderSlot { pid, state, start: u64::from(pid) * 7 }
    }

    #[test]
    fn a_slot_packs_and_unpacks() {
        let s = HolderSlot { pid: u32::MAX, state: SLOT_CLOSED, start: (1 << START_BITS) - 1 };
        assert_eq!(HolderSlot::unpack(s.pack()), s);
        let id = ProcessId { pid: 42, start_time: (5 << START_BITS) + 9 };
        assert_eq!(HolderSlot::new(id, SLOT_HOLDER).start, 9, "only the low bits are kept");
    }

    #[test]
    fn ten_times_more_holders_than_slots_over_time_still_end_the_data() {
        let (t, l, used) = table();
        let me = 1;
        let mut dead: HashSet<u32> = HashSet::new();
        claim_in(&t, &l, &used, holder(me, SLOT_HOLDER), false, |_| false).unwrap();
        for pid in 2..(10 * MAX_HOLDERS as u32) {
            let gone = |s: HolderSlot| dead.contains(&s.pid);
            claim_in(&t, &l, &used, holder(pid, SLOT_HOLDER), false, gone).expect("a departed holder's slot is reused");
            claim_in(&t, &l, &used, holder(pid, SLOT_PRODUCER), false, gone).unwrap();
            assert!(!others_gone(&t, &l, &used, me, Some(&gone)), "holder {pid} is alive");
            if pid % 2 == 0 {
                dead.insert(pid); // dies
            } else {
                // Closes, lives on.
                claim_in(&t, &l, &used, holder(pid, SLOT_CLOSED), false, gone).unwrap();
            }
        }
        let gone = |s: HolderSlot| dead.contains(&s.pid);
        assert!(!others_gone(&t, &l, &used, me, None), "without a liveness check the dead look alive");
        assert!(others_gone(&t, &l, &used, me, Some(&gone)));
        assert_eq!(used.load(Ordering::Relaxed) as usize, MAX_HOLDERS);
    }

    #[test]
    fn more_live_holders_than_slots_at_once_is_refused_until_one_departs() {
        let (t, l, used) = table();
        let alive = |_: HolderSlot| false;
        for pid in 1..=MAX_HOLDERS as u32 {
            claim_in(&t, &l, &used, holder(pid, SLOT_HOLDER), false, alive).unwrap();
        }
        assert_eq!(claim_in(&t, &l, &used, holder(5000, SLOT_HOLDER), false, alive), None);
        // A holder already in the table still finds its own slot.
        assert!(claim_in(&t, &l, &used, holder(7, SLOT_PRODUCER), false, alive).is_some());
        claim_in(&t, &l, &used, holder(3, SLOT_CLOSED), false, alive).unwrap();
        assert_eq!(
            claim_in(&t, &l, &used, holder(5000, SLOT_HOLDER), false, alive),
            Some(2),
            "the closed slot is reused"
        );
    }

    #[test]
    fn add_holder_reports_a_full_table_of_live_holders() {
        // 1023 threads of this process: each id has its own /proc entry and
        // start time, so the table takes them as live processes.
        let q = SharedQueue::create(QueueConfig { ring_bytes: 4096, arena_bytes: 1 << 16, maxsize: 0 }).unwrap();
        let (ids_tx, ids_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = Arc::new(std::sync::Mutex::new(stop_rx));
        let threads: Vec<_> = (0..MAX_HOLDERS - 1)
            .map(|_| {
                let (ids, stop) = (ids_tx.clone(), stop_rx.clone());
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        ids.send(rustix::thread::gettid().as_raw_nonzero().get() as u32).unwrap();
                        let _ = stop.lock().unwrap().recv_timeout(Duration::from_secs(30));
                    })
                    .unwrap()
            })
            .collect();
        for _ in 0..MAX_HOLDERS - 1 {
            q.add_holder(ids_rx.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
        }
        match q.add_holder(1) {
            Err(CoreError::Invalid(msg)) => assert!(msg.contains("live processes hold this queue"), "{msg}"),
            other => panic!("{other:?}"),
        }
        drop(stop_tx);
        for t in threads {
            t.join().unwrap();
        }
        q.add_holder(1).expect("the departed threads' slots are reused");
    }

    #[test]
    fn a_holder_never_downgrades_a_producer_and_a_recycled_pid_is_another_process() {
        let (t, l, used) = table();
        let alive = |_: HolderSlot| false;
        let i = claim_in(&t, &l, &used, holder(9, SLOT_PRODUCER), false, alive).unwrap();
        assert_eq!(claim_in(&t, &l, &used, holder(9, SLOT_HOLDER), false, alive), Some(i));
        assert_eq!(HolderSlot::unpack(t[i].load(Ordering::Relaxed)).state, SLOT_PRODUCER);
        let other = HolderSlot { start: 12345, ..holder(9, SLOT_HOLDER) };
        assert_ne!(claim_in(&t, &l, &used, other, false, alive), Some(i), "same pid, other start time: a new slot");
        assert!(!others_gone(&t, &l, &used, 9, None), "a producer is not told its own data ended");
    }

    #[test]
    fn a_lent_handle_is_not_gone_while_its_lender_lives_even_the_consumer_itself() {
        let (t, l, used) = table();
        // A table of three slots, so that takeovers happen.
        let (t, l) = (&t[..3], &l[..3]);
        let me = 1;
        let mut dead: HashSet<u32> = HashSet::new();
        let mine = claim_in(t, l, &used, holder(me, SLOT_HOLDER), false, |_| false).unwrap();
        let a = claim_in(t, l, &used, holder(2, SLOT_PRODUCER), false, |_| false).unwrap();
        dead.insert(2);
        let gone = |s: HolderSlot| dead.contains(&s.pid);
        assert!(others_gone(t, l, &used, me, Some(&gone)), "the only producer died");
        // The consumer pickles the queue into a task: until the lend is
        // taken back, the end has not come.
        l[mine].fetch_add(1, Ordering::Relaxed);
        assert!(!others_gone(t, l, &used, me, Some(&gone)), "its own lend");
        assert!(!others_gone(t, l, &used, me, None));
        l[mine].fetch_sub(1, Ordering::Relaxed);
        assert!(others_gone(t, l, &used, me, Some(&gone)));
        // Another process's lend: not gone while it lives, even closed...
        let b = claim_in(t, l, &used, holder(3, SLOT_CLOSED), false, gone).unwrap();
        l[b].fetch_add(1, Ordering::Relaxed);
        assert!(!others_gone(t, l, &used, me, Some(&gone)), "a closed lender's handle is on its way");
        assert_eq!(claim_in(t, l, &used, holder(4, SLOT_HOLDER), false, gone), Some(a), "the dead one's slot");
        assert_eq!(claim_in(t, l, &used, holder(5, SLOT_HOLDER), false, gone), None, "not the closed lender's");
        // ...and void once it died: its slot is reused, the count reset.
        dead.insert(3);
        dead.insert(4);
        let gone = |s: HolderSlot| dead.contains(&s.pid);
        assert!(others_gone(t, l, &used, me, Some(&gone)), "a dead lender's lends are void");
        dead.remove(&4);
        let gone = |s: HolderSlot| dead.contains(&s.pid);
        assert_eq!(claim_in(t, l, &used, holder(5, SLOT_HOLDER), false, gone), Some(b));
        assert_eq!(l[b].load(Ordering::Relaxed), 0, "a new holder does not inherit the dead one's lends");
    }

    #[test]
    fn a_parent_adding_its_child_does_not_reopen_the_slot_the_child_closed() {
        let (t, l, used) = table();
        let i = claim_in(&t, &l, &used, holder(9, SLOT_CLOSED), false, |_| false).unwrap();
        assert_eq!(claim_in(&t, &l, &used, holder(9, SLOT_HOLDER), true, |_| false), Some(i));
        assert_eq!(HolderSlot::unpack(t[i].load(Ordering::Relaxed)).state, SLOT_CLOSED);
        assert_eq!(claim_in(&t, &l, &used, holder(9, SLOT_HOLDER), false, |_| false), Some(i));
        assert_eq!(HolderSlot::unpack(t[i].load(Ordering::Relaxed)).state, SLOT_HOLDER, "its own open does");
    }

    #[test]
    fn lend_and_release_through_a_real_queue() {
        let q = SharedQueue::create(QueueConfig { ring_bytes: 1 << 16, arena_bytes: 1 << 16, maxsize: 0 }).unwrap();
        let h = q.hdr();
        let lent = q.lend().unwrap();
        let (slot, pid) = (lent.slot(), lent.pid());
        assert_eq!(h.lent[slot as usize].load(Ordering::Relaxed), 1);
        let again = q.lend().unwrap();
        assert_eq!(again.slot(), slot, "one counter per process, not a slot per pickle");
        assert_eq!(h.lent[slot as usize].load(Ordering::Relaxed), 2);
        drop(again);
        lent.forget();
        assert_eq!(h.lent[slot as usize].load(Ordering::Relaxed), 1, "a forgotten lend stays counted");
        q.release_lent(slot, pid + 1);
        assert_eq!(h.lent[slot as usize].load(Ordering::Relaxed), 1, "another pid's release is ignored");
        q.release_lent(slot, pid);
        q.release_lent(slot, pid);
        assert_eq!(h.lent[slot as usize].load(Ordering::Relaxed), 0, "never below zero");
        q.release_lent(u32::MAX, pid);
    }

    fn parts_len(parts: &[Part]) -> Vec<u64> {
        parts
            .iter()
            .map(|p| match p {
                Part::Inline(v) => v.len() as u64,
                Part::Block { len, .. } => *len,
            })
            .collect()
    }

    #[test]
    fn a_message_of_thousands_of_buffers_round_trips_and_frees_its_blocks() {
        let q = SharedQueue::create(QueueConfig { arena_bytes: 64 << 20, ..QueueConfig::default() }).unwrap();
        let n = 5_000;
        assert!(q.max_parts() > n, "the default ring takes {} parts", q.max_parts());
        let data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 4096 + i % 7]).collect();
        let bufs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        q.put(Outgoing { inband: b"stream", buffers: &bufs }, None).unwrap();
        let mut got = q.get_many(1, None).unwrap();
        let parts = got.pop().unwrap();
        let want: Vec<u64> = std::iter::once(6).chain(data.iter().map(|d| d.len() as u64)).collect();
        assert_eq!(parts_len(&parts), want);
        for p in &parts {
            if let Part::Block { offset, len } = p {
                let ptr = q.block_ptr(*offset, *len).unwrap();
                // SAFETY: a held block of `len` bytes.
                let first = unsafe { ptr.read() };
                assert!(data.iter().any(|d| d.len() as u64 == *len && d[0] == first));
                q.free_block(*offset).unwrap();
            }
        }
        assert_eq!(q.arena_used().unwrap(), 0);
    }

    /// One step of the sweep model: a real put or get, a process "killed"
    /// inside one of the two windows (its steps done by hand, as far as
    /// the window), a held block freed, or a sweep.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Put(usize),
        Get,
        Free(usize),
        DiesBeforePublish(usize),
        DiesAfterPop,
        Sweep,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let len = 70_000usize..400_000;
        prop_oneof![
            3 => len.clone().prop_map(Step::Put),
            3 => Just(Step::Get),
            2 => any::<usize>().prop_map(Step::Free),
            1 => len.prop_map(Step::DiesBeforePublish),
            1 => Just(Step::DiesAfterPop),
            2 => Just(Step::Sweep),
        ]
    }

    fn body(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect()
    }

    fn block_of(parts: &[Part]) -> (u64, u64) {
        match parts.get(1) {
            Some(&Part::Block { offset, len }) => (offset, len),
            other => panic!("expected an arena part, got {other:?}"),
        }
    }

    fn unread_offsets(q: &SharedQueue) -> Vec<u64> {
        let w = q.ring.lock_write(my_pid(), None).unwrap();
        let mut out = Vec::new();
        q.ring
            .lock_read(my_pid(), None)
            .unwrap()
            .for_each_unread(&w, |desc| {
                out.extend(frame::decode(desc, q.arena.size())?.segments.iter().skip(1).map(|s| s.offset));
                Ok(())
            })
            .unwrap();
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        /// The sweep frees exactly the blocks of processes killed inside the
        /// windows (QUEUED, in no unread frame), never those of an unread
        /// message or of a held one, and every message still arrives intact.
        #[test]
        fn the_sweep_frees_orphans_and_nothing_else(steps in proptest::collection::vec(step(), 1..60)) {
            let q = SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, arena_bytes: 4 << 20, maxsize: 0 }).unwrap();
            let me = my_pid();
            let now = || Some(Instant::now());
            let mut seed = 0usize;
            let mut unread: std::collections::VecDeque<(usize, usize)> = Default::default();
            let mut held: Vec<(u64, u64, usize)> = Vec::new();
            let mut orphans: Vec<u64> = Vec::new();
            for st in steps {
                match st {
                    Step::Put(len) => {
                        seed += 1;
                        let b = body(seed, len);
                        match q.put(Outgoing { inband: b"m", buffers: &[&b] }, now()) {
                            Ok(()) => unread.push_back((seed, len)),
                            Err(CoreError::Full) => {}
                            Err(e) => panic!("{e}"),
                        }
                        // A put that found no room swept: the orphans it
                        // freed are FREE, or were merged, or became its own
                        // block (referenced now).
                        let referenced = unread_offsets(&q);
                        orphans.retain(|&off| {
                            q.arena.state_of(off).is_ok_and(|st| st == crate::arena::QUEUED)
                                && !referenced.contains(&off)
                        });
                    }
                    Step::Get => match q.get_many(1, now()) {
                        Ok(mut got) => {
                            let (s, len) = unread.pop_front().expect("a message the model does not have");
                            let (offset, blen) = block_of(&got.pop().unwrap());
                            proptest::prop_assert_eq!(blen, len as u64);
                            proptest::prop_assert_eq!(q.arena.state_of(offset).unwrap(), crate::arena::HELD);
                            held.push((offset, blen, s));
                        }
                        Err(CoreError::Empty) => proptest::prop_assert!(unread.is_empty()),
                        Err(e) => panic!("{e}"),
                    },
                    Step::Free(i) if !held.is_empty() => {
                        let (offset, len, s) = held.swap_remove(i % held.len());
                        let p = q.block_ptr(offset, len).unwrap();
                        // SAFETY: a block this test holds, `len` bytes long.
                        let data = unsafe { std::slice::from_raw_parts(p, len as usize) };
                        proptest::prop_assert!(data == body(s, len as usize).as_slice(), "message {} intact", s);
                        q.free_block(offset).unwrap();
                    }
                    Step::Free(_) => {}
                    Step::DiesBeforePublish(len) => {
                        // alloc_blocks, then publish's flip; the frame never comes.
                        if let Some(off) = q.arena.alloc(len as u64, me, now()).unwrap() {
                            q.arena.mark_queued(off).unwrap();
                            orphans.push(off);
                        }
                    }
                    Step::DiesAfterPop => {
                        // try_pop, then no `hold`.
                        let popped = q.ring.lock_read(me, now()).unwrap().try_pop().unwrap();
                        if let Some(f) = popped {
                            unread.pop_front().expect("a frame the model does not have");
                            let d = frame::decode(&f, q.arena.size()).unwrap();
                            orphans.push(d.segments[1].offset);
                        }
                    }
                    Step::Sweep => {
                        let freed = q.reclaim_orphans(me, now()).unwrap();
                        proptest::prop_assert_eq!(freed, orphans.len());
                        for off in orphans.drain(..) {
                            proptest::prop_assert_eq!(q.arena.state_of(off).unwrap(), crate::arena::FREE);
                        }
                        for &(off, _, _) in &held {
                            proptest::prop_assert_eq!(q.arena.state_of(off).unwrap(), crate::arena::HELD);
                        }
                    }
                }
            }
            // Everything unread still arrives intact; then only orphans remain.
            while let Some((s, len)) = unread.pop_front() {
                let mut got = q.get_many(1, now()).unwrap();
                let (offset, blen) = block_of(&got.pop().unwrap());
                proptest::prop_assert_eq!(blen, len as u64);
                held.push((offset, blen, s));
            }
            for (offset, len, s) in held {
                let p = q.block_ptr(offset, len).unwrap();
                // SAFETY: a block this test holds, `len` bytes long.
                let data = unsafe { std::slice::from_raw_parts(p, len as usize) };
                proptest::prop_assert!(data == body(s, len as usize).as_slice(), "message {} intact", s);
                q.free_block(offset).unwrap();
            }
            proptest::prop_assert_eq!(q.reclaim_orphans(me, now()).unwrap(), orphans.len());
            proptest::prop_assert_eq!(q.arena_used().unwrap(), 0);
        }
    }

    #[test]
    fn a_message_over_the_part_limit_is_refused_before_anything_is_allocated() {
        let q = SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, ..QueueConfig::default() }).unwrap();
        let limit = q.max_parts();
        let data = vec![0u8; 100_000];
        let bufs: Vec<&[u8]> = vec![&data; limit];
        match q.put(Outgoing { inband: b"x", buffers: &bufs }, None) {
            Err(CoreError::Invalid(msg)) => assert!(msg.contains("ring_bytes"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.arena_used().unwrap(), 0);
        let fits: Vec<&[u8]> = vec![&data[..10]; limit - 1];
        q.put(Outgoing { inband: b"x", buffers: &fits }, None).unwrap();
        assert_eq!(q.get_many(1, None).unwrap()[0].len(), limit);
    }
}
