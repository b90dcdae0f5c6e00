"""The soak (`python -m corral soak`, `make soak` for 5 minutes) in its
20-second form: a process pool and a queue under random SIGKILLs, with
every result, every message and this process's resources checked (see
corral/_soak.py for what each check allows). It runs in a fresh
interpreter so that its resource figures are its own."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import corral
from _helpers import wait_until


def _figure(stdout: str, row: str) -> list[int]:
    m = re.search(rf"^\| {re.escape(row)}[^|]* \| ([^|]+) \|$", stdout, re.M)
    assert m, f"no row {row!r} in:\n{stdout}"
    return [int(x) for x in re.findall(r"\d+", m.group(1))]


@pytest.mark.timeout(150)
def test_20s_soak_of_pool_and_queue_under_sigkill_loses_nothing_unexplained_and_leaks_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral", "soak", "--seconds", "20"],
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert out.returncode == 0 and "soak: OK" in out.stdout, out.stdout + out.stderr
    # It did exercise what it checks: workers, producers and consumers died
    # under load, and results and messages flowed all along. (Floors, not
    # throughput: a loaded machine got 144 futures and 498 messages in 20 s.)
    assert _figure(out.stdout, "pool: workers SIGKILLed")[0] >= 5, out.stdout
    assert _figure(out.stdout, "pool: futures submitted")[0] >= 50, out.stdout
    assert _figure(out.stdout, "pool: maps / items checked")[1] >= 100, out.stdout
    producer_kills, consumer_kills = _figure(out.stdout, "queue: producers / consumers SIGKILLed")
    assert producer_kills >= 2 and consumer_kills >= 2, out.stdout
    assert _figure(out.stdout, "queue: messages received and checked")[0] >= 100, out.stdout


def _put_large(q: Any) -> None:
    q.put(np.ones(3 << 19, dtype=np.uint8))  # 1.5 MiB: an arena block


def test_arena_block_of_producer_killed_while_waiting_for_room_is_reclaimed(start: Any) -> None:
    q: corral.Queue[Any] = corral.Queue(maxsize=1, arena_bytes=4 << 20)
    q.put(b"fills the bound")
    # Until issue 11, the block turned QUEUED before the wait and was never
    # freed: this 3 MiB put raised Full with 1,572,928 bytes in use.
    p = start(_put_large, q)
    # The producer has its block and waits for the bound.
    assert wait_until(lambda: q._q.arena_used() >= 3 << 19, timeout=20)
    p.kill()
    p.join(10)
    assert p.exitcode == -9
    assert q.get(timeout=5) == b"fills the bound" and q.empty()
    # Nothing is queued and the producer is dead: its block must be
    # reclaimable, so 3 MiB of the 4 MiB arena can be had.
    q.put(np.ones(3 << 20, dtype=np.uint8), timeout=5)
    assert q.get(timeout=5).nbytes == 3 << 20
    assert q._q.arena_used() == 0
