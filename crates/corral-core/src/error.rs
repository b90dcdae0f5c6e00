//! The core's error type: every failure that depends on input or on the OS
//! comes back as one of these, never as a panic.

use std::io;

/// Errors of the corral core. The Python bindings map each variant to the
/// exception a Python user expects (`queue.Full`, `EOFError`, ...).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A system call failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A shared-memory block or frame did not have the expected layout.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which structure was bad.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A blocking operation ran out of time.
    #[error("timed out")]
    Timeout,
    /// A non-blocking put found no room, or a put waited its whole timeout.
    #[error("full")]
    Full,
    /// A non-blocking get found nothing, or a get waited its whole timeout.
    #[error("empty")]
    Empty,
    /// No more data can arrive: the peer closed its end, or every producer
    /// closed or died.
    #[error("{0}")]
    Closed(String),
    /// The message is larger than the channel can ever hold.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the rejected message.
        size: u64,
        /// The largest size the channel accepts.
        limit: u64,
    },
    /// The owner of a lock died holding it (its pid, or tid for an RLock);
    /// the lock was released.
    #[error("the owner ({0}) of the lock died holding it; the lock was released")]
    OwnerDied(u32),
    /// The caller passed a value the operation cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// Memory or address space ran out; the message says which limit and
    /// what to change.
    #[error("{0}")]
    NoMemory(String),
    /// A process pool can no longer run tasks (why).
    #[error("{0}")]
    Broken(String),
}

impl CoreError {
    /// Wraps an OS error with what was being attempted.
    pub fn os(context: &'static str, source: impl Into<io::Error>) -> Self {
        CoreError::Os { context, source: source.into() }
    }

    /// A layout or frame check failed.
    pub fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        CoreError::Corrupt { what, detail: detail.into() }
    }
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, CoreError>;
