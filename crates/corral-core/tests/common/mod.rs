//! Helpers shared by the cross-process test binaries: a child process is
//! the test binary run again on one `child_*` test (with `--exact`; no
//! `fork` of the multi-threaded test harness); its role, inherited
//! descriptors and argument come in through the environment, and a
//! `child_*` test without them returns at once.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use corral_core::channel::queue::{Part, SharedQueue};
use corral_core::process::{spawn, Child, Exit, SpawnRequest};

pub const ROLE_ENV: &str = "CORRAL_CHILD_ROLE";
pub const FDS_ENV: &str = "CORRAL_CHILD_FDS";
pub const ARG_ENV: &str = "CORRAL_CHILD_ARG";

/// Generous bound for anything that should take milliseconds: the machine
/// is a shared 2-core VM running the other tests at the same time.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A child process, killed and reaped when dropped so that a failing test
/// leaves nothing behind.
pub struct Proc {
    child: Child,
    pub role: &'static str,
}

/// Runs this test binary again as `role`, passing it `fds` (under the same
/// numbers) and `arg`.
pub fn spawn_child(role: &'static str, fds: &[RawFd], arg: &str) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let argv = vec![
        exe.into_os_string(),
        OsString::from("--exact"),
        OsString::from(role),
        OsString::from("--nocapture"),
        OsString::from("--quiet"),
        OsString::from("--test-threads=1"),
    ];
    let fd_list = fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
    let env = vec![
        (OsString::from(ROLE_ENV), OsString::from(role)),
        (OsString::from(FDS_ENV), OsString::from(fd_list)),
        (OsString::from(ARG_ENV), OsString::from(arg)),
    ];
    let child = spawn(SpawnRequest { argv, pass_fds: fds.to_vec(), env }).unwrap();
    Proc { child, role }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits for the child to exit; panics after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(e) = self.child.wait(Some(left)).unwrap() {
                return e;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.role);
        }
    }

    /// Panics if the child has already exited.
    pub fn assert_running(&self) {
        if let Some(e) = self.child.wait(Some(Duration::ZERO)).unwrap() {
            panic!("{} exited early: {e:?}", self.role);
        }
    }

    /// Polls `cond` until it holds while the child runs (a state the child
    /// reaches: parked, asleep, holding a lock); panics with `what` if the
    /// child exits first or after `PATIENCE`.
    pub fn wait_running_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        wait_until(PATIENCE, what, || {
            self.assert_running();
            cond()
        });
    }

    /// Panics unless the child exits with 0 within `PATIENCE`.
    pub fn assert_success(&self) {
        let e = self.wait_exit(PATIENCE);
        assert_eq!(e.exitcode(), 0, "{} failed: {e:?}", self.role);
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&self) -> Exit {
        self.child.signal(libc::SIGKILL).unwrap();
        self.wait_exit(PATIENCE)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.signal(libc::SIGKILL);
        let _ = self.child.wait(Some(Duration::from_secs(5)));
    }
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a child does after its work when it must stay alive until the
/// parent kills it: sleep, but never longer than a minute.
pub fn linger() -> ! {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::exit(3)
}

/// In a child started as `role`: its descriptors and argument. None in the
/// ordinary test run, where the `child_*` tests do nothing.
pub fn child_args(role: &str) -> Option<(Vec<RawFd>, String)> {
    if std::env::var(ROLE_ENV).ok()? != role {
        return None;
    }
    let fds =
        std::env::var(FDS_ENV).unwrap().split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    Some((fds, std::env::var(ARG_ENV).unwrap_or_default()))
}

/// Takes ownership of a descriptor inherited from the parent.
pub fn inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: the parent passed this descriptor under this number for this
    // child to own; nothing else in the child uses it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The bytes of a received part; a block is copied out and freed.
pub fn take_part(q: &SharedQueue, part: &Part) -> Vec<u8> {
    match *part {
        Part::Inline(ref b) => b.clone(),
        Part::Block { offset, len } => {
            let src = q.block_ptr(offset, len).unwrap();
            let mut out = vec![0u8; len as usize];
            // SAFETY: the block is held by this process until free_block
            // below, and block_ptr checked that it lies in the arena.
            unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len as usize) };
            q.free_block(offset).unwrap();
            out
        }
    }
}
