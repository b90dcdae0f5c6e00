//! Descriptor hand-over between processes that are not parent and child.

use std::os::fd::{BorrowedFd, IntoRawFd};
use std::time::{Duration, Instant};

use corral_core::fdshare::{is_stalled, registrations, share, share_reusable, unshare, Fetch, Ticket, MIN_FETCH_WAIT};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::wait::{sliced, SLICE};

/// Registers `fd` with `register` (a broker function); `(address, pid, token)`.
fn register_fd(fd: i32, register: fn(BorrowedFd<'_>) -> corral_core::Result<Ticket>) -> PyResult<(Vec<u8>, u32, u64)> {
    if fd < 0 {
        return Err(PyValueError::new_err("bad descriptor"));
    }
    // SAFETY: the caller passes a descriptor open in this process for the
    // duration of the call; the broker only duplicates it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let t = register(borrowed).map_err(to_py)?;
    Ok((t.address, t.pid, t.token))
}

/// Registers a duplicate of `fd` with this process's broker for one
/// receiver; returns `(address, pid, token)`.
#[pyfunction]
pub fn share_fd(fd: i32) -> PyResult<(Vec<u8>, u32, u64)> {
    register_fd(fd, share)
}

/// Registers a duplicate of `fd` for any number of receivers until
/// `unshare_fd(token)`; returns `(address, pid, token)`.
#[pyfunction]
pub fn share_fd_reusable(fd: i32) -> PyResult<(Vec<u8>, u32, u64)> {
    register_fd(fd, share_reusable)
}

/// Withdraws a registration of `share_fd_reusable`.
#[pyfunction]
pub fn unshare_fd(token: u64) {
    unshare(token);
}

/// Registrations this process's broker holds now (for leak checks).
#[pyfunction]
pub fn shared_fd_count() -> usize {
    registrations()
}

/// Fetches a descriptor shared by `share_fd` in process `pid`; the caller
/// owns the returned number. Waits at most `timeout` seconds (at least the
/// core's minimum), or while the sender lives when `None`; either way in
/// slices with the GIL released, checking for signals between them. A
/// timeout that passes raises `TimeoutError` (ETIMEDOUT).
#[pyfunction]
#[pyo3(signature = (address, pid, token, timeout=None))]
pub fn fetch_fd(py: Python<'_>, address: Vec<u8>, pid: u32, token: u64, timeout: Option<f64>) -> PyResult<i32> {
    let deadline = timeout
        .map(|t| Duration::try_from_secs_f64(t.max(0.0)).map_err(|_| PyValueError::new_err("bad timeout")))
        .transpose()?
        .map(|t| Instant::now() + t.max(MIN_FETCH_WAIT));
    let ticket = Ticket { address, pid, token };
    // `sliced` always passes a slice's end; the fallback is never used.
    let until = |u: Option<Instant>| u.unwrap_or_else(|| Instant::now() + SLICE);
    let fetch = sliced(py, deadline, is_stalled, |u| Fetch::begin(&ticket, until(u)))?.map_err(to_py)?;
    let fd = sliced(py, deadline, is_stalled, |u| fetch.finish(until(u)))?.map_err(to_py)?;
    Ok(fd.into_raw_fd())
}

/// Duplicates `fd` into a new descriptor that child processes may inherit
/// (no close-on-exec is set by the core's spawner for passed numbers).
#[pyfunction]
pub fn dup_fd(fd: i32) -> PyResult<i32> {
    if fd < 0 {
        return Err(PyValueError::new_err("bad descriptor"));
    }
    // SAFETY: as in `share_fd`.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(|e| to_py(corral_core::CoreError::os("dup", e)))?;
    Ok(owned.into_raw_fd())
}
