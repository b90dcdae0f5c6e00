//! A bounded ring of variable-size framed messages in shared memory, for
//! many producers and many consumers in any number of processes.
//!
//! Design. Producers serialize on a write lock, consumers on a read lock
//! (robust locks, `sys::robust_lock`); between the two sides the ring is a
//! single-producer single-consumer byte ring on two monotonic positions,
//! `tail` (end of the last committed frame) and `head` (start of the oldest
//! unread frame). A frame is written past `tail` and becomes visible only
//! when `tail` is stored (release) after the whole frame is in place; a
//! frame is freed only when `head` is stored after it has been copied out.
//!
//! Why locks rather than a lock-free slot queue (Vyukov): a producer that
//! dies between claiming a slot and publishing it wedges a lock-free ring
//! for every consumer (iceoryx hit this). Here a producer that dies in the
//! middle of a frame leaves `tail` untouched: the half-written bytes are
//! invisible, and the next producer takes the lock over from the dead pid
//! and overwrites them. A consumer that dies while copying leaves `head`
//! untouched: the next consumer reads that frame again. An uncontended lock
//! is one compare-and-swap, so this costs little against the pickling that
//! surrounds every message.
//!
//! Frame: `u32 length | u32 kind | payload | padding to 8 bytes`. A frame
//! never wraps: when it does not fit before the end of the data area, a
//! `WRAP` marker fills the rest and the frame starts at offset 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{CoreError, Result};
use crate::sys::robust_lock::{Acquired, LockWord};

/// First word of a ring header ("CRLRING1").
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"CRLRING1");
/// Layout version.
pub const RING_VERSION: u32 = 1;
const FRAME_HEADER: u64 = 8;
const KIND_MSG: u32 = 0xC0A1_0001;
const KIND_WRAP: u32 = 0xC0A1_0002;

/// Fixed part of the header: identity and geometry, written once.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingInfo {
    /// `RING_MAGIC`.
    pub magic: u64,
    /// `RING_VERSION`.
    pub version: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Size of the data area in bytes (a multiple of 8).
    pub capacity: u64,
}

/// One side of the ring: its lock and its position, on its own cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingSide {
    /// Serializes the producers (write side) or the consumers (read side).
    pub lock: LockWord,
    /// `tail` for the write side, `head` for the read side: a byte count
    /// since creation; the offset in the data area is `pos % capacity`.
    pub pos: AtomicU64,
}

/// The number of committed, unread frames, on its own cache line.
///
/// Incremented just before `tail` is stored and decremented (saturating)
/// just before `head` is stored, each under its side's lock, so a consumer
/// never sees a frame that is not counted yet. A process killed between the
/// two steps leaves it off by one; the next producer that takes a lock over
/// from a dead owner (or follows a consumer that did) recounts the frames
/// under both locks (`needs_recount`). It serves `qsize` and `maxsize`;
/// emptiness is always read from the positions.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingCount {
    /// Frames committed and not yet consumed (see above).
    pub frames: AtomicU64,
    /// Set to 1 when a consumer took the read lock over from a dead one.
    pub needs_recount: std::sync::atomic::AtomicU32,
}

/// The ring header at the start of its shared block; the data area follows.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Identity and geometry.
    pub info: RingInfo,
    /// Producers' lock and `tail`.
    pub write: RingSide,
    /// Consumers' lock and `head`.
    pub read: RingSide,
    /// Committed, unread frames.
    pub count: RingCount,
}

const _: () = assert!(std::mem::size_of::<RingHeader>() == 256);
const _: () = assert!(std::mem::align_of::<RingHeader>() == 64);

/// Bytes of shared memory a ring with `capacity` data bytes needs.
pub const fn ring_bytes(capacity: u64) -> usize {
    std::mem::size_of::<RingHeader>() + capacity as usize
}

/// A view of a ring in shared memory. It does not own the memory: whoever
/// holds the `SharedMemory` keeps it mapped for the view's lifetime.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    header: *const RingHeader,
    data: *mut u8,
    capacity: u64,
}

// SAFETY: all shared state is reached through atomics or under the ring's
// locks; the raw pointers are valid for as long as the mapping's owner says.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// A frame copied out of the ring.
pub type Frame = Vec<u8>;

