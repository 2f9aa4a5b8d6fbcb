//! The weight gradient: a reduction over pixels, a vector of them at a time, chunked over images
//! or split over output channels.

use rayon::prelude::*;

use super::super::microkernel::{broadcast_tile, dot_tile, PixelPairs, TapList, SOURCE_SLACK};
use super::super::simd::{lanes_of, with_vector, Isa, Vector};
use super::super::ConvShape;
use super::channels::{channel_vector, ChannelProduct, ConvLayout, CHANNEL_TILE_ROWS};
use super::*;

/// Images whose padded copies one weight-gradient task keeps at once (about
/// 384 KiB: inside the 1 MiB L2), so short reductions (8×8 maps) still run long.
const WEIGHT_GRAD_GROUP_FLOATS: usize = 96 * 1024;

/// Floats one weight-gradient tile call may stream over (24 KiB of the 32 KiB L1).
const WEIGHT_GRAD_TILE_FLOATS: usize = 6 * 1024;

/// `grad_weight += ∂L/∂w`; see [`crate::kernels::conv_naive::weight_grad`]:
///
///   dw[f, (c,kh,kw)] += Σ_n Σ_(oh,ow) dy[n, f, oh, ow] · image_n[base(oh,ow) + offset(c,kh,kw)]
///
/// Tiles of 4 output channels × 3 taps (one kernel row), a vector of pixels
/// per step: 12 accumulators + 3 columns + 1 row fill the 16 registers of
/// AVX2 (8 × 3 in AVX-512's 32: 24 + 3 + 1), and a tile call streams only 4
/// (8) planes of dy and one channel of the images, which stay in L1.
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
    weight_grad_with(Isa::active(), shape, input, grad_output, grad_weight)
}

/// [`weight_grad`] with the instruction set `isa`.
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn weight_grad_with(
    isa: Isa,
    shape: &ConvShape,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    let layout = ConvLayout::for_weight_grad(isa, shape, rayon::current_num_threads());
    weight_grad_layout_with(isa, layout, shape, input, grad_output, grad_weight)
}

/// [`weight_grad`] with the instruction set `isa` in the layout `layout` (for tests and
/// benchmarks).
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn weight_grad_layout_with(
    isa: Isa,
    layout: ConvLayout,
    shape: &ConvShape,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    isa.assert_supported("conv weight_grad");
    shape.check_buffers(input.len(), grad_weight.len(), grad_output.len());
    if grad_weight.is_empty() || grad_output.is_empty() {
        return;
    }
    match layout {
        ConvLayout::PixelVectors => {
            let plane = PlaneVectors::for_plane(isa, shape.out_width());
            let pixels = Some(plane);
            with_vector!(plane.kind, V => {
                if V::REGISTERS >= 32 {
                    weight_grad_vector::<V, 8>(pixels, shape, input, grad_output, grad_weight)
                } else {
                    weight_grad_vector::<V, 4>(pixels, shape, input, grad_output, grad_weight)
                }
            })
        }
        ConvLayout::ChannelVectors => {
            let (kind, _) = channel_vector(isa, shape.out_channels);
            with_vector!(kind, V => {
                weight_grad_vector::<V, CHANNEL_TILE_ROWS>(None, shape, input, grad_output, grad_weight)
            })
        }
    }
}

impl ConvLayout {
    /// The weight gradient's layout for `shape` on `threads` threads (`ConvLayout::pick`),
    /// counted as in [`ConvLayout::for_forward`]: the pixel layout reduces over every lane of
    /// its dy rows (padded to whole vectors) for every tap, in tiles of 8 (4) channels.
    pub fn for_weight_grad(isa: Isa, shape: &ConvShape, threads: usize) -> ConvLayout {
        if isa == Isa::Avx2 || shape.batch.div_ceil(CHANNEL_TILE_ROWS) < 2 * threads {
            return ConvLayout::PixelVectors; // (before building the classes)
        }
        let depth = shape.in_channels * shape.kernel * shape.kernel;
        let plane = PlaneVectors::for_plane(isa, shape.out_width());
        let pixel_macs = with_vector!(plane.kind, V => {
            let rows = if V::REGISTERS >= 32 { 8 } else { 4 };
            let lanes = plane.count(shape.out_height(), shape.out_width(), V::LANES) * V::LANES;
            shape.out_channels.next_multiple_of(rows) * lanes * depth
        });
        let (_, width) = channel_vector(isa, shape.out_channels);
        let channel_macs = ChannelProduct::forward_macs(shape, width);
        let margin = super::channels::CHANNEL_MARGINS.weight_grad;
        ConvLayout::pick(isa, shape.batch, threads, pixel_macs, channel_macs, margin).0
    }
}

