//! The fused kernels in the channel layout, for small maps: channels in the lanes.
//!
//! The pixel layout (`fused.rs`) puts neighbouring output pixels of a row in the lanes; on
//! 7×7 and 3×3 maps most lanes idle and 18–40 % of the taps read padding. As in the dense
//! conv's channel layout (`kernels::conv::channels`, whose pixel classes and tile this
//! reuses), the lanes here hold channels and the tile rows are ROWS images, each broadcasting
//! one float of its own source per tap; a pixel sums only the taps that read inside.
//!
//! Forward, per block of VECTORS·LANES templates m and output pixel p of a class:
//!
//! ```text
//!   Z[g,tap][r][m]  = Σ_{c∈g} x_r[c, base(p) + offset(tap)] · B[m, c, tap]
//!                     (one broadcast_tile of depth Cg per (g, tap) that reads inside x)
//!   S[j][r][m]     += T_j[g,tap][m] · Z[g,tap][r][m]          for every slot j, (g, tap) in order
//!   Y_r[n_j(m), p]  = S[j][r][m]
//! ```
//!
//! The slots make stage 2 vector FMAs: n_j(m) is the j-th output (in increasing n) that copies
//! template m, its identity output included, and T_j[g,tap][m] = t(n_j(m), g, tap) (1 for the
//! identity output; 0 where template m has fewer than j+1 outputs, whose lanes are thrown
//! away). A block has as many slots as its most-copied template.
//!
//! Input gradient, per group g, with R = ∂L/∂Y:
//!
//! ```text
//!   D_r[p][tap][m]  = Σ_j T_j[g,tap][m] · R_r[n_j(m), p]       (vectors over m)
//!   dX_r[c, q]     += Σ_(m, kh, kw reaching q) B[m, c, tap] · D_r[p(q, kh, kw)][tap][m]    c ∈ g
//! ```
//!
//! the second line being the dense input gradient's channel product with D for dy, M for F,
//! and the lanes the Cg channels of the group.
//!
//! Every value sums its terms in the order of the pixel layout's kernels, one FMA per term, so
//! the two layouts give the same floats (the padding taps' zero terms aside; tested `==`).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::super::conv::{
    channel_tile_vectors, new_call, with_thread_panels, with_workspace, ChannelProduct, ConvLayout,
    CHANNEL_TILE_ROWS, TASK_WORKSPACE,
};
use super::super::microkernel::{broadcast_tile, load_lanes, store_lanes, TapList};
use super::super::simd::{lanes_of, with_vector, Isa, Vector, VectorKind};
use super::super::ConvShape;
use super::*;

impl SbfShape {
    /// The dense conv of stage 1: this geometry with F = M outputs (the product the channel
    /// layout's forward pass and input gradient run, and whose layout choice they follow).
    pub fn stage1_shape(&self) -> ConvShape {
        ConvShape {
            out_channels: self.templates,
            ..self.conv_shape()
        }
    }
}

/// The layout of the fused forward pass, and its predicted speed-up over the pixel layout: the
/// dense conv's choice for the stage-1 product ([`ConvLayout::forward_choice`]).
pub fn fused_forward_choice(isa: Isa, shape: &SbfShape, threads: usize) -> (ConvLayout, f64) {
    ConvLayout::forward_choice(isa, &shape.stage1_shape(), threads)
}

/// The layout of the fused input gradient, as [`fused_forward_choice`]
/// ([`ConvLayout::input_grad_choice`] of the stage-1 product).
pub fn fused_input_grad_choice(isa: Isa, shape: &SbfShape, threads: usize) -> (ConvLayout, f64) {
    ConvLayout::input_grad_choice(isa, &shape.stage1_shape(), threads)
}

/// Runs `$body` with the const `$vectors` = VECTORS of the tile for `$channels` lanes of work
/// on the vector `$V`: the dense channel layout's, or 2 where that covers them (a 6 × 4 tile
/// over 32 templates would leave half its lanes idle).
macro_rules! with_tile_vectors {
    ($V:ty, $channels:expr, $vectors:ident => $body:expr) => {
        if channel_tile_vectors::<$V>() == 4 && $channels > 2 * <$V>::LANES {
            const $vectors: usize = 4;
            $body
        } else {
            const $vectors: usize = 2;
            $body
        }
    };
}

/// n_j(m) of an empty slot.
const NO_OUTPUT: usize = usize::MAX;

