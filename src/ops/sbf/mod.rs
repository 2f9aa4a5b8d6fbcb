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
//! - **fused** (`kernels::sbf`, scalar masks): the two-stage form in register tiles. Stage 1
//!   convolves x with each of the K² tap slices of B per input-channel group, giving the maps
//!   Z [G, K², M] per pixel; stage 2 sums, for each output, the G·K² maps of its template scaled
//!   by its mask values. Cost per output pixel: K²·C·M + K²·G·N multiply-adds instead of K²·C·N.
//!   The maps never reach memory. Backward: dX through the maps (depth M·K² instead of N·K²);
//!   dB and dT from the dense weight gradient and the chain rule of the effective filters.
//! - **effective filters** (`kernels::sbf_filters` + the dense conv): materialise
//!   Weff, convolve. Backward ("view A"): the conv's dWeff, then the chain rule
//!   through Weff into dB and dT; dX is the conv's input gradient.
//!
//! [`SbfPath::Auto`] chooses per layer and per pass ([`SbfConfig::plan`]) from a cost model
//! whose constants were measured ([`FUSED_COSTS`]): a MAC of the fused kernels is dearer than one
//! of the dense conv (stage 2 reads a map per multiply-add), so at low pruning rates (e.g. early in
//! the pruning ramp) the dense conv with the effective filters is faster. The affine and rotation
//! families always use the effective filters (exact: Weff = S·B per group; their stage 2 would be a
//! K²×K² matrix per output and group, not implemented).

use crate::autograd::{Tape, Var};
use crate::kernels::conv::ConvLayout;
use crate::kernels::sbf::{self as kernel, SbfShape};
use crate::kernels::simd::Isa;
use crate::kernels::{conv as conv_kernel, sbf_filters, ConvShape};
use crate::ops::conv::{accumulate_channel_sums, add_channel_bias};
use crate::ops::{conv2d, ConvConfig};
use crate::tensor::Tensor;

pub use crate::kernels::sbf::TemplateAssignment;
pub use crate::kernels::sbf_filters::TransformFamily;

/// The time of one multiply-add of the fused kernels, in multiply-adds of the dense conv of the
/// same pass: `templates` for the stage-1 MACs (K²·C·M per output pixel), `masks` for the
/// stage-2 MACs (K²·G·N per output pixel).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassCost {
    pub templates: f64,
    pub masks: f64,
}

/// The fused kernels' costs, forward and input gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedCosts {
    pub forward: PassCost,
    pub input_grad: PassCost,
}

/// Measured on the AMD EPYC VM (Zen 4, AVX2 kernels), 2026-12-06: one thread, CPU time, batch
/// 128, G = 2, the five 3×3 shapes of `sbfnet bench-sbf` at M = N/2 and ≈ N/10, each kernel
/// against the dense conv's kernel of the same pass (`sbfnet bench-sbf --passes`). Stage 1 runs
/// almost at the dense GEMM's rate (its GEMMs are C/G deep instead of C·K²); a stage-2 MAC of
/// the forward costs about 3 dense ones (it reads a map per multiply-add), and of the input
/// gradient about 6 (it gathers the output gradient at K² shifts per template). ±25 %.
pub const FUSED_COSTS: FusedCosts = FusedCosts {
    forward: PassCost {
        templates: 1.1,
        masks: 2.8,
    },
    input_grad: PassCost {
        templates: 1.15,
        masks: 6.0,
    },
};

/// Which of the two equivalent computations to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbfPath {
    /// Per pass, whichever [`FUSED_COSTS`] predicts faster (scalar masks; the other families
    /// always take the effective filters).
    Auto,
    /// The fused kernels for the forward and the input gradient. Scalar masks only.
    Fused,
    /// Materialise Weff and run the dense convolution.
    EffectiveFilters,
}

/// How one layer computes each pass: true = through the fused kernels, false = through the
/// effective filters and the dense conv. The weight gradients always come from the dense weight
/// gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbfPlan {
    pub forward_fused: bool,
    pub input_grad_fused: bool,
}

impl SbfPlan {
    /// One word per pass for `sbfnet info`: e.g. "forward fused, input gradient dense".
    pub fn describe(&self) -> String {
        let word = |fused: bool| if fused { "fused" } else { "dense" };
        format!(
            "forward {}, input gradient {}",
            word(self.forward_fused),
            word(self.input_grad_fused)
        )
    }
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

    /// How a layer of C inputs, N outputs and M templates computes each pass. `Auto` takes the
    /// fused kernel for a pass when its predicted time, (costs.templates·C·M + costs.masks·G·N)
    /// dense MACs per tap and pixel, is below the dense conv's C·N (the same rule at every
    /// stride: the fused kernels compute only the positions a strided layer reads).
    pub fn plan(&self, in_channels: usize, outputs: usize, templates: usize) -> SbfPlan {
        self.plan_against(in_channels, outputs, templates, [1.0; 2], [1.0; 2])
    }

    /// The plan [`sbf_conv2d`] follows for a call of this geometry (its batch included) on
    /// `threads` threads of `isa`: [`SbfConfig::plan_against`] the speed-ups the dense conv's
    /// and the fused kernels' layouts predict.
    pub fn plan_for(&self, shape: &SbfShape, isa: Isa, threads: usize) -> SbfPlan {
        let (inputs, outputs, templates) = (shape.in_channels, shape.out_channels, shape.templates);
        if self.path != SbfPath::Auto || self.family != TransformFamily::Scalar {
            return self.plan(inputs, outputs, templates); // no choice to weigh
        }
        let dense = shape.conv_shape();
        let dense_speedups = [
            ConvLayout::forward_choice(isa, &dense, threads).1,
            ConvLayout::input_grad_choice(isa, &dense, threads).1,
        ];
        let fused_speedups = [
            kernel::fused_forward_choice(isa, shape, threads).1,
            kernel::fused_input_grad_choice(isa, shape, threads).1,
        ];
        self.plan_against(inputs, outputs, templates, dense_speedups, fused_speedups)
    }

