//! NumPy arrays born in a pool worker's result arena, so a returned array
//! travels to the parent without a copy.
//!
//! Why: a task that returns `arr * 2` allocates a fresh result (16 MB for
//! 2M float64), and sending it copied it into an arena block of the
//! result queue. Measured on the 2-core VM (2026-12-06, 16 MB float64,
//! medians of 30 calls, `submit(double, arr).result()` only): a tiny task
//! 0.45 ms; the array in only (worker returns None) 2.5 ms; an array out
//! only (worker returns `np.ones(2M)`) 3.5 ms; both ways 6.0 ms, of which
//! `arr * 2` in the worker 1.6 ms (0.9 ms in the parent, warm heap) and
//! each 16 MB copy into warm arena pages about 0.7-1 ms. Here the worker
//! installs a NumPy data allocator (NEP 49, `PyDataMem_SetHandler`,
//! NumPy 1.22 and later) whose large allocations (`MIN_BYTES` and up) are blocks of
//! the result queue's arena: first-fit keeps them at the same warm low
//! addresses call after call, and the block of a returned array is put
//! in the result message as it is (`SharedQueue::put_parts`).
//!
//! Ownership (`Entry.state`): a block is `Live` while NumPy owns it in
//! this process. `send` offers the blocks that start an out-of-band
//! buffer of the message (`Offered`), then drops its own references to
//! those buffers: if that was the last reference, NumPy frees the array
//! and the free only marks the block `Released`; a released block goes in
//! the message without a copy (the worker can no longer reach it, so it
//! never writes it again, and only the receiver frees it). A block still
//! referenced in the worker (a global, a cache) is copied as before, and
//! goes back to `Live`; if it is freed while the message is being put,
//! the free is done after the put. So every block is freed exactly once,
//! by the worker (`Live`) or by the message's receiver (sent).
//!
//! Falls back to `malloc` (never breaking NumPy): below `MIN_BYTES`, when
//! the arena (all processes' blocks, not only ours) would pass `budget`
//! bytes in use, so that the workers of a pool together never fill the
//! arena their results travel through; when the arena has no room or its
//! lock stays busy `LOCK_WAIT`; and in a process forked from the
//! installer. A worker that dies leaves its blocks WRITING under its pid;
//! the next worker's `install` reclaims them (`reclaim_dead_blocks`).
//!
//! Fork (`pthread_atfork`, registered at install): the arena is
//! `MAP_SHARED`, so a child would share its inherited arrays with the
//! installer (no copy-on-write) and keep reaching their blocks after the
//! installer freed or sent them. The child handler remaps the pages of
//! every inherited block private (`privatize`), and the child never
//! frees them (they are its own memory now) nor allocates in the arena;
//! its `realloc` of one is `malloc` and a copy of the recorded length.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use corral_core::channel::queue::{OutPart, SharedQueue as CoreQueue};
use corral_core::sys::liveness::my_pid;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyList};

use crate::errors::queue_err;
use crate::queue::{Bytes, SharedQueue};

/// Longest wait for the arena lock before an allocation falls back to
/// `malloc`.
const LOCK_WAIT: Duration = Duration::from_millis(2);
/// `calloc` above this size goes to the system, whose fresh pages are
/// zero for free (an arena block would be zeroed by hand).
const CALLOC_MAX: usize = 64 << 20;
/// Index of `PyDataMem_SetHandler` in NumPy's C-API table
/// (`__multiarray_api.h`, NumPy >= 1.22, unchanged in 2.x).
const SET_HANDLER: usize = 304;

