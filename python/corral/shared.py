"""``corral.share(array)``: a read-only numpy array placed once in shared
memory and passed to any number of tasks or processes without copying.

Pickling a ``SharedArray`` sends only a handle. The first time a process
unpickles it, the process maps the memory (fetching its descriptor from the
sharing process); after that the same mapping is reused, so a thousand tasks
that read the same 1 GB array cost one mapping per worker, not a thousand
copies. In the receiving process the task gets a plain read-only
``numpy.ndarray``.

The sharing process must keep the ``SharedArray`` alive while others may
still unpickle it (as for a queue sent through a queue). The memory is freed
when the last process holding a view lets it go.
"""

import os
import weakref
from collections import OrderedDict
from typing import Any

from . import _core, _fds

__all__ = ["SharedArray", "share"]

#: Mappings kept per process, most recently used last.
_ATTACHED_MAX = 16
_attached: OrderedDict[int, Any] = OrderedDict()


class SharedArray:
    """A read-only array in shared memory (see :func:`share`).

    ``array`` is the numpy view in this process; ``numpy.asarray(shared)``
    gives the same. In a task, a pickled ``SharedArray`` arrives as that
    read-only ``numpy.ndarray``.
    """

    def __init__(self, array: Any) -> None:
        import numpy as np

        src = np.ascontiguousarray(array)
        if src.dtype.hasobject:
            raise TypeError("corral.share needs an array of plain values, not Python objects")
        self._buf = _core.SharedBuffer(src.nbytes)
        # Through a memoryview: numpy's stubs take no other buffer types.
        writable = np.frombuffer(memoryview(self._buf), dtype=src.dtype, count=src.size).reshape(src.shape)
        writable[...] = src
        del writable
        self._buf.seal()
        self.array = np.frombuffer(memoryview(self._buf), dtype=src.dtype, count=src.size).reshape(src.shape)
        self._id = int.from_bytes(os.urandom(8), "little")
        self._ticket: tuple[bytes, int, int] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.array.shape)

    @property
    def dtype(self) -> Any:
        """The array's dtype."""
        return self.array.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return int(self.array.nbytes)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        if dtype is not None and dtype != self.array.dtype:
            return self.array.astype(dtype)
        return self.array.copy() if copy else self.array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __repr__(self) -> str:
        return f"<corral.SharedArray shape={self.shape} dtype={self.dtype}>"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._ticket is None:
            self._ticket = _core.share_fd_reusable(self._buf.fileno())
            weakref.finalize(self, _core.unshare_fd, self._ticket[2])
        handle: _fds.FdHandle = ("broker", *self._ticket)
        return (_attach, (self._id, handle, self.dtype.str, self.shape))


def _attach(share_id: int, handle: _fds.FdHandle, dtype: str, shape: tuple[int, ...]) -> Any:
    arr = _attached.get(share_id)
    if arr is not None:
        _attached.move_to_end(share_id)
        return arr
    import numpy as np

    dt = np.dtype(dtype)
    count = 1
    for n in shape:
        count *= n
    buf = _core.SharedBuffer.from_fd(_fds.import_fd(handle), count * dt.itemsize)
    arr = np.frombuffer(memoryview(buf), dtype=dt, count=count).reshape(shape)
    _attached[share_id] = arr
    if len(_attached) > _ATTACHED_MAX:
        _attached.popitem(last=False)
    return arr


def share(array: Any) -> SharedArray:
    """Copies ``array`` once into shared memory and returns a
    :class:`SharedArray` to pass to tasks instead of the array::

        weights = corral.share(np.load("embeddings.npy"))   # 2 GB, copied once
        with corral.ProcessPoolExecutor() as pool:
            scores = list(pool.map(score, queries, itertools.repeat(weights)))

    Each worker maps it once and tasks read it without a copy; it is
    read-only everywhere.
    """
    return SharedArray(array)
