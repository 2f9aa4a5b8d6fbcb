//! `Conv2d`: a dense K×K convolution layer (weight [F, C, K, K], optional bias `[F]`).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::ops::{conv2d, ConvConfig};
use crate::tensor::Tensor;
use rand::Rng;

#[derive(Clone, Debug)]
pub struct Conv2d {
    /// [F, C, K, K], Kaiming-normal initialised.
    pub weight: ParamId,
    /// `[F]`, zeros; `None` when batch norm follows.
    pub bias: Option<ParamId>,
    pub config: ConvConfig,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
}

impl Conv2d {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: ConvConfig,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Conv2d {
        let weight = store.add(
            format!("{name}.weight"),
            Tensor::kaiming_normal(&[out_channels, in_channels, kernel, kernel], rng),
            true,
        );
        let bias = bias.then(|| store.add(format!("{name}.bias"), Tensor::zeros(&[out_channels]), false));
        Conv2d {
            weight,
            bias,
            config,
            in_channels,
            out_channels,
            kernel,
        }
    }

    /// x [N, C, H, W] → y [N, F, Ho, Wo]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let w = tape.param(self.weight);
        let b = self.bias.map(|b| tape.param(b));
        conv2d(tape, x, w, b, self.config)
    }
}
