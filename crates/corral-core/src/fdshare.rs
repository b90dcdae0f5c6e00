//! Handing a descriptor to a process that did not inherit it.
//!
//! When a Queue or Pipe end is pickled outside of a process start (put into
//! another queue, sent through a pipe), the pickle cannot carry the
//! descriptor itself. The sender registers a duplicate with this process's
//! broker under a random one-shot token and pickles (broker address, token);
//! the receiver connects to the broker, an abstract-namespace Unix socket,
//! and gets the descriptor by SCM_RIGHTS. This is what
//! `multiprocessing.resource_sharer` does, moved into a Rust thread.
//! As there, the sending process must still be alive when the receiver
//! unpickles.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::net::{
    accept_with, bind, connect, listen, recvmsg, sendmsg, socket_with, AddressFamily, RecvAncillaryBuffer,
    RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags,
    SocketType,
};

use crate::error::{CoreError, Result};
use crate::sys::liveness::my_pid;

/// Where and under which token a descriptor waits for its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Abstract socket name of the sender's broker.
    pub address: Vec<u8>,
    /// One-shot token.
    pub token: u64,
}

/// A registered descriptor: handed out once, or to every receiver until
/// `unshare` (a `corral.share`d array read by many workers).
struct Entry {
    fd: OwnedFd,
    reusable: bool,
}

type Pending = Arc<Mutex<HashMap<u64, Entry>>>;

struct Broker {
    pid: u32,
    address: Vec<u8>,
    pending: Pending,
}

static BROKER: Mutex<Option<Broker>> = Mutex::new(None);

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| CoreError::os("getrandom", e))?;
    Ok(u64::from_le_bytes(b))
}

/// A Unix stream socket and the abstract address `name`.
fn unix_socket(name: &[u8]) -> Result<(OwnedFd, SocketAddrUnix)> {
    let addr = SocketAddrUnix::new_abstract_name(name).map_err(|e| CoreError::os("socket address", e))?;
    let sock = socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| CoreError::os("socket", e))?;
    Ok((sock, addr))
}

fn start_broker() -> Result<Broker> {
    let pid = my_pid();
    let address = format!("corral-fd-{pid}-{:016x}", random_u64()?).into_bytes();
    let (sock, addr) = unix_socket(&address)?;
    bind(&sock, &addr).map_err(|e| CoreError::os("bind", e))?;
    listen(&sock, 64).map_err(|e| CoreError::os("listen", e))?;
    let pending: Pending = Arc::default();
    let served = pending.clone();
    std::thread::Builder::new()
        .name("corral-fd-broker".into())
        .spawn(move || serve(sock, served))
        .map_err(|e| CoreError::os("spawn broker thread", e))?;
    Ok(Broker { pid, address, pending })
}

fn serve(sock: OwnedFd, pending: Pending) {
    loop {
        let Ok(conn) = accept_with(&sock, SocketFlags::CLOEXEC) else {
            continue;
        };
        let mut token = [0u8; 8];
        let mut iov = [IoSliceMut::new(&mut token)];
        let got = recvmsg(&conn, &mut iov, &mut RecvAncillaryBuffer::default(), RecvFlags::WAITALL);
        if !matches!(got, Ok(ref r) if r.bytes == 8) {
            continue;
        }
        let token = u64::from_le_bytes(token);
        let fd = pending
            .lock()
            .map(|mut p| match p.get(&token) {
                Some(e) if e.reusable => e.fd.try_clone().ok(),
                Some(_) => p.remove(&token).map(|e| e.fd),
                None => None,
            })
            .unwrap_or(None);
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds;
        let status: [u8; 1] = match &fd {
            Some(fd) => {
                fds = [fd.as_fd()];
                control.push(SendAncillaryMessage::ScmRights(&fds));
                [1]
            }
            None => [0],
        };
        let _ = sendmsg(&conn, &[IoSlice::new(&status)], &mut control, SendFlags::NOSIGNAL);
    }
}

