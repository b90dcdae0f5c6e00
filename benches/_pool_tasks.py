"""Task functions run in the workers of bench_pool.py.

They live in their own module, top-level, so every pool can name them:
workers started by fork, by spawn (corral, joblib's loky) or by Ray import
this module by name (each gets the benches directory on its sys.path).
"""

from __future__ import annotations

import time
from typing import Any

# The "model" loaded by load_model in a worker of a pool that only has a
# module global to keep per-worker state in (the stdlib pools, joblib).
_MODEL: dict[str, Any] | None = None


def square(x: int) -> int:
    """A tiny task: the cost measured is the pool's, not the work's."""
    return x * x


def spin(n: int) -> int:
    """Pure-Python busy work holding the GIL, about n loop iterations."""
    s = 0
    for i in range(n):
        s += i
    return s


def calibrate_spin(seconds: float) -> int:
    """The ``spin(n)`` that takes about ``seconds`` in this process (best
    of 5 after a warm-up)."""
    probe = 20_000
    for _ in range(20):
        spin(probe)
    t = min(timed(lambda: [spin(probe) for _ in range(10)]) for _ in range(5)) / 10
    return max(1, round(probe * seconds / t))


def timed(fn: Any) -> float:
    """Seconds ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def double(arr: Any) -> Any:
    """A numpy array in, a new array of the same size out."""
    return arr * 2


def load_model(seconds: float) -> dict[str, Any]:
    """An expensive per-worker set-up: sleeps, then keeps and returns the
    "model" (corral hands the return value to worker_state(); the other
    pools read the module global)."""
    global _MODEL
    time.sleep(seconds)
    _MODEL = {"weight": 3}
    return _MODEL


def use_model_corral(x: int) -> int:
    """About 5 ms of work with the model corral keeps for this worker."""
    import corral

    model = corral.worker_state()
    time.sleep(0.005)
    return model["weight"] * x


def use_model_global(x: int) -> int:
    """About 5 ms of work with the model load_model left in the global."""
    assert _MODEL is not None, "initializer did not run in this worker"
    time.sleep(0.005)
    return _MODEL["weight"] * x


def mpire_load_model(worker_state: dict[str, Any], seconds: float) -> None:
    """MPIRE's own per-worker state: worker_init fills the dict it passes."""
    worker_state["model"] = load_model(seconds)


def mpire_use_model(worker_state: dict[str, Any], x: int) -> int:
    time.sleep(0.005)
    return worker_state["model"]["weight"] * x


class ModelActor:
    """Ray's way to keep per-worker state: an actor loads the model once in
    its constructor, its method does the tasks."""

    def __init__(self, seconds: float) -> None:
        self.model = load_model(seconds)

    def run(self, x: int) -> int:
        time.sleep(0.005)
        return self.model["weight"] * x
