//! SOC plausibility: one wild reading must not end (or fake) a charge.
//!
//! A dongle has been seen to report SOC 100 once while the battery sat at 30, which stopped a
//! charge as "target reached". The rule: a reading may differ from the last accepted one by at
//! most `max_step` points plus what the battery could have moved at `max_rate_per_hour` in the
//! time since. A reading beyond that is *held*, not shown and not acted on, until the next
//! reading says which was right: one consistent with the held reading (within `max_step`)
//! confirms it, one consistent with the last accepted value discards it. So a real jump costs
//! one message of delay, an outlier costs nothing, and ordinary readings (1 % at a time) are
//! accepted at once, so a genuine reach of the target still stops within one message.
//!
//! After a long quiet spell (firmware >= 4.3 sends SOC only when it changes, so an idle
//! battery may say nothing for hours) the time allowance lets any reading through, an outlier
//! too. Such a far jump is accepted but remembered as unconfirmed: a next reading consistent
//! with the value before it says the jump was the outlier, and is accepted in its place. The
//! engine asks the dongle for a confirming reading meanwhile.

use std::time::Duration;

use crate::domain::units::Soc;

/// The rule, from config (`charging.soc_max_step`, `charging.soc_max_rate_per_hour`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SocRule {
    /// Points a reading may move whatever the time since the last one.
    pub max_step: u8,
    /// How fast the battery can really charge or discharge, in SOC points per hour.
    pub max_rate_per_hour: f64,
}

impl Default for SocRule {
    fn default() -> Self {
        SocRule {
            max_step: 5,
            max_rate_per_hour: 120.0,
        }
    }
}

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Use it.
    Accept(Soc),
    /// Implausible after the last accepted reading: kept aside until the next one.
    Hold { reading: Soc, last: Soc },
}

/// The filter's memory (monotonic instants; nothing of it needs to survive a restart).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocFilter {
    rule: SocRule,
    last: Option<(Soc, Duration)>,
    held: Option<(Soc, Duration)>,
    /// The last accepted reading was a far jump allowed only by the time since the one before:
    /// that value, and when the jump came.
    jumped_from: Option<(Soc, Duration)>,
}

impl SocFilter {
    pub fn new(rule: SocRule) -> SocFilter {
        SocFilter {
            rule,
            last: None,
            held: None,
            jumped_from: None,
        }
    }

    /// Judges a reading taken at monotonic instant `at`.
    pub fn offer(&mut self, reading: Soc, at: Duration) -> Verdict {
        let Some((last, last_at)) = self.last else {
            return self.accept(reading, at);
        };
        if self.within(last, last_at, reading, at) {
            let far = last.get().abs_diff(reading.get()) > self.rule.max_step;
            let v = self.accept(reading, at);
            self.jumped_from = far.then_some((last, at));
            return v;
        }
        if let Some((held, held_at)) = self.held
            && self.within(held, held_at, reading, at)
        {
            return self.accept(reading, at);
        }
        if let Some((before, jump_at)) = self.jumped_from
            && self.within(before, jump_at, reading, at)
        {
            return self.accept(reading, at);
        }
        self.held = Some((reading, at));
        Verdict::Hold { reading, last }
    }

    fn within(&self, from: Soc, from_at: Duration, to: Soc, at: Duration) -> bool {
        let hours = at.saturating_sub(from_at).as_secs_f64() / 3600.0;
        let allowed = f64::from(self.rule.max_step) + self.rule.max_rate_per_hour * hours;
        f64::from(from.get().abs_diff(to.get())) <= allowed
    }

    /// Whether the last accepted reading is a far jump no reading has confirmed yet.
    pub fn unconfirmed(&self) -> bool {
        self.jumped_from.is_some()
    }

