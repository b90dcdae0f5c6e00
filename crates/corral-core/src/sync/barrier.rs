//! `threading.Barrier` across threads and processes.
//!
//! # Design
//!
//! A barrier's state is a handful of words guarded by an internal robust
//! lock (`LockWord`, held for a few instructions only, never while user
//! code runs), plus one slot per waiting party. A party that arrives takes
//! the next index; unless it is the last of the round it claims a slot
//! (its pid, state WAITING) and sleeps on the slot's state word. The round
//! ends in exactly one of two ways, and whoever ends it writes the outcome
//! into every WAITING slot and wakes it:
//!
//! - the last party arrives: the phase becomes RELEASING while its caller
//!   runs the barrier's action (user code: outside the lock); then
//!   `pass_round` marks the slots PASSED, or `fail_round` (the action
//!   raised) marks them FAILED and breaks the barrier;
//! - the barrier breaks (`abort`, a waiter's timeout, a dead party,
//!   `reset` of a round in progress): FAILED.
//!
//! Each waiter reads its own outcome from its own slot and frees the slot,
//! so a new round can start at once: there is no draining phase as in
//! CPython's `threading.Barrier`, and a waiter that is slow to wake cannot
//! confuse two rounds (the outcome is per slot, not per round number, which
//! could be overwritten by later rounds before the waiter reads it).
//! Arrivals wait only while an action runs (as they wait for the
//! condition's lock in `threading`), on the `seq` word, bumped by every
//! change of phase.
//!
//! # Parties that die
//!
//! - A waiter checks, every `PARTY_CHECK` (100 ms) of its wait, whether the
//!   other waiting parties' processes (and the releaser's, while an action
//!   runs) are alive; a dead one breaks the barrier: the checker gets
//!   `PartyDied`, the other waiters `Broken`. A waiter whose peer was
//!   SIGKILLed while waiting therefore returns within about 100 ms, with or
//!   without a timeout.
//! - A party that dies before it arrives is only seen as late: the others
//!   wait for it until their timeout (which breaks the barrier), or for ever
//!   without one, as with `threading`.
//! - A process killed inside the internal lock's few instructions: the next
//!   caller takes the lock over and breaks the barrier (its state may be
//!   half-written); `reset` makes it usable again.
//! - A waiter that died after its outcome was written leaves its slot
//!   PASSED or FAILED; a claim that finds no free slot frees those.
//!
//! Only pids are recorded (as `robust_lock.rs`): a recycled pid makes a
//! dead party look alive, and the others then wait until their timeout.
//!
//! # Where it differs from `threading.Barrier`
//!
//! `threading` runs the action holding the condition's lock, so `abort` and
//! `reset` wait for it. Here they do not: `abort` during the action breaks
//! that round too (the last party's `pass_round` returns `Broken`), `reset`
//! during the action is a no-op (the round passes, as in `threading`). An
//! interrupted waiter (`withdraw`) leaves the round without breaking it, as
//! a `KeyboardInterrupt` does in `threading`.
//!
//! # Limits
//!
//! At most `MAX_WAITERS` parties wait at once (slots of a round just passed
//! count until their waiters woke up), so `parties` is at most
//! `MAX_WAITERS / 2`; an arrival that finds no free slot, even after
//! freeing those of dead pids, gets `TooManyWaiters`.
//!
//! # Cost
//!
//! Measured through `corral.Barrier.wait` (2-core VM, loaded), per round:
//! 2 threads 15.8 us, 4 threads 27 us, 2 processes 20 us, 3 processes
//! 31 us; the Python state machine over `Counters` and a `Condition` it
//! replaces took 22.9, 134, 70 and 167 us. A round touches the internal lock
//! once per party and scans the 1024 slots once (about 1 us).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::async_wait::WatchTarget;
use super::block::{Kind, Shared, SyncBlock, SyncState};
use crate::error::{CoreError, Result};
use crate::sys::futex;
use crate::sys::liveness::{my_pid, pid_alive};
use crate::sys::robust_lock::{Acquired, LockWord};

/// Slots for waiting parties in one barrier block.
pub const MAX_WAITERS: usize = 1024;
/// Most parties a barrier may have (see the module doc, Limits).
pub const MAX_PARTIES: u32 = (MAX_WAITERS / 2) as u32;
/// How often a waiter looks for parties that died.
pub const PARTY_CHECK: Duration = Duration::from_millis(100);

