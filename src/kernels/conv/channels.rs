//! The channel layout of the forward pass and the input gradient, for small maps.
//!
//! Both passes are, per image, `out[ch, p] = Σ_t source[base(p) + offset(t)] · panel[t, ch]`:
//!
//! ```text
//!   forward:     ch = f, p = (oh, ow), t = (c, kh, kw),  source = x[n],   panel[t, f] = w[f, c, kh, kw]
//!   input grad:  ch = c, p = (ih, iw), t = (f, kh, kw),  source = dy[n],  panel[t, c] = w[f, c, kh, kw]
//! ```
//!
//! The pixel layout (`forward.rs`, `input_grad.rs`) puts neighbouring pixels of a row in the
//! lanes of a vector. On a 7×7 map that leaves 1 lane of 8 idle, on a 3×3 map 5 of 8, and the
//! taps that read the zero padding (18 % of all taps on 7×7, 40 % on 3×3) are multiplied like
//! the others. The channel layout puts channels in the lanes instead ([`broadcast_tile`]): the
//! tile rows are ROWS images, each broadcasting one float of its own source per tap, and the
//! tile's vectors hold VECTORS·LANES channels of the panel. Every lane does useful work, and a
//! pixel sums only the taps that read inside the source:
//! - the pixels of a map fall into a few classes ([`PixelClass`]) by the taps they keep (the
//!   corners, edges and inside; for a strided input gradient, also the stride phase), and each
//!   class has one tap list;
//! - within a class, the taps are the same for every pixel, at the same offsets from the
//!   pixel's base.
//!
//! Each output sums its taps in the order of the pixel layout's reduction, one FMA per tap, so
//! the two layouts give the same floats, the padding taps' zero terms aside.
//!
//! Threads: tasks are groups of ROWS images, whose outputs are one contiguous chunk; a task
//! runs over blocks of VECTORS·LANES channels, then classes, then pixels. Each thread packs
//! the panel [channel block][depth][VECTORS·LANES] once per call (zero past the last channel).

use rayon::prelude::*;

use super::super::microkernel::{broadcast_tile, TapList};
use super::super::simd::{lanes_of, with_vector, Isa, Vector, VectorKind};
use super::super::ConvShape;
use super::{new_call, with_thread_panels};

/// How the forward pass or the input gradient lays out its product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvLayout {
    /// Vectors of neighbouring pixels of one row, a broadcast weight per tile row
    /// (`gemm_tile` on a padded copy of the source): the layout of large maps.
    PixelVectors,
    /// Vectors of channels, a broadcast source float per tile row, one image per row
    /// ([`broadcast_tile`] on the source itself), the taps that read padding skipped: the
    /// layout of small maps (this module).
    ChannelVectors,
}

/// Images per task of the channel layout: the rows of its register tile.
pub const CHANNEL_TILE_ROWS: usize = 6;

/// The share of the pixel layout's multiply-adds below which each pass takes the channel
/// layout. Measured on the AMD EPYC VM (Zen 4, AVX-512), 2026-12-07, `sbfnet bench --layout
/// pixels|channels` on the ResNet shapes at batch 128 and airbench94's at 1024: per
/// multiply-add the channel layout is a little slower than the pixel layout in the forward
/// pass and the input gradient at stride 1 (64 channels on an 8×8 map, predicted 0.84, ran
/// 9 % slower), as fast in the weight gradient, and faster in the strided forward pass (the
/// pixel layout's phase-split image: 32→64 channels at stride 2, predicted 0.91, ran 1.28×
/// faster).
pub(super) const CHANNEL_MARGINS: ChannelMargins = ChannelMargins {
    forward: 0.82,
    strided_forward: 1.0,
    input_grad: 0.85,
    weight_grad: 1.0,
};

/// See [`CHANNEL_MARGINS`].
pub(super) struct ChannelMargins {
    pub forward: f64,
    pub strided_forward: f64,
    pub input_grad: f64,
    pub weight_grad: f64,
}

impl ConvLayout {
    /// The channel layout where its multiply-adds (`channel_macs` per image, the batch padded
    /// to whole tasks) are at most `margin` of the pixel layout's (`pixel_macs`), and the
    /// batch gives each of `threads` threads two tasks or more; on AVX-512 only. With the
    /// speed-up over the pixel layout this predicts: pixel ÷ (channel ÷ margin), or 1. (With AVX2's
    /// 16 registers the channel layout's 6 × 2 tile ran at 27–44 % of the FMA peak on the
    /// ResNet shapes where the pixel layout ran at 75–81 %: `SBFNET_ISA=avx2 sbfnet bench
    /// --layout channels`, 2026-12-07. It stays available there, forced, for tests.)
    pub(super) fn pick(
        isa: Isa,
        batch: usize,
        threads: usize,
        pixel_macs: usize,
        channel_macs: usize,
        margin: f64,
    ) -> (Self, f64) {
        let tasks = batch.div_ceil(CHANNEL_TILE_ROWS);
        let padded_batch = (tasks * CHANNEL_TILE_ROWS) as f64 / batch as f64;
        let channel_time = channel_macs as f64 * padded_batch / margin;
        if isa != Isa::Avx2 && tasks >= 2 * threads && channel_time <= pixel_macs as f64 {
            (ConvLayout::ChannelVectors, pixel_macs as f64 / channel_time)
        } else {
            (ConvLayout::PixelVectors, 1.0)
        }
    }
}

