//! The process pool's core (`pool::runtime`) driven across real processes.
//!
//! The parent side is the real `Pool`; the workers are this test binary run
//! again on `child_pool_worker` (with `--exact`), a minimal Rust worker that
//! follows the protocol of `python/corral/_worker.py`: it maps the board, its
//! own task queue and the pool's result queue from inherited descriptors,
//! says it is ready, then takes tasks until its queue closes. A task's
//! arguments are a tiny command (`echo:`, `sleep:`, `die`, `die_once:`), so a
//! test can make a worker answer, hang or crash at a precise point.
//!
//! The harness plays the Python layer's part: it starts a worker in a slot
//! (`prepare`, spawn, `attach`) and starts a replacement whenever the pool
//! asks for one (`WorkerExited { respawn: true }`). Every wait has a
//! deadline and every child is killed when its test ends, so a pool bug
//! fails a test instead of hanging the suite.

mod common;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::take_part;
use corral_core::channel::queue::{Outgoing, Part, QueueConfig, SharedQueue};
use corral_core::pool::board::{Board, Start, WorkerState};
use corral_core::pool::runtime::{Cause, Event, Pool, Task, TaskArgs};
use corral_core::pool::wire::{decode_task, encode_result, Kind, ResultHeader, Status, RESULT_HEADER_LEN};
use corral_core::process::{spawn, Child, SpawnRequest};
use corral_core::CoreError;
use crossbeam_channel::{Receiver, RecvTimeoutError};

const ROLE_ENV: &str = "CORRAL_CHILD_ROLE";
const FDS_ENV: &str = "CORRAL_CHILD_FDS";
const ARG_ENV: &str = "CORRAL_CHILD_ARG";
/// Set for a worker that says it is ready, then reads no task
/// (`WorkerKind::Stalls`).
const STALL_ENV: &str = "CORRAL_CHILD_STALLS";
/// The test that plays a pool worker in a child.
const WORKER_ROLE: &str = "child_pool_worker";

/// Generous bound for anything that should take milliseconds: the machine
/// is a shared 2-core VM running the other tests at the same time.
const PATIENCE: Duration = Duration::from_secs(20);
/// Exit status of a worker told to die.
const DIE_CODE: i32 = 9;
/// Bytes the worker puts before a command's output: its pid (u32), how
/// many times it received the task's function (u32), and whether this
/// task carried it (u8).
const REPLY_PREFIX: usize = 9;

// ---------------------------------------------------------------------------
// Both sides.

/// What the pool sends as function `fn_id` (the worker checks it).
fn fn_bytes(fn_id: u64) -> Arc<[u8]> {
    Arc::from(format!("fn-{fn_id}").into_bytes())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

// ---------------------------------------------------------------------------
// The worker (child side).

/// Ends the worker at once, as a crash would.
fn die() -> ! {
    // SAFETY: `_exit` takes no pointers; ending the process without
    // unwinding or flushing is the crash this command simulates.
    unsafe { libc::_exit(DIE_CODE) }
}

/// Runs one command; returns the status and output to reply with.
fn run_command(cmd: &[u8]) -> (Status, Vec<u8>) {
    if let Some(rest) = cmd.strip_prefix(b"echo:") {
        return (Status::Ok, rest.to_vec());
    }
    if let Some(ms) = cmd.strip_prefix(b"sleep:") {
        let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        return (Status::Ok, b"slept".to_vec());
    }
    if cmd == b"die" {
        die();
    }
    if let Some(path) = cmd.strip_prefix(b"die_once:") {
        let path = Path::new(OsStr::from_bytes(path));
        if path.exists() {
            return (Status::Ok, b"survived".to_vec());
        }
        std::fs::write(path, b"").unwrap();
        die();
    }
    (Status::Raised, format!("unknown command {:?}", String::from_utf8_lossy(cmd)).into_bytes())
}

/// A pool worker: the loop of `_worker.main`, with commands for functions.
/// Descriptors: board, task queue, result queue and, optionally, a pipe to
/// wait on before saying it is ready; argument: its slot.
#[test]
fn child_pool_worker() {
    if std::env::var(ROLE_ENV).ok().as_deref() != Some(WORKER_ROLE) {
        return;
    }
    let fds: Vec<RawFd> = std::env::var(FDS_ENV).unwrap().split(',').map(|s| s.parse().unwrap()).collect();
    let slot: usize = std::env::var(ARG_ENV).unwrap().parse().unwrap();
    // SAFETY: the parent passed these descriptors under these numbers for
    // this child to own; nothing else in the child uses them.
    let [board, tasks, results] =
        fds[..3].try_into().map(|f: [RawFd; 3]| f.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })).unwrap();
    if let Some(&go) = fds.get(3) {
        // SAFETY: as above; the read end of the parent's go pipe.
        let go = unsafe { OwnedFd::from_raw_fd(go) };
        let mut byte = [0u8; 1];
        // A byte: attached. End of file: the parent is gone (so are we soon).
        while let Err(rustix::io::Errno::INTR) = rustix::io::read(&go, &mut byte) {}
    }
    let board = Board::open(board).unwrap();
    let tasks = SharedQueue::open(tasks).unwrap();
    let results = SharedQueue::open(results).unwrap();
    let send = |task: u64, status: Status, busy_ns: u64, body: &[u8]| {
        let msg = encode_result(ResultHeader { task, status, slot: slot as u16, busy_ns }, body);
        results.put(Outgoing { inband: &msg, buffers: &[] }, None).unwrap();
    };
    board.ready(slot, std::process::id()).unwrap();
    send(0, Status::Ready, 0, &[]);
    if std::env::var_os(STALL_ENV).is_some() {
        // Idle with its tasks unread until it is killed (or, bounded, gone).
        std::thread::sleep(PATIENCE * 3);
        return;
    }
    // fn_id -> times its bytes arrived.
    let mut fns: HashMap<u64, u32> = HashMap::new();
    loop {
        let parts = match tasks.get_many(1, None) {
            Ok(mut batch) => batch.pop().unwrap(),
            Err(CoreError::Closed(_)) => {
                board.set_state(slot, WorkerState::Stopped).unwrap();
                return;
            }
            Err(e) => panic!("worker {slot}: get: {e}"),
        };
        assert_eq!(parts.len(), 1, "a task of this test has no out-of-band buffers");
        let inband = take_part(&tasks, &parts[0]);
        let layout = decode_task(&inband).unwrap();
        let h = layout.header;
        assert_eq!(h.kind, Kind::Call, "kind: one call");
        let (task, fn_id, timeout_ms) = (h.task, h.fn_id, h.timeout_ms);
        let (fn_part, cmd) = (&inband[layout.fn_at..layout.args_at], &inband[layout.args_at..]);
        let had_fn = h.fn_len > 0;
        if had_fn {
            assert_eq!(fn_part, &fn_bytes(fn_id)[..], "function {fn_id} arrived intact");
            *fns.entry(fn_id).or_insert(0) += 1;
        }
        if board.begin(slot, task, u64::from(timeout_ms) * 1_000_000).unwrap() == Start::Cancelled {
            send(task, Status::Cancelled, 0, &[]);
            continue;
        }
        let t0 = Instant::now();
        let (status, out) = match fns.get(&fn_id) {
            None => (Status::Raised, format!("function {fn_id} was never sent to this worker").into_bytes()),
            Some(_) => run_command(cmd),
        };
        let mut body = Vec::with_capacity(REPLY_PREFIX + out.len());
        body.extend_from_slice(&std::process::id().to_le_bytes());
        body.extend_from_slice(&fns.get(&fn_id).copied().unwrap_or(0).to_le_bytes());
        body.push(u8::from(had_fn));
        body.extend_from_slice(&out);
        send(task, status, t0.elapsed().as_nanos() as u64, &body);
        board.end(slot).unwrap();
    }
}