/// `pixels`: the pixel layout's vectors, or None for the channel layout. ROWS: the register
/// tile's rows: output channels (pixel layout) or input channels (channel layout, whose tile
/// has 4 vectors of output channels with 32 registers, 2 with 16).
fn weight_grad_vector<V: Vector, const ROWS: usize>(
    pixels: Option<PlaneVectors>,
    shape: &ConvShape,
    input: &[f32],
    grad_output: &[f32],
    grad_weight: &mut [f32],
) {
    let layout = match pixels {
        Some(_) => ConvLayout::PixelVectors,
        None => ConvLayout::ChannelVectors,
    };
    // The pixel layout's padded images and tap offsets (the channel layout reads x as it is).
    let geometry = pixels.map(|plane| WeightGradGeometry::new(shape, plane, V::LANES));
    let pixel_geometry = || geometry.as_ref().expect("built for the pixel layout");
    let depth = shape.in_channels * shape.kernel * shape.kernel;
    let weight_len = grad_weight.len();
    let threads = rayon::current_num_threads();
    // sum[f, (c,kh,kw)] += the chunk `images`' share of dW
    let task = |images: std::ops::Range<usize>, sum: &mut [f32]| match layout {
        ConvLayout::PixelVectors => weight_grad_task::<V, ROWS>(
            pixel_geometry(),
            input,
            grad_output,
            images,
            0..shape.out_channels,
            sum,
        ),
        ConvLayout::ChannelVectors if V::REGISTERS >= 32 => {
            weight_grad_channels_task::<V, ROWS, 4>(shape, input, grad_output, images, sum)
        }
        ConvLayout::ChannelVectors => {
            weight_grad_channels_task::<V, ROWS, 2>(shape, input, grad_output, images, sum)
        }
    };
    let panels = shape.out_channels.div_ceil(ROWS);
    if layout == ConvLayout::PixelVectors
        && split_over_channels(
            shape,
            ROWS,
            threads,
            pixel_geometry().image.image_len(),
            weight_len,
        )
    {
        // Split over output channels: task i owns dw rows [i·rows_per_task, …).
        let rows_per_task = panels.div_ceil(threads) * ROWS;
        grad_weight
            .par_chunks_mut(rows_per_task * depth)
            .enumerate()
            .for_each(|(task, rows)| {
                let first = task * rows_per_task;
                let channels = first..first + rows.len() / depth;
                weight_grad_task::<V, ROWS>(
                    pixel_geometry(),
                    input,
                    grad_output,
                    0..shape.batch,
                    channels,
                    rows,
                );
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
            task(first..shape.batch.min(first + images_per_chunk), sum);
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
fn split_over_channels(
    shape: &ConvShape,
    tile_rows: usize,
    threads: usize,
    image_len: usize,
    weight_len: usize,
) -> bool {
    let panels = shape.out_channels.div_ceil(tile_rows);
    if threads < 2 || panels < 2 {
        return false;
    }
    let one_chunk_per_thread = shape.batch < 2 * threads * WEIGHT_GRAD_MIN_CHUNK;
    shape.batch < threads
        || (one_chunk_per_thread && panels >= threads && shape.batch * image_len <= 2 * weight_len)
}

/// Fewest images per weight-gradient chunk before the batch is cut into two chunks per thread.
const WEIGHT_GRAD_MIN_CHUNK: usize = 8;

/// What every weight-gradient task of one call reads: the padded image
/// layout, the tap offsets into it and the vectors of dy (computed once per
/// call, not per task).
struct WeightGradGeometry {
    image: PhaseSplitImage,
    /// offset(c, kh, kw) in the padded image, k = (c·K + kh)·K + kw.
    offsets: Vec<usize>,
    /// The vectors covering the Ho × Wo output pixels.
    slots: Vec<VectorSlot>,
    /// The grid the slots cover: (Ho, Wo), or (1, Ho·Wo) for flat vectors.
    grid: (usize, usize),
}

impl WeightGradGeometry {
    fn new(shape: &ConvShape, plane: PlaneVectors, lanes: usize) -> Self {
        let image = plane.image(shape);
        let (h_out, w_out) = (shape.out_height(), shape.out_width());
        WeightGradGeometry {
            image,
            offsets: image.tap_offsets(),
            slots: plane.slots(h_out, w_out, lanes),
            grid: if plane.flat {
                (1, h_out * w_out)
            } else {
                (h_out, w_out)
            },
        }
    }
}

/// One weight-gradient task, on the calling thread:
///
///   rows[f − channels.start, (c,kh,kw)] += Σ_(n ∈ images) Σ_(oh,ow) dy[n, f, oh, ow] · image_n[…]
///
/// for f in `channels`; `rows` is [channels.len(), C·K²].
fn weight_grad_task<V: Vector, const ROWS: usize>(
    geometry: &WeightGradGeometry,
    input: &[f32],
    grad_output: &[f32],
    images: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    V::compiled(
        #[inline(always)]
        || weight_grad_task_body::<V, ROWS>(geometry, input, grad_output, images, channels, rows),
    )
}

#[inline(always)]
fn weight_grad_task_body<V: Vector, const ROWS: usize>(
    geometry: &WeightGradGeometry,
    input: &[f32],
    grad_output: &[f32],
    images: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    const COLS: usize = 3;
    let WeightGradGeometry {
        image,
        offsets,
        slots,
        grid,
    } = geometry;
    let shape = &image.shape;
    let depth = offsets.len(); // C·K²
    let out_channels = shape.out_channels;
    // dy's planes as rows of pixels the slots cover: Ho × Wo, or flat 1 × Ho·Wo
    let (h_out, w_out) = *grid;
    let input_image_len = shape.in_channels * shape.in_height * shape.in_width;
    let output_image_len = out_channels * h_out * w_out;
    // dy rows are read a vector of pixels at a time, and one tile call reads the same
    // channel of every image of its group. Where the rows are not a multiple
    // of LANES or a group holds several images, dy is copied per group,
    // channel-major: [channels][group][Ho][dy_row], rows padded with zero
    // lanes. One channel's planes of the group are then contiguous (in the
    // batch layout they lie a power of two apart and evict each other from L1).
    let dy_row = w_out.next_multiple_of(V::LANES);
    let dy_plane = h_out * dy_row;
    let per_image = image.image_len() + channels.len() * dy_plane;
    // One tile call reads ROWS planes of dy and about 1 channel of the image per
    // grouped image: keep that inside L1, and the group's images inside L2.
    let tile_floats = ROWS * dy_plane + image.channel_len();
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
    with_workspace(
        &TASK_WORKSPACE,
        sources_len + dy_len,
        #[inline(always)]
        |task| {
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
                    // one image, rows a multiple of LANES: read dy in place, channel f at f
                    let first = group_first * output_image_len + channels.start * h_out * w_out;
                    (grad_output, h_out * w_out, first)
                };
                // (dy, source) index pairs of every vector of the group
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
                        let tile = dot_tile::<V, ROWS, COLS>(dy, &row_starts, sources, &taps, &pairs);
                        for r in 0..tile_rows {
                            for j in 0..cols {
                                rows[(f_first + r) * depth + k_first + j] += tile[r][j].reduce_add();
                            }
                        }
                    }
                }
            }
        },
    );
}

