"""The naming rule of the coroutine forms: the async form of a blocking
method ``m`` is ``m_async`` (issue 12). The older names of the queue and
pipe forms (``aget``, ``aput``, ``arecv``, ``asend``) stay as aliases.
Every wait has a timeout."""

from __future__ import annotations

import asyncio
import inspect
import queue

import pytest

import corral

pytestmark = pytest.mark.timeout(120)

#: class -> the coroutine methods it must have.
ASYNC_FORMS = {
    corral.Lock: ["acquire_async"],
    corral.RLock: ["acquire_async"],
    corral.Semaphore: ["acquire_async"],
    corral.BoundedSemaphore: ["acquire_async"],
    corral.Event: ["wait_async"],
    corral.Condition: ["wait_async", "wait_for_async"],
    corral.Barrier: ["wait_async"],
    corral.Queue: ["get_async", "put_async", "get_many_async"],
    corral.SimpleQueue: ["get_async", "put_async", "get_many_async"],
    corral.connection.Connection: ["recv_async", "send_async", "recv_bytes_async", "send_bytes_async", "poll_async"],
}

ALIASES = {
    corral.Queue: {"aget": "get_async", "aput": "put_async"},
    corral.connection.Connection: {"arecv": "recv_async", "asend": "send_async"},
}


@pytest.mark.parametrize("cls", list(ASYNC_FORMS), ids=lambda c: c.__qualname__)
def test_every_blocking_method_has_its_async_form(cls: type) -> None:
    for name in ASYNC_FORMS[cls]:
        method = getattr(cls, name)
        assert inspect.iscoroutinefunction(method), f"{cls.__qualname__}.{name}"
        assert method.__doc__, f"{cls.__qualname__}.{name} has no docstring"
        blocking = name[: -len("_async")]
        assert callable(getattr(cls, blocking)), f"{cls.__qualname__}.{blocking}"


@pytest.mark.parametrize("cls", list(ALIASES), ids=lambda c: c.__qualname__)
def test_the_older_names_are_the_same_methods(cls: type) -> None:
    for old, new in ALIASES[cls].items():
        assert getattr(cls, old) is getattr(cls, new)


def test_queue_async_forms_and_their_aliases_move_items() -> None:
    async def main() -> None:
        q: corral.Queue[int] = corral.Queue(maxsize=2)
        await q.put_async(1, timeout=10)
        await q.aput(2, timeout=10)
        with pytest.raises(queue.Full):
            await q.put_async(3, timeout=0.05)
        assert await q.get_async(timeout=10) == 1
        assert await q.aget(timeout=10) == 2
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.05)
        await q.put_async(4, timeout=10)
        await q.put_async(5, timeout=10)
        assert await q.get_many_async(10, timeout=10) == [4, 5]
        with pytest.raises(queue.Empty):
            await q.get_many_async(10, timeout=0.05)
        q.close()

    asyncio.run(main())


def test_queue_get_async_is_woken_by_a_put_from_a_thread() -> None:
    async def main() -> None:
        q: corral.Queue[str] = corral.Queue()
        loop = asyncio.get_running_loop()
        getter = asyncio.ensure_future(q.get_async(timeout=30))
        await loop.run_in_executor(None, q.put, "hello")
        assert await asyncio.wait_for(getter, 30) == "hello"

    asyncio.run(main())


def test_pipe_async_forms_and_their_aliases_move_messages() -> None:
    async def main() -> None:
        a, b = corral.Pipe()
        await a.send_async({"x": 1})
        assert await asyncio.wait_for(b.recv_async(), 30) == {"x": 1}
        await a.asend("old name")
        assert await asyncio.wait_for(b.arecv(), 30) == "old name"
        assert not await b.poll_async(timeout=0.05)
        await a.send_bytes_async(b"raw bytes", 4)
        assert await b.poll_async(timeout=30)
        assert await asyncio.wait_for(b.recv_bytes_async(), 30) == b"bytes"
        big = bytes(range(256)) * 1024  # 256 KiB: written from a thread
        sender = asyncio.ensure_future(a.send_bytes_async(big))
        assert await asyncio.wait_for(b.recv_bytes_async(), 30) == big
        await asyncio.wait_for(sender, 30)
        a.close()
        b.close()

    asyncio.run(main())


def test_semaphore_acquire_async_and_barrier_wait_async() -> None:
    async def main() -> None:
        sem = corral.Semaphore(1)
        assert await sem.acquire_async(timeout=10)
        assert not await sem.acquire_async(timeout=0.05)
        sem.release()
        barrier = corral.Barrier(3)
        got = await asyncio.wait_for(asyncio.gather(*(barrier.wait_async(30) for _ in range(3))), 60)
        assert sorted(got) == [0, 1, 2]

    asyncio.run(main())
