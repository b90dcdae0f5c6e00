"""Serialization for every corral channel.

Pickle protocol 5 with out-of-band buffers: numpy arrays and other
contiguous buffers are not copied into the pickle stream; the channel moves
them itself (large ones through shared memory). Objects plain pickle cannot
handle by reference (lambdas, closures, local classes) fall back to
cloudpickle, which serializes them by value.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

__all__ = ["dumps", "dumps_inband", "loads", "dumps_by_value", "pack_exception", "unpack_exception"]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = 5


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles ``obj``; returns the stream and its out-of-band buffers.

    Raises the pickling error (TypeError, PicklingError, ...) in the caller
    when neither pickle nor cloudpickle can serialize the object.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        return _dumps(obj, _PROTOCOL, buffer_callback=buffers.append), buffers
    except (pickle.PicklingError, AttributeError, TypeError):
        buffers.clear()
        import cloudpickle

        try:
            return cloudpickle.dumps(obj, _PROTOCOL, buffer_callback=buffers.append), buffers
        except Exception as exc:
            raise TypeError(f"cannot pickle {type(obj).__name__!r} object: {exc}") from exc


def dumps_by_value(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles with cloudpickle: functions defined in ``__main__``, lambdas
    and closures are sent by value, so a fresh interpreter can load them."""
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    return cloudpickle.dumps(obj, _PROTOCOL, buffer_callback=buffers.append), buffers


def loads(data: Any, buffers: list[Any] | None = None) -> Any:
    """Unpickles a stream made by ``dumps``, with its buffers."""
    return _loads(data, buffers=buffers)


def pack_exception(exc: BaseException) -> bytes:
    """Pickles an exception with its formatted traceback. An exception that
    cannot be pickled is replaced by a RuntimeError that carries its repr."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        data, bufs = dumps((exc, tb))
        if not bufs:
            _loads(data)  # an exception must also be loadable
            return data
    except Exception:
        pass
    return _dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb), _PROTOCOL)


def unpack_exception(data: bytes) -> BaseException:
    """The exception of ``pack_exception``, its remote traceback attached
    as ``__cause__``."""
    from .errors import RemoteTraceback

    exc, tb = _loads(data)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


def dumps_inband(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles with every buffer in the stream (for byte streams such as a
    pipe); falls back to cloudpickle like ``dumps``."""
    try:
        return _dumps(obj, _PROTOCOL), []
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle

        try:
            return cloudpickle.dumps(obj, _PROTOCOL), []
        except Exception as exc:
            raise TypeError(f"cannot pickle {type(obj).__name__!r} object: {exc}") from exc
