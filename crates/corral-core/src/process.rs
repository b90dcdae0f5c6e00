//! Starting and supervising child processes.
//!
//! Every child started by `spawn` (fork + exec) is spawned from one
//! long-lived thread of this process, because `PR_SET_PDEATHSIG` fires when
//! the *thread* that forked the child exits, not the process. (A child
//! started with the fork start method is forked by the Python layer in the
//! calling thread; it is watched through a pidfd as well.) The child sets the death signal before `exec`
//! and then checks that its parent is still the one that spawned it (the
//! parent may have died before the signal was armed). Children are watched
//! through a pidfd: waiting, polling and signalling cannot hit a recycled pid.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Sender};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::error::{CoreError, Result};
use crate::sys::deadline::timespec;
use crate::sys::liveness::my_pid;
use crate::sys::singleton::{PerProcess, Service};

/// What to start.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Descriptors the child inherits under the same numbers.
    pub pass_fds: Vec<RawFd>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
}

/// How a child ended, in `multiprocessing`'s convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// `Process.exitcode`: the status, or minus the signal number.
    pub fn exitcode(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => -s,
        }
    }
}

/// A started child.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: OwnedFd,
    exit: Mutex<Option<Exit>>,
    /// For a process another process reaps (a fork server's child): when
    /// its pidfd was first seen readable, while its exit is not reported.
    external: Option<Mutex<Option<std::time::Instant>>>,
    /// For an external child: its reaper (a fork server) died first, and
    /// the child with it (`set_reaper_died`).
    reaper_died: AtomicBool,
}

/// How long an exited external child waits for its exit report before it
/// counts as lost with an unknown status (its reaper died too).
const REPORT_GRACE: Duration = Duration::from_secs(2);

type Job = (SpawnRequest, Sender<Result<Child>>);

/// The spawner thread's job queue. A forked child starts its own thread
/// (`PerProcess`): the parent's is not there to receive.
struct Spawner {
    jobs: Sender<Job>,
}

impl Service for Spawner {}

static SPAWNER: PerProcess<Spawner> = PerProcess::new("spawner");

fn start_spawner(_pid: u32) -> Result<Spawner> {
    let (tx, rx) = unbounded::<Job>();
    std::thread::Builder::new()
        .name("corral-spawner".into())
        .spawn(move || {
            for (req, reply) in rx {
                let _ = reply.send(spawn_here(&req));
            }
        })
        .map_err(|e| CoreError::os("spawn spawner thread", e))?;
    Ok(Spawner { jobs: tx })
}

/// Starts a child from the spawner thread.
pub fn spawn(request: SpawnRequest) -> Result<Child> {
    let spawner = SPAWNER.get_or_start(start_spawner)?;
    let (reply_tx, reply_rx) = bounded(1);
    spawner.jobs.send((request, reply_tx)).map_err(|_| CoreError::Invalid("spawner thread is gone".into()))?;
    reply_rx.recv().map_err(|_| CoreError::Invalid("spawner thread is gone".into()))?
}

fn spawn_here(req: &SpawnRequest) -> Result<Child> {
    let (prog, args) = req.argv.split_first().ok_or_else(|| CoreError::Invalid("empty argv".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    let parent = my_pid();
    let pass = req.pass_fds.clone();
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, fcntl, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            for &fd in &pass {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| CoreError::os("spawn", e))?;
    let pid = child.id();
    // Dropping std's handle neither kills nor reaps; the pidfd takes over.
    drop(child);
    let raw = Pid::from_raw(pid as i32).ok_or_else(|| CoreError::Invalid("pid 0".into()))?;
    let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| CoreError::os("pidfd_open", e))?;
    Ok(Child { pid, pidfd, exit: Mutex::new(None), external: None, reaper_died: AtomicBool::new(false) })
}

/// Arms `PR_SET_PDEATHSIG` (SIGKILL) in the calling process, then checks that
/// its parent is still `parent`; used by children started by `fork`.
pub fn die_with_parent(parent: u32) -> Result<bool> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| CoreError::os("prctl(PR_SET_PDEATHSIG)", e))?;
    Ok(rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) == Some(parent))
}

