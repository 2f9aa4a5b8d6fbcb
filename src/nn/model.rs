//! The models a user can name: a [`ModelSpec`] (architecture, width, which
//! convolutions are dense or SBF) builds a [`Model`] whose parameters live in
//! a [`ParamStore`].
//!
//! Names: `resnet20`, `resnet32`, `resnet44`, `resnet56`, `resnet110` (any
//! depth 6n + 2 is accepted, e.g. `resnet8`), `vgg16`; a `-w<k>` suffix
//! changes the width (stage-1 channels of a ResNet, default 16; first-layer
//! channels of VGG, default 64), e.g. the tiny `resnet8-w4` of the tests; `airbench94`
//! (first-group channels, default 64).
//! The description `"<name> <conv plan>"`, e.g. `"resnet20 dense"`, is stored
//! in checkpoints and rebuilds the same model.

use super::airbench::Airbench;
use super::conv_layer::{ConvLayer, ConvPlan};
use super::resnet::ResNet;
use super::vgg::{Vgg, VggLayer};
use super::{BatchNorm2d, Linear};
use crate::autograd::{ParamStore, Tape, Var};
use crate::data::cifar::NUM_CLASSES;
use crate::error::{Error, Result};
use rand::Rng;

/// The model names `sbfnet` lists in its help.
pub const MODEL_NAMES: [&str; 7] = [
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg16",
    "airbench94",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// CIFAR ResNet of depth 6n + 2.
    ResNet { depth: usize },
    /// CIFAR VGG-16 with batch norm.
    Vgg16,
    /// The airbench94 network (Jordan 2024): whitening conv, three conv groups, GELU.
    Airbench94,
}

impl Architecture {
    fn default_width(&self) -> usize {
        match self {
            Architecture::ResNet { .. } => 16,
            Architecture::Vgg16 | Architecture::Airbench94 => 64,
        }
    }
}

/// Everything needed to build a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Stage-1 channels (ResNet) or first-layer channels (VGG).
    pub width: usize,
    pub convs: ConvPlan,
}

impl ModelSpec {
    /// A model by name (`resnet20`, `vgg16-w8`, ...), every convolution dense.
    pub fn parse_name(name: &str) -> Result<ModelSpec> {
        let unknown = || {
            Error::msg(format!(
                "unknown model \"{name}\" (expected one of {}, optionally with -w<width>, e.g. resnet8-w4)",
                MODEL_NAMES.join(", ")
            ))
        };
        let (base, width) = match name.split_once("-w") {
            Some((base, w)) => (
                base,
                Some(w.parse::<usize>().ok().filter(|&w| w > 0).ok_or_else(unknown)?),
            ),
            None => (name, None),
        };
        let architecture = if base == "vgg16" {
            Architecture::Vgg16
        } else if base == "airbench94" {
            Architecture::Airbench94
        } else {
            let depth: usize = base
                .strip_prefix("resnet")
                .and_then(|d| d.parse().ok())
                .ok_or_else(unknown)?;
            if depth < 8 || !(depth - 2).is_multiple_of(6) {
                return Err(Error::msg(format!(
                    "model \"{name}\": a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}"
                )));
            }
            Architecture::ResNet { depth }
        };
        Ok(ModelSpec {
            architecture,
            width: width.unwrap_or(architecture.default_width()),
            convs: ConvPlan::dense(),
        })
    }