impl Ring {
    /// Writes a fresh ring into `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned, valid for `len` bytes, and not in use
    /// by anyone else while this runs.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<Ring> {
        let hdr = std::mem::size_of::<RingHeader>();
        if len < hdr + 64 {
            return Err(CoreError::Invalid(format!("ring needs more than {len} bytes")));
        }
        let capacity = ((len - hdr) as u64) & !7;
        let header = base.cast::<RingHeader>();
        // SAFETY: the caller gives exclusive, aligned memory of `len` bytes,
        // which holds a RingHeader (checked above).
        unsafe {
            header.write(RingHeader {
                info: RingInfo { magic: RING_MAGIC, version: RING_VERSION, reserved: 0, capacity },
                write: RingSide { lock: LockWord::new(), pos: AtomicU64::new(0) },
                read: RingSide { lock: LockWord::new(), pos: AtomicU64::new(0) },
                count: RingCount { frames: AtomicU64::new(0), needs_recount: std::sync::atomic::AtomicU32::new(0) },
            });
            Ok(Ring { header, data: base.add(hdr), capacity })
        }
    }

    /// Attaches to a ring another process initialized, checking its header.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned and valid for `len` bytes for the
    /// lifetime of the returned view.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Ring> {
        let hdr = std::mem::size_of::<RingHeader>();
        if len < hdr {
            return Err(CoreError::corrupt("ring", "block smaller than its header"));
        }
        let header = base.cast::<RingHeader>();
        // SAFETY: in bounds (checked); plain reads of fields written once at init.
        let (magic, version, capacity) = unsafe {
            let info = std::ptr::addr_of!((*header).info);
            ((*info).magic, (*info).version, (*info).capacity)
        };
        if magic != RING_MAGIC || version != RING_VERSION {
            return Err(CoreError::corrupt("ring", format!("magic {magic:#x} version {version}")));
        }
        if capacity % 8 != 0 || capacity == 0 || capacity > (len - hdr) as u64 {
            return Err(CoreError::corrupt("ring", format!("capacity {capacity} in {len} bytes")));
        }
        // SAFETY: hdr < len, checked above.
        Ok(Ring { header, data: unsafe { base.add(hdr) }, capacity })
    }

    fn hdr(&self) -> &RingHeader {
        // SAFETY: the header is valid for the view's lifetime (constructor
        // contract) and is only accessed through atomics after init.
        unsafe { &*self.header }
    }

    /// Size of the data area.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest payload a frame can carry: a quarter of the ring, so a
    /// wrap never makes a frame impossible to place.
    pub fn max_frame(&self) -> u64 {
        self.capacity / 4 - FRAME_HEADER
    }

    /// Frames committed and not yet read; may undercount after a crash
    /// (see `RingCount`), never overcounts.
    pub fn frames(&self) -> u64 {
        self.hdr().count.frames.load(Ordering::Acquire)
    }

    /// True when no committed frame is unread (exact).
    pub fn is_empty(&self) -> bool {
        self.used() == 0
    }

    /// Bytes committed and not yet read.
    pub fn used(&self) -> u64 {
        let head = self.hdr().read.pos.load(Ordering::Acquire);
        let tail = self.hdr().write.pos.load(Ordering::Acquire);
        tail.saturating_sub(head)
    }

    /// Locks the write side; `None` if `deadline` passed first.
    pub fn lock_write(&self, me: u32, deadline: Option<Instant>) -> Option<WriteGuard<'_>> {
        let side = &self.hdr().write;
        let how = if side.lock.try_lock(me) { Acquired::Clean } else { side.lock.lock(me, deadline)? };
        let recovered = matches!(how, Acquired::OwnerDied(_));
        if recovered || self.hdr().count.needs_recount.swap(0, Ordering::AcqRel) != 0 {
            self.recount(me);
        }
        Some(WriteGuard { ring: self, recovered })
    }

    /// Recounts the unread frames; called with the write lock held, takes
    /// the read lock too (always in this order, so two recounts cannot
    /// deadlock; nothing else holds both).
    fn recount(&self, me: u32) {
        let hdr = self.hdr();
        let Some(_read) = self.lock_read_raw(me) else { return };
        let tail = hdr.write.pos.load(Ordering::Acquire);
        let mut pos = hdr.read.pos.load(Ordering::Acquire);
        let mut frames = 0u64;
        while pos < tail && tail - pos <= self.capacity {
            let off = pos % self.capacity;
            let len = u64::from(self.read_u32(off));
            match self.read_u32(off + 4) {
                KIND_WRAP => pos += self.capacity - off,
                KIND_MSG => {
                    frames += 1;
                    pos += Ring::frame_len(len);
                }
                _ => break,
            }
        }
        hdr.count.frames.store(frames, Ordering::Release);
    }

    fn lock_read_raw(&self, me: u32) -> Option<ReadGuard<'_>> {
        let side = &self.hdr().read;
        if !side.lock.try_lock(me) {
            side.lock.lock(me, None)?;
        }
        Some(ReadGuard { ring: self, recovered: false })
    }

    /// Locks the write side only if it is free.
    pub fn try_lock_write(&self, me: u32) -> Option<WriteGuard<'_>> {
        self.hdr().write.lock.try_lock(me).then_some(WriteGuard { ring: self, recovered: false })
    }

    /// Locks the read side; `None` if `deadline` passed first.
    pub fn lock_read(&self, me: u32, deadline: Option<Instant>) -> Option<ReadGuard<'_>> {
        let side = &self.hdr().read;
        let how = if side.lock.try_lock(me) { Acquired::Clean } else { side.lock.lock(me, deadline)? };
        let recovered = matches!(how, Acquired::OwnerDied(_));
        if recovered {
            // The dead consumer may have counted a frame it did not free.
            self.hdr().count.needs_recount.store(1, Ordering::Release);
        }
        Some(ReadGuard { ring: self, recovered })
    }

    /// Locks the read side only if it is free.
    pub fn try_lock_read(&self, me: u32) -> Option<ReadGuard<'_>> {
        self.hdr().read.lock.try_lock(me).then_some(ReadGuard { ring: self, recovered: false })
    }

    fn frame_len(payload: u64) -> u64 {
        FRAME_HEADER + payload.div_ceil(8) * 8
    }

    /// Copies `src` into the data area at offset `off` (no wrap).
    ///
    /// # Safety
    /// `off + src.len() <= capacity`, and the range is free space owned by
    /// the write-lock holder.
    unsafe fn write_at(&self, off: u64, src: &[u8]) {
        debug_assert!(off + src.len() as u64 <= self.capacity);
        // SAFETY: caller's contract; `src` is a Rust slice in private memory,
        // so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off as usize), src.len()) }
    }

    fn read_u32(&self, off: u64) -> u32 {
        debug_assert!(off + 4 <= self.capacity && off % 4 == 0);
        // SAFETY: in bounds (callers keep `off` 8-aligned and < capacity,
        // a multiple of 8); a volatile read of bytes another process wrote.
        unsafe { self.data.add(off as usize).cast::<u32>().read_volatile() }
    }
}

