//! A limit on how often a recurring log line is written (pure: it is handed the time).

/// Lets a recurring warning through at most once per `every`, counting the rest, so that a
/// flood of bad messages cannot flood the log.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Duration>,
    suppressed: u64,
}

impl Throttle {
    pub const fn per_minute() -> Throttle {
        Throttle {
            every: std::time::Duration::from_secs(60),
            last: None,
            suppressed: 0,
        }
    }

    /// At monotonic time `now`: `Some(n)` to log now (`n` occurrences were held back since the
    /// last line), `None` to stay quiet.
    pub fn allow(&mut self, now: std::time::Duration) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_sub(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_throttle_logs_once_a_minute_and_counts_what_it_held_back() {
        let mut t = Throttle::per_minute();
        assert_eq!(t.allow(Duration::from_secs(0)), Some(0));
        for s in 1..60 {
            assert_eq!(t.allow(Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow(Duration::from_secs(60)), Some(59));
        assert_eq!(t.allow(Duration::from_secs(61)), None);
    }
}
