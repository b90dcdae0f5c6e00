"""Serialization for every corral channel.

Pickle protocol 5 with out-of-band buffers: numpy arrays and other
contiguous buffers of 4 KiB or more are not copied into the pickle stream;
the channel moves them itself (large ones through shared memory). So does
a message that is one ``bytes``, ``bytearray`` or ``memoryview`` of that
size, which pickle alone always copies into the stream. Objects plain pickle cannot
handle by reference (lambdas, closures, local classes) fall back to
cloudpickle, which serializes them by value.
"""

from __future__ import annotations

import collections.abc
import copyreg
import io
import itertools
import linecache
import pickle
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import _fds, _torch
from ._fds import oneshots as _oneshots
from .errors import RemoteTraceback

__all__ = [
    "PicklingError",
    "dumps",
    "dumps_inband",
    "loads",
    "dumps_by_value",
    "pack_exception",
    "spawning",
    "unpack_exception",
]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = 5
_modules = sys.modules


#: Buffers of at least this many bytes travel out of band (a queue copies
#: each once into its shared memory; past the first 64 KiB of a message the
#: receiver's array is a view on it); smaller ones are pickled in the
#: stream, where they cost less than a part of their own and do not count
#: against the parts a message may have. Measured on the 2-core VM, put +
#: get of a list of 2,000 arrays, out of band vs in band: 512 B 16.0 vs 8.0
#: ms; 4 KiB 17.0 vs 16.9 ms; 8 KiB 22.0 vs 33.2 ms; 16 KiB 23.3 vs 42.9 ms.
OUT_OF_BAND_MIN = 4096
#: Out-of-band buffers a message may have when the caller does not say (a
#: queue's ``max_buffers`` is the real bound; this is the core's default
#: queue's, rounded down).
MAX_BUFFERS = 32_000


