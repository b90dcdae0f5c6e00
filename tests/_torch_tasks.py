"""Worker functions of ``test_torch.py`` (importable by name in a spawned
worker). The module does not import torch: a worker that runs ``loaded``
alone must not load it through this module."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any

from corral import _core


def loaded(name: str) -> bool:
    """Whether module ``name`` is imported in this process."""
    return name in sys.modules


def double(t: Any) -> Any:
    return t * 2


def layout(obj: Any) -> Any:
    """What a received structure of tensors looks like here: per tensor its
    type name, dtype, shape, strides, storage offset, requires_grad and
    values; and which of them share a storage."""
    torch = importlib.import_module("torch")
    tensors: list[Any] = []

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return (type(x).__name__, str(x.dtype), tuple(x.shape), x.stride(), x.storage_offset(), x.requires_grad)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        if hasattr(x, "__dataclass_fields__"):
            return {k: walk(getattr(x, k)) for k in x.__dataclass_fields__}
        return x

    shape = walk(obj)
    ptrs = [t.untyped_storage().data_ptr() for t in tensors]
    return shape, [t.detach().tolist() for t in tensors], [ptrs.index(p) for p in ptrs]


def relay(inq: Any, outq: Any) -> None:
    """Gets items from ``inq`` and puts what each looks like here
    (``layout``) on ``outq`` until None."""
    while (item := inq.get(timeout=60)) is not None:
        outq.put(layout(item))


def send_back(outq: Any, n: int) -> None:
    """Puts a structure of tensors made here on ``outq``."""
    torch = importlib.import_module("torch")
    base = torch.arange(n, dtype=torch.float32)
    outq.put({"base": base, "view": base[1::2], "bf16": torch.ones(n, dtype=torch.bfloat16), "tag": "made here"})


def pipe_echo(conn: Any) -> None:
    """Receives tensors on ``conn`` and sends each back doubled, until None."""
    while (t := conn.recv()) is not None:
        conn.send({"doubled": t * 2, "same": t})
    conn.close()


def from_numpy(n: int) -> Any:
    """A tensor made from a NumPy array born in the result arena."""
    torch = importlib.import_module("torch")
    np = importlib.import_module("numpy")
    return torch.from_numpy(np.full(n, 3.0))


def arena_stats() -> tuple[int, int, int]:
    """The worker's array arena: (live blocks, blocks sent, bytes sent)."""
    s = _core.array_arena_stats()
    return s.live_blocks, s.sent, s.sent_bytes


@dataclasses.dataclass
class Batch:
    """A user's batch type: tensors in a dataclass."""

    images: Any
    labels: Any
    meta: dict[str, Any]


def __getattr__(name: str) -> Any:
    # ``Labelled``, a user's tensor subclass, made at first use: the module
    # imports torch only when a test asks for it.
    if name != "Labelled":
        raise AttributeError(name)
    torch = importlib.import_module("torch")

    class Labelled(torch.Tensor):  # type: ignore[misc]
        """A tensor subclass, as users write them."""

    Labelled.__module__ = __name__
    globals()["Labelled"] = Labelled
    return Labelled
