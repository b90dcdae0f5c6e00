//! One end of a `corral.Pipe`: framed messages over a Unix stream socket.
//!
//! Why a socket and not two shared-memory rings: the socket gives, from the
//! kernel and for free, the two things a `Connection` user relies on beyond
//! speed: `fileno()` that `select`/asyncio can wait on with exact readiness,
//! and end-of-file when every holder of the other end has closed it or died.
//! The latency that a plain `multiprocessing.Pipe` loses is in the sleeping
//! reader's wake-up, not in the copy: so `recv` first spins on a
//! non-blocking read for `SPIN_TIME` and sleeps in `poll` only after that.
//!
//! Frame: a 16-byte `frame::StreamHeader` (magic, flags, length), then the
//! payload. A stream that does not start with a valid header, or ends in the
//! middle of a frame, is an error.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recv, recvmsg, sendmsg, shutdown, socketpair, AddressFamily, RecvAncillaryBuffer, RecvFlags,
    SendAncillaryBuffer, SendFlags, Shutdown, SocketFlags, SocketType,
};

use crate::error::{CoreError, Result};
use crate::frame::{StreamHeader, STREAM_HEADER};
use crate::sys::signal::SPIN_TIME;

/// Largest payload a connection accepts by default (1 TiB: in practice,
/// memory is the limit; the bound only rejects absurd lengths).
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 40;

/// One end of a pipe.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    readable: bool,
    writable: bool,
    max_message: u64,
}

/// Two connected ends. With `duplex` both can send and receive; otherwise
/// the first only receives and the second only sends (as `multiprocessing`).
pub fn pipe(duplex: bool) -> Result<(Connection, Connection)> {
    let (a, b) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| CoreError::os("socketpair", e))?;
    if duplex {
        Ok((Connection::new(a, true, true), Connection::new(b, true, true)))
    } else {
        // The unused directions are shut so a misuse fails loudly.
        let _ = shutdown(&a, Shutdown::Write);
        let _ = shutdown(&b, Shutdown::Read);
        Ok((Connection::new(a, true, false), Connection::new(b, false, true)))
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) }
        });
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(CoreError::os("poll", e)),
        }
    }
}

