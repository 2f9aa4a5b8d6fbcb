//! sbf_conv2d: the SBF layer as a differentiable op.
//!
//! N outputs share M < N templates B [M, C, K, K]. A template's identity output
//! is a plain convolution with it; every other output n is a cheap transform
//! of template m(n), one transform per input-channel group (G groups of C/G
//! channels):
//!
//! ```text
//!   Weff[n,i,kh,kw] = B[m(n),i,kh,kw] · T[row(n), g(i), kh, kw]        (scalar masks)
//!   y = conv2d(x, Weff) + bias
//! ```
//!
//! Two mathematically identical ways to compute it:
//!
//! - **two-stage** (`kernels::sbf`, scalar masks): stage 1, a grouped 1×1
//! ```text
//!   convolution of x with each of the K² tap slices of B, giving the maps
//!   P [Bt, G, K², M, plane] (plane = H·W at stride 1, Ho·Wo otherwise:
//!   see `kernels::sbf`); stage 2, a gather that sums for each output the
//!   G·K² maps of its template, scaled by its mask values. Cost per output pixel:
//!   K²·C·M + K²·G·(N−M) multiply-accumulates instead of K²·C·N.
//!   Both stages run per image (per band of rows for stride-1 "same" convs), with
//!   P[b] in a per-worker scratch buffer (the batch's P is never materialised;
//!   backward recomputes P[b]).
//!   Backward ("view B"): dT from the (recomputed) maps, dP as the transpose of
//!   the gather, then dB and dX as the gradients of the grouped 1×1 stage.
//! ```
//! - **effective filters** (`kernels::sbf_filters` + the dense conv): materialise
//!   Weff, convolve. Backward ("view A"): the conv's dWeff, then the chain rule
//!   through Weff into dB and dT; dX is the conv's input gradient.
//!
//! [`SbfPath::Auto`] takes the two-stage path only when it needs clearly fewer
//! multiply-accumulates than the dense conv (the ratio is measured: see the constant):
//! K²·C·M + K²·G·(N−M) < [`TWO_STAGE_MAX_COST_RATIO`]·K²·C·N. At low pruning
//! rates (e.g. during the pruning ramp) the dense conv is cheaper, and the maps
//! P (K²·G·M planes per image) would dwarf the output. Strided layers also take
//! the effective filters: their two-stage path (a per-tap im2col, see
//! `kernels::sbf`) was slower than the dense conv at every rate measured. The affine and rotation
//! families always use the effective filters (exact: Weff = S·B per group; a
//! bilinear two-stage kernel is not implemented).

use crate::autograd::{Tape, Var};
use crate::kernels::sbf::{self as kernel, SbfShape};
use crate::kernels::sbf_filters;
use crate::ops::conv::{accumulate_channel_sums, add_channel_bias};
use crate::ops::{conv2d, ConvConfig};
use crate::tensor::Tensor;

pub use crate::kernels::sbf::TemplateAssignment;
pub use crate::kernels::sbf_filters::TransformFamily;

/// `Auto` takes the two-stage path when its MACs are below this fraction of the dense conv's.
///
/// The pure MAC criterion (ratio 1) would pick the two-stage path at any M < N
/// (it saves K²·(C−G)·(N−M) MACs per pixel), but a MAC of the two-stage path
/// is dearer than one of the dense conv: its GEMMs are thin (C/G deep), it
/// writes and re-reads the maps P (K²·G·M planes per image, G·K²·M/N times the
/// output), its gather is memory-bound, and its backward recomputes stage 1.
///
/// Rule: take the two-stage path when its predicted time is lower, i.e. when
/// `MAC ratio < e`, e = (two-stage MACs per second) / (dense MACs per second),
/// measured as speed-up × MAC ratio by `benchmark::sbf::run` (`RAYON_NUM_THREADS=1
/// cargo run --release --example sbf_bench -- 128`, CPU time, 3×3 CIFAR ResNet
/// shapes, G = 2, on a shared 2-core AMD EPYC, so ±20 %). Forward + backward
/// (training, where the layer spends most of its time): e = 0.20–0.41, median 0.31,
/// and the two-stage path broke even at MAC ratio ≈ 0.35–0.40 (70 % of filters
/// transformed); forward alone: e = 0.21–0.73, median 0.42. 0.33 takes the
/// two-stage path where it was faster in training, and gives up little at inference.
pub const TWO_STAGE_MAX_COST_RATIO: f64 = 0.33;

