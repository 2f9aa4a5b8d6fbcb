//! An exponential moving average of the weights (`sbfnet train --ema DECAY`).
//!
//! SGD's last iterate jitters around the minimum it is heading for; an average of the
//! recent iterates sits nearer its centre. After every optimisation step t (1, 2, …):
//!
//! ```text
//!   d_t        = min(decay, (1 + t) / (10 + t))          (short memory while the run is young)
//!   average[i] = d_t · average[i] + (1 − d_t) · live[i]   for every parameter and buffer
//! ```
//!
//! The batch-norm running statistics are averaged the same way, so the averaged model's
//! statistics describe the average of about 1 / (1 − decay) batches instead of the last
//! ~10 that a BN momentum of 0.1 keeps. Evaluation and checkpoints use the averaged model;
//! training goes on with the live one (Polyak & Juditsky 1992; the EMA of TensorFlow's
//! `ExponentialMovingAverage` and timm's `ModelEma`, whose warm-up `d_t` this is).

use crate::autograd::ParamStore;

/// The averaged copy of a model's parameters and buffers.
#[derive(Clone, Debug)]
pub struct WeightAverage {
    /// Largest decay per step, in (0, 1): the average remembers about 1 / (1 − decay) steps.
    pub decay: f32,
    /// Steps averaged so far.
    pub updates: usize,
    /// The averaged parameters and buffers (same names and shapes as the live store).
    pub store: ParamStore,
}

impl WeightAverage {
    /// Starts the average at the live weights.
    pub fn new(decay: f32, live: &ParamStore) -> WeightAverage {
        WeightAverage {
            decay,
            updates: 0,
            store: live.clone(),
        }
    }

    /// The decay of update `t` (1-based): `min(decay, (1 + t) / (10 + t))`.
    pub fn decay_at(&self, t: usize) -> f32 {
        self.decay.min((1.0 + t as f32) / (10.0 + t as f32))
    }

    /// Folds the live weights in after an optimisation step.
    pub fn update(&mut self, live: &ParamStore) {
        self.updates += 1;
        let d = self.decay_at(self.updates);
        let averaged = self.store.params.iter_mut().map(|p| &mut p.value.data);
        let averaged = averaged.chain(self.store.buffers.iter_mut().map(|b| &mut b.value.data));
        let current = live.params.iter().map(|p| &p.value.data);
        let current = current.chain(live.buffers.iter().map(|b| &b.value.data));
        for (average, value) in averaged.zip(current) {
            for (a, &v) in average.iter_mut().zip(value) {
                *a = d * *a + (1.0 - d) * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn store(weight: f32, running_mean: f32) -> ParamStore {
        let mut store = ParamStore::default();
        store.add("w", Tensor::full(&[2], weight), true);
        store.add_buffer("bn.running_mean", Tensor::full(&[1], running_mean));
        store
    }

    #[test]
    fn the_average_follows_the_recurrence_for_parameters_and_buffers() {
        let mut average = WeightAverage::new(0.5, &store(1.0, 10.0));
        // t = 1: d = min(0.5, 2/11) = 2/11.
        assert_eq!(average.decay_at(1), 2.0 / 11.0);
        average.update(&store(3.0, 20.0));
        let d = 2.0f32 / 11.0;
        assert_eq!(average.store.params[0].value.data, vec![d + (1.0 - d) * 3.0; 2]);
        assert_eq!(
            average.store.buffers[0].value.data,
            vec![d * 10.0 + (1.0 - d) * 20.0]
        );
        // Once (1 + t)/(10 + t) passes 0.5 (t ≥ 9) the decay is the one asked for.
        assert_eq!(average.decay_at(9), 0.5);
        assert_eq!(average.decay_at(1000), 0.5);
    }

    #[test]
    fn a_constant_model_averages_to_itself_and_a_long_run_forgets_its_start() {
        let mut average = WeightAverage::new(0.9, &store(0.0, 0.0));
        let live = store(2.0, -1.0);
        for _ in 0..400 {
            average.update(&live);
        }
        assert_eq!(average.updates, 400);
        // 0.9^~390 of the start remains: nothing at f32 precision.
        assert!((average.store.params[0].value.data[0] - 2.0).abs() < 1e-5);
        assert!((average.store.buffers[0].value.data[0] + 1.0).abs() < 1e-5);
    }
}