// ---------------------------------------------------------------------------
// The parent side: tasks, replies, and a harness that plays the Python layer.

/// A task's arguments: the command bytes, in band.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args(Vec<u8>);

impl TaskArgs for Args {
    fn inband(&self) -> &[u8] {
        &self.0
    }

    fn buffers(&self) -> Vec<&[u8]> {
        Vec::new()
    }
}

fn task(fn_id: u64, cmd: impl Into<Vec<u8>>) -> Task<Args> {
    Task { fn_id, args: Args(cmd.into()), kind: Kind::Call, timeout_ms: 0, retries: 0 }
}

/// What task `i` of a test echoes: its id, then a filler of varying length.
fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("task {i}:").into_bytes();
    p.resize(p.len() + (i % 97) as usize, (i % 251) as u8);
    p
}

fn echo(i: u64) -> Vec<u8> {
    [b"echo:".as_slice(), &payload(i)].concat()
}

/// A worker's result message, decoded.
#[derive(Debug)]
struct Reply {
    header: ResultHeader,
    /// The worker's pid (0 for a header-only reply).
    pid: u32,
    /// Times the worker received the task's function.
    fn_loads: u32,
    /// Whether this task carried the function.
    had_fn: bool,
    output: Vec<u8>,
}

/// How a task ended.
#[derive(Debug)]
enum Outcome {
    Done {
        status: Status,
        reply: Reply,
        args: Option<Args>,
    },
    Lost {
        exitcode: i32,
        cause: Cause,
        args: Option<Args>,
    },
    Rejected {
        error: String,
        args: Option<Args>,
    },
    /// Cancelled in a dead worker's queue; never ran.
    Cancelled,
}

/// One event, without its payload, in the order it came.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    Done(u64, Status),
    Lost(u64, Cause),
    Rejected(u64),
    Cancelled(u64),
    Exited { slot: usize, exitcode: i32, cause: Cause, respawn: bool },
    InitFailed,
    Broken { abandoned: Vec<u64>, stopped: bool },
    Closed,
}

/// A started worker, not attached yet.
struct Launched {
    child: Arc<Child>,
    tasks: Arc<SharedQueue>,
    /// Written once the worker is attached (None: it does not wait).
    go: Option<OwnedFd>,
}

/// What the harness starts in a slot.
#[derive(Debug, Clone, Copy)]
enum WorkerKind {
    /// `child_pool_worker`.
    Rust,
    /// `child_pool_worker` that says it is ready, then reads no task: idle
    /// on the board with its tasks queued, until it is killed.
    Stalls,
    /// `/bin/sh -c "exit CODE"`: a worker that dies while booting.
    ExitAtOnce(i32),
}

fn queue_config() -> QueueConfig {
    QueueConfig { ring_bytes: 256 << 10, arena_bytes: 8 << 20, maxsize: 0 }
}

/// A pool and its workers, as the Python layer drives them.
struct Harness {
    pool: Option<Pool<Args>>,
    events: Receiver<Event<Args>>,
    results: Arc<SharedQueue>,
    kind: WorkerKind,
    /// After this many starts, start this kind instead.
    switch: Option<(usize, WorkerKind)>,
    /// The first this many children started are marked as killed with
    /// their fork server (`Child::set_reaper_died`).
    with_server: usize,
    /// Per slot: the current worker and its task queue.
    current: Vec<Option<(Arc<Child>, Arc<SharedQueue>)>>,
    /// Every child started, killed when the test ends.
    children: Vec<Arc<Child>>,
    outcomes: HashMap<u64, Outcome>,
    notes: Vec<Note>,
}

