//! `_core.PoolCore` (the parent side of a process pool), `_core.PoolBoard`
//! (a worker's view of the shared board) and `_core.ChunkSizer`. The
//! scheduling, supervision and completion thread live in
//! `corral_core::pool`; this file converts arguments and events.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::channel::queue::SharedQueue as CoreQueue;
use corral_core::fdshare::Lease;
use corral_core::pool::board::{Board, Start, WorkerState};
use corral_core::pool::chunking::{chunks_in_flight as core_chunks_in_flight, ChunkSizer as CoreChunkSizer};
use corral_core::pool::runtime::{Cause, Event, Pool, Task, TaskArgs};
use corral_core::pool::wire::Status;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::to_py;
use crate::process::ChildProcess;
use crate::queue::{parts_to_py, Bytes, SharedQueue};
use crate::wait::SLICE;

/// Pickled functions kept by id, so a function is copied once, not per task.
const FN_CACHE: usize = 1024;

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

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Crashed => "crashed",
        Cause::CrashedBooting => "crashed_booting",
        Cause::TimedOut => "timed_out",
        Cause::Killed => "killed",
        Cause::Retired => "retired",
        Cause::Stopped => "stopped",
        Cause::InitFailed => "init_failed",
        Cause::DiedBeforeStart => "died_before_start",
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Raised => "raised",
        Status::Cancelled => "cancelled",
        Status::InitFailed => "init_failed",
        Status::Ready => "ready",
        Status::Wake => "wake",
    }
}

/// The parent side of a process pool: submit tasks, read events.
#[pyclass(module = "corral._core", frozen)]
pub struct PoolCore {
    pool: Pool<PyArgs>,
    events: Receiver<Event<PyArgs>>,
    results: Arc<CoreQueue>,
    fns: Mutex<HashMap<u64, Arc<[u8]>>>,
}

impl PoolCore {
    fn fn_bytes(&self, fn_id: u64, fn_bytes: &[u8]) -> PyResult<Arc<[u8]>> {
        let mut cache = self.fns.lock().map_err(|_| PyRuntimeError::new_err("function cache poisoned"))?;
        if let Some(b) = cache.get(&fn_id) {
            return Ok(b.clone());
        }
        if cache.len() >= FN_CACHE {
            cache.clear();
        }
        let b: Arc<[u8]> = Arc::from(fn_bytes);
        cache.insert(fn_id, b.clone());
        Ok(b)
    }

    fn event_to_py<'py>(&self, py: Python<'py>, e: Event<PyArgs>) -> PyResult<Bound<'py, PyTuple>> {
        Ok(match e {
            Event::Done { task, status, parts, done } => {
                drop(done);
                let msg = parts_to_py(py, &self.results, parts)?;
                PyTuple::new(
                    py,
                    [
                        "done".into_pyobject(py)?.into_any(),
                        task.into_pyobject(py)?.into_any(),
                        status_name(status).into_pyobject(py)?.into_any(),
                        msg.into_any(),
                    ],
                )?
            }
            Event::Lost { task, exitcode, cause, done } => {
                drop(done);
                ("lost", task, exitcode, cause_name(cause)).into_pyobject(py)?
            }
            Event::Cancelled { task, done } => {
                drop(done);
                ("cancelled", task).into_pyobject(py)?
            }
            Event::Rejected { task, error, done } => {
                drop(done);
                ("rejected", task, error).into_pyobject(py)?
            }
            Event::WorkerExited { slot, exitcode, cause, respawn } => {
                ("exited", slot, exitcode, cause_name(cause), respawn).into_pyobject(py)?
            }
            Event::InitFailed { parts } => {
                let msg = parts_to_py(py, &self.results, parts)?;
                PyTuple::new(py, ["init_failed".into_pyobject(py)?.into_any(), msg.into_any()])?
            }
            Event::Broken { reason, abandoned } => {
                let ids: Vec<u64> = abandoned.into_iter().map(|(id, _)| id).collect();
                ("broken", reason, ids).into_pyobject(py)?
            }
            Event::Closed => ("closed",).into_pyobject(py)?,
        })
    }
}

