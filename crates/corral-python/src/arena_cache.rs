//! A pool worker's freed pymalloc arenas, kept mapped and warm for the next
//! task instead of unmapped and faulted in again.
//!
//! Why: CPython's small-object allocator takes its memory in arenas (1 MiB
//! mappings) and unmaps an arena as soon as its last object is freed, keeping
//! at most one empty arena. A map chunk of a tiny function (64 k ints in,
//! 64 k ints out: 4 MB of small objects) frees everything at its end, so the
//! next chunk faults the same amount back in, page by page (a fresh page
//! costs a zeroing fault: 1.5-2 GB/s on this VM). Measured on the 2-core
//! VM (2026-12-07, `ProcessPoolExecutor.map(square, list(range(1_000_000)))`):
//! the workers took 7-9 k minor faults per map, 15.6% of their CPU
//! (`perf record` of a worker: `clear_page_erms`, `exc_page_fault`,
//! `unmap_page_range`...), about 20 ns per item of the ~145 ns both workers
//! spend on one.
//!
//! `install` puts this allocator in front of the one pymalloc used before
//! (`PyObject_SetArenaAllocator`, CPython's documented hook): a freed arena
//! goes to a list (most recent last) while the list holds less than the
//! limit, else back to the previous allocator; a new arena is the last one
//! listed of the same size, else the previous allocator's. Every arena comes
//! from the previous allocator and every arena not kept goes back to it, so
//! arenas pymalloc had before the install are handled alike. pymalloc calls
//! both functions with the GIL held; the list has its own lock anyway (one
//! uncontended lock per MiB). The kept arenas count in the worker's resident
//! memory (`max_memory_per_child`): the limit is small (`_worker.ARENA_CACHE`).

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use pyo3::ffi;
use pyo3::prelude::*;

/// The arena allocator pymalloc used before `install`.
struct Previous(ffi::PyObjectArenaAllocator);

// SAFETY: `ctx` and the two functions are CPython's default arena allocator
// (or an earlier hook's); pymalloc calls them from whichever thread holds
// the GIL of the interpreter allocating (subinterpreters with their own GIL
// share this allocator: hence the lock on `KEPT`), and so do we (from
// inside pymalloc's calls to us, and from `keep_arenas` with the GIL held).
unsafe impl Send for Previous {}
// SAFETY: as above; the value is never written after `install` set it.
unsafe impl Sync for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();
/// Freed arenas kept: (address, size), the most recently freed last.
static KEPT: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Most bytes of arenas kept.
static LIMIT: AtomicUsize = AtomicUsize::new(0);

fn kept() -> MutexGuard<'static, Vec<(usize, usize)>> {
    // Nothing panics while the lock is held; a poisoned list is still valid.
    KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    {
        let mut list = kept();
        if let Some(i) = list.iter().rposition(|&(_, s)| s == size) {
            return list.swap_remove(i).0 as *mut c_void;
        }
    }
    match PREVIOUS.get() {
        Some(Previous(prev)) => match prev.alloc {
            Some(f) => f(prev.ctx, size),
            None => ptr::null_mut(),
        },
        None => ptr::null_mut(),
    }
}

extern "C" fn free(_ctx: *mut c_void, arena: *mut c_void, size: usize) {
    if arena.is_null() {
        return;
    }
    {
        let mut list = kept();
        let held: usize = list.iter().map(|&(_, s)| s).sum();
        if held.saturating_add(size) <= LIMIT.load(Ordering::Relaxed) {
            list.push((arena as usize, size));
            return;
        }
    }
    if let Some(Previous(prev)) = PREVIOUS.get() {
        if let Some(f) = prev.free {
            f(prev.ctx, arena, size);
        }
    }
}

/// Keeps up to `max_bytes` of freed object arenas mapped in this process,
/// for the next allocations (see the module doc). A second call changes
/// the limit and gives back the kept arenas past it (0: all of them, and
/// none kept from then on). False if this interpreter has no arena
/// allocator to wrap.
#[pyfunction]
pub fn keep_arenas(_py: Python<'_>, max_bytes: usize) -> bool {
    LIMIT.store(max_bytes, Ordering::Relaxed);
    if let Some(Previous(prev)) = PREVIOUS.get() {
        // A lower limit gives back what it no longer allows, oldest first.
        let surplus: Vec<(usize, usize)> = {
            let mut list = kept();
            let mut held: usize = list.iter().map(|&(_, s)| s).sum();
            let mut cut = 0;
            while held > max_bytes && cut < list.len() {
                held -= list[cut].1;
                cut += 1;
            }
            list.drain(..cut).collect()
        };
        if let Some(f) = prev.free {
            for (arena, size) in surplus {
                f(prev.ctx, arena as *mut c_void, size);
            }
        }
        return true;
    }
    let mut prev = ffi::PyObjectArenaAllocator { ctx: ptr::null_mut(), alloc: None, free: None };
    // SAFETY: the GIL is held (`_py`); the call fills `prev`, a valid struct.
    unsafe { ffi::PyObject_GetArenaAllocator(&mut prev) };
    if prev.alloc.is_none() || prev.free.is_none() {
        return false;
    }
    if PREVIOUS.set(Previous(prev)).is_err() {
        return true; // set by another call meanwhile (both hold the GIL: cannot happen)
    }
    let mut mine = ffi::PyObjectArenaAllocator { ctx: ptr::null_mut(), alloc: Some(alloc), free: Some(free) };
    // SAFETY: the GIL is held; CPython copies the struct; `PREVIOUS` is set
    // before pymalloc can call `alloc` or `free`.
    unsafe { ffi::PyObject_SetArenaAllocator(&mut mine) };
    true
}

/// Bytes of freed arenas kept now.
#[pyfunction]
pub fn kept_arena_bytes() -> usize {
    kept().iter().map(|&(_, s)| s).sum()
}
