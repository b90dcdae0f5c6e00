//! `_core.PoolCore` (the parent side of a process pool), `_core.PoolBoard`
//! (a worker's view of the shared board) and `_core.ChunkSizer`. The
//! scheduling, supervision and completion thread live in
//! `corral_core::pool`; this file converts arguments and events.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::channel::queue::{Part, SharedQueue as CoreQueue};
use corral_core::fdshare::Lease;
use corral_core::pool::board::{Board, Start, WorkerState};
use corral_core::pool::chunking::{chunks_in_flight as core_chunks_in_flight, ChunkSizer as CoreChunkSizer};
use corral_core::pool::runtime::{Event, Pool, Task, TaskArgs};
use corral_core::pool::wire::{self, Kind, ResultHeader, Status, RESULT_HEADER_LEN};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PySlice, PyType};

use crate::errors::to_py;
use crate::process::ChildProcess;
use crate::queue::{make_unreadable, parts_to_py, Bytes, SharedQueue};
use crate::threadpool::Sleeper;
use crate::wait::SLICE;

/// A task's pickled arguments, held until the task is done.
struct PyArgs {
    inband: Bytes,
    buffers: Vec<Bytes>,
    /// The broker registrations of the corral objects in the arguments,
    /// withdrawn when the task is dropped (see `fdshare::Lease`).
    _lease: Lease,
}

impl TaskArgs for PyArgs {
    fn inband(&self) -> &[u8] {
        self.inband.slice()
    }

    fn buffers(&self) -> Vec<&[u8]> {
        self.buffers.iter().map(Bytes::slice).collect()
    }
}

// ---- events: what the pool's completion thread reports, one class each ----

/// A task's result message came: `status` is "ok" (`inband` + `buffers`
/// pickle its value), "raised" (they pickle its packed exception) or
/// "cancelled" (the worker skipped it; nothing to load).
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskDone {
    task: u64,
    status: &'static str,
    inband: Py<PyAny>,
    buffers: Py<PyAny>,
    busy_ns: u64,
}

/// A task died with its worker and is not run again: `cause` is why the
/// worker ended ("crashed", "timed_out", "killed", "died_before_start"...).
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskLost {
    task: u64,
    exitcode: i32,
    cause: &'static str,
}

/// A task cancelled in the queue of a worker that died: it will not run.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskCancelled {
    task: u64,
}

/// A task that could not be sent to a worker (too large for its queue).
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskRejected {
    task: u64,
    error: String,
}

/// A worker ended; when `respawn`, start a new one in `slot`.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct WorkerExited {
    slot: usize,
    exitcode: i32,
    cause: &'static str,
    respawn: bool,
}

/// A worker's initializer raised: `inband` + `buffers` pickle the packed
/// exception. The pool breaks next (`PoolBroken`).
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct InitFailed {
    inband: Py<PyAny>,
    buffers: Py<PyAny>,
}

/// The pool cannot run tasks any more; `tasks` were not finished and never
/// will be. `stopped`: its owner stopped it (`PoolCore.stop`), no fault.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct PoolBroken {
    reason: String,
    tasks: Vec<u64>,
    stopped: bool,
}

/// The pool was closed and every worker has left: the last event.
#[pyclass(module = "corral._core", frozen)]
pub struct PoolClosed;

/// A task's result came but could not be read here (a corrupt arena
/// block, no memory left for its bytes): the task ends with `error`, the
/// exception that reading it raised.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskFailed {
    task: u64,
    error: Py<PyAny>,
}

