//! Wire formats: the descriptor of a queue message, and the header of a
//! frame on a stream (a Pipe's socket).
//!
//! Decoders never trust their input: a frame written by a buggy or dying
//! process, or bytes that are not a frame at all, give `CoreError::Corrupt`,
//! never a panic or an out-of-bounds access. (`tests/` fuzzes them.)
//!
//! Queue message descriptor, little-endian:
//!
//! ```text
//! u32 magic = MSG_MAGIC | u16 version | u16 segment count
//! count x { u32 location (1 inline, 2 arena) | u32 zero | u64 offset | u64 length }
//! inline bytes (the inline segments, offsets relative to here)
//! ```
//! Segment 0 is the in-band pickle; the rest are out-of-band buffers.

use crate::error::{CoreError, Result};

/// First word of a message descriptor ("CRLM").
pub const MSG_MAGIC: u32 = u32::from_le_bytes(*b"CRLM");
/// Version of the descriptor layout.
pub const MSG_VERSION: u16 = 1;
/// Most segments one message may carry (in-band pickle + buffers): all
/// that the u16 count of the header can say. A queue's ring may hold
/// fewer (its descriptor must fit one frame: see [`segments_within`]).
pub const MAX_SEGMENTS: usize = u16::MAX as usize;
const MSG_HEADER: usize = 8;
const SEGMENT_ENTRY: usize = 24;

/// Where a segment's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the descriptor itself, after the segment table.
    Inline,
    /// In the channel's shared arena.
    Arena,
}

/// One segment of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where the bytes are.
    pub location: Location,
    /// Offset: from the start of the inline area, or of the arena.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Size of a descriptor with `segments` entries and `inline_len` inline bytes.
pub fn descriptor_len(segments: usize, inline_len: usize) -> usize {
    MSG_HEADER + segments * SEGMENT_ENTRY + inline_len
}

/// Most segments whose table fits in `bytes` (at most `MAX_SEGMENTS`).
pub fn segments_within(bytes: usize) -> usize {
    (bytes.saturating_sub(MSG_HEADER) / SEGMENT_ENTRY).min(MAX_SEGMENTS)
}

/// Writes the header and segment table of a descriptor into `out`
/// (which must be `descriptor_len(segments.len(), 0)` bytes); the caller
/// appends the inline bytes.
pub fn encode_table(segments: &[Segment], out: &mut Vec<u8>) -> Result<()> {
    if segments.is_empty() || segments.len() > MAX_SEGMENTS {
        return Err(CoreError::Invalid(format!("a message has 1 to {MAX_SEGMENTS} segments, not {}", segments.len())));
    }
    out.extend_from_slice(&MSG_MAGIC.to_le_bytes());
    out.extend_from_slice(&MSG_VERSION.to_le_bytes());
    out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
    for s in segments {
        let loc: u32 = match s.location {
            Location::Inline => 1,
            Location::Arena => 2,
        };
        out.extend_from_slice(&loc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&s.offset.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
    }
    Ok(())
}

/// A decoded descriptor: the segments, checked against the inline area and
/// the arena size, and where the inline area starts in the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The segments, in order.
    pub segments: Vec<Segment>,
    /// Offset of the inline area within the descriptor bytes.
    pub inline_start: usize,
}