impl Harness {
    /// A pool of `workers` slots, each with a started worker.
    fn new(workers: usize, kind: WorkerKind) -> Harness {
        let mut h = Harness::unstarted(workers, kind);
        for slot in 0..workers {
            h.start(slot);
        }
        h
    }

    /// A pool of `workers` slots, none started.
    fn unstarted(workers: usize, kind: WorkerKind) -> Harness {
        let results = SharedQueue::create(queue_config()).unwrap();
        let (pool, events) = Pool::<Args>::new(workers, results.clone()).unwrap();
        Harness {
            pool: Some(pool),
            events,
            results,
            kind,
            switch: None,
            with_server: 0,
            current: (0..workers).map(|_| None).collect(),
            children: Vec::new(),
            outcomes: HashMap::new(),
            notes: Vec::new(),
        }
    }

    fn pool(&self) -> &Pool<Args> {
        self.pool.as_ref().unwrap()
    }

    /// Starts a worker in `slot`, as `ProcessPoolExecutor._spawn` does.
    fn start(&mut self, slot: usize) {
        let launched = self.launch(slot, true);
        self.attach(slot, launched);
    }

    /// Prepares `slot` and starts its worker, not attached yet. With
    /// `hold`, a Rust worker waits for `attach` before it says it is ready
    /// (see `a_worker_ready_before_it_is_attached_still_gets_the_waiting_tasks`
    /// for why every other test needs that).
    fn launch(&mut self, slot: usize, hold: bool) -> Launched {
        let pool = self.pool.as_ref().unwrap();
        pool.prepare(slot).unwrap();
        let tasks = SharedQueue::create(queue_config()).unwrap();
        if let Some((after, kind)) = self.switch {
            if self.children.len() >= after {
                self.kind = kind;
            }
        }
        let mut go = None;
        let request = match self.kind {
            WorkerKind::Rust | WorkerKind::Stalls => {
                let mut fds =
                    vec![pool.board().fd().as_raw_fd(), tasks.fd().as_raw_fd(), self.results.fd().as_raw_fd()];
                if hold {
                    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
                    fds.push(r.as_raw_fd());
                    go = Some((r, w));
                }
                let fd_list = fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
                let argv = [
                    std::env::current_exe().unwrap().into_os_string(),
                    "--exact".into(),
                    WORKER_ROLE.into(),
                    "--nocapture".into(),
                    "--quiet".into(),
                    "--test-threads=1".into(),
                ];
                let mut env = vec![
                    (OsString::from(ROLE_ENV), OsString::from(WORKER_ROLE)),
                    (OsString::from(FDS_ENV), OsString::from(fd_list)),
                    (OsString::from(ARG_ENV), OsString::from(slot.to_string())),
                ];
                if matches!(self.kind, WorkerKind::Stalls) {
                    env.push((OsString::from(STALL_ENV), OsString::from("1")));
                }
                SpawnRequest { argv: argv.to_vec(), pass_fds: fds, env }
            }
            WorkerKind::ExitAtOnce(code) => SpawnRequest {
                argv: ["/bin/sh", "-c", &format!("exit {code}")].iter().map(OsString::from).collect(),
                pass_fds: Vec::new(),
                env: Vec::new(),
            },
        };
        let child = Arc::new(spawn(request).unwrap());
        if self.children.len() < self.with_server {
            child.set_reaper_died();
        }
        // As `corral.Queue` does for every child it is passed to.
        tasks.add_holder(child.pid()).unwrap();
        self.results.add_holder(child.pid()).unwrap();
        self.children.push(child.clone());
        Launched { child, tasks, go: go.map(|(_, w)| w) }
    }

    /// Attaches a launched worker to its slot, then lets it go on.
    fn attach(&mut self, slot: usize, l: Launched) {
        self.current[slot] = Some((l.child.clone(), l.tasks.clone()));
        self.pool().attach(slot, l.child, l.tasks).unwrap();
        if let Some(go) = l.go {
            rustix::io::write(&go, b"g").unwrap();
        }
    }

    /// Submits `t`, checking the id the pool gives it: ids follow
    /// submission order from 1, so a test names its tasks 1, 2, 3...
    fn submit(&self, id: u64, t: Task<Args>) {
        let function = fn_bytes(t.fn_id);
        assert_eq!(self.pool().submit(t, &function).unwrap(), id, "the pool numbers tasks in submission order");
    }

