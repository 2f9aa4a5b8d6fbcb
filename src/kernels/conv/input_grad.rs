//! The input gradient: every input pixel gathers from dy, one product per stride phase.

use super::super::microkernel::{add_lanes, gemm_tile, with_tile, GatherMatrix, Tiling};
use super::super::simd::{with_vector, Isa, Vector, VectorKind};
use super::super::ConvShape;
use super::channels::{channel_vector, ChannelProduct, ConvLayout};
use super::*;

/// Output gradient dy[n] [F, Ho, Wo] zero-padded by T − 1 rows/columns before
/// (T = ⌈K/s⌉ taps per phase at most) and enough after, so that every input
/// pixel reads its T × T window of output pixels at unit stride:
///
///   image[f][i][j] = dy[n, f, i − (T−1), j − (T−1)]   (0 outside dy)
#[derive(Clone, Copy, Debug)]
pub(in crate::kernels) struct PaddedGradOutput {
    shape: ConvShape,
    pub border: usize,
    pub rows: usize,
    pub cols: usize,
}

impl PaddedGradOutput {
    pub(in crate::kernels) fn new(shape: &ConvShape) -> Self {
        let taps = (shape.kernel - 1) / shape.stride + 1;
        let last_row = (shape.in_height - 1 + shape.padding) / shape.stride;
        let last_col = (shape.in_width - 1 + shape.padding) / shape.stride;
        PaddedGradOutput {
            shape: *shape,
            border: taps - 1,
            rows: last_row + taps,
            cols: last_col + taps,
        }
    }

    pub(in crate::kernels) fn plane_len(&self) -> usize {
        self.rows * self.cols
    }

    pub(in crate::kernels) fn image_len(&self) -> usize {
        self.shape.out_channels * self.plane_len()
    }

    pub(in crate::kernels) fn fill(&self, dy_image: &[f32], image: &mut [f32]) {
        let (h_out, w_out) = (self.shape.out_height(), self.shape.out_width());
        image.fill(0.0);
        for f in 0..self.shape.out_channels {
            for oh in 0..h_out.min(self.rows - self.border) {
                let len = w_out.min(self.cols - self.border);
                let start = f * self.plane_len() + (oh + self.border) * self.cols + self.border;
                image[start..start + len].copy_from_slice(&dy_image[(f * h_out + oh) * w_out..][..len]);
            }
        }
    }
}

/// The input pixels of one phase (r, q) of the input gradient:
/// ih = I·s + r − p, iw = J·s + q − p, reached by the taps kh = r + s·t
/// (t < row_taps) and kw = q + s·u (u < col_taps).
#[derive(Clone, Debug)]
pub(in crate::kernels) struct InputPhase {
    pub row_phase: usize,
    pub col_phase: usize,
    pub row_taps: usize,
    pub col_taps: usize,
    /// I of the phase's pixels.
    pub rows: std::ops::Range<usize>,
    /// J of the phase's pixels.
    pub cols: std::ops::Range<usize>,
}

impl InputPhase {
    /// Every phase that receives gradient (s > K leaves some pixels untouched).
    pub(in crate::kernels) fn all(shape: &ConvShape) -> Vec<InputPhase> {
        let ConvShape {
            kernel,
            stride,
            padding,
            ..
        } = *shape;
        // Taps ≡ phase (mod s) below K, and the I with 0 ≤ I·s + phase − p < size.
        let taps = |phase: usize| {
            if phase < kernel {
                (kernel - 1 - phase) / stride + 1
            } else {
                0
            }
        };
        let range = |phase: usize, size: usize| {
            let first = padding.saturating_sub(phase).div_ceil(stride);
            let end = if size + padding > phase {
                (size - 1 + padding - phase) / stride + 1
            } else {
                0
            };
            first..end.max(first)
        };
        let mut phases = Vec::new();
        for row_phase in 0..stride {
            for col_phase in 0..stride {
                let phase = InputPhase {
                    row_phase,
                    col_phase,
                    row_taps: taps(row_phase),
                    col_taps: taps(col_phase),
                    rows: range(row_phase, shape.in_height),
                    cols: range(col_phase, shape.in_width),
                };
                if phase.row_taps > 0
                    && phase.col_taps > 0
                    && !phase.rows.is_empty()
                    && !phase.cols.is_empty()
                {
                    phases.push(phase);
                }
            }
        }
        phases
    }

    /// Reduction length F · row_taps · col_taps.
    fn depth(&self, shape: &ConvShape) -> usize {
        shape.out_channels * self.row_taps * self.col_taps
    }

