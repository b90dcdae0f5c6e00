//! A per-process service started on first use: the spawner thread
//! (`process.rs`), the fd broker (`fdshare.rs`) and the async-wait hub
//! (`sync/async_wait.rs`).
//!
//! # Design
//!
//! Each of them is a value shared by its callers plus a thread that serves
//! it. `fork` copies the value into the child but not the thread, so a child
//! that used the parent's value would queue work nobody serves (and the
//! broker would hand out an address that answers with the parent's pid).
//! [`PerProcess`] records the pid that started the service; a caller in
//! another pid (a forked child, even a grandchild) finds it stale, lets the
//! service forget what it inherited ([`Service::forget_inherited`]: e.g. the
//! broker closes the parent's registered descriptors), and starts its own.
//! The inherited value itself is leaked, never dropped: its destructors
//! (a channel's disconnect, an `Arc` the parent's thread also holds) were
//! written for the parent's threads. It is a few hundred bytes per fork.
//!
//! What must happen at the fork itself, before any code of the child runs
//! (the broker's listening socket must not stay open in a child that never
//! shares), is a `pthread_atfork` child handler given to
//! [`PerProcess::with_fork_handler`]; it is registered once, before the first
//! start, and must be async-signal-safe.
//!
//! The slot is a `Mutex` held only to look the service up or start it. A
//! fork while another thread holds it leaves it locked in the child (as for
//! any Rust mutex): starting a service takes one thread spawn, so the window
//! is that short.

use std::sync::{Arc, Mutex};

use super::liveness::my_pid;
use super::once::NoWaitOnce;
use crate::error::{CoreError, Result};

/// A value one process shares with the thread that serves it.
pub trait Service: Send + Sync + 'static {
    /// Called in a forked child on the parent's value, once, before the
    /// child starts its own: release what the child inherited and must not
    /// keep (descriptors, registrations). It must not wait for a lock a
    /// thread of the parent may have held at the fork (use `try_lock`).
    fn forget_inherited(&self) {}
}

/// The value of a started service and the process that started it.
struct Started<T> {
    pid: u32,
    service: Arc<T>,
}

/// A service started at most once per process (see the module doc).
pub struct PerProcess<T> {
    what: &'static str,
    slot: Mutex<Option<Started<T>>>,
    at_fork: Option<extern "C" fn()>,
    registered: NoWaitOnce,
}

impl<T: Service> PerProcess<T> {
    /// A service not started yet; `what` names it in errors.
    pub const fn new(what: &'static str) -> Self {
        PerProcess { what, slot: Mutex::new(None), at_fork: None, registered: NoWaitOnce::new() }
    }

    /// As `new`, with `handler` run in every forked child (see the module
    /// doc). It must be async-signal-safe.
    pub const fn with_fork_handler(what: &'static str, handler: extern "C" fn()) -> Self {
        PerProcess { what, slot: Mutex::new(None), at_fork: Some(handler), registered: NoWaitOnce::new() }
    }

    fn poisoned(&self) -> CoreError {
        CoreError::Invalid(format!("{} poisoned", self.what))
    }

    /// This process's service, started by `start` (given this pid) if it
    /// is not running yet. `start` runs with the slot locked, so two
    /// threads never start two services.
    pub fn get_or_start(&self, start: impl FnOnce(u32) -> Result<T>) -> Result<Arc<T>> {
        let mut slot = self.slot.lock().map_err(|_| self.poisoned())?;
        let pid = my_pid();
        if let Some(s) = slot.as_ref().filter(|s| s.pid == pid) {
            return Ok(s.service.clone());
        }
        if let Some(inherited) = slot.take() {
            inherited.service.forget_inherited();
            // Leaked, not dropped: its destructors could wait for locks or
            // wake threads of the parent that do not exist here.
            std::mem::forget(inherited);
        }
        if let Some(handler) = self.at_fork {
            // Not a std `Once` (a child forked while another thread
            // registers would wait for ever: `sys::once`); a caller that
            // finds it claimed goes on without waiting.
            self.registered.run(|| {
                // SAFETY: `with_fork_handler` requires the handler to be
                // async-signal-safe, so it may run in the child of a fork
                // made by any thread. Registration cannot fail but on
                // ENOMEM, which leaves no handler: the same as before.
                unsafe { libc::pthread_atfork(None, None, Some(handler)) };
            });
        }
        let service = Arc::new(start(pid)?);
        *slot = Some(Started { pid, service: service.clone() });
        Ok(service)
    }

    /// This process's service if it was started here (not one inherited
    /// from a parent).
    pub fn get(&self) -> Option<Arc<T>> {
        let slot = self.slot.lock().ok()?;
        slot.as_ref().filter(|s| s.pid == my_pid()).map(|s| s.service.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counted(u32);

    impl Service for Counted {}

    #[test]
    fn starts_once_per_process() {
        static S: PerProcess<Counted> = PerProcess::new("test service");
        static STARTS: AtomicU32 = AtomicU32::new(0);
        assert!(S.get().is_none());
        let start = |pid| {
            STARTS.fetch_add(1, Ordering::SeqCst);
            Ok(Counted(pid))
        };
        let a = S.get_or_start(start).unwrap();
        let b = S.get_or_start(start).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.0, std::process::id());
        assert_eq!(STARTS.load(Ordering::SeqCst), 1);
        assert!(S.get().is_some());
    }

    #[test]
    fn a_failed_start_leaves_nothing_started() {
        static S: PerProcess<Counted> = PerProcess::new("test service");
        assert!(S.get_or_start(|_| Err(CoreError::Invalid("no".into()))).is_err());
        assert!(S.get().is_none());
        assert!(S.get_or_start(|pid| Ok(Counted(pid))).is_ok());
    }

    struct Forgetful {
        pid: u32,
        forgotten: AtomicU32,
    }

    impl Service for Forgetful {
        fn forget_inherited(&self) {
            self.forgotten.fetch_add(1, Ordering::SeqCst);
        }
    }

    static FORK_HANDLER_RAN: AtomicU32 = AtomicU32::new(0);

    extern "C" fn note_fork() {
        FORK_HANDLER_RAN.store(1, Ordering::SeqCst);
    }

    #[test]
    fn a_forked_child_forgets_the_parents_service_and_starts_its_own() {
        static S: PerProcess<Forgetful> = PerProcess::with_fork_handler("test service", note_fork);
        let start = |pid| Ok(Forgetful { pid, forgotten: AtomicU32::new(0) });
        let parents = S.get_or_start(start).unwrap();
        // SAFETY: the child only reads and writes atomics and memory it
        // owns, takes an uncontended futex mutex, allocates (glibc's malloc
        // is fork-safe) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = S.get().is_none()
                && FORK_HANDLER_RAN.load(Ordering::SeqCst) == 1
                && S.get_or_start(start).is_ok_and(|mine| mine.pid != parents.pid)
                && parents.forgotten.load(Ordering::SeqCst) == 1;
            // SAFETY: ends the forked child without running the parent's
            // exit handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
        assert_eq!(parents.forgotten.load(Ordering::SeqCst), 0, "the parent's own service is untouched");
        assert!(Arc::ptr_eq(&S.get().unwrap(), &parents));
    }
}
