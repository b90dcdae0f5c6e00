"""torch CPU tensors through corral's channels without copying their storage.

torch's own ``Tensor.__reduce_ex__`` writes a tensor's storage into the
pickle stream through ``torch.save`` (bytes made, copied into the stream,
copied out again on load). Here a CPU tensor pickles as the bytes of its
storage that it uses, as a ``pickle.PickleBuffer`` (out of band when of
``OUT_OF_BAND_MIN`` bytes or more, as a NumPy array's), plus its dtype,
shape, strides, storage offset and ``requires_grad``; the receiver's tensor
is ``torch.frombuffer`` of the received buffer, a view on it (a queue's
arena block, freed when the last view goes): no copy past the channel's own.

Used only when torch is already imported (``sys.modules``): corral never
imports it, so a worker that never touched torch does not load it. Only
``dumps`` of ``corral._pickle`` (queues, pool arguments and results, pipes)
uses this table; a user's ``pickle.dumps`` of a tensor is torch's as before.

What travels how:

- A strided CPU tensor of plain type ``torch.Tensor``: its storage span
  (``_Span``), whole when the tensor uses at least half of it, else the
  bytes from its first to its last element (a small slice of a large
  tensor does not drag the rest along); strides kept, so a non-contiguous
  view arrives as the same view.
- Tensors of one message sharing a storage share it on receipt (one
  ``_Span`` per storage and message, memoized by pickle), as torch's
  pickling keeps them: when a later tensor reaches outside the span sent
  for an earlier one (a small slice first, the whole tensor after), it
  gets a span of its own and the two no longer share memory on receipt.
- A NumPy array and a tensor on the same memory (``torch.from_numpy``)
  in one message arrive as two copies that no longer share it: the array
  travels by NumPy's reduction, not as a span (measured by the outside
  probe of stop 22; ``torch.multiprocessing`` does not share them either).
- ``nn.Parameter``: torch's own reduction, whose ``.data`` is a plain
  tensor and travels as above; a tensor with Python attributes keeps them
  (torch's ``_tensor._rebuild_from_type_v2``).
- A non-leaf tensor that requires grad is refused with
  torch.multiprocessing's error (autograd does not cross processes).
- Other devices are refused (``NotCpuTensorError``): CUDA memory cannot be
  mapped by another process through corral's shared memory; the message
  names ``.cpu()`` and torch.multiprocessing's CUDA IPC. A meta tensor is
  refused too (it has no data to send).
- Other subclasses, sparse, quantized, nested, named, mkldnn tensors and
  tensors without storage: torch's own reduction (correct, with its copies;
  a sparse tensor's indices and values are plain tensors and travel as
  above).
"""

from __future__ import annotations

import collections
import collections.abc
import copyreg
import importlib
import io
import pickle
import sys
import threading
from typing import Any

#: Pickler classes whose dispatch table adds the tensor reducer to
#: ``copyreg.dispatch_table``, by base class, rebuilt when copyreg's table
#: changes size (``pickler``).
_picklers: dict[Any, type] = {}
_copyreg_len = -1
#: Per thread: ``spans``, the spans of the message being pickled (storage
#: address -> the ``_Span`` sent for it, see ``_span_for``); ``reusable``,
#: the thread's ``_Reusable`` pickler.
_local = threading.local()


