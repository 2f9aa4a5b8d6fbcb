//! `SbfConv2d`: the SBF layer. It owns M templates B [M, C, K, K], the
//! transforms of the N−M other outputs (scalar masks T [N−M, G, K, K] by
//! default), an optional bias `[N]`, and the template assignment.
//!
//! `y = sbf_conv2d(x; B, T) + bias`; see `ops::sbf` for the math and the two
//! computation paths.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::nn::cost::LayerCost;
use crate::ops::sbf::{effective_filters, sbf_conv2d, SbfConfig, TemplateAssignment, TransformFamily};
use crate::tensor::Tensor;
use rand::Rng;

/// How the transforms of a layer converted from a dense one start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformInit {
    /// The identity transform: every transformed output starts as a copy of its template
    /// (masks 1; affine [I|0]; angle 0).
    Identity,
    /// Scalar masks only: the per-tap, per-group least-squares fit of the discarded filter W_n
    /// to its template, `T[g,k] = Σ_{i∈g} W_n[i,k]·B_m[i,k] / Σ_{i∈g} B_m[i,k]²`
    /// (1 where the template's taps are all zero).
    LeastSquares,
}

/// Which template a newly transformed output copies at a pruning step
/// ([`SbfConv2d::reassign`]). Either way no template gets more than ⌈(N−M)/M⌉ copies (unless
/// earlier steps gave it more), so the fused kernels' slots stay as few as round-robin's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The template with the fewest copies so far, outputs in increasing order: from one step on
    /// an unpruned layer this is the paper's fixed round-robin, m(n) = n mod M over the
    /// transformed outputs.
    Balanced,
    /// The template whose least-squares masks reproduce the output's filter best: for every
    /// (output n, template m) pair the energy that the fit explains,
    /// `E(n, m) = Σ_{g,k} (Σ_{i∈g} W_n[i,k]·B_m[i,k])² / Σ_{i∈g} B_m[i,k]²`,
    /// then greedily the pairs in decreasing E while the template has room (an extension of the
    /// paper, measured in docs/results.md).
    BestFit,
}

