//! A pool of worker threads taking jobs from one channel, with per-job
//! timeouts.
//!
//! The core knows nothing of Python: a job is any `Send` value and the pool
//! is given a `runner` that executes it. The runner also gets a `next`
//! function that returns a further job only if one is already waiting, so a
//! runner that must take a lock to run jobs (the Python bindings take the
//! GIL) can run a burst of them under one acquisition. Threads start on
//! demand, up to `max_threads`, when a job arrives and no thread is idle.
//!
//! A job queued with `execute_with_timeout` carries a timeout and a token:
//! when a thread takes the job (the runner's first job, or one `next`
//! hands out) its deadline is armed; when the job ends (the next `next`, or
//! the runner's return) it is disarmed. One timer thread per pool
//! (`{name}-timeouts`, started with the first timed job) sleeps until the
//! earliest armed deadline and hands the token of each job still running
//! past it to `on_expire` (the bindings fail its future with
//! `TimeoutError`; the job runs on, as a thread cannot be stopped). A job
//! that ends disarms in O(log n) and drops its token at once.
//!
//! `shutdown` hands the threads back to be joined; `wait_threads` waits for
//! them with a deadline first, because `JoinHandle::join` cannot be cut
//! short: a caller that must stay interruptible (the bindings check for
//! Ctrl-C between slices) waits there, then joins threads already at their end.
//! The timer thread ends once the pool is shut down (or dropped) and its
//! last worker thread has ended; `take_timer` hands it back to be joined.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};

use crate::error::{CoreError, Result};

/// Runs one job; `next()` yields further jobs already queued, without waiting.
pub type Runner<J> = dyn Fn(J, &dyn Fn() -> Option<J>) + Send + Sync;

/// Receives the token of a job still running past its timeout (on the
/// pool's timer thread).
pub type OnExpire<T> = dyn Fn(T) + Send + Sync;

/// Runs a pool thread's whole life (`body`) inside it. The bindings attach
/// the thread to Python once there and detach while it waits: the thread
/// keeps one Python thread state for its life (its thread-locals, what its
/// initializer set), and each burst of jobs only takes the GIL. Without a
/// scope, each `runner` call attached anew: Python made and freed a thread
/// state (and its frame stack, an mmap) per burst, ~half the time of a
/// submit+result round trip, and forgot the thread's locals in between.
pub type ThreadScope = dyn Fn(&mut (dyn FnMut() + Send)) + Send + Sync;

/// Numbers of one worker thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadStats {
    /// Jobs it ran.
    pub done: u64,
    /// Nanoseconds it spent running jobs.
    pub busy_ns: u64,
    /// Nanoseconds since it started.
    pub age_ns: u64,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    busy_ns: AtomicU64,
}

struct Worker {
    handle: JoinHandle<()>,
    counters: Arc<Counters>,
    started: Instant,
}

/// A queued job and, if it has one, its timeout and token.
struct Envelope<J, T> {
    job: J,
    timeout: Option<(Duration, T)>,
}

/// An armed deadline: when it passes, and a sequence number that makes
/// the key unique.
type DeadlineKey = (Instant, u64);

/// The deadlines of the jobs running now.
struct Timers<T> {
    armed: BTreeMap<DeadlineKey, T>,
    seq: u64,
    /// The timer thread must end (the pool is shut down and idle for good).
    stop: bool,
}

struct Shared<J, T> {
    rx: Receiver<Envelope<J, T>>,
    runner: Arc<Runner<J>>,
    on_expire: Option<Arc<OnExpire<T>>>,
    /// Around each thread's life (see `ThreadScope`).
    scope: Option<Arc<ThreadScope>>,
    idle: AtomicUsize,
    queued: AtomicUsize,
    /// Threads started and not yet at their end (counted down by
    /// `ExitGuard`, so a thread whose runner panicked counts as ended).
    live: Mutex<usize>,
    /// Notified each time `live` goes down.
    exited: Condvar,
    /// Set by `shutdown` or drop: no thread starts any more.
    closed: AtomicBool,
    timers: Mutex<Timers<T>>,
    /// Notified when a deadline is armed earlier than the others, or at stop.
    timer_wake: Condvar,
}

