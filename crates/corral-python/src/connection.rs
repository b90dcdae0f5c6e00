//! `_core.Connection`: one end of a pipe (framed messages on a socket).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use corral_core::channel::pipe::{pipe as core_pipe, Connection as CoreConn};
use corral_core::CoreError;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::conn_err;
use crate::wait::{deadline, wait};

/// One end of a pipe.
#[pyclass(module = "corral._core", frozen)]
pub struct Connection {
    inner: RwLock<Option<Arc<CoreConn>>>,
}

impl Connection {
    fn wrap(c: CoreConn) -> Self {
        Connection { inner: RwLock::new(Some(Arc::new(c))) }
    }

    fn conn(&self) -> PyResult<Arc<CoreConn>> {
        self.inner
            .read()
            .map_err(|_| PyOSError::new_err("connection lock poisoned"))?
            .clone()
            .ok_or_else(|| PyOSError::new_err("handle is closed"))
    }
}

/// Creates a pipe: two connected ends.
#[pyfunction]
#[pyo3(signature = (duplex=true))]
pub fn pipe(duplex: bool) -> PyResult<(Connection, Connection)> {
    let (a, b) = core_pipe(duplex).map_err(|e| conn_err(e, false))?;
    Ok((Connection::wrap(a), Connection::wrap(b)))
}

#[pymethods]
impl Connection {
    /// Wraps a connected socket descriptor, taking ownership of it.
    #[staticmethod]
    fn from_fd(fd: i32, readable: bool, writable: bool) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("bad descriptor"));
        }
        // SAFETY: the caller hands over an open socket it owns and never
        // uses the number again.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Connection::wrap(CoreConn::new(owned, readable, writable)))
    }

    /// Sends the bytes of a bytes-like object as one message.
    fn send_bytes(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let conn = self.conn()?;
        let buf =
            PyBuffer::<u8>::get(data).map_err(|_| PyTypeError::new_err("send_bytes needs a bytes-like object"))?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("buffer must be C-contiguous"));
        }
        let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
        py.detach(|| {
            // SAFETY: the export `buf` keeps the contiguous range valid
            // until it is dropped, after this closure returns.
            let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            conn.send(&[bytes])
        })
        .map_err(|e| conn_err(e, true))
    }

    /// Receives one message as bytes. Raises EOFError when the other end is
    /// closed (or its process died) and nothing is left.
    fn recv_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let conn = self.conn()?;
        // A small message usually waits in the read-ahead buffer or on the
        // socket already: try once without releasing the GIL.
        let got = match conn.recv_until(Some(Instant::now())).map_err(|e| conn_err(e, false))? {
            Some(data) => Some(data),
            None => wait(py, None, |slice| conn.recv_until(Some(slice.end)))?.map_err(|e| conn_err(e, false))?,
        };
        // Without a deadline the wait ends only with a message or an error.
        let data = got.unwrap_or_default();
        Ok(PyBytes::new(py, &data))
    }

    /// True if a message (or end-of-file) is ready within `timeout`
    /// seconds (None: wait for ever).
    #[pyo3(signature = (timeout=0.0))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let conn = self.conn()?;
        let ready = wait(py, deadline(timeout)?, |slice| {
            Ok(conn.poll(Some(slice.end.saturating_duration_since(Instant::now())))?.then_some(()))
        })?;
        Ok(ready.map_err(|e| conn_err(e, false))?.is_some())
    }

    /// The socket's descriptor number.
    fn fileno(&self) -> PyResult<i32> {
        Ok(self.conn()?.raw_fd())
    }

    /// True if this end may receive.
    #[getter]
    fn readable(&self) -> PyResult<bool> {
        Ok(self.conn()?.readable())
    }

    /// True if this end may send.
    #[getter]
    fn writable(&self) -> PyResult<bool> {
        Ok(self.conn()?.writable())
    }

    /// True once `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().map(|g| g.is_none()).unwrap_or(true)
    }

    /// Closes this handle. Idempotent.
    fn close(&self) {
        if let Ok(mut g) = self.inner.write() {
            g.take();
        }
    }

    /// Duplicates the socket (for handing to another process).
    fn dup_fd(&self) -> PyResult<i32> {
        let conn = self.conn()?;
        let fd = conn.fd().try_clone_to_owned().map_err(|e| conn_err(CoreError::os("dup", e), false))?;
        Ok(fd.into_raw_fd())
    }
}
