//! Channels and rings across real processes, including peers killed by
//! SIGKILL in the middle of an operation.
//!
//! Children are this test binary run again on one `child_*` test (with
//! `--exact`); the role and the inherited descriptors come in through the
//! environment, and a `child_*` test without them returns at once. A child
//! reports failure by panicking (the harness then exits with 101). Every wait
//! has a deadline and every child is killed when its parent test ends, so a
//! broken channel fails a test instead of hanging the suite.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{child_args, inherited, linger, spawn_child, take_part, PATIENCE};
use corral_core::channel::pipe::{pipe, Connection};
use corral_core::channel::queue::{Outgoing, Part, QueueConfig, QueueHeader, SharedQueue};
use corral_core::process::Exit;
use corral_core::ring::{ring_bytes, Ring, RingHeader};
use corral_core::sys::shm::SharedMemory;
use corral_core::testing::Point;
use corral_core::CoreError;

// ---------------------------------------------------------------------------
// Harness (the children, bounded waits: `common`).

fn soon() -> Option<Instant> {
    Some(Instant::now() + PATIENCE)
}

/// Deterministic bytes derived from `seed`, so that the receiver can
/// regenerate and compare them.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

// ---------------------------------------------------------------------------
// 1. Many small messages from two producer processes.

const SMALL_PER_PRODUCER: u32 = 5_000;

/// Producer `p`'s message `i`: its identity, then a filler of varying length.
fn small_msg(p: u32, i: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + 61);
    m.extend_from_slice(&p.to_le_bytes());
    m.extend_from_slice(&i.to_le_bytes());
    m.resize(8 + (i % 61) as usize, (p as u8) ^ (i as u8));
    m
}

#[test]
fn child_queue_small_producer() {
    let Some((fds, arg)) = child_args("child_queue_small_producer") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    let p: u32 = arg.parse().unwrap();
    for i in 0..SMALL_PER_PRODUCER {
        q.put(Outgoing { inband: &small_msg(p, i), buffers: &[] }, soon()).unwrap();
    }
    // Producer 0 says it is done; producer 1 just exits, so the consumer
    // must notice the end through the liveness check.
    if p == 0 {
        q.close_producer();
    }
}