/// The vector of the channel layout for `channels` channels under `isa`, and the channels of
/// one block (VECTORS·LANES: 4 vectors with 32 registers, 2 with 16).
pub(super) fn channel_vector(isa: Isa, channels: usize) -> (VectorKind, usize) {
    let kind = VectorKind::for_columns(isa, channels);
    let width = with_vector!(kind, V => channel_tile_vectors::<V>() * V::LANES);
    (kind, width)
}

/// VECTORS of the channel layout's tile for V: 6 × 4 with 32 registers (24 accumulators, 4
/// panel vectors, 1 broadcast), 6 × 2 with 16.
pub(in crate::kernels) const fn channel_tile_vectors<V: Vector>() -> usize {
    if V::REGISTERS >= 32 {
        4
    } else {
        2
    }
}

/// Output pixels that read the same taps inside their source, and those taps.
pub(in crate::kernels) struct PixelClass {
    /// (p, base(p)) of each pixel of the class: its index in an output plane and where its
    /// taps' offsets start in the source image (may be negative).
    pub pixels: Vec<(usize, isize)>,
    /// (panel row, offset into the source) of each tap, in the order they are summed.
    pub taps: TapList,
}

/// One pass in the channel layout: the sizes of its product and its pixel classes.
pub(in crate::kernels) struct ChannelProduct {
    /// Output channels, the lanes: F (forward) or C (input gradient).
    pub channels: usize,
    /// Rows of the panel: C·K² (forward) or F·K² (input gradient).
    pub depth: usize,
    /// Pixels of one output plane.
    pub pixels: usize,
    /// Floats of one source image.
    pub source_image_len: usize,
    pub classes: Vec<PixelClass>,
}

impl ChannelProduct {
    /// The forward pass's: t = (c, kh, kw) in that order, the taps inside x.
    ///
    ///   base(oh, ow) = (oh·s − p)·W + ow·s − p,   offset(c, kh, kw) = (c·H + kh)·W + kw
    pub fn forward(shape: &ConvShape) -> Self {
        let (h_out, w_out) = (shape.out_height(), shape.out_width());
        let (height, width, kernel) = (shape.in_height, shape.in_width, shape.kernel);
        let pixels = (0..h_out).flat_map(|oh| (0..w_out).map(move |ow| (oh, ow)));
        let describe = |(oh, ow): (usize, usize)| {
            let (rows, cols) = forward_tap_ranges(shape, oh, ow);
            let base = (oh * shape.stride * width + ow * shape.stride) as isize
                - (shape.padding * width + shape.padding) as isize;
            (oh * w_out + ow, base, (rows.collect(), cols.collect()))
        };
        let taps = |key: &TapKey| {
            tap_list(shape.in_channels, key, |c, kh, kw| {
                let offset = (c * height + kh) * width + kw;
                ((c * kernel + kh) * kernel + kw, offset as isize)
            })
        };
        ChannelProduct {
            channels: shape.out_channels,
            depth: shape.in_channels * kernel * kernel,
            pixels: h_out * w_out,
            source_image_len: shape.in_channels * height * width,
            classes: classify(pixels, describe, taps),
        }
    }

    /// The input gradient's: t = (f, kh, kw) in that order, the taps that reach an output
    /// pixel: oh = (ih + p − kh)/s a whole number in [0, Ho) (likewise ow). With
    /// (I, r) = ((ih + p) div s, (ih + p) mod s), the taps kh = r + s·t reach oh = I − t
    /// (t = kh div s), so
    ///
    ///   base(ih, iw) = I·Wo + J,   offset(f, kh, kw) = f·Ho·Wo − (kh div s)·Wo − kw div s
    pub fn input_grad(shape: &ConvShape) -> Self {
        let (h_out, w_out) = (shape.out_height(), shape.out_width());
        let (height, width, kernel, stride) = (shape.in_height, shape.in_width, shape.kernel, shape.stride);
        let reaching = |i: usize, size: usize| input_grad_taps(shape, i, size).collect::<Vec<_>>();
        let pixels = (0..height).flat_map(|ih| (0..width).map(move |iw| (ih, iw)));
        let describe = |(ih, iw): (usize, usize)| {
            let base = ((ih + shape.padding) / stride * w_out + (iw + shape.padding) / stride) as isize;
            (ih * width + iw, base, (reaching(ih, h_out), reaching(iw, w_out)))
        };
        let taps = |key: &TapKey| {
            let plane = (h_out * w_out) as isize;
            tap_list(shape.out_channels, key, |f, kh, kw| {
                let offset = f as isize * plane - (kh / stride * w_out + kw / stride) as isize;
                ((f * kernel + kh) * kernel + kw, offset)
            })
        };
        ChannelProduct {
            channels: shape.in_channels,
            depth: shape.out_channels * kernel * kernel,
            pixels: height * width,
            source_image_len: shape.out_channels * h_out * w_out,
            classes: classify(pixels, describe, taps),
        }
    }

