//! Lookahead with airbench94's schedule (`sbfnet train --lookahead`; Zhang et al. 2019, as Jordan
//! 2024 uses it): a slow copy of the weights and batch-norm statistics that the live ones are
//! pulled back to every 5 steps.
//!
//! ```text
//!   after optimisation step t of T (1-based), when t is a multiple of 5:
//!     α_t  = 0.95⁵ · (t/T)³                       (0 early: the slow copy just follows)
//!     slow = α_t · slow + (1 − α_t) · live,   live = slow
//!   after step T:  live = slow                    (the reference's last lerp has weight 0)
//! ```

use crate::autograd::ParamStore;

/// Steps between two pulls.
pub const PERIOD: usize = 5;

/// Prefix of the slow weights' tensors in a checkpoint (`lookahead.param.<name>`, …).
pub const PREFIX: &str = "lookahead.";

/// The slow weights.
#[derive(Clone, Debug)]
pub struct Lookahead {
    pub slow: ParamStore,
}

impl Lookahead {
    /// Starts the slow weights at the live ones.
    pub fn new(live: &ParamStore) -> Lookahead {
        Lookahead { slow: live.clone() }
    }

    /// α_t = 0.95⁵ · (t/T)³.
    pub fn alpha(step: usize, total: usize) -> f32 {
        0.95f32.powi(5) * (step as f32 / total.max(1) as f32).powi(3)
    }

    /// After optimisation step `step` (1-based) of `total`.
    pub fn after_step(&mut self, step: usize, total: usize, live: &mut ParamStore) {
        let pull = step.is_multiple_of(PERIOD);
        if !pull && step < total {
            return;
        }
        let alpha = if pull { Self::alpha(step, total) } else { 1.0 };
        let slow = self.slow.params.iter_mut().map(|p| &mut p.value.data);
        let slow = slow.chain(self.slow.buffers.iter_mut().map(|b| &mut b.value.data));
        let current = live.params.iter_mut().map(|p| &mut p.value.data);
        let current = current.chain(live.buffers.iter_mut().map(|b| &mut b.value.data));
        for (slow, current) in slow.zip(current) {
            for (s, c) in slow.iter_mut().zip(current.iter_mut()) {
                *s = alpha * *s + (1.0 - alpha) * *c;
                *c = *s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn every_fifth_step_pulls_the_live_weights_to_the_slow_ones_and_the_last_step_takes_them() {
        let mut live = ParamStore::default();
        let w = live.add("w", Tensor::full(&[1], 0.0), true);
        let m = live.add_buffer("bn.running_mean", Tensor::full(&[1], 0.0));
        let mut lookahead = Lookahead::new(&live);
        let total = 12;
        for step in 1..=total {
            // The "optimiser" moves the live weight by 1 each step.
            live.value_mut(w).data[0] += 1.0;
            live.buffer_mut(m).data[0] += 1.0;
            let before = live.value(w).data[0];
            let slow_before = lookahead.slow.params[0].value.data[0];
            lookahead.after_step(step, total, &mut live);
            let after = live.value(w).data[0];
            if step % 5 == 0 {
                let alpha = Lookahead::alpha(step, total);
                let want = alpha * slow_before + (1.0 - alpha) * before;
                assert!(
                    (after - want).abs() < 1e-6 && live.buffer(m).data[0] == after,
                    "step {step}"
                );
            } else if step == total {
                assert_eq!(after, slow_before, "the last step takes the slow weights");
            } else {
                assert_eq!(after, before, "step {step} leaves the live weights alone");
            }
        }
        assert!((Lookahead::alpha(10, 10) - 0.95f32.powi(5)).abs() < 1e-7);
    }
}