/// An event on its way to Python: the core's event with what involves
/// Python already made (a result's outcome) or, where making that failed,
/// what stands for it (`Failed` for a task's result, `Broken` for an
/// initializer's exception). The rest is plain data, so an event whose
/// Python object cannot be made now (only running out of memory stops
/// that) waits in `PoolCore.backlog` and is made at the next call: no
/// event taken from the core is ever dropped.
enum Outgoing {
    Done { task: u64, status: &'static str, inband: Py<PyAny>, buffers: Py<PyAny>, busy_ns: u64 },
    Failed { task: u64, error: PyErr },
    Lost { task: u64, exitcode: i32, cause: &'static str },
    Cancelled { task: u64 },
    Rejected { task: u64, error: String },
    Exited { slot: usize, exitcode: i32, cause: &'static str, respawn: bool },
    InitFailed { inband: Py<PyAny>, buffers: Py<PyAny> },
    Broken { reason: String, tasks: Vec<u64>, stopped: bool },
    Closed,
}

impl Outgoing {
    /// The event's Python object (`TaskDone`, `TaskFailed`, ...).
    fn make(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Outgoing::Done { task, status, inband, buffers, busy_ns } => Py::new(
                py,
                TaskDone {
                    task: *task,
                    status,
                    inband: inband.clone_ref(py),
                    buffers: buffers.clone_ref(py),
                    busy_ns: *busy_ns,
                },
            )?
            .into_any(),
            Outgoing::Failed { task, error } => {
                Py::new(py, TaskFailed { task: *task, error: error.value(py).clone().into_any().unbind() })?.into_any()
            }
            Outgoing::Lost { task, exitcode, cause } => {
                Py::new(py, TaskLost { task: *task, exitcode: *exitcode, cause })?.into_any()
            }
            Outgoing::Cancelled { task } => Py::new(py, TaskCancelled { task: *task })?.into_any(),
            Outgoing::Rejected { task, error } => {
                Py::new(py, TaskRejected { task: *task, error: error.clone() })?.into_any()
            }
            Outgoing::Exited { slot, exitcode, cause, respawn } => {
                Py::new(py, WorkerExited { slot: *slot, exitcode: *exitcode, cause, respawn: *respawn })?.into_any()
            }
            Outgoing::InitFailed { inband, buffers } => {
                Py::new(py, InitFailed { inband: inband.clone_ref(py), buffers: buffers.clone_ref(py) })?.into_any()
            }
            Outgoing::Broken { reason, tasks, stopped } => {
                Py::new(py, PoolBroken { reason: reason.clone(), tasks: tasks.clone(), stopped: *stopped })?.into_any()
            }
            Outgoing::Closed => Py::new(py, PoolClosed)?.into_any(),
        })
    }
}

/// Test-only fault injection (`PoolCore._corrupt_outcomes`): the result
/// messages named here are read as if their in-band part were a corrupt
/// arena block. Checked behind `PoolCore.fault_armed`, so a pool whose
/// hook names nothing pays one relaxed atomic load per result.
#[derive(Default)]
struct FaultHook {
    tasks: HashSet<u64>,
    init_failed: bool,
}

impl FaultHook {
    /// Some message is still to be corrupted.
    fn armed(&self) -> bool {
        !self.tasks.is_empty() || self.init_failed
    }
}

/// A result message's outcome without its header: `(inband, buffers)`.
fn outcome_to_py<'py>(
    py: Python<'py>,
    results: &Arc<CoreQueue>,
    mut parts: Vec<Part>,
) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    // An inline in-band part is copied into a Python bytes anyway: skip the
    // header there. A large one is an arena block: a view past the header.
    let block = match parts.first_mut() {
        Some(Part::Inline(v)) => {
            v.drain(..RESULT_HEADER_LEN.min(v.len()));
            false
        }
        _ => true,
    };
    let msg = parts_to_py(py, results, parts)?;
    let inband = msg.get_item(0)?;
    let inband = if block {
        let view = PyMemoryView::from(&inband)?;
        view.get_item(PySlice::new(py, RESULT_HEADER_LEN as isize, isize::MAX, 1))?
    } else {
        inband
    };
    Ok((inband.unbind(), msg.get_item(1)?.unbind()))
}