/// `PyDataMemAllocator` of `numpy/ndarraytypes.h`.
#[repr(C)]
struct Allocator {
    ctx: *mut c_void,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

/// `PyDataMem_Handler` of `numpy/ndarraytypes.h`.
#[repr(C)]
struct Handler {
    name: [u8; 127],
    version: u8,
    allocator: Allocator,
}

const _: () = assert!(std::mem::size_of::<Handler>() == 128 + 5 * 8);

struct StaticHandler(Handler);
// SAFETY: read-only after construction; `ctx` is null and never used.
unsafe impl Sync for StaticHandler {}

const fn handler_name() -> [u8; 127] {
    let mut name = [0u8; 127];
    let s = b"corral_shm_arena";
    let mut i = 0;
    while i < s.len() {
        name[i] = s[i];
        i += 1;
    }
    name
}

/// The handler NumPy keeps a pointer to in every array it allocated.
static HANDLER: StaticHandler = StaticHandler(Handler {
    name: handler_name(),
    version: 1,
    allocator: Allocator {
        ctx: std::ptr::null_mut(),
        malloc: h_malloc,
        calloc: h_calloc,
        realloc: h_realloc,
        free: h_free,
    },
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Owned by NumPy in this process.
    Live,
    /// Part of a message being sent; NumPy still owns it.
    Offered,
    /// Part of a message being sent; NumPy freed it meanwhile.
    Released,
}

struct Entry {
    offset: u64,
    len: u64,
    state: State,
}

/// The installer's arena and its live blocks by address.
struct Arrays {
    queue: Arc<CoreQueue>,
    budget: u64,
    live_bytes: u64,
    sent: u64,
    sent_bytes: u64,
    blocks: HashMap<usize, Entry>,
}

static ARRAYS: OnceLock<Mutex<Arrays>> = OnceLock::new();
/// The arena's address range in this process (0, 0 before `install`),
/// read without the lock by every free.
static BASE: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
/// The pid that installed the allocator (a forked child differs).
static OWNER: AtomicU32 = AtomicU32::new(0);
/// Arrays of this many bytes and up are born in the arena (`usize::MAX`
/// before `install`): read without the lock, so the many small arrays of
/// a task (per-sample temporaries) cost no lock (they took it on every
/// allocation: ~1% of a DataLoader worker's time).
static MIN: AtomicUsize = AtomicUsize::new(usize::MAX);

fn arrays() -> Option<MutexGuard<'static, Arrays>> {
    // A panic while holding the lock cannot leave the map half-changed in
    // a way that matters more than losing the process's arrays: go on.
    ARRAYS.get().map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

thread_local! {
    /// The installer's map, locked by `before_fork` in the forking thread
    /// (so that no other thread holds it mid-change when the child is
    /// made) and released by `after_fork_parent` / `after_fork_child`.
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Arrays>>> =
        const { std::cell::RefCell::new(None) };
}

extern "C" fn before_fork() {
    if is_owner() {
        if let Some(g) = arrays() {
            let _ = FORK_GUARD.try_with(|f| *f.borrow_mut() = Some(g));
        }
    }
}

extern "C" fn after_fork_parent() {
    let _ = FORK_GUARD.try_with(|f| f.borrow_mut().take());
}

extern "C" fn after_fork_child() {
    let Ok(Some(a)) = FORK_GUARD.try_with(|f| f.borrow_mut().take()) else { return };
    for (&p, e) in &a.blocks {
        if e.state != State::Released && !privatize(p, e.len as usize) {
            const MSG: &[u8] = b"corral: a forked child could not copy its inherited arrays out of shared memory; \
                writes to them may reach the pool worker\n";
            // SAFETY: writes a static buffer to stderr (async-signal-safe).
            unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
            return;
        }
    }
}

/// Replaces the shared pages covering `[p, p + len)` by private ones with
/// the same bytes (a forked child's inherited array); false on failure.
/// Pages shared with a neighbouring block are privatized too (harmless:
/// done again for that block, the bytes are the same).
fn privatize(p: usize, len: usize) -> bool {
    const CHUNK: usize = 2 << 20;
    let page = page_size();
    let start = p & !(page - 1);
    let Some(end) = p.checked_add(len).and_then(|e| e.checked_next_multiple_of(page)) else { return false };
    let chunk = CHUNK.max(page) / page * page;
    // SAFETY: a fresh anonymous mapping, checked below.
    let tmp = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            chunk,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if tmp == libc::MAP_FAILED {
        return false;
    }
    let mut ok = true;
    let mut at = start;
    while at < end {
        let n = chunk.min(end - at);
        // SAFETY: `[at, at + n)` lies in the arena mapping (whole pages of
        // a block that lies in it; the arena is page-aligned), readable
        // and writable, which only this thread runs in the fresh child;
        // `tmp` is our mapping of `chunk >= n` bytes. MAP_FIXED replaces
        // exactly those pages, then the bytes are copied back.
        unsafe {
            std::ptr::copy_nonoverlapping(at as *const u8, tmp.cast::<u8>(), n);
            let m = libc::mmap(
                at as *mut c_void,
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if m != at as *mut c_void {
                ok = false;
                break;
            }
            std::ptr::copy_nonoverlapping(tmp.cast::<u8>(), at as *mut u8, n);
        }
        at += n;
    }
    // SAFETY: our own mapping of `chunk` bytes, no longer used.
    unsafe { libc::munmap(tmp, chunk) };
    ok
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 && (n as usize).is_power_of_two() {
        n as usize
    } else {
        4096
    }
}

fn in_arena(p: usize) -> bool {
    p >= BASE.load(Ordering::Acquire) && p < END.load(Ordering::Acquire)
}

fn is_owner() -> bool {
    OWNER.load(Ordering::Acquire) == my_pid()
}

/// An arena block of `size` bytes, or null (the caller falls back).
fn arena_alloc(size: usize) -> *mut c_void {
    if size < MIN.load(Ordering::Relaxed) || !is_owner() {
        return std::ptr::null_mut();
    }
    let Some(mut a) = arrays() else { return std::ptr::null_mut() };
    // The arena's bytes in use by every process (the other workers'
    // arrays, results on their way or kept by the parent) count.
    let used = a.queue.arena_used().unwrap_or(u64::MAX);
    if used.saturating_add(size as u64) > a.budget {
        return std::ptr::null_mut();
    }
    let Ok(Some(offset)) = a.queue.alloc_block(size as u64, Some(Instant::now() + LOCK_WAIT)) else {
        return std::ptr::null_mut();
    };
    let Ok(p) = a.queue.block_ptr(offset, size as u64) else {
        let _ = a.queue.free_block(offset);
        return std::ptr::null_mut();
    };
    a.live_bytes += size as u64;
    a.blocks.insert(p as usize, Entry { offset, len: size as u64, state: State::Live });
    p.cast()
}

unsafe extern "C" fn h_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    let p = arena_alloc(size);
    if !p.is_null() {
        return p;
    }
    // SAFETY: plain malloc.
    unsafe { libc::malloc(size) }
}

unsafe extern "C" fn h_calloc(_ctx: *mut c_void, n: usize, elsize: usize) -> *mut c_void {
    let Some(size) = n.checked_mul(elsize) else { return std::ptr::null_mut() };
    if size <= CALLOC_MAX {
        let p = arena_alloc(size);
        if !p.is_null() {
            // SAFETY: a fresh block of `size` bytes that only we reach.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, size) };
            return p;
        }
    }
    // SAFETY: plain calloc.
    unsafe { libc::calloc(n, elsize) }
}

unsafe extern "C" fn h_realloc(ctx: *mut c_void, ptr: *mut c_void, new_size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as malloc.
        return unsafe { h_malloc(ctx, new_size) };
    }
    if !in_arena(ptr as usize) {
        // SAFETY: `ptr` came from the system allocator (not the arena).
        return unsafe { libc::realloc(ptr, new_size) };
    }
    if !is_owner() {
        // A forked child's inherited block (private since the fork): moved
        // to malloc; the old pages stay, never freed (see `h_free`).
        let old_len = arrays().and_then(|mut a| a.blocks.remove(&(ptr as usize)).map(|e| e.len));
        let Some(old_len) = old_len else { return std::ptr::null_mut() };
        // SAFETY: plain malloc.
        let new = unsafe { libc::malloc(new_size.max(1)) };
        if !new.is_null() {
            // SAFETY: `ptr` is an inherited block of `old_len` bytes, mapped
            // private in this process; `new` is fresh; no overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old_len.min(new_size as u64) as usize)
            };
        }
        return new;
    }
    // An arena block: a new allocation (arena or malloc), a copy, a free.
    let Some(old_len) = arrays().and_then(|a| a.blocks.get(&(ptr as usize)).map(|e| e.len)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: as malloc.
    let new = unsafe { h_malloc(ctx, new_size) };
    if new.is_null() {
        return new;
    }
    // SAFETY: `ptr` is a live block of `old_len` bytes, `new` a fresh
    // allocation of `new_size`; they do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old_len.min(new_size as u64) as usize);
        h_free(ctx, ptr, old_len as usize);
    }
    new
}

