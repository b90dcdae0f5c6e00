//! The sync primitives (`corral_core::sync`) used from Rust alone: across
//! threads, and across real processes, including a holder or party killed
//! by SIGKILL.
//!
//! Children are this test binary run again on one `child_*` test (with
//! `--exact`, as `cross_process.rs` does: no `fork` of the multi-threaded
//! test harness); the role and the inherited descriptors come in through
//! the environment, and a `child_*` test without them returns at once.
//! Steps between processes are ordered by the primitives themselves (an
//! `Event` a child sets once it holds a lock, ...), never by sleeps; every
//! wait has a deadline, and every child is killed when its test ends.

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier as StdBarrier};
use std::time::{Duration, Instant};

use common::{child_args, inherited, Proc, PATIENCE};
use corral_core::sync::barrier::{Arrival, Barrier, BarrierError};
use corral_core::sync::condition::Condition;
use corral_core::sync::event::Event;
use corral_core::sync::lock::Lock;
use corral_core::sync::rlock::RLock;
use corral_core::sync::semaphore::Semaphore;
use corral_core::sync::SyncError;

fn soon() -> Option<Instant> {
    Some(Instant::now() + PATIENCE)
}

fn after(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------
// Harness.

fn spawn_child(role: &'static str, fds: &[RawFd]) -> Proc {
    common::spawn_child(role, fds, "")
}

/// In a child started as `role`: its inherited descriptors. None in the
/// ordinary test run, where the `child_*` tests do nothing.
fn child_fds(role: &str) -> Option<Vec<OwnedFd>> {
    let (fds, _) = child_args(role)?;
    Some(fds.into_iter().map(inherited).collect())
}

/// A child that must stay alive until the parent kills it: waits on an
/// event nobody sets, a minute at most.
fn linger() -> ! {
    let never = Event::new().unwrap();
    never.wait(Some(Instant::now() + Duration::from_secs(60)));
    std::process::exit(3)
}

// ---------------------------------------------------------------------------
// 1. Threads.

#[test]
fn lock_excludes_threads_and_an_acquire_times_out_while_held() {
    let lock = Lock::new().unwrap();
    // A read-modify-write that is not atomic: only the lock keeps it exact.
    let counter = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (lock, counter) = (lock.clone(), counter.clone());
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    lock.acquire(soon()).unwrap();
                    let v = counter.load(Ordering::Relaxed);
                    counter.store(v + 1, Ordering::Relaxed);
                    assert!(lock.release());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 8_000);

    assert!(lock.try_acquire());
    assert!(lock.locked());
    assert!(!lock.try_acquire());
    let t0 = Instant::now();
    assert_eq!(lock.acquire(after(60)), Err(SyncError::TimedOut));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    // Any thread may release a Lock.
    let l2 = lock.clone();
    assert!(std::thread::spawn(move || l2.release()).join().unwrap());
    assert!(!lock.release(), "a second release finds it free");
}

#[test]
fn rlock_is_reentrant_and_only_its_owner_thread_releases_it() {
    let r = RLock::new().unwrap();
    r.acquire(soon()).unwrap();
    r.acquire(soon()).unwrap();
    assert_eq!(r.recursion_count(), 2);
    assert!(r.is_owned());
    let r2 = r.clone();
    let other = std::thread::spawn(move || {
        let released = r2.release().is_ok();
        let taken = r2.acquire(after(50));
        (released, taken, r2.is_owned())
    })
    .join()
    .unwrap();
    assert_eq!(other, (false, Err(SyncError::TimedOut), false));
    assert_eq!(r.release_all(), Ok(2));
    assert!(!r.locked());
    // Free now: another thread takes it at once.
    let r3 = r.clone();
    assert!(std::thread::spawn(move || {
        let ok = r3.try_acquire();
        r3.release().unwrap();
        ok
    })
    .join()
    .unwrap());
}

