"""Task and producer functions of bench_torch.py (importable by name in a
worker or child of any start method)."""

from __future__ import annotations

from typing import Any


def double(t: Any) -> Any:
    """The pool task: ``t * 2``."""
    return t * 2


def without_reducer() -> None:
    """A pool initializer: this worker pickles tensors as torch does (the
    transport before corral had its tensor reducer), for the A/B row."""
    import corral._torch

    corral._torch.pickler = lambda base=None: None  # type: ignore[assignment]


def produce(q: Any, go: Any, done: Any, n: int, shape: tuple[int, ...], reducer: bool = True) -> None:
    """Puts "ready", waits for ``go``, puts ``n`` fresh float32 tensors of
    ``shape``, then waits for ``done`` (torch.multiprocessing's receiver
    maps the sender's shared memory: the sender stays until it is done)."""
    import torch

    if not reducer:
        without_reducer()
    q.put("ready")
    go.wait()
    for _ in range(n):
        q.put(torch.rand(shape))
    done.wait()
