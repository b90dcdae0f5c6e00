"""corral.Pipe / corral.Connection: multiprocessing.Pipe's API over a Unix
socket; a closed or dead peer reads as EOFError, and fileno() works with
select and asyncio."""

from __future__ import annotations

import array
import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import BufferTooShort

import numpy as np
import pytest

import _workers
import corral
from _helpers import Interrupted, act_when_blocked, interrupt_after, sleeping_on, wait_until

# -- objects and bytes ----------------------------------------------------------


def test_send_and_recv_round_trip_objects_in_order():
    a, b = corral.Pipe()
    objs = [None, 1, "two", [3, 3.0], {"four": (4,)}, b"five", np.arange(6)]
    for o in objs:
        a.send(o)
    got = [b.recv() for _ in objs]
    np.testing.assert_array_equal(got[-1], objs[-1])
    assert got[:-1] == objs[:-1]
    b.send("back")
    assert a.recv() == "back"


def test_send_of_a_lambda_round_trips_and_an_unpicklable_object_raises():
    a, b = corral.Pipe()
    a.send(lambda x: x + 1)
    assert b.recv()(1) == 2
    with pytest.raises(TypeError):
        a.send(threading.Lock())
    a.send("still usable")
    assert b.recv() == "still usable"


def test_send_bytes_and_recv_bytes_keep_message_boundaries():
    a, b = corral.Pipe()
    msgs = [b"", b"x", bytes(range(256)) * 100, b"end"]
    for m in msgs:
        a.send_bytes(m)
    assert [b.recv_bytes() for _ in msgs] == msgs


def test_send_bytes_with_offset_and_size_sends_that_slice():
    a, b = corral.Pipe()
    a.send_bytes(b"0123456789", 2, 5)
    a.send_bytes(b"0123456789", 7)
    a.send_bytes(bytearray(b"0123456789"), 0, 0)
    ints = array.array("i", [10, 20, 30])
    a.send_bytes(ints, ints.itemsize, ints.itemsize)  # offset/size in bytes
    assert b.recv_bytes() == b"23456"
    assert b.recv_bytes() == b"789"
    assert b.recv_bytes() == b""
    assert b.recv_bytes() == array.array("i", [20]).tobytes()


@pytest.mark.parametrize("offset,size", [(11, None), (5, 6), (-1, None), (0, -1)])
def test_send_bytes_with_an_out_of_range_slice_raises_value_error(offset, size):
    a, b = corral.Pipe()
    with pytest.raises(ValueError):
        a.send_bytes(b"0123456789", offset, size)
    assert not b.poll(0)  # nothing was sent


@pytest.mark.parametrize("obj", [123, "text", [1, 2], None], ids=["int", "str", "list", "none"])
def test_send_bytes_of_a_non_bytes_like_object_raises_type_error(obj):
    a, b = corral.Pipe()
    with pytest.raises(TypeError):
        a.send_bytes(obj)
    assert not b.poll(0)


def test_send_bytes_accepts_numpy_arrays_and_memoryviews():
    a, b = corral.Pipe()
    arr = np.arange(10, dtype=np.float64)
    a.send_bytes(arr)
    a.send_bytes(memoryview(b"abcdef")[1:4])
    assert b.recv_bytes() == arr.tobytes()
    assert b.recv_bytes() == b"bcd"


def test_recv_bytes_into_writes_at_the_offset_and_returns_the_length():
    a, b = corral.Pipe()
    buf = bytearray(10)
    a.send_bytes(b"abc")
    assert b.recv_bytes_into(buf) == 3
    assert buf == b"abc" + bytes(7)
    a.send_bytes(b"xyz")
    assert b.recv_bytes_into(buf, 6) == 3
    assert buf == b"abc\x00\x00\x00xyz\x00"


def test_recv_bytes_into_a_typed_array_uses_a_byte_offset():
    a, b = corral.Pipe()
    target = array.array("i", [0, 0, 0, 0])
    a.send_bytes(array.array("i", [7, 8]).tobytes())
    assert b.recv_bytes_into(target, target.itemsize) == 2 * target.itemsize
    assert list(target) == [0, 7, 8, 0]


def test_recv_bytes_into_a_too_small_buffer_raises_buffer_too_short_with_the_message():
    a, b = corral.Pipe()
    a.send_bytes(b"m" * 20)
    with pytest.raises(BufferTooShort) as info:
        b.recv_bytes_into(bytearray(10))
    assert info.value.args[0] == b"m" * 20
    # The offset counts against the room too.
    a.send_bytes(b"abc")
    with pytest.raises(BufferTooShort):
        b.recv_bytes_into(bytearray(10), 8)
    # The message was consumed; the connection carries on.
    a.send_bytes(b"ok")
    assert b.recv_bytes() == b"ok"


