//! airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498;
//! the network of `legacy/airbench94.py`, written from its description and the reference port in
//! `../shared/bench/airbench_ref.py`):
//!
//! ```text
//!   whiten   conv 2×2, 3 → 24, no padding, bias; filters fixed by [`Airbench::init_whitening`]
//!   GELU
//!   3 groups of widths w, 4w, 4w (w = 64):
//!            conv 3×3 → max pool 2 → BN → GELU → conv 3×3 → BN → GELU
//!            (BN: scale frozen at 1, ε = 1e-12, momentum 0.4; convs start as identities on
//!             their first C_in outputs: Dirac init)
//!   max pool 3 → flatten → linear 4w → 10, no bias → × 1/9
//! ```
//!
//! 32×32 → 31 → (pools) 15 → 7 → 3 → 1. About 118 M MACs per image at w = 64.

use super::conv_layer::{ConvLayer, ConvPlan};
use super::{BatchNorm2d, Conv2d, Linear};
use crate::autograd::{ParamStore, Tape, Var};
use crate::ops::{self, ConvConfig};
use crate::tensor::Tensor;
use rand::Rng;

/// The whitening conv's output channels: 12 whitening filters of 2×2 RGB patches and their negatives.
pub const WHITENING_CHANNELS: usize = 24;

/// The logits' scale.
pub const OUTPUT_SCALE: f32 = 1.0 / 9.0;

/// The ε of the whitening: filter_i = v_i / √(λ_i + ε).
pub const WHITENING_EPS: f64 = 5e-4;

/// conv → pool → BN → GELU → conv → BN → GELU.
#[derive(Clone, Debug)]
pub struct AirbenchGroup {
    pub name: String,
    pub conv1: ConvLayer,
    pub norm1: BatchNorm2d,
    pub conv2: ConvLayer,
    pub norm2: BatchNorm2d,
}

#[derive(Clone, Debug)]
pub struct Airbench {
    /// The 2×2 whitening conv: weight frozen, bias trained in the first 3 epochs.
    pub whiten: Conv2d,
    pub groups: Vec<AirbenchGroup>,
    /// 4w → classes; its bias is frozen at 0 (the reference has none).
    pub head: Linear,
}

/// The learning-rate multiple of the batch-norm biases (the reference's `bias_scaler`).
pub const BATCH_NORM_BIAS_LR_SCALE: f32 = 64.0;

/// A batch norm with its scale frozen at 1, ε = 1e-12 and momentum 0.4 (the reference's), its
/// bias at 64× the learning rate and under weight decay like every trained parameter there.
fn batch_norm(store: &mut ParamStore, name: &str, channels: usize) -> BatchNorm2d {
    let mut bn = BatchNorm2d::new(store, name, channels);
    store.params[bn.gamma.0].trainable = false;
    let beta = &mut store.params[bn.beta.0];
    (beta.lr_scale, beta.decay) = (BATCH_NORM_BIAS_LR_SCALE, true);
    (bn.eps, bn.momentum) = (1e-12, 0.4);
    bn
}

/// A 3×3 "same" conv with PyTorch's default init, U(±1/√fan_in), then the Dirac identity on its
/// first C_in outputs (a dense layer; an SBF layer keeps its own init).
fn conv(
    store: &mut ParamStore,
    name: &str,
    plan: &ConvPlan,
    inputs: usize,
    outputs: usize,
    rng: &mut impl Rng,
) -> ConvLayer {
    let same = ConvConfig {
        stride: 1,
        padding: 1,
    };
    let layer = ConvLayer::new(
        store,
        name,
        plan.kind_of(name, false),
        inputs,
        outputs,
        3,
        same,
        rng,
    );
    if let ConvLayer::Dense(dense) = &layer {
        let bound = 1.0 / ((inputs * 9) as f32).sqrt();
        let weight = store.value_mut(dense.weight);
        *weight = Tensor::uniform(&[outputs, inputs, 3, 3], -bound, bound, rng);
        for o in 0..inputs.min(outputs) {
            weight.data[o * inputs * 9..][..inputs * 9].fill(0.0);
            weight.data[(o * inputs + o) * 9 + 4] = 1.0;
        }
    }
    layer
}

impl Airbench {
    /// `width` = channels of the first group (64 in the reference); `plan` applies to the six
    /// 3×3 convs (`group{g}.conv{1,2}`), never to the whitening conv.
    pub fn new(
        store: &mut ParamStore,
        width: usize,
        plan: &ConvPlan,
        classes: usize,
        rng: &mut impl Rng,
    ) -> Airbench {
        let valid = ConvConfig {
            stride: 1,
            padding: 0,
        };
        let whiten = Conv2d::new(store, "whiten", 3, WHITENING_CHANNELS, 2, valid, true, rng);
        store.params[whiten.weight.0].trainable = false;
        store.params[whiten.bias.expect("the whitening conv has a bias").0].decay = true;
        let mut inputs = WHITENING_CHANNELS;
        let groups = [width, 4 * width, 4 * width]
            .iter()
            .enumerate()
            .map(|(g, &outputs)| {
                let name = format!("group{}", g + 1);
                let group = AirbenchGroup {
                    conv1: conv(store, &format!("{name}.conv1"), plan, inputs, outputs, rng),
                    norm1: batch_norm(store, &format!("{name}.norm1"), outputs),
                    conv2: conv(store, &format!("{name}.conv2"), plan, outputs, outputs, rng),
                    norm2: batch_norm(store, &format!("{name}.norm2"), outputs),
                    name,
                };
                inputs = outputs;
                group
            })
            .collect();
        let head = Linear::new(store, "head", inputs, classes, rng);
        store.params[head.bias.0].trainable = false;
        Airbench { whiten, groups, head }
    }

