//! Handing a descriptor to a process that did not inherit it.
//!
//! When a Queue or Pipe end is pickled outside of a process start (put into
//! another queue, sent through a pipe), the pickle cannot carry the
//! descriptor itself. The sender registers a duplicate with this process's
//! broker under a random token and pickles a [`Ticket`] (broker address,
//! the sender's pid, token); the receiver connects to the broker, an
//! abstract-namespace Unix socket served by a thread, sends the token and
//! gets the descriptor by SCM_RIGHTS (what `multiprocessing.resource_sharer`
//! does). The sending process must still be alive when the receiver
//! unpickles.
//!
//! # Threat model
//!
//! Other local users are the adversary. Abstract socket names have no owner
//! or permission bits, anyone in the network namespace can connect to one
//! or bind a free one, and every name is listed in `/proc/net/unix`. So:
//!
//! - **Who asks.** At accept the broker reads `SO_PEERCRED` of the client
//!   and closes any connection whose uid is not the broker's euid, before
//!   reading a byte. Root is not special: a root broker serves root only.
//!   The 64-bit random tokens are a second lock, never the only one.
//! - **Who answers.** Once the sender has exited its name is free, and
//!   another user may bind it and answer with a descriptor of their own (a
//!   "queue" whose pickles would then run as the receiver). After
//!   connecting and before sending the token, the receiver reads
//!   `SO_PEERCRED` of the server (the credentials of the process that
//!   called `listen`) and requires its own euid and the pid the ticket
//!   names; otherwise it fails with "the process that sent this object has
//!   exited before it was loaded". A forked child would answer with its
//!   parent's pid through an inherited listener, so a fork handler closes
//!   the broker's listener in the child: the name dies with its process.
//! - **Stalling.** The broker polls the listener and its open connections
//!   (non-blocking, partial reads resumed); a connection that has not sent
//!   its whole token within [`CONNECTION_DEADLINE`] is dropped, and past
//!   [`MAX_CONNECTIONS`] the oldest is, so a silent or slow peer never
//!   delays the others. A receiver with a timeout waits that long (never
//!   less than [`MIN_FETCH_WAIT`]: the message holding the ticket is
//!   already consumed, so a deadline that had almost passed must not throw
//!   a healthy hand-over away). A receiver without one waits while the
//!   sender lives, as any blocking get does: a stalled sender (stopped,
//!   overloaded, in a debugger) is waited for, an exited one is noticed at
//!   once (its sockets close). [`Fetch`] splits the wait into `begin` and
//!   repeatable `finish` calls, so the bindings wait in slices and check
//!   for signals between them.
//! - **Abandoned hand-overs.** A receiver that gives up closes its socket;
//!   when the broker later answers it and the send fails because the peer
//!   is gone, a one-shot registration is dropped there and then: the
//!   message that carried its ticket was consumed, nobody can load it again.
//!
//! Why not `pidfd_getfd(2)`: it needs ptrace rights over the sender, which
//! Yama `ptrace_scope=1` (Ubuntu's default) denies to a child taking from
//! its parent. Why not a filesystem socket in a 0700 directory: once the
//! sender exits and its directory is removed, another user can create the
//! same path, so the receiver must check the peer's credentials anyway;
//! and a killed process leaves its directory behind. The credential checks
//! are what the kernel guarantees, and they suffice on the abstract name.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::sockopt::{set_socket_timeout, socket_peercred, Timeout};
use rustix::net::{
    accept_with, bind, connect, listen, recv, recvmsg, send, sendmsg, socket_with, AddressFamily, RecvAncillaryBuffer,
    RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags,
    SocketType, UCred,
};

use crate::error::{CoreError, Result};
use crate::sys::deadline::Deadline;
use crate::sys::singleton::{PerProcess, Service};

/// The shortest wait a receiver grants the broker, whatever its caller's
/// remaining time.
pub const MIN_FETCH_WAIT: Duration = Duration::from_secs(1);
/// How long the broker keeps a connection that has not sent its token.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);
/// Connections the broker keeps open at once; past that the oldest goes.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections accepted per wake-up, so a flood of connects does not
/// starve the requests already open.
const ACCEPT_BATCH: usize = 64;
/// How long the broker stops accepting when out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const SENDER_EXITED: &str = "the process that sent this object has exited before it was loaded \
     (a pickled corral queue, pipe, lock or shared array must be unpickled while its sender is alive)";