def test_recv_bytes_with_a_too_small_maxlength_raises_os_error_and_closes():
    a, b = corral.Pipe()
    a.send_bytes(b"y" * 100)
    a.send_bytes(b"z" * 100)
    assert b.recv_bytes(100) == b"y" * 100  # exactly maxlength is fine
    with pytest.raises(OSError):
        b.recv_bytes(10)
    assert b.closed


def test_large_messages_cross_the_socket_buffer_between_threads():
    a, b = corral.Pipe()
    big = np.random.default_rng(1).random(2_000_000)  # 16 MB
    t = threading.Thread(target=a.send, args=(big,), daemon=True)
    t.start()
    assert b.poll(20)
    np.testing.assert_array_equal(b.recv(), big)
    t.join(20)
    assert not t.is_alive()


# -- poll, select, asyncio --------------------------------------------------------


def test_poll_is_false_until_data_arrives_then_true():
    a, b = corral.Pipe()
    assert b.poll() is False
    t0 = time.monotonic()
    assert b.poll(0.2) is False
    assert time.monotonic() - t0 >= 0.15
    a.send("x")
    assert b.poll(5) is True
    assert b.recv() == "x"
    assert b.poll(0) is False


def test_poll_wakes_when_data_arrives_from_another_thread():
    a, b = corral.Pipe()
    sender = act_when_blocked(b, threading.get_native_id(), lambda: a.send("late"))
    assert b.poll(20) is True
    assert b.recv() == "late"
    sender.join(20)
    assert sender.blocked, "the poll did not wait for the data"


def test_a_blocking_recv_or_poll_is_interrupted_by_a_signal_like_ctrl_c():
    a, b = corral.Pipe()
    rescued: list = []  # bounds the test if recv ignores signals
    rescue = threading.Timer(10, lambda: (rescued.append(True), a.send("rescue")))
    rescue.start()
    try:
        with pytest.raises(Interrupted):
            with interrupt_after(0.2):
                b.recv()  # no timeout: only the signal can end it
    finally:
        rescue.cancel()
        rescue.join()
    assert not rescued, "recv was not interrupted; only the rescue message ended it"
    with pytest.raises(Interrupted):
        with interrupt_after(0.2) as waited:
            b.poll(20)
    assert waited.elapsed < 10
    a.send("after")
    assert b.recv() == "after"


def test_fileno_works_with_select():
    a, b = corral.Pipe()
    assert select.select([b], [], [], 0)[0] == []
    a.send_bytes(b"ready")
    assert select.select([b], [], [], 5)[0] == [b]
    assert select.select([b.fileno()], [], [], 5)[0] == [b.fileno()]
    assert b.recv_bytes() == b"ready"


def test_fileno_works_with_asyncio_add_reader():
    a, b = corral.Pipe()

    async def main():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_readable():
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(b.fileno(), on_readable)
        try:
            await asyncio.sleep(0.05)
            assert not ready.done()  # nothing sent yet
            loop.call_later(0.05, a.send, {"msg": "ping"})
            await asyncio.wait_for(ready, 10)
        finally:
            loop.remove_reader(b.fileno())
        return b.recv()

    assert asyncio.run(main()) == {"msg": "ping"}


# -- ends, direction, closing ------------------------------------------------------


def test_one_way_pipe_reader_cannot_send_and_writer_cannot_recv():
    r, w = corral.Pipe(duplex=False)
    assert (r.readable, r.writable) == (True, False)
    assert (w.readable, w.writable) == (False, True)
    w.send("one way")
    assert r.recv() == "one way"
    with pytest.raises(OSError):
        r.send("back")
    with pytest.raises(OSError):
        r.send_bytes(b"back")
    with pytest.raises(OSError):
        w.recv()
    with pytest.raises(OSError):
        w.recv_bytes()
    with pytest.raises(OSError):
        w.poll(0)


def test_duplex_ends_are_readable_and_writable():
    a, b = corral.Pipe()
    assert (a.readable, a.writable, a.closed) == (True, True, False)
    assert (b.readable, b.writable, b.closed) == (True, True, False)


def test_recv_after_the_other_end_closed_returns_pending_data_then_raises_eof():
    a, b = corral.Pipe()
    a.send("last words")
    a.close()
    assert b.recv() == "last words"
    assert b.poll(5)  # end-of-file counts as readable
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.recv_bytes()


def test_send_to_a_closed_peer_raises_broken_pipe():
    a, b = corral.Pipe()
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send("nobody listens")


def test_context_manager_closes_and_a_closed_end_raises_os_error():
    a, b = corral.Pipe()
    with a, b:
        a.send(1)
        assert b.recv() == 1
    assert a.closed and b.closed
    for call in (lambda: a.send(1), lambda: b.recv(), a.fileno, lambda: a.poll(0), lambda: a.readable):
        with pytest.raises(OSError):
            call()
    a.close()  # closing again is harmless


def test_garbage_written_on_the_socket_raises_corrupt_data_error():
    a, b = corral.Pipe()
    os.write(a.fileno(), b"this is not a corral frame, only bytes")
    with pytest.raises(corral.CorruptDataError):
        b.recv_bytes()