#[test]
fn semaphore_counts_permits_wakes_a_waiter_and_a_bounded_one_refuses_extra_releases() {
    let s = Semaphore::new(2, false).unwrap();
    assert!(s.try_acquire() && s.try_acquire());
    assert!(!s.try_acquire());
    assert_eq!(s.acquire(after(50)), Err(SyncError::TimedOut));
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || s2.acquire(soon()));
    // The waiter either sleeps already or finds the permit at once.
    s.release(1).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(()));
    assert_eq!(s.value(), 0);

    let b = Semaphore::new(1, true).unwrap();
    assert!(b.release(1).is_err(), "a bounded semaphore does not go past its initial value");
    assert!(b.try_acquire());
    b.release(1).unwrap();
    assert_eq!(b.value(), 1);
}

#[test]
fn event_wakes_every_waiter_and_a_set_then_clear_still_counts() {
    let e = Event::new().unwrap();
    assert!(!e.wait(after(30)), "unset: times out");
    let started = Arc::new(StdBarrier::new(4));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (e, started) = (e.clone(), started.clone());
            std::thread::spawn(move || {
                let from = e.state_word();
                started.wait();
                e.wait_from(from, soon())
            })
        })
        .collect();
    started.wait();
    // Set then cleared at once: each waiter's generation moved, so each
    // returns true (threading.Event's promise).
    e.set();
    e.clear();
    for w in waiters {
        assert!(w.join().unwrap());
    }
    assert!(!e.is_set());
}

#[test]
fn condition_wakes_exactly_n_oldest_first_and_a_wait_times_out() {
    let c = Condition::new().unwrap();
    let slot = c.register().unwrap();
    assert!(!c.wait(slot, after(30)).unwrap(), "nobody notified");
    assert_eq!(c.waiters(), 0);

    let first = c.register().unwrap();
    let second = c.register().unwrap();
    let third = c.register().unwrap();
    assert_eq!(c.waiters(), 3);
    assert_eq!(c.notify(2), 2);
    // The two oldest were signalled, the third was not.
    assert!(c.is_signaled(first) && c.is_signaled(second));
    assert!(!c.is_signaled(third));
    let c2 = c.clone();
    let woken = std::thread::spawn(move || (c2.wait(first, soon()).unwrap(), c2.wait(second, soon()).unwrap()));
    assert_eq!(woken.join().unwrap(), (true, true));
    assert!(c.cancel(third), "the third was never notified: cancel takes it back");
    assert_eq!(c.notify(1), 0, "no waiter left");
}

#[test]
fn barrier_rounds_give_distinct_indices_to_threads() {
    const PARTIES: u32 = 4;
    const ROUNDS: usize = 50;
    let b = Barrier::new(PARTIES).unwrap();
    let threads: Vec<_> = (0..PARTIES)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|_| match b.arrive(soon()).unwrap() {
                        Arrival::Last { index } => {
                            b.pass_round().unwrap();
                            index
                        }
                        Arrival::Waiting { index, slot } => {
                            b.wait(slot, soon()).unwrap();
                            index
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for round in 0..ROUNDS {
        let mut got: Vec<u32> = all.iter().map(|v| v[round]).collect();
        got.sort_unstable();
        assert_eq!(got, (0..PARTIES).collect::<Vec<_>>(), "round {round}");
    }
    assert_eq!(b.n_waiting(), 0);
    assert!(!b.broken());
}

#[test]
fn barrier_timeout_breaks_it_abort_and_reset_work_and_a_failed_action_breaks_it() {
    let b = Barrier::new(2).unwrap();
    // A lone waiter: its slice ends (TimedOut keeps the slot), then its
    // deadline passes (expire breaks the barrier).
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!("first of two is not last") };
    assert_eq!(b.n_waiting(), 1);
    assert_eq!(b.wait(slot, after(30)), Err(BarrierError::TimedOut));
    assert_eq!(b.expire(slot), Err(BarrierError::Broken));
    assert!(b.broken());
    assert_eq!(b.n_waiting(), 0);
    assert_eq!(b.arrive(soon()), Err(BarrierError::Broken), "broken until reset");
    b.reset();
    assert!(!b.broken());

    // abort from another thread wakes a waiter with Broken.
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!() };
    let b2 = b.clone();
    std::thread::spawn(move || b2.abort()).join().unwrap();
    assert_eq!(b.wait(slot, soon()), Err(BarrierError::Broken));
    b.reset();

    // reset with a waiter: the waiter gets Broken, the barrier fills anew.
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!() };
    b.reset();
    assert_eq!(b.wait(slot, soon()), Err(BarrierError::Broken));
    assert!(!b.broken());

    // The last party's action failed: fail_round breaks it.
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!() };
    let Arrival::Last { index } = b.arrive(soon()).unwrap() else { panic!() };
    assert_eq!(index, 1);
    // While the action runs, a third arrival must wait.
    assert_eq!(b.try_arrive(), Ok(None));
    b.fail_round();
    assert_eq!(b.wait(slot, soon()), Err(BarrierError::Broken));
    b.reset();

    // An interrupted waiter withdraws: the round needs another party.
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!() };
    b.withdraw(slot);
    assert_eq!(b.n_waiting(), 0);
    assert!(matches!(b.arrive(soon()), Ok(Arrival::Waiting { index: 0, .. })));
    b.abort();
}