/// The parent side of a process pool: submit tasks, read events.
#[pyclass(module = "corral._core", frozen)]
pub struct PoolCore {
    pool: Pool<PyArgs>,
    events: Receiver<Event<PyArgs>>,
    results: Arc<CoreQueue>,
    /// Events taken from the core and not yet handed to Python, oldest
    /// first (see `Outgoing`). Only the pump calls `next_events`.
    backlog: Mutex<VecDeque<Outgoing>>,
    /// The completion thread is gone: its last events were made up once.
    disconnected: AtomicBool,
    /// `fault` names a message still to come (`FaultHook::armed`): read
    /// first, so a result takes the hook's lock only while it is armed.
    fault_armed: AtomicBool,
    fault: Mutex<FaultHook>,
    /// Test-only (`_fail_next_events`): this many next calls of
    /// `next_events` raise before taking any event.
    events_fault: AtomicU32,
    /// Those calls raise `PanicException` (what a panic of the core
    /// becomes), not `RuntimeError`.
    events_fault_panic: AtomicBool,
}

impl PoolCore {
    /// Reads what `e` carries for Python (a result's outcome). A result
    /// that cannot be read ends its task (`Failed`, with the exception);
    /// an initializer's exception that cannot be read breaks the pool
    /// saying so (`Broken`: the core breaks it anyway, right after).
    fn take(&self, py: Python<'_>, e: Event<PyArgs>) -> Outgoing {
        match e {
            Event::Done { task, status, busy_ns, mut parts, done } => {
                drop(done);
                self.faulty(&mut parts, |f| f.tasks.remove(&task));
                match outcome_to_py(py, &self.results, parts) {
                    Ok((inband, buffers)) => Outgoing::Done { task, status: status.name(), inband, buffers, busy_ns },
                    Err(error) => Outgoing::Failed { task, error },
                }
            }
            Event::Lost { task, exitcode, cause, done } => {
                drop(done);
                Outgoing::Lost { task, exitcode, cause: cause.name() }
            }
            Event::Cancelled { task, done } => {
                drop(done);
                Outgoing::Cancelled { task }
            }
            Event::Rejected { task, error, done } => {
                drop(done);
                Outgoing::Rejected { task, error }
            }
            Event::WorkerExited { slot, exitcode, cause, respawn } => {
                Outgoing::Exited { slot, exitcode, cause: cause.name(), respawn }
            }
            Event::InitFailed { mut parts } => {
                self.faulty(&mut parts, |f| std::mem::take(&mut f.init_failed));
                match outcome_to_py(py, &self.results, parts) {
                    Ok((inband, buffers)) => Outgoing::InitFailed { inband, buffers },
                    Err(error) => Outgoing::Broken {
                        reason: format!("a worker's initializer raised, and its exception could not be read: {error}"),
                        tasks: Vec::new(),
                        stopped: false,
                    },
                }
            }
            Event::Broken { reason, abandoned, stopped } => {
                Outgoing::Broken { reason, tasks: abandoned.into_iter().map(|(id, _)| id).collect(), stopped }
            }
            Event::Closed => Outgoing::Closed,
        }
    }

    /// If the fault hook names this message (`hit`), makes its in-band
    /// part unreadable where it stands: a block's length runs past the
    /// arena (the block stays held, for the reader's error path to free),
    /// an inline part becomes a block outside the arena. Its other parts
    /// are left as they came, so the test sees what a real corrupt part
    /// leaves behind.
    fn faulty(&self, parts: &mut [Part], hit: impl FnOnce(&mut FaultHook) -> bool) {
        if !self.fault_armed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut f) = self.fault.lock() else { return };
        let hit = hit(&mut f);
        self.fault_armed.store(f.armed(), Ordering::Relaxed);
        drop(f);
        if !hit {
            return;
        }
        make_unreadable(parts);
    }
}

#[pymethods]
impl PoolCore {
    /// A pool of `workers` slots whose workers send results to `results`.
    #[new]
    fn new(workers: usize, results: PyRef<'_, SharedQueue>) -> PyResult<Self> {
        let results = results.inner.clone();
        let (pool, events) = Pool::new(workers, results.clone()).map_err(to_py)?;
        Ok(PoolCore {
            pool,
            events,
            results,
            backlog: Mutex::new(VecDeque::new()),
            disconnected: AtomicBool::new(false),
            fault_armed: AtomicBool::new(false),
            fault: Mutex::new(FaultHook::default()),
            events_fault: AtomicU32::new(0),
            events_fault_panic: AtomicBool::new(false),
        })
    }

