//! `ConvLayer`: a convolution slot of a model that is either dense or SBF.
//!
//! Models never build a [`Conv2d`] directly: they ask for a `ConvLayer` of a
//! [`ConvKind`], so the same ResNet or VGG definition gives a dense network or
//! one whose 3×3 convolutions are SBF layers (templates + cheap spatial
//! transformations). A [`ConvPlan`] says which kind each slot gets.
//!
//! Plan text (`--convs`, and the model description stored in checkpoints):
//! `dense`, or `sbf:rate=R,groups=G[,family=scalar|affine|rotation|zero]`: every
//! body convolution is an SBF layer with M = max(1, N − round(R·N)) templates
//! (R = 0: M = N, every filter a template, the start of a pruning run). The
//! number of templates of a *pruned* layer differs per layer: it is restored
//! from the checkpoint's per-layer assignment (see `checkpoint::assignment`), not
//! from R. `first=<kind>;` sets the stem's kind, and `;<layer>=<kind>` segments
//! set the kind of the named layers (`dense;stage3=sbf:rate=0.9,groups=2`).

use super::{Conv2d, LayerCost, SbfConv2d};
use crate::autograd::{ParamStore, Tape, Var};
use crate::ops::sbf::{SbfConfig, TransformFamily};
use crate::ops::ConvConfig;
use rand::Rng;

/// How one convolution slot is implemented.
#[derive(Clone, Debug, PartialEq)]
pub enum ConvKind {
    /// An ordinary K×K convolution ([`Conv2d`], no bias: batch norm follows).
    Dense,
    /// An SBF layer ([`SbfConv2d`], no bias) whose fraction `rate` ∈ [0, 1) of the N
    /// outputs are transformed copies of the M = max(1, N − round(rate·N)) templates.
    Sbf {
        rate: f32,
        groups: usize,
        family: TransformFamily,
    },
}

impl ConvKind {
    /// Stable text used in model descriptions (stored in checkpoints).
    pub fn describe(&self) -> String {
        match self {
            ConvKind::Dense => "dense".into(),
            ConvKind::Sbf { rate, groups, family } => {
                let mut text = format!("sbf:rate={rate},groups={groups}");
                if *family != TransformFamily::Scalar {
                    text += &format!(",family={}", family.name());
                }
                text
            }
        }
    }

    /// Parses [`ConvKind::describe`]'s text (`groups` defaults to 2, `family` to scalar);
    /// the error says what is wrong.
    pub fn parse(text: &str) -> Result<ConvKind, String> {
        if text == "dense" {
            return Ok(ConvKind::Dense);
        }
        let Some(settings) = text
            .strip_prefix("sbf:")
            .or(text.strip_prefix("sbf").filter(|s| s.is_empty()))
        else {
            return Err(format!(
                "unknown conv kind \"{text}\" (expected dense or sbf:rate=R,groups=G[,family=scalar|affine|rotation|zero])"
            ));
        };
        let (mut rate, mut groups, mut family) = (None, 2, TransformFamily::Scalar);
        for setting in settings.split(',').filter(|s| !s.is_empty()) {
            let bad = || format!("bad SBF setting \"{setting}\" in \"{text}\"");
            let (key, value) = setting.split_once('=').ok_or_else(bad)?;
            match key {
                "rate" => rate = Some(value.parse::<f32>().map_err(|_| bad())?),
                "groups" => groups = value.parse::<usize>().map_err(|_| bad())?,
                "family" => {
                    family = [
                        TransformFamily::Scalar,
                        TransformFamily::Affine,
                        TransformFamily::Rotation,
                        TransformFamily::Zero,
                    ]
                    .into_iter()
                    .find(|f| f.name() == value)
                    .ok_or_else(|| {
                        format!(
                        "unknown transform family \"{value}\" (expected scalar, affine, rotation or zero)"
                    )
                    })?
                }
                _ => {
                    return Err(format!(
                        "unknown SBF setting \"{key}\" in \"{text}\" (expected rate, groups, family)"
                    ))
                }
            }
        }
        let rate =
            rate.ok_or_else(|| format!("\"{text}\" lacks rate=R (the fraction of transformed filters)"))?;
        if !(0.0..1.0).contains(&rate) {
            return Err(format!("SBF rate {rate} is outside [0, 1)"));
        }
        if groups == 0 {
            return Err("SBF groups must be at least 1".into());
        }
        Ok(ConvKind::Sbf { rate, groups, family })
    }

