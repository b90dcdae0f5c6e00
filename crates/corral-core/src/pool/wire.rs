//! The pool's messages, the only place their layout is written down.
//!
//! A task message (parent -> worker, on the worker's own queue) is a
//! `TaskHeader`, then the pickled function (only the first time a worker
//! gets that function), then the pickled arguments; out-of-band buffers
//! follow as further parts. A result message (worker -> parent, on the
//! pool's result queue) is a `ResultHeader` then the pickled outcome.
//!
//! Little-endian, fixed size. Both ends go through this file: the parent's
//! runtime encodes tasks (`encode_task`) and decodes results
//! (`ResultHeader::decode`); a worker decodes tasks (`decode_task`) and
//! encodes results (`encode_result`), the Python worker through the
//! bindings (`_core.TaskMessage.decode`, `_core.encode_result`). Changing a
//! header changes this file only.
//!
//! ```text
//! task header (32 B)    0 "CRLT" | 4 kind u8 | 5 flags u8 | 6 pad 2 | 8 task u64
//!                       | 16 fn_id u64 | 24 fn_len u32 | 28 timeout_ms u32
//! result header (24 B)  0 "CRLR" | 4 status u8 | 5 pad | 6 slot u16 | 8 task u64
//!                       | 16 busy_ns u64
//! ```

use crate::error::{CoreError, Result};

/// `b"CRLT"`: a task.
pub const TASK_MAGIC: u32 = u32::from_le_bytes(*b"CRLT");
/// `b"CRLR"`: a result.
pub const RESULT_MAGIC: u32 = u32::from_le_bytes(*b"CRLR");
/// Bytes of a task header.
pub const TASK_HEADER_LEN: usize = 32;
/// Bytes of a result header.
pub const RESULT_HEADER_LEN: usize = 24;

/// What a result message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The task returned; the outcome is its value.
    Ok = 0,
    /// The task raised; the outcome is the packed exception.
    Raised = 1,
    /// The task was cancelled before it started; no outcome.
    Cancelled = 2,
    /// The worker's initializer raised (task 0); the outcome is the packed
    /// exception.
    InitFailed = 3,
    /// The worker finished booting (task 0); no outcome.
    Ready = 4,
    /// Sent by the parent to itself: a worker exited or the pool closes;
    /// look now (task 0, no outcome).
    Wake = 5,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 6] =
        [Status::Ok, Status::Raised, Status::Cancelled, Status::InitFailed, Status::Ready, Status::Wake];

    /// The status of wire value `v`.
    pub fn from_raw(v: u8) -> Result<Status> {
        Status::ALL
            .get(usize::from(v))
            .copied()
            .ok_or_else(|| CoreError::corrupt("result header", format!("unknown status {v}")))
    }

    /// Its name, as the bindings show it ("ok", "raised", ...).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Raised => "raised",
            Status::Cancelled => "cancelled",
            Status::InitFailed => "init_failed",
            Status::Ready => "ready",
            Status::Wake => "wake",
        }
    }

    /// The status named `name` (see `name`).
    pub fn from_name(name: &str) -> Result<Status> {
        Status::ALL
            .iter()
            .copied()
            .find(|s| s.name() == name)
            .ok_or_else(|| CoreError::Invalid(format!("unknown result status {name:?}")))
    }
}

/// What a task message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One call `fn(*args, **kwargs)`.
    Call = 0,
    /// A chunk of calls (`map`): the arguments are `(star, items)`.
    Chunk = 1,
}

impl Kind {
    /// The kind of wire value `v`.
    pub fn from_raw(v: u8) -> Result<Kind> {
        match v {
            0 => Ok(Kind::Call),
            1 => Ok(Kind::Chunk),
            _ => Err(CoreError::corrupt("task header", format!("unknown kind {v}"))),
        }
    }

    /// Its name, as the bindings show it: "call" or "chunk".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Chunk => "chunk",
        }
    }

    /// The kind named `name` (see `name`).
    pub fn from_name(name: &str) -> Result<Kind> {
        match name {
            "call" => Ok(Kind::Call),
            "chunk" => Ok(Kind::Chunk),
            _ => Err(CoreError::Invalid(format!("unknown task kind {name:?}"))),
        }
    }
}

/// The head of a task message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskHeader {
    /// The task id.
    pub task: u64,
    /// The function's id in the worker's cache.
    pub fn_id: u64,
    /// Bytes of pickled function that follow (0: the worker has it).
    pub fn_len: u32,
    /// Timeout in milliseconds once started (0: none).
    pub timeout_ms: u32,
    /// One call or a chunk of calls.
    pub kind: Kind,
    /// The worker forgets every cached function before this task.
    pub reset_fns: bool,
}