/// Where and under which token a descriptor waits for its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Abstract socket name of the sender's broker.
    pub address: Vec<u8>,
    /// The sender's pid: the only process allowed to answer at `address`.
    pub pid: u32,
    /// Token of the registration.
    pub token: u64,
}

/// A registered descriptor: handed out once, or to every receiver until
/// `unshare` (a `corral.share`d array read by many workers).
struct Entry {
    fd: OwnedFd,
    reusable: bool,
    /// Dropped with the registration (a queue's `Lent`: the queue counts
    /// as held by this process until the registration ends).
    _guard: Option<Box<dyn Send>>,
}

type Pending = Arc<Mutex<HashMap<u64, Entry>>>;

/// This process's broker: its address and registrations, served by the
/// `corral-fd-broker` thread. A forked child starts its own (`PerProcess`)
/// and closes the listener it inherited at the fork itself.
struct Broker {
    pid: u32,
    address: Vec<u8>,
    pending: Pending,
}

impl Service for Broker {
    /// The parent's registrations are not this process's to serve: close
    /// the inherited duplicates (and drop their guards). `try_lock`: a
    /// thread of the parent may have held the map at the fork.
    fn forget_inherited(&self) {
        if let Ok(mut p) = self.pending.try_lock() {
            p.clear();
        }
    }
}

static BROKER: PerProcess<Broker> = PerProcess::with_fork_handler("fd broker", close_listener_in_child);

/// The broker's listening descriptor, for the fork handler (-1: none).
static LISTENER: AtomicI32 = AtomicI32::new(-1);

extern "C" fn close_listener_in_child() {
    let fd = LISTENER.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: in the forked child the broker thread that owns this
        // descriptor does not exist, so nothing else uses or closes this
        // number; close is async-signal-safe. The parent's copy stays open.
        unsafe { libc::close(fd) };
    }
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| CoreError::os("getrandom", e))?;
    Ok(u64::from_le_bytes(b))
}

/// A Unix stream socket and the abstract address `name`.
fn unix_socket(name: &[u8], flags: SocketFlags) -> Result<(OwnedFd, SocketAddrUnix)> {
    let addr = SocketAddrUnix::new_abstract_name(name).map_err(|e| CoreError::os("socket address", e))?;
    let sock = socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC | flags, None)
        .map_err(|e| CoreError::os("socket", e))?;
    Ok((sock, addr))
}

fn my_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Starts the broker thread of process `pid`. (`close_listener_in_child`,
/// the fork handler, only swaps an atomic and closes a descriptor: both
/// async-signal-safe.)
fn start_broker(pid: u32) -> Result<Broker> {
    let address = format!("corral-fd-{pid}-{:016x}", random_u64()?).into_bytes();
    let (sock, addr) = unix_socket(&address, SocketFlags::NONBLOCK)?;
    bind(&sock, &addr).map_err(|e| CoreError::os("bind", e))?;
    listen(&sock, 128).map_err(|e| CoreError::os("listen", e))?;
    let pending: Pending = Arc::default();
    let served = pending.clone();
    let raw = sock.as_raw_fd();
    let euid = my_euid();
    std::thread::Builder::new()
        .name("corral-fd-broker".into())
        .spawn(move || serve(sock, served, euid))
        .map_err(|e| CoreError::os("spawn broker thread", e))?;
    LISTENER.store(raw, Ordering::Relaxed);
    Ok(Broker { pid, address, pending })
}

/// A client connection waiting for its 8-byte token.
struct Conn {
    fd: OwnedFd,
    token: [u8; 8],
    got: usize,
    deadline: Instant,
}

fn serve(listener: OwnedFd, pending: Pending, euid: u32) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        conns.retain(|c| c.deadline > now);
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        let listening = paused_until.is_none();
        let wake = conns.iter().map(|c| c.deadline).chain(paused_until).min();
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
            if listening {
                fds.push(PollFd::new(&listener, PollFlags::IN));
            }
            fds.extend(conns.iter().map(|c| PollFd::new(&c.fd, PollFlags::IN)));
            let ts = Deadline::from(wake).timespec();
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => {
                    // Cannot happen with valid descriptors; do not spin.
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            }
            fds.iter().map(|p| !p.revents().is_empty()).collect()
        };
        let (listener_ready, conn_ready) = if listening { (ready[0], &ready[1..]) } else { (false, &ready[..]) };
        let mut i = 0;
        conns.retain_mut(|c| {
            let is_ready = conn_ready.get(i).copied().unwrap_or(false);
            i += 1;
            !is_ready || !advance(c, &pending)
        });
        if listener_ready {
            paused_until = accept_some(&listener, &mut conns, euid);
        }
    }
}