/// The write side, locked. Dropping it unlocks.
#[derive(Debug)]
pub struct WriteGuard<'r> {
    ring: &'r Ring,
    /// True if the lock was taken over from a producer that died holding it.
    pub recovered: bool,
}

impl WriteGuard<'_> {
    /// Appends one frame whose payload is `parts` concatenated, or returns
    /// `Ok(false)` if it does not fit now. A payload larger than
    /// `max_frame` is an error.
    pub fn try_push(&mut self, parts: &[&[u8]]) -> Result<bool> {
        self.try_push_with(parts, || Ok(()))
    }

    /// Like `try_push`, but runs `publish` once the frame is in place and
    /// just before it becomes visible (still under the write lock), and
    /// only if it fits. If `publish` fails, the frame is not published and
    /// its error is returned. The queue flips the message's arena blocks
    /// to QUEUED there, so that they are never QUEUED outside a frame
    /// while their producer lives (see `channel::queue`).
    pub fn try_push_with(&mut self, parts: &[&[u8]], publish: impl FnOnce() -> Result<()>) -> Result<bool> {
        let ring = self.ring;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len > ring.max_frame() {
            return Err(CoreError::TooLarge { size: len, limit: ring.max_frame() });
        }
        let need = Ring::frame_len(len);
        let hdr = ring.hdr();
        let tail = hdr.write.pos.load(Ordering::Relaxed);
        let head = hdr.read.pos.load(Ordering::Acquire);
        let free = ring.capacity - (tail - head);
        let off = tail % ring.capacity;
        let contiguous = ring.capacity - off;
        let (skip, start) = if need > contiguous { (contiguous, 0) } else { (0, off) };
        if skip + need > free {
            return Ok(false);
        }
        // SAFETY: [tail, tail + skip + need) is free (checked against head)
        // and we hold the write lock; offsets stay below capacity.
        unsafe {
            if skip > 0 {
                ring.write_at(off, &[0u8; 4]);
                ring.write_at(off + 4, &KIND_WRAP.to_le_bytes());
            }
            ring.write_at(start, &(len as u32).to_le_bytes());
            ring.write_at(start + 4, &KIND_MSG.to_le_bytes());
            let mut at = start + FRAME_HEADER;
            for p in parts {
                ring.write_at(at, p);
                at += p.len() as u64;
            }
        }
        publish()?;
        // Count, then publish: the frame is complete before tail moves
        // (release), and a consumer cannot take it before it is counted.
        hdr.count.frames.fetch_add(1, Ordering::AcqRel);
        hdr.write.pos.store(tail + skip + need, Ordering::Release);
        Ok(true)
    }

    /// Test hook: writes `bytes` at the tail offset without publishing them,
    /// as a producer that dies in the middle of a frame leaves them. Only as
    /// many bytes as fit in the free space before the end of the data area
    /// are written.
    #[cfg(feature = "testing")]
    pub fn write_garbage_past_tail(&mut self, bytes: &[u8]) {
        let ring = self.ring;
        let hdr = ring.hdr();
        let tail = hdr.write.pos.load(Ordering::Relaxed);
        let head = hdr.read.pos.load(Ordering::Acquire);
        let free = ring.capacity - (tail - head);
        let off = tail % ring.capacity;
        let n = (bytes.len() as u64).min(free).min(ring.capacity - off);
        // SAFETY: [off, off + n) lies inside the data area (n is clamped to
        // the contiguous space before its end) and inside the free space
        // past `tail` (n is clamped to it), which the write-lock holder owns:
        // no consumer reads it while `tail` does not move.
        unsafe { ring.write_at(off, &bytes[..n as usize]) }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.ring.hdr().write.lock.unlock();
    }
}