/// Which of the two equivalent computations to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbfPath {
    /// Two-stage when it needs < TWO_STAGE_MAX_COST_RATIO of the dense conv's MACs (scalar masks only),
    /// else effective filters.
    Auto,
    /// Stage 1 (grouped 1×1 per tap) + stage 2 (gather). Scalar masks only.
    TwoStage,
    /// Materialise Weff and run the dense convolution.
    EffectiveFilters,
}

/// Geometry and options of an SBF layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbfConfig {
    pub stride: usize,
    pub padding: usize,
    /// G: input-channel groups of the 1×1 stage (must divide C).
    pub groups: usize,
    pub family: TransformFamily,
    pub path: SbfPath,
}

impl SbfConfig {
    /// Scalar masks, automatic path.
    pub fn new(stride: usize, padding: usize, groups: usize) -> SbfConfig {
        SbfConfig {
            stride,
            padding,
            groups,
            family: TransformFamily::Scalar,
            path: SbfPath::Auto,
        }
    }

    /// The path actually taken for C inputs, N outputs and M templates (never `Auto`):
    /// two-stage iff scalar masks, stride 1 and
    /// K²·C·M + K²·G·(N−M) < [`TWO_STAGE_MAX_COST_RATIO`] · K²·C·N.
    ///
    /// Stride 2, measured by `benchmark::sbf::run` (`sbf_bench 128`, 2026-11-26, 2 threads wall
    /// time and 1 thread CPU time): at 90 % of the filters transformed (4.8× and 6.7× fewer MACs)
    /// the two-stage forward + backward took 1.3–2.2× the dense conv's time for 16→32 at 32×32
    /// and 32→64 at 16×16, and at 50 and 70 % it was slower still or level.
    pub fn resolved_path(&self, in_channels: usize, outputs: usize, templates: usize) -> SbfPath {
        match (self.path, self.family) {
            (SbfPath::Auto, TransformFamily::Scalar) if self.stride > 1 => SbfPath::EffectiveFilters,
            (SbfPath::Auto, TransformFamily::Scalar) => {
                let two_stage = (in_channels * templates + self.groups * (outputs - templates)) as f64;
                if two_stage < TWO_STAGE_MAX_COST_RATIO * (in_channels * outputs) as f64 {
                    SbfPath::TwoStage
                } else {
                    SbfPath::EffectiveFilters
                }
            }
            (SbfPath::Auto, _) => SbfPath::EffectiveFilters,
            (path, _) => path,
        }
    }
}

/// Checks x [Bt, C, H, W], templates [M, C, K, K], transforms (family's shape for N−M outputs and G
/// groups) and the assignment; panics naming the op and every shape when they do not fit.
pub fn sbf_shape(
    op: &str,
    x: &Tensor,
    templates: &Tensor,
    transforms: &Tensor,
    assignment: &TemplateAssignment,
    config: &SbfConfig,
) -> SbfShape {
    let [batch, in_channels, in_height, in_width] = x.nchw(op);
    let [m, t_channels, kernel, kernel_w] = templates.nchw(op);
    assert!(
        t_channels == in_channels && kernel == kernel_w,
        "{op}: input {:?} and templates {:?} do not fit (templates must be [M, C, K, K] with C = input channels)",
        x.shape,
        templates.shape
    );
    let outputs = assignment.outputs();
    let shape = SbfShape {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels: outputs,
        templates: m,
        kernel,
        stride: config.stride,
        padding: config.padding,
        groups: config.groups,
    };
    shape.validate(op);
    assignment.validate(op, outputs, m);
    let expected = config.family.param_shape(outputs - m, config.groups, kernel);
    assert_eq!(
        transforms.shape,
        expected,
        "{op}: {} transforms for N = {outputs}, M = {m}, G = {}, K = {kernel} must have shape {expected:?}, got {:?}",
        config.family.name(),
        config.groups,
        transforms.shape
    );
    shape
}

