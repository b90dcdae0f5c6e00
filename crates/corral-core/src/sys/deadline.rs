//! The one deadline type of the core: "until when may this call wait".
//!
//! Every blocking call takes its limit as an absolute instant (`None`: no
//! limit), never as a relative timeout, so a wait cut into slices, or retried
//! after a spurious wake-up, keeps the caller's limit exactly. The kernel
//! calls (`futex`, `poll`) want a relative `timespec`: [`Deadline::timespec`]
//! is the only place that converts ([`timespec`] for a bare duration).

use std::time::{Duration, Instant};

use rustix::time::Timespec;

/// An absolute limit for a wait, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No limit.
    pub const NEVER: Deadline = Deadline(None);

    /// The limit `timeout` from now (`None`: no limit). A timeout too large
    /// to represent counts as no limit.
    pub fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// The limit `at`.
    pub const fn at(at: Instant) -> Self {
        Deadline(Some(at))
    }

    /// A limit that has passed already: one non-blocking attempt.
    pub fn now() -> Self {
        Deadline(Some(Instant::now()))
    }

    /// The instant, `None` for no limit.
    pub const fn instant(self) -> Option<Instant> {
        self.0
    }

    /// True when there is no limit.
    pub const fn is_never(self) -> bool {
        self.0.is_none()
    }

    /// True once the limit has passed (never without a limit).
    pub fn expired(self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left (zero once passed), `None` without a limit.
    pub fn remaining(self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The earlier of this limit and `slice` from now: the end of one
    /// slice of a long wait that has something to check between slices.
    pub fn capped(self, slice: Duration) -> Deadline {
        let end = Instant::now() + slice;
        Deadline(Some(self.0.map_or(end, |d| d.min(end))))
    }

    /// The time left as a relative timeout for `futex`/`poll` (zero once
    /// passed), `None` without a limit.
    pub fn timespec(self) -> Option<Timespec> {
        self.remaining().map(timespec)
    }
}

impl From<Option<Instant>> for Deadline {
    fn from(d: Option<Instant>) -> Self {
        Deadline(d)
    }
}

impl From<Instant> for Deadline {
    fn from(d: Instant) -> Self {
        Deadline(Some(d))
    }
}

impl From<Deadline> for Option<Instant> {
    fn from(d: Deadline) -> Self {
        d.0
    }
}

/// A duration as a kernel `timespec` (saturating at `i64::MAX` seconds).
pub fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), tv_nsec: i64::from(d.subsec_nanos()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_has_no_remaining_time_and_never_expires() {
        let d = Deadline::after(None);
        assert!(d.is_never());
        assert!(!d.expired());
        assert_eq!(d.remaining(), None);
        assert!(d.timespec().is_none());
    }

    #[test]
    fn a_passed_deadline_has_zero_left() {
        let d = Deadline::now();
        assert!(d.expired());
        assert_eq!(d.remaining(), Some(Duration::ZERO));
        let ts = d.timespec().unwrap();
        assert_eq!((ts.tv_sec, ts.tv_nsec), (0, 0));
    }

    #[test]
    fn a_huge_timeout_is_no_limit() {
        assert!(Deadline::after(Some(Duration::MAX)).is_never());
    }

    #[test]
    fn capped_takes_the_earlier_end() {
        let far = Deadline::after(Some(Duration::from_secs(3600)));
        let c = far.capped(Duration::from_millis(100)).remaining().unwrap();
        assert!(c <= Duration::from_millis(100));
        let near = Deadline::now();
        assert_eq!(near.capped(Duration::from_secs(1)), near);
        assert!(!Deadline::NEVER.capped(Duration::from_secs(1)).is_never());
    }

    #[test]
    fn timespec_splits_seconds_and_nanoseconds() {
        let ts = timespec(Duration::new(3, 250));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (3, 250));
        assert_eq!(timespec(Duration::MAX).tv_sec, i64::MAX);
    }
}
