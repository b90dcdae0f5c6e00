//! `_core.ThreadPoolCore`: the core's thread pool running Python callables.
//! A worker thread waits for jobs with the GIL released, takes the GIL to
//! run a job and any others already queued, then releases it. A job given
//! a timeout has a callable token: the core's timer thread calls it (with
//! the GIL) once the job has run that long.
//!
//! `_core.Sleeper`: what a thread blocked on a future's result sleeps on.
//! A job may return a list of them (the sleepers of the future it ended):
//! if it is the last job of its burst, the pool thread wakes them after
//! releasing the GIL, so each waiter wakes once, to a free GIL (woken under
//! the GIL, it woke, found the GIL held, and slept again until the burst
//! ended); if more jobs are queued, at once.
//!
//! A job is a callable (`submit`), or a task object whose `_run` method
//! runs it (`submit_task`): a thread pool's future is its own job, one
//! object per task, and not callable by whoever holds the future.

use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use corral_core::threadpool::{OnExpire, Runner, ThreadPool, ThreadScope, Wakeup};
use corral_core::CoreError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::to_py;
use crate::wait::{deadline, sliced, wait};

/// A queued job (see the module).
enum Job {
    /// A callable, called with no argument.
    Call(Py<PyAny>),
    /// An object whose `_run()` runs it.
    Run(Py<PyAny>),
}

impl Job {
    /// The Python object the job was submitted as.
    fn into_object(self) -> Py<PyAny> {
        match self {
            Job::Call(o) | Job::Run(o) => o,
        }
    }
}

/// Worker threads that run the submitted jobs (see the module).
#[pyclass(module = "corral._core", frozen)]
pub struct ThreadPoolCore {
    pool: ThreadPool<Job, Py<PyAny>>,
    joins: Mutex<Joins>,
}

/// The threads the core's `shutdown` handed over.
#[derive(Default)]
struct Joins {
    /// Not joined yet.
    unjoined: Vec<JoinHandle<()>>,
    /// Every one of them, joined or not: tells a pool thread calling
    /// `shutdown` that it is one (it must not wait for itself).
    ids: Vec<ThreadId>,
}

/// What a thread blocked on a result sleeps on until the result is set
/// (see the module).
#[pyclass(module = "corral._core", frozen)]
pub struct Sleeper {
    inner: Arc<Wakeup>,
}

#[pymethods]
impl Sleeper {
    /// A sleeper not woken yet.
    #[new]
    fn new() -> Self {
        Sleeper { inner: Arc::new(Wakeup::new()) }
    }

    /// Sleeps (GIL released, Ctrl-C seen) until woken (True) or `timeout`
    /// seconds passed (False; None: no limit).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let woken = wait(py, deadline(timeout)?, |slice| Ok::<_, ()>(self.inner.wait_until(slice.end).then_some(())))?;
        Ok(matches!(woken, Ok(Some(()))))
    }

    /// Wakes the sleeper now.
    fn wake(&self) {
        self.inner.wake();
    }
}

impl Sleeper {
    /// What wakes this sleeper, to wake it without the GIL.
    pub(crate) fn wakeup(&self) -> Arc<Wakeup> {
        self.inner.clone()
    }
}

/// Runs one job; the sleepers it returns go to `wake` (woken once the GIL
/// is released).
fn run(py: Python<'_>, job: Job, wake: &mut Vec<Arc<Wakeup>>) {
    // The job handles its own exceptions (it sets them on its future);
    // anything that escapes is reported like an exception in a thread,
    // not lost.
    let outcome = match &job {
        Job::Call(f) => f.call0(py),
        Job::Run(task) => task.call_method0(py, intern!(py, "_run")),
    };
    let job = job.into_object();
    match outcome {
        Ok(ret) => {
            if let Ok(list) = ret.bind(py).cast::<PyList>() {
                wake.extend(list.iter().filter_map(|s| s.cast::<Sleeper>().ok().map(|s| s.get().inner.clone())));
            }
        }
        Err(e) => e.write_unraisable(py, Some(job.bind(py))),
    }
}

#[pymethods]
impl ThreadPoolCore {
    /// Up to `max_workers` threads named `name_N`, started on demand.
    #[new]
    fn new(max_workers: usize, name: &str) -> PyResult<Self> {
        // The waiters of a job's result are woken once the GIL is free when
        // the burst ends with that job; when another job is queued, the
        // burst goes on and they are woken at once (they then wait for the
        // GIL as before): a result never waits for later jobs.
        let runner: Arc<Runner<Job>> = Arc::new(|job, next| {
            let mut wake = Vec::new();
            Python::attach(|py| {
                let mut job = job;
                loop {
                    run(py, job, &mut wake);
                    let Some(j) = next() else { break };
                    for w in wake.drain(..) {
                        w.wake();
                    }
                    job = j;
                }
            });
            for w in wake {
                w.wake();
            }
        });
        // The token of a job past its timeout: called like a job.
        let on_expire: Arc<OnExpire<Py<PyAny>>> = Arc::new(|token| {
            let mut wake = Vec::new();
            Python::attach(|py| run(py, Job::Call(token), &mut wake));
            for w in wake {
                w.wake();
            }
        });
        // Each thread keeps its Python thread state from its first job to
        // its end, detached while it waits: a burst's `attach` then only
        // takes the GIL (see `ThreadScope`).
        let scope: Arc<ThreadScope> = Arc::new(|body| Python::attach(|py| py.detach(body)));
        Ok(ThreadPoolCore {
            pool: ThreadPool::with_timeouts(max_workers, name, runner, on_expire, Some(scope)).map_err(to_py)?,
            joins: Mutex::new(Joins::default()),
        })
    }

