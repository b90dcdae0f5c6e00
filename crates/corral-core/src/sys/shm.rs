//! Anonymous shared memory: a `memfd_create` file mapped `MAP_SHARED`.
//!
//! Why memfd and not `shm_open`: a memfd has no name under `/dev/shm`, so a
//! crashed process cannot leak it; the kernel frees the memory when the last
//! descriptor and the last mapping are gone. Other processes get the memory
//! by inheriting the descriptor or receiving it over a Unix socket.
//! Pages are allocated on first touch, so a large mapping costs nothing
//! until it is used, except under an address-space limit (`ulimit -v`,
//! RLIMIT_AS, common on HPC clusters and in some containers), which counts
//! every byte mapped. `fit_reservation` sizes the blocks whose size is ours
//! to choose against that limit, and a mapping that still does not fit
//! fails with `CoreError::NoMemory` naming the limit.
//!
//! Placement: a mapping of more than `MAP_ALIGN` (64 KiB) starts on a
//! 64 KiB boundary of virtual address, in every process that maps the
//! file (`map_aligned`: a reservation `MAP_ALIGN` larger, the file mapped
//! `MAP_FIXED` at its first boundary, the rest given back). A file offset
//! and its address then agree modulo 64 KiB everywhere, and so do the
//! kernel's read fault-around windows (`fault_around_bytes`, 64 KiB: a
//! read fault maps the cached pages of the aligned window around it): a
//! queue's arena places its large blocks on those windows (`arena.rs`),
//! so a process reading one maps no page of a neighbour. Small mappings
//! (a sync primitive's page) are placed where the kernel puts them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rustix::fs::{fstat, ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

use crate::error::{CoreError, Result};

/// A shared mapping of a whole memfd. Dropping it unmaps the memory and
/// closes this process's descriptor; other holders keep theirs.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access to its contents
// goes through raw pointers and atomics whose users synchronize themselves.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only hands out the base pointer.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates a zero-filled anonymous block of `len` bytes.
    pub fn create(name: &str, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(CoreError::Invalid("shared memory size must be > 0".into()));
        }
        let fd = memfd_create(name, MemfdFlags::CLOEXEC).map_err(|e| CoreError::os("memfd_create", e))?;
        ftruncate(&fd, len as u64).map_err(|e| CoreError::os("ftruncate(memfd)", e))?;
        Self::map(fd, len)
    }

    /// Maps a memfd received from another process, whole.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        let st = fstat(&fd).map_err(|e| CoreError::os("fstat(memfd)", e))?;
        let len = usize::try_from(st.st_size).map_err(|_| CoreError::corrupt("shared memory", "negative size"))?;
        if len == 0 {
            return Err(CoreError::corrupt("shared memory", "descriptor has size 0"));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        let aligned = if len > MAP_ALIGN { map_aligned(&fd, len) } else { None };
        let raw = match aligned {
            Some(raw) => raw,
            // SAFETY: a fresh mapping at an address the kernel chooses
            // cannot alias any Rust object; the fd is a regular memfd of at
            // least `len` bytes.
            None => {
                unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0) }
                    .map_err(|e| match e {
                        rustix::io::Errno::NOMEM => no_room_error(len as u64),
                        e => CoreError::os("mmap", e),
                    })?
            }
        };
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| CoreError::Invalid("mmap returned null".into()))?;
        Ok(SharedMemory { fd, ptr, len })
    }

    /// Base address of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty block cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The raw descriptor number in this process.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A mapping of more than this many bytes starts on a multiple of it (the
/// kernel's default read fault-around window, `fault_around_bytes`).
pub const MAP_ALIGN: usize = 64 << 10;

/// Maps the first `len` bytes of `fd` shared, at an address that is a
/// multiple of `MAP_ALIGN`: reserves `len + MAP_ALIGN - page` bytes of
/// address space (no access, no memory), maps the file over the
/// reservation's first aligned address (`MAP_FIXED` replaces that part of
/// it), and unmaps the reservation's head and tail. `None` if a step fails
/// (the reservation's `MAP_ALIGN` more under a tight `ulimit -v`): the
/// caller maps where the kernel chooses, which works the same, without
/// the alignment.
fn map_aligned(fd: &OwnedFd, len: usize) -> Option<*mut std::ffi::c_void> {
    let page = rustix::param::page_size();
    let span = len.checked_add(MAP_ALIGN - page)?;
    // SAFETY: a fresh reservation at an address the kernel chooses, with
    // no access: it aliases nothing, and nothing reads it.
    let res = unsafe {
        mmap_anonymous(std::ptr::null_mut(), span, ProtFlags::empty(), MapFlags::PRIVATE | MapFlags::NORESERVE)
    }
    .ok()? as usize;
    let start = res.next_multiple_of(MAP_ALIGN);
    let end = (start + len).next_multiple_of(page);
    // SAFETY: [start, start + len) lies inside the reservation just made
    // (start - res < MAP_ALIGN, page-aligned), which nothing else uses:
    // MAP_FIXED replaces only our own pages. The fd is a regular memfd of
    // at least `len` bytes.
    let mapped = unsafe {
        mmap(start as *mut _, len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED | MapFlags::FIXED, fd, 0)
    };
    // SAFETY (both unmaps): each range is a part of our reservation that the
    // file mapping does not cover (or the whole reservation, on failure),
    // page-aligned; no Rust object lives in it.
    unsafe {
        if mapped.is_err() {
            let _ = munmap(res as *mut _, span);
            return None;
        }
        if start > res {
            let _ = munmap(res as *mut _, start - res);
        }
        if res + span > end {
            let _ = munmap(end as *mut _, res + span - end);
        }
    }
    Some(start as *mut _)
}