/// Decodes and validates a descriptor. Every inline segment lies inside the
/// descriptor and every arena segment inside `[0, arena_len)`.
pub fn decode(bytes: &[u8], arena_len: u64) -> Result<Descriptor> {
    let bad = |detail: String| CoreError::corrupt("message descriptor", detail);
    if bytes.len() < MSG_HEADER {
        return Err(bad(format!("{} bytes is shorter than a header", bytes.len())));
    }
    let magic = u32::from_le_bytes(word4(bytes, 0));
    if magic != MSG_MAGIC {
        return Err(bad(format!("bad magic {magic:#x}")));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != MSG_VERSION {
        return Err(bad(format!("unknown version {version}")));
    }
    let count = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    if count == 0 || count > MAX_SEGMENTS {
        return Err(bad(format!("{count} segments")));
    }
    let inline_start = descriptor_len(count, 0);
    if bytes.len() < inline_start {
        return Err(bad("segment table runs past the end".into()));
    }
    let inline_len = (bytes.len() - inline_start) as u64;
    let mut segments = Vec::with_capacity(count);
    for i in 0..count {
        let at = MSG_HEADER + i * SEGMENT_ENTRY;
        let loc = u32::from_le_bytes(word4(bytes, at));
        let offset = u64::from_le_bytes(word8(bytes, at + 8));
        let len = u64::from_le_bytes(word8(bytes, at + 16));
        let (location, limit) = match loc {
            1 => (Location::Inline, inline_len),
            2 => (Location::Arena, arena_len),
            other => return Err(bad(format!("segment {i}: unknown location {other}"))),
        };
        let end = offset.checked_add(len).ok_or_else(|| bad(format!("segment {i} overflows")))?;
        if end > limit {
            return Err(bad(format!("segment {i} ends at {end}, past {limit}")));
        }
        segments.push(Segment { location, offset, len });
    }
    Ok(Descriptor { segments, inline_start })
}

fn word4(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn word8(b: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    w
}

/// First word of a stream frame ("CRLP").
pub const STREAM_MAGIC: u32 = u32::from_le_bytes(*b"CRLP");
/// Size of a stream frame header.
pub const STREAM_HEADER: usize = 16;

/// Header of one frame on a stream: magic, flags (0), payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Payload length in bytes.
    pub len: u64,
}

impl StreamHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; STREAM_HEADER] {
        let mut out = [0u8; STREAM_HEADER];
        out[0..4].copy_from_slice(&STREAM_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses a header, refusing a bad magic, non-zero flags, or a payload
    /// above `max_len`.
    pub fn decode(bytes: &[u8; STREAM_HEADER], max_len: u64) -> Result<Self> {
        let bad = |detail: String| CoreError::corrupt("stream frame", detail);
        let magic = u32::from_le_bytes(word4(bytes, 0));
        if magic != STREAM_MAGIC {
            return Err(bad(format!("bad magic {magic:#x}")));
        }
        let flags = u32::from_le_bytes(word4(bytes, 4));
        if flags != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let len = u64::from_le_bytes(word8(bytes, 8));
        if len > max_len {
            return Err(bad(format!("payload of {len} bytes exceeds {max_len}")));
        }
        Ok(StreamHeader { len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg() -> impl Strategy<Value = (bool, u64, u64)> {
        (any::<bool>(), 0u64..1000, 0u64..1000)
    }

    proptest! {
        #[test]
        fn descriptors_round_trip(segs in proptest::collection::vec(seg(), 1..20), inline in 0usize..3000) {
            let segments: Vec<Segment> = segs.iter().map(|&(inl, off, len)| {
                if inl {
                    let off = off.min(inline as u64);
                    let len = len.min(inline as u64 - off);
                    Segment { location: Location::Inline, offset: off, len }
                } else {
                    Segment { location: Location::Arena, offset: off, len }
                }
            }).collect();
            let mut buf = Vec::new();
            encode_table(&segments, &mut buf).unwrap();
            buf.resize(buf.len() + inline, 7);
            let d = decode(&buf, 2000).unwrap();
            prop_assert_eq!(d.segments, segments);
            prop_assert_eq!(d.inline_start, descriptor_len(segs.len(), 0));
        }

        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_to_segments_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..400), arena in 0u64..10_000) {
            if let Ok(d) = decode(&bytes, arena) {
                let inline_len = (bytes.len() - d.inline_start) as u64;
                for s in d.segments {
                    let limit = match s.location { Location::Inline => inline_len, Location::Arena => arena };
                    prop_assert!(s.offset + s.len <= limit);
                }
            }
        }

        #[test]
        fn a_flipped_byte_in_a_valid_descriptor_never_escapes_bounds(pos in 0usize..56, bit in 0u8..8) {
            let segments = [
                Segment { location: Location::Inline, offset: 0, len: 8 },
                Segment { location: Location::Arena, offset: 64, len: 100 },
            ];
            let mut buf = Vec::new();
            encode_table(&segments, &mut buf).unwrap();
            buf.extend_from_slice(&[1u8; 8]);
            buf[pos] ^= 1 << bit;
            if let Ok(d) = decode(&buf, 1000) {
                for s in d.segments {
                    let limit = match s.location { Location::Inline => 8, Location::Arena => 1000 };
                    prop_assert!(s.offset + s.len <= limit);
                }
            }
        }

        #[test]
        fn stream_headers_round_trip_and_reject_oversize(len in any::<u64>(), max in any::<u64>()) {
            let h = StreamHeader { len }.encode();
            let r = StreamHeader::decode(&h, max);
            if len <= max { prop_assert_eq!(r.unwrap().len, len); } else { prop_assert!(r.is_err()); }
        }

        #[test]
        fn a_table_of_segments_within_n_bytes_fits_in_n_bytes(bytes in 0usize..4_000_000) {
            let n = segments_within(bytes);
            prop_assert!(n <= MAX_SEGMENTS);
            if n > 0 {
                prop_assert!(descriptor_len(n, 0) <= bytes);
            }
            if n < MAX_SEGMENTS {
                prop_assert!(descriptor_len(n + 1, 0) > bytes);
            }
        }

        #[test]
        fn random_stream_headers_never_panic(bytes in proptest::array::uniform16(any::<u8>())) {
            let _ = StreamHeader::decode(&bytes, 1 << 40);
        }
    }
}