unsafe extern "C" fn h_free(_ctx: *mut c_void, ptr: *mut c_void, _size: usize) {
    if ptr.is_null() {
        return;
    }
    if !in_arena(ptr as usize) {
        // SAFETY: `ptr` came from the system allocator (not the arena).
        unsafe { libc::free(ptr) };
        return;
    }
    if !is_owner() {
        return; // inherited by fork: private pages now, left mapped
    }
    let Some(mut a) = arrays() else { return };
    let key = ptr as usize;
    match a.blocks.get_mut(&key).map(|e| (e.state, e.offset, e.len)) {
        Some((State::Live, offset, len)) => {
            a.blocks.remove(&key);
            a.live_bytes -= len;
            let _ = a.queue.free_block(offset);
        }
        Some((State::Offered, _, _)) => {
            if let Some(e) = a.blocks.get_mut(&key) {
                e.state = State::Released;
            }
        }
        // Released already, or unknown: never free twice.
        Some((State::Released, _, _)) | None => {}
    }
}

/// Installs the allocator in the calling thread's context (NumPy keeps
/// the handler in a context variable) for arrays of `min_bytes` and up,
/// in `queue`'s arena while it has less than `budget` bytes in use (by
/// any process).
/// False if NumPy is older than 1.22 or this process installed it over
/// another queue already.
#[pyfunction]
pub fn install_array_allocator(py: Python<'_>, queue: &SharedQueue, min_bytes: usize, budget: u64) -> PyResult<bool> {
    let np = py.import("numpy")?;
    let version: String = np.getattr("__version__")?.extract()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (1, 22) {
        return Ok(false);
    }
    let me = my_pid();
    if OWNER.load(Ordering::Acquire) != me {
        if OWNER.load(Ordering::Acquire) != 0 {
            return Ok(false); // forked from an installer: its arena, not ours
        }
        let (base, len) = queue.inner.arena_span().map_err(queue_err)?;
        let arrays = Arrays {
            queue: queue.inner.clone(),
            budget,
            live_bytes: 0,
            sent: 0,
            sent_bytes: 0,
            blocks: HashMap::new(),
        };
        if ARRAYS.set(Mutex::new(arrays)).is_err() {
            return Ok(false);
        }
        // Not a std `Once`: a child forked while another thread registers
        // would wait for ever at its first call (`sys::once`).
        static ATFORK: corral_core::sys::once::NoWaitOnce = corral_core::sys::once::NoWaitOnce::new();
        ATFORK.run(|| {
            // SAFETY: the handlers are plain functions that never unwind;
            // the child's only remaps and copies (see `after_fork_child`).
            unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_parent), Some(after_fork_child)) };
        });
        BASE.store(base as usize, Ordering::Release);
        END.store(base as usize + len as usize, Ordering::Release);
        MIN.store(min_bytes.max(1), Ordering::Release);
        OWNER.store(me, Ordering::Release);
    } else if !arrays().is_some_and(|a| Arc::ptr_eq(&a.queue, &queue.inner)) {
        return Ok(false);
    }
    let api_mod = py.import("numpy._core.multiarray").or_else(|_| py.import("numpy.core.multiarray"))?;
    let api = api_mod.getattr("_ARRAY_API")?;
    let api = api.cast::<PyCapsule>().map_err(|_| PyRuntimeError::new_err("numpy's _ARRAY_API is not a capsule"))?;
    // SAFETY: `api` is NumPy's C-API capsule, alive (we hold it); its
    // pointer is the table of `void *`, which has more than SET_HANDLER
    // entries from NumPy 1.22 on (checked above).
    let set_handler = unsafe {
        let table =
            ffi::PyCapsule_GetPointer(api.as_ptr(), ffi::PyCapsule_GetName(api.as_ptr())) as *const *const c_void;
        if table.is_null() {
            return Err(PyErr::fetch(py));
        }
        let f = *table.add(SET_HANDLER);
        if f.is_null() {
            return Err(PyRuntimeError::new_err("numpy has no PyDataMem_SetHandler"));
        }
        std::mem::transmute::<*const c_void, unsafe extern "C" fn(*mut ffi::PyObject) -> *mut ffi::PyObject>(f)
    };
    const NAME: &CStr = c"mem_handler";
    // SAFETY: the capsule points at a static that lives for the process;
    // NumPy reads it as a `PyDataMem_Handler` (layout above); the name is
    // a static C string. SetHandler returns a new reference (the old
    // handler) or null with an exception set.
    unsafe {
        let cap = ffi::PyCapsule_New(std::ptr::from_ref(&HANDLER.0) as *mut c_void, NAME.as_ptr(), None);
        if cap.is_null() {
            return Err(PyErr::fetch(py));
        }
        let old = set_handler(cap);
        ffi::Py_DecRef(cap);
        if old.is_null() {
            return Err(PyErr::fetch(py));
        }
        ffi::Py_DecRef(old);
    }
    Ok(true)
}