#[test]
fn two_producer_processes_deliver_every_message_once_in_order_then_get_reports_closed() {
    let q = SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, arena_bytes: 1 << 20, maxsize: 0 }).unwrap();
    let fd = q.fd().as_raw_fd();
    let producers =
        [spawn_child("child_queue_small_producer", &[fd], "0"), spawn_child("child_queue_small_producer", &[fd], "1")];
    // As corral.Queue does for a child started with it: without this, a
    // producer slow to start (a busy machine) is not a holder yet when the
    // other one has put all and closed, and the data looks ended.
    for p in &producers {
        q.add_holder(p.pid()).unwrap();
    }
    let total = 2 * SMALL_PER_PRODUCER as usize;
    let mut next = [0u32; 2];
    let mut got = 0;
    let deadline = Instant::now() + 4 * PATIENCE;
    while got < total {
        assert!(Instant::now() < deadline, "only {got} of {total} messages arrived");
        let batch = match q.get_many(64, soon()) {
            Ok(b) => b,
            Err(e) => panic!("get_many after {got} of {total} messages: {e}"),
        };
        for parts in batch {
            assert_eq!(parts.len(), 1, "a small message is one inline part");
            let Part::Inline(m) = &parts[0] else { panic!("small message came as {:?}", parts[0]) };
            let (p, i) = (u32_at(m, 0), u32_at(m, 4));
            assert!(p < 2, "unknown producer {p}");
            assert_eq!(i, next[p as usize], "producer {p}'s messages come in the order it put them");
            assert_eq!(*m, small_msg(p, i), "message {i} of producer {p} arrived intact");
            next[p as usize] += 1;
            got += 1;
        }
    }
    assert_eq!(next, [SMALL_PER_PRODUCER; 2]);
    for p in &producers {
        assert_eq!(p.wait_exit(PATIENCE), Exit::Code(0), "{} failed", p.role);
    }
    assert!(q.is_empty());
    let t = Instant::now();
    match q.get_many(1, Some(Instant::now() + Duration::from_secs(10))) {
        Err(CoreError::Closed(_)) => {}
        other => panic!("get on a drained queue whose producers are gone gave {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "end of data took {:?} to notice", t.elapsed());
}

// ---------------------------------------------------------------------------
// 2. Large messages through the arena.

const LARGE_COUNT: u64 = 24;
/// Every fourth message also has an in-band part too big to go inline.
const BIG_INBAND: usize = 100_000;

fn large_len(i: u64) -> usize {
    (1 << 20) + ((i * 7919 * 1031) % (2 << 20)) as usize
}

/// The in-band part of large message `i`: its index and buffer length,
/// padded for every fourth message so that it goes to the arena as well.
fn large_inband(i: u64) -> Vec<u8> {
    let mut m = if i % 4 == 3 { pattern(!i, BIG_INBAND) } else { vec![0u8; 16] };
    m[..8].copy_from_slice(&i.to_le_bytes());
    m[8..16].copy_from_slice(&(large_len(i) as u64).to_le_bytes());
    m
}

#[test]
fn child_queue_large_producer() {
    let Some((fds, _)) = child_args("child_queue_large_producer") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    for i in 0..LARGE_COUNT {
        let buf = pattern(i, large_len(i));
        q.put(Outgoing { inband: &large_inband(i), buffers: &[&buf] }, soon()).unwrap();
    }
    q.close_producer();
}

#[test]
fn megabyte_messages_cross_processes_through_the_arena_and_all_blocks_come_back() {
    // A 16 MiB arena holds only a few 1-3 MB messages: the producer has to
    // wait for the consumer's frees.
    let q = SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, arena_bytes: 16 << 20, maxsize: 0 }).unwrap();
    let producer = spawn_child("child_queue_large_producer", &[q.fd().as_raw_fd()], "");
    for i in 0..LARGE_COUNT {
        let mut msg = q.get_many(1, soon()).unwrap_or_else(|e| panic!("get of message {i}: {e}"));
        assert_eq!(msg.len(), 1);
        let parts = msg.pop().unwrap();
        assert_eq!(parts.len(), 2, "in-band part and one buffer");
        let big_inband = i % 4 == 3;
        assert_eq!(matches!(parts[0], Part::Block { .. }), big_inband, "a large in-band part goes to the arena");
        let Part::Block { len, .. } = parts[1] else { panic!("buffer came inline: {:?}", parts[1]) };
        assert_eq!(len, large_len(i) as u64);
        assert_eq!(take_part(&q, &parts[0]), large_inband(i), "in-band part of message {i}");
        let buf = take_part(&q, &parts[1]);
        assert!(buf == pattern(i, large_len(i)), "buffer of message {i} arrived corrupted");
    }
    assert_eq!(producer.wait_exit(PATIENCE), Exit::Code(0));
    assert_eq!(q.arena_used().unwrap(), 0, "every block was freed");
    assert!(matches!(q.get_many(1, soon()), Err(CoreError::Closed(_))));
}

// ---------------------------------------------------------------------------
// Rings shared by parent and children: a control page (flags the test
// processes set for each other), then the ring.

const CTL: usize = 4096;
const RING_CAPACITY: u64 = 16 << 10;
/// Flag: set by the child that parks holding a lock (1 ready, 2 failed).
const FLAG_PARKED: usize = 0;

fn ring_block() -> (SharedMemory, Ring) {
    let shm = SharedMemory::create("xproc-ring", CTL + ring_bytes(RING_CAPACITY)).unwrap();
    // SAFETY: a fresh page-aligned mapping; the ring part starts at a page
    // boundary and runs to the end of the mapping, which `shm` keeps alive.
    let ring = unsafe { Ring::init(shm.as_ptr().add(CTL), shm.len() - CTL) }.unwrap();
    (shm, ring)
}

/// In a child started as `role` on a `ring_block` (its `fds[0]`): that
/// block (None in the ordinary test run, see `child_args`).
fn ring_child(role: &str) -> Option<(SharedMemory, Ring)> {
    let (fds, _) = child_args(role)?;
    let shm = SharedMemory::open(inherited(fds[0])).unwrap();
    // SAFETY: the parent laid the block out as in `ring_block`; `shm` keeps
    // the mapping alive as long as the caller holds it.
    let ring = unsafe { Ring::attach(shm.as_ptr().add(CTL), shm.len() - CTL) }.unwrap();
    Some((shm, ring))
}

