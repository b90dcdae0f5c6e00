//! `_core.ShmBlock`: a received arena block, exposed through the buffer
//! protocol so that `pickle.loads(..., buffers=...)` builds numpy arrays as
//! views on shared memory. The block is returned to the arena when the last
//! view of it is collected. A raw `PickleBuffer` sent through a queue
//! arrives as one: it pickles again (as a `PickleBuffer` of itself), so it
//! can be sent on.

use std::ffi::c_int;
use std::sync::Arc;

use corral_core::channel::queue::SharedQueue;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A block of a queue's shared arena that this process holds.
#[pyclass(module = "corral._core", frozen)]
pub struct ShmBlock {
    queue: Arc<SharedQueue>,
    offset: u64,
    len: u64,
    ptr: usize,
}

impl ShmBlock {
    /// Wraps a block received from `queue`; frees it on drop.
    pub fn new(queue: Arc<SharedQueue>, offset: u64, len: u64) -> corral_core::Result<Self> {
        let ptr = queue.block_ptr(offset, len)? as usize;
        Ok(ShmBlock { queue, offset, len, ptr })
    }
}

#[pymethods]
impl ShmBlock {
    fn __len__(&self) -> usize {
        self.len as usize
    }

    fn __repr__(&self) -> String {
        format!("<corral._core.ShmBlock of {} bytes>", self.len)
    }

    /// Pickling, so that a received raw buffer can be sent on: decided by
    /// `corral._pickle.reduce_received_buffer`.
    fn __reduce_ex__<'py>(slf: Bound<'py, Self>, protocol: i32) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("corral._pickle")?.call_method1("reduce_received_buffer", (slf, protocol))
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("null view"));
        }
        let (ptr, len) = {
            let b = slf.get();
            (b.ptr, b.len)
        };
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("block too large"))?;
        // SAFETY: `view` is valid (CPython's contract, checked non-null);
        // [ptr, ptr+len) is this block, mapped for as long as `slf` lives,
        // and FillInfo takes a reference to `slf` that the view keeps.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr as *mut _, len, 0, flags) };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

impl Drop for ShmBlock {
    fn drop(&mut self) {
        let _ = self.queue.free_block(self.offset);
    }
}
