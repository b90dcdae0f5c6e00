//! `_core.SharedBuffer`: a whole memfd exposed through the buffer protocol,
//! the memory behind `corral.share(array)`. The creator fills it, then
//! seals it; from then on every view, here and in other processes, is
//! read-only.

use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use corral_core::sys::shm::SharedMemory;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::to_py;

/// Shared memory holding one array's bytes.
#[pyclass(module = "corral._core", frozen)]
pub struct SharedBuffer {
    shm: SharedMemory,
    len: usize,
    sealed: AtomicBool,
}

#[pymethods]
impl SharedBuffer {
    /// A zero-filled, writable buffer of `nbytes` bytes.
    #[new]
    fn new(nbytes: usize) -> PyResult<Self> {
        // A memfd cannot be empty; an empty array still gets a page.
        let shm = SharedMemory::create("corral-shared", nbytes.max(1)).map_err(to_py)?;
        Ok(SharedBuffer { shm, len: nbytes, sealed: AtomicBool::new(false) })
    }

    /// Maps the buffer behind `fd` (taking ownership), read-only, `nbytes` long.
    #[staticmethod]
    fn from_fd(fd: i32, nbytes: usize) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("bad descriptor"));
        }
        // SAFETY: the caller hands over an open descriptor it owns and never
        // uses it again.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let shm = SharedMemory::open(owned).map_err(to_py)?;
        if nbytes > shm.len() {
            return Err(PyValueError::new_err(format!("shared buffer holds {} bytes, not {nbytes}", shm.len())));
        }
        Ok(SharedBuffer { shm, len: nbytes, sealed: AtomicBool::new(true) })
    }

    /// Makes every later view read-only.
    fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
    }

    /// The memfd.
    fn fileno(&self) -> i32 {
        self.shm.fd().as_raw_fd()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("null view"));
        }
        let (ptr, len, readonly) = {
            let b = slf.get();
            (b.shm.as_ptr(), b.len, b.sealed.load(Ordering::SeqCst))
        };
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is valid (CPython's contract, checked non-null);
        // [ptr, ptr+len) lies in this mapping, which lives as long as `slf`,
        // and FillInfo takes a reference to `slf` that the view keeps. It
        // refuses a writable request on a read-only buffer.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast(), len, c_int::from(readonly), flags) };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