    /// Waits up to `within` for one event and books it; starts a
    /// replacement worker when asked. False if none came.
    fn pump(&mut self, within: Duration) -> bool {
        let e = match self.events.recv_timeout(within) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => panic!("the pool's event channel closed; events: {:?}", self.notes),
        };
        match e {
            Event::Done { task, status, busy_ns, parts, done } => {
                let reply = self.decode(&parts);
                assert_eq!(reply.header.task, task, "Done names the task of its result message");
                assert_eq!(reply.header.busy_ns, busy_ns, "Done carries the run time of its result message");
                self.notes.push(Note::Done(task, status));
                self.outcome(task, Outcome::Done { status, reply, args: done.map(|t| t.args) });
            }
            Event::Lost { task, exitcode, cause, done } => {
                self.notes.push(Note::Lost(task, cause));
                self.outcome(task, Outcome::Lost { exitcode, cause, args: done.map(|t| t.args) });
            }
            Event::Cancelled { task, done } => {
                drop(done);
                self.notes.push(Note::Cancelled(task));
                self.outcome(task, Outcome::Cancelled);
            }
            Event::Rejected { task, error, done } => {
                self.notes.push(Note::Rejected(task));
                self.outcome(task, Outcome::Rejected { error, args: done.map(|t| t.args) });
            }
            Event::WorkerExited { slot, exitcode, cause, respawn } => {
                self.notes.push(Note::Exited { slot, exitcode, cause, respawn });
                self.current[slot] = None;
                if respawn {
                    self.start(slot);
                }
            }
            Event::InitFailed { parts } => {
                for p in &parts {
                    take_part(&self.results, p);
                }
                self.notes.push(Note::InitFailed);
            }
            Event::Broken { abandoned, stopped, .. } => {
                self.notes.push(Note::Broken { abandoned: abandoned.iter().map(|(id, _)| *id).collect(), stopped });
            }
            Event::Closed => self.notes.push(Note::Closed),
        }
        true
    }

    fn outcome(&mut self, task: u64, o: Outcome) {
        if let Some(old) = self.outcomes.insert(task, o) {
            panic!("task {task} ended twice: first {old:?}, then {:?}", self.outcomes[&task]);
        }
    }

    fn decode(&self, parts: &[Part]) -> Reply {
        assert_eq!(parts.len(), 1, "a result of this test is one part");
        let msg = take_part(&self.results, &parts[0]);
        let header = ResultHeader::decode(&msg).unwrap();
        let body = &msg[RESULT_HEADER_LEN..];
        if body.len() < REPLY_PREFIX {
            return Reply { header, pid: 0, fn_loads: 0, had_fn: false, output: body.to_vec() };
        }
        Reply {
            header,
            pid: le_u32(body, 0),
            fn_loads: le_u32(body, 4),
            had_fn: body[8] != 0,
            output: body[REPLY_PREFIX..].to_vec(),
        }
    }

    /// Books events until `cond` holds; panics after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out after {timeout:?} waiting for {what}; {}", self.describe());
            }
            self.pump(left.min(Duration::from_millis(50)));
        }
    }

    /// The events so far, the board and the books, for failure messages.
    fn describe(&self) -> String {
        let mut out = format!("events: {:?}", self.notes);
        for slot in 0..self.current.len() {
            let alive = self.current[slot].as_ref().map(|(c, _)| c.wait(Some(Duration::ZERO)).ok().flatten());
            out += &format!("; slot {slot}: {:?}, worker exit {alive:?}", self.pool().board().view(slot));
        }
        if let Ok(s) = self.pool().stats() {
            out += &format!("; outstanding {}, pending {}", s.outstanding, s.pending);
        }
        out
    }

    /// Waits until every task in `ids` has ended.
    fn settle(&mut self, ids: impl IntoIterator<Item = u64>, timeout: Duration) {
        let ids: Vec<u64> = ids.into_iter().collect();
        self.wait_for(&format!("tasks {ids:?} to end"), timeout, |h| ids.iter().all(|t| h.outcomes.contains_key(t)));
    }

    /// Books events until `slot`'s current worker is idle on the board
    /// (booted and not running anything).
    fn wait_ready(&mut self, slot: usize) {
        self.wait_for(&format!("the worker in slot {slot} to be ready"), PATIENCE, |h| {
            let Some((child, _)) = &h.current[slot] else { return false };
            let v = h.pool().board().view(slot).unwrap();
            v.state == WorkerState::Idle && v.pid == child.pid()
        });
    }

    fn pid(&self, slot: usize) -> u32 {
        self.current[slot].as_ref().map_or(0, |(c, _)| c.pid())
    }

    /// The reply of a task that must have completed with `Ok`.
    fn ok(&self, task: u64) -> &Reply {
        match self.outcomes.get(&task) {
            Some(Outcome::Done { status: Status::Ok, reply, .. }) => reply,
            other => panic!("task {task} did not complete Ok: {other:?}; events: {:?}", self.notes),
        }
    }

    fn position(&self, note: &Note) -> usize {
        self.notes.iter().position(|n| n == note).unwrap_or_else(|| panic!("no {note:?} in {:?}", self.notes))
    }

    fn exits(&self) -> Vec<&Note> {
        self.notes.iter().filter(|n| matches!(n, Note::Exited { .. })).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = c.signal(libc::SIGKILL);
        }
        for c in &self.children {
            let _ = c.wait(Some(Duration::from_secs(5)));
        }
        drop(self.pool.take());
    }
}

/// A path no other test run uses, removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        TempPath(std::env::temp_dir().join(format!("corral-pool-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------
// 1. Round trips.

#[test]
fn two_workers_return_every_task_with_its_own_bytes_and_get_each_function_once() {
    let mut h = Harness::new(2, WorkerKind::Rust);
    h.wait_ready(0);
    h.wait_ready(1);
    let ids = 1..=200u64;
    for i in ids.clone() {
        h.submit(i, task(1 + i % 2, echo(i)));
    }
    h.settle(ids.clone(), PATIENCE);
    let mut carried: HashMap<(u32, u64), u32> = HashMap::new();
    for i in ids.clone() {
        let r = h.ok(i);
        assert_eq!(r.output, payload(i), "task {i} came back with its own bytes");
        assert_eq!(r.fn_loads, 1, "task {i}: its worker received function {} once", 1 + i % 2);
        *carried.entry((r.pid, 1 + i % 2)).or_insert(0) += u32::from(r.had_fn);
        let Some(Outcome::Done { args, .. }) = h.outcomes.get(&i) else { unreachable!() };
        assert_eq!(args.as_ref(), Some(&Args(echo(i))), "Done hands task {i}'s arguments back");
    }
    assert!(carried.values().all(|&n| n == 1), "one task per worker and function carried it: {carried:?}");
    let pids: HashSet<u32> = carried.keys().map(|k| k.0).collect();
    assert_eq!(pids, HashSet::from([h.pid(0), h.pid(1)]), "both workers ran tasks");
    let stats = h.pool().stats().unwrap();
    assert_eq!((stats.completed, stats.outstanding, stats.pending), (200, 0, 0));
    assert_eq!(stats.workers.iter().map(|w| w.done).sum::<u64>(), 200, "the board counts every task");
    assert!(h.exits().is_empty(), "no worker ended: {:?}", h.notes);
}

