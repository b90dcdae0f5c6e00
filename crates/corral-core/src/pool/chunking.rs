//! How many items `map` puts in one task when the user gives no chunksize.
//!
//! It starts with one item per task and follows the measured time per item
//! so that a chunk takes about `TARGET_NS`: long enough that the per-task
//! cost (a message each way, a wake-up) is small beside the work, short
//! enough that the last chunks do not leave a worker idle for long. It grows
//! at most fourfold per chunk, so a slow item found late does not produce a
//! giant chunk from an old estimate.
//!
//! The time per item is a decayed sum of busy time over a decayed sum of
//! items (weighted by items), not an average of per-chunk ratios: a chunk
//! of one item carries the fixed cost of a task (loading its arguments,
//! 10-100 µs), which an average per chunk kept for a dozen chunks after
//! the first large one (a 1 M-item map of a tiny function spent its first
//! 40 ms, 15% of it, on chunks of 1-20 k items instead of 64 k).
//!
//! While it still grows (the fourfold bound, not the measure, sets the
//! size), `in_flight` keeps two chunks per worker in flight: each result
//! then lets the next, larger chunk out at once, where a window sized for
//! one-item chunks (`chunks_in_flight`: 8 per worker + 32) left dozens of
//! them to finish first.
//!
//! When the map knows how many items are left (a list, tuple or range, or
//! inputs of known length), `next_of` also caps a chunk at a share of them,
//! `left / (2 x workers)`: guided self-scheduling (Polychronopoulos and
//! Kuck, 1987), so that the chunks shrink towards the end and the workers
//! finish together (a 100 k-item map of a tiny function made one chunk of
//! 64 k and one of 36 k; it now starts at 25 k, the stdlib's `len / (4 x
//! workers)` is 12.5 k). Never below a sixteenth of the measured size
//! (about 0.3 ms of work): the last chunks do not each pay a task's fixed
//! cost for a handful of items. Before the first measure, such a map
//! starts at `left / (64 x workers)` items per chunk (1/32 of the first
//! share; one item for a map of up to 128 items over 2 workers) instead
//! of one: the ramp from one item took 8 round trips to reach 64 k, each
//! a few wake-ups, 3-45 ms on this 2-core machine under load, with the
//! workers idle; an estimate from a chunk of thousands of items is also
//! right at once (a one-item chunk carries the task's fixed cost).

/// Wanted run time of one chunk.
const TARGET_NS: f64 = 5_000_000.0;
/// Most items in one chunk.
pub const MAX_CHUNK: usize = 1 << 16;
/// Most items in a chunk sent before the first measure (a sixteenth of
/// `MAX_CHUNK`: 0.5-1 ms of a tiny function).
const FIRST_MAX: usize = MAX_CHUNK / 16;
/// Weight kept by the past at each observation.
const DECAY: f64 = 0.7;

/// The chunk-size policy of one `map` call.
#[derive(Debug, Clone)]
pub struct ChunkSizer {
    /// Decayed sums of busy nanoseconds and of items observed.
    busy_ns: f64,
    items: f64,
    size: usize,
    /// The size is still bounded by the growth per step, not the measure.
    growing: bool,
}