/// Stage 2's operands for blocks of `width` templates (see the module docs).
struct Slots {
    width: usize,
    /// Slots of each block: the most outputs any of its templates has.
    counts: Vec<usize>,
    /// outputs[block][j][lane] = n_j(block·width + lane), or NO_OUTPUT.
    outputs: Vec<Vec<usize>>,
    /// masks[block][j][g·K² + tap][lane] = T_j[g,tap][block·width + lane].
    masks: Vec<Vec<f32>>,
}

impl Slots {
    fn new(shape: &SbfShape, assignment: &TemplateAssignment, masks: &[f32], width: usize) -> Self {
        let taps = shape.taps();
        let group_taps = shape.groups * taps;
        let outputs_of = assignment.outputs_of_templates(shape.templates);
        let blocks = shape.templates.div_ceil(width);
        let mut slots = Slots {
            width,
            counts: Vec::with_capacity(blocks),
            outputs: Vec::with_capacity(blocks),
            masks: Vec::with_capacity(blocks),
        };
        for block in 0..blocks {
            let first = block * width;
            let output =
                |j: usize, lane: usize| outputs_of.get(first + lane).and_then(|list| list.get(j)).copied();
            let count = (first..shape.templates.min(first + width))
                .map(|m| outputs_of[m].len())
                .max()
                .unwrap_or(0);
            let mut outputs = Vec::with_capacity(count * width);
            let mut block_masks = Vec::with_capacity(count * group_taps * width);
            for j in 0..count {
                outputs.extend((0..width).map(|lane| output(j, lane).unwrap_or(NO_OUTPUT)));
                for gt in 0..group_taps {
                    block_masks.extend((0..width).map(|lane| {
                        output(j, lane).map_or(0.0, |n| {
                            mask_value(shape, masks, assignment.mask_row[n], gt / taps, gt % taps)
                        })
                    }));
                }
            }
            slots.counts.push(count);
            slots.outputs.push(outputs);
            slots.masks.push(block_masks);
        }
        slots
    }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

/// The forward pass's pixels of one class, and its stage-1 tap lists: for each (g, tap) that
/// reads inside x (gt = g·K² + tap ascending), the taps c ∈ g in order.
struct ForwardClass<'a> {
    pixels: &'a [(usize, isize)],
    stage1: Vec<(usize, TapList)>,
}

fn forward_classes<'a>(shape: &SbfShape, product: &'a ChannelProduct) -> Vec<ForwardClass<'a>> {
    let (taps, cg) = (shape.taps(), shape.group_channels());
    product
        .classes
        .iter()
        .map(|class| {
            // The product's taps are (c, kh, kw) with panel row c·K² + tap.
            let mut lists: BTreeMap<usize, Vec<(usize, isize)>> = BTreeMap::new();
            for (row, offset) in class.taps.iter() {
                let (c, tap) = (row / taps, row % taps);
                lists.entry(c / cg * taps + tap).or_default().push((row, offset));
            }
            ForwardClass {
                pixels: &class.pixels,
                stage1: lists
                    .into_iter()
                    .map(|(gt, list)| (gt, TapList::new(list)))
                    .collect(),
            }
        })
        .collect()
}

/// [`fused_forward_layout_with`] in the channel layout (see the module docs); the operands
/// checked.
pub(super) fn fused_forward_channels(
    isa: Isa,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    with_vector!(VectorKind::for_columns(isa, shape.templates), V => {
        with_tile_vectors!(V, shape.templates, VECTORS => {
            forward_tiled::<V, CHANNEL_TILE_ROWS, VECTORS>(shape, assignment, input, templates, masks, output)
        })
    })
}