    /// offset(f, t, u) of dy[f, I−t, J−u] from base(I, J) = I·cols + J.
    fn tap_offsets(&self, padded: &PaddedGradOutput) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(self.depth(&padded.shape));
        for f in 0..padded.shape.out_channels {
            for t in 0..self.row_taps {
                for u in 0..self.col_taps {
                    offsets
                        .push(f * padded.plane_len() + (padded.border - t) * padded.cols + padded.border - u);
                }
            }
        }
        offsets
    }

    /// Where A[c, (f,t,u)] = w[f, c, r + s·t, q + s·u] sits in w, for c = 0, in
    /// the order of `tap_offsets`; channel c adds c·K². (A table, so that
    /// packing A does no division per element.)
    fn weight_offsets(&self, shape: &ConvShape) -> Vec<usize> {
        let ConvShape {
            in_channels,
            kernel,
            stride,
            ..
        } = *shape;
        let mut offsets = Vec::with_capacity(self.depth(shape));
        for f in 0..shape.out_channels {
            for t in 0..self.row_taps {
                for u in 0..self.col_taps {
                    let (kh, kw) = (self.row_phase + stride * t, self.col_phase + stride * u);
                    offsets.push((f * in_channels * kernel + kh) * kernel + kw);
                }
            }
        }
        offsets
    }
}

/// `grad_input += ∂L/∂x`; see [`crate::kernels::conv_naive::input_grad`] and the module
/// comment for the phase split:
///
/// ```text
///   dx[n,c,ih,iw] += Σ_(f,t,u) w[f, c, r+s·t, q+s·u] · dy_padded_n[base(I,J) + offset(f,t,u)]
/// ```
pub fn input_grad(shape: &ConvShape, grad_output: &[f32], weight: &[f32], grad_input: &mut [f32]) {
    input_grad_with(Isa::active(), shape, grad_output, weight, grad_input)
}

/// [`input_grad`] with the instruction set `isa`.
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn input_grad_with(
    isa: Isa,
    shape: &ConvShape,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    let layout = ConvLayout::for_input_grad(isa, shape, rayon::current_num_threads());
    input_grad_layout_with(isa, layout, shape, grad_output, weight, grad_input)
}

/// [`input_grad`] with the instruction set `isa` in the layout `layout` (for tests and
/// benchmarks; both layouts give the same floats, see `channels.rs`).
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn input_grad_layout_with(
    isa: Isa,
    layout: ConvLayout,
    shape: &ConvShape,
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    isa.assert_supported("conv input_grad");
    shape.check_buffers(grad_input.len(), weight.len(), grad_output.len());
    if grad_input.is_empty() || grad_output.is_empty() {
        return;
    }
    if layout == ConvLayout::ChannelVectors {
        // panel[(f, kh, kw), c] = w[f, c, kh, kw]
        let (channels, taps) = (shape.in_channels, shape.kernel * shape.kernel);
        let panel_entry = |c: usize, t: usize| weight[((t / taps) * channels + c) * taps + t % taps];
        return ChannelProduct::input_grad(shape).run(isa, panel_entry, grad_output, grad_input, true);
    }
    let phases = InputPhase::all(shape);
    // The widest phase's columns choose the vector.
    let columns = phases.iter().map(|phase| phase.cols.len()).max().unwrap_or(0);
    let kind = VectorKind::for_columns(isa, columns);
    with_vector!(kind, V => {
        let vectors: usize = phases
            .iter()
            .map(|phase| phase.rows.len() * phase.cols.len().div_ceil(V::LANES))
            .sum();
        let tiling = Tiling::choose(V::REGISTERS, shape.in_channels, vectors);
        with_tile!(tiling, ROWS, VECTORS => {
            input_grad_tiled::<V, ROWS, VECTORS>(shape, &phases, grad_output, weight, grad_input)
        })
    })
}

impl ConvLayout {
    /// The input gradient's layout for `shape` on `threads` threads (`ConvLayout::pick`),
    /// counted as in [`ConvLayout::for_forward`]: the pixel layout's multiply-adds over every
    /// phase's vectors in whole tiles.
    pub fn for_input_grad(isa: Isa, shape: &ConvShape, threads: usize) -> ConvLayout {
        ConvLayout::input_grad_choice(isa, shape, threads).0
    }

    /// [`ConvLayout::for_input_grad`] and its predicted speed-up over the pixel layout (see
    /// [`ConvLayout::forward_choice`]).
    pub fn input_grad_choice(isa: Isa, shape: &ConvShape, threads: usize) -> (ConvLayout, f64) {
        if isa == Isa::Avx2 || shape.batch.div_ceil(super::channels::CHANNEL_TILE_ROWS) < 2 * threads {
            return (ConvLayout::PixelVectors, 1.0); // (before building the classes)
        }
        let phases = InputPhase::all(shape);
        let columns = phases.iter().map(|phase| phase.cols.len()).max().unwrap_or(0);
        let kind = VectorKind::for_columns(isa, columns);
        let pixel_macs = with_vector!(kind, V => {
            let phase_vectors =
                |phase: &InputPhase| phase.rows.len() * phase.cols.len().div_ceil(V::LANES);
            let vectors = phases.iter().map(phase_vectors).sum();
            let (rows, group) = Tiling::choose(V::REGISTERS, shape.in_channels, vectors).shape();
            let per_row: usize = phases
                .iter()
                .map(|phase| phase_vectors(phase).next_multiple_of(group) * phase.depth(shape))
                .sum();
            shape.in_channels.next_multiple_of(rows) * per_row * V::LANES
        });
        let (_, width) = channel_vector(isa, shape.in_channels);
        let channel_macs = ChannelProduct::input_grad_macs(shape, width);
        let margin = super::channels::CHANNEL_MARGINS.input_grad;
        ConvLayout::pick(isa, shape.batch, threads, pixel_macs, channel_macs, margin)
    }
}

