//! The running pool in the parent: the completion thread and the calls the
//! bindings make (submit, cancel, kill, close, stats).
//!
//! The completion thread never touches Python. It takes result messages from
//! the shared result queue, books them, sends waiting tasks to the workers
//! that now have room, notices dead workers through their pidfds, kills a
//! worker whose task passed its timeout, and reports everything as `Event`s
//! on a channel that the Python side reads.
//!
//! A second thread, the watcher, sleeps in `poll` on the workers' pidfds and
//! wakes the completion thread (a `Wake` message on the result queue) the
//! moment one exits, so a crash is handled at once and not at the next tick.
//!
//! A dead worker's results are all taken before its death is handled, so a
//! task that finished is never reported lost; its running task (named in its
//! board slot) is lost or retried, its other tasks never started and are
//! sent to another worker.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

use super::board::{monotonic_ns, Board, WorkerState};
use super::dispatch::{Dispatcher, Send};
use super::wire::{encode_task, Kind, ResultHeader, Status, TaskHeader, RESULT_HEADER_LEN};
use crate::channel::queue::{Outgoing, Part, SharedQueue};
use crate::error::{CoreError, Result};
use crate::process::{Child, Exit};
use crate::sys::liveness::my_pid;

/// Longest sleep of the completion thread between checks of the workers.
const TICK: Duration = Duration::from_millis(20);
/// Workers dying before they finish booting this many times in a row
/// break the pool instead of being restarted for ever.
const BOOT_FAILURES: u32 = 3;
/// Task latencies kept for the percentiles of `stats`.
const LATENCY_SAMPLES: usize = 8192;
/// Pickled functions kept by id, so that a function submitted again is not
/// copied again (past it the cache starts over; queued tasks keep theirs).
const FN_CACHE: usize = 1024;

/// A task's arguments as the bindings hold them: the pickle stream and its
/// out-of-band buffers, kept alive until the task is done (for re-sends).
pub trait TaskArgs: std::marker::Send + 'static {
    /// The pickled arguments.
    fn inband(&self) -> &[u8];
    /// The out-of-band buffers.
    fn buffers(&self) -> Vec<&[u8]>;
}

/// A task to run. Its pickled function is given to `Pool::submit` beside
/// it: the pool keeps one copy per function id.
#[derive(Debug)]
pub struct Task<P> {
    /// The function's id (the same pickled function, the same id).
    pub fn_id: u64,
    /// The arguments.
    pub args: P,
    /// One call or a chunk of calls.
    pub kind: Kind,
    /// Timeout once started, in milliseconds (0: none).
    pub timeout_ms: u32,
    /// Re-runs allowed if its worker dies under it.
    pub retries: u32,
}

/// Why a worker's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It died on its own (signal, `os._exit`, OOM killer).
    Crashed,
    /// It died before it finished booting.
    CrashedBooting,
    /// The pool killed it because its task passed its timeout.
    TimedOut,
    /// The pool killed it on request (`kill` of its task).
    Killed,
    /// It left after its task budget or memory bound.
    Retired,
    /// It left because the pool shuts down.
    Stopped,
    /// Its initializer raised.
    InitFailed,
    /// (For a lost task only.) `MAX_UNSTARTED_DEATHS` workers in a row
    /// died while this task was the next one they would run.
    DiedBeforeStart,
}

impl Cause {
    /// Its name, as the bindings show it ("crashed", "timed_out", ...).
    pub fn name(self) -> &'static str {
        match self {
            Cause::Crashed => "crashed",
            Cause::CrashedBooting => "crashed_booting",
            Cause::TimedOut => "timed_out",
            Cause::Killed => "killed",
            Cause::Retired => "retired",
            Cause::Stopped => "stopped",
            Cause::InitFailed => "init_failed",
            Cause::DiedBeforeStart => "died_before_start",
        }
    }
}