/// A poisoned mutex is still correct here: every critical section of this
/// module leaves its data consistent before anything in it can panic.
fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<J, T> Shared<J, T> {
    /// Arms a deadline `timeout` from now.
    fn arm(&self, timeout: Duration, token: T) -> DeadlineKey {
        let mut t = lock(&self.timers);
        t.seq += 1;
        let key = (Instant::now() + timeout, t.seq);
        let earliest = t.armed.keys().next().is_none_or(|first| key < *first);
        t.armed.insert(key, token);
        drop(t);
        if earliest {
            self.timer_wake.notify_all();
        }
        key
    }

    /// Disarms a deadline (a no-op if it has expired); its token is
    /// dropped outside the lock.
    fn disarm(&self, key: DeadlineKey) {
        let token = lock(&self.timers).armed.remove(&key);
        drop(token);
    }

    /// Ends the timer thread if the pool is closed and no thread is left.
    fn stop_timer_if_done(&self, live: usize) {
        if live == 0 && self.closed.load(Ordering::SeqCst) {
            lock(&self.timers).stop = true;
            self.timer_wake.notify_all();
        }
    }
}

/// Counts its thread out of `Shared::live` when the thread's function ends,
/// by return or by panic.
struct ExitGuard<'a, J, T> {
    shared: &'a Shared<J, T>,
}

impl<J, T> Drop for ExitGuard<'_, J, T> {
    fn drop(&mut self) {
        // Only this guard and `grow` write the counter, and neither panics
        // while holding it.
        let mut live = lock(&self.shared.live);
        *live = live.saturating_sub(1);
        let now = *live;
        drop(live);
        self.shared.exited.notify_all();
        self.shared.stop_timer_if_done(now);
    }
}

/// The pool. Dropping it without `shutdown` lets the threads finish the
/// queued jobs and exit, without waiting for them. `T` is the token type
/// of timed jobs (see the module).
pub struct ThreadPool<J: Send + 'static, T: Send + 'static = ()> {
    tx: Mutex<Option<Sender<Envelope<J, T>>>>,
    shared: Arc<Shared<J, T>>,
    workers: Mutex<Vec<Worker>>,
    timer: Mutex<Option<JoinHandle<()>>>,
    max_threads: usize,
    name: String,
}

impl<J: Send + 'static, T: Send + 'static> std::fmt::Debug for ThreadPool<J, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("name", &self.name).field("max_threads", &self.max_threads).finish()
    }
}

impl<J: Send + 'static> ThreadPool<J> {
    /// A pool of up to `max_threads` threads named `name_N`, running jobs
    /// with `runner`; its jobs have no timeout.
    pub fn new(max_threads: usize, name: &str, runner: Arc<Runner<J>>) -> Result<Self> {
        ThreadPool::build(max_threads, name, runner, None, None)
    }
}

impl<J: Send + 'static, T: Send + 'static> ThreadPool<J, T> {
    /// As `new`, and jobs queued with `execute_with_timeout` have their
    /// token handed to `on_expire` once they run past their timeout; each
    /// thread runs inside `scope` if given.
    pub fn with_timeouts(
        max_threads: usize,
        name: &str,
        runner: Arc<Runner<J>>,
        on_expire: Arc<OnExpire<T>>,
        scope: Option<Arc<ThreadScope>>,
    ) -> Result<Self> {
        ThreadPool::build(max_threads, name, runner, Some(on_expire), scope)
    }

    fn build(
        max_threads: usize,
        name: &str,
        runner: Arc<Runner<J>>,
        on_expire: Option<Arc<OnExpire<T>>>,
        scope: Option<Arc<ThreadScope>>,
    ) -> Result<Self> {
        if max_threads == 0 {
            return Err(CoreError::Invalid("max_workers must be greater than 0".into()));
        }
        let (tx, rx) = unbounded();
        Ok(ThreadPool {
            tx: Mutex::new(Some(tx)),
            shared: Arc::new(Shared {
                rx,
                runner,
                on_expire,
                scope,
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                live: Mutex::new(0),
                exited: Condvar::new(),
                closed: AtomicBool::new(false),
                timers: Mutex::new(Timers { armed: BTreeMap::new(), seq: 0, stop: false }),
                timer_wake: Condvar::new(),
            }),
            workers: Mutex::new(Vec::new()),
            timer: Mutex::new(None),
            max_threads,
            name: name.to_string(),
        })
    }