impl Default for ChunkSizer {
    fn default() -> Self {
        ChunkSizer { busy_ns: 0.0, items: 0.0, size: 1, growing: true }
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

    /// The size of the next chunk when `left` items remain to be sent over
    /// `workers` workers: `next`, capped at a share of what is left (see the
    /// module doc).
    pub fn next_of(&self, left: usize, workers: usize) -> usize {
        let workers = workers.max(1);
        if self.items == 0.0 {
            return (left / (64 * workers)).clamp(1, FIRST_MAX);
        }
        let share = left.div_ceil(2 * workers);
        self.size.min(share.max(self.size.div_ceil(16))).max(1)
    }

    /// A chunk of `items` items ran for `busy_ns`.
    pub fn observe(&mut self, items: usize, busy_ns: u64) {
        if items == 0 {
            return;
        }
        self.busy_ns = DECAY * self.busy_ns + busy_ns as f64;
        self.items = DECAY * self.items + items as f64;
        let per = (self.busy_ns / self.items).max(1.0);
        let want = (TARGET_NS / per).clamp(1.0, MAX_CHUNK as f64) as usize;
        // From the chunk just measured: a first chunk of a sized map was
        // larger than `size`.
        let bound = self.size.max(items).saturating_mul(4);
        self.growing = want > bound;
        self.size = want.min(bound).max(1);
    }

    /// How many chunks to keep in flight over `workers` workers now: two
    /// per worker while the size grows, then `chunks_in_flight`.
    pub fn in_flight(&self, workers: usize) -> usize {
        if self.growing {
            2 * workers.max(1)
        } else {
            chunks_in_flight(self.size, workers)
        }
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
    fn the_fixed_cost_of_one_item_chunks_does_not_hold_the_size_down() {
        let mut c = ChunkSizer::new();
        // One-item chunks: 20 µs each, all of it a task's fixed cost.
        for _ in 0..40 {
            c.observe(1, 20_000);
        }
        assert_eq!(c.next(), 250);
        // Then items of 100 ns: a 1000-item chunk says so at once.
        c.observe(1000, 100_000);
        let after_one = c.next();
        assert!(after_one >= 1000, "{after_one}");
        for _ in 0..3 {
            let n = c.next();
            c.observe(n, n as u64 * 100);
        }
        // 5 ms of 100 ns items: 50 k (an average of per-chunk ratios was
        // still below 1 k here).
        assert!(c.next() >= 45_000, "{}", c.next());
    }

    #[test]
    fn two_chunks_per_worker_in_flight_while_growing() {
        let mut c = ChunkSizer::new();
        assert_eq!(c.in_flight(2), 4, "unmeasured");
        c.observe(1, 100);
        assert_eq!(c.next(), 4);
        assert_eq!(c.in_flight(2), 4, "still bounded by the growth");
        let mut slow = ChunkSizer::new();
        slow.observe(1, 50_000_000);
        assert_eq!(slow.in_flight(2), chunks_in_flight(1, 2), "settled at one item");
        let mut big = ChunkSizer::new();
        for _ in 0..20 {
            let n = big.next();
            big.observe(n, n as u64 * 10);
        }
        assert_eq!(big.in_flight(2), chunks_in_flight(MAX_CHUNK, 2));
    }

    #[test]
    fn a_known_length_caps_chunks_at_a_share_of_what_is_left() {
        let mut c = ChunkSizer::new();
        for _ in 0..20 {
            let n = c.next();
            c.observe(n, n as u64 * 10);
        }
        assert_eq!(c.next(), MAX_CHUNK);
        assert_eq!(c.next_of(1_000_000, 2), MAX_CHUNK, "far from the end: the measure");
        assert_eq!(c.next_of(100_000, 2), 25_000, "a quarter per worker pair");
        assert_eq!(c.next_of(20_000, 2), 5_000);
        assert_eq!(c.next_of(10, 2), MAX_CHUNK / 16, "never below a sixteenth of the measure");
        let fresh = ChunkSizer::new();
        assert_eq!(fresh.next_of(1_000_000, 2), MAX_CHUNK / 16, "before a measure: at most 4 k");
        assert_eq!(fresh.next_of(100_000, 2), 781, "before a measure: 1/32 of the share");
        assert_eq!(fresh.next_of(200, 2), 1);
        assert_eq!(fresh.next_of(0, 2), 1);
        assert_eq!(fresh.next(), 1, "an input of unknown length starts at one item");
        let mut ms = ChunkSizer::new();
        for _ in 0..10 {
            let n = ms.next();
            ms.observe(n, n as u64 * 1_000_000);
        }
        assert_eq!(ms.next_of(12, 2), 3);
        assert_eq!(ms.next_of(3, 2), 1);
    }

    #[test]
    fn a_large_first_chunk_is_measured_at_once() {
        let mut c = ChunkSizer::new();
        let first = c.next_of(1_000_000, 2);
        // 100 ns per item: 5 ms is 50 k, four times the first chunk at most.
        c.observe(first, first as u64 * 100);
        assert_eq!(c.next_of(1_000_000, 2), 4 * first);
        let mut slow = ChunkSizer::new();
        let first = slow.next_of(10_000, 2);
        assert_eq!(first, 78);
        slow.observe(first, first as u64 * 1_000_000);
        assert_eq!(slow.next_of(10_000, 2), 5, "1 ms items: 5 ms chunks");
    }

    #[test]
    fn growth_is_bounded_per_step() {
        let mut c = ChunkSizer::new();
        c.observe(1, 10);
        assert_eq!(c.next(), 4);
    }
}
