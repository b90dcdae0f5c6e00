//! Anonymous shared memory: a `memfd_create` file mapped `MAP_SHARED`.
//!
//! Why memfd and not `shm_open`: a memfd has no name under `/dev/shm`, so a
//! crashed process cannot leak it; the kernel frees the memory when the last
//! descriptor and the last mapping are gone. Other processes get the memory
//! by inheriting the descriptor or receiving it over a Unix socket.
//! Pages are allocated on first touch, so a large mapping costs nothing
//! until it is used.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use rustix::fs::{fstat, ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

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
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias any Rust object; the fd is a regular memfd of at least `len`.
        let raw =
            unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0) }
                .map_err(|e| CoreError::os("mmap", e))?;
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
    fn zero_size_is_an_error() {
        assert!(SharedMemory::create("t", 0).is_err());
    }
}
