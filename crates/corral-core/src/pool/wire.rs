//! The pool's message headers. A task message is a `TaskHeader`, then the
//! pickled function (only the first time a worker gets that function), then
//! the pickled arguments; out-of-band buffers follow as further parts. A
//! result message is a `ResultHeader` then the pickled outcome.
//!
//! Little-endian, fixed size; the Python side packs and unpacks the same
//! layout with `struct` (`corral._pool_wire`).

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
    fn from_raw(v: u8) -> Result<Status> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::Raised,
            2 => Status::Cancelled,
            3 => Status::InitFailed,
            4 => Status::Ready,
            5 => Status::Wake,
            _ => return Err(CoreError::corrupt("result header", format!("unknown status {v}"))),
        })
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
    /// 0: one call `fn(*args, **kwargs)`; 1: a chunk of calls.
    pub kind: u8,
    /// Bit 0 (`FLAG_RESET_FNS`): forget every cached function first.
    pub flags: u8,
}

/// Task flag: the worker drops its function cache before this task.
pub const FLAG_RESET_FNS: u8 = 1;

impl TaskHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; TASK_HEADER_LEN] {
        let mut b = [0u8; TASK_HEADER_LEN];
        b[0..4].copy_from_slice(&TASK_MAGIC.to_le_bytes());
        b[4] = self.kind;
        b[5] = self.flags;
        b[8..16].copy_from_slice(&self.task.to_le_bytes());
        b[16..24].copy_from_slice(&self.fn_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.fn_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.timeout_ms.to_le_bytes());
        b
    }
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

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl ResultHeader {
    /// Decodes and validates a result header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ResultHeader> {
        if bytes.len() < RESULT_HEADER_LEN {
            return Err(CoreError::corrupt("result header", format!("{} bytes", bytes.len())));
        }
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic != RESULT_MAGIC {
            return Err(CoreError::corrupt("result header", "bad magic"));
        }
        let status = Status::from_raw(bytes[4])?;
        let slot = u16::from_le_bytes([bytes[6], bytes[7]]);
        Ok(ResultHeader { task: le_u64(bytes, 8), status, slot, busy_ns: le_u64(bytes, 16) })
    }

    /// The header's bytes (the worker side uses Python's `struct`; this is
    /// for tests and Rust users).
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ResultHeader::decode(&bytes);
        }

        #[test]
        fn round_trip(task in any::<u64>(), slot in any::<u16>(), busy in any::<u64>(), s in 0u8..6) {
            let h = ResultHeader { task, status: Status::from_raw(s).unwrap(), slot, busy_ns: busy };
            prop_assert_eq!(ResultHeader::decode(&h.encode()).unwrap(), h);
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
}
