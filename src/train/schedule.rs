//! Learning-rate schedules, evaluated per iteration.
//!
//! With base rate η, W warm-up iterations and T iterations in all (step s = 0..T):
//!
//!   warm-up (s < W):  η(s) = η·(s + 1)/W                       (linear, reaches η at s = W − 1)
//!   cosine:           η(s) = η·½·(1 + cos(π·(s − W)/(T − W)))   (η at s = W, 0 at s = T)
//!   linear:           η(s) = η·(T − s)/(T − W)                 (straight to 0: the budget-aware
//!                     schedule of Li, Yumer & Ramanan 2020, made for runs shortened to a time budget)
//!   step:             η(s) = η·0.1^k, k = milestones passed (at 50 % and 75 % of T − W after warm-up)
//!   one-cycle:        rises linearly from η/25 to η over the first 30 % of T (this replaces the
//!                     warm-up), then falls as a cosine to 0 at s = T (Smith & Topin 2019)
//!   airbench:         rises linearly from 0.2·η to η over the first ⌊0.23·T⌋ steps (this replaces
//!                     the warm-up), then falls linearly to 0.07·η at s = T (airbench94's)
//!
//! Re-planned length (a time budget): after warm-up each schedule is a function of its progress p
//! from 0 to 1 (p = (s − W)/(T − W) above). When the run's length changes from T to T′ at step s₀,
//! where the progress was p₀, the schedule keeps its value at s₀ and runs the rest of its curve over
//! the steps left: p(s) = p₀ + (1 − p₀)·(s − s₀)/(T′ − s₀) for s ≥ s₀ (the [`Anchor`]). Rebuilding it
//! for T′ instead would make the rate jump, upward too when the run grows.

use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Step,
    OneCycle,
    Airbench,
}

impl ScheduleKind {
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Step => "step",
            ScheduleKind::OneCycle => "onecycle",
            ScheduleKind::Airbench => "airbench",
        }
    }

    pub fn parse(text: &str) -> Option<ScheduleKind> {
        match text {
            "cosine" => Some(ScheduleKind::Cosine),
            "linear" => Some(ScheduleKind::Linear),
            "step" => Some(ScheduleKind::Step),
            "onecycle" => Some(ScheduleKind::OneCycle),
            "airbench" => Some(ScheduleKind::Airbench),
            _ => None,
        }
    }
}

/// The learning rate at every iteration of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// η: the peak learning rate.
    pub base: f32,
    /// W: warm-up iterations (ignored by one-cycle).
    pub warmup_steps: usize,
    /// T: iterations of the whole run.
    pub total_steps: usize,
    /// Where the run's length was last re-planned; None: never.
    pub anchor: Option<Anchor>,
}

/// A step s₀ and the progress p₀ the schedule had reached there, from which the rest of the curve
/// is spread over the steps left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anchor {
    pub step: usize,
    pub progress: f64,
}

impl Schedule {
    /// The learning rate of iteration `step` (0-based).
    pub fn learning_rate(&self, step: usize) -> f32 {
        let (base, s, total) = (self.base as f64, step as f64, self.total_steps.max(1) as f64);
        let anchored = self.anchored_progress(step);
        let progress_from =
            |start: f64| anchored.unwrap_or(((s - start) / (total - start).max(1.0)).clamp(0.0, 1.0));
        let cosine = |progress: f64| 0.5 * (1.0 + (PI * progress).cos());
        let rate = match self.kind {
            ScheduleKind::OneCycle => {
                let rise = (0.3 * total).max(1.0);
                if s < rise && anchored.is_none() {
                    base / 25.0 + (base - base / 25.0) * s / rise
                } else {
                    base * cosine(progress_from(rise))
                }
            }
            ScheduleKind::Airbench => {
                let rise = self.rise_steps() as f64;
                if s < rise && anchored.is_none() {
                    base * (0.2 + 0.8 * s / rise)
                } else {
                    base * (1.0 - 0.93 * progress_from(rise))
                }
            }
            _ if step < self.warmup_steps && anchored.is_none() => {
                base * (s + 1.0) / self.warmup_steps as f64
            }
            ScheduleKind::Cosine => base * cosine(progress_from(self.warmup_steps as f64)),
            ScheduleKind::Linear => match anchored {
                Some(progress) => base * (1.0 - progress),
                None => {
                    let after = (total - self.warmup_steps as f64).max(1.0);
                    base * ((total - s) / after).clamp(0.0, 1.0)
                }
            },
            ScheduleKind::Step => {
                let progress = progress_from(self.warmup_steps as f64);
                let passed = [0.5, 0.75].iter().filter(|&&m| progress >= m).count();
                base * 0.1f64.powi(passed as i32)
            }
        };
        rate as f32
    }

