//! A block allocator in shared memory for the large parts of messages
//! (out-of-band buffers such as numpy arrays, and big pickles).
//!
//! Why: a 1 MB array copied through the ring would be copied twice more
//! (into the ring, out of it). In the arena it is copied once, by the
//! producer; the consumer's array is a view on the block, and the block is
//! freed when that view is collected, by whichever process holds it.
//!
//! Algorithm: an implicit list of blocks (a 64-byte header, then data),
//! first-fit from the start under a robust lock, merging free neighbours on
//! the way. First-fit keeps reusing the lowest addresses, so the pages in
//! use stay warm: on this VM faulting fresh pages runs near 1.5 GB/s against
//! 7-19 GB/s for a copy into warm ones. Freeing is one atomic store and needs
//! no lock, so a view collected in any process frees its block at once.
//!
//! Giving memory back: when a block is freed, the whole pages of its data
//! that lie past a mark are removed from the memfd (`madvise(MADV_REMOVE)`,
//! a hole punched in the file for every process that maps it), before the
//! block is marked free, while its freer still owns it. The mark is
//! `WARM_MAX` (256 MiB into the block area) for a block of up to
//! `GIANT_BLOCK` (64 MiB) and `WARM_AFTER_GIANT` (64 MiB) for a larger
//! one. So an arena keeps at most 256 MiB of free memory warm, and once a
//! one-off giant message (a 512 MB array) is freed, at most 64 MiB of it
//! stays allocated; ordinary traffic, which first-fit keeps at the lowest
//! addresses, and a stream of blocks of up to 64 MiB (a DataLoader's
//! batches) are untouched as long as they have less than 256 MiB in
//! flight.
//!
//! A large block (`LARGE_BLOCK`, 32 MiB, and up) freed by the consumer
//! that held it also leaves that consumer's page tables
//! (`madvise(MADV_DONTNEED)` of its warm pages: on a shared mapping it
//! only unmaps them here; the memfd keeps them, warm for the producer's
//! next write). Without it a consumer that reads every message (a training
//! loop reading its batches) keeps every warm page it ever read resident:
//! its RSS grows to the whole warm area instead of the messages it holds.
//! A later read of those pages costs minor faults that map 16 pages each
//! (fault-around), not a zero-fill. Not when the consumer is the block's
//! writer (`BlockHeader::writer`: two threads of one process sharing a
//! queue): its next put writes those pages again, and a write fault maps
//! one page. Measured (2026-12-07, put + get of a 48 MiB array between two
//! threads, old and new build alternating, 3 runs): 50-73 ms and 12,274
//! minor faults per message before, 9.8-10.6 ms and none after.
//!
//! A consumer reads a received block's header (`mark_held`) from the
//! memfd (`pread`), not through its mapping: a read fault maps the 64 KiB
//! fault-around window around the header, a write fault (the holder swap
//! that follows) the one page. A process holding batches it has not read
//! yet (a DataLoader parent with four prefetched) kept 64 KiB per batch
//! resident. `madvise(MADV_RANDOM)` does not turn fault-around off on this
//! kernel (6.18: 16 pages mapped by one read either way). Only for large
//! blocks: a smaller one stays mapped here after its free anyway, and the
//! `pread` costs a system call (1.3 us). The view does not own that
//! descriptor: one closed or reused meanwhile makes `mark_held` fail with
//! EBADF, checked by the file's identity after the read (`peek`), never a
//! silent read of another file's bytes. Measured with `unmap_here`'s
//! window end (2026-12-07, `benches/ab_rss.py`, 3 rounds, torch imported):
//! the parent's arena mapping at the epoch's peak 49,440-49,484 KiB ->
//! 49,312-49,340 (torch's batch file 49,152), its RSS over the epoch
//! +53,944-53,996 KiB -> +53,816-53,848 (torch +53,732-53,792). Until 2026-12-07 the 64 MiB mark
//! applied from 32 MiB (`LARGE_BLOCK`) up: a stream of 48 MiB blocks (a
//! DataLoader's batches of 16 x 3 MiB, five in flight) then faulted all
//! but the first block afresh on every reuse, in the producer: measured
//! (2 workers, 320 samples of 3x512x512 float32, batch 16) 296-300 k page
//! faults in the workers per epoch before, 139-187 k after.
//!
//! Large blocks lie on whole fault-around windows. A read fault maps the
//! cached pages of the 64 KiB-aligned window around it (`WINDOW`), and
//! reading a block from its first byte to its last maps the windows of
//! both ends whole: the neighbours' pages that share them, 192 KiB more
//! than torch's batch file in a DataLoader parent reading a 48 MiB batch.
//! So a large block's data starts on a window boundary and its block ends
//! on one, in every process: every mapping of more than 64 KiB starts on
//! a 64 KiB boundary (`sys::shm::MAP_ALIGN`), and the header's `phase`
//! says which block-area offsets are boundaries. Its header lies in the
//! window before, read by a consumer from the file (`peek`) and written
//! (one page mapped, a write fault maps no window). Layout, offsets in
//! the block area, `B` a window boundary:
//!
//! ```text
//!   [ free or small blocks ][hdr 64][ data: whole windows ...... ][ next block...
//!   ^ off                   ^ B - 64 ^ B                          ^ B + k * 64 KiB
//! ```
//!
//! The space before `B - 64` (from the free block's start) stays a free
//! block (64 bytes at least, merged again like any other). Cost: less
//! than 64 KiB of rounding a block, and up to 64 KiB before it that small
//! blocks can use; small and mid-size blocks are placed as before
//! (`Need`). Only from `LARGE_BLOCK` up: a consumer keeps a smaller
//! block's pages mapped after its free (no `unmap_here`), so the windows
//! of its ends are pages it keeps anyway. A large block finds its windows
//! in the first free block with room for them; when none has, it takes the
//! first with room for its bytes, as before: an arena refuses no message
//! it took before. Measured (2026-12-07, `benches/ab_rss.py`, old and new
//! build alternating, 2 runs of 3 rounds, torch 2.15 imported): the
//! parent's arena mapping at the epoch's peak 49,340-49,356 KiB ->
//! 49,232-49,236 (torch's batch file 49,152; what stays: the batch read
//! and its header page, one header page per prefetched batch, the four
//! queues' header and ring pages: `--pages`), its RSS over the epoch
//! +53,836-53,980 KiB -> +53,640-53,684 (torch +53,716-53,832).
//!
//! Measured on this VM (2 cores, put + get of numpy arrays through a Queue,
//! best of 3, before -> after): 8 MiB arrays, 4 in flight 9.9 -> 12.0 GB/s,
//! 16 in flight (128 MiB) 10.2 -> 9.4 GB/s (noise; a single 64 MiB mark for
//! every block gave 1.9 GB/s there: the pages past it faulted again on every
//! reuse); 1 MiB arrays, 32 in flight 9.1 -> 9.8 GB/s. A 512 MiB array kept
//! 512 MiB allocated after it was dropped before, 64 MiB after; the
//! `madvise` of the other 448 MiB takes 85-95 ms. The cost: a workload with
//! more than 256 MiB in flight (8 MiB x 48: 2.4 GB/s), or a stream of
//! messages of 32 MiB and more past the first 64 MiB, faults those pages
//! again on each reuse (about 1.5 GB/s instead of a warm copy).
//!
//! Blocks written in place: a pool worker's NumPy allocator
//! (`corral-python/src/numpy_alloc.rs`) makes arrays of 1 MiB and up
//! blocks of the result arena (`SharedQueue::alloc_block`), kept WRITING
//! while the array lives, and a returned array's block is sent as it is
//! (`check_writing`, then QUEUED like a copied one). Measured on this VM
//! (2026-12-06, 16 MB `arr * 2` round trip, `submit(...).result()`, same
//! session, old and new build alternating, 3 runs): 1.0-2.3 GB/s before,
//! 2.6-3.5 GB/s after (2 x 16 MB / median seconds per call).
//!
//! Crashes: a block records its state and holder. A block being written by
//! a producer that died, held by a consumer that died, or freed by a
//! process that died inside `free` (FREEING), is reclaimed when an
//! allocation finds no room (`reclaim_dead`), which also recounts `in_use`
//! from its walk: a process killed between a block's state change and its
//! `in_use` update left the counter high by that block for good (it sizes
//! the pool's pressure checks). A free takes no lock, so the recount must
//! not race one: `free` passes through FREEING, and the recount skips when
//! it sees a block FREEING or a free reach its update (`set_in_use`). A block in flight (QUEUED)
//! belongs to a message, not to a process, and `reclaim_dead` never takes
//! it, so a message cannot lose its buffers. Only the channel knows which
//! messages exist: it frees QUEUED blocks that no message references with
//! `reclaim_unreferenced`, under its own locks (see `channel::queue`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{CoreError, Result};
use crate::sys::liveness::{my_pid, pid_alive};
use crate::sys::robust_lock::LockWord;

