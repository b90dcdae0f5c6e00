//! `_core.ThreadPoolCore`: the core's thread pool running Python callables.
//! A worker thread waits for jobs with the GIL released, takes the GIL to
//! run a job and any others already queued, then releases it.

use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

use corral_core::threadpool::{Runner, ThreadPool};
use corral_core::CoreError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::to_py;
use crate::wait::sliced;

/// Worker threads that call the submitted Python callables (no arguments).
#[pyclass(module = "corral._core", frozen)]
pub struct ThreadPoolCore {
    pool: ThreadPool<Py<PyAny>>,
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

fn run(py: Python<'_>, job: Py<PyAny>) {
    // The callable handles its own exceptions (it sets them on its
    // future); anything that escapes is reported like an exception in a
    // thread, not lost.
    if let Err(e) = job.call0(py) {
        e.write_unraisable(py, Some(job.bind(py)));
    }
}

#[pymethods]
impl ThreadPoolCore {
    /// Up to `max_workers` threads named `name_N`, started on demand.
    #[new]
    fn new(max_workers: usize, name: &str) -> PyResult<Self> {
        let runner: Arc<Runner<Py<PyAny>>> = Arc::new(|job, next| {
            Python::attach(|py| {
                run(py, job);
                while let Some(j) = next() {
                    run(py, j);
                }
            });
        });
        Ok(ThreadPoolCore {
            pool: ThreadPool::new(max_workers, name, runner).map_err(to_py)?,
            joins: Mutex::new(Joins::default()),
        })
    }

    /// Queues `job` (a callable taking no argument).
    fn submit(&self, job: Py<PyAny>) -> PyResult<()> {
        self.pool.execute(job).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Removes and returns the jobs no thread has taken yet.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.pool.drain())
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
        py.detach(|| {
            for h in others {
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
