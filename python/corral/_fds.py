"""How a corral object's descriptors reach another process when pickled.

During ``Process.start`` the child inherits them: the parent duplicates each
descriptor, the child receives it under the same number. Otherwise (an
object put in a queue or sent on a pipe) the descriptor is registered with
this process's broker and the receiver fetches it over a Unix socket, from
that process only (the core checks the broker's pid and uid). A fetch waits
for the sender's broker as long as the sender lives (a stalled sender is
waited for, an exited one fails at once, a signal interrupts the wait), or
until the deadline of the ``fetching_by`` block it runs in
(``Queue.get(timeout=...)`` sets one; never less than 1 s, as the message
holding the handle is already taken): past that deadline the item is lost,
and the fetch raises :class:`corral.ItemLostError` saying so.
A pool task's arguments are pickled under ``lending``: registered for any
number of loads, since a re-run task loads them again, and withdrawn when the
task is done. So is a pool's worker request to its fork server, withdrawn
once the server answered it or is gone (``_forkserver._Server._lend``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from . import _core
from .errors import ItemLostError

__all__ = [
    "FdHandle",
    "Inheritance",
    "export_fd",
    "fetching_by",
    "import_fd",
    "inheriting",
    "lending",
    "on_spawn",
    "sending",
]

FdHandle = tuple[str, int] | tuple[str, bytes, int, int]

_local = threading.local()


class Inheritance:
    """What pickling a process's payload collected: the descriptors the child
    must inherit (the caller closes them after the spawn) and what to tell
    the pickled objects once the child's pid is known."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.on_spawn: list[Callable[[int], None]] = []

    def spawned(self, pid: int) -> None:
        """Runs the ``on_spawn`` callbacks with the child's pid; the first
        that raises (a queue past its holder limit) stops it, and the
        caller stops the child."""
        for callback in self.on_spawn:
            callback(pid)


@contextmanager
def inheriting() -> Iterator[Inheritance]:
    """Collects, while pickling a process's payload, what the child must
    inherit (see ``Inheritance``)."""
    inheritance = Inheritance()
    prev = getattr(_local, "inherit", None)
    _local.inherit = inheritance
    try:
        yield inheritance
    finally:
        _local.inherit = prev


class fetching_by:
    """``with fetching_by(deadline):`` descriptor fetches of this thread end
    by ``deadline`` (``time.monotonic()`` seconds), or an enclosing block's
    earlier one. A class, not a generator: ``Queue.get`` enters it often."""

    __slots__ = ("_deadline", "_prev")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._prev: float | None = None

    def __enter__(self) -> None:
        self._prev = prev = getattr(_local, "deadline", None)
        _local.deadline = self._deadline if prev is None else min(prev, self._deadline)

    def __exit__(self, *exc: object) -> None:
        _local.deadline = self._prev


class lending:
    """``with lending() as lent:`` descriptors pickled in the block are
    registered for any number of receivers, until withdrawn, instead of
    once: a pool task re-run after its worker died loads its arguments
    again. ``lent.tokens`` are the registrations; whoever takes them over
    (the pool's task, which withdraws them when it is done) clears the
    list, and whatever is left when the block ends is withdrawn then."""

    __slots__ = ("tokens", "_prev")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self._prev: lending | None = None

    def __enter__(self) -> lending:
        self._prev = getattr(_local, "lending", None)
        _local.lending = self
        return self

    def __exit__(self, *exc: object) -> None:
        _local.lending = self._prev
        tokens, self.tokens = self.tokens, []
        unshare(tokens)


def unshare(tokens: Iterable[int]) -> None:
    """Withdraws the broker registrations ``tokens``: their descriptors are
    closed, and a Queue among them is no longer counted as lent by this
    process."""
    for token in tokens:
        _core.unshare_fd(token)


#: One-shot exports made by picklings in progress, as (thread ident, undo):
#: a pickling that fails or starts over undoes its own (``settle``), so the
#: broker entry of an attempt that is thrown away is withdrawn and a Queue
#: is not counted as lent to a receiver that will never exist. Empty but
#: while a message holding corral objects is pickled.
oneshots: list[tuple[int, Callable[[], None]]] = []
_oneshots_lock = threading.Lock()


def _oneshots_after_fork() -> None:
    """A forked child: the lock may have been held by a thread that does
    not exist here, and the picklings in progress were other threads'."""
    global _oneshots_lock
    _oneshots_lock = threading.Lock()
    oneshots.clear()


os.register_at_fork(after_in_child=_oneshots_after_fork)


def settle(undo: bool, into: list[Callable[[], None]] | None = None) -> None:
    """Ends this thread's one-shot exports: forgets them (the pickle is
    kept; ``into`` gets how to withdraw each, for the put of the message
    that holds them: ``send``) or, with ``undo``, withdraws them (the
    pickle is thrown away)."""
    me = threading.get_ident()
    with _oneshots_lock:
        mine = [u for t, u in oneshots if t == me]
        oneshots[:] = [(t, u) for t, u in oneshots if t != me]
    if undo:
        withdraw(mine)
    elif into is not None:
        into += mine


