//! How many items `map` puts in one task when the user gives no chunksize.
//!
//! It starts with one item per task and follows the measured time per item
//! so that a chunk takes about `TARGET_NS`: long enough that the per-task
//! cost (a message each way, a wake-up) is small beside the work, short
//! enough that the last chunks do not leave a worker idle for long. It grows
//! at most fourfold per chunk, so a slow item found late does not produce a
//! giant chunk from an old estimate.

/// Wanted run time of one chunk.
const TARGET_NS: f64 = 5_000_000.0;
/// Most items in one chunk.
pub const MAX_CHUNK: usize = 1 << 16;

/// The chunk-size policy of one `map` call.
#[derive(Debug, Clone)]
pub struct ChunkSizer {
    per_item_ns: f64,
    size: usize,
}

impl Default for ChunkSizer {
    fn default() -> Self {
        ChunkSizer { per_item_ns: 0.0, size: 1 }
    }
}

impl ChunkSizer {
    /// A sizer that starts at one item.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size of the next chunk.
    pub fn next(&self) -> usize {
        self.size
    }

    /// A chunk of `items` items ran for `busy_ns`.
    pub fn observe(&mut self, items: usize, busy_ns: u64) {
        if items == 0 {
            return;
        }
        let per = (busy_ns as f64 / items as f64).max(1.0);
        self.per_item_ns = if self.per_item_ns <= 0.0 { per } else { 0.7 * self.per_item_ns + 0.3 * per };
        let want = (TARGET_NS / self.per_item_ns).clamp(1.0, MAX_CHUNK as f64) as usize;
        self.size = want.min(self.size.saturating_mul(4)).max(1);
    }
}

/// How many chunks of `chunk_size` items a `map` keeps in flight over
/// `workers` workers: enough to keep each busy across a round trip to the
/// parent; small chunks need more of them, large ones few (memory).
pub fn chunks_in_flight(chunk_size: usize, workers: usize) -> usize {
    if chunk_size < 64 {
        8 * workers + 32
    } else {
        2 * workers + 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_for_tiny_items_and_stays_small_for_slow_ones() {
        let mut c = ChunkSizer::new();
        assert_eq!(c.next(), 1);
        for _ in 0..20 {
            let n = c.next();
            c.observe(n, n as u64 * 10);
        }
        assert_eq!(c.next(), MAX_CHUNK);
        let mut slow = ChunkSizer::new();
        for _ in 0..5 {
            slow.observe(1, 50_000_000);
        }
        assert_eq!(slow.next(), 1);
        let mut ms = ChunkSizer::new();
        for _ in 0..10 {
            let n = ms.next();
            ms.observe(n, n as u64 * 1_000_000);
        }
        assert_eq!(ms.next(), 5);
    }

    #[test]
    fn small_chunks_get_a_wider_window() {
        assert!(chunks_in_flight(1, 2) > chunks_in_flight(1000, 2));
        assert_eq!(chunks_in_flight(1000, 2), 6);
    }

    #[test]
    fn growth_is_bounded_per_step() {
        let mut c = ChunkSizer::new();
        c.observe(1, 10);
        assert_eq!(c.next(), 4);
    }
}