/// Frees the blocks of `queue`'s arena that dead processes were writing
/// or holding (a pool worker calls it at start: its dead predecessor's
/// arrays); returns how many.
#[pyfunction]
pub fn reclaim_dead_blocks(py: Python<'_>, queue: &SharedQueue) -> PyResult<usize> {
    let q = &queue.inner;
    py.detach(|| q.reclaim_dead_blocks(Some(Instant::now() + Duration::from_millis(100)))).map_err(queue_err)
}

/// Sets the size from which this process's allocator makes arrays in the
/// arena; returns the previous one, or 0 (and changes nothing) where the
/// allocator is not installed (a parent, a child forked from a worker).
/// A task lowers it around the making of an array it will return (a
/// DataLoader batch of 800 KB): born in the arena, the array travels
/// without the copy into it that sending it would make.
#[pyfunction]
pub fn set_array_min_bytes(min_bytes: usize) -> usize {
    if !is_owner() {
        return 0;
    }
    MIN.swap(min_bytes.max(1), Ordering::AcqRel)
}

/// What the allocator holds and has sent, for tests and stats.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct ArrayArenaStats {
    /// Arena blocks NumPy owns in this process now.
    pub live_blocks: usize,
    /// Their bytes.
    pub live_bytes: u64,
    /// Blocks sent without a copy since the allocator was installed.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
}

