//! Core errors as the Python exceptions a user of the stdlib expects.

use corral_core::CoreError;
use pyo3::exceptions::{PyEOFError, PyMemoryError, PyOSError, PyTimeoutError, PyValueError};
use pyo3::PyErr;

pyo3::import_exception!(queue, Full);
pyo3::import_exception!(queue, Empty);
pyo3::import_exception!(corral.errors, ChannelClosed);
pyo3::import_exception!(corral.errors, CorruptDataError);
pyo3::import_exception!(corral.errors, OwnerDiedError);
pyo3::import_exception!(concurrent.futures.process, BrokenProcessPool);

/// Maps a core error for a queue (end of data: `ChannelClosed`).
pub fn queue_err(e: CoreError) -> PyErr {
    match e {
        CoreError::Closed(msg) => ChannelClosed::new_err(msg),
        other => to_py(other),
    }
}

/// Maps a core error for a connection (end of data: `EOFError`; a closed
/// peer on send: `BrokenPipeError`, as a socket would).
pub fn conn_err(e: CoreError, sending: bool) -> PyErr {
    match e {
        CoreError::Closed(msg) if sending => pyo3::exceptions::PyBrokenPipeError::new_err(msg),
        CoreError::Closed(msg) => PyEOFError::new_err(msg),
        other => to_py(other),
    }
}

/// The general mapping.
pub fn to_py(e: CoreError) -> PyErr {
    match e {
        CoreError::Os { context, source } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, format!("{context}: {source}"))),
            None => PyOSError::new_err(format!("{context}: {source}")),
        },
        CoreError::Corrupt { .. } => CorruptDataError::new_err(e.to_string()),
        CoreError::Timeout => PyTimeoutError::new_err("timed out"),
        CoreError::Full => Full::new_err(()),
        CoreError::Empty => Empty::new_err(()),
        CoreError::Closed(msg) => ChannelClosed::new_err(msg),
        CoreError::OwnerDied(_) => OwnerDiedError::new_err(e.to_string()),
        CoreError::TooLarge { .. } | CoreError::Invalid(_) => PyValueError::new_err(e.to_string()),
        CoreError::Broken(msg) => BrokenProcessPool::new_err(msg),
        CoreError::NoMemory(msg) => PyMemoryError::new_err(msg),
    }
}
