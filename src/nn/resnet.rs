//! The CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", §4.2).
//!
//! Depth 6n + 2 (ResNet-20/32/44/56/110 for n = 3/5/7/9/18):
//! ```text
//!   image [N, 3, 32, 32]
//!   conv3x3(3 → w) → BN → ReLU                                [N, w, 32, 32]
//!   stage 1: n basic blocks, w channels                       [N, w, 32, 32]
//!   stage 2: n basic blocks, 2w channels, first has stride 2  [N, 2w, 16, 16]
//!   stage 3: n basic blocks, 4w channels, first has stride 2  [N, 4w, 8, 8]
//!   global average pool → linear(4w → 10)                     [N, 10]
//! ```
//! with w = 16 in the paper. A basic block:
//! `y = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))`, where the
//! shortcut is the identity, or "option A" (subsample by 2, zero-pad the new
//! channels: no parameters) where the shape changes.

use super::conv_layer::{ConvLayer, ConvPlan};
use super::{BatchNorm2d, Linear};
use crate::autograd::{ParamStore, Tape, Var};
use crate::ops::batch_norm::Epilogue;
use crate::ops::{self, ConvConfig};
use rand::Rng;

const SAME_3X3: ConvConfig = ConvConfig {
    stride: 1,
    padding: 1,
};

/// Two 3×3 conv + BN layers and a shortcut.
#[derive(Clone, Debug)]
pub struct BasicBlock {
    pub name: String,
    pub conv1: ConvLayer,
    pub bn1: BatchNorm2d,
    pub conv2: ConvLayer,
    pub bn2: BatchNorm2d,
    /// 1, or 2 for the first block of stages 2 and 3.
    pub stride: usize,
}

impl BasicBlock {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        plan: &ConvPlan,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        rng: &mut impl Rng,
    ) -> BasicBlock {
        let strided = ConvConfig { stride, padding: 1 };
        let (conv1_name, conv2_name) = (format!("{name}.conv1"), format!("{name}.conv2"));
        BasicBlock {
            name: name.to_string(),
            conv1: ConvLayer::new(
                store,
                &conv1_name,
                plan.kind_of(&conv1_name, false),
                in_channels,
                out_channels,
                3,
                strided,
                rng,
            ),
            bn1: BatchNorm2d::new(store, &format!("{name}.bn1"), out_channels),
            conv2: ConvLayer::new(
                store,
                &conv2_name,
                plan.kind_of(&conv2_name, false),
                out_channels,
                out_channels,
                3,
                SAME_3X3,
                rng,
            ),
            bn2: BatchNorm2d::new(store, &format!("{name}.bn2"), out_channels),
            stride,
        }
    }

    /// x [N, C, H, W] → y [N, F, H/s, W/s]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let h1 = self.conv1.forward(tape, x);
        let a1 = self.bn1.forward_with(tape, h1, Epilogue::RELU); // relu(bn1(conv1(x)))
        let h2 = self.conv2.forward(tape, a1);
        let out_channels = self.conv2.out_channels();
        let shortcut = if self.stride != 1 || self.conv1.in_channels() != out_channels {
            ops::shortcut_option_a(tape, x, out_channels, self.stride)
        } else {
            x
        };
        // relu(bn2(h2) + shortcut), in one pass
        let out = self.bn2.forward_with(tape, h2, Epilogue::residual_relu(shortcut));
        // Evaluation keeps only what later ops read (the block's input is the caller's).
        for dead in [h1, a1, h2] {
            tape.release(dead);
        }
        if shortcut != x {
            tape.release(shortcut);
        }
        out
    }
}

/// A CIFAR ResNet of depth 6n + 2.
#[derive(Clone, Debug)]
pub struct ResNet {
    pub stem: ConvLayer,
    pub stem_bn: BatchNorm2d,
    /// 3 stages of n blocks each.
    pub stages: Vec<Vec<BasicBlock>>,
    pub fc: Linear,
}

impl ResNet {
    /// `depth` = 6n + 2 (checked by `ModelSpec`), `width` = channels of stage 1 (16 in the paper).
    pub fn new(
        store: &mut ParamStore,
        depth: usize,
        width: usize,
        plan: &ConvPlan,
        classes: usize,
        rng: &mut impl Rng,
    ) -> ResNet {
        assert!(
            depth >= 8 && (depth - 2).is_multiple_of(6),
            "ResNet depth must be 6n + 2 with n ≥ 1, got {depth}"
        );
        let blocks_per_stage = (depth - 2) / 6;
        let stem = ConvLayer::new(
            store,
            "conv1",
            plan.kind_of("conv1", true),
            3,
            width,
            3,
            SAME_3X3,
            rng,
        );
        let stem_bn = BatchNorm2d::new(store, "bn1", width);
        let mut stages = Vec::new();
        let mut in_channels = width;
        for stage in 0..3 {
            let out_channels = width << stage;
            let blocks = (0..blocks_per_stage)
                .map(|b| {
                    let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                    let name = format!("stage{}.block{b}", stage + 1);
                    let block = BasicBlock::new(store, &name, plan, in_channels, out_channels, stride, rng);
                    in_channels = out_channels;
                    block
                })
                .collect();
            stages.push(blocks);
        }
        let fc = Linear::new(store, "fc", in_channels, classes, rng);
        ResNet {
            stem,
            stem_bn,
            stages,
            fc,
        }
    }

    /// Sets the scale γ of every block's last batch norm to 0, so each block starts as
    /// `relu(shortcut(x))`: the network begins as a shallow one and the residual branches grow
    /// in from zero (Goyal et al. 2017, "Accurate, large minibatch SGD", §5.1). γ still gets
    /// its gradient, `∂L/∂γ[c]` = Σ `∂L/∂y[n,c,h,w]·x̂[n,c,h,w]`, so it learns from the first step.
    pub fn zero_init_residual(&self, store: &mut ParamStore) {
        for block in self.stages.iter().flatten() {
            store.value_mut(block.bn2.gamma).data.fill(0.0);
        }
    }

    /// image [N, 3, 32, 32] → logits [N, classes]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let stem = self.stem.forward(tape, x);
        let mut h = self.stem_bn.forward_with(tape, stem, Epilogue::RELU);
        tape.release(stem); // (evaluation only, as every release below)
        for block in self.stages.iter().flatten() {
            let next = block.forward(tape, h);
            tape.release(h);
            h = next;
        }
        let pooled = ops::global_avg_pool(tape, h); // [N, 4w]
        tape.release(h);
        self.fc.forward(tape, pooled)
    }
}