#[pymethods]
impl PoolCore {
    /// A pool of `workers` slots whose workers send results to `results`.
    #[new]
    fn new(workers: usize, results: PyRef<'_, SharedQueue>) -> PyResult<Self> {
        let results = results.inner.clone();
        let (pool, events) = Pool::new(workers, results.clone()).map_err(to_py)?;
        Ok(PoolCore { pool, events, results, fns: Mutex::new(HashMap::new()) })
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

    /// Queues task `task`: function `fn_id` (pickled as `fn_bytes`), pickled
    /// arguments `inband` + `buffers`, `kind` 0 (one call) or 1 (a chunk).
    /// `shares`: tokens of reusable broker registrations the arguments name;
    /// the task owns them from this call on, even if it fails, and they are
    /// withdrawn when the task is done.
    #[pyo3(signature = (task, fn_id, fn_bytes, inband, buffers, kind=0, timeout_ms=0, retries=0, shares=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        task: u64,
        fn_id: u64,
        fn_bytes: &[u8],
        inband: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        kind: u8,
        timeout_ms: u32,
        retries: u32,
        shares: Vec<u64>,
    ) -> PyResult<()> {
        let lease = Lease::new(shares);
        let fn_bytes = self.fn_bytes(fn_id, fn_bytes)?;
        let inband = Bytes::get(inband)?;
        let buffers = buffers.try_iter()?.map(|b| Bytes::get(&b?)).collect::<PyResult<Vec<_>>>()?;
        let big = buffers.iter().map(|b| b.slice().len()).sum::<usize>() > 64 * 1024;
        let t = Task { fn_id, fn_bytes, args: PyArgs { inband, buffers, _lease: lease }, kind, timeout_ms, retries };
        let r = if big { py.detach(|| self.pool.submit(task, t)) } else { self.pool.submit(task, t) };
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

    /// Kills every worker; the pool reports itself broken with `reason`.
    fn terminate(&self, reason: &str) -> PyResult<()> {
        self.pool.terminate(reason).map_err(to_py)
    }

    /// Waits up to `timeout` seconds for events; returns those that came
    /// (at most `max_events`, possibly none) as tuples.
    #[pyo3(signature = (timeout, max_events=1024))]
    fn next_events<'py>(&self, py: Python<'py>, timeout: f64, max_events: usize) -> PyResult<Bound<'py, PyList>> {
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, SLICE.as_secs_f64()));
        let first = py.detach(|| self.events.recv_timeout(wait));
        let out = PyList::empty(py);
        match first {
            Ok(e) => out.append(self.event_to_py(py, e)?)?,
            Err(RecvTimeoutError::Timeout) => return Ok(out),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the pool's completion thread is gone"))
            }
        }
        while out.len() < max_events {
            match self.events.try_recv() {
                Ok(e) => out.append(self.event_to_py(py, e)?)?,
                Err(_) => break,
            }
        }
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

    /// A chunk of `items` items ran for `busy_ns` nanoseconds.
    fn observe(&mut self, items: usize, busy_ns: u64) {
        self.inner.observe(items, busy_ns);
    }
}

/// How many chunks of `chunk_size` items `map` keeps in flight over `workers`.
#[pyfunction]
fn chunks_in_flight(chunk_size: usize, workers: usize) -> usize {
    core_chunks_in_flight(chunk_size, workers)
}

/// Adds the pool's classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PoolCore>()?;
    m.add_class::<PoolBoard>()?;
    m.add_class::<ChunkSizer>()?;
    m.add_function(wrap_pyfunction!(chunks_in_flight, m)?)?;
    m.add("MAX_UNSTARTED_DEATHS", corral_core::pool::dispatch::MAX_UNSTARTED_DEATHS)?;
    Ok(())
}