impl TemplateChoice {
    /// "balanced" or "best-fit", the flag's and the checkpoint's text.
    pub fn name(self) -> &'static str {
        match self {
            TemplateChoice::Balanced => "balanced",
            TemplateChoice::BestFit => "best-fit",
        }
    }

    /// Parses [`TemplateChoice::name`]'s text.
    pub fn parse(text: &str) -> Option<TemplateChoice> {
        match text {
            "balanced" => Some(TemplateChoice::Balanced),
            "best-fit" => Some(TemplateChoice::BestFit),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SbfConv2d {
    /// B [M, C, K, K] (weight decay on).
    pub templates: ParamId,
    /// [N−M, G, K, K] scalar masks, [N−M, G, 2, 3] affine, [N−M, G, 1] rotation. No weight decay
    /// (a choice): without a batch norm after the layer it would pull the masks towards 0, i.e.
    /// towards plain pruning; with one, an output does not depend on its mask's scale and decay
    /// would only hold the mask's norm down (docs/sbf.md, "How the masks learn").
    pub transforms: ParamId,
    /// `[N]`, no weight decay; `None` when batch norm follows.
    pub bias: Option<ParamId>,
    pub assignment: TemplateAssignment,
    pub config: SbfConfig,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
}

impl SbfConv2d {
    /// A fresh layer: M random templates (Kaiming normal, fan-in C·K²), round-robin assignment
    /// (outputs 0..M are the templates, output n ≥ M transforms template n mod M), identity transforms.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        templates: usize,
        kernel: usize,
        config: SbfConfig,
        bias: bool,
        rng: &mut impl Rng,
    ) -> SbfConv2d {
        let assignment = TemplateAssignment::round_robin(out_channels, templates);
        let b = Tensor::kaiming_normal(&[templates, in_channels, kernel, kernel], rng);
        let t = identity_transforms(config.family, out_channels - templates, config.groups, kernel);
        let bias = bias.then(|| Tensor::zeros(&[out_channels]));
        SbfConv2d::from_parts(store, name, b, t, bias, assignment, config)
    }

    /// Converts a dense weight [N, C, K, K] (and bias `[N]`): the filters at `kept_outputs` become the
    /// templates, in place (`kept_outputs[k]` is template k and keeps its output channel); every other
    /// output is transformed from template r mod M (r: its rank among the pruned positions).
    pub fn from_dense(
        store: &mut ParamStore,
        name: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        kept_outputs: &[usize],
        config: SbfConfig,
        init: TransformInit,
    ) -> SbfConv2d {
        let (templates, transforms, assignment) = dense_to_parts(name, weight, kept_outputs, &config, init);
        if let Some(bias) = bias {
            assert_eq!(
                bias.shape,
                [weight.dim(0)],
                "SbfConv2d::from_dense {name}: bias shape {:?}",
                bias.shape
            );
        }
        SbfConv2d::from_parts(
            store,
            name,
            templates,
            transforms,
            bias.cloned(),
            assignment,
            config,
        )
    }

    /// Re-selects the templates in place (a step of the pruning ramp): the filters at
    /// `kept_outputs` stay templates at their output positions. A transformed output whose
    /// template is kept keeps its template and its (trained) mask. Every other output that is not
    /// kept (newly pruned, or orphaned because its template was pruned) goes to a template chosen
    /// by `choice` ([`TemplateChoice`]), with a mask initialised by `init` from its current
    /// effective filter. The ParamIds stay; the values AND gradients of `templates` and
    /// `transforms` get new shapes, so any optimizer state kept for them must be reset.
    pub fn reassign(
        &mut self,
        store: &mut ParamStore,
        kept_outputs: &[usize],
        init: TransformInit,
        choice: TemplateChoice,
    ) {
        let old = self.assignment.clone();
        let weff = self.effective_weight(store);
        let old_identity = old.identity_outputs();
        let outputs = self.out_channels;
        let mut new_template = vec![None; outputs];
        for (k, &n) in kept_outputs.iter().enumerate() {
            new_template[n] = Some(k);
        }
        let mut template_of = vec![usize::MAX; outputs];
        let mut copies = vec![0usize; kept_outputs.len()];
        let mut keeps_mask = vec![false; outputs];
        for n in 0..outputs {
            if let Some(k) = new_template[n] {
                template_of[n] = k;
            } else if let (Some(_), Some(k)) =
                (old.mask_row[n], new_template[old_identity[old.template_of[n]]])
            {
                (template_of[n], keeps_mask[n]) = (k, true);
                copies[k] += 1;
            }
        }
        let templates = rows_of(&weff, kept_outputs);
        if choice == TemplateChoice::BestFit {
            let capacity = (outputs - kept_outputs.len()).div_ceil(kept_outputs.len());
            best_fit_templates(
                &weff,
                &templates,
                self.config.groups,
                capacity,
                &mut template_of,
                &mut copies,
            );
        }
        for n in 0..outputs {
            if template_of[n] == usize::MAX {
                let k = (0..copies.len())
                    .min_by_key(|&k| copies[k])
                    .expect("at least one template");
                template_of[n] = k;
                copies[k] += 1;
            }
        }
        let assignment = TemplateAssignment::with_templates(kept_outputs, template_of);
        let (groups, kernel, family) = (self.config.groups, self.kernel, self.config.family);
        let transformed = outputs - kept_outputs.len();
        let mut transforms = identity_transforms(family, transformed, groups, kernel);
        let row_len = transforms.len() / transformed.max(1);
        let old_transforms = store.value(self.transforms);
        for n in (0..outputs).filter(|&n| keeps_mask[n]) {
            let (to, from) = (assignment.mask_row[n].unwrap(), old.mask_row[n].unwrap());
            transforms.data[to * row_len..(to + 1) * row_len]
                .copy_from_slice(&old_transforms.data[from * row_len..(from + 1) * row_len]);
        }
        if init == TransformInit::LeastSquares {
            fit_masks(
                &weff,
                &templates,
                &assignment,
                &self.config,
                &mut transforms,
                |n| !keeps_mask[n],
            );
        }
        for (id, value) in [(self.templates, templates), (self.transforms, transforms)] {
            let param = &mut store.params[id.0];
            param.grad = Tensor::zeros(&value.shape);
            param.value = value;
        }
        self.assignment = assignment;
    }

    /// Gives the layer `assignment`, with zero templates and masks of the shapes it needs (a
    /// checkpoint's values are to be loaded into them). Optimizer state must be reset as after
    /// [`SbfConv2d::reassign`].
    pub fn set_assignment(&mut self, store: &mut ParamStore, assignment: TemplateAssignment) {
        let templates = assignment.templates();
        let shapes = [
            vec![templates, self.in_channels, self.kernel, self.kernel],
            self.config
                .family
                .param_shape(self.out_channels - templates, self.config.groups, self.kernel),
        ];
        for (id, shape) in [self.templates, self.transforms].into_iter().zip(shapes) {
            let param = &mut store.params[id.0];
            param.value = Tensor::zeros(&shape);
            param.grad = Tensor::zeros(&shape);
        }
        self.assignment = assignment;
    }

    /// Registers given tensors (templates, transforms, bias) as the layer's parameters.
    pub fn from_parts(
        store: &mut ParamStore,
        name: &str,
        templates: Tensor,
        transforms: Tensor,
        bias: Option<Tensor>,
        assignment: TemplateAssignment,
        config: SbfConfig,
    ) -> SbfConv2d {
        let [m, in_channels, kernel, _] = templates.nchw("SbfConv2d");
        let out_channels = assignment.outputs();
        assignment.validate(&format!("SbfConv2d {name}"), out_channels, m);
        let expected = config.family.param_shape(out_channels - m, config.groups, kernel);
        assert_eq!(transforms.shape, expected, "SbfConv2d {name}: transforms shape");
        SbfConv2d {
            templates: store.add(format!("{name}.templates"), templates, true),
            transforms: store.add(format!("{name}.transforms"), transforms, false),
            bias: bias.map(|b| store.add(format!("{name}.bias"), b, false)),
            assignment,
            config,
            in_channels,
            out_channels,
            kernel,
        }
    }

    /// M
    pub fn num_templates(&self) -> usize {
        self.out_channels - self.assignment.mask_row.iter().filter(|r| r.is_some()).count()
    }

    /// x [Bt, C, H, W] → y [Bt, N, Ho, Wo]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let b = tape.param(self.templates);
        let t = tape.param(self.transforms);
        let bias = self.bias.map(|id| tape.param(id));
        sbf_conv2d(tape, x, b, t, bias, &self.assignment, self.config)
    }

    /// The dense weight [N, C, K, K] this layer computes with (Weff).
    pub fn effective_weight(&self, store: &ParamStore) -> Tensor {
        effective_filters(
            store.value(self.templates),
            store.value(self.transforms),
            &self.assignment,
            self.config.groups,
            self.config.family,
        )
    }

    /// Parameters and MACs per image for an input of `in_height`×`in_width`.
    pub fn cost(&self, name: &str, in_height: usize, in_width: usize) -> LayerCost {
        let (k, s, p) = (self.kernel, self.config.stride, self.config.padding);
        LayerCost::sbf(
            name,
            self.in_channels,
            self.out_channels,
            self.num_templates(),
            k,
            self.config.groups,
            self.config.family,
            (in_height + 2 * p - k) / s + 1,
            (in_width + 2 * p - k) / s + 1,
            self.bias.is_some(),
        )
    }
}