    /// Refuses a layer of this kind with `in_channels` inputs that the groups do not divide.
    pub fn check_channels(&self, layer: &str, in_channels: usize) -> Result<(), String> {
        match self {
            ConvKind::Sbf { groups, .. } if !in_channels.is_multiple_of(*groups) => Err(format!(
                "SBF groups = {groups} does not divide the {in_channels} input channels of {layer} \
                 (choose groups dividing every layer's input channels, or keep that layer dense)"
            )),
            _ => Ok(()),
        }
    }
}

/// Which kind each convolution of a model gets.
///
/// `first` is the stem convolution that reads the RGB image (3 input
/// channels: too few for templates to pay off, so it stays dense by default);
/// `body` is every other 3×3 convolution, unless an entry of `layers` names it.
/// `layers` holds `(prefix, kind)` overrides by layer name, later ones winning:
/// `stage2` names every layer of ResNet stage 2 (`stage2.block0.conv1`, ...),
/// `stage3.block2.conv2` one layer, `features.conv13` one VGG layer. The
/// transformation pays most where the two-stage path is fastest (wide layers at
/// high rates), so a plan can put it there and keep the rest dense, as the
/// paper's global pruning threshold spreads its rates unevenly across layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPlan {
    pub first: ConvKind,
    pub body: ConvKind,
    pub layers: Vec<(String, ConvKind)>,
}

impl ConvPlan {
    /// Every convolution dense.
    pub fn dense() -> ConvPlan {
        ConvPlan {
            first: ConvKind::Dense,
            body: ConvKind::Dense,
            layers: Vec::new(),
        }
    }

    /// Whether every kind the plan names is dense (then so is every slot).
    pub fn is_dense(&self) -> bool {
        self.first == ConvKind::Dense
            && self.body == ConvKind::Dense
            && self.layers.iter().all(|(_, kind)| *kind == ConvKind::Dense)
    }

    /// The kind of the layer called `layer` (`is_stem`: the convolution that reads the image):
    /// the last entry of `layers` whose prefix is the name or a dotted prefix of it, else
    /// `first` or `body`.
    pub fn kind_of(&self, layer: &str, is_stem: bool) -> &ConvKind {
        match self
            .layers
            .iter()
            .rev()
            .find(|(prefix, _)| prefix_names(prefix, layer))
        {
            Some((_, kind)) => kind,
            None if is_stem => &self.first,
            None => &self.body,
        }
    }

    /// Stable text for model descriptions: the body's kind, prefixed by
    /// `first=<kind>;` when the stem differs from the default (dense), followed by
    /// `;<layer prefix>=<kind>` for each entry of `layers`.
    pub fn describe(&self) -> String {
        let mut text = match self.first {
            ConvKind::Dense => self.body.describe(),
            ConvKind::Sbf { .. } => format!("first={};{}", self.first.describe(), self.body.describe()),
        };
        for (prefix, kind) in &self.layers {
            text += &format!(";{prefix}={}", kind.describe());
        }
        text
    }