    /// For tests only (fault injection; no program calls it): the next
    /// `count` calls of `next_events` raise at once, taking no event
    /// (`RuntimeError`, or with `panic` the `PanicException` a panic of
    /// the core becomes), as a call that cannot make its list does.
    #[pyo3(signature = (count, panic=false))]
    fn _fail_next_events(&self, count: u32, panic: bool) {
        self.events_fault_panic.store(panic, Ordering::Relaxed);
        self.events_fault.store(count, Ordering::Relaxed);
    }

    /// For tests only (fault injection; no program calls it): the result
    /// messages of `tasks` (and, with `init_failed`, the next
    /// initializer's exception) are read as if their in-band part were a
    /// corrupt arena block (`CorruptDataError`), once each; their other
    /// parts come as they are. Once every one named has come, results
    /// again cost one relaxed atomic load for the hook. Returns whether the hook is armed after this call.
    #[pyo3(signature = (tasks, init_failed=false))]
    fn _corrupt_outcomes(&self, tasks: Vec<u64>, init_failed: bool) -> PyResult<bool> {
        let mut f = self.fault.lock().map_err(|_| PyRuntimeError::new_err("fault hook poisoned"))?;
        f.tasks.extend(tasks);
        f.init_failed |= init_failed;
        let armed = f.armed();
        self.fault_armed.store(armed, Ordering::Relaxed);
        Ok(armed)
    }

    /// The board's descriptor (workers map it with `PoolBoard.from_fd`).
    fn board_fd(&self) -> i32 {
        self.pool.board().fd().as_raw_fd()
    }

    /// Clears `slot` before its worker is started.
    fn prepare(&self, slot: usize) -> PyResult<()> {
        self.pool.prepare(slot).map_err(to_py)
    }

    /// Slot `slot` has a started worker `child` reading `queue`.
    fn attach(&self, slot: usize, child: PyRef<'_, ChildProcess>, queue: PyRef<'_, SharedQueue>) -> PyResult<()> {
        self.pool.attach(slot, child.child.clone(), queue.inner.clone()).map_err(to_py)
    }