/// Splits a dense weight [N, C, K, K] into templates (the filters at `kept_outputs`, in that
/// order), transforms (identity or least-squares masks) and the assignment that keeps each
/// kept filter at its output and spreads the others round-robin over the templates.
fn dense_to_parts(
    name: &str,
    weight: &Tensor,
    kept_outputs: &[usize],
    config: &SbfConfig,
    init: TransformInit,
) -> (Tensor, Tensor, TemplateAssignment) {
    let [out_channels, in_channels, kernel, kernel_w] = weight.nchw("SbfConv2d::from_dense");
    assert_eq!(
        kernel, kernel_w,
        "SbfConv2d::from_dense {name}: weight {:?} is not square",
        weight.shape
    );
    assert!(
        config.groups > 0 && in_channels.is_multiple_of(config.groups),
        "SbfConv2d::from_dense: groups G = {} must divide the {in_channels} input channels of {name}",
        config.groups
    );
    let assignment = TemplateAssignment::from_kept_outputs(out_channels, kept_outputs);
    let b = rows_of(weight, kept_outputs);
    let transformed = out_channels - kept_outputs.len();
    let mut t = identity_transforms(config.family, transformed, config.groups, kernel);
    if init == TransformInit::LeastSquares {
        fit_masks(weight, &b, &assignment, config, &mut t, |_| true);
    }
    (b, t, assignment)
}

