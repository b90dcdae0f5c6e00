//! `_core.SharedQueue`: the shared queue, taking and returning pickled
//! parts. Pickling itself is done by `corral.queues`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use corral_core::channel::queue::{Outgoing, Part, QueueConfig, SharedQueue as CoreQueue};
use corral_core::CoreError;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

use crate::block::ShmBlock;
use crate::errors::queue_err;
use crate::wait::{deadline, sliced};

/// Payloads above this size are copied with the GIL released; below it the
/// release costs more than the copy.
const DETACH_ABOVE: usize = 64 * 1024;

/// A multi-producer multi-consumer queue in shared memory.
#[pyclass(module = "corral._core", frozen)]
pub struct SharedQueue {
    pub(crate) inner: Arc<CoreQueue>,
    /// Messages this handle took off the ring and has not handed out yet,
    /// oldest first: those of a batch after one that could not be made
    /// into Python objects, and that one's error (see `convert`). Served
    /// before the ring; their blocks are freed if the handle is dropped.
    held: Mutex<VecDeque<Held>>,
    /// Test-only (`_corrupt_next_get`): the index, in the next batch read
    /// off the ring, of the message made unreadable; `NO_FAULT`: none.
    fault: AtomicUsize,
}

/// A message a `SharedQueue` handle holds for its next `get`/`get_many`.
enum Held {
    /// Read, not yet converted.
    Message(Vec<Part>),
    /// Its conversion failed (its blocks are freed): the next call raises
    /// this.
    Failed(PyErr),
}

const NO_FAULT: usize = usize::MAX;

/// Where a fault hook puts a message's in-band part: past the end of any
/// arena, so reading it fails as a corrupt descriptor does.
const FAULT_OFFSET: u64 = u64::MAX / 4;

/// Test-only fault injection (`PoolCore._corrupt_outcomes`,
/// `SharedQueue._corrupt_next_get`): makes a received message's in-band
/// part unreadable where it stands: a block's length runs past the arena
/// (the block stays held, for the reader's error path to free), an inline
/// part becomes a block outside the arena. Its other parts are left as
/// they came, so the test sees what a real corrupt part leaves behind.
pub(crate) fn make_unreadable(parts: &mut [Part]) {
    if let Some(first) = parts.first_mut() {
        *first = match *first {
            Part::Block { offset, .. } => Part::Block { offset, len: FAULT_OFFSET },
            Part::Inline(ref v) => Part::Block { offset: FAULT_OFFSET, len: v.len() as u64 },
        };
    }
}

impl Drop for SharedQueue {
    fn drop(&mut self) {
        // This process holds the blocks of the messages it read and never
        // handed out: nothing else would give them back.
        let held = self.held.get_mut().unwrap_or_else(PoisonError::into_inner);
        for h in held.drain(..) {
            if let Held::Message(parts) = h {
                self.inner.free_parts(&parts);
            }
        }
    }
}

/// Borrowed contiguous bytes of a Python buffer; keeps the export alive.
pub(crate) struct Bytes {
    buf: PyBuffer<u8>,
}

impl Bytes {
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        // A PickleBuffer of a typed array exports its item format; its
        // `raw()` view is the same memory as plain bytes.
        let buf = match PyBuffer::<u8>::get(obj) {
            Ok(b) => b,
            Err(_) if obj.hasattr("raw")? => PyBuffer::<u8>::get(&obj.call_method0("raw")?)?,
            Err(e) => return Err(e),
        };
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("buffer must be C-contiguous"));
        }
        Ok(Bytes { buf })
    }

    pub(crate) fn slice(&self) -> &[u8] {
        // SAFETY: the exporter keeps [buf_ptr, +len) valid while `buf` (the
        // export) lives, and it is contiguous (checked). A concurrent writer
        // to the same bytearray may tear what is copied, as with any send.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, self.buf.len_bytes()) }
    }
}

struct Message {
    inband: Bytes,
    buffers: Vec<Bytes>,
}

impl Message {
    fn from_py(inband: &Bound<'_, PyAny>, buffers: &Bound<'_, PyAny>) -> PyResult<Self> {
        let inband = Bytes::get(inband)?;
        let buffers = buffers.try_iter()?.map(|b| Bytes::get(&b?)).collect::<PyResult<Vec<_>>>()?;
        Ok(Message { inband, buffers })
    }

