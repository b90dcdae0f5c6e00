"""Demo stage 2: many concurrent calls to a model service.

The service is a local stand-in: a call waits ``LATENCY`` seconds, as a
request to a model server would, and the client may keep at most ``LIMIT``
calls in flight (a rate limit enforced with a semaphore). corral runs the
calls from ``corral.ThreadPoolExecutor`` with a ``corral.Semaphore`` and
from asyncio with ``pool.run_async``; the stdlib from
``concurrent.futures.ThreadPoolExecutor`` with ``threading.Semaphore`` and
from asyncio with ``loop.run_in_executor``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from typing import Any

import corral

LATENCY = 0.02
LIMIT = 32
THREADS = 64


def make_call(limit: Any) -> Any:
    """A fake service call of ``LATENCY`` seconds, at most ``limit`` at once."""

    def call(prompt: int) -> int:
        with limit:
            time.sleep(LATENCY)  # the request to the service
            return prompt % 10

    return call


def threads(corral_side: bool, n: int) -> float:
    """Seconds for ``n`` calls through a thread pool's ``map``."""
    pool: Any = corral.ThreadPoolExecutor(THREADS) if corral_side else cf.ThreadPoolExecutor(THREADS)
    call = make_call(corral.Semaphore(LIMIT) if corral_side else threading.Semaphore(LIMIT))
    with pool:
        list(pool.map(call, range(THREADS)))  # start the threads
        t0 = time.perf_counter()
        answers = list(pool.map(call, range(n)))
        dt = time.perf_counter() - t0
    assert answers == [i % 10 for i in range(n)]
    return dt


def from_asyncio(corral_side: bool, n: int) -> float:
    """Seconds for ``n`` calls gathered from a coroutine."""
    pool: Any = corral.ThreadPoolExecutor(THREADS) if corral_side else cf.ThreadPoolExecutor(THREADS)
    call = make_call(corral.Semaphore(LIMIT) if corral_side else threading.Semaphore(LIMIT))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        run = pool.run_async if corral_side else (lambda f, x: loop.run_in_executor(pool, f, x))
        await asyncio.gather(*[run(call, i) for i in range(THREADS)])
        t0 = time.perf_counter()
        answers = await asyncio.gather(*[run(call, i) for i in range(n)])
        dt = time.perf_counter() - t0
        assert answers == [i % 10 for i in range(n)]
        return dt

    with pool:
        return asyncio.run(main())
