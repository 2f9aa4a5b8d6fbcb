//! The fused forward in register tiles: both stages per tile of templates × output pixels, on
//! the dense conv's microkernel and padded image ([`crate::kernels::conv`]). The stage-1 maps
//! never leave L1; its naive twin is [`stage1_forward_naive`] followed by [`gather_forward_naive`].
//!
//! For one image, a panel of ROWS templates m_r and a group of VECTORS·LANES output pixels p:
//!
//! ```text
//!   Z[g,tap][r][p] = Σ_{c'<Cg} B[m_r, g·Cg + c', tap] · x_pad[base(p) + offset(g·Cg + c', tap)]
//!                    (one gemm_tile of depth Cg per (g, tap): a ROWS × VECTORS register tile)
//!   Y[n][p]        = Σ_{g,tap} t(n,g,tap) · Z[g,tap][r(n)][p]      for every output n of the panel
//! ```
//!
//! The padded image is the dense conv's phase-split copy, so a strided layer computes only the
//! positions that are read, and neighbouring outputs are neighbouring floats at every stride.
//! Both kernels are generic over the vector ([`crate::kernels::simd`]), chosen like the dense
//! conv's: `Isa::active()`, or the `isa` of the `_with` variants.
//! Per output pixel this costs M·C·K² multiply-adds for stage 1 and N·G·K² for stage 2 (the
//! identity outputs included, at t = 1), against N·C·K² for the dense conv.

use super::super::conv::{
    group_bases, vector_slots, with_padded_source, ConvLayout, InputPhase, PaddedGradOutput, PhaseSplitImage,
    PlaneVectors, VectorSlot,
};
use super::super::microkernel::{
    add_lanes, gemm_tile, load_lanes, store_lanes, with_tile, GatherMatrix, Tiling, SOURCE_SLACK,
};
use super::super::simd::{with_vector, Isa, Vector, VectorKind};
use super::super::ConvShape;
use super::channels::{fused_forward_channels, fused_input_grad_channels};
use super::*;

/// The gradients a backward kernel adds into; a `None` is not computed.
pub struct SbfGrads<'a> {
    /// dX [Bt, C, H, W]
    pub input: Option<&'a mut [f32]>,
    /// dB [M, C, K, K]
    pub templates: Option<&'a mut [f32]>,
    /// dT [N−M, G, K, K]
    pub masks: Option<&'a mut [f32]>,
}

/// Y = SBF(X; B, T) for scalar masks, overwriting output [Bt, N, Ho, Wo]. Bit-identical at any
/// thread count and either instruction set (each output value is summed in one fixed order).
pub fn fused_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    fused_forward_with(Isa::active(), shape, assignment, input, templates, masks, output)
}

/// [`fused_forward`] with the instruction set `isa`, in the layout [`fused_forward_choice`]
/// picks for this thread pool.
///
/// # Panics
/// If the CPU does not run `isa`, or the operands do not fit `shape`.
pub fn fused_forward_with(
    isa: Isa,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    check_operands(
        "fused_forward",
        shape,
        assignment,
        [input, templates, masks, output],
    );
    let layout = fused_forward_choice(isa, shape, rayon::current_num_threads()).0;
    fused_forward_layout_with(isa, layout, shape, assignment, input, templates, masks, output)
}

/// [`fused_forward`] with the instruction set `isa` in the layout `layout` (for tests and
/// benchmarks; both layouts give the same floats, see `channels.rs`).
///
/// # Panics
/// If the CPU does not run `isa`, or the operands do not fit `shape`.
#[allow(clippy::too_many_arguments)]
pub fn fused_forward_layout_with(
    isa: Isa,
    layout: ConvLayout,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    isa.assert_supported("fused_forward");
    check_operands(
        "fused_forward",
        shape,
        assignment,
        [input, templates, masks, output],
    );
    if output.is_empty() {
        return;
    }
    if layout == ConvLayout::ChannelVectors {
        return fused_forward_channels(isa, shape, assignment, input, templates, masks, output);
    }
    let plane = PlaneVectors::for_plane(isa, shape.out_width());
    with_vector!(plane.kind, V => {
        let vectors = plane.count(shape.out_height(), shape.out_width(), V::LANES);
        let tiling = Tiling::choose(V::REGISTERS, shape.templates, vectors);
        with_tile!(tiling, ROWS, VECTORS => {
            fused_forward_tiled::<V, ROWS, VECTORS>(shape, plane, assignment, input, templates, masks, output)
        })
    })
}