/// Task flag bit: the worker drops its function cache before this task.
const FLAG_RESET_FNS: u8 = 1;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl TaskHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; TASK_HEADER_LEN] {
        let mut b = [0u8; TASK_HEADER_LEN];
        b[0..4].copy_from_slice(&TASK_MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = if self.reset_fns { FLAG_RESET_FNS } else { 0 };
        b[8..16].copy_from_slice(&self.task.to_le_bytes());
        b[16..24].copy_from_slice(&self.fn_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.fn_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.timeout_ms.to_le_bytes());
        b
    }

    /// Decodes and validates a task header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<TaskHeader> {
        if bytes.len() < TASK_HEADER_LEN {
            return Err(CoreError::corrupt("task header", format!("{} bytes", bytes.len())));
        }
        if le_u32(bytes, 0) != TASK_MAGIC {
            return Err(CoreError::corrupt("task header", "bad magic"));
        }
        let kind = Kind::from_raw(bytes[4])?;
        if bytes[5] & !FLAG_RESET_FNS != 0 {
            return Err(CoreError::corrupt("task header", format!("unknown flags {:#x}", bytes[5])));
        }
        Ok(TaskHeader {
            task: le_u64(bytes, 8),
            fn_id: le_u64(bytes, 16),
            fn_len: le_u32(bytes, 24),
            timeout_ms: le_u32(bytes, 28),
            kind,
            reset_fns: bytes[5] & FLAG_RESET_FNS != 0,
        })
    }
}

/// A task message's in-band bytes: `header` (whose `fn_len` is set from
/// `function`), the pickled function (empty: the worker has it), the
/// pickled arguments.
pub fn encode_task(header: TaskHeader, function: &[u8], args: &[u8]) -> Result<Vec<u8>> {
    let fn_len = u32::try_from(function.len()).map_err(|_| CoreError::Invalid("function pickle over 4 GiB".into()))?;
    let header = TaskHeader { fn_len, ..header }.encode();
    let mut inband = Vec::with_capacity(TASK_HEADER_LEN + function.len() + args.len());
    inband.extend_from_slice(&header);
    inband.extend_from_slice(function);
    inband.extend_from_slice(args);
    Ok(inband)
}

/// A decoded task message: its header and where its parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLayout {
    /// The header.
    pub header: TaskHeader,
    /// Offset of the pickled function (`header.fn_len` bytes).
    pub fn_at: usize,
    /// Offset of the pickled arguments (to the end of the message).
    pub args_at: usize,
}

/// Decodes the in-band bytes of a task message; fails (`Corrupt`) on a bad
/// header or a function longer than the message.
pub fn decode_task(inband: &[u8]) -> Result<TaskLayout> {
    let header = TaskHeader::decode(inband)?;
    let args_at =
        TASK_HEADER_LEN.checked_add(header.fn_len as usize).filter(|&end| end <= inband.len()).ok_or_else(|| {
            CoreError::corrupt(
                "task message",
                format!("function of {} bytes in a message of {}", header.fn_len, inband.len()),
            )
        })?;
    Ok(TaskLayout { header, fn_at: TASK_HEADER_LEN, args_at })
}

/// The head of a result message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultHeader {
    /// The task id (0 for `Ready` and `InitFailed`).
    pub task: u64,
    /// What happened.
    pub status: Status,
    /// The worker slot that sent it.
    pub slot: u16,
    /// How long the task ran, in nanoseconds.
    pub busy_ns: u64,
}

impl ResultHeader {
    /// Decodes and validates a result header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ResultHeader> {
        if bytes.len() < RESULT_HEADER_LEN {
            return Err(CoreError::corrupt("result header", format!("{} bytes", bytes.len())));
        }
        if le_u32(bytes, 0) != RESULT_MAGIC {
            return Err(CoreError::corrupt("result header", "bad magic"));
        }
        let status = Status::from_raw(bytes[4])?;
        let slot = u16::from_le_bytes([bytes[6], bytes[7]]);
        Ok(ResultHeader { task: le_u64(bytes, 8), status, slot, busy_ns: le_u64(bytes, 16) })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; RESULT_HEADER_LEN] {
        let mut b = [0u8; RESULT_HEADER_LEN];
        b[0..4].copy_from_slice(&RESULT_MAGIC.to_le_bytes());
        b[4] = self.status as u8;
        b[6..8].copy_from_slice(&self.slot.to_le_bytes());
        b[8..16].copy_from_slice(&self.task.to_le_bytes());
        b[16..24].copy_from_slice(&self.busy_ns.to_le_bytes());
        b
    }
}

