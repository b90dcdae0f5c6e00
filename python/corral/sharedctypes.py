"""``Value``, ``Array``, ``RawValue``, ``RawArray``: ctypes objects in shared
memory (``multiprocessing.sharedctypes``), over corral's memfds and locks.

Each object lives in a memfd of its own (``_Block``) that every
process holding it maps read-write: a write in one process is seen by the others. It
pickles as that memfd, the way corral's other objects travel (inherited at
a process start, fetched from the sender's fd broker through a queue, a pipe
or a pool task), so unlike the stdlib's it can also be sent after the
processes have started. ``Value``/``Array`` wrap it with a lock (a corral
``RLock`` by default, ``lock=`` another corral lock, or ``lock=False`` for
the raw object): ``get_lock()``, ``get_obj()``, ``with v:``. Typecodes are
the stdlib's (``"i"``, ``"d"``, ``"c"``, ...) or a ctypes type.
"""

import ctypes
import mmap
import os
import weakref
from multiprocessing import sharedctypes as _mp
from typing import Any

from . import _fds
from .synchronize import RLock

__all__ = [
    "Array",
    "RawArray",
    "RawValue",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedString",
    "Value",
    "synchronized",
]

#: The module, for the names its stub does not declare.
_mp_any: Any = _mp

#: The stdlib's typecodes ("i" -> ctypes.c_int, ...).
typecode_to_type: dict[str, Any] = dict(_mp_any.typecode_to_type)

#: ctypes type -> its subclass that pickles as shared memory.
_shared_types: dict[Any, Any] = {}


class _Block:
    """A memfd mapped shared and writable (``corral.share``'s
    ``SharedBuffer`` maps a received one read-only): the memory of one
    shared ctypes object, kept alive by it."""

    def __init__(self, nbytes: int, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("corral-sharedctypes", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, nbytes)  # zero-filled
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        weakref.finalize(self, os.close, fd)
        self.nbytes = nbytes
        self.map = mmap.mmap(fd, nbytes)


def _reduce_shared(obj: Any) -> tuple[Any, ...]:
    """A shared ctypes object pickles as its memfd (any process that loads
    it maps the same memory)."""
    block = obj._corral_block
    return (_rebuild_shared, (type(obj)._corral_spec, _fds.export_fd(block.fd), block.nbytes))


def _shared_type(type_: Any, spec: tuple[Any, int | None]) -> Any:
    """The subclass of ctypes type ``type_`` whose instances live in a
    memfd and pickle as it; ``spec`` (element type, length or None) rebuilds
    ``type_`` where it is loaded."""
    cls = _shared_types.get(type_)
    if cls is None:
        cls = type(type_.__name__, (type_,), {"__reduce__": _reduce_shared, "_corral_spec": spec})
        _shared_types[type_] = cls
    return cls


def _type_of(spec: tuple[Any, int | None]) -> Any:
    elem, length = spec
    return elem if length is None else elem * length


def _new(spec: tuple[Any, int | None]) -> Any:
    """A zeroed shared object of the ctypes type ``spec`` describes."""
    type_ = _type_of(spec)
    return _on_block(spec, _Block(max(1, ctypes.sizeof(type_))))


def _on_block(spec: tuple[Any, int | None], block: _Block) -> Any:
    type_ = _type_of(spec)
    if ctypes.sizeof(type_) > block.nbytes:
        raise ValueError(f"a shared {type_.__name__} needs {ctypes.sizeof(type_)} bytes, not {block.nbytes}")
    obj = _shared_type(type_, spec).from_buffer(block.map)
    obj._corral_block = block
    return obj


def _rebuild_shared(spec: tuple[Any, int | None], handle: _fds.FdHandle, nbytes: int) -> Any:
    return _on_block(spec, _Block(nbytes, _fds.import_fd(handle)))


def _ctype(typecode_or_type: Any) -> Any:
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type) if isinstance(typecode_or_type, str) else None
    if type_ is None:
        type_ = typecode_or_type
    if isinstance(type_, str) or not hasattr(type_, "from_buffer"):
        raise TypeError(f"{typecode_or_type!r} is neither a typecode nor a ctypes type")
    return type_


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock."""
    obj = _new((_ctype(typecode_or_type), None))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, without a lock: ``size`` zeros, or
    a copy of the initializer sequence."""
    type_ = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        if size_or_initializer < 0:
            raise ValueError(f"array size must be >= 0, not {size_or_initializer}")
        return _new((type_, size_or_initializer))
    items = list(size_or_initializer)
    obj = _new((type_, len(items)))
    obj.__init__(*items)
    return obj


def _lock_for(lock: Any) -> Any:
    if lock is True or lock is None:
        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes object in shared memory behind a lock (a new corral
    ``RLock`` unless ``lock`` is one; ``lock=False``: the raw object)."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes array in shared memory behind a lock (see ``Value``)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


class Synchronized(_mp.Synchronized):  # type: ignore[type-arg]
    """A shared ctypes value with its lock: ``value``, ``get_lock()``,
    ``get_obj()``, ``acquire``/``release``, ``with``. Picklable at any
    time (the stdlib's only while starting a process)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (synchronized, (self.get_obj(), self.get_lock()))


class SynchronizedArray(_mp.SynchronizedArray):  # type: ignore[type-arg]
    """A shared ctypes array with its lock: indexing, slicing and ``len``
    take the lock."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (synchronized, (self.get_obj(), self.get_lock()))


class SynchronizedString(_mp.SynchronizedString):
    """A shared ``c_char`` array with its lock: also ``value`` and ``raw``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (synchronized, (self.get_obj(), self.get_lock()))


_struct_types: dict[Any, Any] = {}


def synchronized(obj: Any, lock: Any = None) -> Any:
    """``obj`` (a shared ctypes object) behind ``lock`` (a new corral
    ``RLock`` if None), in the wrapper class that fits it."""
    if lock is None:
        lock = RLock()
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    cls = _struct_types.get(type(obj))
    if cls is None:
        props = {name: _mp_any.make_property(name) for name, *_ in obj._fields_}
        cls = type("Synchronized" + type(obj).__name__, (Synchronized,), props)
        _struct_types[type(obj)] = cls
    return cls(obj, lock)
