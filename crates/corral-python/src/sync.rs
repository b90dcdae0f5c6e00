//! `_core.Lock`, `RLock`, `Semaphore`, `Event`, `Condition`, `Counters`:
//! the core's process-shared primitives. Argument rules of `threading` are
//! checked in `corral.synchronize`; here waits release the GIL, in slices.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use corral_core::sync::{condition, counters, event, lock, rlock, semaphore, Acquire};
use corral_core::CoreError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::wait::{deadline, sliced, wait};

fn owned(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err("bad descriptor"));
    }
    // SAFETY: the caller hands over an open descriptor it owns and never
    // uses the number again.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `threading.TIMEOUT_MAX` on Linux.
const TIMEOUT_MAX: f64 = 9_223_372_036.0;

/// `threading.Lock.acquire`'s argument rules; None means no limit.
fn lock_timeout(blocking: bool, timeout: f64) -> PyResult<Option<f64>> {
    if !blocking && timeout != -1.0 {
        return Err(PyValueError::new_err("can't specify a timeout for a non-blocking call"));
    }
    if timeout < 0.0 && timeout != -1.0 {
        return Err(PyValueError::new_err("timeout value must be a non-negative number"));
    }
    if timeout > TIMEOUT_MAX {
        return Err(pyo3::exceptions::PyOverflowError::new_err("timeout value is too large"));
    }
    Ok(if timeout == -1.0 { None } else { Some(timeout) })
}

/// Runs an acquire: once with the GIL (no wait), then in slices with the
/// GIL released. Ok(false) on timeout or when not `blocking` and taken.
fn blocking_acquire(py: Python<'_>, l: &impl Acquire, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
    if l.try_acquire() {
        return Ok(true);
    }
    if !blocking {
        return Ok(false);
    }
    let d = deadline(timeout)?;
    match sliced(py, d, |e| matches!(e, CoreError::Timeout), |until| l.acquire(until).map_err(CoreError::from))? {
        Ok(()) => Ok(true),
        Err(CoreError::Timeout) => Ok(false),
        Err(e) => Err(to_py(e)),
    }
}

/// A process-shared `threading.Lock`.
#[pyclass(module = "corral._core", frozen, subclass)]
pub struct Lock {
    pub(crate) inner: lock::Lock,
}

#[pymethods]
impl Lock {
    /// A new lock, or (`_fd`) the lock behind a descriptor from another
    /// process (ownership taken).
    #[new]
    #[pyo3(signature = (*, _fd=None))]
    fn new(_fd: Option<i32>) -> PyResult<Self> {
        let inner = match _fd {
            None => lock::Lock::new(),
            Some(fd) => lock::Lock::open(owned(fd)?),
        };
        Ok(Lock { inner: inner.map_err(to_py)? })
    }

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// Acquires the lock; False if not `blocking` and it is taken, or the
    /// `timeout` (seconds, -1: none) passes.
    // PyO3 shows a float default as `...`: the signature threading.Lock shows.
    #[pyo3(signature = (blocking=true, timeout=-1.0), text_signature = "($self, /, blocking=True, timeout=-1)")]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        blocking_acquire(py, &self.inner, blocking, lock_timeout(blocking, timeout)?)
    }

    /// Releases the lock; RuntimeError if it is not locked.
    fn release(&self) -> PyResult<()> {
        if self.inner.release() {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("release unlocked lock"))
        }
    }

    /// True if the lock is held.
    fn locked(&self) -> bool {
        self.inner.locked()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.release()
    }

    /// Forces the lock free (after a fork).
    fn _at_fork_reinit(&self) {
        self.inner.reset();
    }
}

/// A process-shared `threading.RLock`.
#[pyclass(module = "corral._core", frozen, subclass)]
pub struct RLock {
    pub(crate) inner: rlock::RLock,
}

#[pymethods]
impl RLock {
    /// A new recursive lock, or (`_fd`) the one behind a descriptor.
    #[new]
    #[pyo3(signature = (*, _fd=None))]
    fn new(_fd: Option<i32>) -> PyResult<Self> {
        let inner = match _fd {
            None => rlock::RLock::new(),
            Some(fd) => rlock::RLock::open(owned(fd)?),
        };
        Ok(RLock { inner: inner.map_err(to_py)? })
    }

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// Acquires the lock (again, if the caller owns it).
    // PyO3 shows a float default as `...`: the signature threading.Lock shows.
    #[pyo3(signature = (blocking=true, timeout=-1.0), text_signature = "($self, /, blocking=True, timeout=-1)")]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        blocking_acquire(py, &self.inner, blocking, lock_timeout(blocking, timeout)?)
    }

    /// Releases one level; RuntimeError if the caller does not own it.
    fn release(&self) -> PyResult<()> {
        self.inner.release().map_err(|_| PyRuntimeError::new_err("cannot release un-acquired lock"))
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.release()
    }

    /// Releases every level; returns the depth (for Condition.wait).
    fn _release_save(&self) -> PyResult<u32> {
        self.inner.release_all().map_err(|_| PyRuntimeError::new_err("cannot release un-acquired lock"))
    }

    /// Takes the lock back at a saved depth.
    fn _acquire_restore(&self, py: Python<'_>, count: u32) -> PyResult<()> {
        let l = &self.inner;
        let r = sliced(
            py,
            None,
            |e| matches!(e, CoreError::Timeout),
            |d| l.acquire_n(count.max(1), d).map_err(CoreError::from),
        )?;
        r.map_err(to_py)
    }

    /// True if the calling thread owns the lock.
    fn _is_owned(&self) -> bool {
        self.inner.is_owned()
    }

    /// The calling thread's recursion depth.
    fn _recursion_count(&self) -> u32 {
        self.inner.recursion_count()
    }

    /// True if any thread holds the lock.
    fn locked(&self) -> bool {
        self.inner.locked()
    }

    /// Forces the lock free (after a fork).
    fn _at_fork_reinit(&self) {
        self.inner.reset();
    }
}