// Phases (`BarrierState::phase`).
const FILLING: u32 = 0;
const RELEASING: u32 = 1;
const BROKEN: u32 = 2;

// Slot states (`BarrierSlot::state`).
const FREE: u32 = 0;
const WAITING: u32 = 1;
const PASSED: u32 = 2;
const FAILED: u32 = 3;

/// One waiting party.
#[repr(C)]
#[derive(Debug)]
pub struct BarrierSlot {
    /// FREE, WAITING, PASSED or FAILED; the waiter's futex word. FREE ->
    /// WAITING and WAITING -> PASSED/FAILED only under the internal lock;
    /// PASSED/FAILED -> FREE by the waiter itself once it read the outcome.
    pub state: AtomicU32,
    /// The waiter's pid, to tell a party that died.
    pub pid: AtomicU32,
}

/// State of a barrier in its block (after the `SyncHeader`, which carries
/// the magic, the layout version and the kind).
#[repr(C)]
#[derive(Debug)]
pub struct BarrierState {
    /// Guards every field below except the slots' PASSED/FAILED -> FREE.
    pub lock: LockWord,
    /// Parties per round, written once at creation.
    pub parties: AtomicU32,
    /// FILLING, RELEASING (the last party runs the action) or BROKEN.
    pub phase: AtomicU32,
    /// Parties arrived in the current round (0 once broken).
    pub count: AtomicU32,
    /// Pid of the party running the action while RELEASING, else 0.
    pub releaser: AtomicU32,
    /// +1 at every change of phase; the futex word of arrivals that wait
    /// for an action to end.
    pub seq: AtomicU32,
    /// Threads sleeping (or about to) on `seq`.
    pub seq_sleepers: AtomicU32,
    /// Reserved, zero: puts the slots on their own cache line.
    pub reserved: [u32; 8],
    /// The waiting parties.
    pub slots: [BarrierSlot; MAX_WAITERS],
}

const _: () = assert!(std::mem::size_of::<BarrierSlot>() == 8);
const _: () = assert!(std::mem::size_of::<BarrierState>() == 64 + 8 * MAX_WAITERS);

impl SyncState for BarrierState {
    const KIND: Kind = Kind::Barrier;
}

/// Why a barrier call did not pass.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum BarrierError {
    /// The barrier is (or was made) broken: `threading.BrokenBarrierError`.
    #[error("the barrier is broken")]
    Broken,
    /// This caller found that a party (this pid) died waiting, or running
    /// the action, and broke the barrier.
    #[error("a party of the barrier (pid {0}) died while waiting; the barrier is broken")]
    PartyDied(u32),
    /// The deadline passed before the round ended; nothing was changed (a
    /// waiter keeps its slot).
    #[error("timed out")]
    TimedOut,
    /// Every slot is taken.
    #[error("more than {MAX_WAITERS} parties wait on one Barrier")]
    TooManyWaiters,
}

impl From<BarrierError> for CoreError {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::TimedOut => CoreError::Timeout,
            other => CoreError::Invalid(other.to_string()),
        }
    }
}

/// What `arrive` made of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The last party of the round: run the action, then `pass_round` (or
    /// `fail_round` if the action failed).
    Last {
        /// The caller's index in the round (`parties - 1`).
        index: u32,
    },
    /// A waiting party: `wait` on `slot` (then `expire` if the caller's
    /// timeout passes, `withdraw` if it gives up otherwise).
    Waiting {
        /// The caller's index in the round.
        index: u32,
        /// Its slot.
        slot: usize,
    },
}

impl Arrival {
    /// The caller's index in the round.
    pub fn index(&self) -> u32 {
        match *self {
            Arrival::Last { index } | Arrival::Waiting { index, .. } => index,
        }
    }
}

/// A process-shared barrier.
#[derive(Debug, Clone)]
pub struct Barrier {
    state: Shared<BarrierState>,
}

/// The internal lock, held; released when dropped.
struct Guard<'a>(&'a LockWord);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