    /// Queues `job` (a callable taking no argument). With `timeout`
    /// (seconds, counted from when a thread takes the job), `on_timeout`
    /// (a callable taking no argument) is called on the pool's timer
    /// thread if the job is still running then; it is dropped unused when
    /// the job ends first.
    #[pyo3(signature = (job, timeout=None, on_timeout=None))]
    fn submit(&self, job: Py<PyAny>, timeout: Option<f64>, on_timeout: Option<Py<PyAny>>) -> PyResult<()> {
        self.queue(Job::Call(job), timeout, on_timeout)
    }

    /// As `submit`, for a job run by calling its `_run()` method.
    #[pyo3(signature = (task, timeout=None, on_timeout=None))]
    fn submit_task(&self, task: Py<PyAny>, timeout: Option<f64>, on_timeout: Option<Py<PyAny>>) -> PyResult<()> {
        self.queue(Job::Run(task), timeout, on_timeout)
    }

    /// Removes and returns the jobs no thread has taken yet (the objects
    /// submitted).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.pool.drain().into_iter().map(Job::into_object))
    }

    /// Accepts no more jobs; with `wait`, returns once every queued job
    /// ran and the threads left. The wait releases the GIL and checks for
    /// signals every `wait::SLICE`, so Ctrl-C interrupts it (the threads run
    /// on and a later `shutdown(True)` joins them). Without `wait` the
    /// threads are kept for a later `shutdown(True)`. Called from a pool
    /// thread with `wait`, it joins the others and raises RuntimeError for
    /// its own, as `Thread.join` does.
    fn shutdown(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        let poisoned = |_| PyRuntimeError::new_err("thread pool poisoned");
        let own = {
            let mut joins = self.joins.lock().map_err(poisoned)?;
            let handed = self.pool.shutdown();
            joins.ids.extend(handed.iter().map(|h| h.thread().id()));
            joins.unjoined.extend(handed);
            if !wait {
                return Ok(());
            }
            joins.ids.contains(&std::thread::current().id())
        };
        sliced(py, None, |e| matches!(e, CoreError::Timeout), |until| self.pool.wait_threads(usize::from(own), until))?
            .map_err(to_py)?;
        // Every other thread is at its end: joining them does not wait on a job.
        let me = std::thread::current().id();
        let others = {
            let mut joins = self.joins.lock().map_err(poisoned)?;
            let (mine, others): (Vec<_>, Vec<_>) = joins.unjoined.drain(..).partition(|h| h.thread().id() == me);
            joins.unjoined = mine;
            others
        };
        // With every worker thread ended, the timer thread ends at once;
        // unless this is the timer thread (a done-callback of a timed-out
        // future shutting the pool down): it ends by itself when the
        // callback returns, and cannot join itself.
        let timer = if own { None } else { self.pool.take_timer() }.filter(|h| h.thread().id() != me);
        py.detach(|| {
            for h in others.into_iter().chain(timer) {
                let _ = h.join();
            }
        });
        if own {
            return Err(PyRuntimeError::new_err("cannot join current thread"));
        }
        Ok(())
    }

    /// Threads started so far.
    #[getter]
    fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Jobs waiting for a thread.
    #[getter]
    fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// Jobs with a timeout running now (their deadlines are armed).
    #[getter]
    fn armed(&self) -> usize {
        self.pool.armed()
    }

    /// Per thread: jobs done, busy and idle seconds.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (i, s) in self.pool.stats().into_iter().enumerate() {
            let d = PyDict::new(py);
            d.set_item("thread", i)?;
            d.set_item("tasks_done", s.done)?;
            d.set_item("busy_s", s.busy_ns as f64 / 1e9)?;
            d.set_item("idle_s", s.age_ns.saturating_sub(s.busy_ns) as f64 / 1e9)?;
            out.append(d)?;
        }
        Ok(out)
    }
}

impl ThreadPoolCore {
    /// Queues `job`, with its timeout and token if given (see `submit`).
    fn queue(&self, job: Job, timeout: Option<f64>, on_timeout: Option<Py<PyAny>>) -> PyResult<()> {
        let queued = match (timeout, on_timeout) {
            (None, None) => self.pool.execute(job),
            (Some(t), Some(token)) => {
                let d = Duration::try_from_secs_f64(t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| PyValueError::new_err(format!("timeout must be > 0 seconds, not {t}")))?;
                self.pool.execute_with_timeout(job, d, token)
            }
            _ => return Err(PyValueError::new_err("timeout and on_timeout go together")),
        };
        queued.map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }
}