/// A process-shared semaphore (bounded or not).
#[pyclass(module = "corral._core", frozen, subclass)]
pub struct Semaphore {
    pub(crate) inner: semaphore::Semaphore,
}

#[pymethods]
impl Semaphore {
    /// A semaphore of `value` permits, or (`_fd`) the one behind a descriptor.
    #[new]
    #[pyo3(signature = (value=1, bounded=false, *, _fd=None))]
    fn new(value: i64, bounded: bool, _fd: Option<i32>) -> PyResult<Self> {
        if let Some(fd) = _fd {
            return Ok(Semaphore { inner: semaphore::Semaphore::open(owned(fd)?).map_err(to_py)? });
        }
        if value < 0 {
            return Err(PyValueError::new_err("semaphore initial value must be >= 0"));
        }
        let value =
            u32::try_from(value).map_err(|_| PyValueError::new_err("semaphore initial value must be < 2**32"))?;
        Ok(Semaphore { inner: semaphore::Semaphore::new(value, bounded).map_err(to_py)? })
    }

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// Takes a permit; False if not `blocking` and none is free, or the
    /// `timeout` passes.
    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        if !blocking && timeout.is_some() {
            return Err(PyValueError::new_err("can't specify timeout for non-blocking acquire"));
        }
        blocking_acquire(py, &self.inner, blocking, timeout)
    }

    /// Adds `n` permits, waking up to `n` waiters.
    #[pyo3(signature = (n=1))]
    fn release(&self, n: i64) -> PyResult<()> {
        if n < 1 {
            return Err(PyValueError::new_err("n must be one or more"));
        }
        let n = u32::try_from(n).map_err(|_| PyValueError::new_err("n is too large"))?;
        self.inner.release(n).map_err(to_py)
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.release(1)
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
#[pyclass(module = "corral._core", frozen, subclass)]
pub struct Event {
    pub(crate) inner: event::Event,
}

#[pymethods]
impl Event {
    /// A new event, or (`_fd`) the one behind a descriptor.
    #[new]
    #[pyo3(signature = (*, _fd=None))]
    fn new(_fd: Option<i32>) -> PyResult<Self> {
        let inner = match _fd {
            None => event::Event::new(),
            Some(fd) => event::Event::open(owned(fd)?),
        };
        Ok(Event { inner: inner.map_err(to_py)? })
    }

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
    fn fileno(&self) -> i32 {
        self.inner.block().fd().as_raw_fd()
    }

    /// True once the event is set (``threading.Event.is_set``).
    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// Sets the event: every waiter, in any process, wakes.
    fn set(&self) {
        self.inner.set();
    }

    /// Resets the event: later waits block until the next `set`.
    fn clear(&self) {
        self.inner.clear();
    }

    /// Blocks until the event is set or `timeout` seconds pass (None:
    /// no limit); returns whether it is set, as `threading.Event.wait`.
    /// The GIL is released while waiting and Ctrl-C interrupts the wait.
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
    pub(crate) inner: condition::Condition,
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

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
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

    /// Frees the slots of waiters whose process died; returns how many.
    fn reap_dead_waiters(&self) -> u32 {
        self.inner.reap_dead_waiters()
    }

    /// True once `slot` was notified.
    fn is_signaled(&self, slot: usize) -> bool {
        self.inner.is_signaled(slot)
    }
}

/// Waits on a condition slot in GIL-free slices. A slice that ends without
/// a notification keeps the slot registered; the last one gives it back.
fn py_wait_slot(py: Python<'_>, c: &condition::Condition, slot: usize, d: Option<Instant>) -> PyResult<bool> {
    // A signal's exception leaves no slot behind.
    let r = wait(py, d, |slice| c.wait_slice(slot, Some(slice.end), slice.last)).inspect_err(|_| {
        c.cancel(slot);
    })?;
    // `wait_slice` ends its last slice with `Some`; a deadline that passed
    // during a slice that was not the last one means not notified.
    Ok(r.map_err(to_py)?.unwrap_or_else(|| !c.cancel(slot)))
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

    /// The memfd holding this primitive\'s shared state (it is how the
    /// primitive is passed to another process).
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
