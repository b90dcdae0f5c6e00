//! `_core.Lock`, `RLock`, `Semaphore`, `Event`, `Condition`, `Counters`:
//! the core's process-shared primitives. Argument rules of `threading` are
//! checked in `corral.synchronize`; here waits release the GIL, in slices.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use corral_core::sync::{condition, counters, event, lock, rlock, semaphore};
use corral_core::CoreError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::wait::{deadline, sliced};

fn owned(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err("bad descriptor"));
    }
    // SAFETY: the caller hands over an open descriptor it owns and never
    // uses the number again.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs a blocking acquire: once with the GIL (no wait), then in slices
/// with the GIL released. Ok(false) on timeout.
fn blocking_acquire(
    py: Python<'_>,
    blocking: bool,
    timeout: Option<f64>,
    try_now: impl Fn() -> bool,
    wait: impl Fn(Option<Instant>) -> Result<(), CoreError> + Sync,
) -> PyResult<bool> {
    if try_now() {
        return Ok(true);
    }
    if !blocking {
        return Ok(false);
    }
    let d = deadline(timeout)?;
    match sliced(py, d, |e| matches!(e, CoreError::Timeout), wait)? {
        Ok(()) => Ok(true),
        Err(CoreError::Timeout) => Ok(false),
        Err(e) => Err(to_py(e)),
    }
}

/// A process-shared `threading.Lock`.
#[pyclass(module = "corral._core", frozen)]
pub struct Lock {
    inner: lock::Lock,
}

#[pymethods]
impl Lock {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Lock { inner: lock::Lock::new().map_err(to_py)? })
    }

    /// The lock behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(Lock { inner: lock::Lock::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let l = &self.inner;
        blocking_acquire(py, blocking, timeout, || l.try_acquire(), |d| l.acquire(d).map_err(CoreError::from))
    }

    fn release(&self) -> PyResult<()> {
        if self.inner.release() {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("release unlocked lock"))
        }
    }

    fn locked(&self) -> bool {
        self.inner.locked()
    }

    fn reset(&self) {
        self.inner.reset();
    }
}

/// A process-shared `threading.RLock`.
#[pyclass(module = "corral._core", frozen)]
pub struct RLock {
    inner: rlock::RLock,
}

#[pymethods]
impl RLock {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(RLock { inner: rlock::RLock::new().map_err(to_py)? })
    }

    /// The lock behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(RLock { inner: rlock::RLock::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    #[pyo3(signature = (blocking=true, timeout=None, count=1))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>, count: u32) -> PyResult<bool> {
        let l = &self.inner;
        if count != 1 {
            // Restoring a saved depth (Condition.wait): always blocking.
            let r = sliced(
                py,
                None,
                |e| matches!(e, CoreError::Timeout),
                |d| l.acquire_n(count, d).map_err(CoreError::from),
            )?;
            return r.map(|()| true).map_err(to_py);
        }
        blocking_acquire(py, blocking, timeout, || l.try_acquire(), |d| l.acquire(d).map_err(CoreError::from))
    }

    fn release(&self) -> PyResult<()> {
        self.inner.release().map_err(|_| PyRuntimeError::new_err("cannot release un-acquired lock"))
    }

    /// Releases every level; returns the depth.
    fn release_all(&self) -> PyResult<u32> {
        self.inner.release_all().map_err(|_| PyRuntimeError::new_err("cannot release un-acquired lock"))
    }

    fn is_owned(&self) -> bool {
        self.inner.is_owned()
    }

    fn recursion_count(&self) -> u32 {
        self.inner.recursion_count()
    }

    fn locked(&self) -> bool {
        self.inner.locked()
    }

    fn reset(&self) {
        self.inner.reset();
    }
}

/// A process-shared semaphore (bounded or not).
#[pyclass(module = "corral._core", frozen)]
pub struct Semaphore {
    inner: semaphore::Semaphore,
}

#[pymethods]
impl Semaphore {
    #[new]
    fn new(value: u32, bounded: bool) -> PyResult<Self> {
        Ok(Semaphore { inner: semaphore::Semaphore::new(value, bounded).map_err(to_py)? })
    }

