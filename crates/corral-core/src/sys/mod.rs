//! Thin, safe wrappers over the Linux facilities the core is built on.

pub mod futex;
pub mod liveness;
pub mod robust_lock;
pub mod shm;
pub mod signal;
