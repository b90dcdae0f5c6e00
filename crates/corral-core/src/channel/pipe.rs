//! One end of a `corral.Pipe`: framed messages over a Unix stream socket.
//!
//! Why a socket and not two shared-memory rings: the socket gives, from the
//! kernel and for free, the two things a `Connection` user relies on beyond
//! speed: `fileno()` that `select`/asyncio can wait on with exact readiness,
//! and end-of-file when every holder of the other end has closed it or died.
//! The latency that a plain `multiprocessing.Pipe` loses is in the sleeping
//! reader's wake-up, not in the copy: so `recv` first spins on a
//! non-blocking read and sleeps in `poll` only after that (`sys::backoff`).
//!
//! Frame: a 16-byte `frame::StreamHeader` (magic, flags, length), then the
//! payload. A stream that does not start with a valid header, or ends in the
//! middle of a frame, is an error.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recv, sendmsg, shutdown, socketpair, AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags, Shutdown,
    SocketFlags, SocketType,
};

use crate::error::{CoreError, Result};
use crate::frame::{StreamHeader, STREAM_HEADER};
use crate::sys::backoff::{Backoff, Learner, Next};
use crate::sys::deadline::Deadline;

/// What the pipe reads of this process have learned about spinning
/// (`sys::backoff`).
static WAITS: Learner = Learner::new();

/// Largest payload a connection accepts by default (1 TiB: in practice,
/// memory is the limit; the bound only rejects absurd lengths).
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 40;

/// Bytes read ahead from the socket and a large frame being filled.
#[derive(Debug, Default)]
struct Rx {
    /// Read-ahead bytes; `buf[pos..]` are not consumed yet.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// A frame too large for the read-ahead buffer: the payload received so
    /// far (its `len()`), and the length its header announced. Kept across
    /// timeouts, so a `recv` that gives up in the middle of a message loses
    /// nothing.
    large: Option<(Vec<u8>, usize)>,
}

/// Read-ahead size: small frames arrive whole in one system call.
const READ_AHEAD: usize = 64 * 1024;

/// First allocation for a large frame's payload. The buffer then doubles as
/// bytes arrive (capped at the announced length), so memory follows the
/// data received, not what a header claims: a 16-byte header announcing
/// 3 GiB costs nothing until the bytes come. (glibc grows such large
/// blocks with `mremap`, so the doubling copies nothing.)
const LARGE_FIRST_CHUNK: usize = 1 << 20;

/// One end of a pipe.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    readable: bool,
    writable: bool,
    max_message: u64,
    rx: Mutex<Rx>,
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

/// Sleeps in `poll` until the socket is readable or `deadline` passes.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Deadline) -> Result<bool> {
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, deadline.timespec().as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {
                if deadline.expired() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(CoreError::os("poll", e)),
        }
    }
}

/// End of file after `got` bytes of a message announced as `len` bytes.
fn truncated(got: usize, len: usize) -> CoreError {
    CoreError::Closed(format!(
        "the other end closed in the middle of a message: {got} of its {len} bytes arrived (truncated message)"
    ))
}

/// What one read attempt gave.
enum Read {
    Bytes(usize),
    Eof,
    TimedOut,
}

