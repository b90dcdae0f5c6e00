"""``progress=`` of the pools' ``map`` and ``imap_unordered``: a tqdm bar
counting items (not chunks), its ``total`` from ``len()`` of the input when
it has one.

``progress`` is ``True`` (``tqdm.auto.tqdm``, so notebooks get a widget), a
dict of tqdm options (``desc``, ``total``, ``position``, ``leave``,
``unit``, ...; ``tqdm.auto.tqdm`` too), or a tqdm class (``tqdm.tqdm``,
``tqdm.notebook.tqdm``, ``tqdm.rich.tqdm``, a subclass), called with
``total=``. tqdm is optional; without it ``True`` or a dict warns once and
the map runs without a bar.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: What ``progress=`` takes: a bool, tqdm options, or a tqdm class.
Spec = bool | Mapping[str, Any] | Callable[..., Any] | None


def total_of(iterables: Iterable[Iterable[Any]]) -> int | None:
    """The number of items ``zip(*iterables)`` yields, if their lengths are known."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def wanted(spec: Spec) -> bool:
    """Whether ``progress=spec`` asks for a bar; TypeError (at the call,
    not at the first result) for anything but the forms above."""
    if spec is None or spec is False:
        return False
    if spec is True or isinstance(spec, Mapping) or callable(spec):
        return True
    raise TypeError(f"progress must be True, a dict of tqdm options or a tqdm class, not {type(spec).__name__}")


def bar(spec: Spec, total: int | None) -> Any:
    """The bar ``progress=spec`` asks for, of ``total`` items unless the
    options say otherwise; None when no bar is wanted or tqdm is missing."""
    if not wanted(spec):
        return None
    options: dict[str, Any] = {"total": total}
    if isinstance(spec, Mapping):
        options.update(spec)
    make: Callable[..., Any]
    if callable(spec) and not isinstance(spec, Mapping):
        make = spec
    else:
        try:
            from tqdm.auto import tqdm

            make = tqdm
        except ImportError:
            warnings.warn("progress= needs tqdm (pip install tqdm); continuing without a bar", stacklevel=4)
            return None
    return make(**options)
