//! `_core.spawn` and `_core.ChildProcess`: children started from the
//! core's spawner thread and watched by pidfd.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use corral_core::process::{die_with_parent as core_die_with_parent, spawn as core_spawn, Child, Exit, SpawnRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::wait::{deadline, wait};

/// A child process.
#[pyclass(module = "corral._core", frozen)]
pub struct ChildProcess {
    pub(crate) child: Arc<Child>,
}

/// Starts `argv` as a child that is killed if this process dies; the
/// descriptors in `pass_fds` are inherited under the same numbers.
#[pyfunction]
#[pyo3(signature = (argv, pass_fds=Vec::new(), env=Vec::new()))]
pub fn spawn(
    py: Python<'_>,
    argv: Vec<OsString>,
    pass_fds: Vec<i32>,
    env: Vec<(OsString, OsString)>,
) -> PyResult<ChildProcess> {
    if argv.is_empty() {
        return Err(PyValueError::new_err("argv is empty"));
    }
    let req = SpawnRequest { argv, pass_fds, env };
    let child = py.detach(|| core_spawn(req)).map_err(to_py)?;
    Ok(ChildProcess { child: Arc::new(child) })
}

/// A `ChildProcess` watching `pid`, a child this process forked itself.
#[pyfunction]
pub fn adopt_child(pid: i32) -> PyResult<ChildProcess> {
    let pid = u32::try_from(pid).map_err(|_| PyValueError::new_err("pid must be positive"))?;
    Ok(ChildProcess { child: Arc::new(Child::adopt(pid).map_err(to_py)?) })
}

/// A `ChildProcess` watching `pid`, a process a fork server made and
/// reaps; its exit code is given with `ChildProcess.set_exit`.
#[pyfunction]
pub fn watch_external(pid: i32) -> PyResult<ChildProcess> {
    let pid = u32::try_from(pid).map_err(|_| PyValueError::new_err("pid must be positive"))?;
    Ok(ChildProcess { child: Arc::new(Child::watch_external(pid).map_err(to_py)?) })
}

/// In a child made by fork: die with the parent; False if `parent` is
/// already gone.
#[pyfunction]
pub fn die_with_parent(parent: u32) -> PyResult<bool> {
    core_die_with_parent(parent).map_err(to_py)
}

#[pymethods]
impl ChildProcess {
    /// The child's pid.
    #[getter]
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The pidfd (readable once the child exits), for event loops.
    fn pidfd(&self) -> i32 {
        self.child.pidfd().as_raw_fd()
    }

    /// Waits up to `timeout` seconds (None: for ever) and returns the exit
    /// code (negative: killed by that signal), or None if still running.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<i32>> {
        let exit = wait(py, deadline(timeout)?, |slice| {
            self.child.wait(Some(slice.end.saturating_duration_since(std::time::Instant::now())))
        })?;
        Ok(exit.map_err(to_py)?.map(|e| e.exitcode()))
    }

    /// Records the exit code of an external child (negative: signal);
    /// `server_died`: it died because the fork server that reaps it died
    /// (a pool does not count that as its boot failing).
    #[pyo3(signature = (code, server_died=false))]
    fn set_exit(&self, code: i32, server_died: bool) {
        if server_died {
            self.child.set_reaper_died();
        }
        self.child.set_exit(if code < 0 { Exit::Signal(-code) } else { Exit::Code(code) });
    }

    /// Sends signal `sig` (no effect once the child is reaped).
    fn signal(&self, sig: i32) -> PyResult<()> {
        self.child.signal(sig).map_err(to_py)
    }
}

/// How many Python thread states this interpreter has: every thread that
/// runs Python or was started by `_thread`, whatever its target (one
/// running a builtin has no frame, so `sys._current_frames` misses it, and
/// `threading` misses every thread it did not start).
#[pyfunction]
pub fn python_thread_count(_py: Python<'_>) -> usize {
    let mut count = 0;
    // SAFETY: the GIL is held (`_py`) for the whole walk and no Python code
    // runs inside it, so no other thread takes the GIL meanwhile. CPython
    // (3.11-3.13, GIL builds) unlinks the state of a thread that ends
    // (`_thread`'s threads, `PyGILState_Release`) while that thread holds
    // the GIL (`tstate_delete_common` before `_PyEval_ReleaseLock`; freed
    // after), so none of those is freed during the walk; a state linked
    // meanwhile (by a thread making one before it takes the GIL) goes at
    // the list's head, which was read already: it is not counted, nothing
    // read changes under it. Not covered: a C extension calling
    // `PyThreadState_Delete` on another thread's cleared state without the
    // GIL (the C API allows it) at the same moment; the list's own lock
    // (`HEAD_LOCK`) is not exported. Only the fork server and its import
    // probes call this, single-threaded but for what the module being
    // imported started; `_thread._count` is no substitute (on 3.12+ a new
    // thread counts itself only once it runs, so a probe reading it right
    // after the import misses it).
    unsafe {
        let mut state = pyo3::ffi::PyInterpreterState_ThreadHead(pyo3::ffi::PyInterpreterState_Get());
        while !state.is_null() {
            count += 1;
            state = pyo3::ffi::PyThreadState_Next(state);
        }
    }
    count
}