#[test]
fn messages_larger_than_a_ring_slot_travel_through_the_arenas_both_ways_and_every_block_comes_back() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);
    // Past the 64 KiB inline bound: the task and its result are arena blocks.
    let big = |i: u64| [b"echo:".as_slice(), &vec![i as u8; 300_000 + i as usize]].concat();
    for i in 1..=6 {
        h.submit(i, task(1, big(i)));
    }
    h.settle(1..=6, PATIENCE);
    for i in 1..=6 {
        assert!(h.ok(i).output == big(i)[5..], "task {i}'s large result arrived intact");
    }
    assert_eq!(h.results.arena_used().unwrap(), 0, "every result block was freed");
    let (_, tasks) = h.current[0].clone().unwrap();
    assert_eq!(tasks.arena_used().unwrap(), 0, "the worker freed every task block");

    // Larger than the worker's queue can ever hold: rejected, the pool goes on.
    let huge = vec![b'x'; tasks.max_message() as usize + 1];
    h.submit(7, task(1, huge.clone()));
    h.submit(8, task(1, echo(8)));
    h.settle([7, 8], PATIENCE);
    match h.outcomes.get(&7) {
        Some(Outcome::Rejected { error, args }) => {
            assert!(!error.is_empty());
            assert_eq!(args.as_ref().map(|a| a.0.len()), Some(huge.len()), "the task is handed back");
        }
        other => panic!("an oversized task gave {other:?}"),
    }
    assert_eq!(h.ok(8).output, payload(8));
}

#[test]
fn a_worker_ready_before_it_is_attached_still_gets_the_waiting_tasks() {
    let mut h = Harness::unstarted(1, WorkerKind::Rust);
    // No worker is up: the task waits in the pool.
    h.submit(1, task(1, echo(1)));
    // The worker says it is ready and the completion thread books that
    // before the parent calls `attach`: what a quickly forked worker does
    // on a busy machine.
    let l = h.launch(0, false);
    let pid = l.child.pid();
    h.wait_for("the unattached worker to be ready", PATIENCE, |h| {
        let v = h.pool().board().view(0).unwrap();
        v.state == WorkerState::Idle && v.pid == pid
    });
    h.wait_for("its Ready message to be taken", PATIENCE, |h| h.results.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    h.attach(0, l);
    h.settle([1], Duration::from_secs(5));
    assert_eq!(h.ok(1).pid, pid);
}

// ---------------------------------------------------------------------------
// 2. Crashes, retries, timeouts.

#[test]
fn a_worker_dying_mid_task_loses_exactly_that_task_and_its_replacement_runs_the_rest() {
    let mut h = Harness::new(2, WorkerKind::Rust);
    h.wait_ready(0);
    h.wait_ready(1);
    let first_pids = [h.pid(0), h.pid(1)];
    for i in 1..=10 {
        h.submit(i, task(1, echo(i)));
    }
    h.submit(11, task(1, "die"));
    for i in 12..=30 {
        h.submit(i, task(1, echo(i)));
    }
    h.settle(1..=30, PATIENCE);
    match h.outcomes.get(&11) {
        Some(Outcome::Lost { exitcode, cause, args }) => {
            assert_eq!((*exitcode, *cause), (DIE_CODE, Cause::Crashed));
            assert_eq!(args.as_ref(), Some(&Args(b"die".to_vec())), "the lost task is handed back");
        }
        other => panic!("the task that killed its worker gave {other:?}; events: {:?}", h.notes),
    }
    for i in (1..=30).filter(|&i| i != 11) {
        assert_eq!(h.ok(i).output, payload(i), "task {i}");
    }
    h.wait_for("the crashed worker's exit", PATIENCE, |h| !h.exits().is_empty());
    let exits = h.exits();
    assert_eq!(exits.len(), 1, "one worker ended: {exits:?}");
    let Note::Exited { slot, exitcode, cause, respawn } = exits[0].clone() else { unreachable!() };
    assert_eq!((exitcode, cause, respawn), (DIE_CODE, Cause::Crashed, true));
    assert!(h.position(&Note::Lost(11, Cause::Crashed)) < h.position(exits[0]), "Lost comes before WorkerExited");

    // The replacement (started on WorkerExited) takes tasks.
    h.wait_ready(slot);
    let new_pid = h.pid(slot);
    assert!(!first_pids.contains(&new_pid));
    assert_eq!(h.pool().stats().unwrap().workers[slot].restarts, 1);
    for i in 31..=50 {
        h.submit(i, task(1, echo(i)));
    }
    h.settle(31..=50, PATIENCE);
    let pids: HashSet<u32> = (31..=50).map(|i| h.ok(i).pid).collect();
    assert!(pids.contains(&new_pid), "the replacement ran tasks: {pids:?} (new {new_pid})");
    assert!((31..=50).all(|i| h.ok(i).output == payload(i)));
}

#[test]
fn a_task_with_one_retry_whose_first_run_kills_its_worker_completes_on_a_replacement() {
    let marker = TempPath::new("retry");
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);
    let first = h.pid(0);
    let cmd = [b"die_once:".as_slice(), marker.0.as_os_str().as_bytes()].concat();
    h.submit(1, Task { retries: 1, ..task(1, cmd) });
    h.settle([1], PATIENCE);
    let r = h.ok(1);
    assert_eq!(r.output, b"survived");
    assert_ne!(r.pid, first, "the second run is on the replacement");
    assert!(marker.0.exists(), "the first run happened");
    assert_eq!(h.exits(), [&Note::Exited { slot: 0, exitcode: DIE_CODE, cause: Cause::Crashed, respawn: true }]);

    // Without retries left, the same crash is a loss.
    let marker2 = TempPath::new("retry-spent");
    let cmd = [b"die_once:".as_slice(), marker2.0.as_os_str().as_bytes()].concat();
    h.submit(2, Task { retries: 0, ..task(1, cmd) });
    h.settle([2], PATIENCE);
    assert!(matches!(h.outcomes[&2], Outcome::Lost { cause: Cause::Crashed, exitcode: DIE_CODE, .. }));
}

