//! `_core.Barrier`: the core's process-shared `threading.Barrier`
//! (`corral_core::sync::barrier`). `wait` runs the whole protocol, the
//! action included; the other methods are its steps, for `wait_async`.
//! Waits release the GIL, in slices (`wait::sliced`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use corral_core::sync::barrier::{self, Arrival, BarrierError};
use corral_core::{CoreError, Result as CoreResult};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::wait::{deadline, sliced};

pyo3::import_exception!(threading, BrokenBarrierError);

/// The exception for a barrier error.
fn barrier_err(e: BarrierError) -> PyErr {
    match e {
        BarrierError::Broken => BrokenBarrierError::new_err(()),
        BarrierError::PartyDied(_) => BrokenBarrierError::new_err(e.to_string()),
        BarrierError::TimedOut => pyo3::exceptions::PyTimeoutError::new_err("timed out"),
        BarrierError::TooManyWaiters => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A slice's result for `sliced`: `TimedOut` (the slice ended) is the one
/// error to retry; every other outcome ends the wait.
fn retry<T>(r: Result<T, BarrierError>) -> CoreResult<Result<T, BarrierError>> {
    match r {
        Err(BarrierError::TimedOut) => Err(CoreError::Timeout),
        other => Ok(other),
    }
}

fn is_timeout(e: &CoreError) -> bool {
    matches!(e, CoreError::Timeout)
}

/// A process-shared `threading.Barrier` (its action and default timeout
/// are kept by `corral.Barrier`).
#[pyclass(module = "corral._core", frozen, subclass)]
pub struct Barrier {
    pub(crate) inner: barrier::Barrier,
}

impl Barrier {
    /// Waits in `slot` until the round ends; `d` is the caller's deadline.
    /// At the deadline the barrier breaks (`expire`) unless the action of
    /// the round runs: then its end decides. Interrupted (a signal's
    /// exception): the slot is given back without breaking.
    fn wait_slot(&self, py: Python<'_>, slot: usize, d: Option<Instant>) -> PyResult<()> {
        let b = &self.inner;
        let op = |until: Option<Instant>| retry(b.wait(slot, until));
        let waited = |d: Option<Instant>| match sliced(py, d, is_timeout, op) {
            Ok(r) => Ok(r),
            Err(e) => {
                py.detach(|| b.withdraw(slot));
                Err(e)
            }
        };
        let outcome = match waited(d)? {
            Ok(o) => o,
            Err(CoreError::Timeout) => match py.detach(|| b.expire(slot)) {
                Err(BarrierError::TimedOut) => match waited(None)? {
                    Ok(o) => o,
                    Err(e) => return Err(to_py(e)),
                },
                other => other,
            },
            Err(e) => return Err(to_py(e)),
        };
        outcome.map_err(barrier_err)
    }
}

#[pymethods]
impl Barrier {
    /// A barrier for `parties` parties, or (`_fd`) the one behind a
    /// descriptor from another process (ownership taken).
    #[new]
    #[pyo3(signature = (parties=1, *, _fd=None))]
    fn new(parties: i64, _fd: Option<i32>) -> PyResult<Self> {
        if let Some(fd) = _fd {
            if fd < 0 {
                return Err(PyValueError::new_err("bad descriptor"));
            }
            // SAFETY: the caller hands over an open descriptor it owns and
            // never uses the number again.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            return Ok(Barrier { inner: barrier::Barrier::open(owned).map_err(to_py)? });
        }
        if parties < 1 {
            return Err(PyValueError::new_err("parties must be > 0"));
        }
        let parties = u32::try_from(parties)
            .map_err(|_| PyValueError::new_err(format!("parties must be at most {}", barrier::MAX_PARTIES)))?;
        Ok(Barrier { inner: barrier::Barrier::new(parties).map_err(to_py)? })
    }

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// Waits for the round: the last party runs `action` (its exception
    /// breaks the barrier and propagates), then releases the others.
    /// Returns the caller's index; BrokenBarrierError if the barrier is or
    /// gets broken, `timeout` (seconds, None: none) passing breaks it.
    #[pyo3(signature = (timeout=None, action=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>, action: Option<Bound<'_, PyAny>>) -> PyResult<u32> {
        let b = &self.inner;
        let d = deadline(timeout)?;
        // As in `threading`, where arrivals wait for the condition's lock
        // while an action runs: no deadline here; a dead releaser breaks it.
        let arrival = match sliced(py, None, is_timeout, |until| retry(b.arrive(until)))? {
            Ok(a) => a.map_err(barrier_err)?,
            Err(e) => return Err(to_py(e)),
        };
        match arrival {
            Arrival::Last { index } => {
                if let Some(action) = action {
                    if let Err(e) = action.call0() {
                        py.detach(|| b.fail_round());
                        return Err(e);
                    }
                }
                py.detach(|| b.pass_round()).map_err(barrier_err)?;
                Ok(index)
            }
            Arrival::Waiting { index, slot } => {
                self.wait_slot(py, slot, d)?;
                Ok(index)
            }
        }
    }

    /// Arrives without waiting: None while the previous round's action
    /// runs (watch the barrier, slot None), else `(index, slot)` with slot
    /// None for the last party (run the action, then `pass_round` or
    /// `fail_round`).
    fn try_arrive(&self, py: Python<'_>) -> PyResult<Option<(u32, Option<usize>)>> {
        let b = &self.inner;
        Ok(py.detach(|| b.try_arrive()).map_err(barrier_err)?.map(|a| match a {
            Arrival::Last { index } => (index, None),
            Arrival::Waiting { index, slot } => (index, Some(slot)),
        }))
    }

    /// The last party, after its action: releases the round.
    fn pass_round(&self, py: Python<'_>) -> PyResult<()> {
        let b = &self.inner;
        py.detach(|| b.pass_round()).map_err(barrier_err)
    }

    /// The last party, whose action failed: breaks the barrier.
    fn fail_round(&self, py: Python<'_>) {
        let b = &self.inner;
        py.detach(|| b.fail_round());
    }

    /// True once the round of `slot` passed (the slot is then free);
    /// False while it goes on; BrokenBarrierError if it broke.
    fn poll(&self, py: Python<'_>, slot: usize) -> PyResult<bool> {
        let b = &self.inner;
        match py.detach(|| b.wait(slot, Some(Instant::now()))) {
            Ok(()) => Ok(true),
            Err(BarrierError::TimedOut) => Ok(false),
            Err(e) => Err(barrier_err(e)),
        }
    }

    /// The waiter's timeout passed: breaks the barrier (BrokenBarrierError)
    /// unless the round passed meanwhile (True) or its action runs (False:
    /// wait on).
    fn expire(&self, py: Python<'_>, slot: usize) -> PyResult<bool> {
        let b = &self.inner;
        match py.detach(|| b.expire(slot)) {
            Ok(()) => Ok(true),
            Err(BarrierError::TimedOut) => Ok(false),
            Err(e) => Err(barrier_err(e)),
        }
    }

    /// Gives `slot` back without breaking the barrier.
    fn withdraw(&self, py: Python<'_>, slot: usize) {
        let b = &self.inner;
        py.detach(|| b.withdraw(slot));
    }

    /// Breaks the barrier until `reset`.
    fn abort(&self, py: Python<'_>) {
        let b = &self.inner;
        py.detach(|| b.abort());
    }

    /// Back to an empty round; current waiters get BrokenBarrierError.
    fn reset(&self, py: Python<'_>) {
        let b = &self.inner;
        py.detach(|| b.reset());
    }

    /// Parties per round.
    #[getter]
    fn parties(&self) -> u32 {
        self.inner.parties()
    }

    /// Parties waiting in the current round.
    #[getter]
    fn n_waiting(&self) -> u32 {
        self.inner.n_waiting()
    }

    /// True while broken.
    #[getter]
    fn broken(&self) -> bool {
        self.inner.broken()
    }
}
