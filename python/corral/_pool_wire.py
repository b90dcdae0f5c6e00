"""The process pool's message headers, as ``corral_core::pool::wire``
lays them out (little-endian, fixed size)."""

from __future__ import annotations

import struct

#: magic b"CRLT", kind, flags, 2 pad bytes, task id, function id, function bytes, timeout ms.
TASK = struct.Struct("<4sBB2xQQII")
#: magic b"CRLR", status, pad, worker slot, task id, busy ns.
RESULT = struct.Struct("<4sBxHQQ")

TASK_MAGIC = b"CRLT"
RESULT_MAGIC = b"CRLR"

# Task kinds.
CALL = 0
CHUNK = 1

# Task flags.
RESET_FNS = 1  # forget every cached function first

# Result statuses.
OK = 0
RAISED = 1
CANCELLED = 2
INIT_FAILED = 3
READY = 4

assert TASK.size == 32 and RESULT.size == 24
