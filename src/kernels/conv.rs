//! The dense convolution the ops call: the fast path (SIMD + threads).
//! Each function has the same contract as its twin in `conv_naive` (the
//! oracle): `forward` overwrites, `input_grad` and `weight_grad` accumulate.
//!
//! Shapes: x [N, C, H, W], w [F, C, K, K], y [N, F, Ho, Wo], stride s, padding p.
//!
//! All three passes are matrix products computed by the register-tiled FMA
//! microkernels of `kernels::microkernel`, without an im2col matrix.
//!
//! Forward: `y[n]` [F, Ho·Wo] = w [F, C·K²] · B, with B[(c,kh,kw), (oh,ow)] =
//! x[n, c, oh·s+kh−p, ow·s+kw−p] read straight from a zero-padded,
//! phase-split copy of the image (`PhaseSplitImage`), where that element sits
//! at `base(oh, ow) + offset(c, kh, kw)` and 8 neighbouring ow are 8
//! neighbouring floats.
//!
//! Input gradient: each input pixel gathers from the output gradient. Split
//! the input pixels by their phase (r, q) = ((ih+p) mod s, (iw+p) mod s) and
//! let (I, J) = ((ih+p) div s, (iw+p) div s); only the taps kh = r + s·t,
//! kw = q + s·u reach them, from output pixel (I − t, J − u):
//!
//! ```text
//!   dx[n,c,ih,iw] += Σ_f Σ_t Σ_u  dy[n, f, I−t, J−u] · w[f, c, r+s·t, q+s·u]
//! ```
//!
//! For every phase this is again A · B with A[c, (f,t,u)] = w[f,c,r+s·t,q+s·u]
//! and B read from a zero-padded copy of dy. No FLOP is spent on the zeros a
//! strided transpose-convolution would insert.
//!
//! Weight gradient: dw[f, (c,kh,kw)] += Σ_n Σ_(oh,ow) `dy[n,f,oh,ow]` · B[(c,kh,kw),(oh,ow)],
//! a reduction over pixels, 8 pixels per lane, with the same B as forward.
//!
//! Threads (rayon): forward and input gradient split over images (and, when
//! the batch is smaller than twice the threads, over blocks of output rows of
//! the product too): disjoint slices of the output, so no locks. Each task
//! pads its own image into a thread-local buffer that stays in L2.
//! The weight gradient reduces over the batch: each task sums a chunk of
//! images (one or two chunks per thread) into its own partial dW (the first
//! chunk straight into dW), and the partials are added at the end, in a fixed
//! order, in parallel slices; no atomics. A batch smaller than the thread
//! count, or a small batch of a deep layer on a small map, is split over
//! output channels instead.
//! Every thread packs its own copy of the weight panels, on its first task of
//! a call: the pack is repeated on each thread (a few µs), but each core then
//! reads the panels from its own cache. (One shared copy, packed half by each
//! thread, moved half the panels from core to core in every call and cost a
//! fork-join of its own; at batch 8 a call lasts 0.1–0.5 ms, and both showed
//! in the 1 → 2 thread speed-up.)
//!
//! Memory: the padded copies, packed weights and partial sums live in
//! thread-local buffers that grow and are kept between calls (fresh pages are
//! expensive here).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

use rayon::prelude::*;

use super::microkernel::{
    add_lanes, dot_tile, gemm_tile, store_lanes, GatherMatrix, PixelPairs, LANES, SOURCE_SLACK,
};
use super::ConvShape;