    /// The semaphore behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(Semaphore { inner: semaphore::Semaphore::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let s = &self.inner;
        blocking_acquire(py, blocking, timeout, || s.try_acquire(), |d| s.acquire(d).map_err(CoreError::from))
    }

    #[pyo3(signature = (n=1))]
    fn release(&self, n: u32) -> PyResult<()> {
        self.inner.release(n).map_err(to_py)
    }

    #[getter]
    fn value(&self) -> u32 {
        self.inner.value()
    }

    #[getter]
    fn initial(&self) -> u32 {
        self.inner.initial()
    }

    #[getter]
    fn bounded(&self) -> bool {
        self.inner.bounded()
    }
}

/// A process-shared `threading.Event`.
#[pyclass(module = "corral._core", frozen)]
pub struct Event {
    inner: event::Event,
}

#[pymethods]
impl Event {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Event { inner: event::Event::new().map_err(to_py)? })
    }

    /// The event behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(Event { inner: event::Event::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    fn set(&self) {
        self.inner.set();
    }

    fn clear(&self) {
        self.inner.clear();
    }

    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let e = &self.inner;
        if e.is_set() {
            return Ok(true);
        }
        let d = deadline(timeout)?;
        let start = e.state_word();
        let r = sliced(
            py,
            d,
            |x| matches!(x, CoreError::Timeout),
            |until| {
                if e.wait_from(start, until) {
                    Ok(())
                } else {
                    Err(CoreError::Timeout)
                }
            },
        )?;
        Ok(r.is_ok())
    }
}

/// The wait queue of a process-shared `threading.Condition`.
#[pyclass(module = "corral._core", frozen)]
pub struct Condition {
    inner: condition::Condition,
}

#[pymethods]
impl Condition {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Condition { inner: condition::Condition::new().map_err(to_py)? })
    }

    /// The wait queue behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(Condition { inner: condition::Condition::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// Registers a waiter (with the lock held); returns its slot.
    fn register(&self) -> PyResult<usize> {
        self.inner.register().map_err(to_py)
    }

    /// Sleeps in `slot` until notified (True) or the timeout (False).
    #[pyo3(signature = (slot, timeout=None))]
    fn wait(&self, py: Python<'_>, slot: usize, timeout: Option<f64>) -> PyResult<bool> {
        py_wait_slot(py, &self.inner, slot, deadline(timeout)?)
    }

    /// Gives a slot back; False if a notification reached it first.
    fn cancel(&self, slot: usize) -> bool {
        self.inner.cancel(slot)
    }

    /// Wakes up to `n` of the oldest waiters; returns how many.
    fn notify(&self, n: usize) -> usize {
        self.inner.notify(n)
    }

    #[getter]
    fn waiters(&self) -> u32 {
        self.inner.waiters()
    }
}

/// Waits on a condition slot in GIL-free slices. A slice that ends without
/// a notification keeps the slot registered; the last one gives it back.
fn py_wait_slot(py: Python<'_>, c: &condition::Condition, slot: usize, d: Option<Instant>) -> PyResult<bool> {
    loop {
        let now = Instant::now();
        let slice_end = now + crate::wait::SLICE;
        let last = d.is_some_and(|d| d <= slice_end);
        let until = if last { d } else { Some(slice_end) };
        let r = py.detach(|| c.wait_slice(slot, until, last)).map_err(to_py)?;
        match r {
            Some(notified) => return Ok(notified),
            None => {
                if let Err(e) = py.check_signals() {
                    c.cancel(slot);
                    return Err(e);
                }
            }
        }
    }
}

/// A few process-shared 64-bit integers.
#[pyclass(module = "corral._core", frozen)]
pub struct Counters {
    inner: counters::Counters,
}

#[pymethods]
impl Counters {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Counters { inner: counters::Counters::new().map_err(to_py)? })
    }

    /// The counters behind descriptor `fd` (ownership taken).
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        Ok(Counters { inner: counters::Counters::open(owned(fd)?).map_err(to_py)? })
    }

    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    fn get(&self, i: usize) -> PyResult<i64> {
        self.inner.get(i).map_err(to_py)
    }

    fn set(&self, i: usize, v: i64) -> PyResult<()> {
        self.inner.set(i, v).map_err(to_py)
    }

    fn add(&self, i: usize, d: i64) -> PyResult<i64> {
        self.inner.add(i, d).map_err(to_py)
    }
}

/// Registers the classes of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Lock>()?;
    m.add_class::<RLock>()?;
    m.add_class::<Semaphore>()?;
    m.add_class::<Event>()?;
    m.add_class::<Condition>()?;
    m.add_class::<Counters>()?;
    Ok(())
}
