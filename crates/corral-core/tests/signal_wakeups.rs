//! The signal's wake-up protocol (`sys::signal`: a notify makes the futex
//! wake call only when a waiter set the waiting bit) under stress, between
//! threads and between processes: parties take turns on one signal, each
//! waiting for its turn with sleep slices of an hour, so a lost wake-up
//! leaves its party asleep until the test's deadline and fails the test
//! instead of costing one slice. Random pauses before each hand-over
//! (none, a few microseconds, a yield, a 100 us sleep) put the waiters to
//! sleep at every point of the protocol: spinning, between `prepare` and
//! the sleep, asleep.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{child_args, inherited, spawn_child, PATIENCE};
use corral_core::sys::shm::SharedMemory;
use corral_core::sys::signal::{wait_for, Signal};

/// Longer than any test: a sleep that is not woken runs into the deadline.
const NO_SLICE: Duration = Duration::from_secs(3600);

/// The shared state: whose turn it is (turns counted up from 0; party
/// `turn % parties` acts), and the signal every hand-over notifies.
#[repr(C)]
struct Table {
    signal: Signal,
    turn: AtomicU32,
}

/// A small xorshift, so that every party pauses differently.
struct Pauses(u64);

impl Pauses {
    fn next(&mut self) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        match self.0 % 16 {
            0..=5 => {}
            6..=11 => {
                let until = Instant::now() + Duration::from_micros(self.0 % 40);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            12..=14 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

/// Party `me` of `parties` takes `rounds` turns; panics when a turn does
/// not come within `PATIENCE` (a wake-up was lost).
fn take_turns(t: &Table, me: u32, parties: u32, rounds: u32) {
    let mut pauses = Pauses(0x9E37_79B9_7F4A_7C15 ^ u64::from(me + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    for round in 0..rounds {
        let deadline = Some(Instant::now() + PATIENCE);
        let mine = wait_for::<(), ()>(
            &t.signal,
            deadline,
            NO_SLICE,
            || Ok((t.turn.load(Ordering::Acquire) % parties == me).then_some(())),
            // Called only when a sleep ran to its end: to the deadline.
            || Err(()),
        );
        assert_eq!(mine, Ok(Some(())), "party {me} never woke for its turn in round {round}: a wake-up was lost");
        pauses.next();
        t.turn.fetch_add(1, Ordering::Release);
        t.signal.notify();
    }
}

#[test]
fn three_threads_taking_turns_on_one_signal_never_lose_a_wakeup() {
    const PARTIES: u32 = 3;
    const ROUNDS: u32 = 3000;
    let t = Arc::new(Table { signal: Signal::new(), turn: AtomicU32::new(0) });
    let threads: Vec<_> = (1..PARTIES)
        .map(|me| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || take_turns(&t, me, PARTIES, ROUNDS))
        })
        .collect();
    take_turns(&t, 0, PARTIES, ROUNDS);
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(t.turn.load(Ordering::Acquire), PARTIES * ROUNDS);
}

const PROCESS_PARTIES: u32 = 3;
const PROCESS_ROUNDS: u32 = 2000;

fn table(shm: &SharedMemory) -> &Table {
    assert!(shm.len() >= std::mem::size_of::<Table>());
    // SAFETY: a page-aligned shared mapping at least as large as `Table`,
    // zeroed at creation (a zeroed `Table` is a fresh one), which `shm`
    // keeps alive; every field is an atomic, shared by every process.
    unsafe { &*shm.as_ptr().cast::<Table>() }
}

#[test]
fn child_signal_party() {
    let Some((fds, arg)) = child_args("child_signal_party") else { return };
    let shm = SharedMemory::open(inherited(fds[0])).unwrap();
    take_turns(table(&shm), arg.parse().unwrap(), PROCESS_PARTIES, PROCESS_ROUNDS);
}

#[test]
fn three_processes_taking_turns_on_one_signal_never_lose_a_wakeup() {
    let shm = SharedMemory::create("signal-turns", 4096).unwrap();
    let children: Vec<_> =
        (1..PROCESS_PARTIES).map(|me| spawn_child("child_signal_party", &[shm.raw_fd()], &me.to_string())).collect();
    take_turns(table(&shm), 0, PROCESS_PARTIES, PROCESS_ROUNDS);
    for c in &children {
        c.assert_success();
    }
    assert_eq!(table(&shm).turn.load(Ordering::Acquire), PROCESS_PARTIES * PROCESS_ROUNDS);
}

/// The table of the test below, which its hook reaches.
static RACED: Table = Table { signal: Signal::new(), turn: AtomicU32::new(0) };

thread_local! {
    /// Set on the thread whose next sleep the hook races.
    static RACE_NEXT_SLEEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[test]
fn an_event_notified_between_the_failed_try_and_the_sleep_is_not_slept_through() {
    // The event comes exactly where the waiter has tried, failed and
    // decided to sleep, but not yet set the waiting bit: the notify finds
    // the bit clear and makes no wake call, so only the try after
    // `prepare` can see it.
    corral_core::testing::set_hook(|point| {
        if point == corral_core::testing::Point::SignalSleeping && RACE_NEXT_SLEEP.with(|r| r.replace(false)) {
            RACED.turn.store(1, Ordering::Release);
            RACED.signal.notify();
        }
    });
    RACE_NEXT_SLEEP.with(|r| r.set(true));
    let got = wait_for::<(), ()>(
        &RACED.signal,
        Some(Instant::now() + PATIENCE),
        NO_SLICE,
        || Ok((RACED.turn.load(Ordering::Acquire) == 1).then_some(())),
        // Called only when a sleep ran to its end: to the deadline.
        || Err(()),
    );
    assert!(!RACE_NEXT_SLEEP.with(|r| r.get()), "the wait never went to sleep: the race was not run");
    assert_eq!(got, Ok(Some(())), "the wait slept through an event notified before it announced its sleep");
}