impl Barrier {
    /// A new barrier for `parties` (1..=`MAX_PARTIES`) parties.
    pub fn new(parties: u32) -> Result<Self> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(CoreError::Invalid(format!("parties must be between 1 and {MAX_PARTIES}")));
        }
        let state = Shared::<BarrierState>::create()?;
        state.get().parties.store(parties, Ordering::Release);
        Ok(Barrier { state })
    }

    /// The barrier behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        let b = Barrier { state: Shared::open(fd)? };
        let parties = b.parties();
        if parties == 0 || parties > MAX_PARTIES {
            return Err(CoreError::corrupt("barrier", format!("{parties} parties")));
        }
        Ok(b)
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    fn st(&self) -> &BarrierState {
        self.state.get()
    }

    /// Parties per round.
    pub fn parties(&self) -> u32 {
        self.st().parties.load(Ordering::Acquire)
    }

    /// Parties waiting in the current round (0 once broken).
    pub fn n_waiting(&self) -> u32 {
        let st = self.st();
        if st.phase.load(Ordering::Acquire) == BROKEN {
            0
        } else {
            st.count.load(Ordering::Acquire)
        }
    }

    /// True while broken (until `reset`).
    pub fn broken(&self) -> bool {
        self.st().phase.load(Ordering::Acquire) == BROKEN
    }

    /// Takes the internal lock; a holder that died inside it may have left
    /// the state half-written, so the barrier is then broken.
    fn lock(&self) -> Guard<'_> {
        let st = self.st();
        let got = st.lock.lock(my_pid(), None);
        let guard = Guard(&st.lock);
        if let Some(Acquired::OwnerDied(_)) = got {
            self.break_locked();
        }
        guard
    }

    /// Breaks the round: every waiter gets FAILED. Lock held.
    fn break_locked(&self) {
        self.end_round_locked(BROKEN, FAILED);
    }

    /// Ends the round: the barrier goes to `phase` with no party counted,
    /// then every WAITING slot gets `outcome` and a wake. In that order: a
    /// woken waiter that reads `n_waiting` or `broken` (without the lock)
    /// sees the new round. Lock held.
    fn end_round_locked(&self, phase: u32, outcome: u32) {
        let st = self.st();
        st.count.store(0, Ordering::SeqCst);
        st.releaser.store(0, Ordering::SeqCst);
        st.phase.store(phase, Ordering::SeqCst);
        for slot in &st.slots {
            if slot.state.load(Ordering::Acquire) == WAITING {
                slot.state.store(outcome, Ordering::Release);
                futex::wake(&slot.state, 1);
            }
        }
        self.bump_locked();
    }

    /// Tells the arrivals waiting for an action that the phase changed.
    fn bump_locked(&self) {
        let st = self.st();
        st.seq.fetch_add(1, Ordering::SeqCst);
        if st.seq_sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&st.seq);
        }
    }

    /// A free slot for pid `me`, WAITING. Lock held.
    fn claim_locked(&self, me: u32) -> std::result::Result<usize, BarrierError> {
        let st = self.st();
        for pass in 0..2 {
            for (i, slot) in st.slots.iter().enumerate() {
                if slot.state.load(Ordering::Acquire) == FREE {
                    slot.pid.store(me, Ordering::Relaxed);
                    slot.state.store(WAITING, Ordering::Release);
                    return Ok(i);
                }
            }
            if pass == 0 {
                // Outcomes never read: their waiters died.
                for slot in &st.slots {
                    let s = slot.state.load(Ordering::Acquire);
                    if (s == PASSED || s == FAILED) && !pid_alive(slot.pid.load(Ordering::Relaxed)) {
                        let _ = slot.state.compare_exchange(s, FREE, Ordering::AcqRel, Ordering::Relaxed);
                    }
                }
            }
        }
        Err(BarrierError::TooManyWaiters)
    }

    /// Arrives without waiting: `Ok(None)` while the last party of the
    /// previous round runs its action (retry once `seq_word` moved).
    pub fn try_arrive(&self) -> std::result::Result<Option<Arrival>, BarrierError> {
        let st = self.st();
        let me = my_pid();
        let _g = self.lock();
        match st.phase.load(Ordering::Acquire) {
            BROKEN => Err(BarrierError::Broken),
            RELEASING => Ok(None),
            _ => {
                let index = st.count.load(Ordering::Acquire);
                if index + 1 >= st.parties.load(Ordering::Acquire) {
                    st.count.store(index + 1, Ordering::Release);
                    st.phase.store(RELEASING, Ordering::Release);
                    st.releaser.store(me, Ordering::Release);
                    self.bump_locked();
                    return Ok(Some(Arrival::Last { index }));
                }
                let slot = self.claim_locked(me)?;
                st.count.store(index + 1, Ordering::Release);
                Ok(Some(Arrival::Waiting { index, slot }))
            }
        }
    }

    /// Arrives, waiting at most until `deadline` while an action of the
    /// previous round runs (`TimedOut` then: nothing was changed).
    pub fn arrive(&self, deadline: Option<Instant>) -> std::result::Result<Arrival, BarrierError> {
        let st = self.st();
        loop {
            let seen = st.seq.load(Ordering::SeqCst);
            if let Some(a) = self.try_arrive()? {
                return Ok(a);
            }
            let step = Instant::now() + PARTY_CHECK;
            let until = deadline.map_or(step, |d| d.min(step));
            st.seq_sleepers.fetch_add(1, Ordering::SeqCst);
            let woke = futex::wait(&st.seq, seen, Some(until));
            st.seq_sleepers.fetch_sub(1, Ordering::SeqCst);
            if woke == futex::Wake::TimedOut {
                self.check_parties()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(BarrierError::TimedOut);
                }
            }
        }
    }

    /// The last party, after its action: releases the round. `Broken` if the
    /// barrier was broken meanwhile (`abort`, a dead party).
    pub fn pass_round(&self) -> std::result::Result<(), BarrierError> {
        let st = self.st();
        let _g = self.lock();
        if st.phase.load(Ordering::Acquire) != RELEASING || st.releaser.load(Ordering::Acquire) != my_pid() {
            return Err(BarrierError::Broken);
        }
        self.end_round_locked(FILLING, PASSED);
        Ok(())
    }

    /// The last party, whose action failed: breaks the barrier.
    pub fn fail_round(&self) {
        let _g = self.lock();
        self.break_locked();
    }

    /// Waits in `slot` until the round ends or `until`: Ok when it passed,
    /// `Broken`/`PartyDied` when it broke (the slot is then free again),
    /// `TimedOut` when `until` came first (the slot is kept: wait again,
    /// `expire` or `withdraw`). Looks for dead parties every `PARTY_CHECK`.
    pub fn wait(&self, slot: usize, until: Option<Instant>) -> std::result::Result<(), BarrierError> {
        let s = self.slot(slot)?;
        loop {
            match s.state.load(Ordering::Acquire) {
                PASSED => {
                    s.state.store(FREE, Ordering::Release);
                    return Ok(());
                }
                FAILED => {
                    s.state.store(FREE, Ordering::Release);
                    return Err(BarrierError::Broken);
                }
                WAITING => {}
                _ => return Err(BarrierError::Broken),
            }
            let step = Instant::now() + PARTY_CHECK;
            let end = until.map_or(step, |d| d.min(step));
            if futex::wait(&s.state, WAITING, Some(end)) == futex::Wake::TimedOut {
                if let Err(e) = self.check_parties() {
                    // Our own slot was marked FAILED with the others.
                    if s.state.load(Ordering::Acquire) == FAILED {
                        s.state.store(FREE, Ordering::Release);
                    }
                    return Err(e);
                }
                if until.is_some_and(|d| Instant::now() >= d) && s.state.load(Ordering::Acquire) == WAITING {
                    return Err(BarrierError::TimedOut);
                }
            }
        }
    }

    /// The waiter's timeout passed: breaks the barrier (as `threading`)
    /// unless the round ended meanwhile (its outcome is returned) or the
    /// last party is running the action (`TimedOut`: wait on, the action's
    /// end decides, as in `threading`).
    pub fn expire(&self, slot: usize) -> std::result::Result<(), BarrierError> {
        let st = self.st();
        let s = self.slot(slot)?;
        {
            let _g = self.lock();
            if s.state.load(Ordering::Acquire) == WAITING {
                if st.phase.load(Ordering::Acquire) == RELEASING {
                    return Err(BarrierError::TimedOut);
                }
                self.break_locked();
            }
        }
        self.wait(slot, Some(Instant::now()))
    }

    /// Gives `slot` back without breaking the barrier (an interrupted
    /// wait, as a `KeyboardInterrupt` in `threading.Barrier.wait`): the
    /// round then needs another party.
    pub fn withdraw(&self, slot: usize) {
        let st = self.st();
        let Some(s) = st.slots.get(slot) else { return };
        let _g = self.lock();
        if s.state.load(Ordering::Acquire) == WAITING {
            let _ = st.count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
        }
        s.state.store(FREE, Ordering::Release);
    }

    /// Breaks the barrier: current and later waiters get `Broken` until
    /// `reset`.
    pub fn abort(&self) {
        let _g = self.lock();
        self.break_locked();
    }

    /// Back to an empty round: the current round's waiters get `Broken`.
    /// While an action runs, its round still passes (as in `threading`,
    /// where `reset` waits for the action).
    pub fn reset(&self) {
        let st = self.st();
        let _g = self.lock();
        if st.phase.load(Ordering::Acquire) == RELEASING {
            return;
        }
        self.end_round_locked(FILLING, FAILED);
    }

    /// Breaks the barrier if a waiting party (or the releaser) of another
    /// process died; `PartyDied` then. Liveness is read from `/proc`
    /// without the lock, once per other process (not per slot); the lock is
    /// taken only for a dead one, to check that it still is a waiting party
    /// or the releaser before breaking.
    fn check_parties(&self) -> std::result::Result<(), BarrierError> {
        let st = self.st();
        let me = my_pid();
        let releaser = st.releaser.load(Ordering::Acquire);
        let waiting = st
            .slots
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == WAITING)
            .map(|s| s.pid.load(Ordering::Relaxed));
        let mut checked = std::collections::HashSet::new();
        let dead = std::iter::once(releaser)
            .chain(waiting)
            .filter(|&pid| pid != 0 && pid != me)
            .find(|&pid| checked.insert(pid) && !pid_alive(pid));
        let Some(pid) = dead else { return Ok(()) };
        let _g = self.lock();
        let phase = st.phase.load(Ordering::Acquire);
        let still = (phase == RELEASING && st.releaser.load(Ordering::Acquire) == pid)
            || (phase != BROKEN
                && st
                    .slots
                    .iter()
                    .any(|s| s.state.load(Ordering::Acquire) == WAITING && s.pid.load(Ordering::Relaxed) == pid));
        if !still {
            return Ok(());
        }
        self.break_locked();
        Err(BarrierError::PartyDied(pid))
    }

    fn slot(&self, slot: usize) -> std::result::Result<&BarrierSlot, BarrierError> {
        // An index that `arrive` did not hand out: treat as broken.
        self.st().slots.get(slot).ok_or(BarrierError::Broken)
    }

    /// The arrival word (`seq`) now, to watch after `try_arrive` found an
    /// action running.
    pub fn seq_word(&self) -> u32 {
        self.st().seq.load(Ordering::SeqCst)
    }

    /// What the async hub watches: the arrival word (`slot` None) or a
    /// waiter's slot.
    pub fn watch_target(&self, slot: Option<usize>) -> Result<BarrierWatch> {
        if let Some(i) = slot {
            if i >= MAX_WAITERS {
                return Err(CoreError::Invalid(format!("no barrier slot {i}")));
            }
        }
        Ok(BarrierWatch { barrier: self.clone(), slot, unused_sleepers: AtomicU32::new(0) })
    }
}

/// A barrier's word for the async hub (`Barrier.wait_async`): the arrival
/// word while an action runs, else the waiter's slot (the end of a round
/// always issues a futex wake on each slot, so its counter is unused).
#[derive(Debug)]
pub struct BarrierWatch {
    barrier: Barrier,
    slot: Option<usize>,
    unused_sleepers: AtomicU32,
}

impl WatchTarget for BarrierWatch {
    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        let st = self.barrier.st();
        match self.slot {
            None => (&st.seq, &st.seq_sleepers),
            // The index was checked in `watch_target`.
            Some(i) => (st.slots.get(i).map_or(&st.seq, |s| &s.state), &self.unused_sleepers),
        }
    }
}
