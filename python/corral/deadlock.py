"""Opt-in deadlock detection for corral's ``Lock`` and ``RLock``.

``corral.detect_deadlocks(True)`` (or ``CORRAL_DETECT_DEADLOCKS=1`` in the
environment before ``import corral``) makes a blocking ``acquire`` that
would close a cycle — this thread waits for a lock held by a thread that
waits, directly or through others, for a lock this thread holds — raise
:class:`corral.DeadlockError` naming the locks and threads, instead of
hanging for ever. Only waits without a timeout count (a timed wait ends by
itself). A ``Lock`` is taken to be released by the thread that acquired
it; a program that hands a held ``Lock`` to another thread to release can
see a cycle reported that that thread would have broken.

How: while enabled, the locks' methods are wrapped (the class attributes
are swapped, so the cost when disabled is zero). Each wrapper keeps, under
one internal lock, which thread holds each corral lock and which lock each
thread waits for, and walks that graph before blocking. Holders and waiters
are the threads of this process: a cycle through another process is not
seen. A lock is known by its shared memory (its memfd's inode), so two
handles of one lock are one node.
"""

import os
import threading
from collections.abc import Callable
from typing import Any

from . import _core
from .errors import DeadlockError
from .synchronize import Lock, RLock

__all__ = ["detect_deadlocks", "deadlock_detection_enabled"]

_graph = threading.Lock()
#: lock key -> (holder thread ident, recursion depth)
_held: dict[int, tuple[int, int]] = {}
#: thread ident -> (lock key it waits for, whether that wait has a timeout)
_waiting: dict[int, tuple[int, bool]] = {}
#: lock key -> a description for messages
_names: dict[int, str] = {}
_enabled = False


def _key(lock: Any) -> int:
    key: int | None = lock.__dict__.get("_deadlock_key")
    if key is None:
        key = lock.__dict__["_deadlock_key"] = os.fstat(lock.fileno()).st_ino
        _names[key] = f"{type(lock).__name__} at {hex(id(lock))}"
    return key


def _thread_name(ident: int) -> str:
    for t in threading.enumerate():
        if t.ident == ident:
            return f"thread {t.name!r} ({ident})"
    return f"thread {ident}"


def _cycle(key: int, me: int) -> list[tuple[int, int]] | None:
    """The chain (lock, holder) from ``key`` back to ``me``, if waiting
    for ``key`` would close a cycle. Called with ``_graph`` held."""
    chain: list[tuple[int, int]] = []
    seen: set[int] = set()
    k = key
    while True:
        h = _held.get(k)
        if h is None:
            return None
        chain.append((k, h[0]))
        if h[0] == me:
            return chain
        if h[0] in seen:
            return None  # a cycle without this thread: its members report it
        seen.add(h[0])
        nxt = _waiting.get(h[0])
        if nxt is None or nxt[1]:
            return None  # not waiting, or only until a timeout: no deadlock
        k = nxt[0]


def _message(chain: list[tuple[int, int]]) -> str:
    """ "acquiring A would deadlock: it is held by T2, which waits for B,
    held by this thread (T1)"."""
    text = f"acquiring {_names.get(chain[0][0], chain[0][0])} would deadlock: it is held by "
    for i, (_, holder) in enumerate(chain):
        who = f"this thread ({_thread_name(holder)})" if i == len(chain) - 1 else _thread_name(holder)
        text += who
        if i + 1 < len(chain):
            text += f", which waits for {_names.get(chain[i + 1][0], chain[i + 1][0])}, held by "
    return text


def _took(key: int, me: int) -> None:
    with _graph:
        h = _held.get(key)
        _held[key] = (me, h[1] + 1 if h is not None and h[0] == me else 1)


def _blocking(lock: Any, key: int, me: int, timed: bool, acquire: Callable[[], bool]) -> bool:
    with _graph:
        chain = None if timed else _cycle(key, me)
        # A thread waiting for a plain Lock it holds itself is not a
        # deadlock: another thread may release a Lock (threading allows it).
        if chain is not None and not (len(chain) == 1 and not hasattr(lock, "_release_save")):
            raise DeadlockError(_message(chain), [_names.get(k, str(k)) for k, _ in chain], [t for _, t in chain])
        _waiting[me] = (key, timed)
    try:
        return acquire()
    finally:
        with _graph:
            _waiting.pop(me, None)


def _wrap(base: Any) -> dict[str, Callable[..., Any]]:
    """The wrapped methods for a corral lock class whose native base is ``base``."""
    native_acquire, native_release = base.acquire, base.release

    def acquire(self: Any, blocking: bool = True, timeout: object = -1) -> bool:
        # ``timeout`` is what the caller passed, checked here: the native
        # acquire raises the stdlib's errors for what is not a number.
        me, key = threading.get_ident(), _key(self)
        if not blocking or (
            timeout != -1 and not (isinstance(timeout, (int, float)) and 0 <= timeout <= threading.TIMEOUT_MAX)
        ):
            # Non-blocking, or arguments the native acquire rejects: it
            # decides (and raises the stdlib's errors).
            got = native_acquire(self, blocking, timeout)
            if got:
                _took(key, me)
            return bool(got)
        if native_acquire(self, False):
            _took(key, me)
            return True
        # Blocking, and ``timeout`` is -1 (none) or a number in 0..TIMEOUT_MAX.
        timed = timeout != -1
        if _blocking(self, key, me, timed, lambda: native_acquire(self, True, timeout)):
            _took(key, me)
            return True
        return False

    def release(self: Any) -> None:
        key = _key(self)
        with _graph:  # before the release: a new holder must not be erased
            h = _held.get(key)
            if h is not None:
                if h[1] > 1:
                    _held[key] = (h[0], h[1] - 1)
                else:
                    del _held[key]
        native_release(self)

    def enter(self: Any) -> bool:
        return acquire(self)

    def exit(self: Any, *exc: Any) -> None:
        release(self)

    methods: dict[str, Callable[..., Any]] = {
        "acquire": acquire,
        "release": release,
        "__enter__": enter,
        "__exit__": exit,
    }
    if hasattr(base, "_release_save"):
        native_save, native_restore = base._release_save, base._acquire_restore

        def release_save(self: Any) -> Any:
            with _graph:
                _held.pop(_key(self), None)
            return native_save(self)

        def acquire_restore(self: Any, state: Any) -> None:
            me, key = threading.get_ident(), _key(self)
            _blocking(self, key, me, False, lambda: native_restore(self, state) or True)
            with _graph:
                _held[key] = (me, max(1, int(state)))

        methods["_release_save"] = release_save
        methods["_acquire_restore"] = acquire_restore
    return methods


def detect_deadlocks(enabled: bool = True) -> None:
    """Turns deadlock detection on or off for every corral ``Lock`` and
    ``RLock`` of this process (see the module's documentation)."""
    global _enabled
    for cls, base in ((Lock, _core.Lock), (RLock, _core.RLock)):
        for name, fn in _wrap(base).items():
            if enabled:
                setattr(cls, name, fn)
            elif name in cls.__dict__:
                delattr(cls, name)
    if not enabled:
        with _graph:
            _held.clear()
            _waiting.clear()
    _enabled = enabled


def deadlock_detection_enabled() -> bool:
    """True while ``detect_deadlocks(True)`` is in force."""
    return _enabled