/// Writes a result message's in-band bytes into `out` (exactly
/// `RESULT_HEADER_LEN + outcome.len()` bytes): the header, then the pickled
/// outcome. For a caller that allocates the message itself (the bindings
/// write straight into a Python `bytes`).
pub fn write_result(out: &mut [u8], header: ResultHeader, outcome: &[u8]) -> Result<()> {
    if out.len() != RESULT_HEADER_LEN + outcome.len() {
        return Err(CoreError::Invalid(format!("result message buffer of {} bytes", out.len())));
    }
    out[..RESULT_HEADER_LEN].copy_from_slice(&header.encode());
    out[RESULT_HEADER_LEN..].copy_from_slice(outcome);
    Ok(())
}

/// A result message's in-band bytes: the header, then the pickled outcome.
pub fn encode_result(header: ResultHeader, outcome: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(RESULT_HEADER_LEN + outcome.len());
    msg.extend_from_slice(&header.encode());
    msg.extend_from_slice(outcome);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ResultHeader::decode(&bytes);
            let _ = decode_task(&bytes);
        }

        #[test]
        fn round_trip(task in any::<u64>(), slot in any::<u16>(), busy in any::<u64>(), s in 0u8..6) {
            let h = ResultHeader { task, status: Status::from_raw(s).unwrap(), slot, busy_ns: busy };
            prop_assert_eq!(ResultHeader::decode(&h.encode()).unwrap(), h);
            let msg = encode_result(h, b"outcome");
            prop_assert_eq!(&msg[RESULT_HEADER_LEN..], b"outcome");
            let mut out = vec![0u8; msg.len()];
            write_result(&mut out, h, b"outcome").unwrap();
            prop_assert_eq!(out, msg);
        }

        #[test]
        fn task_round_trip(task in any::<u64>(), fn_id in any::<u64>(), timeout_ms in any::<u32>(),
                           chunk in any::<bool>(), reset_fns in any::<bool>(),
                           function in proptest::collection::vec(any::<u8>(), 0..40),
                           args in proptest::collection::vec(any::<u8>(), 0..40)) {
            let kind = if chunk { Kind::Chunk } else { Kind::Call };
            let h = TaskHeader { task, fn_id, fn_len: 0, timeout_ms, kind, reset_fns };
            let msg = encode_task(h, &function, &args).unwrap();
            let l = decode_task(&msg).unwrap();
            prop_assert_eq!(l.header, TaskHeader { fn_len: function.len() as u32, ..h });
            prop_assert_eq!(&msg[l.fn_at..l.args_at], &function[..]);
            prop_assert_eq!(&msg[l.args_at..], &args[..]);
        }
    }

    #[test]
    fn bad_status_and_magic_are_errors() {
        let mut b = ResultHeader { task: 1, status: Status::Ok, slot: 0, busy_ns: 0 }.encode();
        b[4] = 9;
        assert!(ResultHeader::decode(&b).is_err());
        b[4] = 0;
        b[0] = b'X';
        assert!(ResultHeader::decode(&b).is_err());
    }

    #[test]
    fn bad_task_messages_are_errors() {
        let h = TaskHeader { task: 1, fn_id: 2, fn_len: 0, timeout_ms: 0, kind: Kind::Call, reset_fns: false };
        let good = encode_task(h, b"fn", b"args").unwrap();
        assert!(decode_task(&good).is_ok());
        assert!(matches!(decode_task(&good[..TASK_HEADER_LEN - 1]), Err(CoreError::Corrupt { .. })), "short");
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode_task(&b), Err(CoreError::Corrupt { .. })), "magic");
        let mut b = good.clone();
        b[4] = 7;
        assert!(decode_task(&b).is_err(), "kind");
        let mut b = good.clone();
        b[5] = 0x80;
        assert!(decode_task(&b).is_err(), "flags");
        let mut b = good.clone();
        b[24..28].copy_from_slice(&100u32.to_le_bytes());
        assert!(decode_task(&b).is_err(), "function past the end");
    }

    #[test]
    fn statuses_by_name() {
        for s in Status::ALL {
            assert_eq!(Status::from_name(s.name()).unwrap(), s);
            assert_eq!(Status::from_raw(s as u8).unwrap(), s);
        }
        assert!(Status::from_name("nope").is_err());
    }
}