/// What the completion thread reports.
#[derive(Debug)]
pub enum Event<P> {
    /// A task's result message (its header already read): `parts[0]` is the
    /// in-band bytes including the header (the outcome starts at
    /// `wire::RESULT_HEADER_LEN`); `task` is the finished task.
    Done {
        /// The task id.
        task: u64,
        /// Ok, Raised or Cancelled.
        status: Status,
        /// How long it ran, in nanoseconds (0 if cancelled).
        busy_ns: u64,
        /// The result message's parts.
        parts: Vec<Part>,
        /// The task, handed back so the caller can release its arguments.
        done: Option<Task<P>>,
    },
    /// A task died with its worker and will not be re-run.
    Lost {
        /// The task id.
        task: u64,
        /// The worker's exit code (negative: signal).
        exitcode: i32,
        /// Why the worker ended.
        cause: Cause,
        /// The task.
        done: Option<Task<P>>,
    },
    /// A task cancelled in a dead worker's queue: it will never run; its
    /// arguments are handed back to be released (not under the pool's lock,
    /// which would deadlock with a binding that needs a lock to free them).
    Cancelled {
        /// The task id.
        task: u64,
        /// The task.
        done: Option<Task<P>>,
    },
    /// A task could not be sent (too large for a worker's queue).
    Rejected {
        /// The task id.
        task: u64,
        /// Why.
        error: String,
        /// The task.
        done: Option<Task<P>>,
    },
    /// A worker ended; when `respawn`, start a new one in `slot`.
    WorkerExited {
        /// Its slot.
        slot: usize,
        /// Its exit code (negative: signal).
        exitcode: i32,
        /// Why it ended.
        cause: Cause,
        /// Whether to start a replacement.
        respawn: bool,
    },
    /// A worker's initializer raised; `parts` is its result message (the
    /// packed exception starts at `wire::RESULT_HEADER_LEN`).
    InitFailed {
        /// The result message's parts.
        parts: Vec<Part>,
    },
    /// The pool cannot run tasks any more; every task not finished is handed back.
    Broken {
        /// Why.
        reason: String,
        /// The unfinished tasks.
        abandoned: Vec<(u64, Option<Task<P>>)>,
        /// Its owner stopped it (`Pool::stop`): not a fault. A pool that
        /// broke first reports that break, and `stop` makes no second one.
        stopped: bool,
    },
    /// The pool was closed and every worker has left; no more events.
    Closed,
}

/// One worker's numbers.
#[derive(Debug, Clone, Copy)]
pub struct WorkerStats {
    /// Its slot.
    pub slot: usize,
    /// Its pid (0 while booting).
    pub pid: u32,
    /// Tasks it finished.
    pub done: u64,
    /// Seconds it ran tasks.
    pub busy_s: f64,
    /// Seconds since it started, not running tasks.
    pub idle_s: f64,
    /// Times this slot's worker was replaced.
    pub restarts: u32,
    /// The task it runs now (0: none).
    pub running: u64,
}

/// The pool's numbers.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per worker.
    pub workers: Vec<WorkerStats>,
    /// Tasks submitted and not finished.
    pub outstanding: usize,
    /// Of those, waiting for a worker.
    pub pending: usize,
    /// Tasks finished.
    pub completed: u64,
    /// Submit-to-result latency percentiles (50, 90, 99) in seconds, over
    /// the most recent tasks.
    pub latency_s: [f64; 3],
}

struct WorkerProc {
    child: Arc<Child>,
    queue: Arc<SharedQueue>,
}

/// A submitted task with its function's bytes (kept for re-sends).
struct Queued<P> {
    task: Task<P>,
    function: Arc<[u8]>,
}

struct State<P> {
    /// Every task not finished, with its arguments and function.
    books: Dispatcher<Queued<P>>,
    /// Pickled functions by id (see `FN_CACHE`); which worker has which is
    /// in `books`.
    fns: HashMap<u64, Arc<[u8]>>,
    workers: Vec<Option<WorkerProc>>,
    kill_cause: HashMap<usize, (Cause, u64)>,
    closing: bool,
    queues_closed: bool,
    /// Replacements asked for and not attached yet.
    respawning: usize,
    broken: Option<String>,
    boot_failures: u32,
    completed: u64,
    latencies: Vec<f64>,
    last_exit_check: Instant,
}