/// Accepts what waits at the listener, keeping only clients of `euid`.
/// Returns when to accept again if the process ran out of resources.
fn accept_some(listener: &OwnedFd, conns: &mut Vec<Conn>, euid: u32) -> Option<Instant> {
    for _ in 0..ACCEPT_BATCH {
        match accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => {
                // Another user's connection is closed unread.
                if !matches!(socket_peercred(&fd), Ok(UCred { uid, .. }) if uid.as_raw() == euid) {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    conns.remove(0);
                }
                conns.push(Conn { fd, token: [0; 8], got: 0, deadline: Instant::now() + CONNECTION_DEADLINE });
            }
            Err(Errno::AGAIN) => return None,
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(_) => return Some(Instant::now() + ACCEPT_BACKOFF),
        }
    }
    None
}

/// Reads what the client sent; once the token is whole, answers. Returns
/// true when the connection is finished.
fn advance(c: &mut Conn, pending: &Pending) -> bool {
    match recv(&c.fd, &mut c.token[c.got..], RecvFlags::DONTWAIT) {
        Ok((0, _)) => true,
        Ok((n, _)) => {
            c.got += n;
            if c.got == c.token.len() {
                answer(&c.fd, u64::from_le_bytes(c.token), pending);
                true
            } else {
                false
            }
        }
        Err(Errno::AGAIN | Errno::INTR) => false,
        Err(_) => true,
    }
}