    /// Parses [`ConvPlan::describe`]'s text: `;`-separated segments, each `first=<kind>`, a
    /// `<layer prefix>=<kind>` override or the body's kind (dense when absent). A plan of two
    /// parts may also separate them with the first `,` when the stem's kind has no settings
    /// (`first=dense,sbf:rate=0.5`).
    pub fn parse(text: &str) -> Result<ConvPlan, String> {
        if let Some(rest) = text.strip_prefix("first=").filter(|_| !text.contains(';')) {
            let (first, body) = rest.split_once(',').ok_or_else(|| {
                format!("conv plan \"{text}\": first=<kind> must be followed by the body's kind")
            })?;
            return Ok(ConvPlan {
                first: ConvKind::parse(first)?,
                body: ConvKind::parse(body)?,
                layers: Vec::new(),
            });
        }
        let mut plan = ConvPlan::dense();
        let mut body_seen = false;
        for segment in text.split(';') {
            // `name=kind` names a layer; a kind's own text has no `=` before its `:`.
            match segment.split_once('=').filter(|(name, _)| !name.contains(':')) {
                Some(("first", kind)) => plan.first = ConvKind::parse(kind)?,
                Some((prefix, kind)) => {
                    let well_formed = !prefix.is_empty()
                        && prefix.split('.').all(|part| {
                            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        });
                    if !well_formed {
                        return Err(format!(
                            "conv plan \"{text}\": \"{prefix}\" is not a layer name (e.g. stage2, stage3.block0.conv1, features.conv5)"
                        ));
                    }
                    plan.layers.push((prefix.to_string(), ConvKind::parse(kind)?));
                }
                None if body_seen => {
                    return Err(format!(
                        "conv plan \"{text}\": two body kinds (name the layers of the second: <layer>=<kind>)"
                    ))
                }
                None => {
                    plan.body = ConvKind::parse(segment)?;
                    body_seen = true;
                }
            }
        }
        if !body_seen {
            return Err(format!(
                "conv plan \"{text}\" lacks the body's kind (start it with dense or sbf:rate=R,...)"
            ));
        }
        Ok(plan)
    }
}

