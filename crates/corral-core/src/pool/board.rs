//! The pool's board: shared memory the parent and its workers both write.
//!
//! - One slot per worker: which task it runs, since when, until when (its
//!   timeout), how many it finished and how long it was busy. The parent
//!   reads a dead worker's slot to know which task died with it.
//! - A task table: one word per task id (modulo its size) holding the id and
//!   a state. A task is QUEUED when the parent sends it; the worker moves it
//!   to RUNNING and the parent's `cancel` to CANCELLED, each by one CAS, so
//!   exactly one of them wins: a cancelled task never runs, a started one is
//!   never reported cancelled.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{CoreError, Result};
use crate::sys::shm::SharedMemory;

const MAGIC: u64 = u64::from_le_bytes(*b"CRLBORD1");
/// Words in the task table; more tasks than this in flight share words, and
/// then a cancel of the older one is refused (never wrongly granted).
pub const TASK_WORDS: usize = 1 << 16;
/// Most workers a board can hold.
pub const MAX_WORKERS: usize = 1024;

/// What a worker is doing, as written in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    /// Started, initializer not finished.
    Booting = 0,
    /// Waiting for a task.
    Idle = 1,
    /// Running `task`.
    Busy = 2,
    /// Leaving on its own (max tasks or memory per child reached).
    Retiring = 3,
    /// Its initializer raised; the pool cannot work.
    InitFailed = 4,
    /// Leaving because the pool shuts down.
    Stopped = 5,
}

impl WorkerState {
    fn from_raw(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Idle,
            2 => WorkerState::Busy,
            3 => WorkerState::Retiring,
            4 => WorkerState::InitFailed,
            5 => WorkerState::Stopped,
            _ => WorkerState::Booting,
        }
    }
}

const QUEUED: u64 = 1;
const RUNNING: u64 = 2;
const CANCELLED: u64 = 3;

#[repr(C)]
struct Header {
    magic: u64,
    workers: u64,
    _pad: [u64; 6],
}

/// One worker's slot.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Slot {
    pid: AtomicU32,
    state: AtomicU32,
    task: AtomicU64,
    /// CLOCK_MONOTONIC ns at which the running task times out; 0: never.
    deadline_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns at which this worker started.
    started_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns at which the running task started.
    task_started_ns: AtomicU64,
    done: AtomicU64,
    busy_ns: AtomicU64,
}

/// A copy of a slot, as the parent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// The worker's pid (0 before it wrote it).
    pub pid: u32,
    /// What it is doing.
    pub state: WorkerState,
    /// The task it runs (meaningful when `Busy`).
    pub task: u64,
    /// When that task times out (0: never).
    pub deadline_ns: u64,
    /// When the worker started.
    pub started_ns: u64,
    /// Tasks finished.
    pub done: u64,
    /// Nanoseconds spent running tasks.
    pub busy_ns: u64,
}

/// How a worker's attempt to start a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Run it.
    Run,
    /// The parent cancelled it first: skip it.
    Cancelled,
}

/// The board, mapped in this process.
#[derive(Debug)]
pub struct Board {
    shm: SharedMemory,
    workers: usize,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

fn layout(workers: usize) -> (usize, usize, usize) {
    let slots_at = std::mem::size_of::<Header>();
    let table_at = slots_at + workers * std::mem::size_of::<Slot>();
    (slots_at, table_at, table_at + TASK_WORDS * 8)
}

impl Board {
    /// A new board for `workers` workers, all slots zero.
    pub fn create(workers: usize) -> Result<Self> {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(CoreError::Invalid(format!("a pool has 1 to {MAX_WORKERS} workers, not {workers}")));
        }
        let shm = SharedMemory::create("corral-board", layout(workers).2)?;
        let board = Board { shm, workers };
        let h = board.header();
        // SAFETY: nobody else maps the fresh block yet; plain writes are fine.
        unsafe {
            (*h).workers = workers as u64;
            (*h).magic = MAGIC;
        }
        Ok(board)
    }