fn answer(conn: &OwnedFd, token: u64, pending: &Pending) {
    let found =
        pending.lock().ok().and_then(|p| p.get(&token).and_then(|e| e.fd.try_clone().ok().map(|fd| (fd, e.reusable))));
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    let status: [u8; 1] = match &found {
        Some((fd, _)) => {
            fds = [fd.as_fd()];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            [1]
        }
        None => [0],
    };
    let sent = sendmsg(conn, &[IoSlice::new(&status)], &mut control, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
    // A one-shot registration is spent once it has been handed over, or
    // once its receiver is found gone: it gave up (a timeout, a signal) after
    // consuming the message that carried the ticket, so no one can ask again.
    let spent = matches!(sent, Ok(1) | Err(Errno::PIPE | Errno::CONNRESET));
    if let (true, Some((_, false))) = (spent, &found) {
        if let Ok(mut p) = pending.lock() {
            p.remove(&token);
        }
    }
}

/// Registers a duplicate of `fd` for one receiver and returns its ticket.
pub fn share(fd: BorrowedFd<'_>) -> Result<Ticket> {
    register(fd, false, None)
}

/// Registers a duplicate of `fd` for any number of receivers, until
/// `unshare(ticket.token)`.
pub fn share_reusable(fd: BorrowedFd<'_>) -> Result<Ticket> {
    register(fd, true, None)
}

/// `share_reusable`, and `guard` is dropped when the registration is
/// withdrawn (or, in a forked child, forgotten).
pub fn share_reusable_with(fd: BorrowedFd<'_>, guard: Box<dyn Send>) -> Result<Ticket> {
    register(fd, true, Some(guard))
}

/// Withdraws a registration (the duplicate is closed).
pub fn unshare(token: u64) {
    if let Some(b) = BROKER.get() {
        if let Ok(mut p) = b.pending.lock() {
            p.remove(&token);
        }
    }
}

/// Registrations this process's broker holds now (one-shot ones not yet
/// fetched and reusable ones not yet withdrawn).
pub fn registrations() -> usize {
    BROKER.get().map_or(0, |b| b.pending.lock().map_or(0, |p| p.len()))
}

/// Reusable registrations withdrawn together when the lease is dropped.
///
/// A pool task's pickled arguments name the descriptors of the corral
/// objects in them (queues, pipe ends, locks). A one-shot registration
/// would be spent by the first worker that loads the task, and a task
/// re-run after its worker died loads its arguments again: so the pool
/// registers them as reusable and gives the task a lease on them, dropped
/// with the task once it can no longer be sent (done, lost, cancelled,
/// rejected or abandoned).
#[derive(Debug, Default)]
pub struct Lease {
    /// Tokens of `share_reusable` registrations.
    tokens: Vec<u64>,
}

impl Lease {
    /// Takes over the registrations `tokens` (made by [`share_reusable`]).
    pub fn new(tokens: Vec<u64>) -> Self {
        Lease { tokens }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        for &token in &self.tokens {
            unshare(token);
        }
    }
}

fn register(fd: BorrowedFd<'_>, reusable: bool, on_drop: Option<Box<dyn Send>>) -> Result<Ticket> {
    let dup = fd.try_clone_to_owned().map_err(|e| CoreError::os("dup", e))?;
    let token = random_u64()?;
    let broker = BROKER.get_or_start(start_broker)?;
    broker
        .pending
        .lock()
        .map_err(|_| CoreError::Invalid("fd broker poisoned".into()))?
        .insert(token, Entry { fd: dup, reusable, _guard: on_drop });
    Ok(Ticket { address: broker.address.clone(), pid: broker.pid, token })
}

fn timed_out() -> CoreError {
    CoreError::os(
        "the process that sent this object did not hand it over in time (it is alive but stalled or overloaded)",
        std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
    )
}

/// Refuses a server that is not the sender: another user, or another
/// process of ours, bound the name after the sender exited.
fn check_server(sock: &OwnedFd, ticket: &Ticket) -> Result<()> {
    let cred = socket_peercred(sock).map_err(|e| CoreError::os("SO_PEERCRED of the fd broker", e))?;
    let (uid, pid) = (cred.uid.as_raw(), cred.pid.as_raw_nonzero().get());
    let euid = my_euid();
    if uid != euid || i64::from(pid) != i64::from(ticket.pid) {
        return Err(CoreError::Closed(format!(
            "{SENDER_EXITED}; its broker address is now held by pid {pid} of uid {uid}, not the sender \
             (pid {}, uid {euid}): refused",
            ticket.pid
        )));
    }
    Ok(())
}

/// Sleeps in `poll` until `fd` is readable; false once `deadline` passes.
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> Result<bool> {
    loop {
        let deadline = Deadline::at(deadline);
        if deadline.expired() {
            return Ok(false);
        }
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, deadline.timespec().as_ref()) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(CoreError::os("poll(fd broker)", e)),
        }
    }
}

/// True for the error of a [`Fetch`] step whose deadline passed while the
/// sender, alive, did not answer: the step may be called again.
pub fn is_stalled(e: &CoreError) -> bool {
    matches!(e, CoreError::Os { source, .. } if source.raw_os_error() == Some(libc::ETIMEDOUT))
}

/// A hand-over in progress: connected to the sender's broker (checked to be
/// the sender), token sent, answer awaited.
#[derive(Debug)]
pub struct Fetch {
    /// The connection to the sender's broker.
    sock: OwnedFd,
}

