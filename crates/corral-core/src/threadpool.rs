//! A pool of worker threads taking jobs from one channel.
//!
//! The core knows nothing of Python: a job is any `Send` value and the pool
//! is given a `runner` that executes it. The runner also gets a `next`
//! function that returns a further job only if one is already waiting, so a
//! runner that must take a lock to run jobs (the Python bindings take the
//! GIL) can run a burst of them under one acquisition. Threads start on
//! demand, up to `max_threads`, when a job arrives and no thread is idle.
//!
//! `shutdown` hands the threads back to be joined; `wait_threads` waits for
//! them with a deadline first, because `JoinHandle::join` cannot be cut
//! short: a caller that must stay interruptible (the bindings check for
//! Ctrl-C between slices) waits there, then joins threads already at their end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};

use crate::error::{CoreError, Result};

/// Runs one job; `next()` yields further jobs already queued, without waiting.
pub type Runner<J> = dyn Fn(J, &dyn Fn() -> Option<J>) + Send + Sync;

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

struct Shared<J> {
    rx: Receiver<J>,
    runner: Arc<Runner<J>>,
    idle: AtomicUsize,
    queued: AtomicUsize,
    /// Threads started and not yet at their end (counted down by
    /// `ExitGuard`, so a thread whose runner panicked counts as ended).
    live: Mutex<usize>,
    /// Notified each time `live` goes down.
    exited: Condvar,
}

/// Counts its thread out of `Shared::live` when the thread's function ends,
/// by return or by panic.
struct ExitGuard<'a> {
    live: &'a Mutex<usize>,
    exited: &'a Condvar,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        // A poisoned counter is still a correct counter: only this guard
        // and `grow` write it, and neither panics while holding it.
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        *live = live.saturating_sub(1);
        self.exited.notify_all();
    }
}

/// The pool. Dropping it without `shutdown` lets the threads finish the
/// queued jobs and exit, without waiting for them.
pub struct ThreadPool<J: Send + 'static> {
    tx: Mutex<Option<Sender<J>>>,
    shared: Arc<Shared<J>>,
    workers: Mutex<Vec<Worker>>,
    max_threads: usize,
    name: String,
    closed: AtomicBool,
}

impl<J: Send + 'static> std::fmt::Debug for ThreadPool<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("name", &self.name).field("max_threads", &self.max_threads).finish()
    }
}

impl<J: Send + 'static> ThreadPool<J> {
    /// A pool of up to `max_threads` threads named `name_N`, running jobs
    /// with `runner`.
    pub fn new(max_threads: usize, name: &str, runner: Arc<Runner<J>>) -> Result<Self> {
        if max_threads == 0 {
            return Err(CoreError::Invalid("max_workers must be greater than 0".into()));
        }
        let (tx, rx) = unbounded();
        Ok(ThreadPool {
            tx: Mutex::new(Some(tx)),
            shared: Arc::new(Shared {
                rx,
                runner,
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                live: Mutex::new(0),
                exited: Condvar::new(),
            }),
            workers: Mutex::new(Vec::new()),
            max_threads,
            name: name.to_string(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues a job, starting a thread if none is idle. Fails after `shutdown`.
    pub fn execute(&self, job: J) -> Result<()> {
        {
            let tx = self.tx.lock().map_err(|_| CoreError::Invalid("thread pool poisoned".into()))?;
            let tx =
                tx.as_ref().ok_or_else(|| CoreError::Closed("cannot schedule new futures after shutdown".into()))?;
            self.shared.queued.fetch_add(1, Ordering::SeqCst);
            tx.send(job).map_err(|_| CoreError::Closed("the pool's threads are gone".into()))?;
        }
        if self.shared.idle.load(Ordering::SeqCst) < self.shared.queued.load(Ordering::SeqCst) {
            self.grow()?;
        }
        Ok(())
    }

    fn grow(&self) -> Result<()> {
        let mut workers = self.workers.lock().map_err(|_| CoreError::Invalid("thread pool poisoned".into()))?;
        if workers.len() >= self.max_threads || self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        *self.shared.live.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        let spawned = std::thread::Builder::new().name(format!("{}_{}", self.name, workers.len())).spawn(move || {
            let _exit = ExitGuard { live: &shared.live, exited: &shared.exited };
            work(&shared, &c)
        });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                let mut live = self.shared.live.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Takes every job still queued (for `cancel_futures`).
    pub fn drain(&self) -> Vec<J> {
        let mut out = Vec::new();
        while let Ok(j) = self.shared.rx.try_recv() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            out.push(j);
        }
        out
    }

    /// Accepts no more jobs; the threads leave once the queue is empty.
    /// Returns the threads to join (the caller joins them with whatever
    /// lock it must not hold while waiting released).
    pub fn shutdown(&self) -> Vec<JoinHandle<()>> {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        self.workers.lock().map(|mut ws| ws.drain(..).map(|w| w.handle).collect()).unwrap_or_default()
    }

    /// Waits until at most `at_most` of the pool's threads are still running
    /// (after `shutdown` they can only end; a caller that is itself one of
    /// them passes 1). `CoreError::Timeout` if `until` passes first. Then
    /// joining the handles `shutdown` returned does not block on a job.
    pub fn wait_threads(&self, at_most: usize, until: Option<Instant>) -> Result<()> {
        let mut live = self.shared.live.lock().unwrap_or_else(PoisonError::into_inner);
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

fn work<J: Send + 'static>(shared: &Shared<J>, counters: &Counters) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let job = shared.rx.recv();
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        let Ok(job) = job else { return };
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        let t0 = Instant::now();
        let ran = AtomicU64::new(1);
        let next = || match shared.rx.try_recv() {
            Ok(j) => {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
                ran.fetch_add(1, Ordering::Relaxed);
                Some(j)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        };
        (shared.runner)(job, &next);
        counters.done.fetch_add(ran.load(Ordering::Relaxed), Ordering::SeqCst);
        counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
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
}