fn input_grad_tiled<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &ConvShape,
    phases: &[InputPhase],
    grad_output: &[f32],
    weight: &[f32],
    grad_input: &mut [f32],
) {
    let padded = PaddedGradOutput::new(shape);
    let (height, width) = (shape.in_height, shape.in_width);
    let pixels = height * width;
    let panels = shape.in_channels.div_ceil(ROWS);
    // Per phase: its tap offsets, where its A sits in w, its vector slots and
    // where its panels start in the packed weights.
    let mut packed_len = 0;
    let plans: Vec<PhasePlan> = phases
        .iter()
        .map(|phase| {
            let start = packed_len;
            packed_len += panels * phase.depth(shape) * ROWS;
            PhasePlan {
                taps: phase.tap_offsets(&padded),
                weight_offsets: phase.weight_offsets(shape),
                slots: vector_slots(phase.rows.clone(), phase.cols.clone(), V::LANES),
                start,
                row_stride: padded.cols,
            }
        })
        .collect();
    let panels_per_task = panels.div_ceil(tasks_per_image(shape.batch, panels));
    let dy_image_len = shape.out_channels * shape.out_height() * shape.out_width();
    // packed: per phase [panels][F·Tr·Tq][ROWS], panels of A [C, F·Tr·Tq]; one copy per thread
    let call = new_call();
    let channel_stride = shape.kernel * shape.kernel;
    let pack = |packed: &mut [f32]| {
        for plan in &plans {
            let depth = plan.taps.len();
            pack_row_panels::<ROWS, _>(
                shape.in_channels,
                depth,
                |c| {
                    let channel = &weight[c * channel_stride..];
                    plan.weight_offsets.iter().map(move |&offset| channel[offset])
                },
                &mut packed[plan.start..][..panels * depth * ROWS],
            );
        }
    };
    let (dx_image_len, task_len) = (shape.in_channels * pixels, panels_per_task * ROWS * pixels);
    for_each_image_task(
        grad_input,
        dx_image_len,
        task_len,
        grad_output,
        dy_image_len,
        |task, dx_task, dy_n| {
            // source: [F][rows][cols] padded dy of image n, then SOURCE_SLACK zeros
            let fill = |padded_dy: &mut [f32]| padded.fill(dy_n, padded_dy);
            with_task_inputs(
                call,
                packed_len,
                pack,
                padded.image_len(),
                fill,
                |packed, source| {
                    V::compiled(
                        #[inline(always)]
                        || {
                            for (task_panel, dx_panel) in dx_task.chunks_mut(ROWS * pixels).enumerate() {
                                let panel = task * panels_per_task + task_panel;
                                let rows = dx_panel.len() / pixels;
                                for (phase, plan) in phases.iter().zip(&plans) {
                                    input_grad_phase::<V, ROWS, VECTORS>(
                                        shape, phase, plan, panel, packed, source, rows, dx_panel,
                                    );
                                }
                            }
                        },
                    )
                },
            );
        },
    );
}

/// One phase of one row panel of the input gradient: dx_panel (its `rows`
/// channels of one image) += A_panel · B over the phase's pixels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_grad_phase<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &ConvShape,
    phase: &InputPhase,
    plan: &PhasePlan,
    panel: usize,
    packed: &[f32],
    source: &[f32],
    rows: usize,
    dx_panel: &mut [f32],
) {
    let (pixels, width) = (shape.in_height * shape.in_width, shape.in_width);
    let depth = plan.taps.len();
    let a = &packed[plan.start + panel * depth * ROWS..][..depth * ROWS];
    let source = GatherMatrix::new(source, &plan.taps);
    for group in plan.slots.chunks(VECTORS) {
        let bases = group_bases::<VECTORS>(group, plan.row_stride);
        let tile = gemm_tile::<V, ROWS, VECTORS, 1>(a, &source, &bases);
        for (v, slot) in group.iter().enumerate() {
            // (I, J) → (ih, iw) = (I·s + r − p, J·s + q − p)
            let ih = slot.row * shape.stride + phase.row_phase - shape.padding;
            let iw = slot.col * shape.stride + phase.col_phase - shape.padding;
            for r in 0..rows {
                let start = r * pixels + ih * width + iw;
                add_lanes(dx_panel, start, shape.stride, tile[r][v], slot.lanes);
            }
        }
    }
}

/// What the input gradient needs of one phase, computed once per call.
struct PhasePlan {
    /// offset(f, t, u) into the padded dy (see `InputPhase::tap_offsets`).
    taps: Vec<usize>,
    /// Where A[0, (f,t,u)] sits in w (see `InputPhase::weight_offsets`).
    weight_offsets: Vec<usize>,
    /// The vectors covering the phase's input pixels.
    slots: Vec<VectorSlot>,
    /// Where the phase's panels start in the packed weights.
    start: usize,
    /// Floats between rows of the padded dy.
    row_stride: usize,
}