    /// Parses a description written by [`ModelSpec::description`], e.g. "resnet20 dense".
    pub fn parse_description(description: &str) -> Result<ModelSpec> {
        let (name, plan) = description
            .split_once(' ')
            .ok_or_else(|| Error::msg(format!("model description \"{description}\" lacks its conv plan")))?;
        let mut spec = ModelSpec::parse_name(name)?;
        spec.convs = ConvPlan::parse(plan)
            .map_err(|e| Error::msg(format!("model description \"{description}\": {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Input channels of every convolution slot, in forward order, with whether it is the stem.
    fn conv_inputs(&self) -> Vec<(String, bool, usize)> {
        match self.architecture {
            Architecture::ResNet { depth } => {
                let mut slots = vec![("conv1".to_string(), true, 3)];
                let mut in_channels = self.width;
                for stage in 0..3 {
                    for block in 0..(depth - 2) / 6 {
                        let name = format!("stage{}.block{block}", stage + 1);
                        slots.push((format!("{name}.conv1"), false, in_channels));
                        in_channels = self.width << stage;
                        slots.push((format!("{name}.conv2"), false, in_channels));
                    }
                }
                slots
            }
            Architecture::Vgg16 => {
                let mut in_channels = 3;
                super::vgg::VGG16_LAYOUT
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, &channels)| {
                        let slot = (format!("features.conv{}", i + 1), i == 0, in_channels);
                        in_channels = (channels * self.width / 64).max(1);
                        slot
                    })
                    .collect()
            }
            Architecture::Airbench94 => {
                let widths = [self.width, 4 * self.width, 4 * self.width];
                let mut in_channels = super::airbench::WHITENING_CHANNELS;
                let mut slots = Vec::new();
                for (g, &channels) in widths.iter().enumerate() {
                    slots.push((format!("group{}.conv1", g + 1), false, in_channels));
                    slots.push((format!("group{}.conv2", g + 1), false, channels));
                    in_channels = channels;
                }
                slots
            }
        }
    }

    /// Refuses a conv plan the model's shapes do not allow (SBF groups that do not divide a
    /// layer's input channels), naming the layer.
    pub fn validate(&self) -> Result<()> {
        let slots = self.conv_inputs();
        for (prefix, _) in &self.convs.layers {
            if !slots
                .iter()
                .any(|(layer, _, _)| super::conv_layer::prefix_names(prefix, layer))
            {
                return Err(Error::msg(format!(
                    "model {}: the conv plan names \"{prefix}\", which is no convolution of {} (its layers: {} ... {})",
                    self.description(),
                    self.name(),
                    slots[0].0,
                    slots[slots.len() - 1].0
                )));
            }
        }
        for (layer, is_stem, in_channels) in slots {
            self.convs
                .kind_of(&layer, is_stem)
                .check_channels(&layer, in_channels)
                .map_err(|e| Error::msg(format!("model {}: {e}", self.description())))?;
        }
        Ok(())
    }

    /// e.g. "resnet20", "resnet8-w4", "vgg16".
    pub fn name(&self) -> String {
        let base = match self.architecture {
            Architecture::ResNet { depth } => format!("resnet{depth}"),
            Architecture::Vgg16 => "vgg16".into(),
            Architecture::Airbench94 => "airbench94".into(),
        };
        if self.width == self.architecture.default_width() {
            base
        } else {
            format!("{base}-w{}", self.width)
        }
    }

    /// The same network at its default width (`resnet20` for `resnet20-w11`): the full-size model
    /// that a thin one is compared with.
    pub fn at_default_width(&self) -> ModelSpec {
        ModelSpec {
            width: self.architecture.default_width(),
            ..self.clone()
        }
    }

    /// The stable description stored in checkpoints, e.g. "resnet20 dense".
    pub fn description(&self) -> String {
        format!("{} {}", self.name(), self.convs.describe())
    }

    /// Builds the model, adding its parameters to `store` (Kaiming init from `rng`).
    pub fn build(&self, store: &mut ParamStore, rng: &mut impl Rng) -> Model {
        let network = match self.architecture {
            Architecture::ResNet { depth } => Network::ResNet(ResNet::new(
                store,
                depth,
                self.width,
                &self.convs,
                NUM_CLASSES,
                rng,
            )),
            Architecture::Vgg16 => Network::Vgg(Vgg::new(store, self.width, &self.convs, NUM_CLASSES, rng)),
            Architecture::Airbench94 => {
                Network::Airbench(Airbench::new(store, self.width, &self.convs, NUM_CLASSES, rng))
            }
        };
        Model {
            spec: self.clone(),
            network,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Network {
    ResNet(ResNet),
    Vgg(Vgg),
    Airbench(Airbench),
}

/// A built model: its spec and its layers (the parameters live in a `ParamStore`).
#[derive(Clone, Debug)]
pub struct Model {
    pub spec: ModelSpec,
    pub network: Network,
}

/// One row of a model's layer table (per image of 3×32×32).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    pub name: String,
    /// e.g. "conv3x3", "linear", "batch norm".
    pub kind: String,
    /// Input [C, H, W] (or `[features]` for the classifier; empty for the batch-norm row).
    pub input: Vec<usize>,
    /// Output [C, H, W] (or `[features]` for the classifier).
    pub output: Vec<usize>,
    pub params: usize,
    /// Multiply-accumulates of the forward pass for one image.
    pub macs: usize,
    /// The same layer's figures if it were dense (equal to the above for all but SBF layers).
    pub dense_params: usize,
    pub dense_macs: usize,
}

impl Model {
    /// image [N, 3, 32, 32] → logits [N, 10]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        match &self.network {
            Network::ResNet(net) => net.forward(tape, x),
            Network::Vgg(net) => net.forward(tape, x),
            Network::Airbench(net) => net.forward(tape, x),
        }
    }

    /// e.g. "resnet20".
    pub fn name(&self) -> String {
        self.spec.name()
    }

    /// e.g. "resnet20 dense" (stored in checkpoints).
    pub fn description(&self) -> String {
        self.spec.description()
    }

    /// Every convolution slot with its name (e.g. `stage2.block0.conv1`), in forward order.
    pub fn conv_layers(&self) -> Vec<(String, &ConvLayer)> {
        self.conv_batch_norms()
            .into_iter()
            .map(|(name, conv, _)| (name, conv))
            .collect()
    }

    /// Gives the masks T of every SBF layer the learning-rate multiple `lr_scale` and weight decay
    /// or none ([`crate::autograd::Parameter`]); the number of SBF layers (0: a dense model).
    pub fn set_mask_optimisation(&self, store: &mut ParamStore, lr_scale: f32, decay: bool) -> usize {
        let masks: Vec<_> = self
            .conv_layers()
            .iter()
            .filter_map(|(_, layer)| layer.as_sbf().map(|sbf| sbf.transforms))
            .collect();
        for id in &masks {
            (store.params[id.0].lr_scale, store.params[id.0].decay) = (lr_scale, decay);
        }
        masks.len()
    }

    /// Every convolution with its name and the batch norm that normalises its output, in forward
    /// order (every convolution of these models has one).
    pub fn conv_batch_norms(&self) -> Vec<(String, &ConvLayer, &BatchNorm2d)> {
        match &self.network {
            Network::ResNet(net) => {
                let mut layers = vec![("conv1".to_string(), &net.stem, &net.stem_bn)];
                for block in net.stages.iter().flatten() {
                    layers.push((format!("{}.conv1", block.name), &block.conv1, &block.bn1));
                    layers.push((format!("{}.conv2", block.name), &block.conv2, &block.bn2));
                }
                layers
            }
            Network::Vgg(net) => net
                .features
                .iter()
                .filter_map(|layer| match layer {
                    VggLayer::Conv { conv, bn } => Some((conv, bn)),
                    VggLayer::Pool => None,
                })
                .enumerate()
                .map(|(i, (conv, bn))| (format!("features.conv{}", i + 1), conv, bn))
                .collect(),
            Network::Airbench(net) => net
                .groups
                .iter()
                .flat_map(|g| {
                    [
                        (format!("{}.conv1", g.name), &g.conv1, &g.norm1),
                        (format!("{}.conv2", g.name), &g.conv2, &g.norm2),
                    ]
                })
                .collect(),
        }
    }

    /// [`Model::conv_layers`], mutable: e.g. to replace a dense layer by an SBF layer in place.
    pub fn conv_layers_mut(&mut self) -> Vec<(String, &mut ConvLayer)> {
        match &mut self.network {
            Network::ResNet(net) => {
                let mut layers = vec![("conv1".to_string(), &mut net.stem)];
                for block in net.stages.iter_mut().flatten() {
                    layers.push((format!("{}.conv1", block.name), &mut block.conv1));
                    layers.push((format!("{}.conv2", block.name), &mut block.conv2));
                }
                layers
            }
            Network::Vgg(net) => net
                .features
                .iter_mut()
                .filter_map(|layer| match layer {
                    VggLayer::Conv { conv, .. } => Some(conv),
                    VggLayer::Pool => None,
                })
                .enumerate()
                .map(|(i, conv)| (format!("features.conv{}", i + 1), conv))
                .collect(),
            Network::Airbench(net) => net
                .groups
                .iter_mut()
                .flat_map(|g| {
                    [
                        (format!("{}.conv1", g.name), &mut g.conv1),
                        (format!("{}.conv2", g.name), &mut g.conv2),
                    ]
                })
                .collect(),
        }
    }

    /// Every convolution and linear layer with its output shape, parameters and
    /// MACs for one 32×32 image, then one row with all batch-norm layers
    /// together. The params column sums to `store.num_scalars()`.
    pub fn layer_table(&self, store: &ParamStore) -> Vec<LayerRow> {
        let mut rows = Vec::new();
        let mut batch_norm_params = 0;
        let mut batch_norm_layers = 0;
        let mut conv_row = |rows: &mut Vec<LayerRow>, name: &str, conv: &ConvLayer, h: usize, w: usize| {
            let (ho, wo) = conv.output_size(h, w);
            let cost = conv.cost(name, h, w);
            rows.push(LayerRow {
                name: name.to_string(),
                kind: conv.kind_name(),
                input: vec![conv.in_channels(), h, w],
                output: vec![conv.out_channels(), ho, wo],
                params: conv.param_count(store),
                macs: cost.macs,
                dense_params: cost.dense_params,
                dense_macs: cost.dense_macs,
            });
            batch_norm_params += 2 * conv.out_channels();
            batch_norm_layers += 1;
            (ho, wo)
        };
        let linear_row = |rows: &mut Vec<LayerRow>, name: &str, fc: &Linear| {
            let [outputs, inputs] = [store.value(fc.weight).shape[0], store.value(fc.weight).shape[1]];
            rows.push(LayerRow {
                name: name.to_string(),
                kind: "linear".into(),
                input: vec![inputs],
                output: vec![outputs],
                params: outputs * inputs + outputs,
                macs: outputs * inputs,
                dense_params: outputs * inputs + outputs,
                dense_macs: outputs * inputs,
            });
        };
        let (mut h, mut w) = (32, 32);
        match &self.network {
            Network::ResNet(net) => {
                (h, w) = conv_row(&mut rows, "conv1", &net.stem, h, w);
                for block in net.stages.iter().flatten() {
                    let (h1, w1) = conv_row(&mut rows, &format!("{}.conv1", block.name), &block.conv1, h, w);
                    (h, w) = conv_row(&mut rows, &format!("{}.conv2", block.name), &block.conv2, h1, w1);
                }
                linear_row(&mut rows, "fc", &net.fc);
            }
            Network::Vgg(net) => {
                let mut conv_index = 0;
                for layer in &net.features {
                    match layer {
                        VggLayer::Conv { conv, .. } => {
                            conv_index += 1;
                            (h, w) = conv_row(&mut rows, &format!("features.conv{conv_index}"), conv, h, w);
                        }
                        VggLayer::Pool => (h, w) = (h / 2, w / 2),
                    }
                }
                linear_row(&mut rows, "classifier", &net.classifier);
            }
            Network::Airbench(net) => {
                // The whitening conv: 2×2, no padding, with bias (not an SBF slot).
                let (c_out, k) = (super::airbench::WHITENING_CHANNELS, 2);
                (h, w) = (h - k + 1, w - k + 1);
                let params = c_out * 3 * k * k + c_out;
                rows.push(LayerRow {
                    name: "whiten".into(),
                    kind: "conv2x2".into(),
                    input: vec![3, 32, 32],
                    output: vec![c_out, h, w],
                    params,
                    macs: h * w * c_out * 3 * k * k,
                    dense_params: params,
                    dense_macs: h * w * c_out * 3 * k * k,
                });
                for group in &net.groups {
                    // conv1 at the group's input size, then the 2×2 pool; conv2 after it.
                    conv_row(&mut rows, &format!("{}.conv1", group.name), &group.conv1, h, w);
                    (h, w) = (h / 2, w / 2);
                    conv_row(&mut rows, &format!("{}.conv2", group.name), &group.conv2, h, w);
                }
                linear_row(&mut rows, "head", &net.head);
            }
        }
        rows.push(LayerRow {
            name: format!("{batch_norm_layers} batch norms"),
            kind: "batch norm".into(),
            input: vec![],
            output: vec![],
            params: batch_norm_params,
            macs: 0,
            dense_params: batch_norm_params,
            dense_macs: 0,
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Mode;
    use crate::tensor::Tensor;
    use rand::{rngs::StdRng, SeedableRng};

    /// The error that refuses a model description.
    fn refusal(description: &str) -> String {
        ModelSpec::parse_description(description).unwrap_err().to_string()
    }

    fn built(name: &str) -> (Model, ParamStore) {
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name(name)
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(0));
        (model, store)
    }

    /// Parameter counts counted by hand (bias-free convolutions, BN γ and β, linear with bias),
    /// which round to the paper's figures (He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M).
    #[test]
    fn parameter_counts_match_the_papers() {
        let resnet = |n: usize| {
            let convs = 9
                * (3 * 16
                    + 2 * n * 16 * 16
                    + 16 * 32
                    + (2 * n - 1) * 32 * 32
                    + 32 * 64
                    + (2 * n - 1) * 64 * 64);
            let batch_norms = 2 * (16 + 2 * n * (16 + 32 + 64));
            convs + batch_norms + 64 * 10 + 10
        };
        assert_eq!(resnet(3), 269_722);
        let vgg_convs = 9
            * (3 * 64
                + 64 * 64
                + 64 * 128
                + 128 * 128
                + 128 * 256
                + 2 * 256 * 256
                + 256 * 512
                + 5 * 512 * 512);
        let vgg = vgg_convs + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512) + 512 * 10 + 10;
        for (name, expected, paper_millions) in [
            ("resnet20", resnet(3), 0.27),
            ("resnet32", resnet(5), 0.46),
            ("resnet44", resnet(7), 0.66),
            ("resnet56", resnet(9), 0.85),
            ("resnet110", resnet(18), 1.7),
            ("vgg16", vgg, 14.7),
        ] {
            let (model, store) = built(name);
            assert_eq!(store.num_scalars(), expected, "{name}");
            let rounded = store.num_scalars() as f64 / 1e6;
            assert!(
                (rounded / paper_millions - 1.0).abs() < 0.02,
                "{name}: {rounded}M"
            );
            let table: usize = model.layer_table(&store).iter().map(|r| r.params).sum();
            assert_eq!(table, expected, "{name} layer table");
        }
    }

    #[test]
    fn resnet20_macs_and_shapes() {
        let (model, store) = built("resnet20");
        let table = model.layer_table(&store);
        assert_eq!(table.len(), 19 + 1 + 1);
        assert_eq!(table[0].output, vec![16, 32, 32]);
        assert_eq!(table[18].output, vec![64, 8, 8]);
        let macs: usize = table.iter().map(|r| r.macs).sum();
        // ≈ 41M multiply-accumulates per image, the usual figure for ResNet-20.
        assert!((40_000_000..42_000_000).contains(&macs), "{macs}");
    }

    #[test]
    fn names_and_descriptions_round_trip_and_bad_names_are_refused() {
        for name in ["resnet20", "resnet110", "resnet8-w4", "vgg16", "vgg16-w8"] {
            let spec = ModelSpec::parse_name(name).unwrap();
            assert_eq!(spec.name(), name);
            assert_eq!(ModelSpec::parse_description(&spec.description()).unwrap(), spec);
        }
        assert_eq!(
            ModelSpec::parse_name("resnet20").unwrap().description(),
            "resnet20 dense"
        );
        let err = ModelSpec::parse_name("resnet21").unwrap_err().to_string();
        assert!(err.contains("6n + 2"), "{err}");
        let err = ModelSpec::parse_name("alexnet").unwrap_err().to_string();
        assert!(err.contains("unknown model \"alexnet\""), "{err}");
        assert!(ModelSpec::parse_name("resnet20-wx").is_err());
    }

    #[test]
    fn tiny_models_give_logits_of_the_right_shape() {
        for name in ["resnet8-w2", "vgg16-w4"] {
            let (model, store) = built(name);
            let mut tape = Tape::new(&store, Mode::Eval);
            let x = tape.input(Tensor::normal(
                &[2, 3, 32, 32],
                1.0,
                &mut StdRng::seed_from_u64(1),
            ));
            let logits = model.forward(&mut tape, x);
            assert_eq!(tape.value(logits).shape, vec![2, 10], "{name}");
            assert!(tape.value(logits).all_finite());
        }
    }

    #[test]
    fn conv_layers_are_listed_in_forward_order_with_their_parameter_names() {
        for (name, count) in [("resnet20", 19), ("vgg16-w8", 13)] {
            let (mut model, store) = built(name);
            let layers = model.conv_layers();
            assert_eq!(layers.len(), count, "{name}");
            for (layer_name, layer) in &layers {
                let weight = store
                    .params
                    .iter()
                    .find(|p| p.name == format!("{layer_name}.weight"));
                assert_eq!(
                    weight.map(|p| p.value.len()),
                    Some(layer.param_count(&store)),
                    "{layer_name}"
                );
            }
            let table = model.layer_table(&store);
            assert!(layers.iter().zip(&table).all(|((n, _), row)| *n == row.name));
            assert_eq!(model.conv_layers_mut().len(), count);
        }
    }

    #[test]
    fn sbf_plans_build_check_groups_and_count_both_costs() {
        let spec = ModelSpec::parse_description("resnet8-w4 sbf:rate=0.5,groups=2").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
        let table = model.layer_table(&store);
        assert_eq!(table[0].kind, "conv3x3", "the stem stays dense");
        assert_eq!(table[1].kind, "sbf3x3 2/4");
        assert_eq!(table.iter().map(|r| r.params).sum::<usize>(), store.num_scalars());
        let (_, dense_store) = built("resnet8-w4");
        assert_eq!(
            table.iter().map(|r| r.dense_params).sum::<usize>(),
            dense_store.num_scalars()
        );
        assert!(table.iter().map(|r| r.macs).sum::<usize>() < table.iter().map(|r| r.dense_macs).sum());
        let mut tape = Tape::new(&store, Mode::Eval);
        let x = tape.input(Tensor::normal(
            &[1, 3, 32, 32],
            1.0,
            &mut StdRng::seed_from_u64(1),
        ));
        let logits = model.forward(&mut tape, x);
        assert_eq!(tape.value(logits).shape, vec![1, 10]);
        // width 6: stage 1 has 6 channels, which 4 groups do not divide.
        let err = refusal("resnet8-w6 sbf:rate=0.5,groups=4");
        assert!(
            err.contains("does not divide the 6 input channels of stage1.block0.conv1"),
            "{err}"
        );
        // An SBF stem reads 3 channels: groups 2 are refused, groups 1 are fine.
        assert!(ModelSpec::parse_description("vgg16-w8 first=sbf:rate=0,groups=2;dense").is_err());
        assert!(
            ModelSpec::parse_description("vgg16-w8 first=sbf:rate=0,groups=1;sbf:rate=0.5,groups=2").is_ok()
        );
    }

    #[test]
    fn plans_that_name_layers_build_those_layers_as_told() {
        let spec = ModelSpec::parse_description(
            "resnet8-w4 dense;stage3=sbf:rate=0.75,groups=2;stage2.block0.conv2=sbf:rate=0.5,groups=2",
        )
        .unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
        let kinds: Vec<(String, String)> = model
            .layer_table(&store)
            .into_iter()
            .map(|row| (row.name, row.kind))
            .collect();
        let kind = |layer: &str| kinds.iter().find(|(name, _)| name == layer).unwrap().1.clone();
        assert_eq!(kind("stage1.block0.conv2"), "conv3x3");
        assert_eq!(kind("stage2.block0.conv1"), "conv3x3");
        assert_eq!(kind("stage2.block0.conv2"), "sbf3x3 4/8");
        assert_eq!(kind("stage3.block0.conv1"), "sbf3x3 4/16");
        assert_eq!(kind("stage3.block0.conv2"), "sbf3x3 4/16");
        // The description round-trips through a checkpoint's text.
        assert_eq!(ModelSpec::parse_description(&spec.description()).unwrap(), spec);
        // A name that is no layer of the model, and groups a named layer cannot take, are refused.
        let err = refusal("resnet8-w4 dense;stage4=sbf:rate=0.5");
        assert!(
            err.contains("\"stage4\", which is no convolution of resnet8-w4"),
            "{err}"
        );
        let err = refusal("resnet8-w6 dense;stage1.block0.conv2=sbf:rate=0.5,groups=4");
        assert!(err.contains("input channels of stage1.block0.conv2"), "{err}");
    }

    #[test]
    fn same_seed_same_weights() {
        let (_, a) = built("resnet8-w4");
        let (_, b) = built("resnet8-w4");
        assert!(a.params.iter().zip(&b.params).all(|(p, q)| p.value == q.value));
    }
}
