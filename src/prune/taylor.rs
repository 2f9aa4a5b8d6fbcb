//! First-order Taylor saliency (Molchanov et al., CVPR'19; SBF-NOTES §6.1, the paper's option).
//!
//! Removing template m changes the loss by about −Σ_{i,k} `B[m,i,k]·∂L/∂B[m,i,k]` (first order), so
//! its importance over an epoch is the sum over the steps of the square of that product:
//!
//! ```text
//!   score[m] = Σ_steps ( Σ_{i,kh,kw} B[m,i,kh,kw] · ∂L/∂B[m,i,kh,kw] )²
//! ```
//!
//! ∂L/∂B of a template already collects the gradients of all its transformed copies, so a
//! template that many copies lean on scores high. The trainer accumulates after every step of the
//! ramp and the next pruning step reads (then clears) the sums; they are saved in checkpoints so a
//! resumed run prunes exactly as an uninterrupted one. Before the first step (epoch 0 of a run
//! from random initialisation) there is no evidence and the ranking falls back to `l1-relative`.

use crate::autograd::ParamStore;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;
use std::path::Path;

/// The running sums, per SBF layer (forward order), per template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaylorScores {
    /// [layers][M of that layer] (f32, so a checkpoint holds them exactly)
    pub layers: Vec<Vec<f32>>,
    /// Steps accumulated since the last pruning step.
    pub steps: usize,
}

/// Checkpoint tensor name of layer `l`'s sums.
fn tensor_name(l: usize) -> String {
    format!("saliency.taylor.{l}")
}

impl TaylorScores {
    /// Adds one step: the gradients in `store` are those of the step's mean loss.
    pub fn accumulate(&mut self, model: &Model, store: &ParamStore) {
        let templates: Vec<_> = model
            .conv_layers()
            .into_iter()
            .filter_map(|(_, layer)| layer.as_sbf().map(|s| s.templates))
            .collect();
        if self.steps == 0 {
            self.layers = templates
                .iter()
                .map(|&id| vec![0.0; store.value(id).dim(0)])
                .collect();
        }
        for (sums, &id) in self.layers.iter_mut().zip(&templates) {
            let (value, grad) = (store.value(id), store.grad(id));
            let filter = value.len() / sums.len().max(1);
            for (m, sum) in sums.iter_mut().enumerate() {
                let range = m * filter..(m + 1) * filter;
                let product: f64 = value.data[range.clone()]
                    .iter()
                    .zip(&grad.data[range])
                    .map(|(w, g)| *w as f64 * *g as f64)
                    .sum();
                *sum += (product * product) as f32;
            }
        }
        self.steps += 1;
    }

    /// Forgets the sums (after a pruning step, whose reassignment renumbers the templates).
    pub fn clear(&mut self) {
        *self = TaylorScores::default();
    }

    /// The sums as checkpoint tensors (none when empty).
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        if self.steps == 0 {
            return Vec::new();
        }
        let mut tensors = vec![(
            "saliency.taylor.steps".to_string(),
            Tensor::from_vec(&[1], vec![self.steps as f32]),
        )];
        for (l, sums) in self.layers.iter().enumerate() {
            tensors.push((tensor_name(l), Tensor::from_vec(&[sums.len()], sums.clone())));
        }
        tensors
    }

    /// The sums saved by [`TaylorScores::to_tensors`] for a model with `layers` SBF layers.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path, layers: usize) -> Result<TaylorScores> {
        let Some(steps) = checkpoint.tensor("saliency.taylor.steps") else {
            return Ok(TaylorScores::default());
        };
        let sums = (0..layers)
            .map(|l| {
                checkpoint
                    .tensor(&tensor_name(l))
                    .map(|t| t.data.clone())
                    .ok_or_else(|| {
                        Error::file(path, format!("checkpoint lacks the tensor {}", tensor_name(l)))
                    })
            })
            .collect::<Result<Vec<Vec<f32>>>>()?;
        Ok(TaylorScores {
            layers: sums,
            steps: steps.data.first().map_or(0, |&v| v as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn scores_are_sums_of_squared_weight_gradient_products() {
        let mut store = ParamStore::default();
        let spec = ModelSpec::parse_description("resnet8-w4 sbf:rate=0,groups=2").unwrap();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(1));
        let first = model
            .conv_layers()
            .iter()
            .find_map(|(_, l)| l.as_sbf().map(|s| s.templates))
            .unwrap();
        // Layer 0's template 1: weights w, gradient 2·w → product 2·Σw²; other gradients 0.
        let value = store.value(first).clone();
        let filter = value.len() / value.dim(0);
        let w = &value.data[filter..2 * filter];
        let grad = &mut store.params[first.0].grad;
        grad.data.fill(0.0);
        for (g, v) in grad.data[filter..2 * filter].iter_mut().zip(w) {
            *g = 2.0 * v;
        }
        let product: f64 = w.iter().map(|v| 2.0 * (*v as f64) * (*v as f64)).sum();
        let mut scores = TaylorScores::default();
        scores.accumulate(&model, &store);
        scores.accumulate(&model, &store);
        assert_eq!(scores.steps, 2);
        let expected = 2.0 * product * product;
        assert!((scores.layers[0][1] as f64 - expected).abs() < 1e-5 * expected);
        assert_eq!(scores.layers[0][0], 0.0);
        assert_eq!(scores.layers[0].len(), value.dim(0));
    }
}