fn forward_tiled<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    let width = VECTORS * V::LANES;
    let product = ChannelProduct::forward(&shape.stage1_shape());
    let classes = forward_classes(shape, &product);
    let slots = Slots::new(shape, assignment, masks, width);
    let (depth, pixels, x_image_len) = (product.depth, product.pixels, product.source_image_len);
    let y_image_len = shape.out_channels * pixels;
    let group_taps = shape.groups * shape.taps();
    let max_slots = slots.counts.iter().copied().max().unwrap_or(0);
    let packed_len = slots.counts.len() * depth * width;
    let call = new_call();
    // panel[block][(c, tap)][lane] = B[block·width + lane, c, tap] (0 past the last template)
    let pack = |packed: &mut [f32]| {
        for (block, panel) in packed.chunks_mut(depth * width).enumerate() {
            for lane in 0..width {
                let m = block * width + lane;
                for t in 0..depth {
                    panel[t * width + lane] = if m < shape.templates {
                        templates[m * depth + t]
                    } else {
                        0.0
                    };
                }
            }
        }
    };
    output
        .par_chunks_mut(ROWS * y_image_len)
        .zip(input.par_chunks(ROWS * x_image_len))
        .for_each(|(y_task, x_task)| {
            let images = y_task.len() / y_image_len;
            with_thread_panels(call, packed_len, pack, |packed| {
                V::compiled(
                    #[inline(always)]
                    || {
                        let mut sums = vec![[[V::zero(); VECTORS]; ROWS]; max_slots];
                        for (block, panel) in packed.chunks(depth * width).enumerate() {
                            let (block_masks, block_outputs) = (&slots.masks[block], &slots.outputs[block]);
                            let sums = &mut sums[..slots.counts[block]];
                            for class in &classes {
                                for &(pixel, base) in class.pixels {
                                    // Rows past the task's images repeat its last (thrown away).
                                    let bases: [isize; ROWS] = std::array::from_fn(|r| {
                                        (r.min(images - 1) * x_image_len) as isize + base
                                    });
                                    sums.fill([[V::zero(); VECTORS]; ROWS]);
                                    for (gt, list) in &class.stage1 {
                                        let z =
                                            broadcast_tile::<V, ROWS, VECTORS>(panel, x_task, &bases, list);
                                        for (j, sum) in sums.iter_mut().enumerate() {
                                            let t_row =
                                                &block_masks[(j * group_taps + gt) * width..][..width];
                                            for v in 0..VECTORS {
                                                let t: V = load_lanes(t_row, v * V::LANES, V::LANES);
                                                for r in 0..ROWS {
                                                    sum[r][v] = t.mul_add(z[r][v], sum[r][v]);
                                                }
                                            }
                                        }
                                    }
                                    for (j, sum) in sums.iter().enumerate() {
                                        let outs = &block_outputs[j * width..][..width];
                                        for (r, sum_row) in sum.iter().enumerate().take(images) {
                                            let y = &mut y_task[r * y_image_len..][..y_image_len];
                                            for (v, &vector) in sum_row.iter().enumerate() {
                                                let lanes = &outs[v * V::LANES..][..V::LANES];
                                                for (&n, &value) in lanes.iter().zip(&lanes_of(vector)) {
                                                    if n != NO_OUTPUT {
                                                        y[n * pixels + pixel] = value;
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    },
                )
            })
        });
}

// ---------------------------------------------------------------------------------------------
// Input gradient
// ---------------------------------------------------------------------------------------------

/// dX of [`fused_backward_layout_with`] in the channel layout (see the module docs), added
/// into `grad_input`; the operands checked.
pub(super) fn fused_input_grad_channels(
    isa: Isa,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) {
    let cg = shape.group_channels();
    with_vector!(VectorKind::for_columns(isa, cg), V => {
        with_tile_vectors!(V, cg, VECTORS => {
            input_grad_tiled::<V, CHANNEL_TILE_ROWS, VECTORS>(shape, assignment, templates, masks, grad_output, grad_input)
        })
    })
}

fn input_grad_tiled<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grad_input: &mut [f32],
) {
    let width = VECTORS * V::LANES;
    let (taps, cg, groups) = (shape.taps(), shape.group_channels(), shape.groups);
    let group_taps = groups * taps;
    let plane = shape.out_plane();
    // D of one image and group: [Ho·Wo][K²][M padded to whole vectors].
    let m_lanes = shape.templates.next_multiple_of(V::LANES);
    let d_pixel_len = taps * m_lanes;
    let d_image_len = plane * d_pixel_len;
    let slots = Slots::new(shape, assignment, masks, m_lanes); // one block: all templates
    let (slot_count, slot_outputs, slot_masks) = (slots.counts[0], &slots.outputs[0], &slots.masks[0]);
    debug_assert_eq!(slots.width, m_lanes);
    // The dense input gradient's classes for F = M, its taps (m, kh, kw) reading dy at
    // m·Ho·Wo − shift from base = I·Wo + J; in D the same tap reads
    // (base − shift)·K²·M' + tap·M' + m.
    let product = ChannelProduct::input_grad(&shape.stage1_shape());
    let classes: Vec<(Vec<(usize, isize)>, TapList)> = product
        .classes
        .iter()
        .map(|class| {
            let pixels = class
                .pixels
                .iter()
                .map(|&(q, base)| (q, base * d_pixel_len as isize))
                .collect();
            let list = TapList::new(class.taps.iter().map(|(row, offset)| {
                let (m, tap) = (row / taps, row % taps);
                let shift = (m * plane) as isize - offset;
                (
                    row,
                    (tap as isize - shift * taps as isize) * m_lanes as isize + m as isize,
                )
            }));
            (pixels, list)
        })
        .collect();
    let depth = product.depth; // M·K²
    let blocks = cg.div_ceil(width);
    let group_panels_len = blocks * depth * width;
    let call = new_call();
    // panel[g][block][(m, tap)][lane] = B[m, g·Cg + block·width + lane, tap] (0 past the group)
    let pack = |packed: &mut [f32]| {
        for (gb, panel) in packed.chunks_mut(depth * width).enumerate() {
            let (g, block) = (gb / blocks, gb % blocks);
            for lane in 0..width {
                let c = block * width + lane;
                for t in 0..depth {
                    let (m, tap) = (t / taps, t % taps);
                    panel[t * width + lane] = if c < cg {
                        templates[(m * shape.in_channels + g * cg + c) * taps + tap]
                    } else {
                        0.0
                    };
                }
            }
        }
    };
    let pixels = shape.in_height * shape.in_width;
    let (x_image_len, y_image_len) = (shape.in_channels * pixels, shape.out_channels * plane);
    grad_input
        .par_chunks_mut(ROWS * x_image_len)
        .zip(grad_output.par_chunks(ROWS * y_image_len))
        .for_each(|(dx_task, r_task)| {
            let images = dx_task.len() / x_image_len;
            with_thread_panels(call, groups * group_panels_len, pack, |packed| {
                V::compiled(
                    #[inline(always)]
                    || {
                        with_workspace(&TASK_WORKSPACE, ROWS * d_image_len, |d| {
                            for (g, group_panels) in packed.chunks(group_panels_len).enumerate() {
                                // 1. D of every image of the task, for group g.
                                for (r_image, d_image) in
                                    r_task.chunks(y_image_len).zip(d.chunks_mut(d_image_len))
                                {
                                    d_image.fill(0.0);
                                    for (p, d_pixel) in d_image.chunks_mut(d_pixel_len).enumerate() {
                                        for j in 0..slot_count {
                                            for first in (0..m_lanes).step_by(V::LANES) {
                                                let mut gathered = [0.0f32; 16];
                                                let outs = &slot_outputs[j * m_lanes + first..][..V::LANES];
                                                for (value, &n) in gathered.iter_mut().zip(outs) {
                                                    if n != NO_OUTPUT {
                                                        *value = r_image[n * plane + p];
                                                    }
                                                }
                                                let r_j: V = load_lanes(&gathered, 0, V::LANES);
                                                for tap in 0..taps {
                                                    let t_at =
                                                        (j * group_taps + g * taps + tap) * m_lanes + first;
                                                    let t: V = load_lanes(slot_masks, t_at, V::LANES);
                                                    let at = tap * m_lanes + first;
                                                    let sum: V = load_lanes(d_pixel, at, V::LANES);
                                                    store_lanes(d_pixel, at, t.mul_add(r_j, sum), V::LANES);
                                                }
                                            }
                                        }
                                    }
                                }
                                // 2. dX[c] += Σ B[m, c, tap] · D[..][tap][m], c in group g. Each
                                //    (p, tap) of D is read by one pixel q only, once per block of
                                //    channels: the blocks go innermost, so that D (MiBs on 15×15
                                //    maps) streams from memory once rather than once per block.
                                for (class_pixels, list) in &classes {
                                    for &(q, base) in class_pixels {
                                        let bases: [isize; ROWS] = std::array::from_fn(|r| {
                                            (r.min(images - 1) * d_image_len) as isize + base
                                        });
                                        for (block, panel) in group_panels.chunks(depth * width).enumerate() {
                                            let tile =
                                                broadcast_tile::<V, ROWS, VECTORS>(panel, d, &bases, list);
                                            for (r, tile_row) in tile.iter().enumerate().take(images) {
                                                let dx = &mut dx_task[r * x_image_len..][..x_image_len];
                                                for (v, &vector) in tile_row.iter().enumerate() {
                                                    let first = block * width + v * V::LANES;
                                                    let channels = first..cg.min(first + V::LANES);
                                                    for (c, &value) in channels.zip(&lanes_of(vector)) {
                                                        dx[(g * cg + c) * pixels + q] += value;
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        })
                    },
                )
            })
        });
}