    /// [`ChannelProduct::forward`]'s multiply-adds per image with `width` channels per block (the
    /// channels padded to whole blocks, times the taps each pixel keeps), without building it.
    pub fn forward_macs(shape: &ConvShape, width: usize) -> usize {
        // A pixel's taps are its row's times its column's, so the sum over pixels factors.
        let rows: usize = (0..shape.out_height())
            .map(|oh| forward_tap_ranges(shape, oh, 0).0.len())
            .sum();
        let cols: usize = (0..shape.out_width())
            .map(|ow| forward_tap_ranges(shape, 0, ow).1.len())
            .sum();
        shape.out_channels.next_multiple_of(width) * shape.in_channels * rows * cols
    }

    /// [`ChannelProduct::input_grad`]'s multiply-adds per image, as [`ChannelProduct::forward_macs`].
    pub fn input_grad_macs(shape: &ConvShape, width: usize) -> usize {
        // A pixel's taps are its row's times its column's, so the sum over pixels factors.
        let (h_out, w_out) = (shape.out_height(), shape.out_width());
        let rows: usize = (0..shape.in_height)
            .map(|ih| input_grad_taps(shape, ih, h_out).count())
            .sum();
        let cols: usize = (0..shape.in_width)
            .map(|iw| input_grad_taps(shape, iw, w_out).count())
            .sum();
        shape.in_channels.next_multiple_of(width) * shape.out_channels * rows * cols
    }

    /// out[n] (=, or += with `accumulate`) the product for every image n, with
    /// panel[t, ch] = `panel_entry(ch, t)`, on the vector of [`channel_vector`].
    pub fn run(
        &self,
        isa: Isa,
        panel_entry: impl Fn(usize, usize) -> f32 + Sync,
        source: &[f32],
        output: &mut [f32],
        accumulate: bool,
    ) {
        let (kind, _) = channel_vector(isa, self.channels);
        with_vector!(kind, V => {
            if channel_tile_vectors::<V>() == 4 {
                self.run_tiled::<V, CHANNEL_TILE_ROWS, 4>(panel_entry, source, output, accumulate)
            } else {
                self.run_tiled::<V, CHANNEL_TILE_ROWS, 2>(panel_entry, source, output, accumulate)
            }
        })
    }

