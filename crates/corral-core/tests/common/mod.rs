//! Helpers shared by the cross-process test binaries.

use corral_core::channel::queue::{Part, SharedQueue};

/// The bytes of a received part; a block is copied out and freed.
pub fn take_part(q: &SharedQueue, part: &Part) -> Vec<u8> {
    match *part {
        Part::Inline(ref b) => b.clone(),
        Part::Block { offset, len } => {
            let src = q.block_ptr(offset, len).unwrap();
            let mut out = vec![0u8; len as usize];
            // SAFETY: the block is held by this process until free_block
            // below, and block_ptr checked that it lies in the arena.
            unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len as usize) };
            q.free_block(offset).unwrap();
            out
        }
    }
}