    /// [`SbfConfig::plan`] with the layouts' predicted speed-ups over the pixel layout, forward
    /// pass and input gradient: `dense_speedups` of the dense conv, `fused_speedups` of the
    /// fused kernels (on small maps both take the channel layout, `kernels::conv::ConvLayout`;
    /// the fused kernels' is that of their stage-1 product, `kernels::sbf::fused_forward_choice`).
    pub fn plan_against(
        &self,
        in_channels: usize,
        outputs: usize,
        templates: usize,
        dense_speedups: [f64; 2],
        fused_speedups: [f64; 2],
    ) -> SbfPlan {
        let cheaper = |cost: PassCost, pass: usize| {
            let fused = cost.templates * (in_channels * templates) as f64
                + cost.masks * (self.groups * outputs) as f64;
            fused / fused_speedups[pass] < (in_channels * outputs) as f64 / dense_speedups[pass]
        };
        match (self.path, self.family) {
            (SbfPath::EffectiveFilters, _) | (SbfPath::Auto, _) if self.family != TransformFamily::Scalar => {
                SbfPlan {
                    forward_fused: false,
                    input_grad_fused: false,
                }
            }
            (SbfPath::EffectiveFilters, _) => SbfPlan {
                forward_fused: false,
                input_grad_fused: false,
            },
            (SbfPath::Fused, _) => SbfPlan {
                forward_fused: true,
                input_grad_fused: true,
            },
            (SbfPath::Auto, _) => SbfPlan {
                forward_fused: cheaper(FUSED_COSTS.forward, 0),
                input_grad_fused: cheaper(FUSED_COSTS.input_grad, 1),
            },
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
    if config.path == SbfPath::Fused {
        assert_eq!(
            config.family,
            TransformFamily::Scalar,
            "sbf_conv2d: the fused path implements scalar masks only; use SbfPath::EffectiveFilters \
             or Auto for the {} family",
            config.family.name()
        );
    }
    let plan = config.plan_for(&shape, Isa::active(), rayon::current_num_threads());
    match plan {
        SbfPlan {
            forward_fused: false,
            input_grad_fused: false,
        } => {
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
        plan => fused(tape, x, templates, transforms, bias, assignment, shape, plan),
    }
}

/// The fused forward (or the dense conv with Weff, per `plan`) and its backward: dX through the
/// maps (or the dense input gradient with Weff), dB and dT from the dense weight gradient.
#[allow(clippy::too_many_arguments)]
fn fused(
    tape: &mut Tape,
    x: Var,
    templates: Var,
    masks: Var,
    bias: Option<Var>,
    assignment: &TemplateAssignment,
    shape: SbfShape,
    plan: SbfPlan,
) -> Var {
    let plane = shape.out_plane();
    let conv_shape: ConvShape = shape.conv_shape();
    // Weff [N, C, K, K], for the passes that go through the dense conv.
    let weff =
        |b: &Tensor, t: &Tensor| effective_filters(b, t, assignment, shape.groups, TransformFamily::Scalar);
    // Y[b,n,·] = Σ_g Σ_tap t(n,g,tap) · Z[b,g,tap,m(n),·],  Z = Σ_{i∈g} X[b,i,·+tap] · B[m,i,tap]
    let mut y = Tensor::zeros(&[
        shape.batch,
        shape.out_channels,
        shape.out_height(),
        shape.out_width(),
    ]);
    let (x_value, b_value, t_value) = (tape.value(x), tape.value(templates), tape.value(masks));
    if plan.forward_fused {
        kernel::fused_forward(
            &shape,
            assignment,
            &x_value.data,
            &b_value.data,
            &t_value.data,
            &mut y.data,
        );
    } else {
        conv_kernel::forward(
            &conv_shape,
            &x_value.data,
            &weff(b_value, t_value).data,
            &mut y.data,
        );
    }
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
        // Gradients go to locals first, since ctx hands out one gradient at a time.
        let mut grad_x = ctx.grad(x).map(|g| vec![0.0f32; g.len()]);
        let mut grad_b = ctx.grad(templates).map(|g| vec![0.0f32; g.len()]);
        let mut grad_t = ctx.grad(masks).map(|g| vec![0.0f32; g.len()]);
        // dX = Σ_(m,tap) B[m,·,tap] ⊛ dZ[g,tap,m], dZ = Σ_{n: m(n)=m} t(n,g,tap)·R[n]   (or Weffᵀ ⊛ R)
        // dW = Σ R ⊗ X,  dB[m] = Σ_{n: m(n)=m} t(n)·dW[n],  dT[row(n),g,tap] = Σ_{i∈g} B[m(n),i,tap]·dW[n,i,tap]
        let grads = kernel::SbfGrads {
            input: if plan.input_grad_fused {
                grad_x.as_deref_mut()
            } else {
                None
            },
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
        if let (false, Some(grad_x)) = (plan.input_grad_fused, grad_x.as_deref_mut()) {
            let weff = effective_filters(
                b_value,
                t_value,
                &assignment,
                shape.groups,
                TransformFamily::Scalar,
            );
            conv_kernel::input_grad(&conv_shape, r, &weff.data, grad_x);
        }
        for (var, local) in [(x, grad_x), (templates, grad_b), (masks, grad_t)] {
            if let (Some(local), Some(g)) = (local, ctx.grad(var)) {
                g.data.iter_mut().zip(local).for_each(|(a, b)| *a += b);
            }
        }
    })
}

#[cfg(test)]
mod tests;