impl Child {
    /// Watches `pid`, a child this process made itself (with `fork`).
    pub fn adopt(pid: u32) -> Result<Child> {
        let raw = Pid::from_raw(pid as i32).ok_or_else(|| CoreError::Invalid(format!("bad pid {pid}")))?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| CoreError::os("pidfd_open", e))?;
        Ok(Child { pid, pidfd, exit: Mutex::new(None), external: None, reaper_died: AtomicBool::new(false) })
    }

    /// Watches `pid`, a process that another process (a fork server) made
    /// and reaps: its exit status comes through `set_exit`.
    pub fn watch_external(pid: u32) -> Result<Child> {
        let raw = Pid::from_raw(pid as i32).ok_or_else(|| CoreError::Invalid(format!("bad pid {pid}")))?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| CoreError::os("pidfd_open", e))?;
        Ok(Child {
            pid,
            pidfd,
            exit: Mutex::new(None),
            external: Some(Mutex::new(None)),
            reaper_died: AtomicBool::new(false),
        })
    }

    /// Records the exit status of an external child, as its reaper reported it.
    pub fn set_exit(&self, exit: Exit) {
        if let Ok(mut e) = self.exit.lock() {
            e.get_or_insert(exit);
        }
    }

    /// Records that this external child's reaper (a fork server) died
    /// before it, and so killed it: its death says nothing about its own
    /// start (a pool does not count it as a failed boot).
    pub fn set_reaper_died(&self) {
        self.reaper_died.store(true, Ordering::Release);
    }

    /// True if `set_reaper_died` was called.
    pub fn reaper_died(&self) -> bool {
        self.reaper_died.load(Ordering::Acquire)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd: readable once the child has exited.
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The pidfd, owned (for `PollFd`, which needs `AsFd` with a lifetime
    /// tied to the child).
    pub fn pidfd_ref(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Waits up to `timeout` (None: for ever) for the child to exit and
    /// reaps it. None if it is still running.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<Exit>> {
        if let Some(e) = *self.exit.lock().map_err(|_| CoreError::Invalid("poisoned".into()))? {
            return Ok(Some(e));
        }
        let ts = timeout.map(timespec);
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(CoreError::os("poll(pidfd)", e)),
        }
        let mut slot = self.exit.lock().map_err(|_| CoreError::Invalid("poisoned".into()))?;
        if let Some(e) = *slot {
            return Ok(Some(e));
        }
        if let Some(since) = &self.external {
            // Exited; the status comes from its reaper.
            let mut since = since.lock().map_err(|_| CoreError::Invalid("poisoned".into()))?;
            if since.get_or_insert_with(std::time::Instant::now).elapsed() < REPORT_GRACE {
                return Ok(None);
            }
            *slot = Some(Exit::Code(255));
            return Ok(*slot);
        }
        let status = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
            .map_err(|e| CoreError::os("waitid", e))?;
        let exit = match status {
            None => return Ok(None),
            Some(s) => match (s.exit_status(), s.terminating_signal()) {
                (Some(code), _) if s.exited() => Exit::Code(code),
                (_, Some(sig)) => Exit::Signal(sig),
                _ => return Ok(None),
            },
        };
        *slot = Some(exit);
        Ok(Some(exit))
    }

    /// Sends a signal (e.g. SIGTERM, SIGKILL). A child already reaped is
    /// left alone.
    pub fn signal(&self, sig: i32) -> Result<()> {
        if self.exit.lock().map(|e| e.is_some()).unwrap_or(false) {
            return Ok(());
        }
        let sig = Signal::from_named_raw(sig).ok_or_else(|| CoreError::Invalid(format!("signal {sig}")))?;
        match pidfd_send_signal(&self.pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(CoreError::os("pidfd_send_signal", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> SpawnRequest {
        SpawnRequest { argv: args.iter().map(OsString::from).collect(), pass_fds: vec![], env: vec![] }
    }

    #[test]
    fn an_external_child_takes_its_exit_code_from_the_report() {
        let c = spawn(req(&["sleep", "30"])).unwrap();
        let watched = Child::watch_external(c.pid()).unwrap();
        assert_eq!(watched.wait(Some(Duration::ZERO)).unwrap(), None);
        watched.signal(libc::SIGKILL).unwrap();
        assert!(c.wait(Some(Duration::from_secs(10))).unwrap().is_some());
        assert_eq!(watched.wait(Some(Duration::from_secs(1))).unwrap(), None, "exited, not reported yet");
        watched.set_exit(Exit::Signal(9));
        assert_eq!(watched.wait(Some(Duration::ZERO)).unwrap(), Some(Exit::Signal(9)));
    }

    #[test]
    fn exit_codes_and_signals_are_reported() {
        let c = spawn(req(&["sh", "-c", "exit 3"])).unwrap();
        assert_eq!(c.wait(Some(Duration::from_secs(10))).unwrap(), Some(Exit::Code(3)));
        let c = spawn(req(&["sleep", "30"])).unwrap();
        assert_eq!(c.wait(Some(Duration::from_millis(20))).unwrap(), None);
        c.signal(libc::SIGKILL).unwrap();
        let e = c.wait(Some(Duration::from_secs(10))).unwrap().unwrap();
        assert_eq!(e.exitcode(), -libc::SIGKILL);
        c.signal(libc::SIGTERM).unwrap();
    }

    #[test]
    fn passed_descriptors_are_inherited_under_the_same_number() {
        let shm = crate::sys::shm::SharedMemory::create("pass", 4096).unwrap();
        let fd = shm.raw_fd();
        let c = spawn(SpawnRequest {
            argv: ["sh", "-c", &format!("test -e /proc/self/fd/{fd}")].iter().map(OsString::from).collect(),
            pass_fds: vec![fd],
            env: vec![],
        })
        .unwrap();
        assert_eq!(c.wait(Some(Duration::from_secs(10))).unwrap(), Some(Exit::Code(0)));
        // Without passing, the close-on-exec descriptor is not there.
        let c = spawn(req(&["sh", "-c", &format!("test -e /proc/self/fd/{fd}")])).unwrap();
        assert_eq!(c.wait(Some(Duration::from_secs(10))).unwrap(), Some(Exit::Code(1)));
    }
}