impl Connection {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        Connection { fd, readable, writable, max_message: DEFAULT_MAX_MESSAGE, rx: Mutex::new(Rx::default()) }
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
        let mut idx = 0;
        let mut skip = 0usize;
        while idx < slices.len() {
            let iov: Vec<IoSlice<'_>> = std::iter::once(&slices[idx][skip..])
                .chain(slices[idx + 1..].iter().copied())
                .map(IoSlice::new)
                .collect();
            match sendmsg(&self.fd, &iov, &mut SendAncillaryBuffer::default(), SendFlags::NOSIGNAL) {
                Ok(mut n) => {
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

    /// One read into `dst`: a non-blocking attempt, spinning while
    /// `backoff` allows (a fast peer answers within microseconds, while a
    /// wake-up from `poll` costs 50-100 µs here), then sleeping until
    /// `deadline`.
    fn read_some(&self, dst: &mut [u8], backoff: &mut Backoff, deadline: Deadline) -> Result<Read> {
        self.read_with(|| recv(&self.fd, &mut *dst, RecvFlags::DONTWAIT).map(|(n, _)| n), backoff, deadline)
    }

    /// Appends to `data` what one read gives (as `read_some`), at most
    /// `want` bytes, into its spare capacity: nothing is zeroed first and
    /// `data` never holds more than arrived.
    fn read_append(&self, data: &mut Vec<u8>, want: usize, backoff: &mut Backoff, deadline: Deadline) -> Result<Read> {
        let read = self.read_with(
            || {
                let spare = data.spare_capacity_mut();
                let n = want.min(spare.len());
                recv(&self.fd, &mut spare[..n], RecvFlags::DONTWAIT).map(|((init, _), _)| init.len())
            },
            backoff,
            deadline,
        )?;
        if let Read::Bytes(n) = read {
            // SAFETY: `recv` initialized the first `n` bytes of the spare
            // capacity (rustix returns exactly the initialized part), and
            // `n <= spare.len()`, so the new length is within capacity.
            unsafe { data.set_len(data.len() + n) };
        }
        Ok(read)
    }

    /// Runs one non-blocking read `attempt` (bytes read, 0 at end of file),
    /// spinning while `backoff` allows, then sleeping in `poll` until
    /// `deadline`.
    fn read_with(
        &self,
        mut attempt: impl FnMut() -> rustix::io::Result<usize>,
        backoff: &mut Backoff,
        deadline: Deadline,
    ) -> Result<Read> {
        loop {
            match attempt() {
                Ok(0) => return Ok(Read::Eof),
                Ok(n) => return Ok(Read::Bytes(n)),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => match backoff.next(deadline) {
                    Next::Retry => {}
                    Next::TimedOut => return Ok(Read::TimedOut),
                    Next::Sleep => {
                        if !wait_readable(self.fd.as_fd(), deadline)? {
                            return Ok(Read::TimedOut);
                        }
                    }
                },
                Err(Errno::CONNRESET) => return Ok(Read::Eof),
                Err(e) => return Err(CoreError::os("recv", e)),
            }
        }
    }

    /// True if a message (or end-of-file) can be read now or within
    /// `timeout` (None: wait for ever).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if !self.readable {
            return Err(CoreError::Invalid("connection is write-only".into()));
        }
        {
            let rx = self.rx.lock().map_err(|_| CoreError::Invalid("connection lock poisoned".into()))?;
            if rx.pos < rx.buf.len() || rx.large.is_some() {
                return Ok(true);
            }
        }
        let deadline = Deadline::after(timeout);
        let mut backoff = Backoff::adaptive(&WAITS);
        let mut probe = [0u8; 1];
        loop {
            match recv(&self.fd, &mut probe, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                Ok(_) => return Ok(true),
                Err(Errno::AGAIN) | Err(Errno::INTR) => match backoff.next(deadline) {
                    Next::Retry => {}
                    Next::TimedOut => return Ok(false),
                    Next::Sleep => return wait_readable(self.fd.as_fd(), deadline),
                },
                Err(_) => return Ok(true),
            }
        }
    }

    /// Receives one message, waiting for ever. End-of-file before or in the
    /// middle of a message is `Err(Closed)`; bytes that are not a frame are
    /// `Err(Corrupt)`.
    pub fn recv(&self) -> Result<Vec<u8>> {
        self.recv_until(None)?.ok_or(CoreError::Timeout)
    }

    /// Receives one message, waiting until `deadline`; `Ok(None)` when it
    /// passes first (bytes already read are kept for the next call).
    pub fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        if !self.readable {
            return Err(CoreError::Invalid("connection is write-only".into()));
        }
        let mut rx = self.rx.lock().map_err(|_| CoreError::Invalid("connection lock poisoned".into()))?;
        let rx = &mut *rx;
        let deadline = Deadline::from(deadline);
        let mut backoff = Backoff::adaptive(&WAITS);
        loop {
            // A large frame in progress: read straight into its payload.
            if let Some((data, len)) = rx.large.as_mut() {
                let len = *len;
                if data.len() == len {
                    return Ok(rx.large.take().map(|(d, _)| d));
                }
                if data.len() == data.capacity() {
                    let more = (len - data.len()).min(data.len().max(LARGE_FIRST_CHUNK));
                    data.try_reserve_exact(more).map_err(|_| {
                        CoreError::NoMemory(format!(
                            "out of memory growing the buffer of a {len}-byte message to {} bytes",
                            data.len() + more
                        ))
                    })?;
                }
                let want = len - data.len();
                match self.read_append(data, want, &mut backoff, deadline)? {
                    Read::Bytes(_) => {}
                    Read::Eof => return Err(truncated(data.len(), len)),
                    Read::TimedOut => return Ok(None),
                }
                continue;
            }
            // A frame in the read-ahead buffer?
            let avail = rx.buf.len() - rx.pos;
            if avail >= STREAM_HEADER {
                let mut h = [0u8; STREAM_HEADER];
                h.copy_from_slice(&rx.buf[rx.pos..rx.pos + STREAM_HEADER]);
                let len = StreamHeader::decode(&h, self.max_message)?.len as usize;
                let body = rx.pos + STREAM_HEADER;
                if avail - STREAM_HEADER >= len {
                    let out = rx.buf[body..body + len].to_vec();
                    rx.pos = body + len;
                    return Ok(Some(out));
                }
                if len > READ_AHEAD {
                    // Only what has arrived is copied; the rest is
                    // allocated as it comes (see LARGE_FIRST_CHUNK).
                    let data = rx.buf[body..].to_vec();
                    rx.buf.clear();
                    rx.pos = 0;
                    rx.large = Some((data, len));
                    continue;
                }
            }
            // Need more bytes: compact, then read ahead.
            if rx.pos > 0 {
                rx.buf.drain(..rx.pos);
                rx.pos = 0;
            }
            let old = rx.buf.len();
            rx.buf.resize(old + READ_AHEAD, 0);
            let got = self.read_some(&mut rx.buf[old..], &mut backoff, deadline);
            let n = match &got {
                Ok(Read::Bytes(n)) => *n,
                _ => 0,
            };
            rx.buf.truncate(old + n);
            match got? {
                Read::Bytes(_) => {}
                Read::Eof if old == 0 => return Err(CoreError::Closed("the other end of the pipe is closed".into())),
                Read::Eof if old < STREAM_HEADER => {
                    return Err(CoreError::Closed(format!(
                        "the other end closed in the middle of a message: {old} of the {STREAM_HEADER} \
                         bytes of its header arrived"
                    )))
                }
                Read::Eof => {
                    let mut h = [0u8; STREAM_HEADER];
                    h.copy_from_slice(&rx.buf[..STREAM_HEADER]);
                    let len = StreamHeader::decode(&h, self.max_message)?.len as usize;
                    return Err(truncated(old - STREAM_HEADER, len));
                }
                Read::TimedOut => return Ok(None),
            }
        }
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
    fn a_header_announcing_3_gib_costs_memory_only_for_the_bytes_that_arrive() {
        let (a, b) = pipe(true).unwrap();
        let len = 3u64 << 30;
        let mut raw = StreamHeader { len }.encode().to_vec();
        raw.extend_from_slice(&[7u8; 100_000]);
        rustix::io::write(b.fd(), &raw).unwrap();
        assert_eq!(a.recv_until(Some(Instant::now() + Duration::from_millis(20))).unwrap(), None);
        {
            let rx = a.rx.lock().unwrap();
            let (data, announced) = rx.large.as_ref().expect("a large frame in progress");
            assert_eq!((data.len(), *announced), (100_000, len as usize));
            assert!(data.capacity() <= 2 * LARGE_FIRST_CHUNK, "{} bytes allocated", data.capacity());
        }
        drop(b);
        match a.recv() {
            Err(CoreError::Closed(msg)) => {
                assert!(msg.contains("100000 of its 3221225472 bytes"), "{msg}");
                assert!(msg.contains("truncated"), "{msg}");
            }
            other => panic!("a truncated message gave {other:?}"),
        }
    }

    #[test]
    fn a_peer_closing_inside_a_header_or_a_small_frame_says_how_much_arrived() {
        let (a, b) = pipe(true).unwrap();
        rustix::io::write(b.fd(), &StreamHeader { len: 5 }.encode()[..9]).unwrap();
        drop(b);
        assert!(matches!(a.recv(), Err(CoreError::Closed(m)) if m.contains("9 of the 16 bytes of its header")));
        let (a, b) = pipe(true).unwrap();
        let mut raw = StreamHeader { len: 1000 }.encode().to_vec();
        raw.extend_from_slice(&[1u8; 10]);
        rustix::io::write(b.fd(), &raw).unwrap();
        drop(b);
        assert!(matches!(a.recv(), Err(CoreError::Closed(m)) if m.contains("10 of its 1000 bytes")));
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
    fn a_recv_that_times_out_mid_message_loses_nothing() {
        let (a, b) = pipe(true).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut raw = StreamHeader { len: big.len() as u64 }.encode().to_vec();
        raw.extend_from_slice(&big[..100_000]);
        rustix::io::write(b.fd(), &raw[..50]).unwrap();
        let soon = || Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(a.recv_until(soon()).unwrap(), None);
        rustix::io::write(b.fd(), &raw[50..]).unwrap();
        assert_eq!(a.recv_until(soon()).unwrap(), None);
        assert!(a.poll(Some(Duration::ZERO)).unwrap(), "a partial frame counts as readable");
        rustix::io::write(b.fd(), &big[100_000..]).unwrap();
        b.send(&[b"next"]).unwrap();
        assert_eq!(a.recv_until(soon()).unwrap().unwrap(), big);
        assert_eq!(a.recv().unwrap(), b"next");
    }

    #[test]
    fn many_small_frames_read_ahead_come_out_one_by_one() {
        let (a, b) = pipe(true).unwrap();
        // A thread sends: small frames cost the socket buffer far more than
        // their size, so 1000 of them do not fit without a reader.
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                b.send(&[&i.to_le_bytes()]).unwrap();
            }
        });
        for i in 0..1000u32 {
            assert_eq!(a.recv().unwrap(), i.to_le_bytes());
        }
        t.join().unwrap();
    }
}
