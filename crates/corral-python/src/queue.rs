//! `_core.SharedQueue`: the shared queue, taking and returning pickled
//! parts. Pickling itself is done by `corral.queues`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
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
                for p in rest {
                    if let Part::Block { offset, .. } = p {
                        let _ = queue.free_block(offset);
                    }
                }
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
        Ok(SharedQueue { inner })
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
        Ok(SharedQueue { inner: CoreQueue::open(owned).map_err(queue_err)? })
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
    #[pyo3(signature = (max_items, block=true, timeout=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        max_items: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let q = &*self.inner;
        let first = q.get_many(max_items, Some(Instant::now()));
        let got = match first {
            Err(CoreError::Empty) if block => {
                let d = deadline(timeout)?;
                sliced(py, d, |e| matches!(e, CoreError::Empty), |until| q.get_many(max_items, until))?
            }
            other => other,
        };
        got.map_err(queue_err)?.into_iter().map(|parts| parts_to_py(py, &self.inner, parts)).collect()
    }

    /// Items queued now.
    fn qsize(&self) -> u64 {
        self.inner.len()
    }

    /// True when no item is queued.
    fn empty(&self) -> bool {
        self.inner.is_empty()
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