    fn run_tiled<V: Vector, const ROWS: usize, const VECTORS: usize>(
        &self,
        panel_entry: impl Fn(usize, usize) -> f32 + Sync,
        source: &[f32],
        output: &mut [f32],
        accumulate: bool,
    ) {
        let (depth, channels, pixels) = (self.depth, self.channels, self.pixels);
        let width = VECTORS * V::LANES;
        let blocks = channels.div_ceil(width);
        let packed_len = blocks * depth * width;
        let out_image_len = channels * pixels;
        let call = new_call();
        let pack = |packed: &mut [f32]| {
            for (block, panel) in packed.chunks_mut(depth * width).enumerate() {
                for j in 0..width {
                    let ch = block * width + j;
                    for t in 0..depth {
                        panel[t * width + j] = if ch < channels { panel_entry(ch, t) } else { 0.0 };
                    }
                }
            }
        };
        output
            .par_chunks_mut(ROWS * out_image_len)
            .zip(source.par_chunks(ROWS * self.source_image_len))
            .for_each(|(out_task, source_task)| {
                let images = out_task.len() / out_image_len;
                with_thread_panels(call, packed_len, pack, |packed| {
                    V::compiled(
                        #[inline(always)]
                        || {
                            for (block, panel) in packed.chunks(depth * width).enumerate() {
                                for class in &self.classes {
                                    for &(pixel, base) in &class.pixels {
                                        // Rows past the task's images repeat its last (thrown away).
                                        let bases: [isize; ROWS] = std::array::from_fn(|r| {
                                            (r.min(images - 1) * self.source_image_len) as isize + base
                                        });
                                        let tile = broadcast_tile::<V, ROWS, VECTORS>(
                                            panel,
                                            source_task,
                                            &bases,
                                            &class.taps,
                                        );
                                        for (r, tile_row) in tile.iter().enumerate().take(images) {
                                            let out = &mut out_task[r * out_image_len..][..out_image_len];
                                            for (v, &vector) in tile_row.iter().enumerate() {
                                                let first = block * width + v * V::LANES;
                                                let lanes = lanes_of(vector);
                                                let chs = first..channels.min(first + V::LANES);
                                                for (ch, &value) in chs.zip(&lanes) {
                                                    let slot = &mut out[ch * pixels + pixel];
                                                    *slot = if accumulate { *slot + value } else { value };
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
}

/// The taps kh, kw of forward output (oh, ow) that read inside x (not the padding):
/// 0 ≤ oh·s + kh − p < H.
pub(super) fn forward_tap_ranges(
    shape: &ConvShape,
    oh: usize,
    ow: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let inside = |out: usize, size: usize| {
        let first = shape.padding.saturating_sub(out * shape.stride);
        let end = (size + shape.padding)
            .saturating_sub(out * shape.stride)
            .min(shape.kernel);
        first..end.max(first)
    };
    (inside(oh, shape.in_height), inside(ow, shape.in_width))
}

/// The taps k of the input gradient at input index i (a row or a column) that reach an output
/// index below `size`: k ≡ i + p (mod s), k ≤ i + p, (i + p − k)/s < size.
fn input_grad_taps(shape: &ConvShape, i: usize, size: usize) -> impl Iterator<Item = usize> {
    let (kernel, stride) = (shape.kernel, shape.stride);
    let shifted = i + shape.padding;
    (shifted % stride..kernel.min(shifted + 1))
        .step_by(stride)
        .filter(move |&k| (shifted - k) / stride < size)
}

/// The tap list of a class: `tap(ch, kh, kw)` = (panel row, source offset) for ch in
/// 0..`channels`, then the class's kh, then its kw (the order of the reduction).
fn tap_list(
    channels: usize,
    (rows, cols): &TapKey,
    tap: impl Fn(usize, usize, usize) -> (usize, isize),
) -> TapList {
    let mut taps = Vec::with_capacity(channels * rows.len() * cols.len());
    for ch in 0..channels {
        for &kh in rows {
            for &kw in cols {
                taps.push(tap(ch, kh, kw));
            }
        }
    }
    TapList::new(taps)
}

/// The taps (kh, kw) a pixel keeps: the key of its class.
type TapKey = (Vec<usize>, Vec<usize>);

/// Groups pixels into classes by the taps they keep: `describe(pixel)` gives (p, base, key),
/// and `taps(key)` the tap list of a class, built once per class.
fn classify<P>(
    pixels: impl Iterator<Item = P>,
    describe: impl Fn(P) -> (usize, isize, TapKey),
    taps: impl Fn(&TapKey) -> TapList,
) -> Vec<PixelClass> {
    let mut keys: Vec<TapKey> = Vec::new();
    let mut classes: Vec<PixelClass> = Vec::new();
    for pixel in pixels {
        let (index, base, key) = describe(pixel);
        let class = match keys.iter().position(|k| *k == key) {
            Some(class) => class,
            None => {
                classes.push(PixelClass {
                    pixels: Vec::new(),
                    taps: taps(&key),
                });
                keys.push(key);
                classes.len() - 1
            }
        };
        classes[class].pixels.push((index, base));
    }
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Multiply-adds of a built product: the channels padded to whole blocks of `width`, times
    /// the taps each pixel of each class keeps.
    fn built_macs(product: &ChannelProduct, width: usize) -> usize {
        let taps: usize = product
            .classes
            .iter()
            .map(|class| class.pixels.len() * class.taps.len())
            .sum();
        product.channels.next_multiple_of(width) * taps
    }

    #[test]
    fn the_counted_multiply_adds_are_those_of_the_built_products() {
        for (size, kernel, stride, padding) in [
            (7, 3, 1, 1),
            (3, 3, 1, 1),
            (9, 5, 2, 2),
            (8, 3, 2, 1),
            (6, 1, 2, 0),
            (5, 3, 1, 0),
        ] {
            let shape = ConvShape {
                batch: 2,
                in_channels: 5,
                in_height: size,
                in_width: size + 2,
                out_channels: 11,
                kernel,
                stride,
                padding,
            };
            for width in [16, 64] {
                assert_eq!(
                    ChannelProduct::forward_macs(&shape, width),
                    built_macs(&ChannelProduct::forward(&shape), width),
                    "forward {shape:?}"
                );
                assert_eq!(
                    ChannelProduct::input_grad_macs(&shape, width),
                    built_macs(&ChannelProduct::input_grad(&shape), width),
                    "input gradient {shape:?}"
                );
            }
        }
    }
}