#[test]
fn a_task_past_its_timeout_is_killed_and_reported_timed_out_within_two_seconds() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);
    // Within its timeout: completes, and the deadline does not outlive it.
    h.submit(1, Task { timeout_ms: 2_000, ..task(1, "sleep:10") });
    h.settle([1], PATIENCE);
    assert_eq!(h.ok(1).output, b"slept");
    // The worker replies before it marks itself idle (as `_worker.py`).
    h.wait_ready(0);
    assert_eq!(h.pool().board().view(0).unwrap().deadline_ns, 0);

    let t0 = Instant::now();
    h.submit(2, Task { timeout_ms: 200, ..task(1, "sleep:5000") });
    h.settle([2], PATIENCE);
    let took = t0.elapsed();
    assert!(
        matches!(h.outcomes[&2], Outcome::Lost { cause: Cause::TimedOut, exitcode, .. } if exitcode == -libc::SIGKILL),
        "{:?}",
        h.outcomes[&2]
    );
    assert!(took >= Duration::from_millis(200), "killed before its timeout ({took:?})");
    assert!(took < Duration::from_secs(2), "the timeout was noticed after {took:?}");

    // The pool keeps working on a replacement.
    h.submit(3, task(1, echo(3)));
    h.settle([3], PATIENCE);
    assert_eq!(h.ok(3).output, payload(3));
    let exits = h.exits();
    assert_eq!(
        exits,
        [&Note::Exited { slot: 0, exitcode: -libc::SIGKILL, cause: Cause::TimedOut, respawn: true }],
        "{exits:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. Kill and cancel.

#[test]
fn kill_loses_the_running_task_and_cancel_keeps_a_queued_one_from_running() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);

    // Kill: only a running task can be killed; it is lost, not retried.
    h.submit(1, Task { retries: 3, ..task(1, "sleep:5000") });
    h.wait_for("task 1 to run", PATIENCE, |h| h.pool().stats().unwrap().workers[0].running == 1);
    assert!(!h.pool().cancel(1).unwrap(), "a running task cannot be cancelled");
    assert!(!h.pool().kill(999).unwrap(), "no worker runs task 999");
    let t0 = Instant::now();
    assert!(h.pool().kill(1).unwrap());
    h.settle([1], PATIENCE);
    assert!(
        matches!(h.outcomes[&1], Outcome::Lost { cause: Cause::Killed, exitcode, .. } if exitcode == -libc::SIGKILL),
        "{:?}",
        h.outcomes[&1]
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "kill took {:?}", t0.elapsed());
    h.wait_ready(0);
    assert_eq!(h.exits(), [&Note::Exited { slot: 0, exitcode: -libc::SIGKILL, cause: Cause::Killed, respawn: true }]);

    // Measured short tasks of function 1 let several be queued in the worker.
    for i in 2..=6 {
        h.submit(i, task(1, echo(i)));
    }
    h.settle(2..=6, PATIENCE);
    h.submit(7, task(1, "sleep:600"));
    h.submit(8, task(1, echo(8)));
    // Function 2 is not measured yet: one task at a time, so 9 waits here.
    h.submit(9, task(2, echo(9)));
    let stats = h.pool().stats().unwrap();
    assert_eq!((stats.outstanding, stats.pending), (3, 1), "7 and 8 are in the worker's queue, 9 is not sent");
    h.wait_for("task 7 to run", PATIENCE, |h| h.pool().stats().unwrap().workers[0].running == 7);
    assert!(h.pool().cancel(8).unwrap(), "a task in the worker's queue is cancelled on the board");
    assert!(h.pool().cancel(9).unwrap(), "a task never sent is withdrawn");
    h.settle([7, 8], PATIENCE);
    assert_eq!(h.ok(7).output, b"slept");
    assert!(
        matches!(h.outcomes[&8], Outcome::Done { status: Status::Cancelled, .. }),
        "the worker skipped task 8: {:?}",
        h.outcomes[&8]
    );
    h.pool().close(false).unwrap();
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    assert!(!h.outcomes.contains_key(&9), "a withdrawn task has no event: {:?}", h.outcomes.get(&9));
    assert_eq!(h.pool().board().view(0).unwrap().done, 5 + 1, "task 8 never ran (only 2..=7 did)");
}

// ---------------------------------------------------------------------------
// 4. A pool whose workers cannot start.

