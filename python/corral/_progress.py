"""``progress=True`` of the pools' ``map`` and ``imap_unordered``: a tqdm
bar (``tqdm.auto``, so notebooks get a widget). tqdm is optional; without
it the call warns once and runs without a bar."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any


def total_of(iterables: Iterable[Iterable[Any]]) -> int | None:
    """The number of items ``zip(*iterables)`` yields, if their lengths are known."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def bar(total: int | None) -> Any:
    """A tqdm bar of ``total`` items, or None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("progress=True needs tqdm (pip install tqdm); continuing without a bar", stacklevel=4)
        return None
    return tqdm(total=total)