/// [`TemplateChoice::BestFit`]: gives every output n with `template_of[n] == usize::MAX` the
/// template m whose least-squares masks explain most of its filter `weight[n]`, taking the
/// (n, m) pairs in decreasing explained energy E(n, m) (ties: smaller n, then smaller m) and
/// skipping templates that already have `capacity` copies. `copies[m]` counts them; an output
/// that finds no room keeps usize::MAX.
fn best_fit_templates(
    weight: &Tensor,
    templates: &Tensor,
    groups: usize,
    capacity: usize,
    template_of: &mut [usize],
    copies: &mut [usize],
) {
    let [_, in_channels, kernel, _] = weight.nchw("best_fit_templates");
    let (taps, cg) = (kernel * kernel, in_channels / groups);
    let explained = |n: usize, m: usize| -> f64 {
        let mut energy = 0.0;
        for g in 0..groups {
            for k in 0..taps {
                let (wb, bb) = fit_sums(weight, n, templates, m, g * cg..(g + 1) * cg, k);
                if bb > 0.0 {
                    energy += wb * wb / bb;
                }
            }
        }
        energy
    };
    let open: Vec<usize> = (0..template_of.len())
        .filter(|&n| template_of[n] == usize::MAX)
        .collect();
    let mut pairs: Vec<(f64, usize, usize)> = open
        .iter()
        .flat_map(|&n| (0..copies.len()).map(move |m| (n, m)))
        .map(|(n, m)| (explained(n, m), n, m))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, n, m) in pairs {
        if template_of[n] == usize::MAX && copies[m] < capacity {
            template_of[n] = m;
            copies[m] += 1;
        }
    }
}

/// The filters of `weight` [N, C, K, K] at `outputs`, in that order: [outputs.len(), C, K, K].
fn rows_of(weight: &Tensor, outputs: &[usize]) -> Tensor {
    let [_, in_channels, kernel, _] = weight.nchw("rows_of");
    let filter = in_channels * kernel * kernel;
    let mut rows = Tensor::zeros(&[outputs.len(), in_channels, kernel, kernel]);
    for (k, &n) in outputs.iter().enumerate() {
        rows.data[k * filter..(k + 1) * filter].copy_from_slice(&weight.data[n * filter..(n + 1) * filter]);
    }
    rows
}