struct Inner<P> {
    board: Board,
    results: Arc<SharedQueue>,
    state: Mutex<State<P>>,
    events: Sender<Event<P>>,
    stop: AtomicBool,
    /// Workers the watcher polls; it removes those that exited.
    watched: Mutex<Vec<Arc<Child>>>,
    /// Written to make the watcher re-read `watched` (or see `stop`).
    watcher_wake: OwnedFd,
    /// The process that made the pool: its threads exist only there, and
    /// in a forked child its mutexes may be held by threads that are not.
    owner: u32,
}

/// A pool's parent side. Dropping it stops the completion thread (the
/// workers leave when their queues close or the parent exits).
pub struct Pool<P: TaskArgs> {
    inner: Arc<Inner<P>>,
    thread: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl<P: TaskArgs> std::fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.inner.board.workers()).finish()
    }
}

impl<P: TaskArgs> Pool<P> {
    /// A pool of `workers` slots reading results from `results`; returns it
    /// and the receiving end of its events. Workers are attached with
    /// `attach` after they are started.
    pub fn new(workers: usize, results: Arc<SharedQueue>) -> Result<(Self, Receiver<Event<P>>)> {
        let board = Board::create(workers)?;
        let (tx, rx) = unbounded();
        let watcher_wake =
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| CoreError::os("eventfd", e))?;
        let inner = Arc::new(Inner {
            board,
            results,
            state: Mutex::new(State {
                books: Dispatcher::new(workers),
                fns: HashMap::new(),
                workers: (0..workers).map(|_| None).collect(),
                kill_cause: HashMap::new(),
                closing: false,
                queues_closed: false,
                respawning: 0,
                broken: None,
                boot_failures: 0,
                completed: 0,
                latencies: Vec::new(),
                last_exit_check: Instant::now(),
            }),
            events: tx,
            stop: AtomicBool::new(false),
            watched: Mutex::new(Vec::new()),
            watcher_wake,
            owner: my_pid(),
        });
        let runner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("corral-pool".into())
            .spawn(move || runner.run())
            .map_err(|e| CoreError::os("spawn the pool's completion thread", e))?;
        let mut pool = Pool { inner, thread: Some(thread), watcher: None };
        let watching = pool.inner.clone();
        pool.watcher = Some(
            std::thread::Builder::new()
                .name("corral-pool-watch".into())
                .spawn(move || watching.watch())
                .map_err(|e| CoreError::os("spawn the pool's watcher thread", e))?,
        );
        Ok((pool, rx))
    }

    /// The shared board (its descriptor goes to the workers).
    pub fn board(&self) -> &Board {
        &self.inner.board
    }

    /// Clears `slot` before its worker is started.
    pub fn prepare(&self, slot: usize) -> Result<()> {
        self.inner.board.reset_slot(slot)
    }

    /// Slot `slot` now has a started worker reading `queue`.
    /// A worker started for a pool that broke meanwhile is killed.
    pub fn attach(&self, slot: usize, child: Arc<Child>, queue: Arc<SharedQueue>) -> Result<()> {
        let mut st = self.inner.lock()?;
        st.respawning = st.respawning.saturating_sub(1);
        if st.workers.get(slot).is_none() {
            return Err(CoreError::Invalid(format!("no worker slot {slot}")));
        }
        if st.broken.is_some() {
            child.signal(libc::SIGKILL)?;
            return Ok(());
        }
        if st.queues_closed {
            // Started for tasks that finished meanwhile: it leaves at once.
            queue.close_producer();
        }
        st.workers[slot] = Some(WorkerProc { child: child.clone(), queue });
        st.books.worker_up(slot);
        // Its Ready message may have been read before it was attached.
        self.inner.dispatch(&mut st);
        drop(st);
        self.inner.watched.lock().map_err(|_| CoreError::Invalid("pool watcher poisoned".into()))?.push(child);
        self.inner.poke_watcher();
        Ok(())
    }

    /// Queues a task whose function, pickled, is `function` (copied only
    /// the first time this function id is seen); returns its id. Ids grow
    /// with submission order. Fails if the pool is closed or broken.
    pub fn submit(&self, t: Task<P>, function: &[u8]) -> Result<u64> {
        let mut st = self.inner.lock()?;
        if let Some(why) = &st.broken {
            return Err(CoreError::Broken(why.clone()));
        }
        if st.closing {
            return Err(CoreError::Invalid("cannot schedule new futures after shutdown".into()));
        }
        let function = match st.fns.get(&t.fn_id) {
            Some(f) => f.clone(),
            None => {
                if st.fns.len() >= FN_CACHE {
                    st.fns.clear();
                }
                let f: Arc<[u8]> = Arc::from(function);
                st.fns.insert(t.fn_id, f.clone());
                f
            }
        };
        let task = st.books.submit(t.fn_id, t.retries, Queued { task: t, function });
        self.inner.dispatch(&mut st);
        Ok(task)
    }

    /// Cancels a task that no worker started; true if it will not run.
    pub fn cancel(&self, task: u64) -> Result<bool> {
        let mut st = self.inner.lock()?;
        if st.books.withdraw(task).is_some() {
            return Ok(true);
        }
        if st.books.task(task).is_none() {
            return Ok(false);
        }
        // Sent: the board arbitrates with the worker; the worker reports it
        // skipped, which finishes the books.
        self.inner.board.cancel(task)
    }

    /// Kills the worker running `task` (it is replaced); the task is
    /// reported `Lost` with cause `Killed`. False if no worker runs it.
    pub fn kill(&self, task: u64) -> Result<bool> {
        let mut st = self.inner.lock()?;
        for slot in 0..st.workers.len() {
            let v = self.inner.board.view(slot)?;
            if v.state == WorkerState::Busy && v.task == task {
                if let Some(w) = &st.workers[slot] {
                    w.child.signal(libc::SIGKILL)?;
                    st.kill_cause.insert(slot, (Cause::Killed, task));
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// True if a worker is running `task` now.
    pub fn running(&self, task: u64) -> bool {
        (0..self.inner.board.workers())
            .filter_map(|i| self.inner.board.view(i).ok())
            .any(|v| v.state == WorkerState::Busy && v.task == task)
    }

    /// Accepts no more tasks; the workers leave once every task is done,
    /// then the completion thread reports `Closed` and ends. With
    /// `cancel_pending`, tasks not yet sent are withdrawn and returned.
    pub fn close(&self, cancel_pending: bool) -> Result<Vec<u64>> {
        let mut st = self.inner.lock()?;
        st.closing = true;
        let withdrawn = if cancel_pending { st.books.withdraw_pending() } else { Vec::new() };
        drop(st);
        self.inner.wake();
        Ok(withdrawn.into_iter().map(|(id, _)| id).collect())
    }

    /// Kills every worker now: a fault (a worker that cannot be started),
    /// the pool is broken with `reason`.
    pub fn terminate(&self, reason: &str) -> Result<()> {
        let mut st = self.inner.lock()?;
        st.closing = true;
        self.inner.break_pool(&mut st, reason.to_string(), false);
        Ok(())
    }

    /// Stops the pool at its owner's request (Ctrl-C, `Pool.terminate`):
    /// kills every worker now, and reports `Broken` with `stopped` set.
    /// Returns the tasks this stop abandoned (they never finish), or None
    /// if the pool had broken already: its own `Broken`, a fault, says
    /// what happened to them. Decided under the pool's lock, so a break
    /// and a stop that race are told apart.
    pub fn stop(&self) -> Result<Option<Vec<u64>>> {
        let mut st = self.inner.lock()?;
        st.closing = true;
        Ok(self.inner.break_pool(&mut st, "the pool was stopped".into(), true))
    }

    /// The pool's numbers now.
    pub fn stats(&self) -> Result<Stats> {
        let st = self.inner.lock()?;
        let now = monotonic_ns();
        let mut workers = Vec::new();
        for slot in 0..st.workers.len() {
            let v = self.inner.board.view(slot)?;
            let age = now.saturating_sub(v.started_ns);
            let busy = v.busy_ns.min(age);
            workers.push(WorkerStats {
                slot,
                pid: v.pid,
                done: v.done,
                busy_s: busy as f64 / 1e9,
                idle_s: (age - busy) as f64 / 1e9,
                restarts: st.books.restarts(slot),
                running: if v.state == WorkerState::Busy { v.task } else { 0 },
            });
        }
        let mut lat = st.latencies.clone();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| if lat.is_empty() { 0.0 } else { lat[((lat.len() - 1) as f64 * p) as usize] };
        Ok(Stats {
            workers,
            outstanding: st.books.outstanding(),
            pending: st.books.pending(),
            completed: st.completed,
            latency_s: [pct(0.5), pct(0.9), pct(0.99)],
        })
    }
}

impl<P: TaskArgs> Drop for Pool<P> {
    fn drop(&mut self) {
        if my_pid() != self.inner.owner {
            // A forked child dropping its copy of the parent's pool: the
            // threads are the parent's (joining their handles here waited
            // forever on whatever thread of the child reused the id), and
            // the queues and board are the parent's pool's, still in use:
            // closing them would stop the parent's workers. Only this
            // process's memory and descriptors go.
            if let Some(t) = self.thread.take() {
                std::mem::forget(t);
            }
            if let Some(t) = self.watcher.take() {
                std::mem::forget(t);
            }
            return;
        }
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Ok(mut st) = self.inner.lock() {
            st.closing = true;
            self.inner.close_queues(&mut st);
        }
        self.inner.wake();
        self.inner.poke_watcher();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

impl<P: TaskArgs> Inner<P> {
    fn lock(&self) -> Result<MutexGuard<'_, State<P>>> {
        if my_pid() != self.owner {
            // A forked child's copy: the lock may be held forever by a
            // thread of the parent that does not exist here.
            return Err(CoreError::Invalid(format!(
                "this pool belongs to process {}: a forked child cannot use it",
                self.owner
            )));
        }
        self.state.lock().map_err(|_| CoreError::Invalid("pool state poisoned".into()))
    }

    /// Wakes the completion thread (a `Wake` message to itself).
    fn wake(&self) {
        let msg = ResultHeader { task: 0, status: Status::Wake, slot: 0, busy_ns: 0 }.encode();
        // Full: the thread has messages to read and will look anyway.
        let _ = self.results.put(Outgoing { inband: &msg, buffers: &[] }, Some(Instant::now()));
    }

    fn poke_watcher(&self) {
        let _ = rustix::io::write(&self.watcher_wake, &1u64.to_ne_bytes());
    }

    /// The watcher thread: sleeps until a worker exits, then wakes the
    /// completion thread.
    fn watch(self: Arc<Self>) {
        while !self.stop.load(Ordering::SeqCst) {
            let kids: Vec<Arc<Child>> = match self.watched.lock() {
                Ok(w) => w.clone(),
                Err(_) => return,
            };
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(kids.len() + 1);
            fds.push(PollFd::new(&self.watcher_wake, PollFlags::IN));
            for k in &kids {
                fds.push(PollFd::new(k.pidfd_ref(), PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => std::thread::sleep(TICK),
            }
            if fds[0].revents().contains(PollFlags::IN) {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.watcher_wake, &mut buf);
            }
            let exited: Vec<usize> = (0..kids.len()).filter(|&i| !fds[i + 1].revents().is_empty()).collect();
            drop(fds);
            if !exited.is_empty() {
                if let Ok(mut w) = self.watched.lock() {
                    w.retain(|c| !exited.iter().any(|&i| Arc::ptr_eq(c, &kids[i])));
                }
                self.wake();
            }
        }
    }

    fn emit(&self, e: Event<P>) {
        // The receiver lives as long as the Python pool; if it is gone no
        // one is waiting for the event.
        let _ = self.events.send(e);
    }

    /// Sends every pending task that a ready worker has room for.
    fn dispatch(&self, st: &mut State<P>) {
        let board = &self.board;
        let sends =
            st.books.assign(|i| matches!(board.view(i).map(|v| v.state), Ok(WorkerState::Idle | WorkerState::Busy)));
        for s in sends {
            if let Err(e) = self.send(st, s) {
                match e {
                    CoreError::Full => st.books.unsend(s),
                    other => {
                        let done = st.books.reject(s).map(|b| b.payload.task);
                        self.emit(Event::Rejected { task: s.task, error: other.to_string(), done });
                    }
                }
            }
        }
    }

    fn send(&self, st: &State<P>, s: Send) -> Result<()> {
        let q = &st.books.task(s.task).ok_or_else(|| CoreError::Invalid("unknown task".into()))?.payload;
        let t = &q.task;
        let w = st.workers.get(s.worker).and_then(Option::as_ref).ok_or(CoreError::Full)?;
        let function: &[u8] = if s.with_fn { &q.function } else { &[] };
        let header = TaskHeader {
            task: s.task,
            fn_id: t.fn_id,
            fn_len: 0,
            timeout_ms: t.timeout_ms,
            kind: t.kind,
            reset_fns: s.reset_fns,
        };
        let inband = encode_task(header, function, t.args.inband())?;
        let bufs = t.args.buffers();
        self.board.queued(s.task)?;
        w.queue.put(Outgoing { inband: &inband, buffers: &bufs }, Some(Instant::now()))
    }

    fn close_queues(&self, st: &mut State<P>) {
        if st.queues_closed {
            return;
        }
        st.queues_closed = true;
        for w in st.workers.iter().flatten() {
            w.queue.close_producer();
        }
    }

    /// Breaks the pool (`stopped`: at its owner's request); returns the
    /// ids of the tasks it abandoned, None if it was broken already.
    fn break_pool(&self, st: &mut State<P>, reason: String, stopped: bool) -> Option<Vec<u64>> {
        if st.broken.is_some() {
            return None;
        }
        st.broken = Some(reason.clone());
        let abandoned: Vec<(u64, Option<Task<P>>)> =
            st.books.abandon_all().into_iter().map(|(id, q)| (id, Some(q.task))).collect();
        let ids = abandoned.iter().map(|(id, _)| *id).collect();
        for w in st.workers.iter().flatten() {
            let _ = w.child.signal(libc::SIGKILL);
        }
        self.close_queues(st);
        self.emit(Event::Broken { reason, abandoned, stopped });
        Some(ids)
    }

    fn run(self: Arc<Self>) {
        while !self.stop.load(Ordering::SeqCst) {
            let mut look = false;
            match self.results.get_many(256, Some(Instant::now() + TICK)) {
                Ok(batch) => look = self.on_results(batch),
                Err(CoreError::Empty | CoreError::Timeout) => {}
                // No worker holds the result queue right now (all dead or
                // not started): nothing to read until one is attached.
                Err(CoreError::Closed(_)) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => {
                    if let Ok(mut st) = self.lock() {
                        self.break_pool(&mut st, format!("the pool's result queue failed: {e}"), false);
                    }
                }
            }
            let Ok(mut st) = self.lock() else { return };
            if look || st.last_exit_check.elapsed() >= TICK {
                st.last_exit_check = Instant::now();
                drop(st);
                self.check_workers();
                let Ok(again) = self.lock() else { return };
                st = again;
            }
            if st.closing && st.books.outstanding() == 0 {
                self.close_queues(&mut st);
            }
            let gone = st.workers.iter().all(Option::is_none) && (st.respawning == 0 || st.broken.is_some());
            if (st.closing || st.broken.is_some()) && gone {
                drop(st);
                // Nothing is left to watch: the watcher thread ends too, so
                // a pool that was shut down holds no thread.
                self.stop.store(true, Ordering::SeqCst);
                self.poke_watcher();
                self.emit(Event::Closed);
                return;
            }
        }
    }

    /// Books a batch of result messages; true if one asked to look at the
    /// workers now.
    fn on_results(&self, batch: Vec<Vec<Part>>) -> bool {
        let mut look = false;
        let Ok(mut st) = self.lock() else { return false };
        for parts in batch {
            // A message no one takes (a worker's Ready, a Wake, a result no
            // longer booked, one that is no result) gives its blocks back at
            // once, after the match.
            let unclaimed = match self.result_header(parts.first()) {
                // A worker wrote something else: skip the message.
                Err(_) => Some(parts),
                Ok(h) => match h.status {
                    // A worker that booted ends a run of boot failures (kills
                    // of booting workers spread over time never break the pool).
                    Status::Ready => {
                        st.boot_failures = 0;
                        Some(parts)
                    }
                    Status::Wake => {
                        look = true;
                        Some(parts)
                    }
                    Status::InitFailed => {
                        self.emit(Event::InitFailed { parts });
                        self.break_pool(&mut st, "a worker's initializer raised".into(), false);
                        None
                    }
                    // A task no longer booked (abandoned when the pool broke
                    // or was stopped, its result already sent): its result is
                    // dropped, and its blocks go back at once (they stayed
                    // held by this process until the pool ended, one leak per
                    // such result).
                    Status::Ok | Status::Raised | Status::Cancelled => match st.books.finish(h.task, h.busy_ns) {
                        None => Some(parts),
                        Some(book) => {
                            st.completed += 1;
                            let lat = book.submitted.elapsed().as_secs_f64();
                            if st.latencies.len() < LATENCY_SAMPLES {
                                st.latencies.push(lat);
                            } else {
                                let i = (st.completed as usize) % LATENCY_SAMPLES;
                                st.latencies[i] = lat;
                            }
                            let done = Some(book.payload.task);
                            self.emit(Event::Done { task: h.task, status: h.status, busy_ns: h.busy_ns, parts, done });
                            None
                        }
                    },
                },
            };
            if let Some(parts) = unclaimed {
                self.results.free_parts(&parts);
            }
        }
        self.dispatch(&mut st);
        look
    }

    /// The header of a result message whose in-band part is inline or, when
    /// large, in an arena block.
    fn result_header(&self, first: Option<&Part>) -> Result<ResultHeader> {
        match first {
            Some(Part::Inline(b)) => ResultHeader::decode(b),
            Some(Part::Block { offset, len }) if *len >= RESULT_HEADER_LEN as u64 => {
                let p = self.results.block_ptr(*offset, RESULT_HEADER_LEN as u64)?;
                // SAFETY: `block_ptr` checked that the block holds at least
                // the header's bytes; this process holds the block (it was
                // just received) so no one else writes it.
                let head = unsafe { std::slice::from_raw_parts(p.cast_const(), RESULT_HEADER_LEN) };
                ResultHeader::decode(head)
            }
            _ => Err(CoreError::corrupt("result message", "no header")),
        }
    }

    /// Handles workers that ended and tasks past their timeout.
    fn check_workers(&self) {
        let Ok(st) = self.lock() else { return };
        let slots: Vec<(usize, Arc<Child>)> =
            st.workers.iter().enumerate().filter_map(|(i, w)| w.as_ref().map(|w| (i, w.child.clone()))).collect();
        drop(st);
        let mut exited = Vec::new();
        for (slot, child) in &slots {
            match child.wait(Some(Duration::ZERO)) {
                Ok(Some(exit)) => exited.push((*slot, exit)),
                Ok(None) => {}
                Err(_) => exited.push((*slot, Exit::Code(255))),
            }
        }
        if !exited.is_empty() {
            // Booking results dispatches more tasks: none to the dead.
            if let Ok(mut st) = self.lock() {
                for &(slot, _) in &exited {
                    st.books.worker_exiting(slot);
                }
            }
            // Everything a dead worker sent is in the queue before its death
            // was seen: book it first.
            while let Ok(batch) = self.results.get_many(256, Some(Instant::now())) {
                let _ = self.on_results(batch);
            }
            let Ok(mut st) = self.lock() else { return };
            for (slot, exit) in exited {
                self.on_exit(&mut st, slot, exit);
            }
            self.dispatch(&mut st);
        }
        self.check_deadlines();
    }

    fn on_exit(&self, st: &mut State<P>, slot: usize, exit: Exit) {
        let Ok(v) = self.board.view(slot) else { return };
        // Killed with its fork server (the OOM killer, a kill): its boot did
        // not fail; one server death must not count as a boot failure per
        // worker booting then (the pool broke at BOOT_FAILURES at once).
        let with_server = st.workers[slot].as_ref().is_some_and(|w| w.child.reaper_died());
        st.workers[slot] = None;
        let killed = st.kill_cause.remove(&slot);
        let busy = (v.state == WorkerState::Busy).then_some(v.task);
        let cause = match (killed, v.state) {
            (Some((c, _)), _) => c,
            (None, WorkerState::Retiring) => Cause::Retired,
            (None, WorkerState::Stopped) => Cause::Stopped,
            (None, WorkerState::InitFailed) => Cause::InitFailed,
            (None, WorkerState::Booting) if !with_server => Cause::CrashedBooting,
            (None, _) => Cause::Crashed,
        };
        // A kill meant for a task that finished just before it landed hit
        // the next task: that one is sent again, not charged to the user.
        let running = match killed {
            Some((_, target)) if busy != Some(target) => None,
            _ => busy,
        };
        // Dead after it was ready and while running nothing: it was reading
        // the next task (a function that cannot be loaded is reported by the
        // worker as the task's error; this is for what kills the process).
        // Not when it died with its fork server: that death is no task's
        // (one per server death would lose the oldest queued task after
        // three, as `DiedBeforeStart`).
        let between_tasks = busy.is_none() && v.state == WorkerState::Idle && cause == Cause::Crashed && !with_server;
        let down = st.books.worker_down(slot, running, cause != Cause::Killed, between_tasks);
        // Tasks cancelled in its queue must not be sent to another worker.
        for &task in &down.requeued {
            if !self.board.is_cancelled(task) {
                continue;
            }
            if let Some(q) = st.books.withdraw(task) {
                self.board.forget(task);
                self.emit(Event::Cancelled { task, done: Some(q.task) });
            }
        }
        for (task, q) in down.ended {
            let cause = if Some(task) == down.unstartable { Cause::DiedBeforeStart } else { cause };
            self.emit(Event::Lost { task, exitcode: exit.exitcode(), cause, done: Some(q.task) });
        }
        if cause == Cause::CrashedBooting {
            st.boot_failures += 1;
        } else if cause != Cause::InitFailed && !with_server {
            st.boot_failures = 0;
        }
        let breaks = st.boot_failures >= BOOT_FAILURES && st.broken.is_none();
        // While closing, a worker is still replaced if tasks are left to run.
        let respawn = !breaks
            && st.broken.is_none()
            && cause != Cause::InitFailed
            && cause != Cause::Stopped
            && (!st.closing || st.books.outstanding() > 0);
        if respawn {
            st.respawning += 1;
        }
        self.emit(Event::WorkerExited { slot, exitcode: exit.exitcode(), cause, respawn });
        if breaks {
            self.break_pool(
                st,
                format!(
                    "{BOOT_FAILURES} worker processes in a row died while starting (last exit code {})",
                    exit.exitcode()
                ),
                false,
            );
        }
    }

    fn check_deadlines(&self) {
        let Ok(mut st) = self.lock() else { return };
        let now = monotonic_ns();
        for slot in 0..st.workers.len() {
            let Ok(v) = self.board.view(slot) else { continue };
            if v.state != WorkerState::Busy
                || v.deadline_ns == 0
                || now < v.deadline_ns
                || st.kill_cause.contains_key(&slot)
            {
                continue;
            }
            if let Some(w) = &st.workers[slot] {
                if w.child.signal(libc::SIGKILL).is_ok() {
                    st.kill_cause.insert(slot, (Cause::TimedOut, v.task));
                }
            }
        }
    }
}