#[test]
fn three_workers_in_a_row_dying_while_booting_break_the_pool() {
    let mut h = Harness::new(1, WorkerKind::ExitAtOnce(3));
    h.submit(1, task(1, echo(1)));
    h.wait_for("Broken", PATIENCE, |h| h.notes.iter().any(|n| matches!(n, Note::Broken { .. })));
    let broken_at = h.notes.iter().position(|n| matches!(n, Note::Broken { .. })).unwrap();
    let before: Vec<&Note> = h.notes[..broken_at].iter().collect();
    assert_eq!(before.len(), 3, "three exits, then Broken: {:?}", h.notes);
    for n in &before {
        assert!(matches!(n, Note::Exited { slot: 0, exitcode: 3, cause: Cause::CrashedBooting, .. }), "{:?}", h.notes);
    }
    let Note::Broken { abandoned, stopped } = &h.notes[broken_at] else { unreachable!() };
    assert!(abandoned.contains(&1), "the waiting task is handed back: {abandoned:?}");
    assert!(!stopped, "a break is no stop");
    assert!(h.pool().submit(task(1, echo(2)), &fn_bytes(1)).is_err(), "a broken pool takes no tasks");
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    assert!(!h.outcomes.contains_key(&1));
}

#[test]
fn workers_killed_booting_with_their_fork_server_are_not_boot_failures() {
    // One fork server's death kills every worker it forked, booting ones
    // too: three of them broke the pool as three failed boots.
    let mut h = Harness::unstarted(1, WorkerKind::ExitAtOnce(137));
    h.with_server = 3;
    h.switch = Some((3, WorkerKind::Rust));
    h.start(0);
    h.submit(1, task(1, echo(1)));
    h.settle([1], PATIENCE);
    assert_eq!(h.ok(1).output, payload(1));
    let exits = h.exits();
    assert_eq!(exits.len(), 3, "{:?}", h.notes);
    for n in exits {
        assert!(matches!(n, Note::Exited { cause: Cause::Crashed, respawn: true, .. }), "{:?}", h.notes);
    }
    assert!(!h.notes.iter().any(|n| matches!(n, Note::Broken { .. })), "{:?}", h.notes);
}

/// Kills the worker of slot 0 three times while it is idle with task 1
/// queued to it and unread (`WorkerKind::Stalls`), each marked killed with
/// its fork server if `with_server`; the fourth worker reads its tasks.
/// Returns the harness once task 1 ended.
fn three_idle_deaths_with_task_1_queued(with_server: bool) -> Harness {
    let mut h = Harness::unstarted(1, WorkerKind::Stalls);
    h.with_server = if with_server { 3 } else { 0 };
    h.switch = Some((3, WorkerKind::Rust));
    h.start(0);
    h.submit(1, task(1, echo(1)));
    for round in 1..=3 {
        h.wait_ready(0);
        // Sent to the worker's queue: none pending in the pool.
        h.wait_for(&format!("task 1 to be sent to worker {round}"), PATIENCE, |h| {
            h.pool().stats().is_ok_and(|s| s.pending == 0)
        });
        let (child, _) = h.current[0].clone().unwrap();
        child.signal(libc::SIGKILL).unwrap();
        h.wait_for(&format!("worker {round}'s exit"), PATIENCE, |h| h.exits().len() == round);
    }
    h.settle([1], PATIENCE);
    h
}

#[test]
fn workers_dying_idle_with_their_fork_server_charge_no_unstarted_death_to_a_queued_task() {
    // A worker that dies running nothing after it was ready was reading
    // its next task: the oldest task queued to it is charged, and lost as
    // DiedBeforeStart after three such deaths. Not when the worker died
    // with its fork server: three server deaths lost the task.
    let h = three_idle_deaths_with_task_1_queued(true);
    assert_eq!(h.ok(1).output, payload(1));
    for n in h.exits() {
        assert!(matches!(n, Note::Exited { cause: Cause::Crashed, respawn: true, .. }), "{:?}", h.notes);
    }
    // The same deaths of the worker alone charge the task (the state is
    // the one the rule is for).
    let h = three_idle_deaths_with_task_1_queued(false);
    assert!(matches!(h.outcomes.get(&1), Some(Outcome::Lost { cause: Cause::DiedBeforeStart, .. })), "{:?}", h.notes);
}

#[test]
fn a_broken_pool_hands_back_each_unfinished_task_once() {
    let mut h = Harness::new(1, WorkerKind::ExitAtOnce(3));
    h.submit(1, task(1, echo(1)));
    h.submit(2, task(1, echo(2)));
    h.wait_for("Broken", PATIENCE, |h| h.notes.iter().any(|n| matches!(n, Note::Broken { .. })));
    let abandoned = h
        .notes
        .iter()
        .find_map(|n| match n {
            Note::Broken { abandoned, .. } => Some(abandoned.clone()),
            _ => None,
        })
        .unwrap();
    let mut sorted = abandoned.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2], "each unfinished task once: {abandoned:?}");
}

#[test]
fn a_stop_after_a_break_makes_no_second_event_and_hands_back_nothing() {
    // The break's own event says what happened to its tasks: a stop that
    // comes after it (Ctrl-C, `Pool.terminate`) must not report them again
    // as stopped.
    let mut h = Harness::new(1, WorkerKind::ExitAtOnce(3));
    h.submit(1, task(1, echo(1)));
    h.wait_for("Broken", PATIENCE, |h| h.notes.iter().any(|n| matches!(n, Note::Broken { .. })));
    assert_eq!(h.pool().stop().unwrap(), None, "the pool had broken already");
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    let broken: Vec<&Note> = h.notes.iter().filter(|n| matches!(n, Note::Broken { .. })).collect();
    assert_eq!(broken, [&Note::Broken { abandoned: vec![1], stopped: false }], "{:?}", h.notes);
}