    /// Queues a task and returns its id: function `fn_id` (pickled as
    /// `fn_bytes`; the pool copies it the first time it sees `fn_id`),
    /// pickled arguments `inband` + `buffers`, `kind` "call" (one call) or
    /// "chunk" (a chunk of `map`). `shares`: tokens of reusable broker
    /// registrations the arguments name; the task owns them from this call
    /// on, even if it fails, and they are withdrawn when the task is done.
    #[pyo3(signature = (fn_id, fn_bytes, inband, buffers, kind="call", timeout_ms=0, retries=0, shares=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        fn_id: u64,
        fn_bytes: &[u8],
        inband: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        kind: &str,
        timeout_ms: u32,
        retries: u32,
        shares: Vec<u64>,
    ) -> PyResult<u64> {
        let lease = Lease::new(shares);
        let kind = Kind::from_name(kind).map_err(to_py)?;
        let inband = Bytes::get(inband)?;
        let buffers = buffers.try_iter()?.map(|b| Bytes::get(&b?)).collect::<PyResult<Vec<_>>>()?;
        let big = buffers.iter().map(|b| b.slice().len()).sum::<usize>() > 64 * 1024;
        let t = Task { fn_id, args: PyArgs { inband, buffers, _lease: lease }, kind, timeout_ms, retries };
        let r = if big { py.detach(|| self.pool.submit(t, fn_bytes)) } else { self.pool.submit(t, fn_bytes) };
        r.map_err(|e| match e {
            e @ corral_core::CoreError::Broken(_) => to_py(e),
            other => PyRuntimeError::new_err(other.to_string()),
        })
    }

    /// Cancels a task no worker has started; True if it will not run.
    fn cancel(&self, task: u64) -> PyResult<bool> {
        self.pool.cancel(task).map_err(to_py)
    }

    /// True if a worker runs `task` now.
    fn running(&self, task: u64) -> bool {
        self.pool.running(task)
    }

    /// Kills the worker running `task`; False if none runs it.
    fn kill(&self, task: u64) -> PyResult<bool> {
        self.pool.kill(task).map_err(to_py)
    }

    /// Accepts no more tasks; returns the ids withdrawn with `cancel_pending`.
    fn close(&self, cancel_pending: bool) -> PyResult<Vec<u64>> {
        self.pool.close(cancel_pending).map_err(to_py)
    }

    /// Kills every worker; the pool reports itself broken with `reason`
    /// (a fault: a worker that cannot be started).
    fn terminate(&self, reason: &str) -> PyResult<()> {
        self.pool.terminate(reason).map_err(to_py)
    }

    /// Stops the pool at its owner's request: kills every worker; its
    /// `PoolBroken` says `stopped`. Returns the tasks this stop abandoned
    /// (they never finish), or None if the pool had broken already (its
    /// own `PoolBroken` says why).
    fn stop(&self) -> PyResult<Option<Vec<u64>>> {
        self.pool.stop().map_err(to_py)
    }

    /// Waits up to `timeout` seconds for events; returns those that came
    /// (at most `max_events`, possibly none): `TaskDone`, `TaskFailed`,
    /// `TaskLost`, `TaskCancelled`, `TaskRejected`, `WorkerExited`,
    /// `InitFailed`, `PoolBroken`, `PoolClosed`. `wake`: sleepers of the
    /// futures the last events ended (`_core.Sleeper`), woken once the GIL
    /// is released, so each waiter wakes once, to a free GIL (woken under
    /// the GIL, it woke, found the GIL held by this thread, and slept
    /// again). No event is lost: one whose result cannot be read comes as
    /// `TaskFailed` (or, an initializer's exception, `PoolBroken`), and
    /// one whose object cannot be made now (no memory) comes at a later
    /// call; if even the list cannot be made, this raises and the next
    /// call returns the same events. `timeout` is clamped to the wait
    /// slice (so Ctrl-C is seen); NaN or a negative one is a ValueError.
    #[pyo3(signature = (timeout, max_events=1024, wake=Vec::new()))]
    fn next_events<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
        max_events: usize,
        wake: Vec<PyRef<'py, Sleeper>>,
    ) -> PyResult<Bound<'py, PyList>> {
        // NaN passes a clamp and panics in `from_secs_f64`.
        if timeout.is_nan() || timeout < 0.0 {
            return Err(PyValueError::new_err(format!("timeout must be a non-negative number, not {timeout}")));
        }
        if self.events_fault.load(Ordering::Relaxed) > 0 {
            self.events_fault.fetch_sub(1, Ordering::Relaxed);
            return Err(if self.events_fault_panic.load(Ordering::Relaxed) {
                PanicException::new_err("injected by PoolCore._fail_next_events")
            } else {
                PyRuntimeError::new_err("injected by PoolCore._fail_next_events")
            });
        }
        let wait = Duration::from_secs_f64(timeout.min(SLICE.as_secs_f64()));
        let wake: Vec<_> = wake.iter().map(|s| s.wakeup()).collect();
        // A backlog left by a failed call is retried after the wait (or
        // the next event), not at once: no busy loop while memory is short.
        let first = py.detach(|| {
            for w in &wake {
                w.wake();
            }
            if self.disconnected.load(Ordering::Relaxed) {
                std::thread::sleep(wait);
                return Err(RecvTimeoutError::Timeout);
            }
            self.events.recv_timeout(wait)
        });
        // A panic while the backlog was held (none is expected) leaves its
        // events intact: go on with them rather than fail every later call
        // (the pump would then never see `PoolClosed`).
        let mut backlog = self.backlog.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match first {
            Ok(e) => backlog.push_back(self.take(py, e)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Only once the core is dropped (it holds the sender): say
                // so as the last events, so that the pump ends.
                if !self.disconnected.swap(true, Ordering::Relaxed) {
                    backlog.push_back(Outgoing::Broken {
                        reason: "the pool's completion thread is gone".into(),
                        tasks: Vec::new(),
                        stopped: false,
                    });
                    backlog.push_back(Outgoing::Closed);
                }
            }
        }
        while backlog.len() < max_events {
            match self.events.try_recv() {
                Ok(e) => backlog.push_back(self.take(py, e)),
                Err(_) => break,
            }
        }
        let mut made = Vec::with_capacity(backlog.len().min(max_events));
        for o in backlog.iter().take(max_events) {
            match o.make(py) {
                Ok(obj) => made.push(obj),
                Err(_) => break, // out of memory: this one and the rest wait
            }
        }
        // Taken off the backlog only once the list exists.
        let out = PyList::new(py, &made)?;
        backlog.drain(..made.len());
        Ok(out)
    }

    /// Numbers per worker, tasks outstanding and latency percentiles.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.pool.stats().map_err(to_py)?;
        let d = PyDict::new(py);
        let workers = PyList::empty(py);
        for w in &s.workers {
            let wd = PyDict::new(py);
            wd.set_item("slot", w.slot)?;
            wd.set_item("pid", w.pid)?;
            wd.set_item("tasks_done", w.done)?;
            wd.set_item("busy_s", w.busy_s)?;
            wd.set_item("idle_s", w.idle_s)?;
            wd.set_item("restarts", w.restarts)?;
            wd.set_item("running", if w.running == 0 { None } else { Some(w.running) })?;
            workers.append(wd)?;
        }
        d.set_item("workers", workers)?;
        d.set_item("outstanding", s.outstanding)?;
        d.set_item("pending", s.pending)?;
        d.set_item("completed", s.completed)?;
        let lat = PyDict::new(py);
        lat.set_item("p50", s.latency_s[0])?;
        lat.set_item("p90", s.latency_s[1])?;
        lat.set_item("p99", s.latency_s[2])?;
        d.set_item("latency_s", lat)?;
        Ok(d)
    }
}