def note_oneshot(undo: Callable[[], None]) -> None:
    """Records how to withdraw a one-shot export (see ``oneshots``, and
    the ``sending`` block it is made in)."""
    with _oneshots_lock:  # settle rebuilds the list: an append must not land in between
        oneshots.append((threading.get_ident(), undo))
    block: sending | None = getattr(_local, "sending", None)
    if block is not None:
        block.undo.append(undo)


def withdraw(undo: list[Callable[[], None]]) -> None:
    """Withdraws the exports of a message that did not go: no receiver
    will fetch them."""
    for u in undo:
        u()


def send(undo: list[Callable[[], None]], deliver: Callable[..., object], *args: object) -> None:
    """``deliver(*args)`` for a message whose exports are ``undo``,
    withdrawn if the message did not go (none: a plain call). ``deliver`` is the core's put or
    send (no Python code runs in it): whether it returned is recorded in C
    (``went.extend``), with no bytecode in between, so an exception a
    signal handler raises right after it returned (Python runs handlers
    between bytecodes) is not taken for a failure: that message went, and
    its receiver fetches them."""
    if not undo:
        deliver(*args)
        return
    went: list[object] = []
    try:
        went.extend(itertools.starmap(deliver, (args,)))
    except BaseException:
        if not went:
            withdraw(undo)
        raise


class sending:
    """``with sending():`` the one-shot exports pickled in the block are
    for a message the block sends: if it raises (the message is too large
    for the queue's arena, the queue closed, anything after the pickling),
    the message did not leave, no receiver will fetch them, and they are
    withdrawn; else they stay for the receiver. Without it, a pickle that
    succeeded keeps its registrations (``settle``), and a message that then
    failed to go left them in this process's broker for ever: the
    descriptors stayed open, one set per failed message (a pool worker's
    results). A class, not a generator, whose instance may be entered
    again once it was left: a worker enters one per result (0.36 us, a
    new one each time 0.9 us)."""

    __slots__ = ("undo", "_prev")

    def __init__(self) -> None:
        #: How to withdraw each one-shot export made in the block.
        self.undo: list[Callable[[], None]] = []
        self._prev: sending | None = None

    def __enter__(self) -> None:
        self._prev = getattr(_local, "sending", None)
        _local.sending = self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        _local.sending = self._prev
        undo = self.undo
        if not undo:
            return
        self.undo = []
        if exc_type is None:
            if self._prev is not None:
                # An enclosing block's message carries this one: its
                # failure withdraws them too.
                self._prev.undo += undo
            return
        withdraw(undo)  # withdrawing twice (a thrown-away attempt was undone already) is harmless


def pickling_for() -> Inheritance | lending | None:
    """What a pickle made now is for: the ``Inheritance`` of a process
    start, the ``lending`` block of a pool task, or None (one receiver: a
    message through a queue or pipe)."""
    inherit: Inheritance | None = getattr(_local, "inherit", None)
    if inherit is not None:
        return inherit
    lent: lending | None = getattr(_local, "lending", None)
    return lent


def on_spawn(callback: Callable[[int], None]) -> None:
    """While pickling a process's payload, asks for ``callback(child_pid)``
    after the child starts; elsewhere does nothing."""
    inherit = getattr(_local, "inherit", None)
    if inherit is not None:
        inherit.on_spawn.append(callback)


def export_fd(fd: int) -> FdHandle:
    """A picklable handle from which another process gets ``fd``."""
    inherit = getattr(_local, "inherit", None)
    if inherit is not None:
        dup = _core.dup_fd(fd)
        inherit.fds.append(dup)
        return ("inherit", dup)
    lent = getattr(_local, "lending", None)
    if lent is not None:
        address, pid, token = _core.share_fd_reusable(fd)
        lent.tokens.append(token)
    else:
        address, pid, token = _core.share_fd(fd)
        note_oneshot(lambda: _core.unshare_fd(token))
    return ("broker", address, pid, token)


def import_fd(handle: FdHandle) -> int:
    """The descriptor behind ``handle``, owned by the caller."""
    if handle[0] == "inherit" and len(handle) == 2:
        fd = int(handle[1])
        os.fstat(fd)  # a clear OSError if it was not inherited
        return fd
    if handle[0] == "broker" and len(handle) == 4:
        _, address, pid, token = handle
        deadline: float | None = getattr(_local, "deadline", None)
        if deadline is None:
            return _core.fetch_fd(address, pid, token)
        try:
            return _core.fetch_fd(address, pid, token, max(0.0, deadline - time.monotonic()))
        except TimeoutError as e:
            # The message that carried the handle has left its queue or pipe.
            raise ItemLostError(
                f"{e.strerror}; the item that held this object was already taken from its queue or pipe and "
                "is lost (a get without a timeout waits for a stalled sender as long as it lives)"
            ) from e
    raise ValueError(f"unknown descriptor handle {handle!r}")