impl Connection {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        Connection { fd, readable, writable, max_message: DEFAULT_MAX_MESSAGE }
    }

    /// True if this end may receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// True if this end may send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The socket, for `select`/asyncio or to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The raw descriptor number.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sets the largest payload `recv` accepts.
    pub fn set_max_message(&mut self, max: u64) {
        self.max_message = max;
    }

    /// Sends one message made of `parts`, concatenated. Blocks while the
    /// socket buffer is full. A closed peer is `Err(Closed)`.
    pub fn send(&self, parts: &[&[u8]]) -> Result<()> {
        if !self.writable {
            return Err(CoreError::Invalid("connection is read-only".into()));
        }
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let header = StreamHeader { len }.encode();
        let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        slices.push(&header);
        slices.extend(parts.iter().copied().filter(|p| !p.is_empty()));
        self.send_all(&slices, &[])
    }

    /// Sends one message with file descriptors attached (SCM_RIGHTS).
    pub fn send_with_fds(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let header = StreamHeader { len: payload.len() as u64 }.encode();
        self.send_all(&[&header, payload], fds)
    }

    fn send_all(&self, slices: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut idx = 0;
        let mut skip = 0usize;
        let mut first = true;
        while idx < slices.len() {
            let iov: Vec<IoSlice<'_>> = std::iter::once(&slices[idx][skip..])
                .chain(slices[idx + 1..].iter().copied())
                .map(IoSlice::new)
                .collect();
            let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if first && !fds.is_empty() {
                control.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
            }
            match sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(mut n) => {
                    first = false;
                    while idx < slices.len() && n >= slices[idx].len() - skip {
                        n -= slices[idx].len() - skip;
                        idx += 1;
                        skip = 0;
                    }
                    skip += n;
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(Errno::PIPE) | Err(Errno::CONNRESET) => {
                    return Err(CoreError::Closed("the other end of the pipe is closed".into()))
                }
                Err(e) => return Err(CoreError::os("sendmsg", e)),
            }
        }
        Ok(())
    }

    /// True if a message (or end-of-file) can be read now or within
    /// `timeout` (None: wait for ever).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if !self.readable {
            return Err(CoreError::Invalid("connection is write-only".into()));
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            return wait_readable(self.fd.as_fd(), timeout);
        }
        // Spin on a non-blocking peek first: a fast peer answers within
        // microseconds, while a wake-up from poll costs 50-100 µs here.
        let spin_end = Instant::now() + SPIN_TIME.min(timeout.unwrap_or(SPIN_TIME));
        let mut probe = [0u8; 1];
        while Instant::now() < spin_end {
            match recv(&self.fd, &mut probe, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                Ok(_) => return Ok(true),
                Err(Errno::AGAIN) | Err(Errno::INTR) => std::hint::spin_loop(),
                Err(_) => return Ok(true),
            }
        }
        let left = timeout.map(|t| t.saturating_sub(SPIN_TIME));
        wait_readable(self.fd.as_fd(), left)
    }

    /// Receives one message, blocking until it is complete. End-of-file
    /// before or in the middle of a message is `Err(Closed)`; bytes that are not a frame are `Err(Corrupt)`.
    pub fn recv(&self) -> Result<Vec<u8>> {
        self.recv_with_fds().map(|(data, _)| data)
    }

    /// Receives one message and any descriptors attached to it.
    pub fn recv_with_fds(&self) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        if !self.readable {
            return Err(CoreError::Invalid("connection is write-only".into()));
        }
        let mut header = [0u8; STREAM_HEADER];
        let mut fds = Vec::new();
        if !self.read_exact(&mut header, &mut fds)? {
            return Err(CoreError::Closed("the other end of the pipe is closed".into()));
        }
        let h = StreamHeader::decode(&header, self.max_message)?;
        let mut data = Vec::new();
        data.try_reserve_exact(h.len as usize)
            .map_err(|_| CoreError::TooLarge { size: h.len, limit: self.max_message })?;
        data.resize(h.len as usize, 0);
        if !data.is_empty() && !self.read_exact(&mut data, &mut fds)? {
            return Err(CoreError::Closed("the other end closed in the middle of a message".into()));
        }
        Ok((data, fds))
    }

    /// Fills `buf` completely; false on end-of-file before the first byte.
    fn read_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            match recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(r) if r.bytes == 0 => {
                    if got == 0 {
                        return Ok(false);
                    }
                    return Err(CoreError::Closed("the other end closed in the middle of a message".into()));
                }
                Ok(r) => {
                    got += r.bytes;
                    for msg in control.drain() {
                        if let rustix::net::RecvAncillaryMessage::ScmRights(received) = msg {
                            fds.extend(received);
                        }
                    }
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(Errno::CONNRESET) => {
                    if got == 0 {
                        return Ok(false);
                    }
                    return Err(CoreError::Closed("the other end closed in the middle of a message".into()));
                }
                Err(e) => return Err(CoreError::os("recvmsg", e)),
            }
        }
        Ok(true)
    }

    /// Shuts both directions, so that the peer sees end-of-file even if
    /// another process still holds a copy of this descriptor.
    pub fn shutdown(&self) {
        let _ = shutdown(&self.fd, Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_in_order_both_ways() {
        let (a, b) = pipe(true).unwrap();
        a.send(&[b"hello", b" world"]).unwrap();
        b.send(&[b""]).unwrap();
        assert_eq!(b.recv().unwrap(), b"hello world");
        assert_eq!(a.recv().unwrap(), b"");
    }

    #[test]
    fn a_large_message_crosses_while_the_reader_drains() {
        let (a, b) = pipe(false).unwrap();
        let big: Vec<u8> = (0..5_000_000u32).map(|i| i as u8).collect();
        let expect = big.clone();
        let t = std::thread::spawn(move || b.send(&[&big]).unwrap());
        assert_eq!(a.recv().unwrap(), expect);
        t.join().unwrap();
    }

    #[test]
    fn a_closed_peer_is_end_of_file_and_poll_sees_it() {
        let (a, b) = pipe(true).unwrap();
        drop(b);
        assert!(a.poll(Some(Duration::from_millis(10))).unwrap());
        assert!(matches!(a.recv(), Err(CoreError::Closed(_))));
        assert!(matches!(a.send(&[b"x"]), Err(CoreError::Closed(_))));
    }

    #[test]
    fn a_peer_closing_mid_message_is_end_of_file() {
        let (a, b) = pipe(true).unwrap();
        let mut hdr = StreamHeader { len: 100 }.encode().to_vec();
        hdr.extend_from_slice(&[0u8; 10]);
        rustix::io::write(b.fd(), &hdr).unwrap();
        drop(b);
        assert!(matches!(a.recv(), Err(CoreError::Closed(_))));
    }

    #[test]
    fn garbage_on_the_stream_is_an_error() {
        let (a, b) = pipe(true).unwrap();
        rustix::io::write(b.fd(), &[0xAB; 64]).unwrap();
        assert!(matches!(a.recv(), Err(CoreError::Corrupt { .. })));
    }

    #[test]
    fn poll_times_out_when_nothing_comes() {
        let (a, _b) = pipe(true).unwrap();
        let t = Instant::now();
        assert!(!a.poll(Some(Duration::from_millis(30))).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn descriptors_travel_with_a_message() {
        let (a, b) = pipe(true).unwrap();
        let shm = crate::sys::shm::SharedMemory::create("fd", 4096).unwrap();
        // SAFETY: offset 0 is inside the 4096-byte mapping.
        unsafe { shm.as_ptr().write(9) };
        a.send_with_fds(b"take", &[shm.fd()]).unwrap();
        let (data, mut fds) = b.recv_with_fds().unwrap();
        assert_eq!(data, b"take");
        let other = crate::sys::shm::SharedMemory::open(fds.remove(0)).unwrap();
        // SAFETY: same memfd, 4096 bytes.
        assert_eq!(unsafe { other.as_ptr().read() }, 9);
    }
}