impl Fetch {
    /// Connects to the broker of `ticket` and sends the token. A connect
    /// waits while the broker's backlog is full, until `deadline`: then
    /// the error [`is_stalled`] and nothing was sent (begin again).
    pub fn begin(ticket: &Ticket, deadline: Instant) -> Result<Fetch> {
        let (sock, addr) = unix_socket(&ticket.address, SocketFlags::empty())?;
        // A blocking connect waits while the backlog is full, for SO_SNDTIMEO
        // (zero would mean no limit: at least a millisecond).
        let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        set_socket_timeout(&sock, Timeout::Send, Some(wait)).map_err(|e| CoreError::os("SO_SNDTIMEO", e))?;
        loop {
            match connect(&sock, &addr) {
                Ok(()) => break,
                Err(Errno::INTR) if Instant::now() < deadline => {}
                Err(Errno::INTR | Errno::AGAIN) => return Err(timed_out()),
                Err(Errno::CONNREFUSED | Errno::NOENT) => return Err(CoreError::Closed(SENDER_EXITED.into())),
                Err(e) => return Err(CoreError::Closed(format!("{SENDER_EXITED}: connect: {e}"))),
            }
        }
        // Before the token leaves this process.
        check_server(&sock, ticket)?;
        let token = ticket.token.to_le_bytes();
        match send(&sock, &token, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) if n == token.len() => Ok(Fetch { sock }),
            // A fresh socket's buffer takes 8 bytes: anything else is a peer gone.
            Ok(_) | Err(_) => Err(CoreError::Closed(SENDER_EXITED.into())),
        }
    }

    /// Waits until `deadline` for the broker's answer. When the deadline
    /// passes first the error [`is_stalled`] and the hand-over is intact:
    /// call again to wait longer. Dropping the `Fetch` abandons it (the
    /// broker then drops a one-shot registration when it gets round to it).
    pub fn finish(&self, deadline: Instant) -> Result<OwnedFd> {
        let mut status = [0u8; 1];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let (bytes, mut fds) = loop {
            if !wait_readable(&self.sock, deadline)? {
                return Err(timed_out());
            }
            let mut iov = [IoSliceMut::new(&mut status)];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            match recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT) {
                Ok(r) => {
                    let mut fds: Vec<OwnedFd> = Vec::new();
                    for msg in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = msg {
                            fds.extend(received);
                        }
                    }
                    break (r.bytes, fds);
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                // The sender died with the connection still in its backlog.
                Err(Errno::CONNRESET) => break (0, Vec::new()),
                Err(e) => return Err(CoreError::os("recvmsg(fd reply)", e)),
            }
        };
        if bytes == 0 {
            return Err(CoreError::Closed(format!("{SENDER_EXITED}: it closed the connection without answering")));
        }
        if status[0] != 1 {
            return Err(CoreError::Invalid(
                "this object was already unpickled once, or its sender forgot it: a pickled corral channel can be loaded once".into(),
            ));
        }
        fds.pop().ok_or_else(|| CoreError::corrupt("fd reply", "no descriptor attached"))
    }
}

