"""User code as a type checker sees it: `make lint` runs `mypy --strict` over
this directory (tests/typing/), and tests/test_typing.py checks the types
mypy infers here. Nothing here runs in the test suite; it only has to type-check."""

import asyncio
import concurrent.futures as cf
from collections.abc import AsyncIterator, Iterator

import corral


def square(x: int) -> int:
    return x * x


def scale(x: float, factor: float, *, offset: float = 0.0) -> float:
    return x * factor + offset


def describe(name: str, count: int) -> str:
    return f"{name}: {count}"


class Model:
    def predict(self, x: int) -> float:
        return x / 2


def load_model() -> Model:
    return Model()


def predict(x: int) -> float:
    return corral.worker_state(Model).predict(x)


def processes() -> None:
    with corral.ProcessPoolExecutor(2, initializer=load_model) as pool:
        fut: corral.Future[int] = pool.submit(square, 3)
        n: int = fut.result(timeout=10)
        f2: corral.Future[float] = pool.submit(scale, 2.0, 3.0, offset=1.0)
        squares: Iterator[int] = pool.map(square, range(10))
        labels: list[str] = list(pool.map(describe, ["a", "b"], [1, 2]))
        unordered: list[float] = list(pool.imap_unordered(predict, range(4), chunksize=2))
        timed: corral.Future[int] = pool.options(timeout=5.0).submit(square, 4)
        done, _ = cf.wait([fut, timed], timeout=10)
        total = n + sum(squares) + sum(f.result() for f in done)
        print(total, f2.result(), labels, unordered)


def threads() -> None:
    with corral.ThreadPoolExecutor(4) as pool:
        fut = pool.submit(square, 2)
        fut.add_done_callback(lambda f: print(f.result() + 1))
        values: list[int] = list(pool.map(square, range(5), timeout=10))
        ordered: list[float] = list(pool.options(timeout=5.0).map(scale, [1.0, 2.0], [3.0, 4.0]))
        print(fut.result(), values, ordered)
    t = corral.Thread(target=square, args=(3,))
    t.start()
    print(t.result(timeout=10))


async def asyncio_forms() -> None:
    with corral.ThreadPoolExecutor(2) as pool:
        n: int = await pool.run_async(square, 5)
        fut = pool.submit(describe, "x", 1)
        label: str = await fut
        results: AsyncIterator[int] = pool.map_async(square, range(10), limit=4)
        async for r in results:
            n += r
        q: corral.Queue[str] = corral.Queue()
        await q.put_async(label)
        got: str = await q.get_async(timeout=1.0)
        lock = corral.Lock()
        async with lock:
            pass
        event = corral.Event()
        fired: bool = await event.wait_async(timeout=0.1)
        print(n, got, fired)


def queues_and_locks() -> None:
    q: corral.Queue[tuple[int, str]] = corral.Queue(maxsize=10)
    q.put((1, "one"))
    item: tuple[int, str] = q.get(timeout=1.0)
    batch: list[tuple[int, str]] = q.get_many(8, timeout=0.1)
    sq: corral.SimpleQueue[bytes] = corral.SimpleQueue()
    sq.put(b"x")
    raw: bytes = sq.get()
    a, b = corral.Pipe()
    a.send({"k": 1})
    print(item, batch, raw, b.recv())
    lock, rlock = corral.Lock(), corral.RLock()
    with lock, rlock:
        pass
    acquired: bool = lock.acquire(timeout=0.5)
    if acquired:
        lock.release()
    sem = corral.BoundedSemaphore(2)
    with sem:
        pass
    cond = corral.Condition(corral.Lock())
    with cond:
        ready: bool = cond.wait_for(lambda: True, timeout=0.1)
    barrier = corral.Barrier(1, timeout=1.0)
    index: int = barrier.wait()
    event = corral.Event()
    event.set()
    print(ready, index, event.is_set())


if __name__ == "__main__":
    processes()
    threads()
    queues_and_locks()
    asyncio.run(asyncio_forms())
