//! Blocking calls from Python: the one way the bindings wait.
//!
//! Every call that may block (`Lock.acquire`, `Queue.get`, `Connection.recv`,
//! `ChildProcess.join`, a broker fetch, ...) goes through [`wait`]: the GIL
//! is released while waiting, and the wait is cut into slices of at most
//! [`SLICE`] so that Ctrl-C (a pending signal) is seen within `SLICE` even
//! when the caller waits for ever. A signal handler that raises ends the
//! wait with its exception; one that returns lets the wait go on. [`sliced`]
//! is the same wait for a core call that reports "not yet" as an error
//! (`Full`, `Empty`, `Timeout`, a stalled broker).

use std::time::{Duration, Instant};

use corral_core::sys::deadline::Deadline;
use corral_core::{CoreError, Result as CoreResult};
use pyo3::prelude::*;

/// Longest stretch spent in Rust before pending signals are checked.
pub const SLICE: Duration = Duration::from_millis(100);

/// A Python timeout (`None` or seconds) as a deadline; negative counts as 0.
pub fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(pyo3::exceptions::PyValueError::new_err("timeout is NaN")),
        Some(t) => Ok(Some(Instant::now() + Duration::from_secs_f64(t.clamp(0.0, 1e9)))),
    }
}

/// One slice of a [`wait`].
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    /// When this slice ends: the caller's deadline or `SLICE` from now,
    /// whichever comes first.
    pub end: Instant,
    /// True when `end` is the caller's deadline: nothing follows this slice
    /// (e.g. a condition waiter gives its slot back at the end of it).
    pub last: bool,
}

/// Runs `op(slice)` with the GIL released, slice after slice, until it
/// gives `Ok(Some(_))`, an error, or `deadline` passes (then `Ok(None)`);
/// `op` always runs at least once, so a passed deadline is one try. Between
/// slices pending signals are checked: the `Err` of the outer result is
/// the exception a signal handler raised (nothing else raises there).
pub fn wait<T: Send, E: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut op: impl FnMut(Slice) -> Result<Option<T>, E> + Send,
) -> PyResult<Result<Option<T>, E>> {
    let deadline = Deadline::from(deadline);
    loop {
        let end = deadline.capped(SLICE);
        let slice = Slice { end: end.instant().unwrap_or_else(Instant::now), last: end == deadline };
        match py.detach(|| op(slice)) {
            Ok(None) if !deadline.expired() => py.check_signals()?,
            other => return Ok(other),
        }
    }
}

/// [`wait`] for `op(slice_end)`, a core call that fails with an error
/// `is_retry` accepts when its slice ended first: returns what it gave
/// once it succeeds or fails otherwise, or that last `retry` error once the
/// overall `deadline` passes.
pub fn sliced<T: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    is_retry: impl Fn(&CoreError) -> bool + Sync,
    op: impl Fn(Option<Instant>) -> CoreResult<T> + Sync,
) -> PyResult<std::result::Result<T, CoreError>> {
    let mut last_retry = None;
    let r = wait(py, deadline, |slice| match op(Some(slice.end)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_retry(&e) => {
            last_retry = Some(e);
            Ok(None)
        }
        Err(e) => Err(e),
    })?;
    Ok(match r {
        Ok(Some(v)) => Ok(v),
        // Only a retry error ends a wait without a value.
        Ok(None) => Err(last_retry.unwrap_or(CoreError::Timeout)),
        Err(e) => Err(e),
    })
}
