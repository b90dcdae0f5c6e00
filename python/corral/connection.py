"""``corral.Pipe``: ``multiprocessing.Pipe`` with a faster receive.

Messages are framed on a Unix socket; ``recv`` spins briefly before it
sleeps, which removes most of the wake-up latency of a round trip. The
socket is the ``fileno()``, so ``select`` and asyncio see exact readiness,
and the kernel reports a closed or dead peer as end-of-file.
"""

from collections.abc import Callable
from typing import Any, Self

from . import _core, _fds, _pickle
from .aio import run_blocking, wait_readable

#: Messages up to this size fit a socket buffer: ``send_async`` writes them at once.
_ASEND_INLINE = 64 * 1024

__all__ = ["Connection", "Pipe"]


class Connection:
    """One end of a pipe, with ``multiprocessing.connection.Connection``'s
    API. Picklable: send it to a :class:`corral.Process` at start or through
    another pipe or queue."""

    def __init__(self, core: _core.Connection) -> None:
        self._c: _core.Connection | None = core

    def _conn(self) -> _core.Connection:
        if self._c is None:
            raise OSError("handle is closed")
        return self._c

    def __reduce__(self) -> tuple[Any, ...]:
        c = self._conn()
        return (_rebuild, (_fds.export_fd(c.fileno()), c.readable, c.writable))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._conn().fileno()}"
        return f"<corral.Connection {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None:
            c.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._c is None

    @property
    def readable(self) -> bool:
        """True if this end can receive."""
        return self._conn().readable

    @property
    def writable(self) -> bool:
        """True if this end can send."""
        return self._conn().writable

    def fileno(self) -> int:
        """The socket's descriptor, for ``select`` or ``loop.add_reader``."""
        return self._conn().fileno()

    def close(self) -> None:
        """Closes this end. The other end sees EOF once every copy of this
        end (in any process) is closed."""
        if self._c is not None:
            self._c.close()
            self._c = None

    def _check_writable(self) -> _core.Connection:
        c = self._conn()
        if not c.writable:
            raise OSError("connection is read-only")
        return c

    def _check_readable(self) -> _core.Connection:
        c = self._conn()
        if not c.readable:
            raise OSError("connection is write-only")
        return c

    def send(self, obj: Any) -> None:
        """Sends a picklable object."""
        c = self._check_writable()
        undo: list[Callable[[], None]] = []
        data = _pickle.dumps_inband(obj, undo)[0]
        if not undo:  # no corral object of its own: nothing to withdraw
            c.send_bytes(data)
            return
        # Their broker entries are withdrawn if it is not sent (the peer
        # gone), or they would stay until this process exits.
        _fds.send(undo, c.send_bytes, data)

    def recv(self) -> Any:
        """Receives an object. Raises ``EOFError`` when the other end is
        closed (or its process died) and nothing is left to read, or when it
        closed in the middle of a message (the error says how much of it
        arrived; memory is taken only as the bytes arrive, not for the length
        a header announces)."""
        return _pickle.loads(self._check_readable().recv_bytes())

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends the bytes of a bytes-like object (or a slice of it) as one
        message. Raises ``TypeError`` for anything that is not bytes-like."""
        c = self._check_writable()
        m = _flat_bytes(buf, "send_bytes", writable=False)
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        c.send_bytes(m[offset : offset + size])

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives one message as bytes. If it is longer than ``maxlength``
        the connection is closed and ``OSError`` raised, as the stdlib does."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._check_readable().recv_bytes()
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receives one message into a writable buffer at ``offset``;
        returns its length. If it does not fit, raises
        ``multiprocessing.BufferTooShort`` carrying the message."""
        from multiprocessing import BufferTooShort

        c = self._check_readable()
        # Every check on ``buf`` and ``offset`` before the message is
        # taken: one that fails leaves it for the next receive.
        with _flat_bytes(buf, "recv_bytes_into", writable=True) as m:
            if offset < 0:
                raise ValueError("negative offset")
            if offset > m.nbytes:
                raise ValueError("offset too large")
            data = c.recv_bytes()
            if m.nbytes - offset < len(data):
                raise BufferTooShort(data)
            m[offset : offset + len(data)] = data
        return len(data)

    async def _recv_async(self, recv: Callable[[], Any]) -> Any:
        """Waits for data through the event loop, then runs ``recv`` in a
        thread of corral's shared asyncio pool."""
        if self.__dict__.get("_recv_async_busy"):
            raise RuntimeError("another coroutine is already waiting in recv_async() on this connection")
        self.__dict__["_recv_async_busy"] = True
        try:
            while not self.poll(0):
                await wait_readable(self.fileno())
            return await run_blocking(recv)
        finally:
            self.__dict__["_recv_async_busy"] = False

    async def recv_async(self) -> Any:
        """``await conn.recv_async()``: waits for data through the event
        loop (``loop.add_reader``, no thread while idle); once a message
        starts arriving, the rest is read in a thread of corral's shared
        asyncio pool, so a large message does not block the loop. One
        ``recv_async``/``recv_bytes_async`` at a time per connection
        (RuntimeError otherwise, as asyncio streams)."""
        return await self._recv_async(self.recv)

    async def recv_bytes_async(self, maxlength: int | None = None) -> bytes:
        """``recv_bytes`` for coroutines, as ``recv_async``."""
        data: bytes = await self._recv_async(lambda: self.recv_bytes(maxlength))
        return data

    async def send_async(self, obj: Any) -> None:
        """``await conn.send_async(obj)``: a small message is written at
        once; a large one (which may wait for the reader to make room) is
        written from a thread of corral's shared asyncio pool, so the loop,
        and a reader in the same loop, keep running."""
        c = self._check_writable()
        undo: list[Callable[[], None]] = []
        data = _pickle.dumps_inband(obj, undo)[0]
        if len(data) <= _ASEND_INLINE:
            _fds.send(undo, c.send_bytes, data)
        else:
            # Withdrawn only if the write fails: a cancelled wait leaves
            # the pool's thread writing it.
            await run_blocking(_fds.send, undo, c.send_bytes, data)

    async def send_bytes_async(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """``send_bytes`` for coroutines, as ``send_async``: up to 64 KiB
        written at once, more from a thread (``buf`` must not change until
        the call returns)."""
        try:
            nbytes = memoryview(buf).nbytes
        except TypeError:
            nbytes = 0  # send_bytes raises its own TypeError
        if nbytes <= _ASEND_INLINE:
            self.send_bytes(buf, offset, size)
        else:
            self._check_writable()
            await run_blocking(self.send_bytes, buf, offset, size)

    async def poll_async(self, timeout: float | None = None) -> bool:
        """``poll`` for coroutines: True once data (or end-of-file) is
        available, through the event loop; False after ``timeout``."""
        self._check_readable()
        if self.poll(0):
            return True
        import asyncio  # not at the top: a worker process never pays for it

        try:
            await asyncio.wait_for(wait_readable(self.fileno()), timeout)
        except TimeoutError:
            return self.poll(0)
        return True

    #: Older name of ``recv_async`` (kept as an alias).
    arecv = recv_async
    #: Older name of ``send_async`` (kept as an alias).
    asend = send_async

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True if data (or end-of-file) is available within ``timeout``
        seconds (None: wait for ever)."""
        return self._check_readable().poll(timeout)


def _flat_bytes(buf: Any, method: str, writable: bool) -> memoryview:
    """``buf``'s bytes as one flat run (a 1-D ``memoryview`` of format
    ``B``), so that offsets and sizes count bytes whatever its shape or
    item type (a 2-D uint8 image too, which the stdlib slices by rows).
    ``TypeError`` for an object that is not bytes-like, a buffer that is
    not C-contiguous, or a read-only one where ``writable``."""
    try:
        m = memoryview(buf)
    except TypeError:
        raise TypeError(f"{method} needs a bytes-like object, not {type(buf).__name__!r}") from None
    if writable and m.readonly:
        m.release()
        raise TypeError(f"{method} needs a writable buffer, not a read-only {type(buf).__name__!r}")
    if not m.c_contiguous:
        m.release()
        raise TypeError(
            f"{method} needs a C-contiguous buffer: pass a contiguous copy (numpy.ascontiguousarray, bytes(...))"
        )
    if m.ndim == 1 and m.format == "B":
        return m
    if m.nbytes == 0:  # a view with a 0 in its shape cannot be cast: an empty run of bytes
        m.release()
        return memoryview(bytearray() if writable else b"")
    return m.cast("B")


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Returns two connected ends ``(conn1, conn2)``. With ``duplex=False``
    ``conn1`` only receives and ``conn2`` only sends."""
    a, b = _core.pipe(duplex)
    return Connection(a), Connection(b)


def _rebuild(handle: _fds.FdHandle, readable: bool, writable: bool) -> Connection:
    return Connection(_core.Connection.from_fd(_fds.import_fd(handle), readable, writable))
