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

use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Step,
    OneCycle,
}

impl ScheduleKind {
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Step => "step",
            ScheduleKind::OneCycle => "onecycle",
        }
    }

    pub fn parse(text: &str) -> Option<ScheduleKind> {
        match text {
            "cosine" => Some(ScheduleKind::Cosine),
            "linear" => Some(ScheduleKind::Linear),
            "step" => Some(ScheduleKind::Step),
            "onecycle" => Some(ScheduleKind::OneCycle),
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
}

impl Schedule {
    /// The learning rate of iteration `step` (0-based).
    pub fn learning_rate(&self, step: usize) -> f32 {
        let (base, s, total) = (self.base as f64, step as f64, self.total_steps.max(1) as f64);
        let cosine_from = |start: f64| {
            let progress = ((s - start) / (total - start).max(1.0)).clamp(0.0, 1.0);
            0.5 * (1.0 + (PI * progress).cos())
        };
        let rate = match self.kind {
            ScheduleKind::OneCycle => {
                let rise = (0.3 * total).max(1.0);
                if s < rise {
                    base / 25.0 + (base - base / 25.0) * s / rise
                } else {
                    base * cosine_from(rise)
                }
            }
            _ if step < self.warmup_steps => base * (s + 1.0) / self.warmup_steps as f64,
            ScheduleKind::Cosine => base * cosine_from(self.warmup_steps as f64),
            ScheduleKind::Linear => {
                let after = (total - self.warmup_steps as f64).max(1.0);
                base * ((total - s) / after).clamp(0.0, 1.0)
            }
            ScheduleKind::Step => {
                let after = (total - self.warmup_steps as f64).max(1.0);
                let progress = (s - self.warmup_steps as f64) / after;
                let passed = [0.5, 0.75].iter().filter(|&&m| progress >= m).count();
                base * 0.1f64.powi(passed as i32)
            }
        };
        rate as f32
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
        ] {
            assert_eq!(ScheduleKind::parse(k.name()), Some(k));
        }
        assert_eq!(ScheduleKind::parse("exponential"), None);
    }
}
