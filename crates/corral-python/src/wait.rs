//! Blocking calls from Python: the GIL is released while waiting, and the
//! wait is cut into slices so that Ctrl-C (a pending signal) is seen within
//! `SLICE` even when the caller waits for ever.

use std::time::{Duration, Instant};

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

/// Runs `op(slice_deadline)` with the GIL released until it succeeds, fails
/// with an error other than `retry`, or the overall `deadline` passes (then
/// that last `retry` error is returned). Signals are checked between slices.
pub fn sliced<T: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    is_retry: impl Fn(&CoreError) -> bool + Sync,
    op: impl Fn(Option<Instant>) -> CoreResult<T> + Sync,
) -> PyResult<std::result::Result<T, CoreError>> {
    loop {
        let now = Instant::now();
        let slice_end = now + SLICE;
        let until = deadline.map_or(slice_end, |d| d.min(slice_end));
        let r = py.detach(|| op(Some(until)));
        match r {
            Err(ref e) if is_retry(e) && deadline.is_none_or(|d| Instant::now() < d) => {
                py.check_signals()?;
            }
            other => return Ok(other),
        }
    }
}
