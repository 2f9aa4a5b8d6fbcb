//! The forward pass: `y = conv(x, w)` as register-tiled products over row panels, in the
//! pixel layout (here) or the channel layout of small maps (`channels.rs`).

use super::super::microkernel::{gemm_tile, store_lanes, with_tile, GatherMatrix, Tiling};
use super::super::simd::{with_vector, Isa, Vector};
use super::super::ConvShape;
use super::channels::{channel_vector, ChannelProduct, ConvLayout};
use super::*;

/// `output = conv(input, weight)`; see [`crate::kernels::conv_naive::forward`].
///
///   y[n, f, oh, ow] = Σ_(c,kh,kw) w[f, c, kh, kw] · image_n[base(oh,ow) + offset(c,kh,kw)]
pub fn forward(shape: &ConvShape, input: &[f32], weight: &[f32], output: &mut [f32]) {
    forward_with(Isa::active(), shape, input, weight, output)
}

/// [`forward`] with the instruction set `isa`.
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn forward_with(isa: Isa, shape: &ConvShape, input: &[f32], weight: &[f32], output: &mut [f32]) {
    let layout = ConvLayout::for_forward(isa, shape, rayon::current_num_threads());
    forward_layout_with(isa, layout, shape, input, weight, output)
}

/// [`forward`] with the instruction set `isa` in the layout `layout` (for tests and
/// benchmarks; both layouts give the same floats, see `channels.rs`).
///
/// # Panics
/// If the CPU does not run `isa` (see [`Isa::is_supported`]).
pub fn forward_layout_with(
    isa: Isa,
    layout: ConvLayout,
    shape: &ConvShape,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
) {
    isa.assert_supported("conv forward");
    shape.check_buffers(input.len(), weight.len(), output.len());
    if output.is_empty() {
        return;
    }
    match layout {
        ConvLayout::PixelVectors => {
            let vectors = PlaneVectors::for_plane(isa, shape.out_width());
            with_vector!(vectors.kind, V => forward_vector::<V>(shape, vectors, input, weight, output))
        }
        ConvLayout::ChannelVectors => {
            // panel[(c, kh, kw), f] = w[f, (c, kh, kw)]
            let depth = shape.in_channels * shape.kernel * shape.kernel;
            let panel_entry = |f: usize, t: usize| weight[f * depth + t];
            ChannelProduct::forward(shape).run(isa, panel_entry, input, output, false)
        }
    }
}

impl ConvLayout {
    /// The forward pass's layout for `shape` on `threads` threads (`ConvLayout::pick`): the
    /// multiply-adds of the pixel layout count its idle lanes, its padded tile rows and
    /// vectors, and the padding taps; the channel layout's only its padded channel blocks.
    pub fn for_forward(isa: Isa, shape: &ConvShape, threads: usize) -> ConvLayout {
        ConvLayout::forward_choice(isa, shape, threads).0
    }

    /// [`ConvLayout::for_forward`] and how much faster than the pixel layout it is predicted
    /// to run the pass (1 for the pixel layout): what `SbfPath::Auto` weighs the fused SBF
    /// kernels against.
    pub fn forward_choice(isa: Isa, shape: &ConvShape, threads: usize) -> (ConvLayout, f64) {
        if isa == Isa::Avx2 || shape.batch.div_ceil(super::channels::CHANNEL_TILE_ROWS) < 2 * threads {
            return (ConvLayout::PixelVectors, 1.0); // (before building the classes)
        }
        let depth = shape.in_channels * shape.kernel * shape.kernel;
        let plane = PlaneVectors::for_plane(isa, shape.out_width());
        let pixel_macs = with_vector!(plane.kind, V => {
            let vectors = plane.count(shape.out_height(), shape.out_width(), V::LANES);
            let (rows, group) = Tiling::choose(V::REGISTERS, shape.out_channels, vectors).shape();
            shape.out_channels.next_multiple_of(rows) * vectors.next_multiple_of(group) * V::LANES * depth
        });
        let (_, width) = channel_vector(isa, shape.out_channels);
        let channel_macs = ChannelProduct::forward_macs(shape, width);
        let margins = &super::channels::CHANNEL_MARGINS;
        let margin = if shape.stride > 1 {
            margins.strided_forward
        } else {
            margins.forward
        };
        ConvLayout::pick(isa, shape.batch, threads, pixel_macs, channel_macs, margin)
    }
}

fn forward_vector<V: Vector>(
    shape: &ConvShape,
    plane: PlaneVectors,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
) {
    let vectors = plane.count(shape.out_height(), shape.out_width(), V::LANES);
    let tiling = Tiling::choose(V::REGISTERS, shape.out_channels, vectors);
    // Stride 1, K = 3, rows: the taps kw = 0, 1, 2 of one (c, kh) are 3 neighbouring
    // floats of the padded image, read through one offset (see `gemm_tile`).
    if shape.stride == 1 && shape.kernel == 3 && !plane.flat {
        with_tile!(tiling, ROWS, VECTORS => forward_tiled::<V, ROWS, VECTORS, 3>(shape, plane, input, weight, output))
    } else {
        with_tile!(tiling, ROWS, VECTORS => forward_tiled::<V, ROWS, VECTORS, 1>(shape, plane, input, weight, output))
    }
}

/// RUN: taps per run of neighbouring floats in the padded image (3 or 1).
fn forward_tiled<V: Vector, const ROWS: usize, const VECTORS: usize, const RUN: usize>(
    shape: &ConvShape,
    plane: PlaneVectors,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
) {
    let image = plane.image(shape);
    let offsets = image.tap_offsets();
    let depth = offsets.len(); // C·K²
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let pixels = h_out * w_out;
    let panels = shape.out_channels.div_ceil(ROWS);
    let packed_len = panels * depth * ROWS;
    let slots = plane.slots(h_out, w_out, V::LANES);
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
                    V::compiled(
                        #[inline(always)]
                        || {
                            let source = GatherMatrix::with_runs(source, &offsets, RUN);
                            for (task_panel, y_panel) in y_task.chunks_mut(ROWS * pixels).enumerate() {
                                let panel = task * panels_per_task + task_panel;
                                let a = &packed[panel * depth * ROWS..][..depth * ROWS];
                                let rows = y_panel.len() / pixels;
                                for group in slots.chunks(VECTORS) {
                                    let bases = group_bases::<VECTORS>(group, image.row_stride());
                                    let tile = gemm_tile::<V, ROWS, VECTORS, RUN>(a, &source, &bases);
                                    for (v, slot) in group.iter().enumerate() {
                                        for r in 0..rows {
                                            let start = r * pixels + slot.row * w_out + slot.col;
                                            store_lanes(y_panel, start, tile[r][v], slot.lanes);
                                        }
                                    }
                                }
                            }
                        },
                    )
                },
            );
        },
    );
}