/// Floats of dy transposed per channel block of a channel-layout weight-gradient group
/// (256 KiB: a tile streams them, from L2).
const CHANNEL_GROUP_FLOATS: usize = 64 * 1024;

/// One weight-gradient task in the channel layout (`channels.rs`):
///
///   rows[f, (c,kh,kw)] += Σ_(n ∈ images) Σ_(p whose tap (kh,kw) reads inside x) dy[n, f, p] · x[n, base(p) + offset(c,kh,kw)]
///
/// with base and offset as in the forward pass. A [`broadcast_tile`] per ROWS input channels
/// c of one tap (kh, kw) and VECTORS·LANES output channels f: its rows broadcast x at
/// offset(c, kh, kw) + base(p), its vectors read dy transposed to [block][image][p][f], and it
/// reduces over the (image, p) pairs whose tap (kh, kw) reads inside x, so the padding taps
/// are skipped. Images go in groups whose transposed dy block stays in L2.
fn weight_grad_channels_task<V: Vector, const ROWS: usize, const VECTORS: usize>(
    shape: &ConvShape,
    input: &[f32],
    grad_output: &[f32],
    images: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    let (h_out, w_out, kernel) = (shape.out_height(), shape.out_width(), shape.kernel);
    let (pixels, taps) = (h_out * w_out, kernel * kernel);
    let (channels, out_channels) = (shape.in_channels, shape.out_channels);
    let depth = channels * taps;
    let width = VECTORS * V::LANES;
    let blocks = out_channels.div_ceil(width);
    let x_image_len = channels * shape.in_height * shape.in_width;
    let dy_image_len = out_channels * pixels;
    let group = (CHANNEL_GROUP_FLOATS / (pixels * width)).clamp(1, images.len().max(1));
    // base(p) of each output pixel, and per tap (kh, kw) the pixels it reads inside x for
    let bases: Vec<isize> = (0..h_out)
        .flat_map(|oh| (0..w_out).map(move |ow| (oh, ow)))
        .map(|(oh, ow)| {
            (oh * shape.stride * shape.in_width + ow * shape.stride) as isize
                - (shape.padding * shape.in_width + shape.padding) as isize
        })
        .collect();
    let inside: Vec<Vec<usize>> = (0..taps)
        .map(|t| {
            (0..pixels)
                .filter(|p| {
                    shape
                        .input_position(p / w_out, p % w_out, t / kernel, t % kernel)
                        .is_some()
                })
                .collect()
        })
        .collect();
    with_workspace(&TASK_WORKSPACE, blocks * group * pixels * width, |dy_t| {
        for group_first in images.clone().step_by(group) {
            let group_len = group.min(images.end - group_first);
            let block_len = group_len * pixels * width;
            // dy_t: [block][g][p][width], dy_t[…][j] = dy[group_first + g, block·width + j, p] (0 past F)
            for (block, dy_block) in dy_t[..blocks * block_len].chunks_mut(block_len).enumerate() {
                for (g, dy_image) in dy_block.chunks_mut(pixels * width).enumerate() {
                    let dy_n = &grad_output[(group_first + g) * dy_image_len..][..dy_image_len];
                    for j in 0..width {
                        let f = block * width + j;
                        for p in 0..pixels {
                            dy_image[p * width + j] = if f < out_channels {
                                dy_n[f * pixels + p]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
            // per tap (kh, kw): the (g, p) pairs it sums, (panel row g·P + p, base in the group's x)
            let bases = &bases;
            let lists: Vec<TapList> = inside
                .iter()
                .map(|pixels_inside| {
                    TapList::new((0..group_len).flat_map(|g| {
                        pixels_inside
                            .iter()
                            .map(move |&p| (g * pixels + p, (g * x_image_len) as isize + bases[p]))
                    }))
                })
                .collect();
            let x_group = &input[group_first * x_image_len..][..group_len * x_image_len];
            let dy_t = &*dy_t;
            V::compiled(
                #[inline(always)]
                || {
                    for (block, panel) in dy_t[..blocks * block_len].chunks(block_len).enumerate() {
                        for c_first in (0..channels).step_by(ROWS) {
                            let tile_rows = ROWS.min(channels - c_first);
                            for (t, list) in lists.iter().enumerate() {
                                let (kh, kw) = (t / kernel, t % kernel);
                                // Rows past the last channel repeat it (thrown away).
                                let offsets: [isize; ROWS] = std::array::from_fn(|r| {
                                    let c = c_first + r.min(tile_rows - 1);
                                    ((c * shape.in_height + kh) * shape.in_width + kw) as isize
                                });
                                let tile = broadcast_tile::<V, ROWS, VECTORS>(panel, x_group, &offsets, list);
                                for (r, tile_row) in tile.iter().enumerate().take(tile_rows) {
                                    let k = (c_first + r) * taps + t;
                                    for (v, &vector) in tile_row.iter().enumerate() {
                                        let first = block * width + v * V::LANES;
                                        let lanes = lanes_of(vector);
                                        for (f, &value) in
                                            (first..out_channels.min(first + V::LANES)).zip(&lanes)
                                        {
                                            rows[f * depth + k] += value;
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            );
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
        split_over_channels(shape, 4, threads, image_len, shape.weight_len())
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