/// Registers a duplicate of `fd` for one receiver and returns its ticket.
pub fn share(fd: BorrowedFd<'_>) -> Result<Ticket> {
    register(fd, false)
}

/// Registers a duplicate of `fd` for any number of receivers, until
/// `unshare(ticket.token)`.
pub fn share_reusable(fd: BorrowedFd<'_>) -> Result<Ticket> {
    register(fd, true)
}

/// Withdraws a registration (the duplicate is closed).
pub fn unshare(token: u64) {
    if let Ok(guard) = BROKER.lock() {
        if let Some(b) = guard.as_ref().filter(|b| b.pid == my_pid()) {
            if let Ok(mut p) = b.pending.lock() {
                p.remove(&token);
            }
        }
    }
}

fn register(fd: BorrowedFd<'_>, reusable: bool) -> Result<Ticket> {
    let dup = fd.try_clone_to_owned().map_err(|e| CoreError::os("dup", e))?;
    let token = random_u64()?;
    let mut guard = BROKER.lock().map_err(|_| CoreError::Invalid("fd broker poisoned".into()))?;
    // A forked child inherits the parent's state but not its thread.
    if guard.as_ref().is_none_or(|b| b.pid != my_pid()) {
        *guard = Some(start_broker()?);
    }
    let broker = guard.as_ref().ok_or_else(|| CoreError::Invalid("fd broker missing".into()))?;
    broker
        .pending
        .lock()
        .map_err(|_| CoreError::Invalid("fd broker poisoned".into()))?
        .insert(token, Entry { fd: dup, reusable });
    Ok(Ticket { address: broker.address.clone(), token })
}

/// Fetches the descriptor behind `ticket` from the sender's broker.
pub fn fetch(ticket: &Ticket) -> Result<OwnedFd> {
    let (sock, addr) = unix_socket(&ticket.address)?;
    connect(&sock, &addr).map_err(|e| {
        CoreError::Closed(format!(
            "cannot reach the process that sent this object (it must stay alive until the receiver unpickles it): {e}"
        ))
    })?;
    let token = ticket.token.to_le_bytes();
    sendmsg(&sock, &[IoSlice::new(&token)], &mut SendAncillaryBuffer::default(), SendFlags::NOSIGNAL)
        .map_err(|e| CoreError::os("sendmsg(fd request)", e))?;
    let mut status = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut status)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| CoreError::os("recvmsg(fd reply)", e))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if r.bytes != 1 || status[0] != 1 {
        return Err(CoreError::Invalid(
            "this object was already unpickled once, or its sender forgot it: a pickled corral channel can be loaded once".into(),
        ));
    }
    fds.pop().ok_or_else(|| CoreError::corrupt("fd reply", "no descriptor attached"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_descriptor_is_fetched_once() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        // SAFETY: in bounds of the 4096-byte mapping.
        unsafe { shm.as_ptr().write(5) };
        let ticket = share(shm.fd()).unwrap();
        let fd = fetch(&ticket).unwrap();
        let again = crate::sys::shm::SharedMemory::open(fd).unwrap();
        // SAFETY: same memfd.
        assert_eq!(unsafe { again.as_ptr().read() }, 5);
        assert!(fetch(&ticket).is_err(), "tokens are one-shot");
    }

    #[test]
    fn a_reusable_descriptor_serves_many_until_unshared() {
        let shm = crate::sys::shm::SharedMemory::create("share", 4096).unwrap();
        let ticket = share_reusable(shm.fd()).unwrap();
        for _ in 0..3 {
            assert!(fetch(&ticket).is_ok());
        }
        unshare(ticket.token);
        assert!(fetch(&ticket).is_err());
    }

    #[test]
    fn an_unknown_broker_is_a_clear_error() {
        let t = Ticket { address: b"corral-fd-nobody".to_vec(), token: 1 };
        assert!(matches!(fetch(&t), Err(CoreError::Closed(_))));
    }
}
