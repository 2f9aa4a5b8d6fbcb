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
//! at `base(oh, ow) + offset(c, kh, kw)` and neighbouring ow are
//! neighbouring floats (one vector: 8 or 16 of them).
//!
//! Small maps (at a batch that keeps every thread busy): a row of a
//! few pixels fills few lanes, and many taps read padding (40 % of them on a 3×3 map). There
//! the forward pass and the input gradient swap the roles ([`ConvLayout::ChannelVectors`],
//! `channels.rs`): vectors of channels, one broadcast source float per image, and per pixel
//! only the taps that read inside the source (as oneDNN does). `ConvLayout::for_forward` and
//! `for_input_grad` compare the multiply-adds each layout would do.
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
//! a reduction over pixels, a vector of pixels at a time, with the same B as forward.
//!
//! Vector width: each pass picks its vector for the width of its pixel rows
//! under `Isa::active()` (`kernels::simd`): AVX2's 8 lanes, or on AVX-512 16
//! lanes for rows of 16 pixels or more. Below that the forward pass and the
//! weight gradient run the output plane flat, 16-lane vectors spanning rows
//! over a column-unrolled image (`PlaneVectors`); the input gradient, whose
//! stride phases scatter into dx, keeps 8 lanes (with 32 registers) a row.
//! The `_with` variant of each pass takes the instruction set, for tests and
//! benchmarks. The task's loops run inside `Vector::compiled`.
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

mod channels;
mod forward;
mod input_grad;
mod weight_grad;

pub use channels::ConvLayout;
pub(in crate::kernels) use channels::{channel_tile_vectors, ChannelProduct, CHANNEL_TILE_ROWS};
pub use forward::{forward, forward_layout_with, forward_with};
pub use input_grad::{input_grad, input_grad_layout_with, input_grad_with};
pub(in crate::kernels) use input_grad::{InputPhase, PaddedGradOutput};
pub use weight_grad::{weight_grad, weight_grad_layout_with, weight_grad_with};

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

use rayon::prelude::*;

use super::microkernel::SOURCE_SLACK;
use super::simd::{Isa, Vector, VectorKind};
use super::ConvShape;