fn flag(shm: &SharedMemory, i: usize) -> &AtomicU32 {
    assert!((i + 1) * 4 <= CTL);
    // SAFETY: inside the control page, 4-byte aligned; only accessed
    // atomically, by every process.
    unsafe { &*shm.as_ptr().cast::<AtomicU32>().add(i) }
}

/// The child that shares the control page `shm` has parked (`FLAG_PARKED`).
fn parked(shm: &SharedMemory) -> bool {
    flag(shm, FLAG_PARKED).load(Ordering::Acquire) != 0
}

fn ring_header(shm: &SharedMemory) -> &RingHeader {
    // SAFETY: the ring header sits at CTL (64-byte aligned) for the life of
    // the mapping; its shared fields are atomics.
    unsafe { &*shm.as_ptr().add(CTL).cast::<RingHeader>() }
}

/// The ring's data bytes at `pos`, copied out.
fn data_at(shm: &SharedMemory, pos: u64, len: usize) -> Vec<u8> {
    let off = (pos % RING_CAPACITY) as usize;
    assert!(off + len <= RING_CAPACITY as usize);
    let mut out = vec![0u8; len];
    // SAFETY: [off, off + len) lies in the data area, which follows the
    // 192-byte header; a plain copy of bytes nobody writes at this moment.
    unsafe {
        std::ptr::copy_nonoverlapping(
            shm.as_ptr().add(CTL + std::mem::size_of::<RingHeader>() + off),
            out.as_mut_ptr(),
            len,
        )
    };
    out
}

fn me() -> u32 {
    std::process::id()
}

// ---------------------------------------------------------------------------
// 3. A producer killed holding the write lock, half-way through a frame.

const DYING_PRODUCER_MSGS: u32 = 3;
const SECOND_PRODUCER_MSGS: u32 = 1_000;
/// `KIND_MSG` of ring.rs: the garbage imitates real frames, so that
/// publishing it by mistake would deliver bogus messages, not just an error.
const RING_KIND_MSG: u32 = 0xC0A1_0001;

fn tagged_msg(tag: u8, i: u32) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&i.to_le_bytes());
    m.resize(5 + (i % 97) as usize, tag ^ (i as u8));
    m
}

/// What the dying producer leaves past the tail: one whole fake frame and
/// the first 100 bytes of a 256-byte one.
fn half_written_frames() -> Vec<u8> {
    let mut g = Vec::new();
    g.extend_from_slice(&8u32.to_le_bytes());
    g.extend_from_slice(&RING_KIND_MSG.to_le_bytes());
    g.extend_from_slice(b"GARBAGE!");
    g.extend_from_slice(&256u32.to_le_bytes());
    g.extend_from_slice(&RING_KIND_MSG.to_le_bytes());
    g.extend_from_slice(&[0xEE; 100]);
    g
}

#[test]
fn child_ring_producer_dies_mid_frame() {
    let Some((shm, ring)) = ring_child("child_ring_producer_dies_mid_frame") else {
        return;
    };
    let mut w = ring.lock_write(me(), soon()).unwrap();
    for i in 0..DYING_PRODUCER_MSGS {
        assert!(w.try_push(&[&tagged_msg(b'A', i)]).unwrap());
    }
    w.write_garbage_past_tail(&half_written_frames());
    flag(&shm, FLAG_PARKED).store(1, Ordering::Release);
    // Hold the write lock until killed.
    linger()
}