    fn size(&self) -> usize {
        self.inband.buf.len_bytes() + self.buffers.iter().map(|b| b.buf.len_bytes()).sum::<usize>()
    }

    fn put(&self, q: &CoreQueue, until: Option<Instant>) -> corral_core::Result<()> {
        let bufs: Vec<&[u8]> = self.buffers.iter().map(Bytes::slice).collect();
        q.put(Outgoing { inband: self.inband.slice(), buffers: &bufs }, until)
    }
}

// SAFETY: PyBuffer is Send + Sync in pyo3; the raw slices are only read.
unsafe impl Sync for Message {}

/// A received message as `(inband bytes, [buffers])`: inline parts are
/// copied, arena blocks become `ShmBlock`s of `queue` (freed when collected).
/// On an error every block not yet in a `ShmBlock` is freed here: this
/// process holds each one (`get_many` marked them held), and nothing else
/// would ever give it back (the arena space leaked per failed message).
pub(crate) fn parts_to_py<'py>(
    py: Python<'py>,
    queue: &Arc<CoreQueue>,
    parts: Vec<Part>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut objs: Vec<Bound<'py, PyAny>> = Vec::with_capacity(parts.len());
    let mut rest = parts.into_iter();
    while let Some(p) = rest.next() {
        let first = objs.is_empty();
        match part_to_py(py, queue, p, first) {
            Ok(obj) => objs.push(obj),
            Err(e) => {
                queue.free_parts(rest.as_slice());
                return Err(e);
            }
        }
    }
    let mut it = objs.into_iter();
    let inband = it.next().ok_or_else(|| PyValueError::new_err("message without parts"))?;
    let rest = PyList::new(py, it)?;
    PyTuple::new(py, [inband, rest.into_any()])
}

/// One part of a received message (`first`: the pickle stream). A block
/// that cannot be wrapped is freed before the error returns (one wrapped
/// is freed when its `ShmBlock` drops).
fn part_to_py<'py>(py: Python<'py>, queue: &Arc<CoreQueue>, p: Part, first: bool) -> PyResult<Bound<'py, PyAny>> {
    Ok(match p {
        // The pickle stream is read-only; a buffer becomes a
        // writable array, as with a plain pickle round trip.
        Part::Inline(v) if first => PyBytes::new(py, &v).into_any(),
        Part::Inline(v) => PyByteArray::new(py, &v).into_any(),
        Part::Block { offset, len } => match ShmBlock::new(queue.clone(), offset, len) {
            Ok(b) => Bound::new(py, b)?.into_any(),
            Err(e) => {
                let _ = queue.free_block(offset);
                return Err(queue_err(e));
            }
        },
    })
}

impl SharedQueue {
    fn with_inner(inner: Arc<CoreQueue>) -> Self {
        SharedQueue { inner, held: Mutex::new(VecDeque::new()), fault: AtomicUsize::new(NO_FAULT) }
    }

    fn held(&self) -> MutexGuard<'_, VecDeque<Held>> {
        // Only plain pushes and pops run under the lock: a panic there
        // leaves the deque intact.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `max_items` held messages in Python form; None if this handle
    /// holds none (read the ring). A held error is raised first.
    fn take_held<'py>(&self, py: Python<'py>, max_items: usize) -> Option<PyResult<Vec<Bound<'py, PyTuple>>>> {
        let mut batch = Vec::new();
        {
            let mut held = self.held();
            while batch.len() < max_items.max(1) {
                match held.pop_front() {
                    Some(Held::Message(parts)) => batch.push(parts),
                    Some(Held::Failed(e)) if batch.is_empty() => return Some(Err(e)),
                    Some(failed) => {
                        held.push_front(failed);
                        break;
                    }
                    None if batch.is_empty() => return None,
                    None => break,
                }
            }
        }
        Some(self.convert(py, batch))
    }

    /// Makes received messages into `(inband, [buffers])` tuples, in
    /// order. One that cannot be made (a corrupt block, no memory) ends
    /// alone, as `get` would: the messages before it are returned and its
    /// error is raised by the next call (now, if it is the first), and the
    /// messages after it are held for the calls after that. Nothing read
    /// is lost, and no block is left held by nobody.
    fn convert<'py>(&self, py: Python<'py>, messages: Vec<Vec<Part>>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut out = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter();
        while let Some(parts) = rest.next() {
            match parts_to_py(py, &self.inner, parts) {
                Ok(msg) => out.push(msg),
                Err(e) => {
                    // Ahead of anything held: they were read before it.
                    let mut ahead: Vec<Held> = rest.map(Held::Message).collect();
                    let now = if out.is_empty() {
                        Err(e)
                    } else {
                        ahead.insert(0, Held::Failed(e));
                        Ok(out)
                    };
                    let mut held = self.held();
                    for h in ahead.into_iter().rev() {
                        held.push_front(h);
                    }
                    return now;
                }
            }
        }
        Ok(out)
    }

    fn put_one(&self, py: Python<'_>, msg: &Message, block: bool, timeout: Option<f64>) -> PyResult<()> {
        let q = &*self.inner;
        if msg.size() <= DETACH_ABOVE {
            match msg.put(q, Some(Instant::now())) {
                Err(CoreError::Full) if block => {}
                other => return other.map_err(queue_err),
            }
        }
        if !block {
            return py.detach(|| msg.put(q, Some(Instant::now()))).map_err(queue_err);
        }
        let d = deadline(timeout)?;
        sliced(py, d, |e| matches!(e, CoreError::Full), |until| msg.put(q, until))?.map_err(queue_err)
    }
}