def dumps(
    obj: Any, max_buffers: int = MAX_BUFFERS, into: list[Callable[[], None]] | None = None
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles ``obj``; returns the stream and its out-of-band buffers:
    those of ``OUT_OF_BAND_MIN`` bytes or more, at most ``max_buffers`` of
    them (past that, the largest stay out of band and the others are
    pickled in band: ``obj`` is pickled twice more, see ``_dumps_largest``).
    ``into``: gets how to withdraw the one-shot exports of the corral
    objects in the pickle kept (``_fds.settle``), for a put that withdraws
    them if its message does not go (``_fds.send``).

    Raises the pickling error (TypeError, PicklingError, ...) in the caller
    when neither pickle nor cloudpickle can serialize the object.
    """
    # Every put runs this, in one pass (a second pass would also register
    # a second time the descriptors of the corral objects inside). The
    # callback is the buffer list itself (``_OutOfBand``): measured on the
    # 2-core VM, 2026-12-06, a 100-byte put + get takes 1.63-1.67 us, as
    # with the bare list.append of before the size rule (1.62-1.65 us),
    # against 1.77 us with a filtering closure made on every call; put +
    # get of a list of 20,000 one-element arrays takes 90-115 ms (before
    # the rule such a message was refused for its 20,001 parts).
    # Corral objects pickled for one receiver are noted in ``_oneshots``
    # (see ``_fds.oneshots``): withdrawn when an attempt is thrown away.
    # A large bytes-like message: its payload out of band (``_dumps_raw``).
    # The test costs a put 30 ns (60 ns for a small bytes) of its 1.6 us
    # put + get (measured on the loaded VM, 2026-12-06).
    cls = type(obj)
    if cls in _RAW_TYPES and (cls is memoryview or len(obj) >= OUT_OF_BAND_MIN) and max_buffers > 0:
        raw = _dumps_raw(obj)
        if raw is not None:
            return raw
    if _oneshots:
        # Left by a pickle of this thread that was not ours (copy.copy,
        # pickle.dumps): kept, so not ours to undo if this attempt fails.
        _fds.settle(undo=False)
    buffers = _OutOfBand()
    try:
        try:  # inline, not _dumps_any: a call less on every put
            if "torch" not in _modules:
                data = _dumps(obj, _PROTOCOL, buffer_callback=buffers)
            else:
                data = _pickle5(obj, buffers)
        except (pickle.PicklingError, AttributeError, TypeError):
            _undo_oneshots()
            buffers.clear()
            data = _cloudpickle_dumps(obj, buffers)
        if len(buffers) > max_buffers:
            _undo_oneshots()
            data, buffers = _dumps_largest(obj, max_buffers)  # type: ignore[assignment]
    except BaseException:
        _undo_oneshots()
        raise
    if _oneshots:
        _fds.settle(undo=False, into=into)
    return data, buffers


def _undo_oneshots() -> None:
    """A pickling attempt is thrown away: withdraws the one-shot exports it
    made (``_fds.oneshots``)."""
    if _oneshots:
        _fds.settle(undo=True)


class _OutOfBand(list):  # type: ignore[type-arg]
    """The out-of-band buffers of one ``dumps``, and its buffer callback:
    keeps a buffer of ``OUT_OF_BAND_MIN`` bytes or more (out of band),
    leaves a smaller one in the stream."""

    __slots__ = ()

    def __call__(self, buf: pickle.PickleBuffer) -> bool | None:
        if memoryview(buf).nbytes < OUT_OF_BAND_MIN:
            return True  # in band
        self.append(buf)
        return None  # out of band


#: Types whose payload ``dumps`` sends out of band itself when it is the
#: whole message (pickle writes ``bytes`` and ``bytearray`` in the stream
#: whatever their size, and refuses a ``memoryview``).
_RAW_TYPES = frozenset((bytes, bytearray, memoryview))


def _dumps_raw(obj: bytes | bytearray | memoryview) -> tuple[bytes, list[pickle.PickleBuffer]] | None:
    """``dumps`` of a message that is one bytes-like object: its payload
    out of band when it has ``OUT_OF_BAND_MIN`` bytes or more, so a queue
    copies it once into its shared memory (pickled in band it was copied
    once more, into the stream's fresh pages), and the stream holds only
    how to rebuild it (``_Raw``); a ``memoryview`` of any size comes here
    (pickle refuses one). None: pickle it as any other object (a
    ``memoryview`` that is not C-contiguous, which cloudpickle sends as
    ``bytes``).

    The receiver gets a ``bytes`` (for a ``bytes`` or a ``memoryview``,
    which arrives as ``bytes`` as cloudpickle sends it) or a ``bytearray``,
    built by one copy out of the shared block, which is then freed."""
    if type(obj) is memoryview and not obj.c_contiguous:
        return None
    buffers = _OutOfBand()
    return _dumps(_Raw(obj), _PROTOCOL, buffer_callback=buffers), buffers


class _Raw:
    """Pickles a bytes-like object as a call rebuilding it from a
    ``PickleBuffer`` of its payload (out of band when large: see
    ``_OutOfBand``)."""

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray | memoryview) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        rebuild = bytearray if type(self.obj) is bytearray else bytes
        return (rebuild, (pickle.PickleBuffer(self.obj),))


class PicklingError(pickle.PicklingError, TypeError):
    """An object cannot be pickled (neither pickle nor cloudpickle could):
    ``except pickle.PicklingError`` catches it, as the stdlib's pools raise
    that, and ``except TypeError`` still does, as corral raised before."""


def _dumps_any(obj: Any, callback: Any, reset: Any = None) -> bytes:
    """pickle, or cloudpickle for what pickle cannot do (the first
    attempt's one-shot exports are withdrawn and ``reset`` runs between
    the two)."""
    try:
        if _spawners and _is_spawning():
            return _dumps_spawning(obj, callback, False)
        return _pickle5(obj, callback)
    except (pickle.PicklingError, AttributeError, TypeError):
        _undo_oneshots()
        if reset is not None:
            reset()
        return _cloudpickle_dumps(obj, callback)


def _pickle5(obj: Any, callback: Any) -> bytes:
    """``pickle.dumps`` at protocol 5; once torch is imported, with its CPU
    tensors' storages as buffers (``_torch``: out of band like a NumPy
    array's, not copied through ``torch.save`` bytes)."""
    cls = _torch.pickler()
    if cls is None:
        return _dumps(obj, _PROTOCOL, buffer_callback=callback)
    return _torch.dumps(cls, obj, _PROTOCOL, callback)


def _cloudpickle_dumps(obj: Any, callback: Any) -> bytes:
    # cloudpickle is imported when first needed (here and in
    # ``dumps_by_value``): 4 ms of start-up that a program pickling only
    # importable objects does not pay.
    try:
        if _spawners and _is_spawning():
            return _dumps_spawning(obj, callback, True)
        return _by_value(obj, callback)
    except Exception as exc:
        raise PicklingError(f"cannot pickle {type(obj).__name__!r} object: {exc}") from exc


# -- payloads of a process start ("spawning", as multiprocessing says) --------
#
# multiprocessing's Queue, Lock, Event, Semaphore, Connection... pickle only
# while a process is being started (``context.assert_spawning``), and their
# descriptors go through the ``Popen`` being started (``DupFd``). corral's
# process starts (a spawned ``Process``'s payload, a pool's ``initargs``
# sent to its fork server) pickle under ``spawning()``: multiprocessing sees
# ``_SpawningPopen`` as the process being started, whose descriptors travel
# as corral's do (``_fds.export_fd``: inherited at a spawn, fetched from
# this process's broker by the fork server), and its picklers'
# ``Connection``/``socket`` reducers apply. A pool task's arguments are not
# a process start: as with the stdlib, those objects refuse them.

_spawning_local = threading.local()
#: Threads inside ``spawning()`` now (the fast test of ``_dumps_any``).
_spawners = 0
_spawners_lock = threading.Lock()


def _is_spawning() -> bool:
    return bool(getattr(_spawning_local, "depth", 0))


class _DupFd:
    """multiprocessing's ``DupFd`` for a descriptor a corral process start
    carries: ``detach()`` in the child returns it."""

    __slots__ = ("handle",)

    def __init__(self, handle: _fds.FdHandle) -> None:
        self.handle = handle

    def detach(self) -> int:
        """The descriptor, owned by the caller."""
        return _fds.import_fd(self.handle)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_DupFd, (self.handle,))


class _SpawningPopen:
    """What ``multiprocessing.context.get_spawning_popen()`` returns while
    corral pickles a process's payload (see ``spawning``)."""

    def duplicate_for_child(self, fd: int) -> _fds.FdHandle:
        """A handle from which the child gets a duplicate of ``fd``."""
        return _fds.export_fd(fd)

    def DupFd(self, handle: _fds.FdHandle) -> _DupFd:
        """What the child calls ``detach()`` on."""
        return _DupFd(handle)


class _SpawnDispatch(collections.abc.Mapping):  # type: ignore[type-arg]
    """The dispatch table of a process-start pickle: multiprocessing's reducers (``ForkingPickler``'s table, not
    copyreg's), read live: its ``Connection``, sockets, the heap arenas
    behind its shared ctypes, and each ctypes type a shared ctypes object
    of it registered. Not those for methods and partials (builtins,
    functools), which cloudpickle handles by value where it must. Then
    ``fallback`` (the pickler's own table). ``multiprocessing.connection``
    and ``heap`` are not imported for their reducers: they register them
    only for their own classes, of which no object exists before they are
    imported (importing them cost the first process start 10-20 ms)."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback
        from multiprocessing.reduction import ForkingPickler

        self._table: dict[type, Any] = ForkingPickler._extra_reducers  # type: ignore[attr-defined]

    def __getitem__(self, t: type) -> Any:
        reducer = self._table.get(t)
        if reducer is not None and t.__module__ not in ("builtins", "functools"):
            return reducer
        return self._fallback[t]

    def __iter__(self) -> Iterator[type]:
        return iter({**self._fallback, **self._table})

    def __len__(self) -> int:
        return len({**self._fallback, **self._table})


_spawn_picklers: dict[bool, type] = {}


def _dumps_spawning(obj: Any, callback: Any, by_value: bool) -> bytes:
    """A pickle of a process-start payload: with multiprocessing's
    reducers (cloudpickle's pickler, keeping source file names, if
    ``by_value``)."""
    cls = _spawn_picklers.get(by_value)
    if cls is None:
        if by_value:
            base: Any = _source_pickler()
            table: Any = _SpawnDispatch(base.dispatch_table)
        else:
            base, table = pickle.Pickler, _SpawnDispatch(copyreg.dispatch_table)
        cls = type("_SpawnPickler", (base,), {"dispatch_table": table})
        _spawn_picklers[by_value] = cls
    out = io.BytesIO()
    cls(out, _PROTOCOL, buffer_callback=callback).dump(obj)
    return out.getvalue()


@contextmanager
def spawning() -> Iterator[None]:
    """Pickles made by this thread in the block are a process's start
    payload: multiprocessing's objects may be in it (see above)."""
    global _spawners
    from multiprocessing import context

    prev = context.get_spawning_popen()
    context.set_spawning_popen(_SpawningPopen())  # type: ignore[arg-type]
    _spawning_local.depth = getattr(_spawning_local, "depth", 0) + 1
    with _spawners_lock:
        _spawners += 1
    try:
        yield
    finally:
        with _spawners_lock:
            _spawners -= 1
        _spawning_local.depth -= 1
        context.set_spawning_popen(prev)


def _dumps_largest(obj: Any, max_buffers: int) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``dumps`` of an object with more than ``max_buffers`` large buffers:
    one pass measures them (out of band, so nothing is copied), the next
    keeps the ``max_buffers`` largest, told apart by their position in the
    order pickle offers them, which is the same on every pass."""
    sizes: list[int] = []

    def measure(buf: pickle.PickleBuffer) -> None:
        sizes.append(memoryview(buf).nbytes)

    _dumps_any(obj, measure, sizes.clear)
    _undo_oneshots()  # the measuring pass is thrown away
    by_size = sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True)
    chosen = set(by_size[: max(0, max_buffers)])
    kept: list[pickle.PickleBuffer] = []
    offered = itertools.count()

    def pick(buf: pickle.PickleBuffer) -> bool | None:
        if next(offered) not in chosen or len(kept) >= max_buffers:
            return True
        kept.append(buf)
        return None

    def restart() -> None:
        nonlocal offered
        kept.clear()
        offered = itertools.count()

    return _dumps_any(obj, pick, restart), kept


def reduce_received_buffer(block: Any, protocol: int) -> tuple[Any, ...]:
    """How a received raw buffer (``_core.ShmBlock``: a ``PickleBuffer``
    put into a queue arrives as a block of its shared memory) pickles: on
    protocol 5, as a ``PickleBuffer`` of itself, which a channel moves out
    of band like any buffer, so the next receiver gets a bytes-like object
    again (a bytearray, or a block); on older protocols, as a bytearray."""
    if protocol >= 5:
        return (_received_buffer, (pickle.PickleBuffer(block),))
    return (bytearray, (bytes(block),))


def _received_buffer(buf: Any) -> Any:
    return buf


def dumps_by_value(obj: Any) -> bytes:
    """Pickles with cloudpickle, every buffer in the stream: functions
    defined in ``__main__``, lambdas and closures are sent by value, so a
    fresh interpreter can load them."""
    try:
        if _spawners and _is_spawning():
            return _dumps_spawning(obj, None, True)
        return _by_value(obj, None)
    except (pickle.PicklingError, RuntimeError):
        raise  # RuntimeError: a multiprocessing object refusing this pickle says why itself
    except Exception as exc:
        raise PicklingError(f"cannot pickle {type(obj).__name__!r} object: {exc}") from exc


def dumps_by_reference(obj: Any) -> bytes:
    """As ``dumps_by_value``, with pickle: the functions it holds are named,
    for the receiving interpreter to import. For a process start whose
    target is importable (the fork server's): the start does not import
    cloudpickle (5-15 ms before the child can be created)."""
    try:
        if _spawners and _is_spawning():
            return _dumps_spawning(obj, None, False)
        return _dumps(obj, _PROTOCOL)
    except (pickle.PicklingError, RuntimeError):
        raise
    except Exception as exc:
        raise PicklingError(f"cannot pickle {type(obj).__name__!r} object: {exc}") from exc


def _by_value(obj: Any, callback: Any) -> bytes:
    """cloudpickle's ``dumps``, keeping where each function was written
    (``_SourcePickler``)."""
    cls = _torch.pickler(_source_pickler()) if "torch" in _modules else None
    if cls is not None:
        return _torch.dumps(cls, obj, _PROTOCOL, callback)
    f = io.BytesIO()
    _source_pickler()(f, _PROTOCOL, buffer_callback=callback).dump(obj)
    return f.getvalue()


_source_pickler_cls: Any = None


def _source_pickler() -> Any:
    """cloudpickle's Pickler, except that a code object keeps its
    ``co_filename`` (cloudpickle writes ``"<dynamic-code>"``), so a
    traceback through a function of ``__main__`` or of a notebook cell
    names its file and line (and shows the line wherever the file can be
    read), as the stdlib's pools do. Made at first use: cloudpickle is
    imported only when needed."""
    global _source_pickler_cls
    if _source_pickler_cls is None:
        import collections

        import cloudpickle
        from cloudpickle import cloudpickle as impl

        if not hasattr(impl, "_code_reduce"):
            # cloudpickle 2.x (pyproject allows >= 2.2) keeps co_filename
            # itself; its reducer lives elsewhere (cloudpickle_fast).
            _source_pickler_cls = cloudpickle.Pickler
            return _source_pickler_cls

        def code_reduce(code: types.CodeType) -> tuple[Any, ...]:
            make, args = impl._code_reduce(code)
            # The only string argument equal to cloudpickle's placeholder
            # (a code object's names are identifiers, never this).
            return make, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)

        class _SourcePickler(cloudpickle.Pickler):  # type: ignore[misc]
            dispatch_table = collections.ChainMap({types.CodeType: code_reduce}, cloudpickle.Pickler.dispatch_table)

        _source_pickler_cls = _SourcePickler
    return _source_pickler_cls


def loads(data: Any, buffers: list[Any] | None = None) -> Any:
    """Unpickles a stream made by ``dumps``, with its buffers."""
    return _loads(data, buffers=buffers)


def pack_exception(exc: BaseException) -> bytes:
    """Pickles an exception for another process, with its formatted
    traceback; ``unpack_exception`` rebuilds it there.

    The exception travels as it pickles itself when that round trip works
    here. Otherwise (an ``__init__`` that wants other arguments than
    ``args``, an attribute that cannot be pickled) it travels as its own
    type rebuilt without calling ``__init__``: ``args`` and ``__dict__`` as
    they were, except that an attribute that cannot be pickled is dropped
    and an argument that cannot be pickled is replaced by its repr, each
    named in a note (``__notes__``). Only a type that cannot travel at all
    (or cannot be loaded by the receiver) becomes a RuntimeError naming it.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    cls = type(exc)
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    return _dumps((_exception_payload(exc), f"{cls.__module__}.{cls.__qualname__}", text, tb), _PROTOCOL)


def unpack_exception(data: bytes) -> BaseException:
    """The exception of ``pack_exception``, its remote traceback attached
    as ``__cause__``."""
    payload, type_name, text, tb = _loads(data)
    loaded: object = None
    why = "it cannot be pickled"
    if payload is not None:
        try:
            loaded = _loads(payload)
        except BaseException as e:  # SystemExit from a __reduce__ too
            why = f"it cannot be loaded here: {type(e).__name__}: {e}"
    exc: BaseException
    if isinstance(loaded, BaseException):
        exc = loaded
    else:
        exc = RuntimeError(f"{type_name}: {text}")
        exc.add_note(f"corral: the remote exception comes back as RuntimeError because {why}")
    exc.__cause__ = RemoteTraceback(f'\n"""\n{with_source_lines(tb)}"""')
    return exc


#: A frame line of a formatted traceback (``traceback.format_exception``).
_FRAME = re.compile(r'  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def with_source_lines(tb: str) -> str:
    """A traceback formatted in another process, with the source line
    filled in under each frame that has none where this process can read
    it (a notebook cell's code is in this kernel's ``linecache`` only; a
    file the worker could not open may be readable here)."""
    lines = tb.splitlines(keepends=True)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m is None or (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            continue
        source = linecache.getline(m["file"], int(m["line"])).strip()
        if source:
            out.append(f"    {source}\n")
    return "".join(out)


def _exception_payload(exc: BaseException) -> bytes | None:
    """The pickle of ``exc``, checked to load back here as its own type;
    None when the type itself cannot travel."""
    try:
        data = dumps_inband(exc)[0]
        if type(_loads(data)) is type(exc):
            return data
    except BaseException:  # a __reduce__ or an __init__ may raise anything
        pass
    try:
        data = dumps_inband(_portable(exc, {}))[0]
        if type(_loads(data)) is type(exc):
            return data
    except BaseException:
        pass
    return None


def _portable(value: Any, memo: dict[int, _RebuiltException]) -> Any:
    """``value`` ready to travel: an exception (also one inside a list or
    tuple, as an ExceptionGroup holds them, or in another's attributes)
    becomes a ``_RebuiltException`` of itself, whose arguments and
    attributes are made portable in turn; one that refers to itself (or
    two that refer to each other) keeps the cycle (``memo``)."""
    if isinstance(value, BaseException):
        done = memo.get(id(value))
        if done is not None:
            return done
        rebuilt = memo[id(value)] = _RebuiltException(type(value), (), {})
        notes: list[str] = []
        args = []
        for i, arg in enumerate(value.args):
            arg = _portable(arg, memo)
            if _picklable(arg):
                args.append(arg)
            else:
                args.append(_safe_repr(arg))
                notes.append(
                    f"corral: argument {i} ({type(arg).__name__}) could not be pickled; it is replaced by its repr"
                )
        state = {}
        for key, attr in getattr(value, "__dict__", {}).items():
            attr = _portable(attr, memo)
            if _picklable(attr):
                state[key] = attr
            else:
                notes.append(f"corral: attribute {key!r} ({type(attr).__name__}) could not be pickled and was dropped")
        if notes:
            state["__notes__"] = [*state.get("__notes__", ()), *notes]
        rebuilt.args, rebuilt.state = tuple(args), state
        return rebuilt
    if type(value) in (list, tuple):
        return type(value)(_portable(v, memo) for v in value)
    return value


def _picklable(value: Any) -> bool:
    try:
        dumps_inband(value)
    except BaseException:
        return False
    return True


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"


class _RebuiltException:
    """Pickles as a call to ``_rebuild_exception``, then its attributes set
    by ``_set_exception_state`` (after pickle has memoized the instance, so
    an attribute may refer back to it)."""

    def __init__(self, cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> None:
        self.cls, self.args, self.state = cls, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exception, (self.cls, self.args), self.state, None, None, _set_exception_state)


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An instance of the exception type ``cls`` with these ``args``, made
    without calling ``__init__`` (which may want other arguments than
    ``args``)."""
    exc = _new_exception(cls, args)
    exc.args = args
    return exc


def _set_exception_state(exc: BaseException, state: dict[str, Any]) -> None:
    """Sets the attributes of a rebuilt exception (not through its class's
    ``__setstate__``, which may want another state)."""
    exc.__dict__.update(state)


def _new_exception(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    try:
        exc = cls.__new__(cls, *args)
        if isinstance(exc, cls):
            return exc
    except Exception:
        pass
    # A __new__ written in Python that wants other arguments: the nearest
    # built-in base's __new__ allocates the instance with the right layout.
    for base in cls.__mro__[1:]:
        new = base.__dict__.get("__new__")
        if new is not None and not isinstance(new, staticmethod):
            return base.__new__(cls)  # type: ignore[call-overload,no-any-return]
    raise TypeError(f"cannot allocate {cls!r}")


def dumps_inband(obj: Any, into: list[Callable[[], None]] | None = None) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles with every buffer in the stream (for byte streams such as a
    pipe); falls back to cloudpickle like ``dumps`` (``into``: as there)."""
    if _oneshots:
        _fds.settle(undo=False)  # another pickle's, as in ``dumps``
    try:
        data = _dumps_any(obj, None)
    except BaseException:
        _undo_oneshots()
        raise
    if _oneshots:
        _fds.settle(undo=False, into=into)
    return data, []