def loaded() -> Any:
    """The torch module if it is imported (wholly: not while its own import
    runs), else None."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "Tensor") or not hasattr(torch, "_utils"):
        return None
    return torch


def _table(base: Any) -> dict[Any, Any]:
    torch = sys.modules["torch"]
    table = dict(base)
    table[torch.Tensor] = reduce_tensor
    return table


def pickler(base: type = pickle.Pickler) -> type | None:
    """A subclass of ``base`` (``pickle.Pickler``, or cloudpickle's) whose
    dispatch table sends ``torch.Tensor``s with ``reduce_tensor``; None
    while torch is not imported (``loaded``)."""
    global _copyreg_len
    if len(copyreg.dispatch_table) != _copyreg_len:
        _picklers.clear()
        _copyreg_len = len(copyreg.dispatch_table)
    cls = _picklers.get(base)
    if cls is None:
        if loaded() is None:
            return None
        own = getattr(base, "dispatch_table", None)
        if not isinstance(own, collections.abc.Mapping):  # the C Pickler's slot: copyreg's table
            # A plain dict, looked up in C for every object pickled (a
            # ChainMap would cost a Python call each).
            table: Any = _table(copyreg.dispatch_table)
        else:
            table = collections.ChainMap(_table({}), own)  # type: ignore[arg-type]
        cls = type("_TensorPickler", (base,), {"dispatch_table": table})
        _picklers[base] = cls
    return cls


class _Reusable:
    """A thread's pickler of class ``cls`` and its stream, kept from one
    message to the next: making a Pickler and a BytesIO costs a put 0.8 us,
    twice what ``pickle.dumps`` of a small message costs (measured on the
    2-core VM, 2026-12-07: 1.45 us against 0.37 us). Its buffer callback
    forwards to the message's (``target``; None: every buffer in band)."""

    __slots__ = ("busy", "cls", "out", "pickler", "protocol", "target")

    def __init__(self, cls: type, protocol: int) -> None:
        self.cls, self.protocol, self.busy = cls, protocol, False
        self.target: Any = None
        self.out = io.BytesIO()
        self.pickler = cls(self.out, protocol, buffer_callback=self._forward)

    def _forward(self, buf: pickle.PickleBuffer) -> Any:
        target = self.target
        return True if target is None else target(buf)

    def dump(self, obj: Any, callback: Any) -> bytes:
        self.busy, self.target = True, callback
        try:
            self.pickler.dump(obj)
            return self.out.getvalue()
        finally:
            # Nothing of the message stays referenced (a pool worker's
            # result array must be free to travel as its block).
            self.pickler.clear_memo()
            self.out.seek(0)
            self.out.truncate()
            self.busy, self.target = False, None


def dumps(cls: type, obj: Any, protocol: int, callback: Any) -> bytes:
    """Pickles ``obj`` with the pickler class ``cls`` (from ``pickler``);
    tensors sharing a storage share one span in this message."""
    outer = getattr(_local, "spans", None)
    _local.spans = {}
    try:
        if cls.__base__ is pickle.Pickler:
            reusable: _Reusable | None = getattr(_local, "reusable", None)
            if reusable is None or reusable.cls is not cls or reusable.protocol != protocol:
                reusable = _local.reusable = _Reusable(cls, protocol)
            if not reusable.busy:  # busy: a pickle made while pickling (a reducer's)
                return reusable.dump(obj, callback)
        out = io.BytesIO()
        cls(out, protocol, buffer_callback=callback).dump(obj)
        return out.getvalue()
    finally:
        _local.spans = outer  # the spans (and their storages) go with this message


class NotCpuTensorError(pickle.PicklingError):
    """A tensor of a device other than the CPU cannot travel through
    corral's shared memory."""


def refusal(device: Any) -> str | None:
    """Why a tensor on ``device`` (a ``torch.device``) cannot travel, and
    what to do instead; None for the CPU."""
    kind = device.type
    if kind == "cpu":
        return None
    if kind == "meta":
        return (
            "corral cannot send a meta tensor: it has no data. Send its shape and dtype, or make it on the CPU "
            "(torch.empty_like(t, device='cpu'))"
        )
    fix = "torch.multiprocessing, whose queues share CUDA tensors through CUDA IPC" if kind == "cuda" else None
    return (
        f"corral cannot send a tensor on device {str(device)!r}: its memory is the device's, which corral's shared "
        f"memory cannot map. Send t.cpu() (a copy in host memory)" + (f", or use {fix}" if fix else "")
    )


def reduce_tensor(t: Any) -> Any:
    """The reduction of a ``torch.Tensor`` (see the module's docstring)."""
    torch = sys.modules["torch"]
    reason = refusal(t.device)
    if reason is not None:
        raise NotCpuTensorError(reason)
    if t.requires_grad and not t.is_leaf:
        # torch.multiprocessing's words (torch/multiprocessing/reductions.py).
        raise RuntimeError(
            "Cowardly refusing to serialize non-leaf tensor which requires_grad, "
            "since autograd does not support crossing process boundaries.  "
            "If you just want to transfer the data, call detach() on the tensor "
            "before serializing (e.g., putting it on the queue)."
        )
    if (
        t.layout != torch.strided
        or t.is_quantized
        or t.is_nested
        or any(getattr(t, "names", ()))  # named tensors (gone in recent torch)
        or not torch._C._has_storage(t)
        or torch._C._has_torch_function_unary(t)
    ):
        return t.__reduce_ex__(5)  # corral's protocol
    if t.is_conj() or t.is_neg():
        # Lazy conjugation/negation bits: the storage holds the data before
        # them; sent resolved (one copy, as torch.multiprocessing does not
        # keep the bits either).
        t = t.resolve_conj().resolve_neg()
    args = _args(t)
    state = torch._utils._get_obj_state(t)
    if state:
        return (torch._tensor._rebuild_from_type_v2, (_rebuild, torch.Tensor, args, state))
    return (_rebuild, args)


def _args(t: Any) -> tuple[Any, ...]:
    size, stride, itemsize = tuple(t.shape), t.stride(), t.element_size()
    if t.numel() == 0:
        return (None, t.dtype, size, stride, 0, t.requires_grad)
    first = t.storage_offset() * itemsize
    last = first + (sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1) * itemsize
    span = _span_for(t.untyped_storage(), first, last, itemsize)
    return (span, t.dtype, size, stride, (first - span.start) // itemsize, t.requires_grad)


def _span_for(storage: Any, first: int, last: int, itemsize: int) -> _Span:
    """The ``_Span`` of ``storage`` sent for a tensor using its bytes
    ``[first, last)``: the one already sent in this message when it
    covers them at an offset in whole elements, else a new one."""
    spans: dict[int, _Span] | None = getattr(_local, "spans", None)
    key = storage.data_ptr()
    if spans is not None:
        sent = spans.get(key)
        if sent is not None and sent.start <= first and last <= sent.end and (first - sent.start) % itemsize == 0:
            return sent
    total = storage.nbytes()
    start, end = (0, total) if 2 * (last - first) >= total else (first, last)
    span = _Span(storage, start, end)
    if spans is not None:
        spans[key] = span
    return span


class _Span:
    """Bytes ``[start, end)`` of a tensor storage; pickles as a
    ``PickleBuffer`` of them (a writable view, so the receiver's tensor is
    writable as a received NumPy array is), loaded as a uint8 tensor on
    the received buffer (``_span_tensor``). One per storage and message:
    pickle's memo gives every tensor of the message on it the same
    received storage."""

    __slots__ = ("end", "start", "storage")

    def __init__(self, storage: Any, start: int, end: int) -> None:
        self.storage, self.start, self.end = storage, start, end

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A ctypes array at the storage's address exports the bytes (torch
        # tensors have no buffer protocol; NumPy may be absent), and keeps
        # the storage alive for as long as the buffer is held (a queue's
        # put, a pool worker's result offered as its arena block).
        # ctypes is imported here, not at the top: every corral process
        # (the parent, the fork server, each worker) imports this module
        # through ``_pickle``, and ctypes cost 1.5-2.5 ms of CPU in each.
        import ctypes

        view = (ctypes.c_ubyte * (self.end - self.start)).from_address(self.storage.data_ptr() + self.start)
        view._storage = self.storage  # type: ignore[attr-defined]
        return (_span_tensor, (pickle.PickleBuffer(view),))


def _span_tensor(buf: Any) -> Any:
    """A 1-D uint8 tensor viewing the received buffer (kept alive by it).
    The receiver may not have imported torch yet: its first tensor does."""
    torch = importlib.import_module("torch")
    return torch.frombuffer(buf, dtype=torch.uint8)


def _rebuild(
    span: Any, dtype: Any, size: tuple[int, ...], stride: tuple[int, ...], offset: int, requires_grad: bool
) -> Any:
    """The received tensor: a view on ``span`` (the received uint8
    tensor) with the sender's dtype, shape, strides and offset (in
    elements of ``dtype`` from the span's start)."""
    torch = importlib.import_module("torch")
    if span is None:
        t = torch.empty_strided(size, stride, dtype=dtype)
    else:
        t = torch.empty((0,), dtype=dtype).set_(span.untyped_storage(), offset, size, stride)
    if requires_grad:
        t.requires_grad_(True)
    return t