/// Weff [N, C, K, K] from templates [M, C, K, K] and transforms (see `kernels::sbf_filters`).
pub fn effective_filters(
    templates: &Tensor,
    transforms: &Tensor,
    assignment: &TemplateAssignment,
    groups: usize,
    family: TransformFamily,
) -> Tensor {
    let [_, channels, kernel, _] = templates.nchw("effective_filters");
    let mut weff = Tensor::zeros(&[assignment.outputs(), channels, kernel, kernel]);
    sbf_filters::effective_filters(
        family,
        kernel,
        groups,
        assignment,
        &templates.data,
        &transforms.data,
        &mut weff.data,
    );
    weff
}

/// Differentiable [`effective_filters`]: Weff as a value on the tape.
pub fn sbf_effective_filters(
    tape: &mut Tape,
    templates: Var,
    transforms: Var,
    assignment: &TemplateAssignment,
    groups: usize,
    family: TransformFamily,
) -> Var {
    let weff = effective_filters(
        tape.value(templates),
        tape.value(transforms),
        assignment,
        groups,
        family,
    );
    let assignment = assignment.clone();
    tape.push(weff, &[templates, transforms], move |grad_weff, ctx| {
        let (b_value, t_value) = (ctx.value(templates), ctx.value(transforms));
        let kernel = b_value.dim(2);
        // Gradients are computed into locals so both can be borrowed at once.
        let mut grad_b = ctx.grad(templates).map(|g| vec![0.0; g.len()]);
        let mut grad_t = ctx.grad(transforms).map(|g| vec![0.0; g.len()]);
        sbf_filters::effective_filters_backward(
            family,
            kernel,
            groups,
            &assignment,
            &b_value.data,
            &t_value.data,
            &grad_weff.data,
            grad_b.as_deref_mut(),
            grad_t.as_deref_mut(),
        );
        if let (Some(local), Some(g)) = (grad_b, ctx.grad(templates)) {
            g.data.iter_mut().zip(local).for_each(|(a, b)| *a += b);
        }
        if let (Some(local), Some(g)) = (grad_t, ctx.grad(transforms)) {
            g.data.iter_mut().zip(local).for_each(|(a, b)| *a += b);
        }
    })
}

/// y = SBF(x; templates, transforms) + bias.
///
/// x [Bt, C, H, W], templates [M, C, K, K], transforms [N−M, G, K, K] (scalar) /
/// [N−M, G, 2, 3] (affine) / [N−M, G, 1] (rotation), bias `[N]` → y [Bt, N, Ho, Wo].
pub fn sbf_conv2d(
    tape: &mut Tape,
    x: Var,
    templates: Var,
    transforms: Var,
    bias: Option<Var>,
    assignment: &TemplateAssignment,
    config: SbfConfig,
) -> Var {
    let shape = sbf_shape(
        "sbf_conv2d",
        tape.value(x),
        tape.value(templates),
        tape.value(transforms),
        assignment,
        &config,
    );
    if let Some(b) = bias {
        assert_eq!(
            tape.value(b).shape,
            [shape.out_channels],
            "sbf_conv2d: bias shape {:?} does not match {} outputs",
            tape.value(b).shape,
            shape.out_channels
        );
    }
    match config.resolved_path(shape.in_channels, shape.out_channels, shape.templates) {
        SbfPath::TwoStage => {
            assert_eq!(
                config.family,
                TransformFamily::Scalar,
                "sbf_conv2d: the two-stage path implements scalar masks only; use SbfPath::EffectiveFilters \
                 or Auto for the {} family",
                config.family.name()
            );
            two_stage(tape, x, templates, transforms, bias, assignment, shape)
        }
        _ => {
            let weff = sbf_effective_filters(
                tape,
                templates,
                transforms,
                assignment,
                config.groups,
                config.family,
            );
            let conv = ConvConfig {
                stride: config.stride,
                padding: config.padding,
            };
            conv2d(tape, x, weff, bias, conv)
        }
    }
}