#[test]
fn a_stop_hands_back_the_tasks_it_cut_off_and_says_stopped() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.submit(1, task(1, echo(1)));
    h.settle([1], PATIENCE);
    h.submit(2, task(1, b"sleep:60000".to_vec()));
    h.submit(3, task(1, echo(3)));
    h.wait_for("task 2 to run", PATIENCE, |h| h.pool().stats().unwrap().workers[0].running == 2);
    let mut cut = h.pool().stop().unwrap().expect("a live pool is stopped");
    cut.sort_unstable();
    assert_eq!(cut, [2, 3], "the running and the queued task, not the finished one");
    assert_eq!(h.pool().stop().unwrap(), None, "stopped once");
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    let broken: Vec<&Note> = h.notes.iter().filter(|n| matches!(n, Note::Broken { .. })).collect();
    assert_eq!(broken.len(), 1, "{:?}", h.notes);
    assert!(matches!(broken[0], Note::Broken { stopped: true, .. }), "{:?}", h.notes);
}

#[test]
fn the_boot_failure_that_breaks_the_pool_does_not_ask_for_a_replacement() {
    let mut h = Harness::new(1, WorkerKind::ExitAtOnce(3));
    // Whatever is started after the third failure is a real worker, as the
    // Python layer's would be: it must not be left running.
    h.switch = Some((3, WorkerKind::Rust));
    h.wait_for("Broken", PATIENCE, |h| h.notes.iter().any(|n| matches!(n, Note::Broken { .. })));
    let broken_at = h.notes.iter().position(|n| matches!(n, Note::Broken { .. })).unwrap();
    let asked = matches!(h.notes[broken_at - 1], Note::Exited { respawn: true, .. });
    let closed = {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !h.notes.contains(&Note::Closed) && Instant::now() < deadline {
            h.pump(Duration::from_millis(50));
        }
        h.notes.contains(&Note::Closed)
    };
    let running: Vec<u32> =
        h.children.iter().filter(|c| c.wait(Some(Duration::ZERO)).unwrap().is_none()).map(|c| c.pid()).collect();
    assert!(
        !asked && closed && running.is_empty(),
        "the exit that breaks the pool asked for a replacement: {asked}; Closed came: {closed}; \
         workers still running: {running:?}; events: {:?}",
        h.notes
    );
}

// ---------------------------------------------------------------------------
// 5. Closing.

#[test]
fn close_lets_the_workers_finish_every_task_then_they_stop_and_closed_arrives() {
    let mut h = Harness::new(2, WorkerKind::Rust);
    h.submit(1, task(1, "sleep:100"));
    h.submit(2, task(2, "sleep:100"));
    for i in 3..=30 {
        h.submit(i, task(1 + i % 2, echo(i)));
    }
    // Closed before the workers even booted: everything still runs.
    assert_eq!(h.pool().close(false).unwrap(), Vec::<u64>::new());
    assert!(h.pool().submit(task(1, echo(31)), &fn_bytes(1)).is_err(), "a closed pool takes no tasks");
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    assert_eq!(h.notes.last(), Some(&Note::Closed), "Closed is the last event");
    assert_eq!(h.ok(1).output, b"slept");
    assert_eq!(h.ok(2).output, b"slept");
    for i in 3..=30 {
        assert_eq!(h.ok(i).output, payload(i));
    }
    let mut exits = h.exits();
    exits.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(
        exits,
        [0, 1]
            .map(|slot| Note::Exited { slot, exitcode: 0, cause: Cause::Stopped, respawn: false })
            .iter()
            .collect::<Vec<_>>()
    );
    for slot in 0..2 {
        assert_eq!(h.pool().board().view(slot).unwrap().state, WorkerState::Stopped);
    }
    assert!(!h.pump(Duration::from_millis(200)), "no event after Closed: {:?}", h.notes);
}

#[test]
fn close_with_cancel_pending_withdraws_the_unsent_tasks_and_finishes_the_sent_ones() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);
    // Function 1 is not measured: one task in the worker, the rest wait.
    h.submit(1, task(1, "sleep:200"));
    for i in 2..=5 {
        h.submit(i, task(1, echo(i)));
    }
    h.wait_for("task 1 to run", PATIENCE, |h| h.pool().stats().unwrap().workers[0].running == 1);
    let mut withdrawn = h.pool().close(true).unwrap();
    withdrawn.sort_unstable();
    assert_eq!(withdrawn, [2, 3, 4, 5]);
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    assert_eq!(h.ok(1).output, b"slept");
    assert_eq!(h.outcomes.len(), 1, "withdrawn tasks have no event: {:?}", h.notes);
    assert_eq!(h.exits(), [&Note::Exited { slot: 0, exitcode: 0, cause: Cause::Stopped, respawn: false }]);
}

#[test]
fn a_worker_dying_during_close_leaves_no_submitted_task_without_an_outcome() {
    let mut h = Harness::new(1, WorkerKind::Rust);
    h.wait_ready(0);
    // Function 1 is not measured: 2 and 3 wait in the pool while 1 runs.
    h.submit(1, task(1, "die"));
    h.submit(2, task(1, echo(2)));
    h.submit(3, task(1, echo(3)));
    h.pool().close(false).unwrap();
    h.wait_for("Closed", PATIENCE, |h| h.notes.contains(&Note::Closed));
    assert!(matches!(h.outcomes.get(&1), Some(Outcome::Lost { cause: Cause::Crashed, .. })));
    assert!(
        h.outcomes.contains_key(&2) && h.outcomes.contains_key(&3),
        "Closed came while tasks 2 and 3 were accepted and never ended: {:?}",
        h.notes
    );
}