/// Panics, naming `op` and the sizes, unless X, B, T and Y (or R) and the assignment fit `shape`.
fn check_operands(op: &str, shape: &SbfShape, assignment: &TemplateAssignment, buffers: [&[f32]; 4]) {
    let [x, b, t, y] = buffers;
    shape.check("X", x.len(), shape.input_len());
    shape.check("B", b.len(), shape.templates_len());
    shape.check("T", t.len(), shape.masks_len());
    shape.check("Y or R", y.len(), shape.output_len());
    assignment.validate(op, shape.out_channels, shape.templates);
}

/// The operands of the fused kernels that depend on the weights, not on the image.
struct PanelPlan<const ROWS: usize> {
    /// G·K²: the (g, tap) pairs, g-major.
    group_taps: usize,
    /// offsets[gt][c'] = offset(g·Cg + c', tap) in the padded image.
    offsets: Vec<Vec<usize>>,
    /// packed[panel][gt][c'][r] = B[panel·ROWS + r, g·Cg + c', tap] (0 past the last template).
    packed: Vec<f32>,
    /// outputs[panel]: (n, r) for every output n whose template is row r of the panel.
    outputs: Vec<Vec<(usize, usize)>>,
    /// t[n][gt]: 1 for an identity output, T[row(n), g, tap] for a transformed one.
    mask_table: Vec<f32>,
}

impl<const ROWS: usize> PanelPlan<ROWS> {
    fn new(
        shape: &SbfShape,
        image: &PhaseSplitImage,
        assignment: &TemplateAssignment,
        templates: &[f32],
        masks: &[f32],
    ) -> Self {
        let (taps, cg) = (shape.taps(), shape.group_channels());
        let group_taps = shape.groups * taps;
        let all_offsets = image.tap_offsets(); // [(c, tap)]
        let offsets = (0..group_taps)
            .map(|gt| {
                let (g, tap) = (gt / taps, gt % taps);
                (0..cg).map(|c| all_offsets[(g * cg + c) * taps + tap]).collect()
            })
            .collect();
        let panels = shape.templates.div_ceil(ROWS);
        let mut packed = vec![0.0f32; panels * group_taps * cg * ROWS];
        for (panel, panel_data) in packed.chunks_mut(group_taps * cg * ROWS).enumerate() {
            for r in 0..ROWS.min(shape.templates - panel * ROWS) {
                let m = panel * ROWS + r;
                for gt in 0..group_taps {
                    let (g, tap) = (gt / taps, gt % taps);
                    for c in 0..cg {
                        panel_data[(gt * cg + c) * ROWS + r] =
                            templates[(m * shape.in_channels + g * cg + c) * taps + tap];
                    }
                }
            }
        }
        let mut outputs = vec![Vec::new(); panels];
        for (n, &m) in assignment.template_of.iter().enumerate() {
            outputs[m / ROWS].push((n, m % ROWS));
        }
        let mask_table = (0..shape.out_channels)
            .flat_map(|n| {
                (0..group_taps)
                    .map(move |gt| mask_value(shape, masks, assignment.mask_row[n], gt / taps, gt % taps))
            })
            .collect();
        PanelPlan {
            group_taps,
            offsets,
            packed,
            outputs,
            mask_table,
        }
    }
}