/// Fetches the descriptor behind `ticket` from the sender's broker, waiting
/// at most `timeout` (at least [`MIN_FETCH_WAIT`]), or while the sender
/// lives if `None` (without checking for signals: the bindings drive
/// [`Fetch`] in slices instead).
pub fn fetch(ticket: &Ticket, timeout: Option<Duration>) -> Result<OwnedFd> {
    /// Any deadline: `None` waits in such steps for ever.
    const STEP: Duration = Duration::from_secs(3600);
    let limit = timeout.map(|t| Instant::now() + t.max(MIN_FETCH_WAIT));
    let deadline = || limit.unwrap_or_else(|| Instant::now() + STEP);
    let f = loop {
        match Fetch::begin(ticket, deadline()) {
            Err(e) if timeout.is_none() && is_stalled(&e) => {}
            other => break other?,
        }
    };
    loop {
        match f.finish(deadline()) {
            Err(e) if timeout.is_none() && is_stalled(&e) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::liveness::my_pid;
    use std::sync::mpsc;

    /// A bound for proving a hang is gone, generous for a busy machine.
    const HANG: Duration = Duration::from_secs(30);

    fn connect_raw(ticket: &Ticket) -> OwnedFd {
        let (sock, addr) = unix_socket(&ticket.address, SocketFlags::empty()).unwrap();
        connect(&sock, &addr).unwrap();
        sock
    }

    /// `fetch` on another thread; None if it did not return within HANG.
    fn fetch_bounded(ticket: &Ticket, timeout: Option<Duration>) -> Option<Result<OwnedFd>> {
        let (tx, rx) = mpsc::channel();
        let t = ticket.clone();
        std::thread::spawn(move || {
            let _ = tx.send(fetch(&t, timeout));
        });
        rx.recv_timeout(HANG).ok()
    }

    #[test]
    fn a_shared_descriptor_is_fetched_once() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        // SAFETY: in bounds of the 4096-byte mapping.
        unsafe { shm.as_ptr().write(5) };
        let ticket = share(shm.fd()).unwrap();
        assert_eq!(ticket.pid, my_pid());
        let fd = fetch(&ticket, None).unwrap();
        let again = crate::sys::shm::SharedMemory::open(fd).unwrap();
        // SAFETY: same memfd.
        assert_eq!(unsafe { again.as_ptr().read() }, 5);
        assert!(fetch(&ticket, None).is_err(), "tokens are one-shot");
    }

    #[test]
    fn a_reusable_descriptor_serves_many_until_unshared() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share_reusable(shm.fd()).unwrap();
        for _ in 0..3 {
            assert!(fetch(&ticket, None).is_ok());
        }
        unshare(ticket.token);
        assert!(fetch(&ticket, None).is_err());
    }

    #[test]
    fn a_lease_withdraws_its_registrations_when_dropped() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let a = share_reusable(shm.fd()).unwrap();
        let b = share_reusable(shm.fd()).unwrap();
        let lease = Lease::new(vec![a.token, b.token]);
        assert!(fetch(&a, None).is_ok() && fetch(&a, None).is_ok() && fetch(&b, None).is_ok());
        drop(lease);
        assert!(fetch(&a, None).is_err() && fetch(&b, None).is_err());
    }

    #[test]
    fn an_unknown_broker_is_a_clear_error() {
        let t = Ticket { address: b"corral-fd-nobody".to_vec(), pid: 1, token: 1 };
        match fetch(&t, None) {
            Err(CoreError::Closed(msg)) => assert!(msg.contains("has exited before it was loaded"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn idle_and_half_sent_connections_do_not_stall_a_fetch() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share(shm.fd()).unwrap();
        let idle = connect_raw(&ticket);
        let half = connect_raw(&ticket);
        assert_eq!(send(&half, &[1, 2, 3], SendFlags::NOSIGNAL).unwrap(), 3);
        let got = fetch_bounded(&ticket, None).expect("a fetch stalled behind idle connections");
        assert!(got.is_ok(), "{got:?}");
        drop((idle, half));
    }

    #[test]
    fn more_idle_connections_than_the_bound_do_not_stall_a_fetch() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share(shm.fd()).unwrap();
        let idle: Vec<OwnedFd> = (0..MAX_CONNECTIONS + 10).map(|_| connect_raw(&ticket)).collect();
        let got = fetch_bounded(&ticket, None).expect("a fetch stalled behind idle connections");
        assert!(got.is_ok(), "{got:?}");
        drop(idle);
    }

    #[test]
    fn the_broker_drops_a_connection_that_stays_silent() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share(shm.fd()).unwrap();
        let idle = connect_raw(&ticket);
        set_socket_timeout(&idle, Timeout::Recv, Some(HANG)).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(recv(&idle, &mut b[..], RecvFlags::empty()).unwrap().0, 0, "closed without a reply");
    }

    #[test]
    fn a_server_answering_under_another_pid_is_refused_before_the_token_is_sent() {
        // An impostor: a listener of this process at a name a ticket of
        // another pid points to (as if the sender had exited and the name
        // been taken).
        let name = format!("corral-fd-impostor-{:016x}", random_u64().unwrap()).into_bytes();
        let (sock, addr) = unix_socket(&name, SocketFlags::empty()).unwrap();
        bind(&sock, &addr).unwrap();
        listen(&sock, 8).unwrap();
        let ticket = Ticket { address: name, pid: my_pid() + 1, token: 7 };
        match fetch(&ticket, None) {
            Err(CoreError::Closed(msg)) => {
                assert!(msg.contains("has exited before it was loaded") && msg.contains("refused"), "{msg}")
            }
            other => panic!("an impostor was trusted: {other:?}"),
        }
        let conn = accept_with(&sock, SocketFlags::CLOEXEC).unwrap();
        set_socket_timeout(&conn, Timeout::Recv, Some(HANG)).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(recv(&conn, &mut b[..], RecvFlags::empty()).unwrap().0, 0, "the token never reached it");
    }

    fn is_registered(token: u64) -> bool {
        BROKER.get().is_some_and(|b| b.pending.lock().unwrap().contains_key(&token))
    }

    #[test]
    fn a_one_shot_registration_goes_when_its_receiver_gave_up_before_the_answer() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share(shm.fd()).unwrap();
        // A receiver that sent the token and left (its timeout passed while
        // the sender was stalled): the broker's answer finds no one.
        let gone = connect_raw(&ticket);
        assert_eq!(send(&gone, &ticket.token.to_le_bytes(), SendFlags::NOSIGNAL).unwrap(), 8);
        drop(gone);
        let deadline = Instant::now() + HANG;
        while is_registered(ticket.token) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!is_registered(ticket.token), "the abandoned registration stayed for the sender's life");
    }

    #[test]
    fn a_fetch_step_that_ran_out_of_time_can_be_waited_on_again() {
        // A listener of this process that accepts only when told: a sender
        // stalled, then resumed.
        let name = format!("corral-fd-resumed-{:016x}", random_u64().unwrap()).into_bytes();
        let (sock, addr) = unix_socket(&name, SocketFlags::empty()).unwrap();
        bind(&sock, &addr).unwrap();
        listen(&sock, 8).unwrap();
        let ticket = Ticket { address: name, pid: my_pid(), token: 7 };
        let f = Fetch::begin(&ticket, Instant::now() + HANG).unwrap();
        let e = f.finish(Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert!(is_stalled(&e), "{e:?}");
        // The sender resumes and answers: the same hand-over completes.
        let conn = accept_with(&sock, SocketFlags::CLOEXEC).unwrap();
        let mut token = [0u8; 8];
        assert_eq!(recv(&conn, &mut token[..], RecvFlags::WAITALL).unwrap().0, 8);
        assert_eq!(u64::from_le_bytes(token), 7);
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let fds = [shm.fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(&conn, &[IoSlice::new(&[1])], &mut control, SendFlags::NOSIGNAL).unwrap();
        assert!(f.finish(Instant::now() + HANG).is_ok());
    }

    #[test]
    fn a_fetch_without_timeout_fails_at_once_when_the_stalled_sender_goes() {
        let name = format!("corral-fd-dies-{:016x}", random_u64().unwrap()).into_bytes();
        let (sock, addr) = unix_socket(&name, SocketFlags::empty()).unwrap();
        bind(&sock, &addr).unwrap();
        listen(&sock, 8).unwrap();
        let ticket = Ticket { address: name, pid: my_pid(), token: 7 };
        let f = Fetch::begin(&ticket, Instant::now() + HANG).unwrap();
        drop(sock); // the sender exits with the connection in its backlog
        match f.finish(Instant::now() + HANG) {
            Err(CoreError::Closed(msg)) => assert!(msg.contains("has exited before it was loaded"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fetch_from_a_broker_that_never_answers_ends_at_its_timeout() {
        // A listener of this process that never accepts: the sender stalled.
        let name = format!("corral-fd-stalled-{:016x}", random_u64().unwrap()).into_bytes();
        let (sock, addr) = unix_socket(&name, SocketFlags::empty()).unwrap();
        bind(&sock, &addr).unwrap();
        listen(&sock, 8).unwrap();
        let ticket = Ticket { address: name, pid: my_pid(), token: 7 };
        let got = fetch_bounded(&ticket, Some(Duration::from_millis(100))).expect("the fetch ignored its timeout");
        match got {
            Err(CoreError::Os { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::ETIMEDOUT)),
            other => panic!("{other:?}"),
        }
        drop(sock);
    }
}
