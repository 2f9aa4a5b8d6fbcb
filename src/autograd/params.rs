//! Parameters and buffers that outlive a step.
//!
//! A [`ParamStore`] owns every learned tensor of a model (with its gradient
//! accumulator) and every non-learned buffer (batch-norm running statistics).
//! Layers keep only ids into it, so a model can be copied to worker threads as
//! a plain `&ParamStore` and the trainer can sum gradients from many tapes.

use crate::tensor::Tensor;

/// Index of a learned parameter in a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// Index of a non-learned buffer (e.g. a running mean) in a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub usize);

/// A learned tensor and the gradient accumulated for it.
#[derive(Clone, Debug)]
pub struct Parameter {
    /// Dotted path, e.g. `stage2.block0.conv1.weight`.
    pub name: String,
    pub value: Tensor,
    /// Same shape as `value`; summed over every tape, zeroed by `zero_grads`.
    pub grad: Tensor,
    /// Whether weight decay applies (false for batch-norm scales/shifts and biases).
    pub decay: bool,
    /// Whether the optimiser updates it (false: fixed by design, like airbench's whitening
    /// filters and batch-norm scales; its gradient is still computed).
    pub trainable: bool,
    /// Its learning rate is this multiple of the run's (1 but for airbench's batch-norm biases,
    /// 64); its weight decay is divided by it, so the decay per step stays the same.
    pub lr_scale: f32,
}

/// A named tensor that is saved with the model but not trained by gradients.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub value: Tensor,
}

/// Per-channel statistics of one batch (or one shard of it) seen by a
/// batch-norm layer in training mode.
#[derive(Clone, Debug)]
pub struct BatchStatistics {
    pub running_mean: BufferId,
    pub running_var: BufferId,
    /// Mean of each channel over the shard, `[C]`.
    pub mean: Vec<f32>,
    /// Biased variance of each channel over the shard, `[C]`.
    pub var: Vec<f32>,
    /// Number of values per channel in the shard (N·H·W).
    pub count: usize,
    /// Weight of the new batch in the running average.
    pub momentum: f32,
}

/// Every parameter and buffer of a model.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub params: Vec<Parameter>,
    pub buffers: Vec<Buffer>,
}

impl ParamStore {
    /// Adds a learned parameter and returns its id.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor, decay: bool) -> ParamId {
        let grad = Tensor::zeros(&value.shape);
        self.params.push(Parameter {
            name: name.into(),
            value,
            grad,
            decay,
            trainable: true,
            lr_scale: 1.0,
        });
        ParamId(self.params.len() - 1)
    }

    /// Adds a parameter that the optimiser leaves as it is (see [`Parameter::trainable`]).
    pub fn add_frozen(&mut self, name: impl Into<String>, value: Tensor) -> ParamId {
        let id = self.add(name, value, false);
        self.params[id.0].trainable = false;
        id
    }

    /// Adds a buffer and returns its id.
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor) -> BufferId {
        self.buffers.push(Buffer {
            name: name.into(),
            value,
        });
        BufferId(self.buffers.len() - 1)
    }

    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }

    pub fn value_mut(&mut self, id: ParamId) -> &mut Tensor {
        &mut self.params[id.0].value
    }

    pub fn grad(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].grad
    }

    pub fn buffer(&self, id: BufferId) -> &Tensor {
        &self.buffers[id.0].value
    }

    pub fn buffer_mut(&mut self, id: BufferId) -> &mut Tensor {
        &mut self.buffers[id.0].value
    }

    /// One zero tensor per parameter, of its shape (gradient and momentum buffers).
    pub fn zeros_like_params(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| Tensor::zeros(&p.value.shape))
            .collect()
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.grad.data.fill(0.0);
        }
    }

    /// Adds the parameter gradients found on `tape` (`grad += tape grad`).
    pub fn accumulate_gradients(&mut self, tape: &super::Tape) {
        for (id, g) in tape.param_gradients() {
            self.params[id.0].grad.add_assign(g);
        }
    }

    /// Total number of learned scalars.
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Folds batch statistics into the running statistics.
    ///
    /// Statistics of several shards of the same batch (same buffers) are first
    /// merged into the statistics of the whole batch, so data-parallel training
    /// updates the running averages exactly as one worker on the full batch
    /// would: `running = (1 − momentum)·running + momentum·batch`, with the
    /// unbiased batch variance (as PyTorch does).
    pub fn apply_batch_statistics<'a>(&mut self, statistics: impl IntoIterator<Item = &'a BatchStatistics>) {
        // Merge shards that belong to the same layer, keeping first-seen order.
        let mut merged: Vec<BatchStatistics> = Vec::new();
        for s in statistics {
            match merged.iter_mut().find(|m| m.running_mean == s.running_mean) {
                None => merged.push(s.clone()),
                Some(m) => {
                    // Chan et al.: combine counts, means and sums of squared deviations.
                    let (n_a, n_b) = (m.count as f64, s.count as f64);
                    let n = n_a + n_b;
                    for c in 0..m.mean.len() {
                        let (mean_a, mean_b) = (m.mean[c] as f64, s.mean[c] as f64);
                        let delta = mean_b - mean_a;
                        let m2 =
                            m.var[c] as f64 * n_a + s.var[c] as f64 * n_b + delta * delta * n_a * n_b / n;
                        m.mean[c] = (mean_a + delta * n_b / n) as f32;
                        m.var[c] = (m2 / n) as f32;
                    }
                    m.count += s.count;
                }
            }
        }
        for s in merged {
            let unbias = if s.count > 1 {
                s.count as f32 / (s.count - 1) as f32
            } else {
                1.0
            };
            let mom = s.momentum;
            for (r, &b) in self.buffers[s.running_mean.0].value.data.iter_mut().zip(&s.mean) {
                *r = (1.0 - mom) * *r + mom * b;
            }
            for (r, &b) in self.buffers[s.running_var.0].value.data.iter_mut().zip(&s.var) {
                *r = (1.0 - mom) * *r + mom * b * unbias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_shard_statistics_equal_whole_batch_statistics() {
        let mut store = ParamStore::default();
        let rm = store.add_buffer("m", Tensor::zeros(&[1]));
        let rv = store.add_buffer("v", Tensor::full(&[1], 1.0));
        let xs = [1.0f32, 2.0, 4.0, 8.0, 3.0];
        let stats = |s: &[f32]| {
            let n = s.len() as f32;
            let mean = s.iter().sum::<f32>() / n;
            let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            BatchStatistics {
                running_mean: rm,
                running_var: rv,
                mean: vec![mean],
                var: vec![var],
                count: s.len(),
                momentum: 1.0,
            }
        };
        store.apply_batch_statistics(&[stats(&xs[..2]), stats(&xs[2..])]);
        let whole = stats(&xs);
        assert!((store.buffer(rm).data[0] - whole.mean[0]).abs() < 1e-6);
        let unbiased = whole.var[0] * 5.0 / 4.0;
        assert!((store.buffer(rv).data[0] - unbiased).abs() < 1e-5);
    }
}