/// Sets the masks of the transformed outputs n with `refit(n)` to the per-tap least-squares fit
/// of the filter `weight[n]` by its template `templates[m(n)]`:
///
/// ```text
/// T[g, k] = Σ_{i∈g} W_n[i,k]·B_m[i,k] / Σ_{i∈g} B_m[i,k]²      (1 where the template's taps are 0)
/// ```
///
/// The zero family has no masks to fit (its transformed outputs are pruned); only scalar masks
/// can be fitted.
fn fit_masks(
    weight: &Tensor,
    templates: &Tensor,
    assignment: &TemplateAssignment,
    config: &SbfConfig,
    masks: &mut Tensor,
    refit: impl Fn(usize) -> bool,
) {
    if config.family == TransformFamily::Zero {
        return;
    }
    assert_eq!(
        config.family,
        TransformFamily::Scalar,
        "the least-squares init fits scalar masks only"
    );
    let [out_channels, in_channels, kernel, _] = weight.nchw("fit_masks");
    let (taps, cg) = (kernel * kernel, in_channels / config.groups);
    for n in (0..out_channels).filter(|&n| refit(n)) {
        let Some(r) = assignment.mask_row[n] else { continue };
        let m = assignment.template_of[n];
        for g in 0..config.groups {
            for k in 0..taps {
                let (wb, bb) = fit_sums(weight, n, templates, m, g * cg..(g + 1) * cg, k);
                masks.data[(r * config.groups + g) * taps + k] =
                    if bb > 0.0 { (wb / bb) as f32 } else { 1.0 };
            }
        }
    }
}

/// The two sums of the per-tap least-squares fit of filter `n` of `weight` [N, C, K, K] by filter
/// `m` of `templates` [M, C, K, K] over the input channels `channels` (one group) at tap `k`:
/// (Σ_i W_n[i,k]·B_m[i,k], Σ_i B_m[i,k]²), in f64. The mask is their ratio and the energy it
/// explains (Σ W·B)² / Σ B².
fn fit_sums(
    weight: &Tensor,
    n: usize,
    templates: &Tensor,
    m: usize,
    channels: std::ops::Range<usize>,
    k: usize,
) -> (f64, f64) {
    let [_, in_channels, kernel, _] = weight.nchw("fit_sums");
    let taps = kernel * kernel;
    let (mut wb, mut bb) = (0.0f64, 0.0f64);
    for i in channels {
        let bv = templates.data[(m * in_channels + i) * taps + k] as f64;
        wb += weight.data[(n * in_channels + i) * taps + k] as f64 * bv;
        bb += bv * bv;
    }
    (wb, bb)
}

