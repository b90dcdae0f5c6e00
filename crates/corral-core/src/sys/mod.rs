//! Thin, safe wrappers over the Linux facilities the core is built on, and
//! the waiting vocabulary every blocking call shares: one deadline type
//! (`deadline`), one spin-then-sleep policy (`backoff`), one fork-safe
//! per-process service (`singleton`), one-time actions that never wait
//! (`once`: a `std` `Once` copied "running" by a fork waits for ever).

pub mod backoff;
pub mod deadline;
pub mod futex;
pub mod liveness;
pub mod once;
pub mod robust_lock;
pub mod shm;
pub mod signal;
pub mod singleton;