    /// The progress of `step` along the schedule's curve after warm-up (or the one-cycle rise), in
    /// [0, 1]; None during warm-up.
    pub fn progress(&self, step: usize) -> Option<f64> {
        if let Some(progress) = self.anchored_progress(step) {
            return Some(progress);
        }
        let (s, total) = (step as f64, self.total_steps.max(1) as f64);
        let start = match self.kind {
            ScheduleKind::OneCycle => (0.3 * total).max(1.0),
            ScheduleKind::Airbench => self.rise_steps() as f64,
            _ => self.warmup_steps as f64,
        };
        (s >= start).then(|| ((s - start) / (total - start).max(1.0)).clamp(0.0, 1.0))
    }

    /// The airbench schedule's rise: ⌊0.23·T⌋ steps, at least 1.
    fn rise_steps(&self) -> usize {
        ((0.23 * self.total_steps as f64) as usize).max(1)
    }

    /// This schedule for a run of `total_steps` instead, re-planned at `step`: it keeps the rate
    /// of `step` and runs the rest of its curve over the steps left (see the module docs).
    pub fn replanned(&self, step: usize, total_steps: usize) -> Schedule {
        Schedule {
            total_steps,
            anchor: self.progress(step).map(|progress| Anchor { step, progress }),
            ..*self
        }
    }