#[test]
fn barrier_arrival_waits_for_the_action_then_joins_the_next_round() {
    let b = Barrier::new(2).unwrap();
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!() };
    let Arrival::Last { .. } = b.arrive(soon()).unwrap() else { panic!() };
    let b2 = b.clone();
    let seq = b.seq_word();
    let late = std::thread::spawn(move || b2.arrive(soon()));
    // The late arrival waits on `seq` while the action runs.
    assert_eq!(b.try_arrive(), Ok(None));
    assert_eq!(b.seq_word(), seq);
    b.pass_round().unwrap();
    assert_eq!(b.wait(slot, soon()), Ok(()));
    // It joined the new round as its first party.
    let Ok(Arrival::Waiting { index: 0, slot }) = late.join().unwrap() else { panic!("late arrival") };
    b.withdraw(slot);
}

// ---------------------------------------------------------------------------
// 2. Processes.

#[test]
fn child_lock_hold() {
    let Some(fds) = child_fds("child_lock_hold") else { return };
    let mut fds = fds.into_iter();
    let lock = Lock::open(fds.next().unwrap()).unwrap();
    let held = Event::open(fds.next().unwrap()).unwrap();
    lock.acquire(soon()).unwrap();
    held.set();
    linger();
}

#[test]
fn a_lock_whose_holder_process_was_killed_is_taken_over_once_with_owner_died() {
    let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
    let child = spawn_child("child_lock_hold", &[lock.block().fd().as_raw_fd(), held.block().fd().as_raw_fd()]);
    assert!(held.wait(soon()), "the child did not take the lock");
    assert!(lock.locked());
    assert_eq!(lock.acquire(after(50)), Err(SyncError::TimedOut), "a live holder keeps it");
    let pid = child.pid();
    child.kill();
    assert_eq!(lock.acquire(soon()), Err(SyncError::OwnerDied(pid)));
    // The takeover freed it: the next acquire is clean.
    assert_eq!(lock.acquire(soon()), Ok(()));
    assert!(lock.release());
}

#[test]
fn child_rlock_hold() {
    let Some(fds) = child_fds("child_rlock_hold") else { return };
    let mut fds = fds.into_iter();
    let r = RLock::open(fds.next().unwrap()).unwrap();
    let held = Event::open(fds.next().unwrap()).unwrap();
    r.acquire(soon()).unwrap();
    r.acquire(soon()).unwrap();
    held.set();
    linger();
}

#[test]
fn an_rlock_whose_holder_process_was_killed_is_taken_over() {
    let (r, held) = (RLock::new().unwrap(), Event::new().unwrap());
    let child = spawn_child("child_rlock_hold", &[r.block().fd().as_raw_fd(), held.block().fd().as_raw_fd()]);
    assert!(held.wait(soon()), "the child did not take the rlock");
    assert!(r.release().is_err(), "not the owner");
    child.kill();
    assert!(matches!(r.acquire(soon()), Err(SyncError::OwnerDied(_))));
    r.acquire(soon()).unwrap();
    assert_eq!(r.recursion_count(), 1);
    r.release().unwrap();
}