/// The read side, locked. Dropping it unlocks.
#[derive(Debug)]
pub struct ReadGuard<'r> {
    ring: &'r Ring,
    /// True if the lock was taken over from a consumer that died holding it.
    pub recovered: bool,
}

impl ReadGuard<'_> {
    /// Removes the oldest frame and returns its payload, or `Ok(None)` if
    /// the ring is empty. A malformed frame is an error and is not consumed.
    pub fn try_pop(&mut self) -> Result<Option<Frame>> {
        self.try_pop_with(|p| p.to_vec())
    }

    /// Like `try_pop`, but hands the payload to `take` (while the read lock
    /// is held and before the space is freed).
    pub fn try_pop_with<T>(&mut self, take: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let ring = self.ring;
        let hdr = ring.hdr();
        let mut head = hdr.read.pos.load(Ordering::Relaxed);
        loop {
            let tail = hdr.write.pos.load(Ordering::Acquire);
            if head == tail {
                return Ok(None);
            }
            let avail = tail.wrapping_sub(head);
            let off = head % ring.capacity;
            if avail > ring.capacity || off % 8 != 0 || avail < FRAME_HEADER {
                return Err(CoreError::corrupt("ring", format!("head {head} tail {tail}")));
            }
            let len = u64::from(ring.read_u32(off));
            let kind = ring.read_u32(off + 4);
            match kind {
                KIND_WRAP => {
                    head += ring.capacity - off;
                    hdr.read.pos.store(head, Ordering::Release);
                }
                KIND_MSG => {
                    let need = Ring::frame_len(len);
                    if need > avail || off + need > ring.capacity {
                        return Err(CoreError::corrupt("ring", format!("frame of {len} bytes at {off}")));
                    }
                    let mut buf = vec![0u8; len as usize];
                    // SAFETY: [off+8, off+8+len) lies inside the data area and
                    // inside the committed region (checked); we copy it into
                    // private memory before the space is released.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            ring.data.add((off + FRAME_HEADER) as usize),
                            buf.as_mut_ptr(),
                            len as usize,
                        );
                    }
                    let out = take(&buf);
                    let _ = hdr
                        .count
                        .frames
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
                    hdr.read.pos.store(head + need, Ordering::Release);
                    return Ok(Some(out));
                }
                other => {
                    return Err(CoreError::corrupt("ring", format!("frame kind {other:#x} at {off}")));
                }
            }
        }
    }
}

