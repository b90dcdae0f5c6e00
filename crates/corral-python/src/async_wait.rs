//! `_core.AsyncNotifier`, `_core.watch` and `_core.unwatch`: the bindings of
//! the core's async wait hub (`corral_core::sync::async_wait`), used by the
//! `*_async` methods of the locks, semaphores and events.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use corral_core::sync::async_wait::{
    unwatch as core_unwatch, watch as core_watch, CondSlot, Notifier, QueueData, QueueSpace, WatchTarget,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::barrier::Barrier;
use crate::errors::to_py;
use crate::queue::SharedQueue;
use crate::sync::{Condition, Event, Lock, RLock, Semaphore};

/// Where the hub reports to one event loop: an eventfd and ready tokens.
#[pyclass(module = "corral._core", frozen)]
pub struct AsyncNotifier {
    inner: Arc<Notifier>,
}

#[pymethods]
impl AsyncNotifier {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(AsyncNotifier { inner: Notifier::new().map_err(to_py)? })
    }

    /// The eventfd (for `loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.inner.fd().as_raw_fd()
    }

    /// The tokens ready since the last call.
    fn take(&self) -> Vec<u64> {
        self.inner.take()
    }
}

fn target(primitive: &Bound<'_, PyAny>, room: bool, slot: Option<usize>) -> PyResult<Box<dyn WatchTarget>> {
    if let Ok(c) = primitive.cast::<Condition>() {
        let slot = slot.ok_or_else(|| PyTypeError::new_err("a condition is awaited through a waiter slot"))?;
        return Ok(Box::new(CondSlot::new(c.get().inner.clone(), slot).map_err(to_py)?));
    }
    if let Ok(q) = primitive.cast::<SharedQueue>() {
        let q = q.get().inner.clone();
        return Ok(if room { Box::new(QueueSpace(q)) } else { Box::new(QueueData(q)) });
    }
    if let Ok(l) = primitive.cast::<Lock>() {
        return Ok(Box::new(l.get().inner.clone()));
    }
    if let Ok(l) = primitive.cast::<RLock>() {
        return Ok(Box::new(l.get().inner.clone()));
    }
    if let Ok(s) = primitive.cast::<Semaphore>() {
        return Ok(Box::new(s.get().inner.clone()));
    }
    if let Ok(e) = primitive.cast::<Event>() {
        return Ok(Box::new(e.get().inner.clone()));
    }
    if let Ok(b) = primitive.cast::<Barrier>() {
        return Ok(Box::new(b.get().inner.watch_target(slot).map_err(to_py)?));
    }
    Err(PyTypeError::new_err("only corral Lock, RLock, Semaphore, Event, Condition, Barrier and queues can be awaited"))
}

/// The primitive's futex word now (pass it to `watch` after a failed try);
/// for a queue, `room` picks its space signal instead of its data signal.
#[pyfunction]
#[pyo3(signature = (primitive, room=false, slot=None))]
pub fn wait_word(primitive: &Bound<'_, PyAny>, room: bool, slot: Option<usize>) -> PyResult<u32> {
    Ok(target(primitive, room, slot)?.words().0.load(Ordering::SeqCst))
}

/// Posts `token` to `notifier` once `primitive`'s word differs from
/// `expected`; returns the watch id.
#[pyfunction]
#[pyo3(signature = (primitive, expected, notifier, token, room=false, slot=None))]
pub fn watch(
    primitive: &Bound<'_, PyAny>,
    expected: u32,
    notifier: &AsyncNotifier,
    token: u64,
    room: bool,
    slot: Option<usize>,
) -> PyResult<u64> {
    core_watch(target(primitive, room, slot)?, expected, &notifier.inner, token).map_err(to_py)
}

/// Stops a watch; True if it had not fired.
#[pyfunction]
pub fn unwatch(id: u64) -> bool {
    core_unwatch(id)
}