    /// Queues a job, starting a thread if none is idle. Fails after `shutdown`.
    pub fn execute(&self, job: J) -> Result<()> {
        self.send(Envelope { job, timeout: None })
    }

    /// Queues a job with a timeout counted from when a thread takes it;
    /// past it, `token` goes to the pool's `on_expire`. `Invalid` for a
    /// pool made without `with_timeouts`.
    pub fn execute_with_timeout(&self, job: J, timeout: Duration, token: T) -> Result<()> {
        if self.shared.on_expire.is_none() {
            return Err(CoreError::Invalid("this thread pool has no timeouts".into()));
        }
        self.start_timer()?;
        self.send(Envelope { job, timeout: Some((timeout, token)) })
    }

    fn send(&self, envelope: Envelope<J, T>) -> Result<()> {
        {
            let tx = self.tx.lock().map_err(|_| CoreError::Invalid("thread pool poisoned".into()))?;
            let tx =
                tx.as_ref().ok_or_else(|| CoreError::Closed("cannot schedule new futures after shutdown".into()))?;
            self.shared.queued.fetch_add(1, Ordering::SeqCst);
            tx.send(envelope).map_err(|_| CoreError::Closed("the pool's threads are gone".into()))?;
        }
        if self.shared.idle.load(Ordering::SeqCst) < self.shared.queued.load(Ordering::SeqCst) {
            self.grow()?;
        }
        Ok(())
    }

    /// Starts the timer thread unless it runs.
    fn start_timer(&self) -> Result<()> {
        let mut timer = lock(&self.timer);
        if timer.is_some() || self.shared.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(on_expire) = self.shared.on_expire.clone() else { return Ok(()) };
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{}-timeouts", self.name))
            .spawn(move || run_timer(&shared, &*on_expire))
            .map_err(|e| CoreError::os("spawn a thread pool's timer thread", e))?;
        *timer = Some(handle);
        Ok(())
    }