thread_local! {
    /// Buffers of one kernel call on the calling thread (the weight gradient's partial sums).
    static CALL_WORKSPACE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// This thread's packed weight panels and the call they were packed for.
    static THREAD_PANELS: Cell<(u64, Vec<f32>)> = const { Cell::new((0, Vec::new())) };
    /// Buffers of one parallel task on a worker thread (padded images of a group).
    pub(in crate::kernels) static TASK_WORKSPACE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `work` on the first `len` floats of a thread-local buffer that grows
/// and is kept for the next call. The contents are stale: `work` must write
/// what it reads. (The buffer is taken out while in use, so a nested call on
/// the same thread gets a fresh one instead of a double borrow.) Inlined, so
/// that inside `Vector::compiled` `work` is compiled for the vector's ISA.
#[inline(always)]
pub(in crate::kernels) fn with_workspace<R>(
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

/// Runs `work`, compiled for V's instruction set, on this thread's task workspace: `image_len`
/// floats written by `fill` (one padded image), then SOURCE_SLACK zeros that a vector may read
/// past the end. Mark `work` `#[inline(always)]`: its loops are then compiled inside
/// `Vector::compiled`.
#[inline(always)]
pub(in crate::kernels) fn with_padded_source<V: Vector, R>(
    image_len: usize,
    fill: impl FnOnce(&mut [f32]),
    work: impl FnOnce(&[f32]) -> R,
) -> R {
    V::compiled(
        #[inline(always)]
        || {
            with_workspace(
                &TASK_WORKSPACE,
                image_len + SOURCE_SLACK,
                #[inline(always)]
                |source| {
                    let (image, slack) = source.split_at_mut(image_len);
                    slack.fill(0.0);
                    fill(image);
                    work(source)
                },
            )
        },
    )
}

/// LANES neighbouring pixels of one row of a pixel grid: (row, first column, lanes used).
#[derive(Clone, Copy, Debug)]
pub(in crate::kernels) struct VectorSlot {
    pub row: usize,
    pub col: usize,
    pub lanes: usize,
}

/// The vectors of `lanes` lanes covering rows × cols, row by row.
pub(in crate::kernels) fn vector_slots(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    lanes: usize,
) -> Vec<VectorSlot> {
    let mut slots = Vec::new();
    for row in rows {
        for col in cols.clone().step_by(lanes) {
            slots.push(VectorSlot {
                row,
                col,
                lanes: lanes.min(cols.end - col),
            });
        }
    }
    slots
}

/// `bases[v]` for a group of up to VECTORS slots; missing ones repeat the last
/// (computed and thrown away).
pub(in crate::kernels) fn group_bases<const VECTORS: usize>(
    group: &[VectorSlot],
    row_stride: usize,
) -> [usize; VECTORS] {
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
pub(in crate::kernels) fn new_call() -> u64 {
    NEXT_CALL.fetch_add(1, Ordering::Relaxed)
}

/// Runs `work` on this thread's copy of the packed weight panels of kernel
/// call `call` (`len` floats), packing them with `pack` first if this is the
/// thread's first task of the call.
pub(in crate::kernels) fn with_thread_panels<R>(
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

/// How the pixel layout covers an output plane of Ho × Wo pixels with vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::kernels) struct PlaneVectors {
    pub kind: VectorKind,
    /// One flat run of the plane's Ho·Wo pixels (vectors may span rows) over a
    /// column-unrolled image ([`PhaseSplitImage::unrolled`]), instead of row by row.
    pub flat: bool,
}

impl PlaneVectors {
    /// Rows of Wo pixels, except on AVX-512 where a row would take 8-lane vectors (rows
    /// narrower than 16 pixels, or 24): there the plane runs flat in 16-lane vectors. An 8×8
    /// map is then 4 full vectors instead of 8 half ones, which matters where the CPU has two
    /// 512-bit FMA units (a 256-bit FMA does half the work in the same slot).
    pub fn for_plane(isa: Isa, w_out: usize) -> Self {
        match VectorKind::for_columns(isa, w_out) {
            VectorKind::Avx512Lanes8 => PlaneVectors {
                kind: VectorKind::Avx512Lanes16,
                flat: true,
            },
            kind => PlaneVectors { kind, flat: false },
        }
    }

    /// The vectors of `lanes` lanes covering an Ho × Wo plane: a row each (VectorSlot::row
    /// = oh), or flat (row 0, col = the first pixel's index oh·Wo + ow).
    pub fn slots(self, h_out: usize, w_out: usize, lanes: usize) -> Vec<VectorSlot> {
        if self.flat {
            vector_slots(0..1, 0..h_out * w_out, lanes)
        } else {
            vector_slots(0..h_out, 0..w_out, lanes)
        }
    }

    /// How many vectors of `lanes` lanes cover an Ho × Wo plane.
    pub fn count(self, h_out: usize, w_out: usize, lanes: usize) -> usize {
        if self.flat {
            (h_out * w_out).div_ceil(lanes)
        } else {
            h_out * w_out.div_ceil(lanes)
        }
    }

    /// The source image a pass over these vectors reads.
    pub fn image(self, shape: &ConvShape) -> PhaseSplitImage {
        if self.flat {
            PhaseSplitImage::unrolled(shape)
        } else {
            PhaseSplitImage::new(shape)
        }
    }
}

/// One image x[n] [C, H, W] zero-padded and split into s × s phases, so that
/// every tap of a strided convolution reads neighbouring floats for
/// neighbouring outputs:
///
///   image[c][ph][pw][i][j] = x[n, c, i·s + ph − p, j·s + pw − p]   (0 outside x)
///
/// Tap (c, kh, kw) of output (oh, ow) is then image[c][kh mod s][kw mod s]
/// [oh + kh div s][ow + kw div s] = `base(oh, ow) + tap_offset(c, kh, kw)`.
///
/// Column-unrolled ([`PhaseSplitImage::unrolled`], for flat vectors that span rows): one
/// copy per column tap kw, rows of exactly Wo floats,
///
///   image[c][kw][ph][i][j] = x[n, c, i·s + ph − p, j·s + kw − p]   (0 outside x)
///
/// so tap (c, kh, kw) of output (oh, ow) is image[c][kw][kh mod s][oh + kh div s][ow], at
/// `oh·Wo + ow + tap_offset(c, kh, kw)`: pixel p = oh·Wo + ow and p + 1 are neighbouring
/// floats also where p + 1 starts the next row. (K times the floats of the phase split, written
/// once per image: about 1/F of the pass's multiply-adds. The copies of one channel sit side by
/// side, so that the reduction, in the order (c, kh, kw), streams through the image: with the
/// K copies apart, each a whole image, the 64→64 forward on 8×8 maps waited on its loads.)
#[derive(Clone, Copy, Debug)]
pub(in crate::kernels) struct PhaseSplitImage {
    shape: ConvShape,
    /// Rows i of one phase plane: Ho + (K−1) div s.
    rows: usize,
    /// Columns j of one phase plane: Wo + (K−1) div s, or Wo when unrolled.
    cols: usize,
    /// One copy per column tap (see above).
    unrolled: bool,
}

impl PhaseSplitImage {
    pub(in crate::kernels) fn new(shape: &ConvShape) -> Self {
        let reach = (shape.kernel - 1) / shape.stride;
        PhaseSplitImage {
            shape: *shape,
            rows: shape.out_height() + reach,
            cols: shape.out_width() + reach,
            unrolled: false,
        }
    }

    /// The column-unrolled image (see the type's doc).
    pub(in crate::kernels) fn unrolled(shape: &ConvShape) -> Self {
        PhaseSplitImage {
            cols: shape.out_width(),
            unrolled: true,
            ..PhaseSplitImage::new(shape)
        }
    }

    fn plane_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Planes of one image: C · s · s, or K · C · s unrolled.
    fn planes(&self) -> usize {
        let ConvShape {
            in_channels,
            kernel,
            stride,
            ..
        } = self.shape;
        in_channels * stride * if self.unrolled { kernel } else { stride }
    }

    /// Floats of one image.
    pub(in crate::kernels) fn image_len(&self) -> usize {
        self.planes() * self.plane_len()
    }

    /// Floats of one input channel's planes.
    pub(in crate::kernels) fn channel_len(&self) -> usize {
        self.image_len() / self.shape.in_channels
    }

    /// offset(c, kh, kw) for k = (c·K + kh)·K + kw, the column order of w [F, C·K²].
    pub(in crate::kernels) fn tap_offsets(&self) -> Vec<usize> {
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
                    let (plane, column) = if self.unrolled {
                        ((c * kernel + kw) * stride + kh % stride, 0)
                    } else {
                        ((c * stride + kh % stride) * stride + kw % stride, kw / stride)
                    };
                    offsets.push(plane * self.plane_len() + (kh / stride) * self.cols + column);
                }
            }
        }
        offsets
    }

    /// Floats between rows: base(oh, ow) = oh · row_stride + ow.
    pub(in crate::kernels) fn row_stride(&self) -> usize {
        self.cols
    }

    /// Writes image = padded, phase-split (or column-unrolled) x_image [C, H, W].
    pub(in crate::kernels) fn fill(&self, x_image: &[f32], image: &mut [f32]) {
        let ConvShape {
            in_channels: _,
            in_height,
            in_width,
            kernel,
            stride,
            padding,
            ..
        } = self.shape;
        image.fill(0.0);
        // Plane column phase (pw, or kw unrolled) holds the columns iw = j·s + pw − p, from
        // the first j with iw ≥ 0: (its plane's place among the column phases, first j, first
        // iw), computed once (integer divisions by a run-time stride, per row and phase, took
        // a third of a stride-2 forward pass).
        let column_phases = if self.unrolled { kernel } else { stride };
        let first_columns: Vec<(usize, usize, usize)> = (0..column_phases)
            .map(|phase_col| {
                let first_j = padding.saturating_sub(phase_col).div_ceil(stride);
                (phase_col, first_j, first_j * stride + phase_col - padding)
            })
            .filter(|&(_, first_j, first_iw)| first_j < self.cols && first_iw < in_width)
            .collect();
        for (c, x_channel) in x_image.chunks_exact(in_height * in_width).enumerate() {
            // row ih + p = i·s + phase_row of the next row, stepped along (no division per row)
            let (mut next_phase_row, mut next_i) = (padding % stride, padding / stride);
            for x_row in x_channel.chunks_exact(in_width) {
                let (phase_row, i) = (next_phase_row, next_i);
                next_phase_row += 1;
                if next_phase_row == stride {
                    (next_phase_row, next_i) = (0, next_i + 1);
                }
                if i >= self.rows {
                    break;
                }
                if stride == 1 && !self.unrolled {
                    let start = (c * self.rows + i) * self.cols + padding;
                    let len = in_width.min(self.cols.saturating_sub(padding));
                    copy_row(&x_row[..len], &mut image[start..start + len]);
                    continue;
                }
                for &(phase_col, first_j, first_iw) in &first_columns {
                    let plane = if self.unrolled {
                        (c * kernel + phase_col) * stride + phase_row
                    } else {
                        (c * stride + phase_row) * stride + phase_col
                    };
                    let row = &mut image[plane * self.plane_len() + i * self.cols..][..self.cols];
                    copy_every_nth(stride, &x_row[first_iw..], &mut row[first_j..]);
                }
            }
        }
    }
}