thread_local! {
    /// Buffers of one kernel call on the calling thread (the weight gradient's partial sums).
    static CALL_WORKSPACE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// This thread's packed weight panels and the call they were packed for.
    static THREAD_PANELS: Cell<(u64, Vec<f32>)> = const { Cell::new((0, Vec::new())) };
    /// Buffers of one parallel task on a worker thread (padded images of a group).
    static TASK_WORKSPACE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `work` on the first `len` floats of a thread-local buffer that grows
/// and is kept for the next call. The contents are stale: `work` must write
/// what it reads. (The buffer is taken out while in use, so a nested call on
/// the same thread gets a fresh one instead of a double borrow.)
fn with_workspace<R>(
    slot: &'static LocalKey<Cell<Vec<f32>>>,
    len: usize,
    work: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buffer = slot.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = work(&mut buffer[..len]);
    slot.set(buffer);
    result
}

/// The two register tilings compiled: ROWS × VECTORS 8-lane accumulators.
#[derive(Clone, Copy, Debug)]
enum Tiling {
    Rows6Vectors2,
    Rows2Vectors6,
}

/// The tiling that wastes the fewest padded multiply-adds for `rows` rows of
/// the product and `vectors` 8-pixel vectors.
fn choose_tiling(rows: usize, vectors: usize) -> Tiling {
    let padded = |tile_rows: usize, tile_vectors: usize| {
        rows.div_ceil(tile_rows) * tile_rows * vectors.div_ceil(tile_vectors) * tile_vectors
    };
    // 6 × 2 when it wastes at most as much: it loads less per multiply-add.
    if padded(6, 2) <= padded(2, 6) {
        Tiling::Rows6Vectors2
    } else {
        Tiling::Rows2Vectors6
    }
}

/// 8 neighbouring pixels of one row of a pixel grid: (row, first column, lanes used).
#[derive(Clone, Copy, Debug)]
struct VectorSlot {
    row: usize,
    col: usize,
    lanes: usize,
}

/// The vectors covering rows × cols, row by row, 8 columns at a time.
fn vector_slots(rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Vec<VectorSlot> {
    let mut slots = Vec::new();
    for row in rows {
        for col in cols.clone().step_by(LANES) {
            slots.push(VectorSlot {
                row,
                col,
                lanes: LANES.min(cols.end - col),
            });
        }
    }
    slots
}

/// `bases[v]` for a group of up to VECTORS slots; missing ones repeat the last
/// (computed and thrown away).
fn group_bases<const VECTORS: usize>(group: &[VectorSlot], row_stride: usize) -> [usize; VECTORS] {
    std::array::from_fn(|v| {
        let slot = group[v.min(group.len() - 1)];
        slot.row * row_stride + slot.col
    })
}

/// Packs the rows of a matrix m [rows, depth] into panels of ROWS rows,
/// k-major: packed[panel][k][r] = m[panel·ROWS + r, k] (0 past the last row).
/// `row(i)` yields m[i, 0..depth] in order. One row at a time, so the reads
/// stream and the writes (stride ROWS) stay inside one panel in L1.
fn pack_row_panels<const ROWS: usize, Row: Iterator<Item = f32>>(
    rows: usize,
    depth: usize,
    row: impl Fn(usize) -> Row,
    packed: &mut [f32],
) {
    for (panel, panel_data) in packed.chunks_mut(depth * ROWS).enumerate() {
        for r in 0..ROWS {
            let index = panel * ROWS + r;
            let slots = panel_data.chunks_exact_mut(ROWS);
            if index < rows {
                for (slot, value) in slots.zip(row(index)) {
                    slot[r] = value;
                }
            } else {
                slots.for_each(|slot| slot[r] = 0.0);
            }
        }
    }
}

/// Numbers the calls that pack weight panels, so that a thread can tell
/// whether the panels it holds are this call's.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// A fresh number for one kernel call (see [`with_thread_panels`]).
fn new_call() -> u64 {
    NEXT_CALL.fetch_add(1, Ordering::Relaxed)
}

/// Runs `work` on this thread's copy of the packed weight panels of kernel
/// call `call` (`len` floats), packing them with `pack` first if this is the
/// thread's first task of the call.
fn with_thread_panels<R>(
    call: u64,
    len: usize,
    pack: impl FnOnce(&mut [f32]),
    work: impl FnOnce(&[f32]) -> R,
) -> R {
    let (mut packed_for, mut panels) = THREAD_PANELS.take();
    if packed_for != call {
        if panels.len() < len {
            panels.resize(len, 0.0);
        }
        pack(&mut panels[..len]);
        packed_for = call;
    }
    let result = work(&panels[..len]);
    THREAD_PANELS.set((packed_for, panels));
    result
}

/// The inputs of one task of the forward pass or the input gradient: this
/// thread's packed weight panels of `call` (see [`with_thread_panels`]) and a
/// task workspace of `image_len` floats written by `fill` (one padded image)
/// followed by SOURCE_SLACK zeros, which the microkernel may read past the end.
fn with_task_inputs<R>(
    call: u64,
    packed_len: usize,
    pack: impl FnOnce(&mut [f32]),
    image_len: usize,
    fill: impl FnOnce(&mut [f32]),
    work: impl FnOnce(&[f32], &[f32]) -> R,
) -> R {
    with_thread_panels(call, packed_len, pack, |packed| {
        with_workspace(&TASK_WORKSPACE, image_len + SOURCE_SLACK, |source| {
            let (image, slack) = source.split_at_mut(image_len);
            slack.fill(0.0);
            fill(image);
            work(packed, source)
        })
    })
}

/// One image x[n] [C, H, W] zero-padded and split into s × s phases, so that
/// every tap of a strided convolution reads neighbouring floats for
/// neighbouring outputs:
///
///   image[c][ph][pw][i][j] = x[n, c, i·s + ph − p, j·s + pw − p]   (0 outside x)
///
/// Tap (c, kh, kw) of output (oh, ow) is then image[c][kh mod s][kw mod s]
/// [oh + kh div s][ow + kw div s] = `base(oh, ow) + tap_offset(c, kh, kw)`.
#[derive(Clone, Copy, Debug)]
struct PhaseSplitImage {
    shape: ConvShape,
    /// Rows i of one phase plane: Ho + (K−1) div s.
    rows: usize,
    /// Columns j of one phase plane: Wo + (K−1) div s.
    cols: usize,
}

impl PhaseSplitImage {
    fn new(shape: &ConvShape) -> Self {
        let reach = (shape.kernel - 1) / shape.stride;
        PhaseSplitImage {
            shape: *shape,
            rows: shape.out_height() + reach,
            cols: shape.out_width() + reach,
        }
    }

    fn plane_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Floats of one image: C · s² planes.
    fn image_len(&self) -> usize {
        self.shape.in_channels * self.shape.stride * self.shape.stride * self.plane_len()
    }

    /// offset(c, kh, kw) for k = (c·K + kh)·K + kw, the column order of w [F, C·K²].
    fn tap_offsets(&self) -> Vec<usize> {
        let ConvShape {
            in_channels,
            kernel,
            stride,
            ..
        } = self.shape;
        let mut offsets = Vec::with_capacity(in_channels * kernel * kernel);
        for c in 0..in_channels {
            for kh in 0..kernel {
                for kw in 0..kernel {
                    let plane = (c * stride + kh % stride) * stride + kw % stride;
                    offsets.push(plane * self.plane_len() + (kh / stride) * self.cols + kw / stride);
                }
            }
        }
        offsets
    }

    /// base(oh, ow) for the first of 8 neighbouring outputs.
    fn row_stride(&self) -> usize {
        self.cols
    }

    /// Writes image = padded, phase-split x_image [C, H, W].
    fn fill(&self, x_image: &[f32], image: &mut [f32]) {
        let ConvShape {
            in_channels,
            in_height,
            in_width,
            stride,
            padding,
            ..
        } = self.shape;
        image.fill(0.0);
        for c in 0..in_channels {
            for ih in 0..in_height {
                let x_row = &x_image[(c * in_height + ih) * in_width..][..in_width];
                let (phase_row, i) = ((ih + padding) % stride, (ih + padding) / stride);
                if i >= self.rows {
                    continue;
                }
                if stride == 1 {
                    let start = (c * self.rows + i) * self.cols + padding;
                    let len = in_width.min(self.cols.saturating_sub(padding));
                    image[start..start + len].copy_from_slice(&x_row[..len]);
                    continue;
                }
                // Phase pw holds the columns iw = j·s + pw − p, from the first j with iw ≥ 0.
                for phase_col in 0..stride {
                    let plane = (c * stride + phase_row) * stride + phase_col;
                    let row = &mut image[plane * self.plane_len() + i * self.cols..][..self.cols];
                    let first_j = padding.saturating_sub(phase_col).div_ceil(stride);
                    let first_iw = first_j * stride + phase_col - padding;
                    let columns = x_row.iter().skip(first_iw).step_by(stride);
                    for (destination, &value) in row.iter_mut().skip(first_j).zip(columns) {
                        *destination = value;
                    }
                }
            }
        }
    }
}

/// `output = conv(input, weight)`; see [`super::conv_naive::forward`].
///
///   y[n, f, oh, ow] = Σ_(c,kh,kw) w[f, c, kh, kw] · image_n[base(oh,ow) + offset(c,kh,kw)]
pub fn forward(shape: &ConvShape, input: &[f32], weight: &[f32], output: &mut [f32]) {
    shape.check_buffers(input.len(), weight.len(), output.len());
    if output.is_empty() {
        return;
    }
    let vectors = shape.out_height() * shape.out_width().div_ceil(LANES);
    // Stride 1, K = 3: the taps kw = 0, 1, 2 of one (c, kh) are 3 neighbouring
    // floats of the padded image, read through one offset (see `gemm_tile`).
    let runs_of_3 = shape.stride == 1 && shape.kernel == 3;
    match (choose_tiling(shape.out_channels, vectors), runs_of_3) {
        (Tiling::Rows2Vectors6, false) => forward_tiled::<2, 6, 1>(shape, input, weight, output),
        (Tiling::Rows6Vectors2, false) => forward_tiled::<6, 2, 1>(shape, input, weight, output),
        (Tiling::Rows2Vectors6, true) => forward_tiled::<2, 6, 3>(shape, input, weight, output),
        (Tiling::Rows6Vectors2, true) => forward_tiled::<6, 2, 3>(shape, input, weight, output),
    }
}

/// RUN: taps per run of neighbouring floats in the padded image (3 or 1).
fn forward_tiled<const ROWS: usize, const VECTORS: usize, const RUN: usize>(
    shape: &ConvShape,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
) {
    let image = PhaseSplitImage::new(shape);
    let offsets = image.tap_offsets();
    let depth = offsets.len(); // C·K²
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let pixels = h_out * w_out;
    let panels = shape.out_channels.div_ceil(ROWS);
    let packed_len = panels * depth * ROWS;
    let slots = vector_slots(0..h_out, 0..w_out);
    let panels_per_task = panels.div_ceil(tasks_per_image(shape.batch, panels));
    let x_image_len = shape.in_channels * shape.in_height * shape.in_width;
    // packed: [panels][C·K²][ROWS], panels of w [F, C·K²]; one copy per thread
    let call = new_call();
    let pack = |packed: &mut [f32]| {
        pack_row_panels::<ROWS, _>(
            shape.out_channels,
            depth,
            |f| weight[f * depth..][..depth].iter().copied(),
            packed,
        )
    };
    let (y_image_len, task_len) = (shape.out_channels * pixels, panels_per_task * ROWS * pixels);
    for_each_image_task(
        output,
        y_image_len,
        task_len,
        input,
        x_image_len,
        |task, y_task, x_n| {
            // source: [C][s][s][rows][cols] of image n, then SOURCE_SLACK zeros
            let fill = |padded: &mut [f32]| image.fill(x_n, padded);
            with_task_inputs(
                call,
                packed_len,
                pack,
                image.image_len(),
                fill,
                |packed, source| {
                    let source = GatherMatrix::with_runs(source, &offsets, RUN);
                    for (task_panel, y_panel) in y_task.chunks_mut(ROWS * pixels).enumerate() {
                        let panel = task * panels_per_task + task_panel;
                        let a = &packed[panel * depth * ROWS..][..depth * ROWS];
                        let rows = y_panel.len() / pixels;
                        for group in slots.chunks(VECTORS) {
                            let bases = group_bases::<VECTORS>(group, image.row_stride());
                            let tile = gemm_tile::<ROWS, VECTORS, RUN>(a, &source, &bases);
                            for (v, slot) in group.iter().enumerate() {
                                for r in 0..rows {
                                    let start = r * pixels + slot.row * w_out + slot.col;
                                    store_lanes(y_panel, start, tile[r][v], slot.lanes);
                                }
                            }
                        }
                    }
                },
            );
        },
    );
}

/// The parallel tasks of the forward pass and the input gradient: each image
/// of `output` (`output_image_len` floats, its source image `source_image_len`
/// floats of `source`) is cut into tasks of `task_len` floats (blocks of row
/// panels), and `task(index within the image, its output floats, the source
/// image)` runs for each, in parallel over images and tasks.
fn for_each_image_task(
    output: &mut [f32],
    output_image_len: usize,
    task_len: usize,
    source: &[f32],
    source_image_len: usize,
    task: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) {
    output
        .par_chunks_mut(output_image_len)
        .zip(source.par_chunks(source_image_len))
        .for_each(|(output_image, source_image)| {
            output_image
                .par_chunks_mut(task_len)
                .enumerate()
                .for_each(|(index, output_task)| task(index, output_task, source_image));
        });
}

/// Tasks per image: one when the batch alone keeps every thread busy (twice
/// over, for balance), otherwise the image's row panels are split too.
fn tasks_per_image(batch: usize, panels: usize) -> usize {
    (2 * rayon::current_num_threads())
        .div_ceil(batch)
        .clamp(1, panels)
}

/// Output gradient dy[n] [F, Ho, Wo] zero-padded by T − 1 rows/columns before
/// (T = ⌈K/s⌉ taps per phase at most) and enough after, so that every input
/// pixel reads its T × T window of output pixels at unit stride:
///
///   image[f][i][j] = dy[n, f, i − (T−1), j − (T−1)]   (0 outside dy)
#[derive(Clone, Copy, Debug)]
struct PaddedGradOutput {
    shape: ConvShape,
    border: usize,
    rows: usize,
    cols: usize,
}

impl PaddedGradOutput {
    fn new(shape: &ConvShape) -> Self {
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

    fn plane_len(&self) -> usize {
        self.rows * self.cols
    }

    fn image_len(&self) -> usize {
        self.shape.out_channels * self.plane_len()
    }

    fn fill(&self, dy_image: &[f32], image: &mut [f32]) {
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
struct InputPhase {
    row_phase: usize,
    col_phase: usize,
    row_taps: usize,
    col_taps: usize,
    /// I of the phase's pixels.
    rows: std::ops::Range<usize>,
    /// J of the phase's pixels.
    cols: std::ops::Range<usize>,
}

impl InputPhase {
    /// Every phase that receives gradient (s > K leaves some pixels untouched).
    fn all(shape: &ConvShape) -> Vec<InputPhase> {
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

/// `grad_input += ∂L/∂x`; see [`super::conv_naive::input_grad`] and the module
/// comment for the phase split:
///
/// ```text
///   dx[n,c,ih,iw] += Σ_(f,t,u) w[f, c, r+s·t, q+s·u] · dy_padded_n[base(I,J) + offset(f,t,u)]
/// ```
pub fn input_grad(shape: &ConvShape, grad_output: &[f32], weight: &[f32], grad_input: &mut [f32]) {
    shape.check_buffers(grad_input.len(), weight.len(), grad_output.len());
    if grad_input.is_empty() || grad_output.is_empty() {
        return;
    }
    let phases = InputPhase::all(shape);
    let vectors: usize = phases
        .iter()
        .map(|phase| phase.rows.len() * phase.cols.len().div_ceil(LANES))
        .sum();
    match choose_tiling(shape.in_channels, vectors) {
        Tiling::Rows2Vectors6 => input_grad_tiled::<2, 6>(shape, &phases, grad_output, weight, grad_input),
        Tiling::Rows6Vectors2 => input_grad_tiled::<6, 2>(shape, &phases, grad_output, weight, grad_input),
    }
}

fn input_grad_tiled<const ROWS: usize, const VECTORS: usize>(
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
                slots: vector_slots(phase.rows.clone(), phase.cols.clone()),
                start,
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
                    for (task_panel, dx_panel) in dx_task.chunks_mut(ROWS * pixels).enumerate() {
                        let panel = task * panels_per_task + task_panel;
                        let rows = dx_panel.len() / pixels;
                        for (phase, plan) in phases.iter().zip(&plans) {
                            let depth = plan.taps.len();
                            let a = &packed[plan.start + panel * depth * ROWS..][..depth * ROWS];
                            let source = GatherMatrix::new(source, &plan.taps);
                            for group in plan.slots.chunks(VECTORS) {
                                let bases = group_bases::<VECTORS>(group, padded.cols);
                                let tile = gemm_tile::<ROWS, VECTORS, 1>(a, &source, &bases);
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
                    }
                },
            );
        },
    );
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
}

/// Images whose padded copies one weight-gradient task keeps at once (about
/// 384 KiB: inside the 1 MiB L2), so short reductions (8×8 maps) still run long.
const WEIGHT_GRAD_GROUP_FLOATS: usize = 96 * 1024;

/// Floats one weight-gradient tile call may stream over (24 KiB of the 32 KiB L1).
const WEIGHT_GRAD_TILE_FLOATS: usize = 6 * 1024;

/// `grad_weight += ∂L/∂w`; see [`super::conv_naive::weight_grad`]:
///
///   dw[f, (c,kh,kw)] += Σ_n Σ_(oh,ow) dy[n, f, oh, ow] · image_n[base(oh,ow) + offset(c,kh,kw)]
///
/// Tiles of 4 output channels × 3 taps (one kernel row), 8 pixels per lane:
/// 12 accumulators + 3 columns + 1 row fill the 16 registers, and a tile call
/// streams only 4 planes of dy and one channel of the images, which stay in L1.
///
/// Threads: a large batch is split into chunks of images (two per thread, or
/// one when two would hold fewer than 8 images each); the first chunk is
/// summed straight into dW, every other into its own partial dW, and the
/// partials are added in a fixed order (no atomics; the result does not depend
/// on which thread ran which chunk). A small batch is split over output
/// channels instead (one slice per thread), where each task sums every image
/// into its own rows of dW: always when the batch is smaller than the thread
/// count, and otherwise when padding the whole batch on every thread costs
/// less than the partials (`split_over_channels`).
pub fn weight_grad(shape: &ConvShape, input: &[f32], grad_output: &[f32], grad_weight: &mut [f32]) {
    shape.check_buffers(input.len(), grad_weight.len(), grad_output.len());
    if grad_weight.is_empty() || grad_output.is_empty() {
        return;
    }
    let geometry = WeightGradGeometry::new(shape);
    let depth = geometry.offsets.len(); // C·K²
    let weight_len = grad_weight.len();
    let threads = rayon::current_num_threads();
    let panels = shape.out_channels.div_ceil(WEIGHT_GRAD_ROWS);
    if split_over_channels(shape, threads, geometry.image.image_len(), weight_len) {
        // Split over output channels: task i owns dw rows [i·rows_per_task, …).
        let rows_per_task = panels.div_ceil(threads) * WEIGHT_GRAD_ROWS;
        grad_weight
            .par_chunks_mut(rows_per_task * depth)
            .enumerate()
            .for_each(|(task, rows)| {
                let first = task * rows_per_task;
                let channels = first..first + rows.len() / depth;
                weight_grad_task(&geometry, input, grad_output, 0..shape.batch, channels, rows);
            });
        return;
    }
    // Two chunks per thread, so that rayon rebalances when a core is slowed by other
    // work, unless that leaves fewer than WEIGHT_GRAD_MIN_CHUNK images per chunk: a
    // chunk's images make the reduction of each tile call, and at batch 8 halving it
    // cost more than the balance gains (the 2-thread call ran shorter tile calls than
    // the 1-thread one).
    let chunks_per_thread = if shape.batch >= 2 * threads * WEIGHT_GRAD_MIN_CHUNK {
        2
    } else {
        1
    };
    let chunks = (chunks_per_thread * threads).clamp(1, shape.batch);
    let images_per_chunk = shape.batch.div_ceil(chunks);
    let chunks = shape.batch.div_ceil(images_per_chunk);
    with_workspace(&CALL_WORKSPACE, (chunks - 1) * weight_len, |partials| {
        // Chunk 0 sums straight into grad_weight (the kernel accumulates);
        // chunk i > 0 into its own zeroed partials[i − 1] [F, C·K²].
        let mut sums: Vec<&mut [f32]> = Vec::with_capacity(chunks);
        sums.push(&mut *grad_weight);
        sums.extend(partials.chunks_mut(weight_len));
        sums.into_par_iter().enumerate().for_each(|(chunk, sum)| {
            if chunk > 0 {
                sum.fill(0.0);
            }
            let first = chunk * images_per_chunk;
            let images = first..shape.batch.min(first + images_per_chunk);
            weight_grad_task(&geometry, input, grad_output, images, 0..shape.out_channels, sum);
        });
        // grad_weight += Σ_(chunk > 0) partials[chunk − 1], in chunk order,
        // split over slices of grad_weight.
        if partials.is_empty() {
            return;
        }
        let slice = weight_len.div_ceil(2 * threads).max(1024);
        let partials = &*partials;
        grad_weight
            .par_chunks_mut(slice)
            .enumerate()
            .for_each(|(index, gradient)| {
                let start = index * slice;
                for partial in partials.chunks(weight_len) {
                    for (gradient, value) in gradient.iter_mut().zip(&partial[start..]) {
                        *gradient += value;
                    }
                }
            });
    });
}

/// Whether the weight gradient splits over output channels rather than images.
///
/// Over images, each chunk past the first costs a partial dW: zeroed, summed
/// into and added back (about 2·|dW| floats of traffic, the second half read
/// from another core's cache). Over channels, every thread pads every image
/// (N·|padded image| floats) but keeps its tile reductions over the whole
/// batch. A batch smaller than the thread count always splits over channels;
/// a batch that gives every thread one chunk (fewer than 8 images per chunk
/// otherwise) does where its padded batch is at most 2·|dW| floats: deep
/// layers on small maps (at batch 8, 64→64 at 8×8: 51 200 against 73 728),
/// not the 16-channel 32×32 maps (147 968 against 4 608).
fn split_over_channels(shape: &ConvShape, threads: usize, image_len: usize, weight_len: usize) -> bool {
    let panels = shape.out_channels.div_ceil(WEIGHT_GRAD_ROWS);
    if threads < 2 || panels < 2 {
        return false;
    }
    let one_chunk_per_thread = shape.batch < 2 * threads * WEIGHT_GRAD_MIN_CHUNK;
    shape.batch < threads
        || (one_chunk_per_thread && panels >= threads && shape.batch * image_len <= 2 * weight_len)
}

/// Fewest images per weight-gradient chunk before the batch is cut into two chunks per thread.
const WEIGHT_GRAD_MIN_CHUNK: usize = 8;

/// Output channels per weight-gradient register tile.
const WEIGHT_GRAD_ROWS: usize = 4;

/// What every weight-gradient task of one call reads: the padded image
/// layout, the tap offsets into it and the 8-pixel vectors of dy (computed
/// once per call, not per task).
struct WeightGradGeometry {
    image: PhaseSplitImage,
    /// offset(c, kh, kw) in the padded image, k = (c·K + kh)·K + kw.
    offsets: Vec<usize>,
    /// The vectors covering the Ho × Wo output pixels.
    slots: Vec<VectorSlot>,
}

impl WeightGradGeometry {
    fn new(shape: &ConvShape) -> Self {
        let image = PhaseSplitImage::new(shape);
        WeightGradGeometry {
            image,
            offsets: image.tap_offsets(),
            slots: vector_slots(0..shape.out_height(), 0..shape.out_width()),
        }
    }
}

/// One weight-gradient task, on the calling thread:
///
///   rows[f − channels.start, (c,kh,kw)] += Σ_(n ∈ images) Σ_(oh,ow) dy[n, f, oh, ow] · image_n[…]
///
/// for f in `channels`; `rows` is [channels.len(), C·K²].
fn weight_grad_task(
    geometry: &WeightGradGeometry,
    input: &[f32],
    grad_output: &[f32],
    images: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    const ROWS: usize = WEIGHT_GRAD_ROWS;
    const COLS: usize = 3;
    let WeightGradGeometry {
        image,
        offsets,
        slots,
    } = geometry;
    let shape = &image.shape;
    let depth = offsets.len(); // C·K²
    let out_channels = shape.out_channels;
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let input_image_len = shape.in_channels * shape.in_height * shape.in_width;
    let output_image_len = out_channels * h_out * w_out;
    // dy rows are read 8 pixels at a time, and one tile call reads the same
    // channel of every image of its group. Where the rows are not a multiple
    // of 8 or a group holds several images, dy is copied per group,
    // channel-major: [channels][group][Ho][dy_row], rows padded with zero
    // lanes. One channel's planes of the group are then contiguous (in the
    // batch layout they lie a power of two apart and evict each other from L1).
    let dy_row = w_out.next_multiple_of(LANES);
    let dy_plane = h_out * dy_row;
    let per_image = image.image_len() + channels.len() * dy_plane;
    // One tile call reads ROWS planes of dy and about 1 channel of the image per
    // grouped image: keep that inside L1, and the group's images inside L2.
    let tile_floats = ROWS * dy_plane + shape.stride * shape.stride * image.plane_len();
    let group = (WEIGHT_GRAD_TILE_FLOATS / tile_floats)
        .min(WEIGHT_GRAD_GROUP_FLOATS / per_image)
        .clamp(1, images.len().max(1));
    let copy_dy = group > 1 || dy_row != w_out;
    let sources_len = group * image.image_len() + SOURCE_SLACK;
    let dy_len = if copy_dy {
        channels.len() * group * dy_plane
    } else {
        0
    };
    with_workspace(&TASK_WORKSPACE, sources_len + dy_len, |task| {
        let (sources, dy_copy) = task.split_at_mut(sources_len);
        let mut pairs = PixelPairs::with_capacity(group * slots.len());
        for group_first in images.clone().step_by(group) {
            let group_end = images.end.min(group_first + group);
            let group_len = group_end - group_first;
            // sources: [group][C][s][s][rows][cols] then SOURCE_SLACK zeros
            sources[group_len * image.image_len()..].fill(0.0);
            for n in group_first..group_end {
                let g = n - group_first;
                image.fill(
                    &input[n * input_image_len..][..input_image_len],
                    &mut sources[g * image.image_len()..][..image.image_len()],
                );
            }
            // dy, the stride between its channels, and where (group_first, f = 0) would start in it
            let (dy, dy_channel_stride, dy_first) = if copy_dy {
                // dy_copy: [channels][group_len][Ho][dy_row]; channel f at (f − channels.start)
                let dy_channel_stride = group_len * dy_plane;
                let dy_copy = &mut dy_copy[..channels.len() * dy_channel_stride];
                // every float is written: each row's values, then its zero lanes
                for n in group_first..group_end {
                    let dy_n = &grad_output[n * output_image_len..][..output_image_len];
                    for f in channels.clone() {
                        let plane = &dy_n[f * h_out * w_out..][..h_out * w_out];
                        let copy = &mut dy_copy
                            [(f - channels.start) * dy_channel_stride + (n - group_first) * dy_plane..]
                            [..dy_plane];
                        for (row, values) in copy.chunks_mut(dy_row).zip(plane.chunks(w_out)) {
                            row[..w_out].copy_from_slice(values);
                            row[w_out..].fill(0.0);
                        }
                    }
                }
                (&*dy_copy, dy_channel_stride, 0)
            } else {
                // one image, rows a multiple of 8: read dy in place, channel f at f
                let first = group_first * output_image_len + channels.start * h_out * w_out;
                (grad_output, h_out * w_out, first)
            };
            // (dy, source) index pairs of every 8-pixel vector of the group
            pairs.clear();
            for g in 0..group_len {
                for slot in slots {
                    pairs.push(
                        dy_first + g * dy_plane + slot.row * dy_row + slot.col,
                        g * image.image_len() + slot.row * image.row_stride() + slot.col,
                    );
                }
            }
            let sources = &*sources;
            for f_first in (0..channels.len()).step_by(ROWS) {
                let tile_rows = ROWS.min(channels.len() - f_first);
                let row_starts: [usize; ROWS] =
                    std::array::from_fn(|r| (f_first + r.min(tile_rows - 1)) * dy_channel_stride);
                for k_first in (0..depth).step_by(COLS) {
                    let cols = COLS.min(depth - k_first);
                    let taps: [usize; COLS] = std::array::from_fn(|j| offsets[k_first + j.min(cols - 1)]);
                    let tile = dot_tile::<ROWS, COLS>(dy, &row_starts, sources, &taps, &pairs);
                    for r in 0..tile_rows {
                        for j in 0..cols {
                            rows[(f_first + r) * depth + k_first + j] += tile[r][j].reduce_add();
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize, channels: usize, size: usize, stride: usize) -> ConvShape {
        ConvShape {
            batch,
            in_channels: channels,
            in_height: size,
            in_width: size,
            out_channels: channels * stride,
            kernel: 3,
            stride,
            padding: 1,
        }
    }

    fn splits(shape: &ConvShape, threads: usize) -> bool {
        let image_len = PhaseSplitImage::new(shape).image_len();
        split_over_channels(shape, threads, image_len, shape.weight_len())
    }

    /// The weight gradient's split on the benchmark's shapes: over channels
    /// only for deep layers on small maps at a small batch, or a batch smaller
    /// than the thread count; never on one thread.
    #[test]
    fn weight_grad_splits_over_channels_where_padding_is_cheaper_than_partials() {
        assert!(splits(&shape(8, 64, 8, 1), 2));
        assert!(!splits(&shape(8, 16, 32, 1), 2));
        assert!(!splits(&shape(8, 32, 16, 1), 2));
        assert!(!splits(&shape(8, 32, 16, 2), 2));
        assert!(!splits(&shape(128, 64, 8, 1), 2));
        assert!(splits(&shape(1, 16, 32, 1), 2));
        assert!(!splits(&shape(8, 64, 8, 1), 1));
    }
}
