//! Test hooks (feature `testing`, on for this crate's own integration
//! tests, off in the extension): named points inside real operations where
//! a test can stop a process, to SIGKILL it exactly there. Nothing is
//! simulated: the process runs the real code up to the point and the hook
//! only decides whether it goes on.

use std::sync::OnceLock;

/// A point inside an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `SharedQueue::put`, under the ring's write lock: the message's arena
    /// blocks are QUEUED and its frame is written, not yet published.
    QueuePublishing,
    /// `SharedQueue::get_many`, under the ring's read lock: a frame was
    /// consumed (`head` moved), its arena blocks are not yet marked HELD.
    QueuePopped,
    /// `arena::Arena::free`: the block is FREEING, `in_use` still counts
    /// it.
    ArenaFreeing,
    /// `sys::signal::wait_for`: a try failed and the wait is about to
    /// announce its sleep (`Signal::prepare`).
    SignalSleeping,
}

type Hook = Box<dyn Fn(Point) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs this process's hook, called at every `Point` reached; false if
/// one was installed already (it stays).
pub fn set_hook(hook: impl Fn(Point) + Send + Sync + 'static) -> bool {
    HOOK.set(Box::new(hook)).is_ok()
}

/// Runs the hook, if any, at `point`.
pub(crate) fn reached(point: Point) {
    if let Some(hook) = HOOK.get() {
        hook(point);
    }
}