/// `vectors`: rows of Wo pixels, or (narrow maps on AVX-512) the plane as flat 16-lane vectors
/// over a column-unrolled image, as the dense forward pass ([`PlaneVectors`]).
fn fused_forward_tiled<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &SbfShape,
    vectors: PlaneVectors,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    let image = vectors.image(&shape.conv_shape());
    let plan = PanelPlan::<ROWS>::new(shape, &image, assignment, templates, masks);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let plane = h_out * w_out;
    let cg = shape.group_channels();
    let slots = vectors.slots(h_out, w_out, V::LANES);
    let x_image_len = shape.in_channels * shape.in_height * shape.in_width;
    output
        .par_chunks_mut(shape.out_channels * plane)
        .zip(input.par_chunks(x_image_len))
        .for_each_init(
            // Z of one tile for every (g, tap): [G·K²][ROWS][VECTORS] vectors, 7 KiB at 6 × 2 × 8.
            || vec![[[V::zero(); VECTORS]; ROWS]; plan.group_taps],
            |maps, (y, x)| {
                with_padded_source::<V, _>(
                    image.image_len(),
                    |padded| image.fill(x, padded),
                    #[inline(always)]
                    |source| {
                        let gathers: Vec<GatherMatrix> = plan
                            .offsets
                            .iter()
                            .map(|o| GatherMatrix::new(source, o))
                            .collect();
                        for (panel, outputs) in plan.outputs.iter().enumerate() {
                            let a = &plan.packed[panel * plan.group_taps * cg * ROWS..];
                            for group in slots.chunks(VECTORS) {
                                let bases = group_bases::<VECTORS>(group, image.row_stride());
                                // Stage 1: Z[gt] = B_panel[gt] · X_gt, one register tile per (g, tap).
                                for (gt, tile) in maps.iter_mut().enumerate() {
                                    let a_gt = &a[gt * cg * ROWS..][..cg * ROWS];
                                    *tile = gemm_tile::<V, ROWS, VECTORS, 1>(a_gt, &gathers[gt], &bases);
                                }
                                // Stage 2: Y[n] = Σ_gt t(n, gt) · Z[gt][r(n)].
                                for &(n, r) in outputs {
                                    let t = &plan.mask_table[n * plan.group_taps..][..plan.group_taps];
                                    let mut sum = [V::zero(); VECTORS];
                                    for (&t, tile) in t.iter().zip(maps.iter()) {
                                        let t = V::splat(t);
                                        for v in 0..VECTORS {
                                            sum[v] = t.mul_add(tile[r][v], sum[v]);
                                        }
                                    }
                                    for (v, slot) in group.iter().enumerate() {
                                        let start = n * plane + slot.row * w_out + slot.col;
                                        store_lanes(y, start, sum[v], slot.lanes);
                                    }
                                }
                            }
                        }
                    },
                )
            },
        );
}

/// dX, dB and dT of Y = SBF(X; B, T) for scalar masks, from R = ∂L/∂Y [Bt, N, Ho, Wo], added
/// into `grads` (a `None` is not computed). Its naive twin is [`gather_masks_grad_naive`],
/// [`gather_maps_grad_naive`], [`stage1_templates_grad_naive`] and [`stage1_input_grad_naive`]
/// chained.
///
/// The input gradient goes through the maps, per image:
///
/// ```text
///   1. per register tile (as the forward):  dZ[g,tap][m] = Σ_{n: m(n)=m} t(n,g,tap) · R[n]
///      into dZ [G·K²·M planes], zero-padded like the dense input gradient's dy
///   2. dX[c, ih, iw] += Σ_(m,t,u) B[m, c, kh, kw] · dZ[g(c), (kh, kw), m][I − t, J − u]
///      (kh, kw) = (r + s·t, q + s·u): the dense input gradient's phase split, with depth M·K²
///      instead of N·K²
/// ```
///
/// The weight side uses the dense weight gradient dW = Σ R ⊗ X [N, C, K²] and the chain rule
/// of the effective filters (`dB[m] = Σ_{n: m(n)=m} t(n)·dW[n]`, `dT[row(n), g, tap] =
/// Σ_{c∈g} B[m(n), c, tap]·dW[n, c, tap]`). Through the maps it would cost M·C·K² for dB plus
/// M·C·K² to recompute Z for dT, no less than dW's N·C·K² at half the filters transformed,
/// and the dense kernel reduces over long pixel runs.
///
/// dZ holds G·K²·M planes of one image (in L2: 0.6 MiB for 16 channels at 32×32 and M = 8).
/// Every result is the same from run to run at a given thread count (dX at any count).
pub fn fused_backward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: SbfGrads,
) {
    let isa = Isa::active();
    fused_backward_with(
        isa,
        shape,
        assignment,
        input,
        templates,
        masks,
        grad_output,
        grads,
    )
}

/// [`fused_backward`] with the instruction set `isa`, the input gradient in the layout
/// [`fused_input_grad_choice`] picks for this thread pool.
///
/// # Panics
/// If the CPU does not run `isa`, or the operands do not fit `shape`.
#[allow(clippy::too_many_arguments)]
pub fn fused_backward_with(
    isa: Isa,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: SbfGrads,
) {
    check_operands(
        "fused_backward",
        shape,
        assignment,
        [input, templates, masks, grad_output],
    );
    let layout = fused_input_grad_choice(isa, shape, rayon::current_num_threads()).0;
    fused_backward_layout_with(
        isa,
        layout,
        shape,
        assignment,
        input,
        templates,
        masks,
        grad_output,
        grads,
    )
}

