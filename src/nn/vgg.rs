//! VGG-16 for CIFAR-10 (the common CIFAR variant of Simonyan & Zisserman 2015):
//! thirteen 3×3 convolutions, each followed by BN and ReLU, five 2×2 max pools,
//! and one linear classifier layer 512 → 10.
//! ```text
//!   image [N, 3, 32, 32]
//!   64, 64, pool          [N, 64, 16, 16]
//!   128, 128, pool        [N, 128, 8, 8]
//!   256, 256, 256, pool   [N, 256, 4, 4]
//!   512, 512, 512, pool   [N, 512, 2, 2]
//!   512, 512, 512, pool   [N, 512, 1, 1]
//!   flatten → linear(512 → 10)
//! ```
//! `width` scales every channel count by width/64 (64 gives the network above).

use super::conv_layer::{ConvLayer, ConvPlan};
use super::{BatchNorm2d, Linear};
use crate::autograd::{ParamStore, Tape, Var};
use crate::ops::batch_norm::Epilogue;
use crate::ops::{self, ConvConfig};
use rand::Rng;

/// Channel counts of the 13 convolutions at width 64; `None` is a 2×2 max pool.
pub const VGG16_LAYOUT: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// One layer of the feature extractor.
#[derive(Clone, Debug)]
pub enum VggLayer {
    /// conv3x3 → BN → ReLU
    Conv { conv: ConvLayer, bn: BatchNorm2d },
    /// 2×2 max pool, stride 2
    Pool,
}

#[derive(Clone, Debug)]
pub struct Vgg {
    pub features: Vec<VggLayer>,
    pub classifier: Linear,
}

impl Vgg {
    /// Where conv `number` (1-based, `features.conv{number}`) sits in the usual PyTorch CIFAR VGG's
    /// `features` sequence: three modules (conv, batch norm, ReLU) per conv, one per max pool.
    pub fn torch_index_of_conv(&self, number: usize) -> Option<usize> {
        let mut index = 0;
        let mut convs = 0;
        for layer in &self.features {
            match layer {
                VggLayer::Conv { .. } => {
                    convs += 1;
                    if convs == number {
                        return Some(index);
                    }
                    index += 3;
                }
                VggLayer::Pool => index += 1,
            }
        }
        None
    }

    pub fn new(
        store: &mut ParamStore,
        width: usize,
        plan: &ConvPlan,
        classes: usize,
        rng: &mut impl Rng,
    ) -> Vgg {
        let mut features = Vec::new();
        let mut in_channels = 3;
        let mut conv_index = 0;
        for entry in VGG16_LAYOUT {
            match entry {
                None => features.push(VggLayer::Pool),
                Some(channels) => {
                    let out_channels = (channels * width / 64).max(1);
                    let name = format!("features.conv{}", conv_index + 1);
                    let kind = plan.kind_of(&name, conv_index == 0);
                    let config = ConvConfig {
                        stride: 1,
                        padding: 1,
                    };
                    let conv = ConvLayer::new(store, &name, kind, in_channels, out_channels, 3, config, rng);
                    let bn = BatchNorm2d::new(store, &format!("features.bn{}", conv_index + 1), out_channels);
                    features.push(VggLayer::Conv { conv, bn });
                    in_channels = out_channels;
                    conv_index += 1;
                }
            }
        }
        let classifier = Linear::new(store, "classifier", in_channels, classes, rng);
        Vgg { features, classifier }
    }

    /// image [N, 3, 32, 32] → logits [N, classes]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let mut h = x;
        for layer in &self.features {
            let next = match layer {
                VggLayer::Conv { conv, bn } => {
                    let c = conv.forward(tape, h);
                    let out = bn.forward_with(tape, c, Epilogue::RELU); // relu(bn(conv(h)))
                    tape.release(c); // (evaluation only)
                    out
                }
                VggLayer::Pool => ops::max_pool(tape, h, 2),
            };
            if h != x {
                tape.release(h); // the layer's input, unless it is the caller's
            }
            h = next;
        }
        let flat = ops::flatten(tape, h); // [N, C·1·1]
        self.classifier.forward(tape, flat)
    }
}