// ---- the worker's side of the wire ----

/// A task message as a worker reads it (`TaskMessage.decode`): the header's
/// fields, the pickled function if this message carries it, and a view of
/// the pickled arguments.
#[pyclass(module = "corral._core", frozen, get_all)]
pub struct TaskMessage {
    task: u64,
    fn_id: u64,
    /// "call" or "chunk".
    kind: &'static str,
    /// Forget every cached function before this task.
    reset_fns: bool,
    /// Timeout once started, in nanoseconds (0: none).
    timeout_ns: u64,
    /// The pickled function, or None if the worker has it already.
    function: Option<Py<PyBytes>>,
    /// A memoryview of the pickled arguments (on the message's memory).
    args: Py<PyAny>,
}

#[pymethods]
impl TaskMessage {
    /// Decodes the in-band part of a task message (bytes, or a received
    /// arena block); raises `corral.CorruptDataError` on a bad header.
    #[staticmethod]
    fn decode(py: Python<'_>, inband: &Bound<'_, PyAny>) -> PyResult<Self> {
        // A small message arrives as bytes (read directly); a large one as
        // an arena block (read through the buffer protocol).
        let exported;
        let raw = match inband.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                exported = Bytes::get(inband)?;
                exported.slice()
            }
        };
        let layout = wire::decode_task(raw).map_err(to_py)?;
        let h = layout.header;
        let function = (h.fn_len > 0).then(|| PyBytes::new(py, &raw[layout.fn_at..layout.args_at]).unbind());
        let view = PyMemoryView::from(inband)?;
        let args = view.get_item(PySlice::new(py, layout.args_at as isize, isize::MAX, 1))?;
        Ok(TaskMessage {
            task: h.task,
            fn_id: h.fn_id,
            kind: h.kind.name(),
            reset_fns: h.reset_fns,
            timeout_ns: u64::from(h.timeout_ms) * 1_000_000,
            function,
            args: args.unbind(),
        })
    }
}