/// Whether `prefix` names `layer`: the whole name, or its first dot-separated parts
/// (`stage2` names `stage2.block0.conv1`, not `stage20.block0.conv1`).
pub fn prefix_names(prefix: &str, layer: &str) -> bool {
    layer
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A convolution of a model, dense or SBF.
#[derive(Clone, Debug)]
pub enum ConvLayer {
    Dense(Conv2d),
    Sbf(SbfConv2d),
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
            ConvKind::Sbf { rate, groups, family } => {
                let transformed = (*rate as f64 * out_channels as f64).round() as usize;
                let templates = out_channels.saturating_sub(transformed).max(1);
                let config = SbfConfig {
                    family: *family,
                    ..SbfConfig::new(config.stride, config.padding, *groups)
                };
                ConvLayer::Sbf(SbfConv2d::new(
                    store,
                    name,
                    in_channels,
                    out_channels,
                    templates,
                    kernel,
                    config,
                    false,
                    rng,
                ))
            }
        }
    }

    /// x [N, C, H, W] → y [N, F, Ho, Wo]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        match self {
            ConvLayer::Dense(conv) => conv.forward(tape, x),
            ConvLayer::Sbf(conv) => conv.forward(tape, x),
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.in_channels,
            ConvLayer::Sbf(conv) => conv.in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.out_channels,
            ConvLayer::Sbf(conv) => conv.out_channels,
        }
    }

    pub fn kernel(&self) -> usize {
        match self {
            ConvLayer::Dense(conv) => conv.kernel,
            ConvLayer::Sbf(conv) => conv.kernel,
        }
    }

    pub fn config(&self) -> ConvConfig {
        match self {
            ConvLayer::Dense(conv) => conv.config,
            ConvLayer::Sbf(conv) => ConvConfig {
                stride: conv.config.stride,
                padding: conv.config.padding,
            },
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
            ConvLayer::Sbf(conv) => {
                store.value(conv.templates).len()
                    + store.value(conv.transforms).len()
                    + conv.bias.map_or(0, |b| store.value(b).len())
            }
        }
    }

    /// Multiply-accumulates of the forward pass for one image of
    /// `height`×`width`: dense = F·Ho·Wo·C·K²; SBF: see `nn::cost`.
    pub fn macs(&self, height: usize, width: usize) -> usize {
        self.cost("", height, width).macs
    }

    /// Parameters and MACs per image of `height`×`width`, beside the dense conv of the same shape.
    pub fn cost(&self, name: &str, height: usize, width: usize) -> LayerCost {
        let (h_out, w_out) = self.output_size(height, width);
        match self {
            ConvLayer::Dense(conv) => LayerCost::dense(
                name,
                conv.in_channels,
                conv.out_channels,
                conv.kernel,
                h_out,
                w_out,
                conv.bias.is_some(),
            ),
            ConvLayer::Sbf(conv) => conv.cost(name, height, width),
        }
    }

    /// Short type name for layer tables, e.g. "conv3x3", "sbf3x3 4/16" (M/N templates).
    pub fn kind_name(&self) -> String {
        match self {
            ConvLayer::Dense(conv) => format!("conv{0}x{0}", conv.kernel),
            ConvLayer::Sbf(conv) => format!(
                "sbf{0}x{0} {1}/{2}",
                conv.kernel,
                conv.num_templates(),
                conv.out_channels
            ),
        }
    }

    /// The SBF layer, if this slot is one.
    pub fn as_sbf_mut(&mut self) -> Option<&mut SbfConv2d> {
        match self {
            ConvLayer::Sbf(conv) => Some(conv),
            ConvLayer::Dense(_) => None,
        }
    }

    /// The weight of the dense conv that computes the same function: a dense layer's weight, an
    /// SBF layer's effective filters Weff [N, C, K, K] (exact).
    pub fn dense_weight(&self, store: &ParamStore) -> crate::tensor::Tensor {
        match self {
            ConvLayer::Dense(conv) => store.value(conv.weight).clone(),
            ConvLayer::Sbf(conv) => crate::ops::sbf::effective_filters(
                store.value(conv.templates),
                store.value(conv.transforms),
                &conv.assignment,
                conv.config.groups,
                conv.config.family,
            ),
        }
    }

    /// The layer's parameters: weight (and bias) of a dense conv; templates, transforms (and bias)
    /// of an SBF layer.
    pub fn param_ids(&self) -> Vec<crate::autograd::ParamId> {
        match self {
            ConvLayer::Dense(conv) => std::iter::once(conv.weight).chain(conv.bias).collect(),
            ConvLayer::Sbf(conv) => [conv.templates, conv.transforms]
                .into_iter()
                .chain(conv.bias)
                .collect(),
        }
    }

    /// The SBF layer, if this slot is one.
    pub fn as_sbf(&self) -> Option<&SbfConv2d> {
        match self {
            ConvLayer::Sbf(conv) => Some(conv),
            ConvLayer::Dense(_) => None,
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
        assert_eq!(ConvPlan::parse(&plan.describe()), Ok(plan));
        assert_eq!(ConvPlan::parse("dense"), Ok(ConvPlan::dense()));
        assert_eq!(ConvPlan::parse("first=dense,dense"), Ok(ConvPlan::dense()));
        assert!(ConvPlan::parse("sparse").is_err());
        let sbf = ConvPlan::parse("sbf:rate=0.5").unwrap();
        assert_eq!(
            sbf.body,
            ConvKind::Sbf {
                rate: 0.5,
                groups: 2,
                family: TransformFamily::Scalar
            }
        );
        assert_eq!(sbf.describe(), "sbf:rate=0.5,groups=2");
        for text in [
            "sbf:rate=0.25,groups=4,family=affine",
            "first=sbf:rate=0.5,groups=1;sbf:rate=0.75,groups=2",
            "first=sbf:rate=0,groups=1,family=rotation;dense",
        ] {
            let plan = ConvPlan::parse(text).unwrap();
            assert_eq!(plan.describe(), text);
        }
    }

    #[test]
    fn layer_entries_pick_the_kind_of_the_layers_they_name() {
        let text = "dense;stage2=sbf:rate=0.9,groups=2;stage2.block0.conv1=dense";
        let plan = ConvPlan::parse(text).unwrap();
        assert_eq!(plan.describe(), text);
        assert!(!plan.is_dense());
        let sbf = ConvKind::parse("sbf:rate=0.9,groups=2").unwrap();
        assert_eq!(plan.kind_of("conv1", true), &ConvKind::Dense);
        assert_eq!(plan.kind_of("stage1.block2.conv2", false), &ConvKind::Dense);
        assert_eq!(plan.kind_of("stage2.block1.conv2", false), &sbf);
        assert_eq!(plan.kind_of("stage2.block0.conv2", false), &sbf);
        // The later, narrower entry wins; a prefix must end at a dot.
        assert_eq!(plan.kind_of("stage2.block0.conv1", false), &ConvKind::Dense);
        assert_eq!(plan.kind_of("stage20.block0.conv1", false), &ConvKind::Dense);
        // The stem and the body keep their roles beside the entries.
        let plan = ConvPlan::parse("first=sbf:rate=0,groups=1;sbf:rate=0.5;stage3=dense").unwrap();
        assert!(matches!(
            plan.kind_of("conv1", true),
            ConvKind::Sbf { groups: 1, .. }
        ));
        assert!(matches!(
            plan.kind_of("stage1.block0.conv1", false),
            ConvKind::Sbf { groups: 2, .. }
        ));
        assert_eq!(plan.kind_of("stage3.block0.conv1", false), &ConvKind::Dense);
        assert!(ConvPlan::parse("dense;stage3=dense").unwrap().is_dense());
        assert_plans_refused(&[
            ("stage3=sbf:rate=0.5", "lacks the body's kind"),
            ("dense;sbf:rate=0.5", "two body kinds"),
            ("dense;stage 3=dense", "is not a layer name"),
            ("dense;stage3.=dense", "is not a layer name"),
            ("dense;stage3=sparse", "unknown conv kind"),
        ]);
    }

    /// Each plan text is refused with an error that contains its reason.
    fn assert_plans_refused(cases: &[(&str, &str)]) {
        for (text, reason) in cases {
            let err = ConvPlan::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn bad_sbf_settings_are_refused_with_the_reason() {
        assert_plans_refused(&[
            ("sbf:rate=1", "outside [0, 1)"),
            ("sbf:rate=-0.1", "outside [0, 1)"),
            ("sbf:groups=2", "lacks rate"),
            ("sbf:rate=0.5,groups=0", "at least 1"),
            ("sbf:rate=0.5,shape=2", "unknown SBF setting"),
            ("sbf:rate=0.5,family=shear", "unknown transform family"),
            ("sbf:rate=x", "bad SBF setting"),
        ]);
        let kind = ConvKind::parse("sbf:rate=0.5,groups=4").unwrap();
        assert!(kind.check_channels("l", 8).is_ok());
        assert!(kind
            .check_channels("l", 6)
            .unwrap_err()
            .contains("does not divide the 6"));
    }

    #[test]
    fn sbf_layer_counts_templates_and_masks() {
        let mut store = ParamStore::default();
        let mut rng = StdRng::seed_from_u64(1);
        let config = ConvConfig {
            stride: 1,
            padding: 1,
        };
        let kind = ConvKind::parse("sbf:rate=0.75,groups=2").unwrap();
        let layer = ConvLayer::new(&mut store, "c", &kind, 4, 8, 3, config, &mut rng);
        // M = 8 − 6 = 2 templates [2, 4, 3, 3]; 6 masks [6, 2, 3, 3].
        assert_eq!(layer.param_count(&store), 2 * 4 * 9 + 6 * 2 * 9);
        assert_eq!(layer.macs(8, 8), 64 * (2 * 4 * 9 + 6 * 2 * 9));
        assert_eq!(layer.kind_name(), "sbf3x3 2/8");
        assert_eq!(store.num_scalars(), layer.param_count(&store));
        let cost = layer.cost("c", 8, 8);
        assert_eq!(cost.dense_macs, 64 * 8 * 4 * 9);
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