/// The allocator's figures in this process (zeros if it is not installed).
#[pyfunction]
pub fn array_arena_stats() -> ArrayArenaStats {
    match arrays() {
        Some(a) if is_owner() => ArrayArenaStats {
            live_blocks: a.blocks.len(),
            live_bytes: a.live_bytes,
            sent: a.sent,
            sent_bytes: a.sent_bytes,
        },
        _ => ArrayArenaStats { live_blocks: 0, live_bytes: 0, sent: 0, sent_bytes: 0 },
    }
}

/// One out-of-band buffer of a message being sent.
enum Buf {
    /// Copied (its export keeps it alive).
    Copy(Bytes),
    /// An arena block offered (`State::Offered`) at this address.
    Block(usize, u64),
}

/// Puts `(inband, buffers)` into `queue` (blocking) like
/// `SharedQueue.put`, except that a buffer that is one of this process's
/// array blocks (from its start) and that nothing else here references
/// travels without a copy. Empties `buffers` (so that its references are
/// dropped); returns how many buffers went without a copy.
#[pyfunction]
pub fn put_arrays(
    py: Python<'_>,
    queue: &SharedQueue,
    inband: &Bound<'_, PyAny>,
    buffers: &Bound<'_, PyList>,
) -> PyResult<usize> {
    let inband = Bytes::get(inband)?;
    let owner = is_owner() && arrays().is_some_and(|a| Arc::ptr_eq(&a.queue, &queue.inner));
    let mut bufs = Vec::with_capacity(buffers.len());
    for b in buffers.iter() {
        let bytes = Bytes::get(&b)?;
        let (p, len) = (bytes.slice().as_ptr() as usize, bytes.slice().len() as u64);
        let offered = owner
            && in_arena(p)
            && arrays().is_some_and(|mut a| match a.blocks.get_mut(&p) {
                Some(e) if e.state == State::Live && len <= e.len => {
                    e.state = State::Offered;
                    true
                }
                _ => false,
            });
        bufs.push(if offered { Buf::Block(p, len) } else { Buf::Copy(bytes) });
    }
    // Our references go (the list's and the exports'); a block whose array
    // nothing else holds is freed by NumPy now: `Released`.
    buffers.call_method0("clear")?;
    let mut released = Vec::new();
    if let Some(mut a) = arrays().filter(|_| owner) {
        for b in &bufs {
            if let Buf::Block(p, _) = b {
                if let Some(e) = a.blocks.get_mut(p).filter(|e| e.state == State::Released) {
                    released.push(*p);
                    let len = e.len;
                    a.blocks.remove(p);
                    a.live_bytes -= len;
                }
            }
        }
    }
    let mut parts: Vec<OutPart<'_>> = Vec::with_capacity(bufs.len());
    let (base, end) = (BASE.load(Ordering::Acquire), END.load(Ordering::Acquire));
    for b in &bufs {
        parts.push(match b {
            Buf::Copy(bytes) => OutPart::Bytes(bytes.slice()),
            Buf::Block(p, len) if released.contains(p) => OutPart::Block { offset: (*p - base) as u64, len: *len },
            Buf::Block(p, len) => {
                debug_assert!(*p + *len as usize <= end);
                // SAFETY: a block still `Offered`: NumPy's array lives, and
                // a free meanwhile is deferred until `settle`, so the bytes
                // stay valid; only read.
                OutPart::Bytes(unsafe { std::slice::from_raw_parts(*p as *const u8, *len as usize) })
            }
        });
    }
    // Without a deadline: a put that gave up would have freed the
    // adopted blocks, which a retry could not send again. Room comes: the
    // adopted blocks need none, arrays are born in the arena only below
    // `budget` (at most the pool's pressure point, 1/8 of the arena) of
    // it in use, and past that point the parent copies what it receives
    // out of the arena (`_shm_arrays.pressure`), so live data cannot fill it.
    let q = &*queue.inner;
    let inband = inband.slice();
    let r = py.detach(|| q.put_parts(inband, &parts, None));
    // Settle: offered blocks that were not sent are NumPy's again, or
    // freed now if NumPy let go of them during the put.
    if let Some(mut a) = arrays().filter(|_| owner) {
        for b in &bufs {
            let Buf::Block(p, len) = b else { continue };
            if released.contains(p) {
                if r.is_ok() {
                    a.sent += 1;
                    a.sent_bytes += len;
                }
                continue;
            }
            match a.blocks.get(p).map(|e| (e.state, e.offset, e.len)) {
                Some((State::Released, offset, elen)) => {
                    a.blocks.remove(p);
                    a.live_bytes -= elen;
                    let _ = a.queue.free_block(offset);
                }
                Some(_) => {
                    if let Some(e) = a.blocks.get_mut(p) {
                        e.state = State::Live;
                    }
                }
                None => {}
            }
        }
    }
    r.map_err(queue_err)?;
    Ok(released.len())
}

/// Adds this module's functions and classes to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install_array_allocator, m)?)?;
    m.add_function(wrap_pyfunction!(array_arena_stats, m)?)?;
    m.add_function(wrap_pyfunction!(put_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(set_array_min_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(reclaim_dead_blocks, m)?)?;
    m.add_class::<ArrayArenaStats>()
}