/// The in-band bytes of a result message from worker slot `slot` about
/// `task`: the header, then `outcome` (the pickled value or packed
/// exception). `status`: "ok", "raised", "cancelled", "init_failed" or
/// "ready"; `busy_ns`: how long the task ran.
#[pyfunction]
fn encode_result<'py>(
    py: Python<'py>,
    task: u64,
    status: &str,
    slot: u16,
    busy_ns: u64,
    outcome: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let status = Status::from_name(status).map_err(to_py)?;
    if status == Status::Wake {
        return Err(PyValueError::new_err("a worker does not send the pool's wake-ups"));
    }
    let outcome = Bytes::get(outcome)?;
    let header = ResultHeader { task, status, slot, busy_ns };
    PyBytes::new_with(py, RESULT_HEADER_LEN + outcome.slice().len(), |buf| {
        wire::write_result(buf, header, outcome.slice()).map_err(to_py)
    })
}

/// A worker's view of the pool's board.
#[pyclass(module = "corral._core", frozen)]
pub struct PoolBoard {
    board: Board,
}

fn state_from(name: &str) -> PyResult<WorkerState> {
    Ok(match name {
        "retiring" => WorkerState::Retiring,
        "init_failed" => WorkerState::InitFailed,
        "stopped" => WorkerState::Stopped,
        other => return Err(PyValueError::new_err(format!("unknown worker state {other:?}"))),
    })
}

#[pymethods]
impl PoolBoard {
    /// Maps the board behind `fd`, taking ownership of the descriptor.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("bad descriptor"));
        }
        // SAFETY: the caller hands over an open descriptor it owns (an
        // inherited one) and never uses it again.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PoolBoard { board: Board::open(owned).map_err(to_py)? })
    }

    /// Slot `slot`'s worker (pid `pid`) is ready for tasks.
    fn ready(&self, slot: usize, pid: u32) -> PyResult<()> {
        self.board.ready(slot, pid).map_err(to_py)
    }

    /// Slot `slot`'s worker is about to run `task`; False if it was
    /// cancelled first (then skip it).
    fn begin(&self, slot: usize, task: u64, timeout_ns: u64) -> PyResult<bool> {
        Ok(self.board.begin(slot, task, timeout_ns).map_err(to_py)? == Start::Run)
    }

    /// Slot `slot`'s worker finished its task; returns its run time in ns.
    fn end(&self, slot: usize) -> PyResult<u64> {
        self.board.end(slot).map_err(to_py)
    }

    /// Records that slot `slot`'s worker is leaving: "retiring",
    /// "init_failed" or "stopped".
    fn set_state(&self, slot: usize, state: &str) -> PyResult<()> {
        self.board.set_state(slot, state_from(state)?).map_err(to_py)
    }
}

/// `map`'s chunk-size policy: starts at 1, follows the measured time per item.
#[pyclass(module = "corral._core")]
pub struct ChunkSizer {
    inner: CoreChunkSizer,
}

#[pymethods]
impl ChunkSizer {
    #[new]
    fn new() -> Self {
        ChunkSizer { inner: CoreChunkSizer::new() }
    }

    /// The size of the next chunk.
    fn next(&self) -> usize {
        self.inner.next()
    }

    /// The size of the next chunk when `left` items remain to be sent over
    /// `workers` workers (capped at a share of them).
    fn next_of(&self, left: usize, workers: usize) -> usize {
        self.inner.next_of(left, workers)
    }

    /// A chunk of `items` items ran for `busy_ns` nanoseconds.
    fn observe(&mut self, items: usize, busy_ns: u64) {
        self.inner.observe(items, busy_ns);
    }