impl ReadGuard<'_> {
    /// Calls `f` with the payload of every committed, unread frame, oldest
    /// first, without consuming any. Needs the write lock too (`w`, of the
    /// same ring): with both sides locked no frame is published or
    /// consumed meanwhile, so the walk sees exactly the frames in the
    /// ring. A malformed frame is an error; so is a `w` of another ring.
    pub fn for_each_unread(&self, w: &WriteGuard<'_>, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let ring = self.ring;
        if !std::ptr::eq(ring.header, w.ring.header) {
            return Err(CoreError::Invalid("for_each_unread: the write guard belongs to another ring".into()));
        }
        let hdr = ring.hdr();
        let tail = hdr.write.pos.load(Ordering::Acquire);
        let mut pos = hdr.read.pos.load(Ordering::Acquire);
        let mut buf = Vec::new();
        while pos != tail {
            let avail = tail.wrapping_sub(pos);
            let off = pos % ring.capacity;
            if avail > ring.capacity || off % 8 != 0 || avail < FRAME_HEADER {
                return Err(CoreError::corrupt("ring", format!("head {pos} tail {tail}")));
            }
            let len = u64::from(ring.read_u32(off));
            match ring.read_u32(off + 4) {
                KIND_WRAP => pos += ring.capacity - off,
                KIND_MSG => {
                    let need = Ring::frame_len(len);
                    if need > avail || off + need > ring.capacity {
                        return Err(CoreError::corrupt("ring", format!("frame of {len} bytes at {off}")));
                    }
                    buf.clear();
                    buf.resize(len as usize, 0);
                    // SAFETY: [off+8, off+8+len) lies inside the data area
                    // and inside the committed region (checked); with both
                    // locks held nobody frees or rewrites it meanwhile; it
                    // is copied into private memory.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            ring.data.add((off + FRAME_HEADER) as usize),
                            buf.as_mut_ptr(),
                            len as usize,
                        );
                    }
                    f(&buf)?;
                    pos += need;
                }
                other => return Err(CoreError::corrupt("ring", format!("frame kind {other:#x} at {off}"))),
            }
        }
        Ok(())
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.ring.hdr().read.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::shm::SharedMemory;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn ring(cap: usize) -> (SharedMemory, Ring) {
        let shm = SharedMemory::create("ring-test", ring_bytes(cap as u64)).unwrap();
        // SAFETY: a fresh, page-aligned mapping of the right size, owned here.
        let r = unsafe { Ring::init(shm.as_ptr(), shm.len()) }.unwrap();
        (shm, r)
    }

    #[test]
    fn frames_come_out_in_order_across_wraps() {
        let (_shm, r) = ring(256);
        let me = std::process::id();
        for i in 0..1000u32 {
            let msg = vec![i as u8; (i % 40) as usize];
            assert!(r.lock_write(me, None).unwrap().try_push(&[&msg]).unwrap());
            let got = r.lock_read(me, None).unwrap().try_pop().unwrap().unwrap();
            assert_eq!(got, msg);
        }
    }

    #[test]
    fn a_full_ring_refuses_and_an_empty_ring_gives_none() {
        let (_shm, r) = ring(256);
        let me = std::process::id();
        let mut pushed = 0;
        while r.lock_write(me, None).unwrap().try_push(&[&[1u8; 24]]).unwrap() {
            pushed += 1;
        }
        assert_eq!(pushed, 256 / 32);
        for _ in 0..pushed {
            assert!(r.lock_read(me, None).unwrap().try_pop().unwrap().is_some());
        }
        assert!(r.lock_read(me, None).unwrap().try_pop().unwrap().is_none());
    }

    #[test]
    fn a_push_whose_publish_step_fails_publishes_nothing() {
        let (_shm, r) = ring(256);
        let mut w = r.lock_write(1, None).unwrap();
        let e = w.try_push_with(&[b"lost"], || Err(CoreError::Invalid("no".into()))).unwrap_err();
        assert!(matches!(e, CoreError::Invalid(_)));
        let mut ran = false;
        assert!(w
            .try_push_with(&[b"kept"], || {
                ran = true;
                Ok(())
            })
            .unwrap());
        assert!(ran);
        drop(w);
        assert_eq!(r.frames(), 1);
        assert_eq!(r.lock_read(1, None).unwrap().try_pop().unwrap().as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn for_each_unread_needs_the_write_guard_of_its_own_ring() {
        let (_s1, a) = ring(256);
        let (_s2, b) = ring(256);
        let w = b.lock_write(1, None).unwrap();
        let r = a.lock_read(1, None).unwrap();
        assert!(r.for_each_unread(&w, |_| Ok(())).is_err());
    }

    #[test]
    fn an_oversized_payload_is_an_error() {
        let (_shm, r) = ring(256);
        let big = vec![0u8; 100];
        let e = r.lock_write(1, None).unwrap().try_push(&[&big]).unwrap_err();
        assert!(matches!(e, CoreError::TooLarge { .. }));
    }

    #[test]
    fn attach_rejects_a_block_that_is_not_a_ring() {
        let shm = SharedMemory::create("junk", 4096).unwrap();
        // SAFETY: valid mapping of 4096 bytes.
        assert!(unsafe { Ring::attach(shm.as_ptr(), shm.len()) }.is_err());
    }

    #[test]
    fn a_corrupted_frame_header_is_an_error_not_a_crash() {
        let (shm, r) = ring(256);
        assert!(r.lock_write(1, None).unwrap().try_push(&[b"hello"]).unwrap());
        // Overwrite the length with garbage, as a buggy writer might.
        // SAFETY: the first data word lies inside the mapping.
        unsafe { shm.as_ptr().add(std::mem::size_of::<RingHeader>()).cast::<u32>().write(0xFFFF_FF00) };
        assert!(r.lock_read(1, None).unwrap().try_pop().is_err());
    }

    #[test]
    fn threads_exchange_every_message_exactly_once() {
        let (_shm, r) = ring(4096);
        let producers = 3;
        let per = 3000u32;
        std::thread::scope(|s| {
            for p in 0..producers {
                s.spawn(move || {
                    for i in 0..per {
                        let msg = [p as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8];
                        loop {
                            if r.lock_write(1, None).unwrap().try_push(&[&msg]).unwrap() {
                                break;
                            }
                            std::thread::yield_now();
                        }
                    }
                });
            }
            let mut next = vec![0u32; producers];
            let mut got = 0;
            while got < producers * per as usize {
                if let Some(m) = r.lock_read(2, None).unwrap().try_pop().unwrap() {
                    let p = m[0] as usize;
                    let i = u32::from_be_bytes([0, m[1], m[2], m[3]]);
                    assert_eq!(i, next[p], "per-producer order is kept");
                    next[p] += 1;
                    got += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
    }

    proptest! {
        /// The ring behaves like a bounded FIFO of byte strings for any
        /// interleaving of pushes and pops.
        #[test]
        fn behaves_like_a_bounded_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..70), 1..400)) {
            let (_shm, r) = ring(512);
            let mut model: VecDeque<Vec<u8>> = VecDeque::new();
            let mut n = 0u8;
            for (push, len) in ops {
                if push {
                    n = n.wrapping_add(1);
                    let msg = vec![n; len];
                    if r.lock_write(1, None).unwrap().try_push(&[&msg]).unwrap() {
                        model.push_back(msg);
                    } else {
                        // Refused only when something is queued: an empty
                        // ring always takes a frame up to max_frame.
                        prop_assert!(!model.is_empty());
                    }
                } else {
                    let got = r.lock_read(1, None).unwrap().try_pop().unwrap();
                    prop_assert_eq!(got, model.pop_front());
                }
                // The read-only walk sees exactly the unread frames.
                let w = r.lock_write(1, None).unwrap();
                let mut seen = Vec::new();
                r.lock_read(1, None).unwrap().for_each_unread(&w, |p| {
                    seen.push(p.to_vec());
                    Ok(())
                }).unwrap();
                prop_assert_eq!(&seen, &model.iter().cloned().collect::<Vec<_>>());
            }
        }
    }
}
