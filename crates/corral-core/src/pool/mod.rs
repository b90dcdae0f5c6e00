//! The process pool's core: the shared board (`board`), the message headers
//! (`wire`), the scheduler's books (`dispatch`), the chunk-size policy of
//! `map` (`chunking`) and the running pool with its completion thread
//! (`runtime`). Workers are started by the caller (the Python layer, which
//! knows how to boot an interpreter) and attached to a slot.

pub mod board;
pub mod chunking;
pub mod dispatch;
pub mod runtime;
pub mod wire;
