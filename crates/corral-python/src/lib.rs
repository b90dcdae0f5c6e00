//! `corral._core`: the bindings of corral-core. They translate arguments,
//! release the GIL around waits and copies, and map errors to exceptions;
//! all logic lives in the core, all API shaping in `python/corral`.

mod arena_cache;
mod async_wait;
mod barrier;
mod block;
mod connection;
mod errors;
mod fds;
mod numpy_alloc;
mod pool;
mod process;
mod queue;
mod shared_buffer;
mod sync;
mod threadpool;
mod wait;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    m.add_class::<queue::SharedQueue>()?;
    m.add_class::<block::ShmBlock>()?;
    m.add_class::<connection::Connection>()?;
    m.add_function(wrap_pyfunction!(connection::pipe, m)?)?;
    m.add_function(wrap_pyfunction!(queue::fit_reservation, m)?)?;
    m.add_class::<process::ChildProcess>()?;
    m.add_function(wrap_pyfunction!(process::spawn, m)?)?;
    m.add_function(wrap_pyfunction!(process::die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(process::adopt_child, m)?)?;
    m.add_function(wrap_pyfunction!(process::watch_external, m)?)?;
    m.add_function(wrap_pyfunction!(process::python_thread_count, m)?)?;
    m.add_function(wrap_pyfunction!(fds::share_fd, m)?)?;
    m.add_function(wrap_pyfunction!(fds::fetch_fd, m)?)?;
    m.add_function(wrap_pyfunction!(fds::dup_fd, m)?)?;
    m.add_function(wrap_pyfunction!(fds::share_fd_reusable, m)?)?;
    m.add_function(wrap_pyfunction!(fds::unshare_fd, m)?)?;
    m.add_function(wrap_pyfunction!(fds::shared_fd_count, m)?)?;
    m.add_class::<shared_buffer::SharedBuffer>()?;
    sync::register(m)?;
    m.add_class::<barrier::Barrier>()?;
    m.add_class::<async_wait::AsyncNotifier>()?;
    m.add_function(wrap_pyfunction!(async_wait::wait_word, m)?)?;
    m.add_function(wrap_pyfunction!(async_wait::watch, m)?)?;
    m.add_function(wrap_pyfunction!(async_wait::unwatch, m)?)?;
    pool::register(m)?;
    m.add_class::<threadpool::ThreadPoolCore>()?;
    m.add_class::<threadpool::Sleeper>()?;
    numpy_alloc::register(m)?;
    m.add_function(wrap_pyfunction!(arena_cache::keep_arenas, m)?)?;
    m.add_function(wrap_pyfunction!(arena_cache::kept_arena_bytes, m)?)?;
    Ok(())
}