def test_a_peer_closing_in_the_middle_of_a_message_raises_eof():
    a, b = corral.Pipe()
    os.write(a.fileno(), b"short")
    a.close()
    with pytest.raises(EOFError):
        b.recv_bytes()


# -- across processes ------------------------------------------------------------------


def test_a_pipe_end_passed_to_a_child_at_start(start):
    a, b = corral.Pipe()
    p = start(_workers.pipe_echo, b)
    b.close()
    big = np.arange(3_000_000, dtype=np.int32)  # 12 MB, bigger than the socket buffer
    for obj in ["hello", {"k": [1, 2]}, big]:
        a.send(obj)
        assert a.poll(20)
        tag, echoed = a.recv()
        assert tag == "echo"
        if isinstance(obj, np.ndarray):
            np.testing.assert_array_equal(echoed, obj)
        else:
            assert echoed == obj
    a.send(None)
    assert p.result(timeout=20) == 3


def test_recv_raises_eof_when_the_peer_process_was_sigkilled(start):
    a, b = corral.Pipe()
    p = start(_workers.pipe_send_then_sleep, b, "alive", 60)
    b.close()  # our copy of the child's end, or EOF could never come
    assert a.poll(20)
    assert a.recv() == "alive"
    p.kill()
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    assert a.poll(20), "no end-of-file after the peer was killed"
    with pytest.raises(EOFError):
        a.recv()


def test_a_blocked_recv_raises_eof_when_the_peer_is_killed(start):
    a, b = corral.Pipe()
    p = start(_workers.pipe_send_then_sleep, b, "alive", 60)
    b.close()
    assert a.poll(20) and a.recv() == "alive"
    outcome: list = []

    def reader():
        try:
            outcome.append(a.recv())
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert wait_until(lambda: sleeping_on(a, tid=t.native_id), 20), "recv did not block"
    p.kill()
    t.join(20)
    assert not t.is_alive(), "recv still blocked after its peer died"
    assert len(outcome) == 1 and isinstance(outcome[0], EOFError), outcome


def test_a_send_blocked_on_a_full_socket_raises_broken_pipe_when_the_peer_dies(start):
    a, b = corral.Pipe()
    p = start(_workers.pipe_send_then_sleep, b, "alive", 60)  # never reads
    b.close()
    assert a.poll(20) and a.recv() == "alive"
    outcome: list = []

    def sender():
        try:
            a.send_bytes(b"x" * (64 << 20))  # far beyond the socket buffer
            outcome.append("sent")
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    assert wait_until(lambda: sleeping_on(a, tid=t.native_id), 20), "send did not block"
    p.kill()
    t.join(20)
    assert not t.is_alive(), "send still blocked after its peer died"
    assert len(outcome) == 1 and isinstance(outcome[0], BrokenPipeError), outcome


def test_recv_raises_eof_after_the_peer_process_exited_normally(start):
    a, b = corral.Pipe()
    p = start(_workers.pipe_send_bytes_and_exit, b, b"bye")
    b.close()
    p.join(20)
    assert p.exitcode == 0
    assert a.recv_bytes() == b"bye"
    assert a.poll(20)
    with pytest.raises(EOFError):
        a.recv_bytes()


def test_a_pipe_end_sent_through_another_pipe_reaches_a_child(start):
    ctrl_parent, ctrl_child = corral.Pipe()
    p = start(_workers.receive_conn_from_pipe_and_send, ctrl_child, "via a sent end")
    ctrl_child.close()
    mine, theirs = corral.Pipe()
    ctrl_parent.send(theirs)
    theirs.close()  # the sent handle must not depend on our copy staying open
    assert mine.poll(20)
    assert mine.recv() == "via a sent end"
    p.join(20)
    assert p.exitcode == 0
    # The child was the last holder of that end: we see end-of-file.
    assert mine.poll(20)
    with pytest.raises(EOFError):
        mine.recv()


def test_a_header_announcing_3_gib_then_eof_is_a_truncated_message_not_a_3_gb_allocation() -> None:
    # In a child under a 2 GiB address-space limit: the reader must neither
    # allocate what the header claims nor blame a "limit of 1 TiB".
    code = textwrap.dedent(
        """
        import os, resource, struct, corral
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        a, b = corral.Pipe()
        os.write(b.fileno(), b"CRLP" + bytes(4) + struct.pack("<Q", 3 << 30) + b"x" * 1000)
        b.close()
        try:
            a.recv_bytes()
        except EOFError as e:
            print("EOFError:", e)
        status = open("/proc/self/status").read()
        print("VmHWM", int(status.split("VmHWM:")[1].split()[0]) << 10)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("EOFError:") and "1000 of its 3221225472 bytes" in lines[0], out.stdout
    assert "truncated" in lines[0]
    assert int(lines[1].split()[1]) < 300 << 20, lines[1]