    /// The board behind a descriptor from the parent; checks its layout.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        let shm = SharedMemory::open(fd)?;
        if shm.len() < std::mem::size_of::<Header>() {
            return Err(CoreError::corrupt("pool board", "too small"));
        }
        let h = shm.as_ptr().cast::<Header>();
        // SAFETY: the mapping holds at least a header (checked) and is page
        // aligned; the header is written once before the board is shared.
        let (magic, workers) = unsafe { ((*h).magic, (*h).workers) };
        if magic != MAGIC {
            return Err(CoreError::corrupt("pool board", "bad magic"));
        }
        let workers = usize::try_from(workers).unwrap_or(usize::MAX);
        if workers == 0 || workers > MAX_WORKERS || shm.len() < layout(workers).2 {
            return Err(CoreError::corrupt("pool board", "bad worker count"));
        }
        Ok(Board { shm, workers })
    }

    /// The memfd, to pass to workers.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shm.fd()
    }

    /// How many worker slots.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn header(&self) -> *mut Header {
        self.shm.as_ptr().cast::<Header>()
    }

    fn slot(&self, i: usize) -> Result<&Slot> {
        if i >= self.workers {
            return Err(CoreError::Invalid(format!("worker slot {i} out of range")));
        }
        let at = layout(self.workers).0 + i * std::mem::size_of::<Slot>();
        // SAFETY: in bounds (checked against the validated layout), 64-byte
        // aligned (header is 64 bytes, page-aligned base), and Slot holds
        // only atomics, so shared access from several processes is sound.
        Ok(unsafe { &*self.shm.as_ptr().add(at).cast::<Slot>() })
    }

    fn word(&self, task: u64) -> &AtomicU64 {
        let at = layout(self.workers).1 + (task as usize % TASK_WORDS) * 8;
        // SAFETY: the index is reduced modulo the table size, the table lies
        // inside the validated mapping, 8-byte aligned, and holds atomics.
        unsafe { &*self.shm.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn check_id(task: u64) -> Result<()> {
        if task == 0 || task >= 1 << 62 {
            return Err(CoreError::Invalid(format!("task id {task} out of range")));
        }
        Ok(())
    }

    // ---- parent side ----

    /// Resets slot `i` for a new worker (before it starts).
    pub fn reset_slot(&self, i: usize) -> Result<()> {
        let s = self.slot(i)?;
        s.pid.store(0, Ordering::SeqCst);
        s.task.store(0, Ordering::SeqCst);
        s.deadline_ns.store(0, Ordering::SeqCst);
        s.started_ns.store(monotonic_ns(), Ordering::SeqCst);
        s.done.store(0, Ordering::SeqCst);
        s.busy_ns.store(0, Ordering::SeqCst);
        s.state.store(WorkerState::Booting as u32, Ordering::SeqCst);
        Ok(())
    }

    /// Marks `task` as sent (before it is put in a worker's queue). A word
    /// still holding an older task's cancellation is left alone (that task
    /// must stay cancelled); `task` then cannot be cancelled once sent.
    pub fn queued(&self, task: u64) -> Result<()> {
        Self::check_id(task)?;
        let w = self.word(task);
        let mut cur = w.load(Ordering::SeqCst);
        loop {
            if cur & 3 == CANCELLED && cur >> 2 != task {
                return Ok(());
            }
            match w.compare_exchange(cur, task << 2 | QUEUED, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Frees the word of a cancelled task that will never be started.
    pub fn forget(&self, task: u64) {
        let _ = self.word(task).compare_exchange(task << 2 | CANCELLED, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Cancels a sent task if no worker started it; true if it will not run.
    pub fn cancel(&self, task: u64) -> Result<bool> {
        Self::check_id(task)?;
        let w = self.word(task);
        Ok(w.compare_exchange(task << 2 | QUEUED, task << 2 | CANCELLED, Ordering::SeqCst, Ordering::SeqCst).is_ok())
    }

    /// True if `task` was cancelled before a worker started it.
    pub fn is_cancelled(&self, task: u64) -> bool {
        self.word(task).load(Ordering::SeqCst) == task << 2 | CANCELLED
    }

    /// A copy of slot `i`.
    pub fn view(&self, i: usize) -> Result<SlotView> {
        let s = self.slot(i)?;
        Ok(SlotView {
            pid: s.pid.load(Ordering::SeqCst),
            state: WorkerState::from_raw(s.state.load(Ordering::SeqCst)),
            task: s.task.load(Ordering::SeqCst),
            deadline_ns: s.deadline_ns.load(Ordering::SeqCst),
            started_ns: s.started_ns.load(Ordering::SeqCst),
            done: s.done.load(Ordering::SeqCst),
            busy_ns: s.busy_ns.load(Ordering::SeqCst),
        })
    }

    // ---- worker side ----

    /// Worker `i` (pid `pid`) finished booting and waits for tasks.
    pub fn ready(&self, i: usize, pid: u32) -> Result<()> {
        let s = self.slot(i)?;
        s.pid.store(pid, Ordering::SeqCst);
        s.state.store(WorkerState::Idle as u32, Ordering::SeqCst);
        Ok(())
    }

    /// Worker `i` sets its state (Retiring, InitFailed, Stopped).
    pub fn set_state(&self, i: usize, state: WorkerState) -> Result<()> {
        self.slot(i)?.state.store(state as u32, Ordering::SeqCst);
        Ok(())
    }

    /// Worker `i` is about to run `task` with a timeout of `timeout_ns`
    /// (0: none). The slot names the task before the CAS, so a worker that
    /// dies right after winning it is known to have held it.
    pub fn begin(&self, i: usize, task: u64, timeout_ns: u64) -> Result<Start> {
        Self::check_id(task)?;
        let s = self.slot(i)?;
        let now = monotonic_ns();
        s.task.store(task, Ordering::SeqCst);
        s.task_started_ns.store(now, Ordering::SeqCst);
        s.deadline_ns.store(if timeout_ns == 0 { 0 } else { now.saturating_add(timeout_ns) }, Ordering::SeqCst);
        s.state.store(WorkerState::Busy as u32, Ordering::SeqCst);
        let w = self.word(task);
        match w.compare_exchange(task << 2 | QUEUED, task << 2 | RUNNING, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => Ok(Start::Run),
            Err(cur) if cur == task << 2 | CANCELLED => {
                self.forget(task);
                self.idle(s);
                Ok(Start::Cancelled)
            }
            // The word was reused by a newer task: this one cannot have been
            // cancelled (cancel refuses then), so it runs.
            Err(_) => Ok(Start::Run),
        }
    }

    fn idle(&self, s: &Slot) {
        s.deadline_ns.store(0, Ordering::SeqCst);
        s.state.store(WorkerState::Idle as u32, Ordering::SeqCst);
        s.task.store(0, Ordering::SeqCst);
    }

    /// Worker `i` finished its task (its result is already sent). Returns
    /// the nanoseconds the task took.
    pub fn end(&self, i: usize) -> Result<u64> {
        let s = self.slot(i)?;
        let took = monotonic_ns().saturating_sub(s.task_started_ns.load(Ordering::SeqCst));
        s.busy_ns.fetch_add(took, Ordering::SeqCst);
        s.done.fetch_add(1, Ordering::SeqCst);
        self.idle(s);
        Ok(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_and_start_exclude_each_other() {
        let b = Board::create(2).unwrap();
        b.reset_slot(0).unwrap();
        b.queued(7).unwrap();
        assert!(b.cancel(7).unwrap());
        assert!(b.is_cancelled(7));
        assert_eq!(b.begin(0, 7, 0).unwrap(), Start::Cancelled);
        assert_eq!(b.view(0).unwrap().state, WorkerState::Idle);
        b.queued(8).unwrap();
        assert_eq!(b.begin(0, 8, 0).unwrap(), Start::Run);
        assert!(!b.cancel(8).unwrap());
        let v = b.view(0).unwrap();
        assert_eq!((v.state, v.task), (WorkerState::Busy, 8));
        b.end(0).unwrap();
        let v = b.view(0).unwrap();
        assert_eq!((v.state, v.task, v.done), (WorkerState::Idle, 0, 1));
    }

    #[test]
    fn a_reused_word_refuses_cancel_of_the_older_task() {
        let b = Board::create(1).unwrap();
        b.queued(1).unwrap();
        b.queued(1 + TASK_WORDS as u64).unwrap();
        assert!(!b.cancel(1).unwrap());
        assert_eq!(b.begin(0, 1, 0).unwrap(), Start::Run);
    }

    #[test]
    fn a_cancellation_survives_a_newer_task_on_the_same_word() {
        let b = Board::create(1).unwrap();
        let newer = 5 + TASK_WORDS as u64;
        b.queued(5).unwrap();
        assert!(b.cancel(5).unwrap());
        b.queued(newer).unwrap();
        assert!(!b.cancel(newer).unwrap(), "the newer task is not tracked");
        assert_eq!(b.begin(0, 5, 0).unwrap(), Start::Cancelled);
        assert_eq!(b.begin(0, newer, 0).unwrap(), Start::Run);
        b.queued(newer + TASK_WORDS as u64).unwrap();
        assert!(b.cancel(newer + TASK_WORDS as u64).unwrap(), "the word is free again once the skip is seen");
    }

    #[test]
    fn deadline_is_set_from_timeout() {
        let b = Board::create(1).unwrap();
        b.queued(3).unwrap();
        b.begin(0, 3, 1_000_000_000).unwrap();
        let v = b.view(0).unwrap();
        assert!(v.deadline_ns > monotonic_ns());
    }

    #[test]
    fn open_checks_layout_and_bad_input_is_an_error() {
        let b = Board::create(3).unwrap();
        let fd = rustix::io::dup(b.fd()).unwrap();
        let o = Board::open(fd).unwrap();
        assert_eq!(o.workers(), 3);
        assert!(o.slot(3).is_err());
        assert!(o.queued(0).is_err());
        assert!(Board::create(0).is_err());
        let junk = SharedMemory::create("junk", 4096).unwrap();
        assert!(Board::open(rustix::io::dup(junk.fd()).unwrap()).is_err());
    }
}