#[test]
fn child_ring_second_producer() {
    let Some((_shm, ring)) = ring_child("child_ring_second_producer") else {
        return;
    };
    let deadline = soon();
    let mut first_lock = true;
    for i in 0..SECOND_PRODUCER_MSGS {
        let msg = tagged_msg(b'B', i);
        loop {
            let mut w = ring.lock_write(me(), deadline).expect("write lock within the deadline");
            // Only the first lock is taken over from the dead producer.
            assert_eq!(w.recovered, first_lock, "message {i}: recovered flag");
            first_lock = false;
            if w.try_push(&[&msg]).unwrap() {
                break;
            }
            drop(w);
            assert!(Instant::now() < deadline.unwrap(), "ring stayed full");
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

#[test]
fn producer_killed_holding_the_write_lock_mid_frame_wedges_nobody_and_leaks_no_partial_frame() {
    let (shm, ring) = ring_block();
    let hdr = ring_header(&shm);
    let fd = shm.raw_fd();
    let dying = spawn_child("child_ring_producer_dies_mid_frame", &[fd], "");
    dying.wait_running_until("the dying producer to park", || parked(&shm));
    assert_eq!(hdr.write.lock.owner.load(Ordering::Acquire), dying.pid(), "it holds the write lock");
    let tail = hdr.write.pos.load(Ordering::Acquire);
    let garbage = half_written_frames();
    assert_eq!(data_at(&shm, tail, garbage.len()), garbage, "the half frame is there, past the tail");

    // The consumer side is not wedged by a producer holding the write lock:
    // it gets the committed frames and nothing of the half-written ones.
    let mut r = ring.lock_read(me(), soon()).unwrap();
    for i in 0..DYING_PRODUCER_MSGS {
        assert_eq!(r.try_pop().unwrap(), Some(tagged_msg(b'A', i)));
    }
    assert_eq!(r.try_pop().unwrap(), None, "unpublished bytes are invisible");
    drop(r);

    // Another producer waits on the lock; then the holder dies.
    let second = spawn_child("child_ring_second_producer", &[fd], "");
    second.wait_running_until("the second producer to wait on the write lock", || {
        hdr.write.lock.waiters.load(Ordering::Acquire) > 0
    });
    dying.assert_running();
    assert_eq!(dying.kill(), Exit::Signal(libc::SIGKILL));
    let killed_at = Instant::now();

    let mut first_after_kill = None;
    let deadline = Instant::now() + PATIENCE;
    let mut i = 0;
    while i < SECOND_PRODUCER_MSGS {
        assert!(Instant::now() < deadline, "only {i} messages from the second producer arrived");
        let got = ring.lock_read(me(), soon()).unwrap().try_pop().unwrap();
        match got {
            Some(m) => {
                assert_eq!(m, tagged_msg(b'B', i), "message {i} of the second producer, and nothing else");
                first_after_kill.get_or_insert_with(|| killed_at.elapsed());
                i += 1;
            }
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    assert_eq!(second.wait_exit(PATIENCE), Exit::Code(0), "the second producer failed");
    assert_eq!(ring.lock_read(me(), soon()).unwrap().try_pop().unwrap(), None);
    assert_eq!(hdr.write.lock.owner.load(Ordering::Acquire), 0, "the write lock ends free");
    let recovery = first_after_kill.unwrap();
    eprintln!("write lock recovered {recovery:?} after SIGKILL");
    assert!(recovery < Duration::from_secs(5), "recovery took {recovery:?}");
}

// ---------------------------------------------------------------------------
// 4. A consumer killed holding the read lock, in the middle of a copy.

const READ_MSGS: u32 = 5;

#[test]
fn child_ring_consumer_dies_mid_copy() {
    let Some((shm, ring)) = ring_child("child_ring_consumer_dies_mid_copy") else {
        return;
    };
    let mut r = ring.lock_read(me(), soon()).unwrap();
    // Park inside the copy: the frame is read, `head` not yet moved.
    let _ = r.try_pop_with(|payload| {
        let ok = payload == tagged_msg(b'M', 0).as_slice();
        flag(&shm, FLAG_PARKED).store(if ok { 1 } else { 2 }, Ordering::Release);
        linger()
    });
    unreachable!("try_pop_with returned with a frame in the ring");
}

#[test]
fn child_ring_next_consumer() {
    let Some((_shm, ring)) = ring_child("child_ring_next_consumer") else {
        return;
    };
    let mut r = ring.lock_read(me(), soon()).expect("read lock within the deadline");
    assert!(r.recovered, "the lock was taken over from the dead consumer");
    for i in 0..READ_MSGS {
        assert_eq!(r.try_pop().unwrap(), Some(tagged_msg(b'M', i)), "message {i}");
    }
    assert_eq!(r.try_pop().unwrap(), None);
}

#[test]
fn consumer_killed_holding_the_read_lock_mid_copy_loses_no_message_to_the_next_consumer() {
    let (shm, ring) = ring_block();
    let hdr = ring_header(&shm);
    let fd = shm.raw_fd();
    for i in 0..READ_MSGS {
        assert!(ring.lock_write(me(), soon()).unwrap().try_push(&[&tagged_msg(b'M', i)]).unwrap());
    }
    let dying = spawn_child("child_ring_consumer_dies_mid_copy", &[fd], "");
    dying.wait_running_until("the dying consumer to park", || parked(&shm));
    assert_eq!(flag(&shm, FLAG_PARKED).load(Ordering::Acquire), 1, "the dying consumer saw the first message");
    assert_eq!(hdr.read.lock.owner.load(Ordering::Acquire), dying.pid(), "it holds the read lock");

    let next = spawn_child("child_ring_next_consumer", &[fd], "");
    next.wait_running_until("the next consumer to wait on the read lock", || {
        hdr.read.lock.waiters.load(Ordering::Acquire) > 0
    });
    dying.assert_running();
    assert_eq!(dying.kill(), Exit::Signal(libc::SIGKILL));
    assert_eq!(next.wait_exit(PATIENCE), Exit::Code(0), "the next consumer failed");
    assert_eq!(ring.used(), 0, "every message was consumed");
    assert_eq!(hdr.read.lock.owner.load(Ordering::Acquire), 0, "the read lock ends free");
}

// ---------------------------------------------------------------------------
// 5. A consumer blocked without deadline when its only producer is killed.

#[test]
fn child_queue_lone_producer() {
    let Some((fds, _)) = child_args("child_queue_lone_producer") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    q.put(Outgoing { inband: b"hello", buffers: &[] }, soon()).unwrap();
    linger()
}

#[test]
fn child_queue_blocked_consumer() {
    let Some((fds, _)) = child_args("child_queue_blocked_consumer") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    let first = q.get_many(1, soon()).unwrap();
    assert!(matches!(&first[0][..], [Part::Inline(m)] if m == b"hello"), "first message: {first:?}");
    // No deadline: only the producer's death can end this wait.
    match q.get_many(1, None) {
        Err(CoreError::Closed(_)) => {}
        other => panic!("blocked get ended with {other:?}, not Closed"),
    }
}

#[test]
fn consumer_blocked_without_deadline_gets_closed_when_the_only_producer_is_killed() {
    let q = SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, arena_bytes: 1 << 20, maxsize: 0 }).unwrap();
    let fd = q.fd().as_raw_fd();
    // A second view of the header, to see the consumer fall asleep.
    let view = SharedMemory::open(q.fd().try_clone_to_owned().unwrap()).unwrap();
    // SAFETY: the queue header is at offset 0 of its memfd for the life of
    // the mapping; its shared fields are atomics.
    let hdr = unsafe { &*view.as_ptr().cast::<QueueHeader>() };
    // The parent holds the queue too: it says it will not put, or the
    // consumer would rightly keep waiting for it.
    q.close_producer();

    let producer = spawn_child("child_queue_lone_producer", &[fd], "");
    producer.wait_running_until("the producer to put", || q.len() == 1);
    let consumer = spawn_child("child_queue_blocked_consumer", &[fd], "");
    consumer.wait_running_until("the consumer to take the message and sleep", || q.is_empty() && hdr.data.0.waiting());
    producer.assert_running();
    assert_eq!(producer.kill(), Exit::Signal(libc::SIGKILL));
    let t = Instant::now();
    assert_eq!(consumer.wait_exit(PATIENCE), Exit::Code(0), "the blocked consumer did not get Closed");
    assert!(t.elapsed() < Duration::from_secs(5), "the consumer took {:?} to notice", t.elapsed());
}

// ---------------------------------------------------------------------------
// 6. A pipe across processes, then the peer killed.

const ECHOES: u64 = 1_000;

fn echo_len(i: u64) -> usize {
    ((i * 37_813) % 70_000) as usize
}

#[test]
fn child_pipe_echo() {
    let Some((fds, _)) = child_args("child_pipe_echo") else {
        return;
    };
    let conn = Connection::new(inherited(fds[0]), true, true);
    for _ in 0..ECHOES {
        assert!(conn.poll(Some(PATIENCE)).unwrap(), "nothing to echo");
        let m = conn.recv().unwrap();
        conn.send(&[&m]).unwrap();
    }
    linger()
}

#[test]
fn pipe_echoes_across_processes_and_a_killed_peer_is_end_of_file() {
    let (ours, theirs) = pipe(true).unwrap();
    let echo = spawn_child("child_pipe_echo", &[theirs.raw_fd()], "");
    // Our copy of the child's end would keep the socket open after the
    // child dies.
    drop(theirs);
    std::thread::scope(|s| {
        // Send from one thread while this one reads the echoes, so that
        // neither side's socket buffer can fill up and block both.
        let sender = s.spawn(|| {
            for i in 0..ECHOES {
                ours.send(&[&pattern(i, echo_len(i))]).unwrap();
            }
        });
        for i in 0..ECHOES {
            assert!(ours.poll(Some(PATIENCE)).unwrap(), "echo {i} did not come");
            let m = ours.recv().unwrap();
            assert!(m == pattern(i, echo_len(i)), "echo {i} differs");
        }
        sender.join().unwrap();
    });
    echo.assert_running();
    assert_eq!(echo.kill(), Exit::Signal(libc::SIGKILL));
    assert!(ours.poll(Some(PATIENCE)).unwrap(), "end of file is readable");
    assert!(matches!(ours.recv(), Err(CoreError::Closed(_))));
    assert!(matches!(ours.send(&[b"anyone?"]), Err(CoreError::Closed(_))));
}

// ---------------------------------------------------------------------------
// 7. Arena blocks of processes killed in the middle of a put or a get come
//    back; those of a committed message stay.

/// The arena of these queues: one `HALF` message fits, and `MOST` fits
/// only once that one is gone.
const ARENA_4M: u64 = 4 << 20;
const HALF: usize = 3 << 19;
const MOST: usize = 3 << 20;

fn arena_queue(maxsize: u64) -> std::sync::Arc<SharedQueue> {
    SharedQueue::create(QueueConfig { ring_bytes: 64 << 10, arena_bytes: ARENA_4M, maxsize }).unwrap()
}

fn control_page() -> SharedMemory {
    SharedMemory::create("xproc-ctl", CTL).unwrap()
}

/// In a child: parks at the core's test hook `point` (sets `FLAG_PARKED` in
/// the control page `ctl`, a `control_page` of the parent's, then lingers
/// until killed).
fn park_at(point: Point, ctl: RawFd) {
    let ctl = SharedMemory::open(inherited(ctl)).unwrap();
    corral_core::testing::set_hook(move |p| {
        if p == point {
            flag(&ctl, FLAG_PARKED).store(1, Ordering::Release);
            linger()
        }
    });
}

/// Starts `role` on `q` and a fresh control page (its `fds` 0 and 1, and
/// `arg`), registered first as a holder of `q` if `holder` (a producer:
/// the sweep frees a dead holder's blocks), and SIGKILLs it once it has
/// parked (`park_at`).
fn kill_when_parked(role: &'static str, q: &SharedQueue, arg: &str, holder: bool) {
    let ctl = control_page();
    let child = spawn_child(role, &[q.fd().as_raw_fd(), ctl.raw_fd()], arg);
    if holder {
        q.add_holder(child.pid()).unwrap();
    }
    child.wait_running_until(&format!("{role} to park"), || parked(&ctl));
    assert_eq!(child.kill(), Exit::Signal(libc::SIGKILL));
}

/// A put of `MOST` bytes, which needs the space of any earlier message,
/// then its get: the arena must have had room for it, and is empty after.
fn assert_arena_whole_again(q: &SharedQueue) {
    let big = pattern(7, MOST);
    q.put(Outgoing { inband: b"most", buffers: &[&big] }, soon()).expect("room for 3 MiB in the emptied arena");
    let mut got = q.get_many(1, soon()).unwrap();
    let parts = got.pop().unwrap();
    assert!(take_part(q, &parts[1]) == big);
    assert_eq!(q.arena_used().unwrap(), 0, "nothing left in use");
}

#[test]
fn child_queue_put_half() {
    let Some((fds, arg)) = child_args("child_queue_put_half") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    if arg == "park-before-publish" {
        park_at(Point::QueuePublishing, fds[1]);
    }
    // With "wait" the queue is full (maxsize) and this waits until killed.
    q.put(Outgoing { inband: b"half", buffers: &[&pattern(1, HALF)] }, soon()).unwrap();
    if arg == "wait" || arg == "park-before-publish" {
        panic!("the put returned: {arg}");
    }
}

#[test]
fn producer_killed_while_waiting_for_room_leaves_no_arena_block_behind() {
    let q = arena_queue(1);
    q.put(Outgoing { inband: b"fills the bound", buffers: &[] }, soon()).unwrap();
    // A second view of the header, to see the producer fall asleep.
    let view = SharedMemory::open(q.fd().try_clone_to_owned().unwrap()).unwrap();
    // SAFETY: the queue header is at offset 0 of its memfd for the life of
    // the mapping; its shared fields are atomics.
    let hdr = unsafe { &*view.as_ptr().cast::<QueueHeader>() };
    let producer = spawn_child("child_queue_put_half", &[q.fd().as_raw_fd()], "wait");
    q.add_holder(producer.pid()).unwrap();
    // Asleep on `space` with its block allocated: it filled the block and
    // waits for the item bound (the arena has room).
    producer.wait_running_until("the producer to fill its block and wait for room", || {
        hdr.space.0.waiting() && q.arena_used().unwrap() >= HALF as u64
    });
    assert_eq!(producer.kill(), Exit::Signal(libc::SIGKILL));
    let first = q.get_many(1, soon()).unwrap();
    assert!(matches!(&first[0][..], [Part::Inline(m)] if m == b"fills the bound"));
    assert!(q.is_empty());
    assert_arena_whole_again(&q);
}

#[test]
fn a_message_committed_by_a_producer_that_exited_keeps_its_blocks_under_arena_pressure() {
    let q = arena_queue(0);
    let producer = spawn_child("child_queue_put_half", &[q.fd().as_raw_fd()], "");
    q.add_holder(producer.pid()).unwrap();
    assert_eq!(producer.wait_exit(PATIENCE), Exit::Code(0));
    assert_eq!(q.len(), 1);
    // No room for 3 MiB: the put looks for orphans (its blocks are QUEUED,
    // their holder is dead) and must leave them, as the message is unread.
    let big = pattern(7, MOST);
    let r = q.put(Outgoing { inband: b"most", buffers: &[&big] }, Some(Instant::now() + Duration::from_millis(300)));
    assert!(matches!(r, Err(CoreError::Full)), "{r:?}");
    assert!(q.arena_used().unwrap() >= HALF as u64);
    let mut got = q.get_many(1, soon()).unwrap();
    let parts = got.pop().unwrap();
    assert_eq!(take_part(&q, &parts[0]), b"half");
    assert!(take_part(&q, &parts[1]) == pattern(1, HALF), "the message kept its block intact");
    assert_arena_whole_again(&q);
}

#[test]
fn producer_killed_between_publishing_its_blocks_and_its_frame_leaves_no_arena_block_behind() {
    let q = arena_queue(0);
    kill_when_parked("child_queue_put_half", &q, "park-before-publish", true);
    assert!(q.is_empty(), "the frame was never published");
    assert!(q.arena_used().unwrap() >= HALF as u64, "its block is QUEUED, in no frame");
    // The sweep takes the write lock over from the dead producer.
    assert_arena_whole_again(&q);
}

#[test]
fn child_queue_get_parks() {
    let Some((fds, arg)) = child_args("child_queue_get_parks") else {
        return;
    };
    let q = SharedQueue::open(inherited(fds[0])).unwrap();
    park_at(if arg == "freeing" { Point::ArenaFreeing } else { Point::QueuePopped }, fds[1]);
    let mut got = q.get_many(1, soon()).unwrap(); // "after-pop": parks inside the get
    let parts = got.pop().unwrap();
    take_part(&q, &parts[1]); // "freeing": frees the block, parks inside the free
    panic!("the consumer did not park ({arg})");
}

/// A queue holding one message of a `HALF` block, and its consumer killed
/// where `child_queue_get_parks` parks (`at`), its block still counted.
fn consumer_killed_in_a_get(at: &str) -> std::sync::Arc<SharedQueue> {
    let q = arena_queue(0);
    q.put(Outgoing { inband: b"half", buffers: &[&pattern(1, HALF)] }, soon()).unwrap();
    kill_when_parked("child_queue_get_parks", &q, at, false);
    assert!(q.arena_used().unwrap() >= HALF as u64, "its block is still counted");
    q
}

#[test]
fn consumer_killed_between_taking_a_frame_and_holding_its_blocks_leaves_no_arena_block_behind() {
    let q = consumer_killed_in_a_get("after-pop");
    assert!(q.is_empty(), "the frame was consumed");
    // The sweep takes the read lock over from the dead consumer (its block
    // is still QUEUED).
    assert_arena_whole_again(&q);
}

#[test]
fn consumer_killed_inside_a_free_leaves_in_use_right_after_reclaim() {
    let q = consumer_killed_in_a_get("freeing"); // killed before its in_use update
    assert_eq!(q.reclaim_dead_blocks(soon()).unwrap(), 1, "the block it was freeing comes back");
    assert_eq!(q.arena_used().unwrap(), 0, "and in_use is recounted");
    assert_arena_whole_again(&q);
}
