"""The fd broker against another local user.

A pickled corral object reaches its receiver through the sender's broker, an
abstract Unix socket that any user can see and connect to, and whose name
any user can bind once the sender has exited. Each test forks a real child
that drops to uid ``nobody`` and tries one attack: take a descriptor, answer
in place of a dead sender, stall the broker with an idle connection. A
stalled sender must not make ``Queue.get(timeout=...)`` outlast its timeout.

Children are plain ``os.fork`` children reporting by lines on a pipe; every
wait is bounded.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import corral
from _helpers import Interrupted, interrupt_after, pid_gone, proc_state, wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or os.geteuid() != 0,
    reason="needs root, to fork a child that drops to uid nobody",
)

NOBODY = 65534
#: Bound on any wait, generous for a busy machine.
BOUND = 20.0


class Child:
    """A forked child running ``body(report)``; ``report(text)`` sends it a
    line, ``line()`` reads the next one within BOUND, ``tell`` writes to
    the child's ``listen()``."""

    def __init__(self, body: Callable[[Child], None]) -> None:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        self._buf = b""
        self._reaped = False
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(up_r)
                os.close(down_w)
                self._up, self._down = up_w, down_r
                body(self)
                code = 0
            except BaseException as exc:
                try:
                    self.report(f"error {type(exc).__name__}: {exc}")
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(up_w)
        os.close(down_r)
        self._up, self._down = up_r, down_w

    # child side
    def report(self, text: str) -> None:
        os.write(self._up, text.replace("\n", " ").encode() + b"\n")

    def listen(self) -> str:
        return self._read(self._down)

    # parent side
    def line(self) -> str:
        return self._read(self._up)

    def tell(self, text: str) -> None:
        os.write(self._down, text.encode() + b"\n")

    def _read(self, fd: int) -> str:
        deadline = time.monotonic() + BOUND
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no word from the other side within {BOUND}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError("the other side exited without a word")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def reap(self) -> bool:
        """Waits (within BOUND) until the child is reaped: only then have
        all its threads exited and its descriptors closed (its leader shows
        as a zombie while other threads may still be exiting)."""

        def reaped() -> bool:
            if self._reaped:
                return True
            try:
                self._reaped = os.waitpid(self.pid, os.WNOHANG)[0] != 0
            except ChildProcessError:
                self._reaped = True
            return self._reaped

        return wait_until(reaped, BOUND)

    def stop(self) -> None:
        if not self._reaped and not pid_gone(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        self.reap()
        for fd in (self._up, self._down):
            os.close(fd)


@pytest.fixture
def fork() -> Iterator[Callable[[Callable[[Child], None]], Child]]:
    children: list[Child] = []

    def make(body: Callable[[Child], None]) -> Child:
        child = Child(body)
        children.append(child)
        return child

    yield make
    for child in children:
        child.stop()


def drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def broker_handle(data: bytes) -> tuple[Any, ...]:
    """The descriptor handle inside a pickled corral Queue, without fetching
    it: ``("broker", address, ..., token)``."""
    found: list[tuple[Any, ...]] = []

    class Peek(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "corral.queues" and name == "_rebuild":
                return lambda cls, handle, *lent: found.append(handle)
            return super().find_class(module, name)

    Peek(io.BytesIO(data)).load()
    assert found and found[0][0] == "broker", found
    return found[0]


def test_another_user_cannot_fetch_a_descriptor(fork: Any) -> None:
    q: corral.Queue[str] = corral.Queue()
    q.put("secret")
    data = pickle.dumps(q)
    handle = broker_handle(data)
    address, token = handle[1], handle[-1]

    def attacker(me: Child) -> None:
        drop_to_nobody()
        # Its own client, speaking the broker's protocol: no check of ours
        # on the client side helps here, only the broker's.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(BOUND)
        s.connect(b"\0" + address)
        try:
            s.sendall(token.to_bytes(8, "little"))
            msg, fds, _, _ = socket.recv_fds(s, 16, 4)
        except OSError as exc:
            msg, fds = f"{type(exc).__name__}".encode(), []
        me.report(f"raw reply {msg!r} with {len(fds)} descriptors")
        # And corral's own loader.
        try:
            stolen = pickle.loads(data)
            me.report(f"loaded, got {stolen.get(timeout=5)!r}")
        except Exception as exc:
            me.report(f"refused {type(exc).__name__}")

    child = fork(attacker)
    raw = child.line()
    # Closed unread: end of file, or a reset (its request was left unread).
    assert raw in (f"raw reply {m!r} with 0 descriptors" for m in (b"", b"ConnectionResetError", b"BrokenPipeError")), (
        raw
    )
    assert child.line().startswith("refused")
    # The refused attempts spent nothing: the owner's receiver still loads it.
    mine = pickle.loads(data)
    assert mine.get(timeout=BOUND) == "secret"


def test_an_impostor_of_a_dead_sender_is_refused(fork: Any) -> None:
    def sender(me: Child) -> None:
        inner: corral.Queue[str] = corral.Queue()
        inner.put("from the sender")
        me.report(pickle.dumps(inner).hex())
        # ...and exits before the receiver loads it: its broker name is free.

    s = fork(sender)
    data = bytes.fromhex(s.line())
    assert s.reap()
    address = broker_handle(data)[1]

    def impostor(me: Child) -> None:
        drop_to_nobody()
        fake: corral.Queue[str] = corral.Queue()
        fake.put("attacker's payload")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(b"\0" + address)
        srv.listen()
        srv.settimeout(BOUND)
        me.report("bound")
        conn, _ = srv.accept()
        conn.settimeout(BOUND)
        token = b""
        while len(token) < 8:
            chunk = conn.recv(8 - len(token))
            if not chunk:
                break
            token += chunk
        if len(token) == 8:
            socket.send_fds(conn, [b"\x01"], [fake._q.fileno()])
            me.report("got the token and answered")
        else:
            me.report("no token")
        me.listen()  # keeps its queue alive until the victim is done

    imp = fork(impostor)
    assert imp.line() == "bound"
    try:
        loaded = pickle.loads(data)
    except corral.ChannelClosed as exc:
        assert "has exited before it was loaded" in str(exc)
        assert "refused" in str(exc)
    else:
        pytest.fail(f"the receiver loaded the impostor's queue: {loaded.get(timeout=5)!r}")
    assert imp.line() == "no token"
    imp.tell("done")


def test_an_idle_connection_does_not_block_later_hand_overs(fork: Any) -> None:
    q: corral.Queue[str] = corral.Queue()
    address = broker_handle(pickle.dumps(q))[1]

    def idler(me: Child) -> None:
        drop_to_nobody()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(b"\0" + address)
        me.report("connected")
        me.listen()
        s.settimeout(BOUND)
        try:
            me.report("closed by the broker" if s.recv(1) == b"" else "answered")
        except OSError as exc:
            me.report(f"still open: {type(exc).__name__}")

    other = fork(idler)
    assert other.line() == "connected"
    # Same-user peers that stall: silent, and half a token.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(b"\0" + address)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(b"\0" + address)
    half.sendall(b"\x01\x02\x03")
    try:
        for n in range(3):
            handed: corral.Queue[str] = corral.Queue()
            data = pickle.dumps(handed)

            def receiver(me: Child, data: bytes = data, n: int = n) -> None:
                pickle.loads(data).put(f"hand-over {n}")
                me.report("put")

            kid = fork(receiver)
            assert kid.line() == "put"
            assert handed.get(timeout=BOUND) == f"hand-over {n}"
    finally:
        silent.close()
        half.close()
    other.tell("check")
    assert other.line() == "closed by the broker"


def test_get_timeout_bounds_loading_an_item_from_a_stalled_sender(fork: Any) -> None:
    outer: corral.Queue[Any] = corral.Queue()

    def sender(me: Child) -> None:
        inner: corral.Queue[str] = corral.Queue()
        outer.put(inner)
        me.report("put")
        os.kill(os.getpid(), signal.SIGSTOP)  # alive, its broker stalled

    s = fork(sender)
    assert s.line() == "put"
    assert wait_until(lambda: proc_state(s.pid) == "T", BOUND)
    result: list[Any] = []

    def get() -> None:
        start = time.monotonic()
        try:
            result.append(outer.get(timeout=1.0))
        except BaseException as exc:
            result.append(exc)
        result.append(time.monotonic() - start)

    t = threading.Thread(target=get, daemon=True)
    t.start()
    t.join(BOUND)
    stuck = t.is_alive()
    os.kill(s.pid, signal.SIGKILL)  # frees a get that ignored its timeout
    t.join(BOUND)
    assert not stuck, "Queue.get(timeout=1) blocked on a stalled sender"
    outcome, elapsed = result
    assert isinstance(outcome, TimeoutError), outcome
    # 1 s asked; the broker wait is at least 1 s, the default would be 10 s.
    assert elapsed < 8.0, elapsed


def stalled_sender(fork: Any, outer: corral.Queue[Any]) -> Child:
    """A child that puts a Queue (holding "payload") into ``outer``, then
    stops itself (SIGSTOP: alive, its broker stalled). After a SIGCONT it
    reports, once ``_core.shared_fd_count()`` is 0, "released" (or the
    count left after BOUND)."""

    def sender(me: Child) -> None:
        inner: corral.Queue[str] = corral.Queue()
        inner.put("payload")
        outer.put(inner)
        me.report("put")
        os.kill(os.getpid(), signal.SIGSTOP)
        released = wait_until(lambda: corral._core.shared_fd_count() == 0, BOUND)
        me.report("released" if released else f"{corral._core.shared_fd_count()} registrations left")
        me.listen()  # stays alive until told

    s = fork(sender)
    assert s.line() == "put"
    assert wait_until(lambda: proc_state(s.pid) == "T", BOUND)
    return s


def get_in_thread(outer: corral.Queue[Any], **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    """``outer.get(**kwargs)`` on a thread; the list gets its outcome."""
    result: list[Any] = []

    def get() -> None:
        try:
            result.append(outer.get(**kwargs))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=get, daemon=True)
    t.start()
    return t, result


def test_get_without_timeout_waits_for_a_stalled_sender_past_the_old_10s_limit(fork: Any) -> None:
    # The stall must outlast the old DEFAULT_FETCH_TIMEOUT (10 s) to show
    # that the limit is gone: this test takes about 11 s.
    outer: corral.Queue[Any] = corral.Queue()
    s = stalled_sender(fork, outer)
    t, result = get_in_thread(outer)
    t.join(11.0)
    blocked = t.is_alive()
    os.kill(s.pid, signal.SIGCONT)
    t.join(BOUND)
    assert blocked, f"get() without timeout gave up on a live sender: {result}"
    assert not t.is_alive(), "get() stayed blocked after the sender resumed"
    (inner,) = result
    assert isinstance(inner, corral.Queue), inner
    assert inner.get(timeout=BOUND) == "payload"
    assert s.line() == "released"
    s.tell("done")


def test_get_without_timeout_fails_at_once_when_the_stalled_sender_dies(fork: Any) -> None:
    outer: corral.Queue[Any] = corral.Queue()
    s = stalled_sender(fork, outer)
    t, result = get_in_thread(outer)
    assert wait_until(lambda: outer.qsize() == 0, BOUND), "the get did not take the message"
    os.kill(s.pid, signal.SIGKILL)
    assert s.reap()
    t.join(8.0)  # generous for a loaded machine, below the old 10 s fetch timeout
    assert not t.is_alive(), "get() kept waiting for a sender that exited"
    (outcome,) = result
    assert isinstance(outcome, corral.ChannelClosed), repr(outcome)
    assert "has exited before it was loaded" in str(outcome), outcome


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals go to the main thread")
def test_get_without_timeout_loading_from_a_stalled_sender_is_interrupted_by_a_signal(fork: Any) -> None:
    outer: corral.Queue[Any] = corral.Queue()
    s = stalled_sender(fork, outer)
    start = time.monotonic()
    with pytest.raises(Interrupted):
        with interrupt_after(0.5):
            outer.get()
    elapsed = time.monotonic() - start
    os.kill(s.pid, signal.SIGCONT)
    # The old fetch slept in Rust with the GIL released for 10 s, deaf to
    # signals; generous for a loaded machine.
    assert elapsed < 8.0, elapsed
    assert s.line() == "released", "the abandoned hand-over left its registration in the sender"
    s.tell("done")


def test_a_get_timeout_that_expires_while_loading_says_the_item_is_lost(fork: Any) -> None:
    outer: corral.Queue[Any] = corral.Queue()
    s = stalled_sender(fork, outer)
    t, result = get_in_thread(outer, timeout=0.2)
    t.join(BOUND)
    assert not t.is_alive(), "get(timeout=0.2) blocked on a stalled sender"
    (outcome,) = result
    assert isinstance(outcome, corral.ItemLostError), repr(outcome)
    assert isinstance(outcome, TimeoutError), "still a TimeoutError for callers that catch that"
    assert "lost" in str(outcome) and "stalled" in str(outcome), outcome
    os.kill(s.pid, signal.SIGCONT)
    # The sender's one-shot registration goes once its broker finds the
    # receiver gone, instead of staying for the sender's life.
    assert s.line() == "released"
    assert outer.qsize() == 0, "the item was lost, as the error said"
    s.tell("done")
