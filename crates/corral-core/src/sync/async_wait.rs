//! Waiting for a lock, semaphore, event or queue without a thread per waiter.
//!
//! One hub thread per process sleeps in `futex_waitv` on the futex words of
//! every primitive some coroutine waits for (up to 127 at once, and a word
//! of its own that is bumped when the set changes). When a word no longer
//! holds the value its waiter saw, the hub posts the waiter's token to the
//! waiter's `Notifier`: an eventfd an event loop watches, and the list of
//! tokens ready. The coroutine then retries the operation without blocking
//! and, if it lost the race, watches again.
//!
//! While watching, the hub counts as a sleeper of the primitive (so that a
//! release issues the futex wake), and after a word changes it passes one
//! wake on to the word: a release that woke the hub instead of a blocked
//! thread is then not lost if the coroutine no longer wants the primitive.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};
use rustix::thread::futex;

use super::{condition::Condition, event::Event, lock::Lock, rlock::RLock, semaphore::Semaphore};
use crate::channel::queue::SharedQueue;
use crate::error::{CoreError, Result};
use crate::sys::futex as fx;
use crate::sys::singleton::{PerProcess, Service};

/// Most words the hub waits on at once (futex_waitv takes 128, one is its own).
const MAX_WAITS: usize = 127;
/// With more watches than that, the hub wakes this often to check the rest.
const OVERFLOW_POLL: Duration = Duration::from_millis(5);

/// A primitive whose availability shows in a futex word.
pub trait WatchTarget: Send + Sync + 'static {
    /// The word that changes when the primitive may have become available,
    /// and the counter of its sleepers.
    fn words(&self) -> (&AtomicU32, &AtomicU32);
}

impl WatchTarget for Lock {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let w = self.word();
        (&w.owner, &w.waiters)
    }
}

impl WatchTarget for RLock {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let w = self.word();
        (&w.owner, &w.waiters)
    }
}

impl WatchTarget for Semaphore {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        self.words()
    }
}

impl WatchTarget for Event {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        self.words()
    }
}

/// A waiter's slot of a condition (`Condition.wait_async`): notify marks
/// it SIGNALED and always issues a futex wake, so the counter is unused.
#[derive(Debug)]
pub struct CondSlot {
    cond: Condition,
    word_index: usize,
    unused_sleepers: AtomicU32,
}

impl CondSlot {
    /// Slot `slot` of `cond`; an error if out of range.
    pub fn new(cond: Condition, slot: usize) -> Result<Self> {
        if cond.slot_word(slot).is_none() {
            return Err(CoreError::Invalid(format!("no condition slot {slot}")));
        }
        Ok(CondSlot { cond, word_index: slot, unused_sleepers: AtomicU32::new(0) })
    }
}

impl WatchTarget for CondSlot {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        // The index was checked in `new` and a block never shrinks.
        let word = self.cond.slot_word(self.word_index).unwrap_or(&self.unused_sleepers);
        (word, &self.unused_sleepers)
    }
}

/// A queue awaited for data (`aget`): its data signal.
#[derive(Debug, Clone)]
pub struct QueueData(pub Arc<SharedQueue>);

/// A queue awaited for room (`aput`): its space signal.
#[derive(Debug, Clone)]
pub struct QueueSpace(pub Arc<SharedQueue>);

impl WatchTarget for QueueData {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let s = self.0.data_signal();
        (&s.seq, &s.sleepers)
    }
}

impl WatchTarget for QueueSpace {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let s = self.0.space_signal();
        (&s.seq, &s.sleepers)
    }
}

/// Where the hub reports: an eventfd and the tokens that are ready.
#[derive(Debug)]
pub struct Notifier {
    efd: OwnedFd,
    ready: Mutex<Vec<u64>>,
}

