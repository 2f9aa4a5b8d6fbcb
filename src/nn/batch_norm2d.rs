//! `BatchNorm2d`: learned scale γ and shift β per channel, plus running statistics.

use crate::autograd::{BatchStatistics, BufferId, ParamId, ParamStore, Tape, Var};
use crate::ops::batch_norm::{batch_norm2d_with, Epilogue, Statistics};
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    /// γ `[C]`, ones.
    pub gamma: ParamId,
    /// β `[C]`, zeros.
    pub beta: ParamId,
    /// Running mean `[C]`, zeros.
    pub running_mean: BufferId,
    /// Running (unbiased) variance `[C]`, ones.
    pub running_var: BufferId,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm2d {
    /// PyTorch's defaults: ε = 1e-5, momentum 0.1.
    pub fn new(store: &mut ParamStore, name: &str, channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            gamma: store.add(format!("{name}.gamma"), Tensor::full(&[channels], 1.0), false),
            beta: store.add(format!("{name}.beta"), Tensor::zeros(&[channels]), false),
            running_mean: store.add_buffer(format!("{name}.running_mean"), Tensor::zeros(&[channels])),
            running_var: store.add_buffer(format!("{name}.running_var"), Tensor::full(&[channels], 1.0)),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Training mode: normalise with batch statistics and record them on the
    /// tape; evaluation mode: normalise with the running statistics.
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        self.forward_with(tape, x, Epilogue::default())
    }

    /// [`Self::forward`] with a residual and a ReLU fused into the same pass (the same floats
    /// as the separate ops, with fewer tensors written and kept).
    pub fn forward_with(&self, tape: &mut Tape, x: Var, epilogue: Epilogue) -> Var {
        let gamma = tape.param(self.gamma);
        let beta = tape.param(self.beta);
        if tape.is_training() {
            let (y, measured) =
                batch_norm2d_with(tape, x, gamma, beta, self.eps, Statistics::Batch, epilogue);
            let measured = measured.expect("batch statistics are measured in training mode");
            tape.record_batch_statistics(BatchStatistics {
                running_mean: self.running_mean,
                running_var: self.running_var,
                mean: measured.mean,
                var: measured.var,
                count: measured.count,
                momentum: self.momentum,
            });
            y
        } else {
            let params = tape.params();
            let statistics = Statistics::Running {
                mean: &params.buffer(self.running_mean).data,
                var: &params.buffer(self.running_var).data,
            };
            batch_norm2d_with(tape, x, gamma, beta, self.eps, statistics, epilogue).0
        }
    }
}
