//! `ConvLayer`: a convolution slot of a model that is either dense or SBF.
//!
//! Models never build a [`Conv2d`] directly: they ask for a `ConvLayer` of a
//! [`ConvKind`], so the same ResNet or VGG definition gives a dense network or
//! one whose 3×3 convolutions are SBF layers (templates + cheap spatial
//! transformations). A [`ConvPlan`] says which kind each slot gets.
//!
//! Adding the SBF layer (merge note for `nn::SbfConv2d`):
//! 1. add `ConvKind::Sbf { .. }` with its settings, its `describe`/`parse` text;
//! 2. add `ConvLayer::Sbf(SbfConv2d)` and one arm in each `match` below
//!    (`new`, `forward`, `out_channels`, `in_channels`, `config`, `kernel`, `param_count`, `macs`, `kind_name`).
//!
//! Nothing else in the models, the trainer or the command line changes.

use super::Conv2d;
use crate::autograd::{ParamStore, Tape, Var};
use crate::ops::ConvConfig;
use rand::Rng;

/// How one convolution slot is implemented.
#[derive(Clone, Debug, PartialEq)]
pub enum ConvKind {
    /// An ordinary K×K convolution ([`Conv2d`], no bias: batch norm follows).
    Dense,
}

impl ConvKind {
    /// Stable text used in model descriptions (stored in checkpoints).
    pub fn describe(&self) -> String {
        match self {
            ConvKind::Dense => "dense".into(),
        }
    }

    /// Parses [`ConvKind::describe`]'s text.
    pub fn parse(text: &str) -> Option<ConvKind> {
        match text {
            "dense" => Some(ConvKind::Dense),
            _ => None,
        }
    }
}

/// Which kind each convolution of a model gets.
///
/// `first` is the stem convolution that reads the RGB image (3 input
/// channels: too few for templates to pay off, so it stays dense by default);
/// `body` is every other 3×3 convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPlan {
    pub first: ConvKind,
    pub body: ConvKind,
}

impl ConvPlan {
    /// Every convolution dense.
    pub fn dense() -> ConvPlan {
        ConvPlan {
            first: ConvKind::Dense,
            body: ConvKind::Dense,
        }
    }

    /// Stable text for model descriptions: the body's kind, prefixed by
    /// `first=<kind>,` when the stem differs from the default (dense).
    pub fn describe(&self) -> String {
        if self.first == ConvKind::Dense {
            self.body.describe()
        } else {
            format!("first={},{}", self.first.describe(), self.body.describe())
        }
    }

    /// Parses [`ConvPlan::describe`]'s text.
    pub fn parse(text: &str) -> Option<ConvPlan> {
        match text.strip_prefix("first=") {
            Some(rest) => {
                let (first, body) = rest.split_once(',')?;
                Some(ConvPlan {
                    first: ConvKind::parse(first)?,
                    body: ConvKind::parse(body)?,
                })
            }
            None => Some(ConvPlan {
                first: ConvKind::Dense,
                body: ConvKind::parse(text)?,
            }),
        }
    }
}

/// A convolution of a model, dense or (after the merge) SBF.
#[derive(Clone, Debug)]
pub enum ConvLayer {
    Dense(Conv2d),
}

impl ConvLayer {
    /// A `kernel`×`kernel` convolution without bias (batch norm follows every
    /// convolution in these models), Kaiming-initialised from `rng`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        kind: &ConvKind,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: ConvConfig,
        rng: &mut impl Rng,
    ) -> ConvLayer {
        match kind {
            ConvKind::Dense => ConvLayer::Dense(Conv2d::new(
                store,
                name,
                in_channels,
                out_channels,
                kernel,
                config,
                false,
                rng,
            )),
        }
    }

    /// x [N, C, H, W] → y [N, F, Ho, Wo]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        match self {
            ConvLayer::Dense(conv) => conv.forward(tape, x),
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.out_channels,
        }
    }

    pub fn kernel(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.kernel,
        }
    }

    pub fn config(&self) -> ConvConfig {
        match self {
            ConvLayer::Dense(conv) => conv.config,
        }
    }

    /// Output height and width for an input of `height`×`width`: (H + 2p − K)/s + 1.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let (k, c) = (self.kernel(), self.config());
        (
            (height + 2 * c.padding - k) / c.stride + 1,
            (width + 2 * c.padding - k) / c.stride + 1,
        )
    }

    /// Learned scalars of this layer.
    pub fn param_count(&self, store: &ParamStore) -> usize {
        match self {
            ConvLayer::Dense(conv) => {
                store.value(conv.weight).len() + conv.bias.map_or(0, |b| store.value(b).len())
            }
        }
    }

    /// Multiply-accumulates of the forward pass for one image of
    /// `height`×`width`: dense = F·Ho·Wo·C·K².
    pub fn macs(&self, height: usize, width: usize) -> usize {
        let (h_out, w_out) = self.output_size(height, width);
        match self {
            ConvLayer::Dense(conv) => {
                conv.out_channels * h_out * w_out * conv.in_channels * conv.kernel * conv.kernel
            }
        }
    }

    /// Short type name for layer tables, e.g. "conv3x3".
    pub fn kind_name(&self) -> String {
        match self {
            ConvLayer::Dense(conv) => format!("conv{0}x{0}", conv.kernel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn plan_text_round_trips() {
        let plan = ConvPlan::dense();
        assert_eq!(ConvPlan::parse(&plan.describe()), Some(plan));
        assert_eq!(ConvPlan::parse("dense"), Some(ConvPlan::dense()));
        assert_eq!(ConvPlan::parse("first=dense,dense"), Some(ConvPlan::dense()));
        assert_eq!(ConvPlan::parse("sparse"), None);
    }

    #[test]
    fn dense_layer_counts_params_and_macs() {
        let mut store = ParamStore::default();
        let mut rng = StdRng::seed_from_u64(1);
        let config = ConvConfig {
            stride: 2,
            padding: 1,
        };
        let layer = ConvLayer::new(&mut store, "c", &ConvKind::Dense, 3, 8, 3, config, &mut rng);
        assert_eq!(layer.param_count(&store), 8 * 3 * 9);
        assert_eq!(layer.output_size(32, 32), (16, 16));
        assert_eq!(layer.macs(32, 32), 8 * 16 * 16 * 3 * 9);
        assert_eq!(store.num_scalars(), 8 * 3 * 9);
    }
}
