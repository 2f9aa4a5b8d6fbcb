//! The fused forward in register tiles: both stages per tile of templates × output pixels, on
//! the dense conv's microkernel and padded image ([`crate::kernels::conv`]). The stage-1 maps
//! never leave L1; its naive twin is [`stage1_forward_naive`] followed by [`gather_forward_naive`].
//!
//! For one image, a panel of ROWS templates m_r and a group of VECTORS·8 output pixels p:
//!
//! ```text
//!   Z[g,tap][r][p] = Σ_{c'<Cg} B[m_r, g·Cg + c', tap] · x_pad[base(p) + offset(g·Cg + c', tap)]
//!                    (one gemm_tile of depth Cg per (g, tap): a ROWS × VECTORS register tile)
//!   Y[n][p]        = Σ_{g,tap} t(n,g,tap) · Z[g,tap][r(n)][p]      for every output n of the panel
//! ```
//!
//! The padded image is the dense conv's phase-split copy, so a strided layer computes only the
//! positions that are read, and 8 neighbouring outputs are 8 neighbouring floats at every stride.
//! Per output pixel this costs M·C·K² multiply-adds for stage 1 and N·G·K² for stage 2 (the
//! identity outputs included, at t = 1), against N·C·K² for the dense conv.

use super::super::conv::{
    choose_tiling, group_bases, vector_slots, with_workspace, PhaseSplitImage, Tiling, TASK_WORKSPACE,
};
use super::super::microkernel::{gemm_tile, store_lanes, GatherMatrix, LANES, SOURCE_SLACK};
use super::super::ConvShape;
use super::*;
use wide::f32x8;

/// Y = SBF(X; B, T) for scalar masks, overwriting output [Bt, N, Ho, Wo]. Bit-identical at any
/// thread count (each output value is summed in one fixed order).
pub fn fused_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("Y", output.len(), shape.output_len());
    assignment.validate("fused_forward", shape.out_channels, shape.templates);
    if output.is_empty() {
        return;
    }
    let vectors = shape.out_height() * shape.out_width().div_ceil(LANES);
    match choose_tiling(shape.templates, vectors) {
        Tiling::Rows6Vectors2 => {
            fused_forward_tiled::<6, 2>(shape, assignment, input, templates, masks, output)
        }
        Tiling::Rows2Vectors6 => {
            fused_forward_tiled::<2, 6>(shape, assignment, input, templates, masks, output)
        }
    }
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

fn fused_forward_tiled<const ROWS: usize, const VECTORS: usize>(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    let image = PhaseSplitImage::new(&shape.conv_shape());
    let plan = PanelPlan::<ROWS>::new(shape, &image, assignment, templates, masks);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let plane = h_out * w_out;
    let cg = shape.group_channels();
    let slots = vector_slots(0..h_out, 0..w_out);
    let x_image_len = shape.in_channels * shape.in_height * shape.in_width;
    output
        .par_chunks_mut(shape.out_channels * plane)
        .zip(input.par_chunks(x_image_len))
        .for_each_init(
            // Z of one tile for every (g, tap): [G·K²][ROWS][VECTORS] vectors, 7 KiB at 6 × 2.
            || vec![[[f32x8::ZERO; VECTORS]; ROWS]; plan.group_taps],
            |maps, (y, x)| {
                with_workspace(&TASK_WORKSPACE, image.image_len() + SOURCE_SLACK, |source| {
                    let (padded, slack) = source.split_at_mut(image.image_len());
                    slack.fill(0.0);
                    image.fill(x, padded);
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
                                *tile = gemm_tile::<ROWS, VECTORS, 1>(a_gt, &gathers[gt], &bases);
                            }
                            // Stage 2: Y[n] = Σ_gt t(n, gt) · Z[gt][r(n)].
                            for &(n, r) in outputs {
                                let t = &plan.mask_table[n * plan.group_taps..][..plan.group_taps];
                                let mut sum = [f32x8::ZERO; VECTORS];
                                for (&t, tile) in t.iter().zip(maps.iter()) {
                                    let t = f32x8::splat(t);
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
                })
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
