//! corral-core: the Rust core of corral, usable without Python.
//!
//! - `sys`: shared memory (memfd), futexes, robust locks, liveness checks,
//!   and how every wait is made: `Deadline`, `Backoff` (spin then sleep),
//!   `PerProcess` (a lazily started service that a fork child restarts).
//! - `ring`: a bounded multi-producer multi-consumer ring of framed
//!   messages in shared memory that survives a peer dying mid-message.
//! - `arena`: a shared-memory block allocator for large message parts.
//! - `frame`: the wire formats and their validating decoders.
//! - `channel`: the queue (ring + arena) and the pipe (socket).
//! - `fdshare`: handing descriptors to processes that did not inherit them.
//! - `process`: spawning children that die with their parent, via pidfd.
//! - `pool`: the process pool: board, scheduler books, completion thread.
//! - `threadpool`: worker threads taking jobs from one channel.
//! - `sync`: locks, semaphores, events, conditions shared across processes.

pub mod arena;
pub mod channel;
pub mod error;
pub mod fdshare;
pub mod frame;
pub mod pool;
pub mod process;
pub mod ring;
pub mod sync;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod threadpool;

pub use error::{CoreError, Result};