    fn grow(&self) -> Result<()> {
        let mut workers = self.workers.lock().map_err(|_| CoreError::Invalid("thread pool poisoned".into()))?;
        if workers.len() >= self.max_threads || self.shared.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        *lock(&self.shared.live) += 1;
        let spawned = std::thread::Builder::new().name(format!("{}_{}", self.name, workers.len())).spawn(move || {
            let _exit = ExitGuard { shared: &*shared };
            match &shared.scope {
                Some(scope) => scope(&mut || work(&shared, &c)),
                None => work(&shared, &c),
            }
        });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                let mut live = lock(&self.shared.live);
                *live = live.saturating_sub(1);
                return Err(CoreError::os("spawn a pool thread", e));
            }
        };
        workers.push(Worker { handle, counters, started: Instant::now() });
        Ok(())
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.workers.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// Jobs queued and not yet taken by a thread.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// Deadlines armed now (jobs with a timeout that are running).
    pub fn armed(&self) -> usize {
        lock(&self.shared.timers).armed.len()
    }

    /// Per-thread numbers.
    pub fn stats(&self) -> Vec<ThreadStats> {
        self.workers
            .lock()
            .map(|ws| {
                ws.iter()
                    .map(|w| ThreadStats {
                        done: w.counters.done.load(Ordering::SeqCst),
                        busy_ns: w.counters.busy_ns.load(Ordering::SeqCst),
                        age_ns: w.started.elapsed().as_nanos() as u64,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes every job still queued (for `cancel_futures`); their timeouts
    /// were never armed.
    pub fn drain(&self) -> Vec<J> {
        let mut out = Vec::new();
        while let Ok(e) = self.shared.rx.try_recv() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            out.push(e.job);
        }
        out
    }

    /// Accepts no more jobs; the threads leave once the queue is empty.
    /// Returns the threads to join (the caller joins them with whatever
    /// lock it must not hold while waiting released).
    pub fn shutdown(&self) -> Vec<JoinHandle<()>> {
        self.close();
        self.workers.lock().map(|mut ws| ws.drain(..).map(|w| w.handle).collect()).unwrap_or_default()
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let live = *lock(&self.shared.live);
        self.shared.stop_timer_if_done(live);
    }

    /// The timer thread, to join once `wait_threads(0, ..)` returned after
    /// `shutdown` (it then ends at once). None if it never started or was
    /// taken.
    pub fn take_timer(&self) -> Option<JoinHandle<()>> {
        lock(&self.timer).take()
    }

    /// Waits until at most `at_most` of the pool's threads are still running
    /// (after `shutdown` they can only end; a caller that is itself one of
    /// them passes 1). `CoreError::Timeout` if `until` passes first. Then
    /// joining the handles `shutdown` returned does not block on a job.
    pub fn wait_threads(&self, at_most: usize, until: Option<Instant>) -> Result<()> {
        let mut live = lock(&self.shared.live);
        while *live > at_most {
            live = match until {
                None => self.shared.exited.wait(live).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(CoreError::Timeout);
                    }
                    self.shared.exited.wait_timeout(live, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
        Ok(())
    }
}

impl<J: Send + 'static, T: Send + 'static> Drop for ThreadPool<J, T> {
    fn drop(&mut self) {
        // The threads finish the queued jobs; the timer serves them, then ends.
        self.close();
    }
}

fn work<J: Send + 'static, T: Send + 'static>(shared: &Shared<J, T>, counters: &Counters) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let envelope = shared.rx.recv();
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        let Ok(Envelope { job, timeout }) = envelope else { return };
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        let t0 = Instant::now();
        let ran = AtomicU64::new(1);
        // The deadline of the job running now, if it has one.
        let armed: Cell<Option<DeadlineKey>> = Cell::new(timeout.map(|(d, token)| shared.arm(d, token)));
        let next = || {
            if let Some(key) = armed.take() {
                shared.disarm(key);
            }
            match shared.rx.try_recv() {
                Ok(Envelope { job, timeout }) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    ran.fetch_add(1, Ordering::Relaxed);
                    armed.set(timeout.map(|(d, token)| shared.arm(d, token)));
                    Some(job)
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
            }
        };
        (shared.runner)(job, &next);
        if let Some(key) = armed.take() {
            shared.disarm(key);
        }
        counters.done.fetch_add(ran.load(Ordering::Relaxed), Ordering::SeqCst);
        counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }
}

/// The timer thread: hands the tokens of expired deadlines to `on_expire`
/// (outside the lock), sleeps until the earliest one otherwise.
fn run_timer<J, T>(shared: &Shared<J, T>, on_expire: &OnExpire<T>) {
    let mut t = lock(&shared.timers);
    loop {
        if t.stop {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(entry) = t.armed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            expired.push(entry.remove());
        }
        if !expired.is_empty() {
            drop(t);
            for token in expired {
                on_expire(token);
            }
            t = lock(&shared.timers);
            continue;
        }
        t = match t.armed.keys().next() {
            None => shared.timer_wake.wait(t).unwrap_or_else(PoisonError::into_inner),
            Some(&(when, _)) => {
                shared
                    .timer_wake
                    .wait_timeout(t, when.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

/// A flag one thread sleeps on until another sets it (once): what a thread
/// blocked on a job's result waits on. A pool thread that ends a job sets
/// the flags of that job's waiters once it has let go of the lock it runs
/// jobs under (the GIL, in the bindings), so a waiter wakes to a free lock
/// instead of waking, finding it held and sleeping again.
#[derive(Debug, Default)]
pub struct Wakeup {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Wakeup {
    /// A flag not set.
    pub fn new() -> Self {
        Wakeup::default()
    }

    /// Sets the flag and wakes its sleeper.
    pub fn wake(&self) {
        *lock(&self.set) = true;
        self.cv.notify_all();
    }

    /// Sleeps until the flag is set (true) or `until` passes (false).
    pub fn wait_until(&self, until: Instant) -> bool {
        let mut set = lock(&self.set);
        while !*set {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = self.cv.wait_timeout(set, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[test]
    fn runs_every_job_and_starts_threads_on_demand() {
        let sum = Arc::new(AtomicU32::new(0));
        let s = sum.clone();
        let runner: Arc<Runner<u32>> = Arc::new(move |j, next| {
            s.fetch_add(j, Ordering::SeqCst);
            while let Some(j) = next() {
                s.fetch_add(j, Ordering::SeqCst);
            }
        });
        let pool = ThreadPool::new(4, "t", runner).unwrap();
        for i in 1..=100 {
            pool.execute(i).unwrap();
        }
        for h in pool.shutdown() {
            h.join().unwrap();
        }
        assert_eq!(sum.load(Ordering::SeqCst), 5050);
        assert!(pool.execute(1).is_err(), "closed");
    }

    #[test]
    fn each_thread_runs_its_whole_life_once_inside_the_scope() {
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        let scopes = Arc::new(AtomicU32::new(0));
        let s = scopes.clone();
        let scope: Arc<ThreadScope> = Arc::new(move |body| {
            s.fetch_add(1, Ordering::SeqCst);
            body();
        });
        let runner: Arc<Runner<u32>> = Arc::new(move |j, _next| {
            let _ = tx.send(j);
        });
        let on_expire: Arc<OnExpire<()>> = Arc::new(|_| {});
        let pool = ThreadPool::with_timeouts(1, "t", runner, on_expire, Some(scope)).unwrap();
        // One job at a time: each is a burst of its own, all on one thread.
        for i in 0..20 {
            pool.execute(i).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(i));
        }
        for h in pool.shutdown() {
            h.join().unwrap();
        }
        assert_eq!(scopes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wakeup_wakes_its_sleeper_once_set_and_times_out_otherwise() {
        let w = Arc::new(Wakeup::new());
        assert!(!w.wait_until(Instant::now() + Duration::from_millis(20)));
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait_until(Instant::now() + Duration::from_secs(30)));
        w.wake();
        assert!(t.join().unwrap());
        assert!(w.wait_until(Instant::now()), "stays set");
    }

    #[test]
    fn slow_jobs_run_in_parallel_up_to_the_limit() {
        let runner: Arc<Runner<u64>> = Arc::new(|ms, _next| std::thread::sleep(Duration::from_millis(ms)));
        let pool = ThreadPool::new(8, "t", runner).unwrap();
        let t0 = Instant::now();
        for _ in 0..8 {
            pool.execute(100).unwrap();
        }
        for h in pool.shutdown() {
            h.join().unwrap();
        }
        assert!(t0.elapsed() < Duration::from_millis(600), "{:?}", t0.elapsed());
        assert!(ThreadPool::<u64>::new(0, "t", Arc::new(|_, _| {})).is_err());
    }

    #[test]
    fn wait_threads_times_out_while_a_job_runs_and_returns_once_threads_ended() {
        let gate = Arc::new(Mutex::new(()));
        let g = gate.clone();
        let held = gate.lock().unwrap();
        let runner: Arc<Runner<u32>> = Arc::new(move |_, _| drop(g.lock()));
        let pool = ThreadPool::new(2, "t", runner).unwrap();
        pool.execute(1).unwrap();
        pool.execute(2).unwrap();
        let handles = pool.shutdown();
        assert_eq!(handles.len(), 2);
        let t0 = Instant::now();
        let r = pool.wait_threads(0, Some(Instant::now() + Duration::from_millis(100)));
        assert!(matches!(r, Err(CoreError::Timeout)), "{r:?}");
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(pool.wait_threads(2, Some(Instant::now())).is_ok(), "two threads may still run");
        drop(held);
        pool.wait_threads(0, Some(Instant::now() + Duration::from_secs(10))).unwrap();
        for h in handles {
            assert!(h.is_finished() || h.join().is_ok());
        }
    }

    #[test]
    fn a_panicking_job_counts_its_thread_as_ended() {
        let runner: Arc<Runner<u32>> = Arc::new(|_, _| panic!("job panicked"));
        let pool = ThreadPool::new(1, "t", runner).unwrap();
        pool.execute(1).unwrap();
        let handles = pool.shutdown();
        pool.wait_threads(0, Some(Instant::now() + Duration::from_secs(10))).unwrap();
        for h in handles {
            assert!(h.join().is_err());
        }
    }

    #[test]
    fn drain_takes_queued_jobs() {
        let gate = Arc::new(Mutex::new(()));
        let g = gate.clone();
        let held = gate.lock().unwrap();
        let runner: Arc<Runner<u32>> = Arc::new(move |_, _| drop(g.lock()));
        let pool = ThreadPool::new(1, "t", runner).unwrap();
        for i in 0..5 {
            pool.execute(i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let left = pool.drain();
        assert_eq!(left.len(), 4);
        drop(held);
        for h in pool.shutdown() {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_job_past_its_timeout_hands_its_token_to_on_expire_and_runs_on() {
        let (etx, erx) = crossbeam_channel::unbounded::<u32>();
        let gate = Arc::new(Mutex::new(()));
        let g = gate.clone();
        let held = gate.lock().unwrap();
        let finished = Arc::new(AtomicU32::new(0));
        let f = finished.clone();
        let runner: Arc<Runner<u32>> = Arc::new(move |j, next| {
            let mut j = Some(j);
            while let Some(job) = j {
                if job == 1 {
                    drop(g.lock());
                }
                f.fetch_add(1, Ordering::SeqCst);
                j = next();
            }
        });
        let on_expire: Arc<OnExpire<u32>> = Arc::new(move |token| {
            let _ = etx.send(token);
        });
        let pool = ThreadPool::with_timeouts(2, "t", runner, on_expire, None).unwrap();
        pool.execute_with_timeout(1, Duration::from_millis(50), 10).unwrap();
        pool.execute_with_timeout(2, Duration::from_secs(3600), 20).unwrap();
        // Job 1 blocks past its 50 ms: its token comes; job 2 ended long
        // before its deadline: disarmed, its token never comes.
        assert_eq!(erx.recv_timeout(Duration::from_secs(10)), Ok(10));
        assert_eq!(finished.load(Ordering::SeqCst), 1, "job 1 still runs");
        drop(held);
        let handles = pool.shutdown();
        pool.wait_threads(0, Some(Instant::now() + Duration::from_secs(10))).unwrap();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        assert_eq!(pool.armed(), 0);
        pool.take_timer().expect("the timer ran").join().unwrap();
        assert!(erx.try_recv().is_err(), "no token of a job that ended in time");
    }

    #[test]
    fn deadlines_of_a_burst_are_armed_per_job_and_a_pool_without_timeouts_refuses_them() {
        let (etx, erx) = crossbeam_channel::unbounded::<u64>();
        // One thread: jobs queued behind a slow one run in its burst; each
        // one's timeout counts from when it is handed out, not from submit.
        let runner: Arc<Runner<u64>> = Arc::new(|ms, next| {
            std::thread::sleep(Duration::from_millis(ms));
            while let Some(ms) = next() {
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
        let on_expire: Arc<OnExpire<u64>> = Arc::new(move |token| {
            let _ = etx.send(token);
        });
        let pool = ThreadPool::with_timeouts(1, "t", runner, on_expire, None).unwrap();
        pool.execute(300).unwrap();
        for i in 0..5 {
            pool.execute_with_timeout(0, Duration::from_millis(200), i).unwrap();
        }
        pool.execute_with_timeout(400, Duration::from_millis(100), 99).unwrap();
        assert_eq!(erx.recv_timeout(Duration::from_secs(10)), Ok(99));
        for h in pool.shutdown() {
            h.join().unwrap();
        }
        pool.take_timer().expect("the timer ran").join().unwrap();
        assert!(erx.try_recv().is_err(), "the quick jobs waited in the queue past 200 ms, yet did not expire");
        let plain = ThreadPool::new(1, "t", Arc::new(|_: u32, _: &dyn Fn() -> Option<u32>| {})).unwrap();
        assert!(matches!(plain.execute_with_timeout(1, Duration::from_secs(1), ()), Err(CoreError::Invalid(_))));
    }
}