    /// Sets the whitening filters from training images [N, 3, H, W] (normalised as the network
    /// sees them; the reference uses the first 5,000).
    pub fn init_whitening(&self, store: &mut ParamStore, images: &Tensor) {
        let filters = super::whitening::whitening_filters(images, 2, WHITENING_EPS);
        *store.value_mut(self.whiten.weight) = filters;
    }

    /// Epochs in which the whitening conv's bias trains (the reference's `whiten_bias_epochs`).
    pub const WHITENING_BIAS_EPOCHS: usize = 3;

    /// Lets the whitening bias train during the first [`Airbench::WHITENING_BIAS_EPOCHS`] epochs
    /// and freezes it after (`completed` = epochs finished before the current one).
    pub fn freeze_whitening_bias_after(&self, completed: usize, store: &mut ParamStore) {
        let bias = self.whiten.bias.expect("the whitening conv has a bias");
        store.params[bias.0].trainable = completed < Self::WHITENING_BIAS_EPOCHS;
    }

    /// image [N, 3, 32, 32] → logits [N, classes]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        // A chain: each value feeds only the next op (`tape.chain` frees it in evaluation).
        let h = self.whiten.forward(tape, x);
        let mut h = tape.chain(h, ops::gelu);
        for group in &self.groups {
            h = tape.chain(h, |t, v| group.conv1.forward(t, v));
            h = tape.chain(h, |t, v| ops::max_pool(t, v, 2));
            h = tape.chain(h, |t, v| group.norm1.forward(t, v));
            h = tape.chain(h, ops::gelu);
            h = tape.chain(h, |t, v| group.conv2.forward(t, v));
            h = tape.chain(h, |t, v| group.norm2.forward(t, v));
            h = tape.chain(h, ops::gelu);
        }
        let h = tape.chain(h, |t, v| ops::max_pool(t, v, 3));
        let h = tape.chain(h, ops::flatten);
        let logits = tape.chain(h, |t, v| self.head.forward(t, v));
        tape.chain(logits, |t, v| ops::scale(t, v, OUTPUT_SCALE))
    }
}

#[cfg(test)]
mod tests {
    use crate::autograd::{Mode, ParamStore, Tape};
    use crate::nn::{ModelSpec, Network};
    use crate::tensor::Tensor;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn the_network_has_the_references_shape_cost_and_frozen_parts() {
        let spec = ModelSpec::parse_name("airbench94").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
        let table = model.layer_table(&store);
        let macs: usize = table.iter().map(|r| r.macs).sum();
        assert_eq!(macs, 118_147_360, "about 118.1 M MACs per image");
        let params: usize = table.iter().map(|r| r.params).sum();
        assert_eq!(params, store.params.iter().map(|p| p.value.len()).sum::<usize>());
        // Frozen: the whitening filters, every batch-norm scale, the head's (zero) bias.
        let frozen: Vec<&str> = store
            .params
            .iter()
            .filter(|p| !p.trainable)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(frozen.len(), 1 + 6 + 1, "{frozen:?}");
        assert!(frozen.contains(&"whiten.weight") && frozen.contains(&"head.bias"));
        // Dirac: group 1's first conv starts as the identity on its 24 inputs.
        let Network::Airbench(net) = &model.network else {
            panic!("airbench94")
        };
        let crate::nn::ConvLayer::Dense(conv) = &net.groups[0].conv1 else {
            panic!("dense")
        };
        let w = store.value(conv.weight);
        assert_eq!(w.data[(5 * 24 + 5) * 9 + 4], 1.0);
        assert_eq!(w.data[(5 * 24 + 6) * 9 + 4], 0.0);
        // The whitening bias trains in epochs 1–3 (0–2 completed before them) only.
        let bias = net.whiten.bias.unwrap();
        net.freeze_whitening_bias_after(2, &mut store);
        assert!(store.params[bias.0].trainable);
        net.freeze_whitening_bias_after(3, &mut store);
        assert!(!store.params[bias.0].trainable);
        // Forward on a small width: logits [N, 10].
        let small = ModelSpec::parse_name("airbench94-w4").unwrap();
        let mut store = ParamStore::default();
        let model = small.build(&mut store, &mut StdRng::seed_from_u64(1));
        let mut tape = Tape::new(&store, Mode::Eval);
        let x = tape.input(Tensor::normal(
            &[2, 3, 32, 32],
            1.0,
            &mut StdRng::seed_from_u64(2),
        ));
        let y = model.forward(&mut tape, x);
        assert_eq!(tape.value(y).shape, vec![2, 10]);
    }

    #[test]
    fn an_sbf_plan_applies_to_the_3x3_convs_and_not_to_the_whitening_conv() {
        let spec = ModelSpec::parse_description("airbench94-w4 sbf:rate=0.5,groups=2").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
        assert_eq!(
            model
                .conv_layers()
                .iter()
                .filter(|(_, l)| l.as_sbf().is_some())
                .count(),
            6
        );
        let refused = ModelSpec::parse_description("airbench94 dense;whiten=sbf:rate=0.5,groups=2");
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("names \"whiten\", which is no convolution"));
    }
}
