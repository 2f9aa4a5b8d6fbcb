//! `Linear`: `y = x·Wᵀ + b` with W `[O, I]` (Kaiming-uniform) and b `[O]` (zeros).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::tensor::Tensor;
use rand::Rng;

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Linear {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        inputs: usize,
        outputs: usize,
        rng: &mut impl Rng,
    ) -> Linear {
        Linear {
            weight: store.add(
                format!("{name}.weight"),
                Tensor::kaiming_uniform(&[outputs, inputs], rng),
                true,
            ),
            bias: store.add(format!("{name}.bias"), Tensor::zeros(&[outputs]), false),
        }
    }

    /// x [N, I] → y [N, O]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let w = tape.param(self.weight);
        let b = tape.param(self.bias);
        crate::ops::linear(tape, x, w, Some(b))
    }
}