#[test]
fn child_semaphore_and_event_pong() {
    let Some(fds) = child_fds("child_semaphore_and_event_pong") else { return };
    let mut fds = fds.into_iter();
    let sem = Semaphore::open(fds.next().unwrap()).unwrap();
    let ping = Event::open(fds.next().unwrap()).unwrap();
    let pong = Event::open(fds.next().unwrap()).unwrap();
    // Waits for the permit the parent releases, then answers each ping.
    sem.acquire(soon()).unwrap();
    for _ in 0..20 {
        assert!(ping.wait(soon()), "no ping");
        ping.clear();
        pong.set();
    }
}

#[test]
fn a_semaphore_released_and_events_set_in_one_process_wake_a_waiter_in_another() {
    let sem = Semaphore::new(0, false).unwrap();
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn_child(
        "child_semaphore_and_event_pong",
        &[sem.block().fd().as_raw_fd(), ping.block().fd().as_raw_fd(), pong.block().fd().as_raw_fd()],
    );
    sem.release(1).unwrap();
    for i in 0..20 {
        ping.set();
        assert!(pong.wait(soon()), "no pong {i}");
        pong.clear();
    }
    child.assert_success();
    assert_eq!(sem.value(), 0, "the child took the permit");
}

#[test]
fn child_condition_wait() {
    let Some(fds) = child_fds("child_condition_wait") else { return };
    let mut fds = fds.into_iter();
    let c = Condition::open(fds.next().unwrap()).unwrap();
    let registered = Event::open(fds.next().unwrap()).unwrap();
    let slot = c.register().unwrap();
    registered.set();
    // The parent notifies: true; a kill ends the other role first.
    assert!(c.wait(slot, soon()).unwrap(), "not notified");
}

#[test]
fn a_condition_notify_reaches_another_process_and_skips_a_killed_waiter() {
    let c = Condition::new().unwrap();
    let fd = c.block().fd().as_raw_fd();
    // A waiter that will be killed, registered first (the oldest).
    let (r1, r2) = (Event::new().unwrap(), Event::new().unwrap());
    let victim = spawn_child("child_condition_wait", &[fd, r1.block().fd().as_raw_fd()]);
    assert!(r1.wait(soon()), "the victim did not register");
    let survivor = spawn_child("child_condition_wait", &[fd, r2.block().fd().as_raw_fd()]);
    assert!(r2.wait(soon()), "the survivor did not register");
    assert_eq!(c.waiters(), 2);
    victim.kill();
    // The oldest waiter is dead: the one notification goes to the survivor.
    assert_eq!(c.notify(1), 1);
    survivor.assert_success();
    assert_eq!(c.waiters(), 0);
}

#[test]
fn child_barrier_party() {
    let Some(fds) = child_fds("child_barrier_party") else { return };
    let b = Barrier::open(fds.into_iter().next().unwrap()).unwrap();
    for _ in 0..10 {
        match b.arrive(soon()).unwrap() {
            Arrival::Last { .. } => b.pass_round().unwrap(),
            Arrival::Waiting { slot, .. } => b.wait(slot, soon()).unwrap(),
        }
    }
}

#[test]
fn a_barrier_passes_rounds_across_processes() {
    let b = Barrier::new(3).unwrap();
    let fd = b.block().fd().as_raw_fd();
    let kids = [spawn_child("child_barrier_party", &[fd]), spawn_child("child_barrier_party", &[fd])];
    for round in 0..10 {
        match b.arrive(soon()).unwrap() {
            Arrival::Last { .. } => b.pass_round().unwrap(),
            Arrival::Waiting { slot, .. } => assert_eq!(b.wait(slot, soon()), Ok(()), "round {round}"),
        }
    }
    for k in &kids {
        k.assert_success();
    }
    assert!(!b.broken());
}

#[test]
fn child_barrier_wait_once() {
    let Some(fds) = child_fds("child_barrier_wait_once") else { return };
    let mut fds = fds.into_iter();
    let b = Barrier::open(fds.next().unwrap()).unwrap();
    let arrived = Event::open(fds.next().unwrap()).unwrap();
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!("the parent arrives last") };
    arrived.set();
    // Killed while waiting here.
    let _ = b.wait(slot, soon());
    std::process::exit(4)
}