    /// How many chunks to keep in flight over `workers` workers now (fewer
    /// while the size still grows, so that larger chunks go out sooner).
    fn in_flight(&self, workers: usize) -> usize {
        self.inner.in_flight(workers)
    }
}

/// A map chunk's items or values as they travel between the parent and a
/// worker: the `i64`s of the values, in this machine's byte order (a
/// `memoryview` cast to "q" reads them), if every one is exactly an `int` (not a subclass:
/// a `bool` stays a `bool`) in that range (8 bytes each, copied in one
/// pass, `unpack_ints` in the parent), else whether they are all of one
/// exact scalar type (`int`, `float`, `complex`, `bool`, `None`: nothing a
/// caller could wait to see freed, so the parent yields their list as it
/// is, without dropping each as it goes). Measured on the 2-core VM
/// (2026-12-07), per item of 40,000 squares of 500,000..540,000: pickling
/// their list 35 ns, this 5.5; `unpack_ints` 16 ns, where loading the
/// pickle took 28. The Python check of the types it replaces took 11 ns.
#[pyfunction]
fn pack_scalars<'py>(py: Python<'py>, values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyAny>> {
    let Some(first) = values.iter().next() else {
        return Ok(PyBool::new(py, false).to_owned().into_any());
    };
    let kind = first.get_type();
    let exact = |t: &Bound<'py, PyType>| kind.is(t);
    let is_int = exact(&py.get_type::<PyInt>());
    if !(is_int
        || exact(&py.get_type::<PyFloat>())
        || exact(&py.get_type::<PyBool>())
        || exact(&py.get_type::<PyComplex>())
        || kind.is(py.None().bind(py).get_type()))
    {
        return Ok(PyBool::new(py, false).to_owned().into_any());
    }
    let mut packed: Option<Vec<u8>> = if is_int { Some(Vec::with_capacity(values.len() * 8)) } else { None };
    for v in values.iter() {
        if !v.get_type().is(&kind) {
            return Ok(PyBool::new(py, false).to_owned().into_any());
        }
        if let Some(out) = packed.as_mut() {
            match v.extract::<i64>() {
                Ok(x) => out.extend_from_slice(&x.to_ne_bytes()),
                Err(_) => packed = None, // past 64 bits: the list travels pickled
            }
        }
    }
    Ok(match packed {
        Some(bytes) => PyBytes::new(py, &bytes).into_any(),
        None => PyBool::new(py, true).to_owned().into_any(),
    })
}

/// The list of `int`s `pack_scalars` packed into `data`.
#[pyfunction]
fn unpack_ints<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    if data.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!(
            "packed ints are 8 bytes each; {} bytes is not a whole number of them",
            data.len()
        )));
    }
    PyList::new(py, data.chunks_exact(8).map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
}

/// How many chunks of `chunk_size` items `map` keeps in flight over `workers`.
#[pyfunction]
fn chunks_in_flight(chunk_size: usize, workers: usize) -> usize {
    core_chunks_in_flight(chunk_size, workers)
}

/// Adds the pool's classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PoolCore>()?;
    m.add_class::<TaskDone>()?;
    m.add_class::<TaskLost>()?;
    m.add_class::<TaskCancelled>()?;
    m.add_class::<TaskRejected>()?;
    m.add_class::<WorkerExited>()?;
    m.add_class::<InitFailed>()?;
    m.add_class::<PoolBroken>()?;
    m.add_class::<PoolClosed>()?;
    m.add_class::<TaskFailed>()?;
    m.add_class::<TaskMessage>()?;
    m.add_function(wrap_pyfunction!(encode_result, m)?)?;
    m.add_class::<PoolBoard>()?;
    m.add_class::<ChunkSizer>()?;
    m.add_function(wrap_pyfunction!(chunks_in_flight, m)?)?;
    m.add_function(wrap_pyfunction!(pack_scalars, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_ints, m)?)?;
    m.add("MAX_UNSTARTED_DEATHS", corral_core::pool::dispatch::MAX_UNSTARTED_DEATHS)?;
    Ok(())
}
