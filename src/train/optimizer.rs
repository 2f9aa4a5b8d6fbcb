//! Stochastic gradient descent with momentum (PyTorch's formulation).
//!
//! For every parameter w with gradient g, learning rate η, momentum μ and
//! weight decay λ (applied only where `Parameter::decay` is true: weights of
//! convolutions and linear layers, not batch-norm scales/shifts nor biases):
//!
//!   g ← g + λ·w
//!   v ← μ·v + g                      (v starts at 0, so the first v is g)
//!   w ← w − η·v                      (classical momentum)
//!   w ← w − η·(g + μ·v)              (Nesterov momentum)

use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Values per parallel task of the update.
const CHUNK: usize = 1 << 14;

/// Hyper-parameters of [`Sgd`] (the learning rate comes from the schedule, step by step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

/// SGD with momentum; one velocity buffer per parameter.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub config: SgdConfig,
    /// v, one per parameter, same shapes as the parameters.
    pub velocity: Vec<Tensor>,
}

impl Sgd {
    /// Zero velocities for every parameter of `store`.
    pub fn new(config: SgdConfig, store: &ParamStore) -> Sgd {
        Sgd {
            config,
            velocity: store.zeros_like_params(),
        }
    }

    /// One update of every parameter of `store` from its accumulated gradient.
    pub fn step(&mut self, store: &mut ParamStore, learning_rate: f32) {
        let SgdConfig {
            momentum,
            nesterov,
            weight_decay,
        } = self.config;
        assert_eq!(
            self.velocity.len(),
            store.params.len(),
            "Sgd::step: optimiser built for another model"
        );
        for (param, velocity) in store.params.iter_mut().zip(&mut self.velocity) {
            if !param.trainable {
                continue;
            }
            // A parameter's own rate; its decay divided by the same factor (decay per step = lr·λ).
            let (learning_rate, scale) = (learning_rate * param.lr_scale, param.lr_scale);
            let decay = if param.decay { weight_decay / scale } else { 0.0 };
            // Chunks of the parameter in parallel; the same arithmetic for every element.
            param
                .value
                .data
                .par_chunks_mut(CHUNK)
                .zip(param.grad.data.par_chunks(CHUNK))
                .zip(velocity.data.par_chunks_mut(CHUNK))
                .for_each(|((weights, grads), velocities)| {
                    for ((w, &g), v) in weights.iter_mut().zip(grads).zip(velocities) {
                        let g = g + decay * *w;
                        *v = momentum * *v + g;
                        let update = if nesterov { g + momentum * *v } else { *v };
                        *w -= learning_rate * update;
                    }
                });
        }
    }

    /// The velocities as named tensors (`momentum.<parameter name>`) for a checkpoint.
    pub fn export(&self, store: &ParamStore) -> Vec<(String, Tensor)> {
        store
            .params
            .iter()
            .zip(&self.velocity)
            .map(|(p, v)| (format!("momentum.{}", p.name), v.clone()))
            .collect()
    }