/// Bytes to reserve for a shared block that would like `wanted`: all of it
/// without an address-space limit (`ulimit -v`), else at most `1/share` of
/// the room left (see `corral_core::sys::shm::fit_reservation`).
#[pyfunction]
pub fn fit_reservation(wanted: u64, share: u64) -> u64 {
    corral_core::sys::shm::fit_reservation(wanted, share)
}

#[pymethods]
impl SharedQueue {
    /// Creates a queue: `ring_bytes` for message descriptors and small
    /// messages, `arena_bytes` (virtual) for large parts, `maxsize` items
    /// (0: no bound).
    #[new]
    #[pyo3(signature = (maxsize=0, ring_bytes=4 << 20, arena_bytes=None))]
    fn new(maxsize: u64, ring_bytes: u64, arena_bytes: Option<u64>) -> PyResult<Self> {
        let arena_bytes = arena_bytes.unwrap_or_else(|| QueueConfig::default().arena_bytes);
        let inner = CoreQueue::create(QueueConfig { ring_bytes, arena_bytes, maxsize }).map_err(queue_err)?;
        Ok(SharedQueue::with_inner(inner))
    }

    /// Maps the queue behind descriptor `fd`, taking ownership of it.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err("bad descriptor"));
        }
        // SAFETY: the caller hands over an open descriptor it owns (an
        // inherited one, or one fetched from a broker) and never uses it again.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SharedQueue::with_inner(CoreQueue::open(owned).map_err(queue_err)?))
    }

    /// The memfd number in this process (still owned by the queue).
    fn fileno(&self) -> i32 {
        self.inner.fd().as_raw_fd()
    }

    /// Puts one pickled message: `inband` bytes plus out-of-band buffers.
    #[pyo3(signature = (inband, buffers, block=true, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        inband: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let msg = Message::from_py(inband, buffers)?;
        self.put_one(py, &msg, block, timeout)
    }

    /// Puts a list of `(inband, buffers)` messages, in order, blocking as
    /// needed; returns how many were put.
    fn put_many(&self, py: Python<'_>, messages: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut n = 0;
        for item in messages.try_iter()? {
            let item = item?;
            let (inband, buffers): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            let msg = Message::from_py(&inband, &buffers)?;
            self.put_one(py, &msg, true, None)?;
            n += 1;
        }
        Ok(n)
    }

    /// Gets one message as `(inband, [buffers])`; raises `queue.Empty`
    /// when `block` is false or the timeout passes, `ChannelClosed` when
    /// no producer is left.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(&self, py: Python<'py>, block: bool, timeout: Option<f64>) -> PyResult<Bound<'py, PyTuple>> {
        let mut list = self.get_many(py, 1, block, timeout)?;
        let first = list.pop().ok_or_else(|| PyValueError::new_err("empty batch"))?;
        Ok(first)
    }

    /// Gets between 1 and `max_items` messages, waiting only for the first.
    /// A message that cannot be read ends alone: those before it are
    /// returned, its error is raised by the next call, and the ones after
    /// it come at the calls after that (held by this handle meanwhile).
    #[pyo3(signature = (max_items, block=true, timeout=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        max_items: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        if let Some(held) = self.take_held(py, max_items) {
            return held;
        }
        let q = &*self.inner;
        let first = q.get_many(max_items, Some(Instant::now()));
        let got = match first {
            Err(CoreError::Empty) if block => {
                let d = deadline(timeout)?;
                sliced(py, d, |e| matches!(e, CoreError::Empty), |until| q.get_many(max_items, until))?
            }
            other => other,
        };
        let mut got = got.map_err(queue_err)?;
        if self.fault.load(Ordering::Relaxed) != NO_FAULT {
            if let Some(parts) = got.get_mut(self.fault.swap(NO_FAULT, Ordering::Relaxed)) {
                make_unreadable(parts);
            }
        }
        self.convert(py, got)
    }

    /// For tests only (fault injection; no program calls it): in the next
    /// batch this handle reads off the ring, the message at `index` is
    /// read as if its in-band part were a corrupt arena block
    /// (`CorruptDataError`).
    fn _corrupt_next_get(&self, index: usize) {
        self.fault.store(index, Ordering::Relaxed);
    }

    /// Items queued now (those this handle read and holds for its next
    /// `get` included; one it could not read counts too, as a
    /// `multiprocessing.Queue` counts an item that fails to unpickle: the
    /// `get` that reaches it raises its error instead of blocking).
    fn qsize(&self) -> u64 {
        self.inner.len() + self.held().len() as u64
    }

    /// True when no item is queued (nor held by this handle for its next
    /// `get`).
    fn empty(&self) -> bool {
        self.inner.is_empty() && self.held().is_empty()
    }

    /// True when `maxsize` items are queued.
    fn full(&self) -> bool {
        self.inner.is_full()
    }

    /// The bound on items (0: none).
    #[getter]
    fn maxsize(&self) -> u64 {
        self.inner.maxsize()
    }

    /// The largest message (all parts together) this queue accepts.
    #[getter]
    fn max_message(&self) -> u64 {
        self.inner.max_message()
    }

    /// This process will put no more; consumers see the end of data once
    /// every producer has closed or died.
    fn close_producer(&self) {
        self.inner.close_producer();
    }

    /// Records a child process `pid` that was started with this queue as a
    /// holder, before it maps the queue itself. `ValueError` when the queue
    /// already has its most live holders (`Process.start` then stops the
    /// child before it runs and raises it).
    fn add_holder(&self, pid: u32) -> PyResult<()> {
        self.inner.add_holder(pid).map_err(queue_err)
    }

    /// Registers the queue's descriptor with this process's broker and
    /// counts the queue as lent by this process (see `SharedQueue::lend`
    /// in the core) until the handle is claimed. `reusable` (a pool task's
    /// arguments): for any number of loads, the lend taken back when the
    /// registration is withdrawn; otherwise for one receiver, which takes
    /// the lend back with `release_lent(slot, pid)` once it holds the
    /// queue. Returns `(address, pid, token, slot)`.
    fn share_lent(&self, reusable: bool) -> PyResult<(Vec<u8>, u32, u64, u32)> {
        let lent = self.inner.lend().map_err(queue_err)?;
        let slot = lent.slot();
        let fd = self.inner.fd();
        let ticket = if reusable {
            corral_core::fdshare::share_reusable_with(fd, Box::new(lent))
        } else {
            let shared = corral_core::fdshare::share(fd);
            if shared.is_ok() {
                lent.forget(); // the receiver takes it back
            }
            shared
        }
        .map_err(crate::errors::to_py)?;
        Ok((ticket.address, ticket.pid, ticket.token, slot))
    }

    /// Takes back a lend of process `pid` from its `slot` (a receiver,
    /// once it holds the queue; see `share_lent`).
    fn release_lent(&self, slot: u32, pid: u32) {
        self.inner.release_lent(slot, pid);
    }

    /// The most out-of-band buffers one message may carry (its descriptor
    /// must fit a frame of the ring).
    #[getter]
    fn max_buffers(&self) -> usize {
        self.inner.max_parts().saturating_sub(1)
    }

    /// Bytes of the shared arena in use.
    fn arena_used(&self) -> PyResult<u64> {
        self.inner.arena_used().map_err(queue_err)
    }
}