impl Notifier {
    /// A new notifier with its eventfd (non-blocking).
    pub fn new() -> Result<Arc<Self>> {
        let efd =
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| CoreError::os("eventfd", e))?;
        Ok(Arc::new(Notifier { efd, ready: Mutex::new(Vec::new()) }))
    }

    /// The eventfd: readable when tokens are ready.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }

    /// Takes the ready tokens (and clears the eventfd).
    pub fn take(&self) -> Vec<u64> {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.efd, &mut buf);
        self.ready.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    fn post(&self, token: u64) {
        if let Ok(mut r) = self.ready.lock() {
            r.push(token);
        }
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
    }
}

struct Watch {
    id: u64,
    target: Box<dyn WatchTarget>,
    expected: u32,
    token: u64,
    notifier: Arc<Notifier>,
}

/// The hub's state, shared by its callers and its thread.
struct Hub {
    watches: Mutex<Vec<Watch>>,
    control: AtomicU32,
    next_id: AtomicU64,
}

/// This process's hub, whose `corral-async-wait` thread runs while the
/// process lives. A forked child starts its own (`PerProcess`): the parent's
/// thread is not there to serve the watches it inherited.
struct HubService {
    hub: Arc<Hub>,
}

impl Service for HubService {}

static HUB: PerProcess<HubService> = PerProcess::new("async hub");

fn start_hub(_pid: u32) -> Result<HubService> {
    let hub = Arc::new(Hub { watches: Mutex::new(Vec::new()), control: AtomicU32::new(0), next_id: AtomicU64::new(1) });
    let run = hub.clone();
    std::thread::Builder::new()
        .name("corral-async-wait".into())
        .spawn(move || run.run())
        .map_err(|e| CoreError::os("spawn the async wait thread", e))?;
    Ok(HubService { hub })
}

/// This process's hub, started on first use.
fn hub() -> Result<Arc<Hub>> {
    Ok(HUB.get_or_start(start_hub)?.hub.clone())
}

impl Hub {
    fn poke(&self) {
        self.control.fetch_add(1, Ordering::SeqCst);
        fx::wake_all(&self.control);
    }

    fn run(self: Arc<Self>) {
        loop {
            let seq = self.control.load(Ordering::SeqCst);
            let (waits, overflow) = {
                let Ok(ws) = self.watches.lock() else { return };
                let mut waits = Vec::with_capacity(ws.len().min(MAX_WAITS) + 1);
                waits.push(wait_on(&self.control, seq));
                for w in ws.iter().take(MAX_WAITS) {
                    waits.push(wait_on(w.target.words().0, w.expected));
                }
                (waits, ws.len() > MAX_WAITS)
            };
            let timeout = overflow.then(|| futex::Timespec { tv_sec: 0, tv_nsec: OVERFLOW_POLL.as_nanos() as i64 });
            // The kernel reads each word once when the call starts (EFAULT if
            // a watch removed meanwhile had its memory unmapped); this thread
            // touches a watched word only through a `Watch` it holds.
            let r =
                futex::waitv(&waits, futex::WaitvFlags::empty(), timeout.as_ref(), rustix::time::ClockId::Monotonic);
            if let Err(e) = r {
                if e == rustix::io::Errno::NOSYS {
                    // No futex_waitv (Linux < 5.16): poll instead.
                    std::thread::sleep(OVERFLOW_POLL);
                }
            }
            self.fire_changed();
        }
    }

    /// Posts every watch whose word changed, and removes it.
    fn fire_changed(&self) {
        let fired: Vec<Watch> = {
            let Ok(mut ws) = self.watches.lock() else { return };
            let (gone, kept): (Vec<Watch>, Vec<Watch>) =
                ws.drain(..).partition(|w| w.target.words().0.load(Ordering::SeqCst) != w.expected);
            *ws = kept;
            gone
        };
        for w in fired {
            let (word, sleepers) = w.target.words();
            sleepers.fetch_sub(1, Ordering::SeqCst);
            // Pass the wake on, in case the release meant for a blocked
            // thread woke only this hub.
            fx::wake(word, 1);
            w.notifier.post(w.token);
        }
    }
}