/// The two-stage forward and its view-B backward (scalar masks).
fn two_stage(
    tape: &mut Tape,
    x: Var,
    templates: Var,
    masks: Var,
    bias: Option<Var>,
    assignment: &TemplateAssignment,
    shape: SbfShape,
) -> Var {
    let plane = shape.out_plane();
    // Stage 1 — P[b,g,tap,m,·] = Σ_{i∈g} X[b,i,·]·B[m,i,kh,kw]           P[b]: [G, K², M, plane]
    // Stage 2 — Y[b,n,h,w] = Σ_g Σ_tap t(n,g,tap)·P[b,g,tap,m(n), read position of (h,w)]   Y: [Bt, N, Ho, Wo]
    // Fused per image: P[b] lives in a per-worker scratch buffer, gathered while in cache, and is
    // recomputed in backward instead of being kept for the whole batch (see kernels::sbf).
    let mut y = Tensor::zeros(&[
        shape.batch,
        shape.out_channels,
        shape.out_height(),
        shape.out_width(),
    ]);
    kernel::fused_forward(
        &shape,
        assignment,
        &tape.value(x).data,
        &tape.value(templates).data,
        &tape.value(masks).data,
        &mut y.data,
    );
    if let Some(b) = bias {
        add_channel_bias(&mut y.data, &tape.value(b).data, plane);
    }
    let assignment = assignment.clone();
    let inputs: Vec<Var> = [x, templates, masks].into_iter().chain(bias).collect();
    tape.push(y, &inputs, move |grad_y, ctx| {
        let r = &grad_y.data; // R = ∂L/∂Y [Bt, N, Ho, Wo]
        let (x_value, b_value, t_value) = (ctx.value(x), ctx.value(templates), ctx.value(masks));
        if let Some(grad_bias) = bias.and_then(|b| ctx.grad(b)) {
            accumulate_channel_sums(r, &mut grad_bias.data, plane);
        }
        // View B, per image (see kernels::sbf::two_stage_backward):
        //   dT[row(n),g,tap] = Σ R[b,n,h,w]·P[b,g,tap,m(n),·]        (P[b] recomputed)
        //   dP[b,g,tap,m,·]  = Σ_{n: m(n)=m} t(n,g,tap)·R[b,n,h,w]
        //   dB = dP·Xᵀ (grouped 1×1 weight grad),  dX = Bᵀ·dP (grouped 1×1 input grad)
        // Gradients go to locals first, since ctx hands out one gradient at a time.
        let mut grad_x = ctx.grad(x).map(|g| vec![0.0f32; g.len()]);
        let mut grad_b = ctx.grad(templates).map(|g| vec![0.0f32; g.len()]);
        let mut grad_t = ctx.grad(masks).map(|g| vec![0.0f32; g.len()]);
        let grads = kernel::TwoStageGrads {
            input: grad_x.as_deref_mut(),
            templates: grad_b.as_deref_mut(),
            masks: grad_t.as_deref_mut(),
        };
        kernel::fused_backward(
            &shape,
            &assignment,
            &x_value.data,
            &b_value.data,
            &t_value.data,
            r,
            grads,
        );
        for (var, local) in [(x, grad_x), (templates, grad_b), (masks, grad_t)] {
            if let (Some(local), Some(g)) = (local, ctx.grad(var)) {
                g.data.iter_mut().zip(local).for_each(|(a, b)| *a += b);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Mode, ParamStore};
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use crate::kernels::{conv_naive, ConvShape};
    use crate::tensor::max_scaled_difference;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// y = conv(x, w) with the naive dense oracle.
    fn dense_conv(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
        let [batch, in_channels, in_height, in_width] = x.nchw("test");
        let [out_channels, _, kernel, _] = w.nchw("test");
        let shape = ConvShape {
            batch,
            in_channels,
            in_height,
            in_width,
            out_channels,
            kernel,
            stride,
            padding,
        };
        let mut y = Tensor::zeros(&[batch, out_channels, shape.out_height(), shape.out_width()]);
        conv_naive::forward(&shape, &x.data, &w.data, &mut y.data);
        y
    }

    /// Forward value of sbf_conv2d (evaluation mode, no bias).
    fn sbf_value(
        x: &Tensor,
        b: &Tensor,
        t: &Tensor,
        assignment: &TemplateAssignment,
        config: SbfConfig,
    ) -> Tensor {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Eval);
        let (xv, bv, tv) = (
            tape.input(x.clone()),
            tape.input(b.clone()),
            tape.input(t.clone()),
        );
        let y = sbf_conv2d(&mut tape, xv, bv, tv, None, assignment, config);
        tape.value(y).clone()
    }

    fn config(stride: usize, padding: usize, groups: usize, path: SbfPath) -> SbfConfig {
        SbfConfig {
            path,
            ..SbfConfig::new(stride, padding, groups)
        }
    }

    #[test]
    fn all_templates_with_identity_transforms_equal_the_dense_conv_of_the_templates() {
        let mut rng = StdRng::seed_from_u64(1);
        let x = Tensor::normal(&[2, 6, 7, 9], 1.0, &mut rng);
        let b = Tensor::normal(&[5, 6, 3, 3], 0.5, &mut rng);
        let t = Tensor::zeros(&[0, 2, 3, 3]);
        let assignment = TemplateAssignment::round_robin(5, 5);
        let dense = dense_conv(&x, &b, 1, 1);
        for path in [SbfPath::TwoStage, SbfPath::EffectiveFilters] {
            let y = sbf_value(&x, &b, &t, &assignment, config(1, 1, 2, path));
            // Equal up to f32 summation order: within 1e-6 of the largest output.
            let d = max_scaled_difference(&y.data, &dense.data, 0.0, 1e-6 * dense.max_abs());
            assert!(d <= 1.0, "{path:?}: differs from conv2d(x, B) by {d}");
        }
    }

    #[test]
    fn zero_masks_equal_ordinary_pruning() {
        let mut rng = StdRng::seed_from_u64(2);
        let x = Tensor::normal(&[2, 4, 6, 5], 1.0, &mut rng);
        let b = Tensor::normal(&[2, 4, 3, 3], 0.5, &mut rng);
        let kept = [1, 3];
        let assignment = TemplateAssignment::from_kept_outputs(6, &kept);
        let t = Tensor::zeros(&[4, 2, 3, 3]);
        // The pruned conv: the kept filters at their positions, zeros elsewhere.
        let mut w = Tensor::zeros(&[6, 4, 3, 3]);
        for (k, &n) in kept.iter().enumerate() {
            w.data[n * 36..(n + 1) * 36].copy_from_slice(&b.data[k * 36..(k + 1) * 36]);
        }
        let pruned = dense_conv(&x, &w, 2, 1);
        for path in [SbfPath::TwoStage, SbfPath::EffectiveFilters] {
            let y = sbf_value(&x, &b, &t, &assignment, config(2, 1, 2, path));
            assert!(
                max_scaled_difference(&y.data, &pruned.data, 1e-6, 1e-6) <= 1.0,
                "{path:?}"
            );
            let plane = y.dim(2) * y.dim(3);
            for n in [0, 2, 4, 5] {
                assert!(
                    y.data[n * plane..(n + 1) * plane].iter().all(|&v| v == 0.0),
                    "channel {n}"
                );
            }
        }
    }

    #[test]
    fn two_stage_equals_effective_filters_over_the_grid() {
        let mut rng = StdRng::seed_from_u64(3);
        let (c, n) = (8, 6);
        let mut cases = 0;
        for groups in [1, 2, 4] {
            for stride in [1, 2] {
                for padding in [0, 1] {
                    for kernel in [1, 3, 5] {
                        for m in [1, n / 2, n - 1] {
                            let x = Tensor::normal(&[2, c, 7, 9], 1.0, &mut rng);
                            let b = Tensor::normal(&[m, c, kernel, kernel], 0.5, &mut rng);
                            let t = Tensor::normal(&[n - m, groups, kernel, kernel], 1.0, &mut rng);
                            let kept: Vec<usize> = (0..m).map(|j| (j * 5 + 2) % n).collect();
                            let mut kept_sorted = kept.clone();
                            kept_sorted.sort();
                            kept_sorted.dedup();
                            let assignment = if kept_sorted.len() == m {
                                TemplateAssignment::from_kept_outputs(n, &kept)
                            } else {
                                TemplateAssignment::round_robin(n, m)
                            };
                            let fast = sbf_value(
                                &x,
                                &b,
                                &t,
                                &assignment,
                                config(stride, padding, groups, SbfPath::TwoStage),
                            );
                            let weff =
                                effective_filters(&b, &t, &assignment, groups, TransformFamily::Scalar);
                            let reference = dense_conv(&x, &weff, stride, padding);
                            let d = max_scaled_difference(&fast.data, &reference.data, 1e-5, 1e-5);
                            assert!(
                                d <= 1.0,
                                "G{groups} s{stride} p{padding} K{kernel} M{m}: scaled difference {d}"
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 108);
    }

    fn gradcheck_case(
        family: TransformFamily,
        path: SbfPath,
        stride: usize,
        padding: usize,
        transforms: Tensor,
        kernel: usize,
    ) {
        let mut rng = StdRng::seed_from_u64(10 + stride as u64 * 3 + padding as u64);
        let (c, n, m, groups) = (4, 5, 2, 2);
        let inputs = vec![
            Tensor::normal(&[2, c, 5, 6], 1.0, &mut rng),
            Tensor::normal(&[m, c, kernel, kernel], 0.5, &mut rng),
            transforms,
            Tensor::normal(&[n], 0.5, &mut rng),
        ];
        let assignment = TemplateAssignment::from_kept_outputs(n, &[3, 1]);
        let cfg = SbfConfig {
            stride,
            padding,
            groups,
            family,
            path,
        };
        check_gradients(
            |tape, v| sbf_conv2d(tape, v[0], v[1], v[2], Some(v[3]), &assignment, cfg),
            &inputs,
            &GradcheckOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{family:?} {path:?} s{stride} p{padding}: {e}"));
    }

    #[test]
    fn gradcheck_scalar_masks_both_paths_with_borders_and_strides() {
        let mut rng = StdRng::seed_from_u64(4);
        for path in [SbfPath::TwoStage, SbfPath::EffectiveFilters] {
            for (stride, padding) in [(1, 1), (2, 1), (2, 0), (1, 2)] {
                let t = Tensor::normal(&[3, 2, 3, 3], 1.0, &mut rng);
                gradcheck_case(TransformFamily::Scalar, path, stride, padding, t, 3);
            }
        }
    }

    /// Affine (or rotation) parameters whose sampling points all stay ≥ 0.06 away from the
    /// integer grid (the bilinear kinks), so a finite-difference step of 0.01 never crosses one.
    fn smooth_transform_params(
        family: TransformFamily,
        count: usize,
        kernel: usize,
        rng: &mut StdRng,
    ) -> Vec<f32> {
        let c = (kernel as f32 - 1.0) / 2.0;
        let mut out = Vec::new();
        while out.len() < count * family.params_per_group(kernel) {
            let candidate: Vec<f32> = match family {
                TransformFamily::Affine => [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                    .iter()
                    .map(|v| v + rng.gen_range(-0.3..0.3))
                    .collect(),
                _ => vec![rng.gen_range(-1.2..1.2)],
            };
            let s = match family {
                TransformFamily::Affine => candidate.clone(),
                _ => {
                    let (sin, cos) = candidate[0].sin_cos();
                    vec![cos, -sin, 0.0, sin, cos, 0.0]
                }
            };
            let smooth = (0..kernel * kernel).all(|k| {
                let (u, v) = ((k % kernel) as f32 - c, (k / kernel) as f32 - c);
                if family == TransformFamily::Rotation && u == 0.0 && v == 0.0 {
                    return true; // the centre never moves under a rotation
                }
                let (px, py) = (s[0] * u + s[1] * v + s[2], s[3] * u + s[4] * v + s[5]);
                [px, py].iter().all(|p| (p - p.round()).abs() > 0.06)
            });
            if smooth {
                out.extend(candidate);
            }
        }
        out
    }

    #[test]
    fn gradcheck_affine_and_rotation_transforms_away_from_bilinear_kinks() {
        let mut rng = StdRng::seed_from_u64(5);
        for family in [TransformFamily::Affine, TransformFamily::Rotation] {
            for (stride, padding) in [(1, 1), (2, 0)] {
                let params = smooth_transform_params(family, 3 * 2, 3, &mut rng);
                let t = Tensor::from_vec(&family.param_shape(3, 2, 3), params);
                gradcheck_case(family, SbfPath::Auto, stride, padding, t, 3);
            }
        }
    }

    #[test]
    fn identity_affine_and_rotation_transforms_copy_the_template() {
        let mut rng = StdRng::seed_from_u64(6);
        let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
        let assignment = TemplateAssignment::round_robin(5, 2);
        let scalar = effective_filters(
            &b,
            &Tensor::full(&[3, 2, 3, 3], 1.0),
            &assignment,
            2,
            TransformFamily::Scalar,
        );
        for family in [TransformFamily::Affine, TransformFamily::Rotation] {
            let identity: Vec<f32> = (0..6).flat_map(|_| family.identity(3)).collect();
            let t = Tensor::from_vec(&family.param_shape(3, 2, 3), identity);
            let weff = effective_filters(&b, &t, &assignment, 2, family);
            assert!(
                max_scaled_difference(&weff.data, &scalar.data, 1e-6, 1e-6) <= 1.0,
                "{family:?}"
            );
        }
        // A quarter turn moves tap (kh, kw) = (0, 1) (u = 0, v = −1) to read the template at (u, v) = (1, 0).
        let t = Tensor::from_vec(&[3, 2, 1], vec![std::f32::consts::FRAC_PI_2; 6]);
        let weff = effective_filters(&b, &t, &assignment, 2, TransformFamily::Rotation);
        let (n, i) = (2, 1); // output 2 copies template 0
        assert!((weff.data[(n * 4 + i) * 9 + 1] - b.data[i * 9 + 5]).abs() < 1e-5);
    }

    #[test]
    fn view_a_and_view_b_give_the_same_gradients() {
        let mut rng = StdRng::seed_from_u64(7);
        let x = Tensor::normal(&[3, 6, 7, 6], 1.0, &mut rng);
        let b = Tensor::normal(&[3, 6, 3, 3], 0.5, &mut rng);
        let t = Tensor::normal(&[4, 3, 3, 3], 1.0, &mut rng);
        let bias = Tensor::normal(&[7], 1.0, &mut rng);
        let seed = Tensor::normal(&[3, 7, 4, 3], 1.0, &mut rng);
        let assignment = TemplateAssignment::from_kept_outputs(7, &[0, 2, 5]);
        let grads = |path: SbfPath| -> Vec<Tensor> {
            let store = ParamStore::default();
            let mut tape = Tape::new(&store, Mode::Train);
            let vars: Vec<Var> = [&x, &b, &t, &bias]
                .iter()
                .map(|v| tape.leaf((*v).clone()))
                .collect();
            let y = sbf_conv2d(
                &mut tape,
                vars[0],
                vars[1],
                vars[2],
                Some(vars[3]),
                &assignment,
                config(2, 1, 3, path),
            );
            tape.backward_with(y, seed.clone());
            vars.iter().map(|v| tape.grad(*v).unwrap().clone()).collect()
        };
        let (view_a, view_b) = (grads(SbfPath::EffectiveFilters), grads(SbfPath::TwoStage));
        for (name, (a, b)) in ["dX", "dB", "dT", "dbias"].iter().zip(view_a.iter().zip(&view_b)) {
            let d = max_scaled_difference(&b.data, &a.data, 1e-4, 1e-4);
            assert!(d <= 1.0, "{name}: view B differs from view A by {d}");
        }
    }

    #[test]
    fn the_zero_family_is_scalar_masks_fixed_at_zero_i_e_plain_filter_pruning() {
        // Same output and template gradient as scalar masks that are all 0; no transform parameters.
        let mut rng = StdRng::seed_from_u64(11);
        let x = Tensor::normal(&[2, 4, 6, 5], 1.0, &mut rng);
        let b = Tensor::normal(&[2, 4, 3, 3], 0.5, &mut rng);
        let seed = Tensor::normal(&[2, 5, 3, 3], 1.0, &mut rng);
        let assignment = TemplateAssignment::from_kept_outputs(5, &[3, 1]);
        let run = |family: TransformFamily, t: &Tensor| -> (Tensor, Tensor, Tensor) {
            let store = ParamStore::default();
            let mut tape = Tape::new(&store, Mode::Train);
            let (xv, bv, tv) = (tape.leaf(x.clone()), tape.leaf(b.clone()), tape.leaf(t.clone()));
            let cfg = SbfConfig {
                family,
                ..config(2, 1, 2, SbfPath::Auto)
            };
            let y = sbf_conv2d(&mut tape, xv, bv, tv, None, &assignment, cfg);
            tape.backward_with(y, seed.clone());
            let grad = |v| tape.grad(v).unwrap().clone();
            (tape.value(y).clone(), grad(bv), grad(xv))
        };
        let zero = run(TransformFamily::Zero, &Tensor::zeros(&[3, 2, 0]));
        let masked = run(TransformFamily::Scalar, &Tensor::zeros(&[3, 2, 3, 3]));
        assert_eq!(zero.0.data, masked.0.data, "outputs");
        assert_eq!(zero.1.data, masked.1.data, "template gradients");
        assert_eq!(zero.2.data, masked.2.data, "input gradients");
        // Pruned outputs 0, 2 and 4 are exactly zero; kept outputs 3 and 1 are not.
        for (n, pruned) in [(0, true), (1, false), (2, true), (3, false), (4, true)] {
            let plane = &zero.0.data[n * 9..(n + 1) * 9];
            assert_eq!(plane.iter().all(|v| *v == 0.0), pruned, "output {n}");
        }
        gradcheck_case(
            TransformFamily::Zero,
            SbfPath::Auto,
            2,
            1,
            Tensor::zeros(&[3, 2, 0]),
            3,
        );
    }

    #[test]
    fn auto_path_takes_the_cheaper_computation() {
        let cfg = SbfConfig::new(1, 1, 2);
        // C = N = 64: two-stage costs 64·M + 2·(64 − M) per tap and pixel vs 64·64 for the dense conv.
        assert_eq!(cfg.resolved_path(64, 64, 64), SbfPath::EffectiveFilters); // ratio 1
        assert_eq!(cfg.resolved_path(64, 64, 40), SbfPath::EffectiveFilters); // ratio 0.64
        assert_eq!(cfg.resolved_path(64, 64, 32), SbfPath::EffectiveFilters); // ratio 0.52
        assert_eq!(cfg.resolved_path(64, 64, 19), SbfPath::TwoStage); // ratio 0.32
        assert_eq!(cfg.resolved_path(64, 64, 6), SbfPath::TwoStage); // ratio 0.12
        let affine = SbfConfig {
            family: TransformFamily::Affine,
            ..cfg
        };
        assert_eq!(affine.resolved_path(64, 64, 6), SbfPath::EffectiveFilters);
        // Strided: the effective filters at any rate; forcing the two-stage path still works.
        let strided = SbfConfig::new(2, 1, 2);
        assert_eq!(strided.resolved_path(32, 64, 6), SbfPath::EffectiveFilters);
        let forced = SbfConfig {
            path: SbfPath::TwoStage,
            ..strided
        };
        assert_eq!(forced.resolved_path(32, 64, 6), SbfPath::TwoStage);
    }

    #[test]
    #[should_panic(expected = "groups G = 3 must divide the 4 input channels")]
    fn groups_that_do_not_divide_the_channels_are_rejected() {
        let mut rng = StdRng::seed_from_u64(8);
        let x = Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng);
        let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
        let t = Tensor::zeros(&[1, 3, 3, 3]);
        sbf_value(
            &x,
            &b,
            &t,
            &TemplateAssignment::round_robin(3, 2),
            config(1, 1, 3, SbfPath::Auto),
        );
    }

    #[test]
    #[should_panic(expected = "must have shape [2, 2, 3, 3]")]
    fn masks_of_the_wrong_shape_are_rejected() {
        let mut rng = StdRng::seed_from_u64(9);
        let x = Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng);
        let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
        let t = Tensor::zeros(&[2, 1, 3, 3]);
        sbf_value(
            &x,
            &b,
            &t,
            &TemplateAssignment::round_robin(4, 2),
            config(1, 1, 2, SbfPath::Auto),
        );
    }
}
