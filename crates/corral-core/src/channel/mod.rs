//! Channels between threads and processes: the shared queue and the pipe.

pub mod pipe;
pub mod queue;