/// destination[j] = source[j · stride] for as many j as both hold; stride 2 (the only
/// stride of the networks here) with the stride known to the compiler, which vectorises it.
fn copy_every_nth(stride: usize, source: &[f32], destination: &mut [f32]) {
    fn copy<const STRIDE: usize>(source: &[f32], destination: &mut [f32]) {
        let count = destination.len().min(source.len().div_ceil(STRIDE));
        let whole = count.min(source.len() / STRIDE);
        for (value, chunk) in destination[..whole].iter_mut().zip(source.chunks_exact(STRIDE)) {
            *value = chunk[0];
        }
        if whole < count {
            destination[whole] = source[whole * STRIDE];
        }
    }
    match stride {
        1 => {
            let count = destination.len().min(source.len());
            copy_row(&source[..count], &mut destination[..count]);
        }
        2 => copy::<2>(source, destination),
        _ => {
            for (value, chunk) in destination.iter_mut().zip(source.chunks(stride)) {
                *value = chunk[0];
            }
        }
    }
}

/// destination = source, for the short rows of an image (8–32 floats): 8-float blocks
/// copied inline, where `copy_from_slice` called memcpy once per row (with the row loop's
/// divisions, a 16-channel 32×32 image's padded copy took about a fifth of its forward pass).
#[inline(always)]
fn copy_row(source: &[f32], destination: &mut [f32]) {
    assert_eq!(source.len(), destination.len(), "copy_row: lengths differ");
    let mut blocks = destination.chunks_exact_mut(8);
    for (block, values) in (&mut blocks).zip(source.chunks_exact(8)) {
        let values: &[f32; 8] = values.try_into().expect("8-float block");
        let block: &mut [f32; 8] = block.try_into().expect("8-float block");
        *block = *values;
    }
    let tail = blocks.into_remainder();
    let start = source.len() - tail.len();
    for (value, &source_value) in tail.iter_mut().zip(&source[start..]) {
        *value = source_value;
    }
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