    /// Restores velocities written by [`Sgd::export`]; `find` looks a tensor up
    /// by name. Errors name the missing or mis-shaped tensor.
    pub fn import<'a>(
        &mut self,
        store: &ParamStore,
        find: impl Fn(&str) -> Option<&'a Tensor>,
    ) -> Result<()> {
        for (p, v) in store.params.iter().zip(&mut self.velocity) {
            let name = format!("momentum.{}", p.name);
            let saved = find(&name).ok_or_else(|| Error::msg(format!("checkpoint lacks {name}")))?;
            if saved.shape != v.shape {
                return Err(Error::msg(format!(
                    "checkpoint's {name} has shape {:?}, the model needs {:?}",
                    saved.shape, v.shape
                )));
            }
            v.data.copy_from_slice(&saved.data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_param_store(decay: bool) -> ParamStore {
        let mut store = ParamStore::default();
        let id = store.add("w", Tensor::from_vec(&[2], vec![1.0, -2.0]), decay);
        store.params[id.0].grad = Tensor::from_vec(&[2], vec![0.5, 0.25]);
        store
    }

    /// Two Nesterov steps worked out by hand: η = 0.1, μ = 0.9, λ = 0.01, fixed g.
    #[test]
    fn nesterov_with_weight_decay_matches_hand_computation() {
        let mut store = one_param_store(true);
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
        };
        let mut sgd = Sgd::new(config, &store);
        sgd.step(&mut store, 0.1);
        // w=1: g = 0.5 + 0.01 = 0.51, v = 0.51, w = 1 − 0.1·(0.51 + 0.459) = 0.9031
        let w0 = 1.0 - 0.1 * (0.51 + 0.9 * 0.51);
        assert!((store.params[0].value.data[0] - w0).abs() < 1e-6);
        sgd.step(&mut store, 0.1);
        // g = 0.5 + 0.01·w0, v = 0.9·0.51 + g, w = w0 − 0.1·(g + 0.9·v)
        let g = 0.5 + 0.01 * w0;
        let v = 0.9 * 0.51 + g;
        let w1 = w0 - 0.1 * (g + 0.9 * v);
        assert!((store.params[0].value.data[0] - w1).abs() < 1e-6);
        assert!((sgd.velocity[0].data[0] - v).abs() < 1e-6);
    }

    #[test]
    fn classical_momentum_without_decay_on_non_decayed_params() {
        let mut store = one_param_store(false);
        let config = SgdConfig {
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.1, // ignored: decay is false
        };
        let mut sgd = Sgd::new(config, &store);
        sgd.step(&mut store, 1.0);
        sgd.step(&mut store, 1.0);
        // v1 = g, v2 = 1.5·g; w = w0 − 2.5·g
        assert_eq!(
            store.params[0].value.data,
            vec![1.0 - 2.5 * 0.5, -2.0 - 2.5 * 0.25]
        );
    }

    #[test]
    fn a_scaled_learning_rate_keeps_the_decay_per_step() {
        let mut store = one_param_store(true);
        store.params[0].lr_scale = 4.0;
        let config = SgdConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        };
        let mut sgd = Sgd::new(config, &store);
        sgd.step(&mut store, 0.5);
        // w − (4·0.5)·(g + (0.1/4)·w): the gradient at 4× the rate, the decay per step 0.5·0.1·w.
        let want: Vec<f32> = [(1.0f32, 0.5f32), (-2.0, 0.25)]
            .iter()
            .map(|&(w, g)| w - 2.0 * g - 0.5 * 0.1 * w)
            .collect();
        let got = &store.params[0].value.data;
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?} vs {want:?}"
        );
    }

    #[test]
    fn a_frozen_parameter_stays_as_it_is() {
        let mut store = one_param_store(true);
        let frozen = store.add_frozen("scale", Tensor::from_vec(&[2], vec![1.0, 1.0]));
        store.params[frozen.0].grad = Tensor::from_vec(&[2], vec![3.0, -3.0]);
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
        };
        let mut sgd = Sgd::new(config, &store);
        sgd.step(&mut store, 1.0);
        assert_eq!(store.value(frozen).data, vec![1.0, 1.0]);
        assert_ne!(
            store.params[0].value.data,
            vec![1.0, -2.0],
            "the trainable one moved"
        );
    }

    #[test]
    fn export_import_round_trip_and_errors() {
        let mut store = one_param_store(true);
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let mut sgd = Sgd::new(config, &store);
        sgd.step(&mut store, 0.1);
        let saved = sgd.export(&store);
        assert_eq!(saved[0].0, "momentum.w");
        let mut restored = Sgd::new(config, &store);
        restored
            .import(&store, |n| saved.iter().find(|(k, _)| k == n).map(|(_, t)| t))
            .unwrap();
        assert_eq!(restored.velocity, sgd.velocity);
        let err = restored.import(&store, |_| None).unwrap_err().to_string();
        assert!(err.contains("lacks momentum.w"), "{err}");
    }
}