/// Identity transforms for `transformed` outputs and `groups` groups, in the family's shape.
pub fn identity_transforms(
    family: TransformFamily,
    transformed: usize,
    groups: usize,
    kernel: usize,
) -> Tensor {
    let data = (0..transformed * groups)
        .flat_map(|_| family.identity(kernel))
        .collect();
    Tensor::from_vec(&family.param_shape(transformed, groups, kernel), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Mode;
    use crate::nn::Conv2d;
    use crate::ops::{ConvConfig, SbfPath};
    use crate::tensor::max_scaled_difference;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn a_dense_layer_converted_with_all_filters_kept_computes_the_same_output() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut store = ParamStore::default();
        let conv_config = ConvConfig {
            stride: 1,
            padding: 1,
        };
        let dense = Conv2d::new(&mut store, "dense", 4, 6, 3, conv_config, true, &mut rng);
        store.value_mut(dense.bias.unwrap()).data = vec![0.1, -0.2, 0.3, 0.0, 0.5, -0.6];
        let weight = store.value(dense.weight).clone();
        let bias = store.value(dense.bias.unwrap()).clone();
        let sbf = SbfConv2d::from_dense(
            &mut store,
            "sbf",
            &weight,
            Some(&bias),
            &[0, 1, 2, 3, 4, 5],
            SbfConfig::new(1, 1, 2),
            TransformInit::Identity,
        );
        let x = Tensor::normal(&[2, 4, 5, 6], 1.0, &mut rng);
        let mut tape = Tape::new(&store, Mode::Eval);
        let xv = tape.input(x);
        let (yd, ys) = (dense.forward(&mut tape, xv), sbf.forward(&mut tape, xv));
        let d = max_scaled_difference(&tape.value(ys).data, &tape.value(yd).data, 1e-5, 1e-5);
        assert!(d <= 1.0, "{d}");
    }

    #[test]
    fn least_squares_masks_fit_pruned_filters_that_are_scaled_templates() {
        // Filter 2 = 0.5·filter 0 on group 0 taps and −2·filter 0 on group 1: the fit is exact.
        let mut rng = StdRng::seed_from_u64(2);
        let mut weight = Tensor::normal(&[3, 4, 3, 3], 1.0, &mut rng);
        for i in 0..4 {
            for k in 0..9 {
                let scale = if i < 2 { 0.5 } else { -2.0 };
                weight.data[(2 * 4 + i) * 9 + k] = scale * weight.data[i * 9 + k];
            }
        }
        let mut store = ParamStore::default();
        let layer = SbfConv2d::from_dense(
            &mut store,
            "l",
            &weight,
            None,
            &[0, 1],
            SbfConfig::new(1, 1, 2),
            TransformInit::LeastSquares,
        );
        assert_eq!(layer.assignment.template_of, vec![0, 1, 0]);
        let weff = layer.effective_weight(&store);
        assert!(max_scaled_difference(&weff.data, &weight.data, 1e-5, 1e-5) <= 1.0);
        let t = store.value(layer.transforms);
        assert!(t.data[..9].iter().all(|v| (v - 0.5).abs() < 1e-5));
        assert!(t.data[9..].iter().all(|v| (v + 2.0).abs() < 1e-5));
    }

    #[test]
    fn reassign_keeps_the_kept_filters_and_shrinks_the_templates_in_place() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut store = ParamStore::default();
        let weight = Tensor::normal(&[6, 4, 3, 3], 1.0, &mut rng);
        let mut layer = SbfConv2d::from_dense(
            &mut store,
            "l",
            &weight,
            None,
            &[0, 2, 3, 5],
            SbfConfig::new(1, 1, 2),
            TransformInit::Identity,
        );
        let before = layer.effective_weight(&store);
        let templates_id = layer.templates;
        layer.reassign(
            &mut store,
            &[2, 5],
            TransformInit::LeastSquares,
            TemplateChoice::Balanced,
        );
        assert_eq!(layer.templates, templates_id);
        assert_eq!(layer.num_templates(), 2);
        assert_eq!(store.value(layer.templates).shape, vec![2, 4, 3, 3]);
        assert_eq!(store.grad(layer.transforms).shape, vec![4, 2, 3, 3]);
        let after = layer.effective_weight(&store);
        for n in [2, 5] {
            assert_eq!(
                after.data[n * 36..(n + 1) * 36],
                before.data[n * 36..(n + 1) * 36],
                "kept filter {n}"
            );
        }
        // The layer still runs.
        let mut tape = Tape::new(&store, Mode::Eval);
        let x = tape.input(Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng));
        let y = layer.forward(&mut tape, x);
        assert_eq!(tape.value(y).shape, vec![1, 6, 5, 5]);
    }

    /// A layer of 6 filters on 4 channels (G = 2) whose filter `n` is, for each (source, n, scales)
    /// given, filter `source` scaled by scales[g] on group g; reassigned to keep `kept`.
    fn reassigned(
        copies: &[(usize, usize, [f32; 2])],
        kept: &[usize],
        choice: TemplateChoice,
    ) -> (SbfConv2d, ParamStore, Tensor) {
        let mut weight = Tensor::normal(&[6, 4, 3, 3], 1.0, &mut StdRng::seed_from_u64(5));
        for &(source, n, scales) in copies {
            for i in 0..4 {
                for k in 0..9 {
                    weight.data[(n * 4 + i) * 9 + k] = scales[i / 2] * weight.data[(source * 4 + i) * 9 + k];
                }
            }
        }
        let mut store = ParamStore::default();
        let config = SbfConfig::new(1, 1, 2);
        let all: Vec<usize> = (0..6).collect();
        let mut layer = SbfConv2d::from_dense(
            &mut store,
            "l",
            &weight,
            None,
            &all,
            config,
            TransformInit::Identity,
        );
        layer.reassign(&mut store, kept, TransformInit::LeastSquares, choice);
        (layer, store, weight)
    }

    #[test]
    fn best_fit_gives_each_pruned_filter_the_template_it_is_a_masked_copy_of() {
        let copies = [(2, 3, [0.5, -2.0]), (0, 4, [1.5, 0.25]), (1, 5, [-1.0, 3.0])];
        let (layer, store, weight) = reassigned(&copies, &[0, 1, 2], TemplateChoice::BestFit);
        assert_eq!(layer.assignment.template_of, vec![0, 1, 2, 2, 0, 1]);
        let weff = layer.effective_weight(&store);
        assert!(max_scaled_difference(&weff.data, &weight.data, 1e-5, 1e-5) <= 1.0);
        // Balanced ignores the filters: outputs 3, 4, 5 go to templates 0, 1, 2 and the fit is not exact.
        let (layer, store, weight) = reassigned(&copies, &[0, 1, 2], TemplateChoice::Balanced);
        assert_eq!(layer.assignment.template_of, vec![0, 1, 2, 0, 1, 2]);
        assert!(max_scaled_difference(&layer.effective_weight(&store).data, &weight.data, 1e-5, 1e-5) > 1.0);
    }

    #[test]
    fn best_fit_gives_no_template_more_than_its_share_of_copies() {
        // Outputs 2..6 all copy filter 0, but two templates share four transformed outputs: two each.
        let copies: Vec<_> = (2..6).map(|n| (0, n, [1.0 + n as f32, -0.5])).collect();
        let (layer, _, _) = reassigned(&copies, &[0, 1], TemplateChoice::BestFit);
        let to_first = (2..6).filter(|&n| layer.assignment.template_of[n] == 0).count();
        assert_eq!(to_first, 2, "{:?}", layer.assignment.template_of);
    }

    #[test]
    fn a_fresh_layer_has_kaiming_templates_identity_masks_and_trains_through_both_paths() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut store = ParamStore::default();
        for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
            let config = SbfConfig {
                path,
                ..SbfConfig::new(2, 1, 2)
            };
            let layer = SbfConv2d::new(&mut store, "l", 8, 16, 4, 3, config, true, &mut rng);
            assert_eq!(store.value(layer.templates).shape, vec![4, 8, 3, 3]);
            assert!(store.value(layer.transforms).data.iter().all(|&v| v == 1.0));
            let std = (store
                .value(layer.templates)
                .data
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                / 288.0)
                .sqrt();
            assert!((std - (2.0f32 / 72.0).sqrt()).abs() < 0.05, "template std {std}");
            let mut tape = Tape::new(&store, Mode::Train);
            let x = tape.input(Tensor::normal(&[2, 8, 9, 9], 1.0, &mut rng));
            let y = layer.forward(&mut tape, x);
            assert_eq!(tape.value(y).shape, vec![2, 16, 5, 5]);
            let seed = Tensor::full(&[2, 16, 5, 5], 1.0);
            tape.backward_with(y, seed);
            let grads: Vec<_> = tape.param_gradients().map(|(id, _)| id).collect();
            assert_eq!(
                grads.len(),
                3,
                "{path:?}: templates, transforms and bias all get gradients"
            );
            let cost = layer.cost("l", 9, 9);
            assert_eq!(cost.params, 9 * 8 * 4 + 9 * 2 * 12 + 16);
        }
    }
}