#[test]
fn a_party_killed_while_waiting_breaks_the_barrier_for_a_waiter_with_a_long_timeout() {
    let (b, arrived) = (Barrier::new(3).unwrap(), Event::new().unwrap());
    let victim =
        spawn_child("child_barrier_wait_once", &[b.block().fd().as_raw_fd(), arrived.block().fd().as_raw_fd()]);
    assert!(arrived.wait(soon()), "the child did not arrive");
    let Arrival::Waiting { slot, .. } = b.arrive(soon()).unwrap() else { panic!("second of three") };
    assert_eq!(b.n_waiting(), 2);
    // A slice of the wait ends with nothing decided: the slot is kept.
    assert_eq!(b.wait(slot, after(20)), Err(BarrierError::TimedOut));
    let pid = victim.pid();
    victim.kill();
    let t0 = Instant::now();
    // A 30 s timeout, but the dead party is seen within a few checks.
    let got = b.wait(slot, soon());
    assert!(matches!(got, Err(BarrierError::PartyDied(p)) if p == pid), "{got:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert!(b.broken());
    b.reset();
    assert!(matches!(b.arrive(soon()), Ok(Arrival::Waiting { index: 0, .. })), "usable after reset");
    b.abort();
}

#[test]
fn more_threads_than_parties_pass_in_full_rounds() {
    const PARTIES: u32 = 3;
    const THREADS: usize = 7;
    const ROUNDS: usize = 150;
    let b = Barrier::new(PARTIES).unwrap();
    let passed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (b, passed) = (b.clone(), passed.clone());
            std::thread::spawn(move || {
                // Indices of the rounds this thread passed; it stops at the
                // first Broken (the abort that ends the test: with more
                // threads than parties some would otherwise be left short
                // of a full round, as with threading.Barrier).
                let mut seen = [0usize; PARTIES as usize];
                loop {
                    let index = match b.arrive(soon()) {
                        Ok(Arrival::Last { index }) => {
                            b.pass_round().unwrap();
                            if passed.fetch_add(1, Ordering::SeqCst) + 1 >= ROUNDS as u64 {
                                b.abort();
                            }
                            index
                        }
                        Ok(Arrival::Waiting { index, slot }) => match b.wait(slot, soon()) {
                            Ok(()) => index,
                            Err(BarrierError::Broken) => return seen,
                            Err(e) => panic!("{e:?}"),
                        },
                        Err(BarrierError::Broken) => return seen,
                        Err(e) => panic!("{e:?}"),
                    };
                    seen[index as usize] += 1;
                }
            })
        })
        .collect();
    let mut total = [0usize; PARTIES as usize];
    for t in threads {
        for (i, n) in t.join().unwrap().iter().enumerate() {
            total[i] += n;
        }
    }
    // Every round that passed handed out each index exactly once (a round
    // may pass between the 150th and the abort).
    let passed = passed.load(Ordering::SeqCst) as usize;
    assert!(passed >= ROUNDS);
    assert_eq!(total, [passed; PARTIES as usize]);
}

#[test]
fn a_barrier_whose_internal_lock_holder_died_is_broken_by_the_next_caller() {
    use corral_core::sync::barrier::BarrierState;
    use corral_core::sync::block::Shared;

    let b = Barrier::new(2).unwrap();
    // A pid that no longer runs, as a process killed inside the lock leaves.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let raw = Shared::<BarrierState>::open(b.block().fd().try_clone_to_owned().unwrap()).unwrap();
    assert!(raw.get().lock.try_lock(dead));
    // The next caller takes the lock over and breaks the barrier: the state
    // may be half-written.
    assert_eq!(b.arrive(soon()), Err(BarrierError::Broken));
    assert!(b.broken());
    b.reset();
    assert!(matches!(b.arrive(soon()), Ok(Arrival::Waiting { index: 0, .. })));
    b.abort();
}