/// [`fused_backward`] with the instruction set `isa` and the input gradient in the layout
/// `layout` (both layouts give the same floats).
///
/// # Panics
/// If the CPU does not run `isa`, or the operands do not fit `shape`.
#[allow(clippy::too_many_arguments)]
pub fn fused_backward_layout_with(
    isa: Isa,
    layout: ConvLayout,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: SbfGrads,
) {
    isa.assert_supported("fused_backward");
    check_operands(
        "fused_backward",
        shape,
        assignment,
        [input, templates, masks, grad_output],
    );
    if grad_output.is_empty() {
        return;
    }
    let SbfGrads {
        input: grad_input,
        templates: grad_templates,
        masks: grad_masks,
    } = grads;
    if grad_templates.is_some() || grad_masks.is_some() {
        let conv_shape = shape.conv_shape();
        let mut dense_grad = vec![0.0f32; conv_shape.weight_len()]; // dW [N, C, K, K]
        crate::kernels::conv::weight_grad_with(isa, &conv_shape, input, grad_output, &mut dense_grad);
        crate::kernels::sbf_filters::effective_filters_backward(
            crate::ops::TransformFamily::Scalar,
            shape.kernel,
            shape.groups,
            assignment,
            templates,
            masks,
            &dense_grad,
            grad_templates,
            grad_masks,
        );
    }
    if let Some(grad_input) = grad_input {
        match layout {
            ConvLayout::PixelVectors => {
                input_grad_fused(isa, shape, assignment, templates, masks, grad_output, grad_input)
            }
            ConvLayout::ChannelVectors => {
                fused_input_grad_channels(isa, shape, assignment, templates, masks, grad_output, grad_input)
            }
        }
    }
}

/// The operands of the input gradient for one group g and one input phase (see
/// [`fused_backward`]).
struct PhaseOperands {
    phase: InputPhase,
    /// packed[panel][(m, t, u)][r'] = B[m, g·Cg + panel·R2 + r', r + s·t, q + s·u] (R2 rows).
    packed: Vec<f32>,
    slots: Vec<VectorSlot>,
}

/// Packs the input gradient's operands with R2-row panels: `[G][phases]`.
fn phase_operands<const R2: usize>(
    shape: &SbfShape,
    templates: &[f32],
    lanes: usize,
) -> Vec<Vec<PhaseOperands>> {
    let (taps, cg, k, s) = (shape.taps(), shape.group_channels(), shape.kernel, shape.stride);
    (0..shape.groups)
        .map(|g| {
            InputPhase::all(&shape.conv_shape())
                .into_iter()
                .map(|phase| {
                    let mut weight_taps = Vec::new(); // (m, tap) in the order (m, t, u)
                    for m in 0..shape.templates {
                        for t in 0..phase.row_taps {
                            for u in 0..phase.col_taps {
                                weight_taps
                                    .push((m, (phase.row_phase + s * t) * k + phase.col_phase + s * u));
                            }
                        }
                    }
                    let depth = weight_taps.len();
                    let mut packed = vec![0.0f32; cg.div_ceil(R2) * depth * R2];
                    for c in 0..cg {
                        let (panel, r) = (c / R2, c % R2);
                        for (d, &(m, tap)) in weight_taps.iter().enumerate() {
                            packed[(panel * depth + d) * R2 + r] =
                                templates[(m * shape.in_channels + g * cg + c) * taps + tap];
                        }
                    }
                    let slots = vector_slots(phase.rows.clone(), phase.cols.clone(), lanes);
                    PhaseOperands { phase, packed, slots }
                })
                .collect()
        })
        .collect()
}

/// dX of [`fused_backward`], in parallel over images.
fn input_grad_fused(
    isa: Isa,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) {
    // The widest phase's columns choose the vector, as in the dense input gradient.
    let phases = InputPhase::all(&shape.conv_shape());
    let columns = phases.iter().map(|phase| phase.cols.len()).max().unwrap_or(0);
    with_vector!(VectorKind::for_columns(isa, columns), V => {
        let vectors: usize = phases
            .iter()
            .map(|phase| phase.rows.len() * phase.cols.len().div_ceil(V::LANES))
            .sum();
        let tiling = Tiling::choose(V::REGISTERS, shape.group_channels(), vectors);
        with_tile!(tiling, R2, V2 => {
            input_grad_tiled::<V, R2, V2>(shape, assignment, templates, masks, grad_output, grad_input)
        })
    })
}