    fn accept(&mut self, reading: Soc, at: Duration) -> Verdict {
        self.last = Some((reading, at));
        self.held = None;
        self.jumped_from = None;
        Verdict::Accept(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soc(p: u8) -> Soc {
        Soc::new(p).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn filter() -> SocFilter {
        SocFilter::new(SocRule::default())
    }

    #[test]
    fn the_first_reading_and_ordinary_steps_are_accepted_at_once() {
        let mut f = filter();
        assert_eq!(f.offer(soc(30), secs(0)), Verdict::Accept(soc(30)));
        for (i, p) in (31..=80).enumerate() {
            let at = secs(5 * (i as u64 + 1));
            assert_eq!(f.offer(soc(p), at), Verdict::Accept(soc(p)));
        }
    }

    #[test]
    fn a_single_spike_is_held_and_dropped_when_the_next_reading_agrees_with_the_old_value() {
        let mut f = filter();
        f.offer(soc(30), secs(0));
        assert_eq!(
            f.offer(soc(100), secs(5)),
            Verdict::Hold {
                reading: soc(100),
                last: soc(30)
            }
        );
        assert_eq!(f.offer(soc(30), secs(10)), Verdict::Accept(soc(30)));
        // The spike is forgotten: another lone one is held again.
        assert!(matches!(f.offer(soc(100), secs(15)), Verdict::Hold { .. }));
    }

    #[test]
    fn two_consistent_readings_confirm_a_jump() {
        let mut f = filter();
        f.offer(soc(30), secs(0));
        assert!(matches!(f.offer(soc(90), secs(5)), Verdict::Hold { .. }));
        assert_eq!(f.offer(soc(91), secs(10)), Verdict::Accept(soc(91)));
        assert_eq!(f.offer(soc(92), secs(15)), Verdict::Accept(soc(92)));
    }

    #[test]
    fn drops_are_judged_like_rises() {
        let mut f = filter();
        f.offer(soc(60), secs(0));
        assert!(matches!(f.offer(soc(0), secs(5)), Verdict::Hold { .. }));
        assert_eq!(f.offer(soc(60), secs(10)), Verdict::Accept(soc(60)));
    }

    #[test]
    fn the_allowed_move_grows_with_the_time_since_the_last_reading() {
        let mut f = filter();
        f.offer(soc(30), secs(0));
        // 30 minutes at 120 %/h: 60 points plus the step of 5.
        assert_eq!(f.offer(soc(95), secs(1800)), Verdict::Accept(soc(95)));
        let mut f = filter();
        f.offer(soc(30), secs(0));
        assert!(matches!(f.offer(soc(96), secs(1800)), Verdict::Hold { .. }));
    }

    #[test]
    fn an_outlier_after_a_quiet_spell_gives_way_to_the_next_reading_that_agrees_with_the_old_value()
    {
        let mut f = filter();
        f.offer(soc(56), secs(0));
        // Eleven quiet hours: the allowance lets the outlier through, unconfirmed.
        assert_eq!(f.offer(soc(4), secs(39_600)), Verdict::Accept(soc(4)));
        assert!(f.unconfirmed());
        // The next reading agrees with the value before it: the jump was the outlier.
        assert_eq!(f.offer(soc(56), secs(39_690)), Verdict::Accept(soc(56)));
        assert!(!f.unconfirmed());
        assert_eq!(f.offer(soc(57), secs(39_780)), Verdict::Accept(soc(57)));
    }

    #[test]
    fn a_real_jump_after_a_quiet_spell_is_confirmed_by_the_next_reading() {
        let mut f = filter();
        f.offer(soc(56), secs(0));
        assert_eq!(f.offer(soc(20), secs(39_600)), Verdict::Accept(soc(20)));
        assert_eq!(f.offer(soc(20), secs(39_690)), Verdict::Accept(soc(20)));
        assert!(!f.unconfirmed());
        // Confirmed: the old value is no longer a way back.
        assert!(matches!(
            f.offer(soc(56), secs(39_700)),
            Verdict::Hold { .. }
        ));
    }

    #[test]
    fn a_stricter_rule_holds_smaller_jumps() {
        let mut f = SocFilter::new(SocRule {
            max_step: 1,
            max_rate_per_hour: 0.0,
        });
        f.offer(soc(50), secs(0));
        assert_eq!(f.offer(soc(51), secs(60)), Verdict::Accept(soc(51)));
        assert!(matches!(f.offer(soc(53), secs(120)), Verdict::Hold { .. }));
    }
}