    fn anchored_progress(&self, step: usize) -> Option<f64> {
        let anchor = self.anchor.filter(|a| step >= a.step)?;
        let left = (self.total_steps as f64 - anchor.step as f64).max(1.0);
        Some((anchor.progress + (1.0 - anchor.progress) * (step - anchor.step) as f64 / left).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            base: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            anchor: None,
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-7
    }

    #[test]
    fn warmup_rises_linearly_to_the_base_rate() {
        let s = schedule(ScheduleKind::Cosine);
        assert!(close(s.learning_rate(0), 0.01));
        assert!(close(s.learning_rate(4), 0.05));
        assert!(close(s.learning_rate(9), 0.1)); // last warm-up step
        assert!(close(s.learning_rate(10), 0.1)); // cosine starts at the base
    }

    #[test]
    fn cosine_halves_midway_and_ends_at_zero() {
        let s = schedule(ScheduleKind::Cosine);
        assert!(close(s.learning_rate(60), 0.05));
        assert_eq!(s.learning_rate(110), 0.0);
        assert!(s.learning_rate(109) > 0.0 && s.learning_rate(109) < 1e-4);
        let rates: Vec<f32> = (10..=110).map(|i| s.learning_rate(i)).collect();
        assert!(
            rates.windows(2).all(|w| w[1] <= w[0]),
            "cosine must not rise after warm-up"
        );
    }

    #[test]
    fn linear_falls_in_a_straight_line_to_zero() {
        let s = schedule(ScheduleKind::Linear);
        assert!(close(s.learning_rate(9), 0.1)); // the same warm-up as cosine
        assert!(close(s.learning_rate(10), 0.1));
        assert!(close(s.learning_rate(60), 0.05));
        assert!(close(s.learning_rate(85), 0.025));
        assert_eq!(s.learning_rate(110), 0.0);
    }

    #[test]
    fn step_drops_tenfold_at_half_and_three_quarters() {
        let s = schedule(ScheduleKind::Step);
        assert!(close(s.learning_rate(59), 0.1));
        assert!(close(s.learning_rate(60), 0.01));
        assert!(close(s.learning_rate(84), 0.01));
        assert!(close(s.learning_rate(85), 0.001));
    }

    #[test]
    fn one_cycle_rises_then_anneals_to_zero() {
        let s = schedule(ScheduleKind::OneCycle);
        assert!(close(s.learning_rate(0), 0.004));
        assert!(close(s.learning_rate(33), 0.1)); // 30 % of 110
        assert!(s.learning_rate(20) > s.learning_rate(10));
        assert_eq!(s.learning_rate(110), 0.0);
    }

    #[test]
    fn names_round_trip() {
        for k in [
            ScheduleKind::Cosine,
            ScheduleKind::Linear,
            ScheduleKind::Step,
            ScheduleKind::OneCycle,
            ScheduleKind::Airbench,
        ] {
            assert_eq!(ScheduleKind::parse(k.name()), Some(k));
        }
        assert_eq!(ScheduleKind::parse("exponential"), None);
    }

    #[test]
    fn a_replanned_schedule_keeps_its_rate_and_anneals_over_the_steps_left() {
        for kind in [ScheduleKind::Cosine, ScheduleKind::Linear, ScheduleKind::OneCycle] {
            let planned = schedule(kind);
            // Shorter and longer plans, made at step 50, then shortened again at step 70.
            for total in [80, 200] {
                let replanned = planned.replanned(50, total);
                assert!(
                    close(replanned.learning_rate(50), planned.learning_rate(50)),
                    "{kind:?} {total}"
                );
                assert_eq!(replanned.learning_rate(total), 0.0);
                let rates: Vec<f32> = (50..=total).map(|i| replanned.learning_rate(i)).collect();
                assert!(
                    rates.windows(2).all(|w| w[1] <= w[0]),
                    "{kind:?} {total}: the rate rose"
                );
                let again = replanned.replanned(70, 75);
                assert!(close(again.learning_rate(70), replanned.learning_rate(70)));
                assert_eq!(again.learning_rate(75), 0.0);
            }
            // During warm-up there is nothing to keep: the warm-up does not depend on the length.
            assert_eq!(planned.replanned(5, 80).anchor, None);
        }
        // Rebuilding instead jumps: the cosine at step 50 of 110 against step 50 of 80.
        let rebuilt = Schedule {
            total_steps: 80,
            ..schedule(ScheduleKind::Cosine)
        };
        assert!(rebuilt.learning_rate(50) < 0.9 * schedule(ScheduleKind::Cosine).learning_rate(50));
    }

    #[test]
    fn airbench_rises_from_a_fifth_and_ends_at_seven_hundredths() {
        let s = Schedule {
            kind: ScheduleKind::Airbench,
            base: 2.0,
            warmup_steps: 0,
            total_steps: 100,
            anchor: None,
        };
        // ⌊0.23·100⌋ = 23 rising steps, as the reference's int(total·0.23).
        assert!((s.learning_rate(0) - 0.4).abs() < 1e-6);
        assert!((s.learning_rate(23) - 2.0).abs() < 1e-6);
        assert!((s.learning_rate(100) - 0.14).abs() < 1e-6);
        let rates: Vec<f32> = (0..=100).map(|i| s.learning_rate(i)).collect();
        assert!(rates[..24].windows(2).all(|w| w[0] < w[1]) && rates[23..].windows(2).all(|w| w[0] > w[1]));
        assert_eq!(ScheduleKind::parse("airbench"), Some(ScheduleKind::Airbench));
    }
}