/// First word of an arena header ("CRLARENA").
pub const ARENA_MAGIC: u64 = u64::from_le_bytes(*b"CRLARENA");
/// Layout version (2: `in_use`; 3: the block's `writer`, the FREEING
/// state and the header's `frees`; 4: the header's `phase`, and large
/// blocks whose data lies on whole fault-around windows).
pub const ARENA_VERSION: u32 = 4;
/// Block granularity and data alignment (numpy likes 64).
pub const BLOCK_ALIGN: u64 = 64;
const BLOCK_HEADER: u64 = 64;
const BLOCK_MAGIC: u32 = 0xB10C_CA11;
/// Free pages of an ordinary block below this offset of the block area stay
/// allocated (warm) for reuse; past it they go back to the system (see the
/// module docs).
pub const WARM_MAX: u64 = 256 << 20;
/// A block of at least this size (header included) is a large one: its
/// data lies on whole fault-around windows (`WINDOW`) when there is room,
/// a consumer reads its header from the file (`peek`) and unmaps it when
/// it frees it (see the module docs).
pub const LARGE_BLOCK: u64 = 32 << 20;
/// The kernel's read fault-around window (`fault_around_bytes`, 64 KiB by
/// default; `sys::shm::MAP_ALIGN`, on whose multiples a mapping starts):
/// a read fault on a file mapping maps the cached pages of the aligned
/// window around it.
pub const WINDOW: u64 = 64 << 10;
const _: () = assert!(WINDOW as usize == crate::sys::shm::MAP_ALIGN && WINDOW % BLOCK_ALIGN == 0);
/// A block of more than this size (header included) is a giant one...
pub const GIANT_BLOCK: u64 = 64 << 20;
/// ...whose free pages stay warm only below this offset.
pub const WARM_AFTER_GIANT: u64 = 64 << 20;

/// Walks `recount` makes after a `reclaim_dead` whose walk raced frees.
const RECOUNT_TRIES: usize = 3;

/// The warm mark (offset into the block area) of a block of `size` bytes.
const fn warm_mark(size: u64) -> u64 {
    if size > GIANT_BLOCK {
        WARM_AFTER_GIANT
    } else {
        WARM_MAX
    }
}

/// Block is free.
pub const FREE: u32 = 0;
/// A producer (the holder) is filling the block.
pub const WRITING: u32 = 1;
/// The block belongs to a message in a ring; nobody holds it.
pub const QUEUED: u32 = 2;
/// A consumer (the holder) has the block, usually as an array's memory.
pub const HELD: u32 = 3;
/// The holder is freeing the block: it is no one's any more but `in_use`
/// may still count it. A lock-free `free` passes through it (FREEING,
/// `in_use` update, FREE) so that `recount` can tell a free in progress
/// (skip) from a finished one; a freer killed inside it leaves the block
/// to `reclaim_dead`.
pub const FREEING: u32 = 4;

/// The arena header, at the start of its shared block.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ArenaHeader {
    /// `ARENA_MAGIC`.
    pub magic: u64,
    /// `ARENA_VERSION`.
    pub version: u32,
    /// Frees done outside the lock that reached their `in_use` update
    /// (wrapping): bumped just before it, so a recount (`recount`) that
    /// sees it unchanged over its walk knows no such update raced it.
    pub frees: AtomicU32,
    /// Size of the block area that follows the header, a multiple of 64.
    pub size: u64,
    /// Serializes allocation (splitting, merging, reclaiming).
    pub lock: LockWord,
    /// Bytes in blocks that are not FREE (headers included): added when a
    /// block is allocated, subtracted (never below 0) when it is freed. A
    /// process killed between a block's state change and this update
    /// leaves it high by that block until the next `reclaim_dead`, which
    /// recounts it from the blocks (`recount`). `used` reads it.
    pub in_use: AtomicU64,
    /// The block area's address modulo `WINDOW` in the creator's mapping,
    /// a multiple of 64 below `WINDOW`, written once: block-area offset
    /// `o` lies on a window boundary of a mapping placed like it (every
    /// mapping of an arena is: `sys::shm::MAP_ALIGN`) when
    /// `(o + phase) % WINDOW == 0`. Every process places large blocks by
    /// it, so they agree whichever allocates.
    pub phase: u32,
}

const _: () = assert!(std::mem::size_of::<ArenaHeader>() == 64);

/// The header of one block; the block's data follows it.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct BlockHeader {
    /// `BLOCK_MAGIC`, to catch a bad offset on free.
    pub magic: AtomicU32,
    /// FREE, WRITING, QUEUED or HELD.
    pub state: AtomicU32,
    /// Pid of the process holding the block: its producer (WRITING, and
    /// QUEUED, where nobody holds it), its consumer (HELD), the process
    /// freeing it (FREEING); 0 in a block never allocated.
    pub holder: AtomicU32,
    /// Pid of the process that allocated the block (its producer), set
    /// with the allocation: a large block freed by its own writer stays in
    /// its page tables (see the module docs).
    pub writer: AtomicU32,
    /// Size of the block including this header, a multiple of 64; changed
    /// only under the arena lock.
    pub size: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<BlockHeader>() == BLOCK_HEADER as usize);
// `Arena::peek` reads these two words from the file by their offsets.
const _: () = assert!(std::mem::offset_of!(BlockHeader, magic) == 0);
const _: () = assert!(std::mem::offset_of!(BlockHeader, state) == 4);

/// Bytes of shared memory an arena with `size` bytes of blocks needs.
pub const fn arena_bytes(size: u64) -> usize {
    std::mem::size_of::<ArenaHeader>() + size as usize
}

/// A view of an arena in shared memory (not owning it).
#[derive(Debug, Clone, Copy)]
pub struct Arena {
    header: *const ArenaHeader,
    blocks: *mut u8,
    size: u64,
    /// `ArenaHeader::phase`, checked at attach.
    phase: u64,
    /// The file the arena lies in, when known (`backed_by`): `mark_held`
    /// reads a large block's header from it instead of through the
    /// mapping (see `peek`).
    file: Option<ArenaFile>,
}

/// The descriptor a view reads block headers from (`Arena::peek`), and
/// what it named when the view was made: a number someone else may close
/// (another thread's `os.close`, a stray close of a reused number), so
/// every read is checked to have come from that file.
#[derive(Debug, Clone, Copy)]
struct ArenaFile {
    /// The descriptor number; not owned.
    fd: RawFd,
    /// File offset of the block area.
    base: u64,
    /// `st_dev` and `st_ino` of the file when the view was made.
    id: (u64, u64),
}