/// Smallest reservation `fit_reservation` proposes.
pub const MIN_RESERVATION: u64 = 16 << 20;

/// The current address-space limit (RLIMIT_AS soft limit) and the bytes
/// this process maps now; `None` without a limit.
pub fn address_space() -> Option<(u64, u64)> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::As).current?;
    // /proc/self/statm: the first field is the mapped size in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_ascii_whitespace().next()?.parse().ok()?;
    Some((limit, pages * rustix::param::page_size() as u64))
}

/// How many bytes to reserve for a block that would like `wanted`: all of
/// it without an address-space limit; under a limit, at most `1/share` of
/// the room left (and at least `MIN_RESERVATION`), so that the process and
/// the other blocks it maps later still fit. Each later block takes a share
/// of what is left then, so the sum of any number of them stays under the
/// limit.
pub fn fit_reservation(wanted: u64, share: u64) -> u64 {
    match address_space() {
        None => wanted,
        Some((limit, used)) => {
            let room = limit.saturating_sub(used) / share.max(1);
            wanted.min(room.max(MIN_RESERVATION))
        }
    }
}

fn no_room_error(len: u64) -> CoreError {
    let mib = |b: u64| b >> 20;
    CoreError::NoMemory(match address_space() {
        Some((limit, used)) => format!(
            "cannot map {} MiB of shared memory: the address-space limit (RLIMIT_AS, `ulimit -v`) is {} MiB \
             and this process maps {} MiB already; raise the limit, or ask for less (for a corral.Queue, \
             a smaller arena_bytes)",
            mib(len),
            mib(limit),
            mib(used)
        ),
        None => format!("cannot map {} MiB of shared memory: out of memory (mmap: ENOMEM)", mib(len)),
    })
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // borrow of it outlives `self` (users hold an Arc<SharedMemory>).
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mapping_of_the_same_fd_sees_writes() {
        let a = SharedMemory::create("t", 4096).unwrap();
        let fd2 = a.fd().try_clone_to_owned().unwrap();
        let b = SharedMemory::open(fd2).unwrap();
        // SAFETY: both mappings are 4096 bytes long; offset 10 is in range.
        unsafe {
            a.as_ptr().add(10).write(42);
            assert_eq!(b.as_ptr().add(10).read(), 42);
        }
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn a_reservation_is_all_of_it_without_a_limit_and_a_share_of_the_room_under_one() {
        // The test process runs without RLIMIT_AS (cargo test); a child
        // with a limit is tested from Python (tests/test_limits.py).
        if address_space().is_none() {
            assert_eq!(fit_reservation(16 << 30, 4), 16 << 30);
        } else {
            assert!(fit_reservation(u64::MAX, 4) < u64::MAX);
        }
    }

    #[test]
    fn a_mapping_of_more_than_64_kib_starts_on_a_64_kib_boundary_in_every_mapping() {
        let a = SharedMemory::create("t", (1 << 20) + 100).unwrap();
        let maps: Vec<SharedMemory> =
            (0..4).map(|_| SharedMemory::open(a.fd().try_clone_to_owned().unwrap()).unwrap()).collect();
        for m in std::iter::once(&a).chain(&maps) {
            assert_eq!(m.as_ptr() as usize % MAP_ALIGN, 0, "{:p}", m.as_ptr());
            assert_eq!(m.len(), (1 << 20) + 100);
        }
        // SAFETY: the last byte of both mappings of the same file.
        unsafe {
            a.as_ptr().add((1 << 20) + 99).write(7);
            assert_eq!(maps[3].as_ptr().add((1 << 20) + 99).read(), 7);
        }
        // The file's mapping is exactly its length (page-rounded): the
        // reservation's tail is not part of it.
        let lines = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = lines.lines().find(|l| l.starts_with(&format!("{:x}-", a.as_ptr() as usize))).unwrap();
        let (lo, hi) = line.split_whitespace().next().unwrap().split_once('-').unwrap();
        let span = usize::from_str_radix(hi, 16).unwrap() - usize::from_str_radix(lo, 16).unwrap();
        assert_eq!(span, ((1usize << 20) + 100).next_multiple_of(rustix::param::page_size()));
    }

    #[test]
    fn zero_size_is_an_error() {
        assert!(SharedMemory::create("t", 0).is_err());
    }
}