fn input_grad_tiled<V: Vector, const R2: usize, const V2: usize>(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) {
    let padded = PaddedGradOutput::new(&shape.conv_shape());
    let operands = phase_operands::<R2>(shape, templates, V::LANES);
    let (taps, k, s, cg) = (shape.taps(), shape.kernel, shape.stride, shape.group_channels());
    let outputs_of = assignment.outputs_of_templates(shape.templates);
    // t(n, g, tap) at [(g·K² + tap)·N + n].
    let mask_table: Vec<f32> = (0..shape.groups * taps)
        .flat_map(|gt| {
            (0..shape.out_channels)
                .map(move |n| mask_value(shape, masks, assignment.mask_row[n], gt / taps, gt % taps))
        })
        .collect();
    // D of one tile: [(m, t, u)][V2 vectors]; row d starts at d·V2·LANES.
    let max_depth = shape.templates * taps;
    let d_offsets: Vec<usize> = (0..max_depth).map(|d| d * V2 * V::LANES).collect();
    let d_bases: [usize; V2] = std::array::from_fn(|v| v * V::LANES);
    let (width, pixels) = (shape.in_width, shape.in_height * shape.in_width);
    let plane_len = padded.plane_len();
    let (x_image_len, y_image_len) = (shape.in_channels * pixels, shape.out_channels * shape.out_plane());
    grad_input
        .par_chunks_mut(x_image_len)
        .zip(grad_output.par_chunks(y_image_len))
        .for_each_init(
            || vec![0.0f32; max_depth * V2 * V::LANES + SOURCE_SLACK],
            |d_tile, (grad_x, r)| {
                // source: [N][rows][cols] padded R of this image, then SOURCE_SLACK zeros
                with_padded_source::<V, _>(
                    padded.image_len(),
                    |image| padded.fill(r, image),
                    #[inline(always)]
                    |source| {
                        for (g, phases) in operands.iter().enumerate() {
                            for PhaseOperands { phase, packed, slots } in phases {
                                let (row_taps, col_taps) = (phase.row_taps, phase.col_taps);
                                let depth = shape.templates * row_taps * col_taps;
                                for group in slots.chunks(V2) {
                                    let bases = group_bases::<V2>(group, padded.cols);
                                    // 1. D[(m,t,u)] = Σ_{n: m(n)=m} t(n,g,tap) · R[n][I − t, J − u]
                                    for t in 0..row_taps {
                                        for u in 0..col_taps {
                                            let tap = (phase.row_phase + s * t) * k + phase.col_phase + s * u;
                                            let shift = (padded.border - t) * padded.cols + padded.border - u;
                                            let t_n = &mask_table[(g * taps + tap) * shape.out_channels..];
                                            for (m, outputs) in outputs_of.iter().enumerate() {
                                                let mut sum = [V::zero(); V2];
                                                for &n in outputs {
                                                    let weight = V::splat(t_n[n]);
                                                    let start = n * plane_len + shift;
                                                    for v in 0..V2 {
                                                        let r_n: V =
                                                            load_lanes(source, start + bases[v], V::LANES);
                                                        sum[v] = weight.mul_add(r_n, sum[v]);
                                                    }
                                                }
                                                let row = (m * row_taps + t) * col_taps + u;
                                                for (v, &vector) in sum.iter().enumerate() {
                                                    store_lanes(
                                                        d_tile,
                                                        (row * V2 + v) * V::LANES,
                                                        vector,
                                                        V::LANES,
                                                    );
                                                }
                                            }
                                        }
                                    }
                                    // 2. dX[c] += Σ_(m,t,u) B[m, c, tap] · D[(m,t,u)], c in group g.
                                    let gather = GatherMatrix::new(d_tile, &d_offsets[..depth]);
                                    for (panel, a) in packed.chunks(depth * R2).enumerate() {
                                        let tile = gemm_tile::<V, R2, V2, 1>(a, &gather, &d_bases);
                                        for (v, slot) in group.iter().enumerate() {
                                            // (I, J) → (ih, iw) = (I·s + r − p, J·s + q − p)
                                            let ih = slot.row * s + phase.row_phase - shape.padding;
                                            let iw = slot.col * s + phase.col_phase - shape.padding;
                                            let channels = g * cg + panel * R2..(g + 1) * cg;
                                            for (r, c) in channels.take(R2).enumerate() {
                                                let start = c * pixels + ih * width + iw;
                                                add_lanes(grad_x, start, s, tile[r][v], slot.lanes);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    },
                )
            },
        );
}

impl SbfShape {
    /// The dense conv of the same geometry with F = N outputs (its padded image is the fused
    /// kernels' source).
    pub fn conv_shape(&self) -> ConvShape {
        ConvShape {
            batch: self.batch,
            in_channels: self.in_channels,
            in_height: self.in_height,
            in_width: self.in_width,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}
