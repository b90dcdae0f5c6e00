"""What a child process writes reaches the parent as the parent's own:
log records go to the parent's logging, printed lines arrive whole.

Logging. Each process that starts children (``corral.Process``, a process
pool's workers, whatever the start method) owns one ``_Sink``, made at its
first child start and kept for the program's life (as the fork server
is): a corral ``Queue`` and one thread, ``corral-log-forward``,
that waits on it (GIL released, no timeout: it costs nothing while no record
comes) and hands each record to ``logging.getLogger(record.name).handle``,
so the parent's handlers format it, with ``processName`` and a ``worker``
attribute naming the child. A child gets a ``Forwarding`` (the queue, its
name, the parent's levels when it starts) and ``install``s it before its
target or initializer runs: the handlers it has (inherited by fork, or set
by the parent's ``__main__`` imported again) are removed, one handler on
its root logger puts each record in the queue, synchronously (no thread in
the child, nothing left to flush at exit), and each logger has the parent's
level, so a record the parent would drop is not even made (``isEnabledFor``
is false in the child). Once the child's own code adds a handler to its
root logger (the stdlib's ``QueueHandler`` recipe; ``basicConfig(force=
True)`` removes ours, a plain ``basicConfig()`` does nothing as the root
has a handler), its records are its own and are not sent. The root's
threshold is also raised to the lowest level of the parent's root handlers (or of ``logging.lastResort``, which
prints WARNING and up when the parent configured nothing): a record no
parent handler would print is not sent. A level the parent changes later
is applied to records as they arrive (the parent's ``isEnabledFor``), not
to what children send. A record arrives after the task's result may; every
record put before a child exited is handled by the time ``Process.join``
or the pool's ``shutdown(wait=True)`` returns (``drain``).

Printed lines. A child's ``sys.stdout`` and ``sys.stderr`` write each
complete line with one ``write()`` on the descriptor, whatever ``print``
calls make it up (``_LineSink``): two children printing to one pipe or
terminal interleave only between lines (up to ``PIPE_BUF``, 4 KiB, a line
is one atomic write on a pipe). An explicit ``flush()`` writes a partial
line, as a progress bar's ``\\r`` needs.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import Any

from . import _forked
from .queues import Queue

__all__ = ["Forwarding", "drain", "ensure_sink", "install"]

#: Seconds a child's log put waits for room before it drops the record (a
#: parent too slow to drain 1 MiB of records, or gone).
PUT_TIMEOUT = 5.0
#: Seconds ``drain`` waits for the parent's thread to handle what is queued.
DRAIN_TIMEOUT = 5.0
#: A partial line longer than this is written without waiting for its end.
MAX_PENDING = 64 * 1024

#: Record attributes that travel as they are; any other (``extra=``) goes
#: as its repr if it is not a plain value.
_PLAIN = (str, int, float, bool, type(None))


class _Sink:
    """This process's end of its children's records: the queue and the
    thread that hands them to ``logging``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.queue: Queue[Any] = Queue(ring_bytes=1 << 20, arena_bytes=16 << 20)
        # This process counts as a producer from now on, so the thread's
        # get never ends with ChannelClosed once every child has left.
        self.queue.put(None)
        self.lock = threading.Lock()
        self.drained = threading.Condition(self.lock)
        #: Markers put by ``drain`` and handled by the thread, in order.
        self.marked = self.handled = 0
        self.thread = threading.Thread(target=self._run, name="corral-log-forward", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                batch = self.queue.get_many(256)
            except Exception:
                continue  # an item that could not be loaded: the others still come
            batch.reverse()
            while batch:  # popped: no record stays referenced while the thread waits
                item = batch.pop()
                if type(item) is int:
                    with self.lock:
                        self.handled = item
                        self.drained.notify_all()
                elif item is not None:
                    _handle(item)
                del item


def _handle(fields: dict[str, Any]) -> None:
    """Hands a child's record to this process's logging."""
    try:
        record = logging.makeLogRecord(fields)
        logger = logging.getLogger(None if record.name == "root" else record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    except Exception:
        pass  # a broken handler of the parent must not stop the thread


_sink: _Sink | None = None
_sink_lock = threading.Lock()


def ensure_sink() -> None:
    """Makes this process's sink now if it has none (it is kept for the
    program's life, as the fork server is)."""
    _here()


def _here() -> _Sink:
    """This process's sink, made at first use (a forked child makes its own)."""
    global _sink
    with _sink_lock:
        if _sink is None or _sink.pid != os.getpid():
            _sink = _Sink()
        return _sink


def drain() -> None:
    """Waits (``DRAIN_TIMEOUT`` at most) until the records the children
    put so far have been handled; nothing to do if none was started."""
    sink = _sink
    if sink is None or sink.pid != os.getpid() or threading.current_thread() is sink.thread:
        return
    with sink.lock:
        sink.marked += 1
        mark = sink.marked
    sink.queue.put(mark)
    with sink.lock:
        sink.drained.wait_for(lambda: sink.handled >= mark, DRAIN_TIMEOUT)


def _threshold(logger: logging.Logger) -> int:
    """The lowest level any handler reached from ``logger`` handles (that
    of ``logging.lastResort`` if none is), at least ``logger``'s own."""
    levels: list[int] = []
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for h in current.handlers:
            found = True
            levels.append(h.level)
        current = current.parent if current.propagate else None
    if not found:
        last = logging.lastResort
        levels.append(last.level if last is not None else logging.CRITICAL + 1)
    return max(logger.getEffectiveLevel(), min(levels))


class Forwarding:
    """What a child needs to send its records to this process: the queue,
    its own name, and this process's logging levels as they are now."""

    def __init__(self, name: str, *, inherited: bool = False) -> None:
        queue = _here().queue
        #: None: the child takes the queue its fork server installed, which
        #: is this process's (``inherited``; spares a fetch from the broker,
        #: 0.2-0.7 ms, at each worker start).
        self.queue: Queue[Any] | None = None if inherited else queue
        self.name = name
        root = logging.getLogger()
        #: Explicit levels of this process's loggers ("" is the root's).
        self.levels = {
            n: lg.level
            for n, lg in logging.Logger.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
        }
        self.levels[""] = _threshold(root)
        self.disabled = logging.root.manager.disable


class _Forwarder(logging.Handler):
    """The child's handler: puts each record in the parent's queue."""

    def __init__(self, queue: Queue[Any], name: str) -> None:
        super().__init__()
        self.queue, self.name = queue, name
        self.pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.pid:
            return  # a child forked by this one, not set up for it
        if len(logging.root.handlers) > 1:
            # The child's own code gave its root logger a handler (the
            # stdlib's QueueHandler recipe, basicConfig(force=True)): its
            # records are its own, not sent twice.
            return
        try:
            fields = {k: (v if isinstance(v, _PLAIN) else repr(v)) for k, v in record.__dict__.items()}
            fields["msg"] = record.getMessage()
            fields["args"] = None
            fields["exc_info"] = None
            if record.exc_info and not record.exc_text:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["processName"] = fields["worker"] = self.name
            self.queue.put(fields, True, PUT_TIMEOUT)
        except Exception:
            pass  # the parent is gone or stalled: the record is dropped


#: The parent's log queue as the last ``install`` here got it, and the pid
#: that installed it: a fork server's workers inherit it (``inherited``).
_queue: Queue[Any] | None = None
_queue_pid = 0


def install(fwd: Forwarding | None, forked: bool) -> None:
    """In a child, before its target or initializer: its records go to the
    parent (``fwd``), its stdout and stderr write whole lines (``forked``:
    the streams' buffers are the parent's, not flushed here). Best effort:
    a logging set-up it cannot change (a handler whose removal raises)
    does not stop the child."""
    try:
        _install(fwd, forked)
    except Exception as e:
        _forked.write_stderr(f"corral: the child's output is not forwarded to its parent: {e!r}\n")


def _install(fwd: Forwarding | None, forked: bool) -> None:
    global _queue, _queue_pid
    _whole_lines(flush=not forked)
    if fwd is None:
        return
    if fwd.queue is not None:
        _queue, _queue_pid = fwd.queue, os.getpid()
    elif _queue is None or _queue_pid != os.getppid():
        return  # nothing to inherit: the process that forked this one had no queue
    queue = _queue
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True  # the parent's logger decides where it goes
        if lg is not logging.root:
            lg.setLevel(logging.NOTSET)  # the parent's level, from its ancestors
    for name, level in fwd.levels.items():
        logging.getLogger(name or None).setLevel(level)
    logging.disable(fwd.disabled)
    logging.root.addHandler(_Forwarder(queue, fwd.name))


class _LineSink(io.RawIOBase):
    """A descriptor written whole lines at a time: what a ``write`` brings
    up to its last newline goes out in one ``os.write`` (with the partial
    line kept from before); the rest waits for its newline or a flush."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pending = bytearray()
        # Reentrant: a signal handler that prints runs in the thread that
        # was inside ``write`` (a plain Lock hung it, or recursed at each
        # new signal); ``_busy`` tells that call to write at once.
        self._lock = threading.RLock()
        self._busy = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        # The stream's own answer (a terminal stays one for colour and
        # progress-bar libraries), not RawIOBase's False.
        try:
            return os.isatty(self._fd)
        except OSError:
            return False

    def write(self, b: Any) -> int:
        data = memoryview(b).tobytes()  # bytes-like only: bytes(5) is five NULs
        with self._lock:
            if self._busy:  # a signal handler's: the outer call's state is left alone
                self._write_all(data)
                return len(data)
            self._busy = True
            try:
                cut = data.rfind(b"\n")
                if cut < 0:
                    self._pending += data
                    if len(self._pending) > MAX_PENDING:
                        self._out()
                else:
                    self._pending += data[: cut + 1]
                    self._out()
                    self._pending += data[cut + 1 :]
            finally:
                self._busy = False
        return len(data)

    def flush(self) -> None:
        with self._lock:
            if self._pending and not self._busy:
                self._busy = True
                try:
                    self._out()
                finally:
                    self._busy = False

    def _out(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _whole_lines(flush: bool) -> None:
    """Makes ``sys.stdout`` and ``sys.stderr`` write whole lines (when
    they write to a descriptor: left alone if None or replaced by an
    object without one). What the old streams hold is written first if
    ``flush`` (a forked child's is its parent's, which the parent writes)."""
    for attr in ("stdout", "stderr"):
        stream = getattr(sys, attr)
        if stream is None or isinstance(getattr(stream, "buffer", None), _LineSink):
            continue
        try:
            if flush:
                stream.flush()
            fd = stream.fileno()
            encoding, errors = stream.encoding, stream.errors
        except Exception:
            continue
        setattr(sys, attr, io.TextIOWrapper(_LineSink(fd), encoding=encoding, errors=errors, write_through=True))