// SAFETY: shared state is reached through atomics or under the arena lock;
// the pointers stay valid while the mapping's owner keeps it.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// Writes a fresh arena into `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned, valid for `len` bytes and unused.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<Arena> {
        let hdr = std::mem::size_of::<ArenaHeader>();
        if len < hdr + 2 * BLOCK_HEADER as usize {
            return Err(CoreError::Invalid(format!("arena needs more than {len} bytes")));
        }
        let size = ((len - hdr) as u64) & !(BLOCK_ALIGN - 1);
        let header = base.cast::<ArenaHeader>();
        // SAFETY: exclusive aligned memory of `len` bytes (caller), large
        // enough for the header and one block (checked).
        unsafe {
            header.write(ArenaHeader {
                magic: ARENA_MAGIC,
                version: ARENA_VERSION,
                frees: AtomicU32::new(0),
                size,
                lock: LockWord::new(),
                in_use: AtomicU64::new(0),
                phase: (base.add(hdr) as u64 % WINDOW) as u32,
            });
            let phase = (*header).phase.into();
            let arena = Arena { header, blocks: base.add(hdr), size, phase, file: None };
            arena.block_ptr(0).write(free_header(size));
            Ok(arena)
        }
    }

    /// Attaches to an arena another process initialized.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned and valid for `len` bytes for the
    /// lifetime of the view.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Arena> {
        let hdr = std::mem::size_of::<ArenaHeader>();
        if len < hdr {
            return Err(CoreError::corrupt("arena", "block smaller than its header"));
        }
        let header = base.cast::<ArenaHeader>();
        // SAFETY: in bounds; fields written once at init.
        let (magic, version, size, phase) =
            unsafe { ((*header).magic, (*header).version, (*header).size, (*header).phase) };
        if magic != ARENA_MAGIC || version != ARENA_VERSION {
            return Err(CoreError::corrupt("arena", format!("magic {magic:#x} version {version}")));
        }
        if size % BLOCK_ALIGN != 0 || size > (len - hdr) as u64 {
            return Err(CoreError::corrupt("arena", format!("size {size} in {len} bytes")));
        }
        let phase = u64::from(phase);
        if phase % BLOCK_ALIGN != 0 || phase >= WINDOW {
            return Err(CoreError::corrupt("arena", format!("phase {phase}")));
        }
        // SAFETY: hdr <= len.
        Ok(Arena { header, blocks: unsafe { base.add(hdr) }, size, phase, file: None })
    }

    /// This view, reading the headers of large blocks it receives from
    /// `fd`, the file whose bytes from `offset` on are the arena (its
    /// header first) as mapped at the view's base (see `peek`). Without a
    /// file status for `fd` (an fd that is not open) the view reads them
    /// through the mapping.
    ///
    /// `fd` must be that file now (a wrong one gives wrong answers, no
    /// unsafety: its bytes are only compared). The view does not own it:
    /// if it is closed later, or its number reused, `mark_held` of a large
    /// block fails (`peek`), nothing else.
    pub fn backed_by(self, fd: RawFd, offset: u64) -> Arena {
        let hdr = std::mem::size_of::<ArenaHeader>() as u64;
        Arena { file: file_id(fd).map(|id| ArenaFile { fd, base: offset + hdr, id }), ..self }
    }

    /// Bytes in the block area.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The largest single allocation possible.
    pub fn max_alloc(&self) -> u64 {
        self.size - BLOCK_HEADER
    }

    fn hdr(&self) -> &ArenaHeader {
        // SAFETY: valid for the view's lifetime (constructor contract).
        unsafe { &*self.header }
    }

    /// # Safety
    /// `off` must be a block boundary below `size`.
    unsafe fn block_ptr(&self, off: u64) -> *mut BlockHeader {
        debug_assert!(off % BLOCK_ALIGN == 0 && off < self.size);
        // SAFETY: caller's contract keeps us inside the block area.
        unsafe { self.blocks.add(off as usize).cast() }
    }

    fn block(&self, off: u64) -> Result<&BlockHeader> {
        let b = self.block_at(off)?;
        if b.magic.load(Ordering::Relaxed) != BLOCK_MAGIC {
            return Err(CoreError::corrupt("arena", format!("no block at offset {off}")));
        }
        Ok(b)
    }

    /// The header at block offset `off`, checked to lie in the arena and
    /// be aligned, not read.
    fn block_at(&self, off: u64) -> Result<&BlockHeader> {
        if off % BLOCK_ALIGN != 0 || off.checked_add(BLOCK_HEADER).is_none_or(|end| end > self.size) {
            return Err(CoreError::corrupt("arena", format!("block offset {off}")));
        }
        // SAFETY: in bounds and aligned (checked); headers are only touched
        // through atomics.
        Ok(unsafe { &*self.block_ptr(off) })
    }

    /// The size of the block `b` at offset `off`, read from shared memory
    /// and checked before it is trusted: at least a header, a multiple of
    /// `BLOCK_ALIGN`, inside the arena. A corrupt one (a peer's overrun, a
    /// stray write) is an error, never a walk or a hole punched past the
    /// block.
    fn size_at(&self, off: u64, b: &BlockHeader) -> Result<u64> {
        let size = b.size.load(Ordering::Relaxed);
        if size < BLOCK_HEADER || size % BLOCK_ALIGN != 0 || off.checked_add(size).is_none_or(|end| end > self.size) {
            return Err(CoreError::corrupt("arena", format!("block at {off} has size {size}")));
        }
        Ok(size)
    }

    /// The magic and state of the header `b` at block offset `off`. Read
    /// from the file when the view has one (`backed_by`; a system call,
    /// 1.3 us here, and an `fstat`), so that a consumer's first access to
    /// a large block it received is `mark_held`'s write, which maps that
    /// one page: a read through the mapping maps the kernel's fault-around
    /// window (64 KiB) around it, and a process that receives large blocks
    /// it does not read at once (a DataLoader parent with batches
    /// prefetched) kept those windows resident.
    ///
    /// The view does not own the descriptor: closed by someone else (the
    /// read fails), or closed and its number given to another file (the
    /// read succeeds, from the wrong file), the bytes are refused with an
    /// OS error (EBADF): the file's identity is checked after the read, so
    /// a number reused before or during the read is caught. Only a number
    /// closed and given back to the same file in between passes, and that
    /// read came from the right file.
    fn peek(&self, b: &BlockHeader, off: u64) -> Result<(u32, u32)> {
        let Some(f) = self.file else {
            return Ok((b.magic.load(Ordering::Relaxed), b.state.load(Ordering::Acquire)));
        };
        let mut raw = [0u8; 8];
        let at = libc::off_t::try_from(f.base + off).map_err(|_| CoreError::corrupt("arena", "offset"))?;
        // SAFETY: `raw` is 8 writable bytes. The descriptor is a plain
        // number here (no `BorrowedFd`: it may have been closed): closed,
        // the call fails with EBADF; reused, it reads another file, which
        // the check below refuses.
        let n = unsafe { libc::pread(f.fd, raw.as_mut_ptr().cast(), raw.len(), at) };
        let read = if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n) };
        if file_id(f.fd) != Some(f.id) {
            return Err(CoreError::os(
                "reading a block header: the queue's descriptor was closed, or its number reused, in this process",
                std::io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        match read {
            Ok(8) => {
                let word = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
                Ok((word(0), word(4)))
            }
            Ok(_) => Err(CoreError::corrupt("arena", format!("block header at {off} past the end of the file"))),
            Err(e) => Err(CoreError::os("pread(arena block header)", e)),
        }
    }

    /// Pointer to the data at `offset` (as returned by `alloc`), checked to
    /// lie in the arena for `len` bytes.
    pub fn data_ptr(&self, offset: u64, len: u64) -> Result<*mut u8> {
        let end = offset.checked_add(len).ok_or_else(|| CoreError::corrupt("arena", "overflow"))?;
        if end > self.size {
            return Err(CoreError::corrupt("arena", format!("range {offset}..{end}")));
        }
        // SAFETY: offset <= size, inside the block area.
        Ok(unsafe { self.blocks.add(offset as usize) })
    }

    /// Allocates `len` bytes for process `me`, in state WRITING. Returns the
    /// data offset, or `Ok(None)` when there is no room now. Waits for the
    /// lock at most until `deadline`.
    pub fn alloc(&self, len: u64, me: u32, deadline: Option<Instant>) -> Result<Option<u64>> {
        if len > self.max_alloc() {
            return Err(CoreError::TooLarge { size: len, limit: self.max_alloc() });
        }
        let need = Need {
            plain: BLOCK_HEADER + len.max(1).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN,
            windows: is_large(len).then(|| BLOCK_HEADER + len.div_ceil(WINDOW) * WINDOW),
        };
        let lock = &self.hdr().lock;
        if lock.lock(me, deadline).is_none() {
            return Ok(None);
        }
        let r = self.alloc_locked(need, me).and_then(|found| match found {
            Some(off) => Ok(Some(off)),
            None if self.reclaim_dead()? > 0 => self.alloc_locked(need, me),
            None => Ok(None),
        });
        lock.unlock();
        r
    }

    /// First fit of `need` under the arena lock: the data offset of the
    /// block taken, or `None`. A large request takes the first free block
    /// with room for its windows (`Need::windows`) from the first window
    /// boundary in it on, the part before that boundary's header left a
    /// free block of its own (64 bytes at least, merged again like any
    /// other); only when no free block has that room does it take the
    /// first one with room for its bytes (`Need::plain`): an arena that
    /// held a message before holds it still, unaligned.
    fn alloc_locked(&self, need: Need, me: u32) -> Result<Option<u64>> {
        let mut off = 0;
        let mut first_plain = None;
        while off < self.size {
            let b = self.block(off)?;
            let mut size = self.size_at(off, b)?;
            if b.state.load(Ordering::Acquire) == FREE {
                // Merge the free blocks that follow.
                while off + size < self.size {
                    let next = self.block(off + size)?;
                    if next.state.load(Ordering::Acquire) != FREE {
                        break;
                    }
                    let nsize = self.size_at(off + size, next)?;
                    // Grow first, then retire the absorbed header: a
                    // process killed in between leaves a walkable arena.
                    size += nsize;
                    b.size.store(size, Ordering::Relaxed);
                    next.magic.store(0, Ordering::Relaxed);
                }
                match need.windows {
                    None if size >= need.plain => return Ok(Some(self.take(off, b, size, need.plain, me))),
                    Some(windows) => {
                        let at = self.window_block(off);
                        if at.checked_add(windows).is_some_and(|end| end <= off + size) {
                            let (b, size) = self.split_before(off, b, size, at)?;
                            return Ok(Some(self.take(at, b, size, windows, me)));
                        }
                        if first_plain.is_none() && size >= need.plain {
                            first_plain = Some(off);
                        }
                    }
                    None => {}
                }
            }
            off += size;
        }
        match first_plain {
            // Still FREE and of that (merged) size: only allocations,
            // under this lock, change either.
            Some(off) => {
                let b = self.block(off)?;
                let size = self.size_at(off, b)?;
                Ok(Some(self.take(off, b, size, need.plain, me)))
            }
            None => Ok(None),
        }
    }

    /// The offset of the first block at or after `off` whose data starts
    /// on a window boundary (`ArenaHeader::phase`).
    fn window_block(&self, off: u64) -> u64 {
        (off + BLOCK_HEADER + self.phase).next_multiple_of(WINDOW) - BLOCK_HEADER - self.phase
    }

    /// Splits the free block `b` of `size` bytes at `off` at `at` (a block
    /// boundary inside it, or `off` itself): `[off, at)` stays a free
    /// block, and the free block at `at` with the rest is returned. Under
    /// the arena lock.
    fn split_before<'a>(&'a self, off: u64, b: &'a BlockHeader, size: u64, at: u64) -> Result<(&'a BlockHeader, u64)> {
        if at == off {
            return Ok((b, size));
        }
        debug_assert!(at > off && at < off + size && (at - off) % BLOCK_ALIGN == 0);
        // SAFETY: off < at < off + size <= self.size, on a 64-byte
        // boundary, inside this free block we own under the lock.
        unsafe { self.block_ptr(at).write(free_header(off + size - at)) };
        // The new header first, then the shrink: a process killed in
        // between leaves the one free block it found.
        b.size.store(at - off, Ordering::Relaxed);
        Ok((self.block(at)?, off + size - at))
    }

    /// Takes `need` bytes from the start of the free block `b` of `size`
    /// bytes at `off` for `me`, splitting off the rest when it can hold a
    /// block (else the block keeps it); returns its data offset. Under
    /// the arena lock.
    fn take(&self, off: u64, b: &BlockHeader, size: u64, need: u64, me: u32) -> u64 {
        debug_assert!(size >= need);
        if size - need >= 2 * BLOCK_HEADER {
            // SAFETY: off + need < off + size <= self.size, on a 64-byte
            // boundary, inside this free block we own under the lock.
            unsafe { self.block_ptr(off + need).write(free_header(size - need)) };
            b.size.store(need, Ordering::Relaxed);
        }
        b.holder.store(me, Ordering::Relaxed);
        b.writer.store(me, Ordering::Relaxed);
        b.state.store(WRITING, Ordering::Release);
        self.hdr().in_use.fetch_add(b.size.load(Ordering::Relaxed), Ordering::AcqRel);
        off + BLOCK_HEADER
    }

    /// Calls `f(offset, header, size)` for every block, in address order,
    /// checking each block's size as it goes.
    fn for_each_block(&self, mut f: impl FnMut(u64, &BlockHeader, u64)) -> Result<()> {
        let mut off = 0;
        while off < self.size {
            let b = self.block(off)?;
            let size = self.size_at(off, b)?;
            f(off, b, size);
            off += size;
        }
        Ok(())
    }

    /// `reclaim_dead` under the arena lock (taken until `deadline`: `Ok(0)`
    /// if it passed first); call it holding no arena lock.
    pub fn reclaim_dead_locked(&self, me: u32, deadline: Option<Instant>) -> Result<usize> {
        let lock = &self.hdr().lock;
        if lock.lock(me, deadline).is_none() {
            return Ok(0);
        }
        let r = self.reclaim_dead();
        lock.unlock();
        r
    }

    /// Checks that the block at `data_offset` is being written by `me`
    /// (allocated by `me` and not sent yet) and has room for `len` bytes of
    /// data: the conditions for sending it as it is.
    pub fn check_writing(&self, data_offset: u64, len: u64, me: u32) -> Result<()> {
        let b = self.header_of(data_offset)?;
        let (state, holder) = (b.state.load(Ordering::Acquire), b.holder.load(Ordering::Acquire));
        let room = b.size.load(Ordering::Relaxed) - BLOCK_HEADER;
        if state != WRITING || holder != me || len > room {
            return Err(CoreError::Invalid(format!(
                "block {data_offset} (state {state}, holder {holder}, {room} bytes) is not one this process \
                 is writing with room for {len} bytes"
            )));
        }
        Ok(())
    }

    /// Frees blocks whose holder died while writing, holding or freeing
    /// them, then sets `in_use` to what the same walk counted (`recount`).
    /// Under the arena lock.
    fn reclaim_dead(&self) -> Result<usize> {
        let frees = self.hdr().frees.load(Ordering::Acquire);
        let (mut freed, mut counted, mut freeing) = (0, 0, false);
        self.for_each_block(|_, b, size| {
            let state = b.state.load(Ordering::Acquire);
            if state == FREE {
                return;
            }
            let holder = b.holder.load(Ordering::Acquire);
            if matches!(state, WRITING | HELD | FREEING)
                && holder != 0
                && !pid_alive(holder)
                && b.state.compare_exchange(state, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                // Under the arena lock: no allocation can take the block
                // before its pages are gone.
                self.release_pages(std::ptr::from_ref(b) as usize, size);
                if state != FREEING {
                    // A dead freer may or may not have: the recount says.
                    self.freed(size);
                }
                freed += 1;
            } else if state == FREEING {
                freeing = true;
            } else {
                counted += size;
            }
        })?;
        if !self.set_in_use(frees, counted, freeing) {
            self.recount()?;
        }
        Ok(freed)
    }

    /// Sets `in_use` to `counted`, the bytes of the blocks that a walk
    /// under the arena lock found neither FREE nor FREEING, if no free
    /// outside the lock can have raced the walk: none was FREEING during
    /// it (`freeing` false) and none reached its `in_use` update since
    /// the walk began (`frees` unchanged, then the counter unchanged
    /// until the swap). A free that passes FREEING after the walk counted
    /// its block subtracts it after the swap. Allocations, merges and
    /// reclaims take the lock. So a process killed between a block's state
    /// change and its `in_use` update (in `free`, or in a reclaim holding
    /// the lock) leaves the counter off only until the next `reclaim_dead`.
    fn set_in_use(&self, frees: u32, counted: u64, freeing: bool) -> bool {
        let h = self.hdr();
        let before = h.in_use.load(Ordering::Acquire);
        !freeing
            && h.frees.load(Ordering::Acquire) == frees
            && h.in_use.compare_exchange(before, counted, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// `set_in_use` after walks of their own, for when the reclaiming walk
    /// raced frees: a few tries (each race is a free of a few
    /// instructions), then the counter is left as it is until the next
    /// `reclaim_dead`. Under the arena lock.
    fn recount(&self) -> Result<()> {
        for _ in 0..RECOUNT_TRIES {
            let frees = self.hdr().frees.load(Ordering::Acquire);
            let (mut counted, mut freeing) = (0, false);
            self.for_each_block(|_, b, size| match b.state.load(Ordering::Acquire) {
                FREE => {}
                FREEING => freeing = true,
                _ => counted += size,
            })?;
            if self.set_in_use(frees, counted, freeing) {
                break;
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Frees every QUEUED block whose data offset `is_referenced` denies;
    /// returns how many. Takes the arena lock (until `deadline`: `Ok(0)`
    /// if it passed first), so call it holding no arena lock.
    ///
    /// Correct only when no live process can be between flipping a block
    /// to QUEUED and publishing the message that references it, nor
    /// between consuming such a message and marking its blocks HELD: the
    /// queue guarantees both by holding both of its ring's locks, and
    /// passes the offsets referenced by the unread messages. A QUEUED
    /// block outside them then belongs to no message and to no live
    /// process.
    pub fn reclaim_unreferenced(
        &self,
        me: u32,
        deadline: Option<Instant>,
        is_referenced: impl Fn(u64) -> bool,
    ) -> Result<usize> {
        let lock = &self.hdr().lock;
        if lock.lock(me, deadline).is_none() {
            return Ok(0);
        }
        let mut freed = 0;
        let r = self.for_each_block(|off, b, size| {
            if b.state.load(Ordering::Acquire) == QUEUED
                && !is_referenced(off + BLOCK_HEADER)
                && b.state.compare_exchange(QUEUED, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                // Under the arena lock, as in `reclaim_dead`.
                self.release_pages(std::ptr::from_ref(b) as usize, size);
                self.freed(size);
                freed += 1;
            }
        });
        lock.unlock();
        r.map(|()| freed)
    }

    /// Gives back to the system the whole pages of the block at address
    /// `block_addr` (its header) and `size` bytes that lie past the warm
    /// mark (`warm_mark`). The caller owns the block (not FREE) or holds the
    /// lock with the block FREE: nobody else reads or writes its data
    /// meanwhile.
    fn release_pages(&self, block_addr: usize, size: u64) {
        let mark = self.blocks as usize + warm_mark(size) as usize;
        let from = (block_addr + BLOCK_HEADER as usize).max(mark);
        // Callers check `size` against the arena; the end is clamped to the
        // block area anyway, so that no size can reach past it.
        let to = (block_addr.saturating_add(size as usize)).min(self.blocks as usize + self.size as usize);
        // A failure (a kernel or file system without hole punching) only
        // keeps the pages: the memory is not given back, nothing else
        // changes.
        // SAFETY: [from, to) lies inside the data of a block that nobody
        // else uses now (caller; its size checked against the arena, and
        // `to` clamped to the block area), inside our shared mapping;
        // MADV_REMOVE only replaces its contents with zero pages, it
        // unmaps nothing.
        unsafe { advise(from, to, libc::MADV_REMOVE) };
    }

    /// Drops the warm pages of the large block at `block_addr` from this
    /// process's page tables (its consumer freed it; see the module docs),
    /// from the start of the fault-around window of its header to the end
    /// of the window of its last byte (the block's end for one placed on
    /// windows; for one placed as a small block, where a read of its last
    /// bytes mapped the next block's head: 24 KiB left resident for each
    /// batch freed, measured). Any time after the free: on a shared mapping
    /// MADV_DONTNEED only unmaps here, the bytes stay in the memfd for
    /// every process (and for a later access here, by a minor fault: the
    /// pages of a neighbour this process still reads, at worst).
    fn unmap_here(&self, block_addr: usize, size: u64) {
        let (start, end) = (self.blocks as usize, self.blocks as usize + self.size as usize);
        let mark = start + warm_mark(size) as usize;
        let from = (block_addr / FAULT_AROUND * FAULT_AROUND).max(start);
        let to = (block_addr + size as usize).min(mark).next_multiple_of(FAULT_AROUND).min(end);
        // SAFETY: [from, to) lies inside our mapping of the block area
        // (both clamped to it); MADV_DONTNEED on a shared mapping changes
        // no byte.
        unsafe { advise(from, to, libc::MADV_DONTNEED) };
    }

    fn header_of(&self, data_offset: u64) -> Result<&BlockHeader> {
        self.block(block_offset(data_offset)?)
    }

    /// WRITING -> QUEUED: the block now belongs to a message in a ring.
    pub fn mark_queued(&self, data_offset: u64) -> Result<()> {
        // The holder is left as it was: clearing it first would let a
        // concurrent `reclaim_dead` see "WRITING by nobody" and free the
        // block under our feet. `reclaim_dead` never takes a QUEUED block;
        // only `reclaim_unreferenced` does, under the channel's locks.
        self.header_of(data_offset)?.state.store(QUEUED, Ordering::Release);
        Ok(())
    }

    /// QUEUED -> HELD by `me`: a consumer took the message, which says the
    /// block holds `len` bytes. Fails if the block was not queued (a
    /// corrupt or replayed descriptor).
    pub fn mark_held(&self, data_offset: u64, len: u64, me: u32) -> Result<()> {
        let off = block_offset(data_offset)?;
        let b = self.block_at(off)?;
        let not_queued = |s: u32| CoreError::corrupt("arena", format!("block {data_offset} in state {s}, not queued"));
        // A descriptor naming a block that is not queued (corrupt, or
        // replayed) must not touch its holder: the block's writer or holder
        // would then be judged alive or dead by the wrong pid. A large
        // block's header is checked without a read through the mapping
        // (`peek`: the swap below is then this process's first access to
        // it); a smaller one's pages stay mapped here after its free
        // anyway, and a read costs no system call. What fails the check is
        // read again through the mapping, which has the last word.
        let (magic, state) = if is_large(len) {
            self.peek(b, off)?
        } else {
            (b.magic.load(Ordering::Relaxed), b.state.load(Ordering::Acquire))
        };
        if (magic, state) != (BLOCK_MAGIC, QUEUED) {
            let state = self.block(off)?.state.load(Ordering::Acquire);
            if state != QUEUED {
                return Err(not_queued(state));
            }
        }
        // The holder goes first, so a block seen HELD names its holder.
        let prev = b.holder.swap(me, Ordering::AcqRel);
        b.state.compare_exchange(QUEUED, HELD, Ordering::AcqRel, Ordering::Relaxed).map(|_| ()).map_err(|s| {
            // It left QUEUED meanwhile (only corrupt input gets here): give
            // the holder back unless someone else set it since.
            let _ = b.holder.compare_exchange(me, prev, Ordering::AcqRel, Ordering::Relaxed);
            not_queued(s)
        })
    }

    /// Frees a block (any state but FREE or FREEING), without the lock:
    /// FREEING (held by this process), `in_use` less its size, FREE.
    pub fn free(&self, data_offset: u64) -> Result<()> {
        let off = block_offset(data_offset)?;
        let b = self.block(off)?;
        let double_free = || CoreError::corrupt("arena", format!("double free of {data_offset}"));
        let state = b.state.load(Ordering::Acquire);
        if state == FREE || state == FREEING {
            return Err(double_free());
        }
        let me = my_pid();
        // While the block is ours: its size and writer do not change until
        // it is FREE, when it may be allocated and written at once.
        // Checked before it sizes a hole punched in the memfd
        // (`release_pages`) or the `in_use` update: a corrupt size punched
        // zeros into the blocks after it, another queue's messages included.
        let size = self.size_at(off, b)?;
        let writer = b.writer.load(Ordering::Relaxed);
        // The freer is named before the block says FREEING: `reclaim_dead`
        // judges a FREEING block by its holder.
        let prev = b.holder.swap(me, Ordering::AcqRel);
        if b.state.compare_exchange(state, FREEING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            // Freed by someone else meanwhile (only a double free gets
            // here): give the holder back unless someone set it since.
            let _ = b.holder.compare_exchange(me, prev, Ordering::AcqRel, Ordering::Relaxed);
            return Err(double_free());
        }
        let at = std::ptr::from_ref(b) as usize;
        self.release_pages(at, size);
        // Before the update, so that a recount that saw the block counted
        // sees this counter move (`recount`).
        self.hdr().frees.fetch_add(1, Ordering::AcqRel);
        #[cfg(feature = "testing")]
        crate::testing::reached(crate::testing::Point::ArenaFreeing);
        self.freed(size);
        // A CAS, not a store: a `reclaim_dead` that judged this process
        // dead (its pid reused) may have freed the block already.
        let _ = b.state.compare_exchange(FREEING, FREE, Ordering::AcqRel, Ordering::Relaxed);
        if state == HELD && size >= LARGE_BLOCK && writer != me {
            self.unmap_here(at, size);
        }
        Ok(())
    }

    /// `in_use` less `size` (a block just became FREE), never below 0.
    fn freed(&self, size: u64) {
        let _ = self.hdr().in_use.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(size)));
    }

    /// The state (FREE, WRITING, QUEUED, HELD) of the block at
    /// `data_offset`, for tests.
    #[cfg(test)]
    pub(crate) fn state_of(&self, data_offset: u64) -> Result<u32> {
        Ok(self.header_of(data_offset)?.state.load(Ordering::Acquire))
    }

    /// Bytes in blocks that are not free (the pool's pressure check on
    /// every result in shared memory, the workers' array budget, tests and
    /// stats): the header's `in_use`, one atomic load. It was a walk of
    /// every block header under the arena lock; a process that only reads
    /// its messages (a training loop) then mapped 64 KiB around each header
    /// (the kernel's read fault-around): 2.2-3.1 MB of a DataLoader
    /// parent's RSS with 3 MiB samples born in the arena, measured.
    pub fn used(&self) -> Result<u64> {
        Ok(self.hdr().in_use.load(Ordering::Acquire))
    }

    /// `used` by a walk of the blocks under the lock, for tests.
    #[cfg(test)]
    fn walked_used(&self) -> Result<u64> {
        let lock = &self.hdr().lock;
        if lock.lock(crate::sys::liveness::my_pid(), None).is_none() {
            return Err(CoreError::Timeout); // never without a deadline
        }
        let mut used = 0;
        let r = self.for_each_block(|_, b, size| {
            if b.state.load(Ordering::Acquire) != FREE {
                used += size;
            }
        });
        lock.unlock();
        r.map(|()| used)
    }
}

/// What an allocation needs (header included): `plain` bytes anywhere,
/// or for a large one (`is_large`) `windows`: its data rounded up to
/// whole windows, from a window boundary on, when there is room.
#[derive(Debug, Clone, Copy)]
struct Need {
    plain: u64,
    windows: Option<u64>,
}

/// Whether `len` bytes of data make a large block (`LARGE_BLOCK`).
fn is_large(len: u64) -> bool {
    len.saturating_add(BLOCK_HEADER) >= LARGE_BLOCK
}

/// The header of a fresh free block of `size` bytes.
fn free_header(size: u64) -> BlockHeader {
    BlockHeader {
        magic: AtomicU32::new(BLOCK_MAGIC),
        state: AtomicU32::new(FREE),
        holder: AtomicU32::new(0),
        writer: AtomicU32::new(0),
        size: AtomicU64::new(size),
    }
}

/// `st_dev` and `st_ino` of the file `fd` names now; `None` if it names
/// none (closed).
fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable `stat`; `fd` is a plain number (a closed
    // one fails with EBADF) and fstat writes only `st`.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// The block offset of the block whose data starts at `data_offset`.
fn block_offset(data_offset: u64) -> Result<u64> {
    data_offset
        .checked_sub(BLOCK_HEADER)
        .ok_or_else(|| CoreError::corrupt("arena", format!("data offset {data_offset}")))
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// `WINDOW` as an address span.
const FAULT_AROUND: usize = WINDOW as usize;

/// `madvise(advice)` of the whole pages of `[from, to)`; a failure changes
/// nothing (the pages stay).
///
/// # Safety
/// `[from, to)` must lie in a mapping of this process that nobody relies
/// on `advice` leaving alone (MADV_REMOVE zeroes the pages).
unsafe fn advise(from: usize, to: usize, advice: libc::c_int) {
    let page = page_size();
    let (from, to) = (from.next_multiple_of(page), to / page * page);
    if to > from {
        // SAFETY: page-aligned, inside the caller's range.
        let _ = unsafe { libc::madvise(from as *mut libc::c_void, to - from, advice) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::shm::SharedMemory;
    use proptest::prelude::*;

    fn arena(size: u64) -> (SharedMemory, Arena) {
        let shm = SharedMemory::create("arena-test", arena_bytes(size)).unwrap();
        // SAFETY: fresh page-aligned mapping of the right size.
        let a = unsafe { Arena::init(shm.as_ptr(), shm.len()) }.unwrap();
        (shm, a)
    }

    #[test]
    fn used_counts_while_other_threads_split_and_merge_blocks() {
        // `alloc` merges free neighbours (retiring the absorbed headers) and
        // splits blocks under the arena lock; a walk without it stepped onto
        // a retired header: "no block at offset" (the pool's results thread
        // calls `used` for every result in shared memory). `used` is a
        // counter now: it must come back to 0 exactly.
        let (_s, a) = arena(1 << 20);
        let a = &a;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let stop = &stop;
                s.spawn(move || {
                    let mut held = std::collections::VecDeque::new();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if let Some(off) = a.alloc(64 + (i >> 33) % 50_000, 7, None).unwrap() {
                            held.push_back(off);
                        }
                        if held.len() > 4 || (i >> 20) % 3 == 0 {
                            if let Some(off) = held.pop_front() {
                                a.free(off).unwrap();
                            }
                        }
                    }
                    for off in held {
                        a.free(off).unwrap();
                    }
                });
            }
            for _ in 0..200_000 {
                if let Err(e) = a.used() {
                    stop.store(true, Ordering::Relaxed);
                    panic!("used() during allocations: {e}");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(a.used().unwrap(), 0);
    }

    #[test]
    fn used_reads_no_block_header_so_a_reader_maps_none() {
        // A second mapping of the arena's memfd, as a consumer process has:
        // `used` through it must not fault in the blocks' headers (each
        // read fault maps 64 KiB around it: a DataLoader parent's RSS).
        let (shm, a) = arena(64 << 20);
        let blocks: Vec<u64> = (0..20).map(|_| a.alloc(2 << 20, 1, None).unwrap().unwrap()).collect();
        for &b in &blocks[..10] {
            a.free(b).unwrap();
        }
        let fd = rustix::io::dup(shm.fd()).unwrap();
        let other = SharedMemory::open(fd).unwrap();
        // SAFETY: the same arena, mapped again (page-aligned, same length).
        let view = unsafe { Arena::attach(other.as_ptr(), other.len()) }.unwrap();
        assert_eq!(view.used().unwrap(), 10 * ((2 << 20) + BLOCK_HEADER));
        assert_eq!(view.used().unwrap(), a.walked_used().unwrap());
        let past_header = page_size();
        // SAFETY: inside the second mapping.
        let blocks_area = unsafe { other.as_ptr().add(past_header) };
        assert_eq!(resident_pages(blocks_area, other.len() - past_header), 0, "no block header was read");
        for &b in &blocks[10..] {
            a.free(b).unwrap();
        }
        assert_eq!(view.used().unwrap(), 0);
    }

    #[test]
    fn freed_space_is_reused_from_the_lowest_address() {
        let (_s, a) = arena(1 << 16);
        let x = a.alloc(1000, 1, None).unwrap().unwrap();
        let y = a.alloc(1000, 1, None).unwrap().unwrap();
        assert!(y > x);
        a.free(x).unwrap();
        let z = a.alloc(500, 1, None).unwrap().unwrap();
        assert_eq!(z, x, "first fit reuses the first hole");
        a.free(y).unwrap();
        a.free(z).unwrap();
        assert_eq!(a.used().unwrap(), 0);
        assert!(a.alloc(a.max_alloc(), 1, None).unwrap().is_some(), "holes merge back into one");
    }

    #[test]
    fn a_full_arena_says_so_and_too_large_is_an_error() {
        let (_s, a) = arena(4096);
        assert!(a.alloc(3000, 1, None).unwrap().is_some());
        assert!(a.alloc(3000, 1, None).unwrap().is_none());
        assert!(matches!(a.alloc(1 << 20, 1, None), Err(CoreError::TooLarge { .. })));
    }

    #[test]
    fn blocks_of_a_dead_holder_are_reclaimed_but_queued_ones_are_not() {
        let dead = dead_pid();
        let (_s, a) = arena(4096);
        let w = a.alloc(1500, dead, None).unwrap().unwrap();
        let q = a.alloc(1500, 1, None).unwrap().unwrap();
        a.mark_queued(q).unwrap();
        // Only the dead producer's block can be reclaimed.
        assert_eq!(a.alloc(1500, std::process::id(), None).unwrap(), Some(w));
        assert!(a.alloc(1500, std::process::id(), None).unwrap().is_none());
        assert_eq!(a.used().unwrap(), a.walked_used().unwrap(), "reclaiming keeps the counter exact");
    }

    #[test]
    fn reclaim_unreferenced_frees_only_queued_blocks_outside_the_list() {
        let (_s, a) = arena(1 << 16);
        let [w, kept, orphan, held] = [0; 4].map(|_| a.alloc(1000, 1, None).unwrap().unwrap());
        for q in [kept, orphan, held] {
            a.mark_queued(q).unwrap();
        }
        a.mark_held(held, 1000, 1).unwrap();
        assert_eq!(a.reclaim_unreferenced(1, None, |off| off == kept).unwrap(), 1);
        assert_eq!(a.state_of(orphan).unwrap(), FREE);
        assert_eq!(a.state_of(kept).unwrap(), QUEUED);
        assert_eq!(a.state_of(w).unwrap(), WRITING, "a block being written is its producer's");
        assert_eq!(a.state_of(held).unwrap(), HELD);
        assert_eq!(a.reclaim_unreferenced(1, None, |off| off == kept).unwrap(), 0);
        assert_eq!(a.used().unwrap(), a.walked_used().unwrap(), "reclaiming keeps the counter exact");
    }

    fn allocated_bytes(shm: &SharedMemory) -> u64 {
        rustix::fs::fstat(shm.fd()).unwrap().st_blocks as u64 * 512
    }

    /// Pages of [p, p + len) present in this process's page tables
    /// (`/proc/self/pagemap`, bit 63).
    fn resident_pages(p: *const u8, len: usize) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let page = page_size();
        let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
        f.seek(SeekFrom::Start((p as usize / page * 8) as u64)).unwrap();
        let mut buf = vec![0u8; len / page * 8];
        f.read_exact(&mut buf).unwrap();
        buf.chunks_exact(8).filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 1).count()
    }

    #[test]
    fn a_large_block_leaves_the_page_tables_of_a_consumer_that_did_not_write_it_and_stays_warm() {
        let (shm, a) = arena(WARM_MAX + (64 << 20));
        // A length that ends 64 bytes into a window (the block still ends
        // on the window's end).
        let len = LARGE_BLOCK + (8 << 20) + 64;
        let me = my_pid();
        // (writer, consumed here): freed unsent by its writer; received
        // from another process; sent and received by this one (two threads
        // sharing a queue), which writes it again at its next put.
        let runs: Vec<_> = [(me, false), (1, true), (me, true)]
            .into_iter()
            .map(|(writer, consumed)| {
                let x = a.alloc(len, writer, None).unwrap().unwrap();
                // The next block, which first fit puts in the free space
                // before x's window-aligned data: in the window of x's
                // header, which the consumer's free unmaps too.
                let next = a.alloc(32 << 10, me, None).unwrap().unwrap();
                assert!(next < x && x - next < WINDOW, "{next} {x}");
                let p = a.data_ptr(x, len).unwrap();
                // SAFETY: the blocks are ours and inside the mapping.
                unsafe {
                    std::ptr::write_bytes(p, 0xCD, len as usize);
                    std::ptr::write_bytes(a.data_ptr(next, 32 << 10).unwrap(), 0xCD, 32 << 10);
                }
                let touched = resident_pages(p, len as usize);
                if consumed {
                    a.mark_queued(x).unwrap();
                    a.mark_held(x, len, me).unwrap();
                }
                a.free(x).unwrap();
                let run = (touched, resident_pages(p, len as usize), allocated_bytes(&shm), {
                    resident_pages(a.data_ptr(next + (16 << 10), 1).unwrap(), page_size())
                });
                a.free(next).unwrap();
                run
            })
            .collect();
        let page = page_size();
        let [unsent, received, same_process] = runs[..] else { unreachable!() };
        for run in [unsent, received, same_process] {
            assert!(run.0 * page >= len as usize - page, "the block was written: {run:?}");
            assert!(run.2 >= len, "the memfd keeps the pages warm: {run:?}");
        }
        assert_eq!(unsent.1, unsent.0, "its writer keeps it mapped: {unsent:?}");
        // (but the page it shares with the arena's header)
        assert!(received.1 <= 1, "its consumer's page tables no longer hold it: {received:?}");
        assert_eq!(received.3, 0, "nor the block before it, in its header's window: {received:?}");
        assert_eq!(same_process.1, same_process.0, "a consumer that wrote it keeps it mapped: {same_process:?}");
        assert_eq!(same_process.3, 1, "{same_process:?}");
    }

    #[test]
    fn receiving_large_blocks_maps_only_their_header_pages_in_the_consumer() {
        // A consumer process's mapping of the arena (a second mapping of
        // the memfd): `mark_held` checks a header read from the file, so
        // its first access through the mapping is a write, which maps one
        // page; a read would map the 64 KiB fault-around window (16 pages)
        // around each header, part of a DataLoader parent's RSS for every
        // batch it has received and not read yet.
        let (shm, a) = arena(4 * LARGE_BLOCK);
        let blocks = written_blocks(&a, 3, LARGE_BLOCK);
        for &b in &blocks {
            a.mark_queued(b).unwrap();
        }
        let other = SharedMemory::open(rustix::io::dup(shm.fd()).unwrap()).unwrap();
        // SAFETY: the same arena, mapped again (page-aligned, same length),
        // from offset 0 of `other`'s memfd, which outlives the view.
        let view = unsafe { Arena::attach(other.as_ptr(), other.len()).unwrap().backed_by(other.raw_fd(), 0) };
        // The first block's header shares the first page with the arena's
        // header, which `attach` read: the others only are counted.
        let mapped = || resident_pages(other.as_ptr(), other.len());
        let before = mapped();
        for &b in &blocks[1..] {
            view.mark_held(b, LARGE_BLOCK, my_pid()).unwrap();
        }
        assert_eq!(mapped() - before, blocks.len() - 1, "one page per header");
        view.mark_held(blocks[0], LARGE_BLOCK, my_pid()).unwrap();
        for &b in &blocks {
            assert_eq!(a.state_of(b).unwrap(), HELD);
            view.free(b).unwrap();
        }
        assert_eq!(a.used().unwrap(), 0);
    }

    /// A pid that no process has now.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        dead
    }

    #[test]
    fn reclaim_dead_recounts_in_use_after_freers_killed_before_or_after_their_update() {
        // The kill of `free` between its steps, done by hand (the real
        // kill: tests/cross_process.rs): a block FREEING by a dead pid
        // whose `in_use` update did not happen, and one whose did.
        let (_s, a) = arena(1 << 16);
        let me = my_pid();
        let [kept, before, after] = [0; 3].map(|_| a.alloc(1000, me, None).unwrap().unwrap());
        let dead = dead_pid();
        for x in [before, after] {
            let b = a.header_of(x).unwrap();
            b.holder.store(dead, Ordering::Release);
            b.state.store(FREEING, Ordering::Release);
        }
        a.freed(a.header_of(after).unwrap().size.load(Ordering::Relaxed));
        let size = a.header_of(kept).unwrap().size.load(Ordering::Relaxed);
        assert_eq!(a.used().unwrap(), 2 * size, "one update missing");
        assert_eq!(a.reclaim_dead_locked(me, None).unwrap(), 2, "both blocks come back");
        assert_eq!((a.used().unwrap(), a.walked_used().unwrap()), (size, size));
        a.free(kept).unwrap();
        assert_eq!(a.used().unwrap(), 0);
    }

    std::thread_local! {
        /// Whether this thread's frees pause between their state change
        /// and their `in_use` update (`recounts_racing_...`).
        static SLOW_FREES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    #[cfg(feature = "testing")]
    fn recounts_racing_lock_free_frees_keep_in_use_exact() {
        // Threads allocate and free (frees take no lock; these pause
        // between their state change and their `in_use` update, to widen
        // the window) while this one reclaims and recounts in a loop: a
        // free inside that window, or past it after the walk counted its
        // block, must neither be lost nor counted twice.
        crate::testing::set_hook(|p| {
            if p == crate::testing::Point::ArenaFreeing && SLOW_FREES.with(std::cell::Cell::get) {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let (_s, a) = arena(1 << 20);
        let a = &a;
        let me = my_pid();
        let kept: Vec<u64> = (0..4).map(|_| a.alloc(3000, me, None).unwrap().unwrap()).collect();
        let expected = a.used().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let stop = &stop;
                s.spawn(move || {
                    SLOW_FREES.with(|slow| slow.set(true));
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if let Some(off) = a.alloc(64 + (i >> 33) % 20_000, me, None).unwrap() {
                            a.free(off).unwrap();
                        }
                    }
                });
            }
            let mut low = None;
            for _ in 0..20_000 {
                a.reclaim_dead_locked(me, None).unwrap();
                // The kept blocks at least; a free counted twice goes below.
                let used = a.used().unwrap();
                if used < expected {
                    low = Some(used);
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(low, None, "in_use fell below the {expected} bytes kept");
        });
        assert_eq!((a.used().unwrap(), a.walked_used().unwrap()), (expected, expected));
        free_all(a, kept);
    }

    /// Frees `blocks`, the last live ones: the arena is empty after.
    fn free_all(a: &Arena, blocks: impl IntoIterator<Item = u64>) {
        for off in blocks {
            a.free(off).unwrap();
        }
        assert_eq!(a.used().unwrap(), 0);
    }

    #[test]
    fn a_freed_giant_block_gives_back_its_memory_past_64_mib_and_keeps_the_rest_warm() {
        let (shm, a) = arena(WARM_MAX + (64 << 20));
        let len = WARM_AFTER_GIANT + (100 << 20);
        let x = a.alloc(len, 1, None).unwrap().unwrap();
        let p = a.data_ptr(x, len).unwrap();
        // SAFETY: the block [x, x + len) is ours and inside the mapping.
        unsafe { std::ptr::write_bytes(p, 0xAB, len as usize) };
        assert!(allocated_bytes(&shm) >= len);
        a.free(x).unwrap();
        let after = allocated_bytes(&shm);
        assert!(after <= WARM_AFTER_GIANT + (1 << 20), "{after} bytes still allocated after the free");
        assert!(after >= WARM_AFTER_GIANT - (1 << 20), "the first {WARM_AFTER_GIANT} bytes stay warm, got {after}");
        // The arena is whole again, and what was given back reads as zeros.
        let y = a.alloc(a.max_alloc(), 1, None).unwrap().unwrap();
        let q = a.data_ptr(y, a.max_alloc()).unwrap();
        // SAFETY: inside the block just allocated; bytes past the mark were
        // removed from the memfd and read back as zero pages.
        unsafe {
            assert_eq!(*q.add((x - y) as usize + 100), 0xAB, "warm pages keep their bytes");
            assert_eq!(*q.add(WARM_AFTER_GIANT as usize + (8 << 20)), 0);
        }
    }

    /// `n` blocks of `len` bytes allocated (by pid 1) and written.
    fn written_blocks(a: &Arena, n: usize, len: u64) -> Vec<u64> {
        let blocks: Vec<u64> = (0..n).map(|_| a.alloc(len, 1, None).unwrap().unwrap()).collect();
        for &b in &blocks {
            // SAFETY: each block is ours and inside the mapping.
            unsafe { std::ptr::write_bytes(a.data_ptr(b, len).unwrap(), 1, len as usize) };
        }
        blocks
    }

    #[test]
    fn large_blocks_of_up_to_64_mib_stay_warm_up_to_256_mib() {
        // A DataLoader's batches: 48 MiB blocks, five in flight, freed and
        // allocated again; their pages must not be punched out past 64 MiB.
        let (shm, a) = arena(WARM_MAX + (64 << 20));
        let len = 48 << 20;
        let blocks = written_blocks(&a, 5, len);
        for b in blocks {
            a.free(b).unwrap();
        }
        assert!(allocated_bytes(&shm) >= 5 * len, "all five stay warm: {}", allocated_bytes(&shm));
    }

    #[test]
    fn ordinary_blocks_stay_warm_up_to_256_mib_and_give_back_what_lies_past_it() {
        let (shm, a) = arena(WARM_MAX + (64 << 20));
        let len = 8 << 20;
        let blocks = written_blocks(&a, 36, len);
        assert!(allocated_bytes(&shm) >= 36 * len);
        for b in blocks {
            a.free(b).unwrap();
        }
        let after = allocated_bytes(&shm);
        assert!(after <= WARM_MAX + (9 << 20), "{after} bytes still allocated");
        assert!(after >= WARM_MAX - (9 << 20), "ordinary blocks below {WARM_MAX} stay warm, got {after}");
    }

    #[test]
    fn marking_a_block_that_is_not_queued_held_leaves_its_holder_alone() {
        let (_s, a) = arena(1 << 20);
        let x = a.alloc(1000, 41, None).unwrap().unwrap();
        assert!(a.mark_held(x, 1000, 42).is_err(), "a WRITING block is not taken");
        assert_eq!(a.header_of(x).unwrap().holder.load(Ordering::Relaxed), 41, "its writer still holds it");
        a.mark_queued(x).unwrap();
        a.mark_held(x, 1000, 42).unwrap();
        assert!(a.mark_held(x, 1000, 43).is_err(), "a replayed descriptor");
        assert_eq!(a.header_of(x).unwrap().holder.load(Ordering::Relaxed), 42);
    }

    #[test]
    fn bad_offsets_and_double_frees_are_errors() {
        let (_s, a) = arena(4096);
        let x = a.alloc(100, 1, None).unwrap().unwrap();
        assert!(a.free(x + 8).is_err());
        assert!(a.free(0).is_err());
        assert!(a.free(1 << 40).is_err());
        a.free(x).unwrap();
        assert!(a.free(x).is_err());
        assert!(a.mark_held(x, 100, 1).is_err());
    }

    #[test]
    fn a_corrupt_block_size_is_refused_by_free_and_zeroes_nothing() {
        // `free` used the size in the block's header as it found it: a size
        // past the arena punched a hole (MADV_REMOVE) into whatever the
        // mapping held after the block, another arena's messages included
        // (stop 23's review: 6 of 12 messages of a neighbour queue lost).
        let (_s, a) = arena(WARM_MAX + (8 << 20));
        // A block past the warm mark, so that its free would punch a hole.
        let filler = a.alloc(WARM_MAX, 1, None).unwrap().unwrap();
        let x = a.alloc(1 << 20, 1, None).unwrap().unwrap();
        let y = a.alloc(1 << 20, 1, None).unwrap().unwrap();
        let py = a.data_ptr(y, 1 << 20).unwrap();
        // SAFETY: `y`'s data is a block we hold, inside the mapping.
        unsafe { std::ptr::write_bytes(py, 0xAB, 1 << 20) };
        let used = a.used().unwrap();
        let hx = a.header_of(x).unwrap();
        let good = hx.size.load(Ordering::Relaxed);
        for bad in [0, BLOCK_HEADER - 1, good + 1, a.size, u64::MAX - 63] {
            hx.size.store(bad, Ordering::Relaxed);
            assert!(matches!(a.free(x), Err(CoreError::Corrupt { .. })), "size {bad}");
            assert_eq!(a.state_of(x).unwrap(), WRITING, "a refused free leaves the block as it was");
        }
        assert_eq!(a.used().unwrap(), used);
        // SAFETY: as above.
        let after = unsafe { std::slice::from_raw_parts(py, 1 << 20) };
        assert!(after.iter().all(|&v| v == 0xAB), "the next block's data is intact");
        hx.size.store(good, Ordering::Relaxed);
        for off in [x, y, filler] {
            a.free(off).unwrap();
        }
        assert_eq!(a.used().unwrap(), 0);
    }

    /// The arena's memfd mapped a second time, as a consumer process maps
    /// it (at another address, 64 KiB-aligned like every mapping of it),
    /// and a view of it reading large headers from its own descriptor.
    fn second_mapping(shm: &SharedMemory) -> (SharedMemory, Arena) {
        let other = SharedMemory::open(rustix::io::dup(shm.fd()).unwrap()).unwrap();
        // SAFETY: the same arena, mapped again (aligned, same length), from
        // offset 0 of `other`'s memfd, which outlives the view's use.
        let view = unsafe { Arena::attach(other.as_ptr(), other.len()) }.unwrap().backed_by(other.raw_fd(), 0);
        (other, view)
    }

    #[test]
    fn reading_a_large_block_maps_none_of_its_neighbours_pages() {
        // A consumer reading a whole received batch (a training loop)
        // mapped, by fault-around, the pages of the blocks beside it that
        // shared its first and last 64 KiB windows: 192 KiB more than
        // torch's batch file in a DataLoader parent. Now its data starts
        // on a window and the next block starts at or past the window of
        // its last byte: reading it maps exactly its own pages.
        let (shm, a) = arena(4 * LARGE_BLOCK);
        let len = LARGE_BLOCK + (100 << 10) + 8;
        let before = a.alloc(1000, 1, None).unwrap().unwrap();
        let x = a.alloc(len, 1, None).unwrap().unwrap();
        let after = a.alloc(1000, 1, None).unwrap().unwrap();
        for (b, n) in [(before, 1000), (x, len), (after, 1000)] {
            // SAFETY: each block is ours and inside the mapping.
            unsafe { std::ptr::write_bytes(a.data_ptr(b, n).unwrap(), 1, n as usize) };
        }
        a.mark_queued(x).unwrap();
        let (other, view) = second_mapping(&shm);
        view.mark_held(x, len, my_pid()).unwrap();
        let p = view.data_ptr(x, len).unwrap();
        assert_eq!(p as u64 % WINDOW, 0, "its data starts on a window here too");
        let mapped = || resident_pages(other.as_ptr(), other.len());
        let held = mapped();
        let page = page_size();
        let mut sum = 0u64;
        for i in (0..len as usize).step_by(page) {
            // SAFETY: inside the block, which this view holds.
            sum += u64::from(unsafe { p.add(i).read_volatile() });
        }
        assert_eq!(sum, len.div_ceil(page as u64));
        assert_eq!(mapped() - held, (len as usize).div_ceil(page), "its own pages, none of a neighbour's");
        view.free(x).unwrap();
        for b in [before, after] {
            a.free(b).unwrap();
        }
        assert_eq!(a.used().unwrap(), 0);
    }

    #[test]
    fn small_and_mid_blocks_pay_nothing_for_alignment_and_a_large_one_less_than_a_window() {
        let (_s, a) = arena(1 << 30);
        let mut expected = 0;
        let mut live = Vec::new();
        for (i, len) in [100, 3000, 64 << 10, 1 << 20, 3 << 20, 48 << 20, 5000, LARGE_BLOCK, 16 << 20, 33 << 20]
            .into_iter()
            .enumerate()
        {
            let off = a.alloc(len, 1, None).unwrap().unwrap();
            let size = a.header_of(off).unwrap().size.load(Ordering::Relaxed);
            if is_large(len) {
                assert_eq!(size, BLOCK_HEADER + len.div_ceil(WINDOW) * WINDOW, "#{i}: whole windows");
                assert_eq!((off + a.phase) % WINDOW, 0, "#{i}: its data starts on one");
            } else {
                assert_eq!(size, BLOCK_HEADER + len.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN, "#{i}: as before");
            }
            expected += size;
            live.push(off);
        }
        assert_eq!(a.used().unwrap(), expected, "the space before an aligned block stays free");
        free_all(&a, live);
    }

    #[test]
    fn a_large_block_without_room_on_windows_is_placed_as_before() {
        // The whole arena in one message: no room for a window boundary
        // before it, still allowed.
        let (_s, a) = arena(LARGE_BLOCK + (1 << 20));
        let x = a.alloc(a.max_alloc(), 1, None).unwrap().unwrap();
        assert_eq!(x, BLOCK_HEADER);
        a.free(x).unwrap();
        // Room for its bytes but not for its windows from a boundary.
        let len = a.max_alloc() - BLOCK_HEADER;
        let x = a.alloc(len, 1, None).unwrap().unwrap();
        assert_eq!(x, BLOCK_HEADER);
        a.free(x).unwrap();
        assert_eq!((a.used().unwrap(), a.walked_used().unwrap()), (0, 0));
    }

    #[test]
    fn mark_held_refuses_a_header_read_from_a_descriptor_closed_or_reused_meanwhile() {
        // `peek` reads a large block's header from a descriptor number the
        // view does not own: closed by another thread it fell back on the
        // mapping silently; given to another file it read that file's
        // bytes. Either is an OS error now, and the block is untouched.
        let (shm, a) = arena(4 * LARGE_BLOCK);
        let x = a.alloc(LARGE_BLOCK, 7, None).unwrap().unwrap();
        let fd = rustix::io::dup(shm.fd()).unwrap();
        let view = a.backed_by(std::os::fd::AsRawFd::as_raw_fd(&fd), 0);
        // Another arena of the same shape, whose block at the same offset
        // is QUEUED: the bytes a wrong file could show.
        let (decoy_shm, decoy) = arena(4 * LARGE_BLOCK);
        assert_eq!(decoy.alloc(LARGE_BLOCK, 7, None).unwrap(), Some(x));
        decoy.mark_queued(x).unwrap();
        let untouched = |state| {
            assert_eq!(a.state_of(x).unwrap(), state);
            assert_eq!(a.header_of(x).unwrap().holder.load(Ordering::Relaxed), 7);
        };
        // x is WRITING; the number now names the decoy's file.
        let mut fd = fd;
        rustix::io::dup2(decoy_shm.fd(), &mut fd).unwrap();
        let err = view.mark_held(x, LARGE_BLOCK, 42).unwrap_err();
        assert!(matches!(err, CoreError::Os { .. }), "{err}");
        untouched(WRITING);
        // x is QUEUED; the number is closed.
        a.mark_queued(x).unwrap();
        drop(fd);
        let err = view.mark_held(x, LARGE_BLOCK, 42).unwrap_err();
        assert!(matches!(err, CoreError::Os { .. }), "{err}");
        untouched(QUEUED);
        // A view whose descriptor stays open takes it.
        let (_other, good) = second_mapping(&shm);
        good.mark_held(x, LARGE_BLOCK, 42).unwrap();
        assert_eq!(a.state_of(x).unwrap(), HELD);
        a.free(x).unwrap();
    }

    proptest! {
        /// Every large block's data starts on a window boundary in two
        /// mappings of the arena at different addresses, and its block ends
        /// on one; no byte is lost over allocs and frees (the blocks tile
        /// the arena, the counter is their sum, and once all are freed one
        /// block of the whole arena can be allocated again). The arena is
        /// large enough (2 GiB of address, a few pages touched) that a
        /// large block always finds room on windows.
        #[test]
        fn large_blocks_lie_on_whole_windows_in_every_mapping_and_no_byte_is_lost(
            ops in proptest::collection::vec((0u8..4, 0u64..(16 << 20), any::<u8>()), 1..120)
        ) {
            let (shm, a) = arena(2 << 30);
            let (_other, view) = second_mapping(&shm);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (kind, r, pick) in ops {
                let len = match kind {
                    0 => 1 + r % 3000,
                    1 => 64 + r % (4 << 20),
                    _ => LARGE_BLOCK - BLOCK_HEADER + r,
                };
                if kind < 3 && live.len() < 30 {
                    let off = a.alloc(len, 1, None).unwrap().unwrap();
                    for &(o, l) in &live {
                        prop_assert!(off + len <= o || o + l <= off, "overlap");
                    }
                    if is_large(len) {
                        for m in [&a, &view] {
                            prop_assert_eq!(m.data_ptr(off, len).unwrap() as u64 % WINDOW, 0);
                        }
                        let end = off - BLOCK_HEADER + a.header_of(off).unwrap().size.load(Ordering::Relaxed);
                        prop_assert_eq!(view.data_ptr(end, 0).unwrap() as u64 % WINDOW, 0, "ends on a window");
                    }
                    live.push((off, len));
                } else if !live.is_empty() {
                    let (off, _) = live.swap_remove(pick as usize % live.len());
                    a.free(off).unwrap();
                }
                let (mut free, mut walked) = (0, 0);
                a.for_each_block(|_, b, size| {
                    walked += size;
                    if b.state.load(Ordering::Relaxed) == FREE {
                        free += size;
                    }
                }).unwrap();
                prop_assert_eq!(walked, a.size());
                prop_assert_eq!(a.used().unwrap() + free, a.size(), "the counter and the free blocks tile the arena");
            }
            for (off, _) in live { a.free(off).unwrap(); }
            prop_assert_eq!(a.used().unwrap(), 0);
            prop_assert!(a.alloc(a.max_alloc(), 1, None).unwrap().is_some(), "all merged back into one");
        }

        /// Live blocks never overlap, whatever the order of allocs and frees.
        #[test]
        fn live_blocks_never_overlap(ops in proptest::collection::vec((any::<bool>(), 1u64..3000, any::<u8>()), 1..200)) {
            let (_s, a) = arena(1 << 15);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (alloc, len, pick) in ops {
                if alloc || live.is_empty() {
                    if let Some(off) = a.alloc(len, 1, None).unwrap() {
                        for &(o, l) in &live {
                            prop_assert!(off + len <= o || o + l <= off, "overlap");
                        }
                        live.push((off, len));
                    }
                } else {
                    let (off, _) = live.swap_remove(pick as usize % live.len());
                    a.free(off).unwrap();
                }
                prop_assert_eq!(a.used().unwrap(), a.walked_used().unwrap(), "the counter is the walk's sum");
            }
            for (off, _) in live { a.free(off).unwrap(); }
            prop_assert_eq!(a.used().unwrap(), 0);
        }
    }
}