fn wait_on(word: &AtomicU32, expected: u32) -> futex::Wait {
    let mut w = futex::Wait::new();
    w.val = u64::from(expected);
    w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
    w.flags = futex::WaitFlags::SIZE_U32;
    w
}

/// Watches `target` until its word differs from `expected`, then posts
/// `token` to `notifier`. Returns the watch's id (for `unwatch`). A word
/// that already differs is posted at once.
pub fn watch(target: Box<dyn WatchTarget>, expected: u32, notifier: &Arc<Notifier>, token: u64) -> Result<u64> {
    let hub = hub()?;
    let id = hub.next_id.fetch_add(1, Ordering::SeqCst);
    let (word, sleepers) = target.words();
    sleepers.fetch_add(1, Ordering::SeqCst);
    if word.load(Ordering::SeqCst) != expected {
        sleepers.fetch_sub(1, Ordering::SeqCst);
        notifier.post(token);
        return Ok(id);
    }
    hub.watches.lock().map_err(|_| CoreError::Invalid("async hub poisoned".into()))?.push(Watch {
        id,
        target,
        expected,
        token,
        notifier: notifier.clone(),
    });
    hub.poke();
    Ok(id)
}

/// Stops watch `id` (a cancelled or timed-out coroutine); true if it was
/// still waiting. Its target is dropped here, after the hub's next look.
pub fn unwatch(id: u64) -> bool {
    // No hub started in this process: nothing of this process to stop.
    let Some(hub) = HUB.get().map(|s| s.hub.clone()) else { return false };
    let removed = hub.watches.lock().ok().and_then(|mut ws| {
        let i = ws.iter().position(|w| w.id == id)?;
        Some(ws.swap_remove(i))
    });
    match removed {
        Some(w) => {
            w.target.words().1.fetch_sub(1, Ordering::SeqCst);
            hub.poke();
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_token(n: &Notifier, token: u64) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if n.take().contains(&token) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_release_reaches_the_notifier_without_a_thread_per_waiter() {
        let n = Notifier::new().unwrap();
        let locks: Vec<Lock> = (0..10).map(|_| Lock::new().unwrap()).collect();
        for (i, l) in locks.iter().enumerate() {
            assert!(l.try_acquire());
            let owner = l.word().owner.load(Ordering::SeqCst);
            watch(Box::new(l.clone()), owner, &n, i as u64).unwrap();
        }
        locks[7].release();
        assert!(wait_token(&n, 7));
        assert!(n.take().is_empty(), "only the released lock fired");
        for (i, l) in locks.iter().enumerate() {
            if i != 7 {
                assert!(unwatch_all_for(l));
                l.release();
            }
        }
    }

    fn unwatch_all_for(l: &Lock) -> bool {
        let Ok(h) = hub() else { return false };
        let ids: Vec<u64> = h
            .watches
            .lock()
            .unwrap()
            .iter()
            .filter(|w| std::ptr::eq(w.target.words().0, &l.word().owner))
            .map(|w| w.id)
            .collect();
        ids.into_iter().all(unwatch)
    }

    #[test]
    fn a_changed_word_fires_at_once_and_unwatch_stops_a_watch() {
        let n = Notifier::new().unwrap();
        let e = Event::new().unwrap();
        let seen = e.words().0.load(Ordering::SeqCst);
        e.set();
        watch(Box::new(e.clone()), seen, &n, 1).unwrap();
        assert!(wait_token(&n, 1));
        let s = Semaphore::new(0, false).unwrap();
        let id = watch(Box::new(s.clone()), 0, &n, 2).unwrap();
        assert!(unwatch(id));
        s.release(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!n.take().contains(&2));
        assert_eq!(s.words().1.load(Ordering::SeqCst), 0, "the sleeper count is restored");
    }
}
