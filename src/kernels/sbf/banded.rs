//! The row-banded layer kernels of stride-1 "same" layers: bands of P that stay in cache.

use super::*;
use wide::f32x8;

// ---------------------------------------------------------------------------------------------
// "Same"-padded planes (stride 1, 2p + 1 = K ≤ 8): row bands of guarded planes and
// register-accumulated gathers
// ---------------------------------------------------------------------------------------------
//
// With Ho×Wo = H×W, output j = h·W + w reads P[j + offset(tap)], offset = (kh−p)·W + (kw−p).
// The image is cut into bands of output rows (first..end) small enough that one band of P stays
// in cache (P for a whole 32×32 image at M = 8 is ≈590 KB). The per-worker band of P (and of
// dP, and a copy of R) holds, per plane, the band's rows plus p halo rows above and below (real
// rows, or zeros outside the image) and p guard zeros at each end, so every read of the band's
// outputs is in bounds. Reads that wrap around a row end (|kw−p| columns) are zeroed by a 0/1
// column mask, mask[kw][j] = [0 ≤ (j mod W) + kw − p < W]. Each output vector then sums its
// G·K² terms in a register: one load, one multiply by the mask and one FMA per term. The price
// of a band is its halo: stage 1 computes (rows + 2p)/rows of the band's maps.

/// Plane q of a guarded buffer starts at q·stride + guard.
#[derive(Clone, Copy, Debug)]
pub(super) struct Guarded {
    guard: usize,
    stride: usize,
}

impl SbfShape {
    /// Guarded planes for bands of up to `rows` output rows: each plane holds the band's rows plus
    /// p halo rows above and below, and p guard elements at each end (for the wrapped column reads).
    pub(super) fn band_layout(&self, rows: usize) -> Guarded {
        let guard = self.padding * self.in_width + self.padding;
        Guarded {
            guard,
            stride: rows * self.in_width + 2 * guard,
        }
    }

    /// Whether the fused forward takes the banded same-padding path (stride 1, 2p + 1 = K ≤ 8).
    pub(super) fn uses_row_bands(&self) -> bool {
        self.stride == 1 && 2 * self.padding + 1 == self.kernel && self.kernel <= 8
    }

    /// Output rows per band: as many as keep one image's band of P (G·K²·M planes of
    /// (rows + 2p)·W floats) within [`BAND_MAPS_BYTES`], at least 1, at most H.
    pub fn band_rows(&self) -> usize {
        let row_bytes =
            self.groups * self.taps() * self.templates * self.in_width * std::mem::size_of::<f32>();
        (BAND_MAPS_BYTES / row_bytes.max(1))
            .saturating_sub(2 * self.padding)
            .clamp(1, self.in_height)
    }
}

/// Budget for one worker's band of P in the banded forward. A band recomputes its 2p halo rows
/// (stage 1 costs (rows + 2p)/rows of the plain GEMM), so bands should not be too thin; the
/// gather then reads the band while it is in L2 (512 KiB per core here). Measured with
/// `benchmark::sbf` (see `BAND_MAPS_BYTES` in the commit log / report).
pub const BAND_MAPS_BYTES: usize = 256 * 1024;

/// Output rows `first..end` of an image: one band of the banded forward.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowBand {
    first: usize,
    end: usize,
}

/// Stage 1 of one band into guarded band planes (layout from [`SbfShape::band_layout`]):
/// P[b,g,tap,m, y, ·] for image rows y in first−p .. end+p; rows outside the image are zeros.
/// Plane-local position of image row y, column x: guard + (y − first)·W + x.
pub(super) fn stage1_band_guarded(
    shape: &SbfShape,
    packed: &[f32],
    input_image: &[f32],
    maps: &mut [f32],
    layout: Guarded,
    band: RowBand,
) {
    let (rows, cg, w, hw, p) = (
        shape.taps() * shape.templates,
        shape.group_channels(),
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.padding,
    );
    // Image rows first−p .. end+p, clipped to the image: y0 .. y1.
    let top = band.first as isize - p as isize;
    let y0 = top.max(0) as usize;
    let y1 = (band.end + p).min(shape.in_height);
    let row_start = |y: usize| (p as isize + (y as isize - top) * w as isize) as usize;
    for g in 0..shape.groups {
        let group = &mut maps[g * rows * layout.stride..][..rows * layout.stride];
        // P[b,g, rows y0..y1] [K²·M × (y1−y0)·W] = B_g [K²·M × Cg] · X[b, group g, rows y0..y1]
        let a = &packed[g * rows * cg..][..rows * cg];
        let x_rows = &input_image[g * cg * hw + y0 * w..];
        gemm_overwrite_strided(
            rows,
            cg,
            (y1 - y0) * w,
            a,
            x_rows,
            hw,
            &mut group[row_start(y0)..],
            layout.stride,
        );
        // Halo rows outside the image read as zeros.
        let (above, below) = (p..row_start(y0), row_start(y1)..row_start(band.end + p));
        for plane in group.chunks_mut(layout.stride) {
            plane[above.clone()].fill(0.0);
            plane[below.clone()].fill(0.0);
        }
    }
}

/// The banded forward (stride 1, same padding): per image (in parallel) and per band of
/// `band_rows` output rows, stage 1 of the band plus its halo into a per-worker buffer, then the
/// register-accumulated gather of the band's outputs while the band is in cache.
/// Overwrites output [Bt, N, H, W]. [`two_stage_forward`] calls it with [`SbfShape::band_rows`].
pub fn two_stage_forward_banded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
    band_rows: usize,
) {
    assert!(
        shape.uses_row_bands() && band_rows >= 1,
        "banded forward: stride 1, 2p + 1 = K ≤ 8"
    );
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("Y", output.len(), shape.output_len());
    let band_rows = band_rows.min(shape.in_height);
    let layout = shape.band_layout(band_rows);
    let (packed, table, column_masks) = (
        pack_templates(shape, templates),
        mask_table(shape, assignment, masks),
        column_masks(shape),
    );
    let starts = gather_starts(shape, assignment, layout);
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    let planes = shape.groups * shape.taps() * shape.templates;
    output
        .par_chunks_mut(shape.out_channels * shape.out_plane())
        .enumerate()
        .for_each_init(
            || vec![0.0f32; planes * layout.stride], // guarded band of P[b] [G, K², M, stride]
            |maps, (b, output_image)| {
                let input_image = &input[b * image_len..][..image_len];
                for first in (0..shape.in_height).step_by(band_rows) {
                    let band = RowBand {
                        first,
                        end: (first + band_rows).min(shape.in_height),
                    };
                    stage1_band_guarded(shape, &packed, input_image, maps, layout, band);
                    gather_image_guarded(shape, &table, &starts, &column_masks, maps, band, output_image);
                }
            },
        );
}

/// mask[kw][j] for kw in 0..K, j in 0..H·W: [K, H·W].
pub(super) fn column_masks(shape: &SbfShape) -> Vec<f32> {
    let (hw, w) = (shape.in_height * shape.in_width, shape.in_width);
    let mut masks = vec![0.0f32; shape.kernel * hw];
    for kw in 0..shape.kernel {
        for j in 0..hw {
            let x = (j % w + kw) as isize - shape.padding as isize;
            masks[kw * hw + j] = if x >= 0 && (x as usize) < w { 1.0 } else { 0.0 };
        }
    }
    masks
}

/// t(n,g,tap) for every output: [N, G·K²] (1 for identity outputs).
pub(super) fn mask_table(shape: &SbfShape, assignment: &TemplateAssignment, masks: &[f32]) -> Vec<f32> {
    let per = shape.groups * shape.taps();
    let mut table = vec![0.0f32; shape.out_channels * per];
    for n in 0..shape.out_channels {
        for g in 0..shape.groups {
            for tap in 0..shape.taps() {
                table[n * per + g * shape.taps() + tap] =
                    mask_value(shape, masks, assignment.mask_row[n], g, tap);
            }
        }
    }
    table
}

/// starts[n, g·K² + tap]: where output n's (g, tap) term reads in guarded planes of `layout`
/// (plane start + guard + offset(tap)); the same for every band.
pub(super) fn gather_starts(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    layout: Guarded,
) -> Vec<usize> {
    let (k, p, w, taps) = (shape.kernel, shape.padding, shape.in_width, shape.taps());
    let per = shape.groups * taps;
    let mut starts = vec![0usize; shape.out_channels * per];
    for n in 0..shape.out_channels {
        for g in 0..shape.groups {
            for tap in 0..taps {
                let plane = (g * taps + tap) * shape.templates + assignment.template_of[n];
                starts[n * per + g * taps + tap] = ((plane * layout.stride + layout.guard) as isize
                    + ((tap / k) as isize - p as isize) * w as isize
                    + (tap % k) as isize
                    - p as isize) as usize;
            }
        }
    }
    starts
}

/// Stage 2 of one image from guarded planes: Y[b,n,j] = Σ_{g,tap} t(n,g,tap)·mask[kw][j]·P[b,g,tap,m(n), j + offset].
///
/// On a row band ([`RowBand`]) the guarded planes hold the band's rows plus p halo rows above and
/// below (real image rows, or zeros outside the image): only output rows `band.first..band.end`
/// are written, and j below counts positions from the band's first row (the column masks only
/// depend on j mod W, and a band starts on a row boundary). `starts` = [`gather_starts`].
pub(super) fn gather_image_guarded(
    shape: &SbfShape,
    table: &[f32],
    starts: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    band: RowBand,
    output_image: &mut [f32],
) {
    // K is a constant inside, so the loops over taps unroll and the per-column sums stay in registers.
    match shape.kernel {
        1 => gather_band::<1>(shape, table, starts, column_masks, maps, band, output_image),
        3 => gather_band::<3>(shape, table, starts, column_masks, maps, band, output_image),
        5 => gather_band::<5>(shape, table, starts, column_masks, maps, band, output_image),
        7 => gather_band::<7>(shape, table, starts, column_masks, maps, band, output_image),
        k => panic!("guarded gather: K = {k} must be 1, 3, 5 or 7"),
    }
}

/// [`gather_image_guarded`] for a K×K kernel (p = K/2). Each block of 16 outputs of output n
/// sums its terms in one pair of accumulators per kernel column kw, then applies the column
/// mask once per kw: Y = Σ_kw mask[kw] · (Σ_{g,kh} t·P).
pub(super) fn gather_band<const K: usize>(
    shape: &SbfShape,
    table: &[f32],
    starts: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    band: RowBand,
    output_image: &mut [f32],
) {
    let (p, w, plane, groups) = (
        K / 2,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.groups,
    );
    // Band positions; column_masks rows are `plane` long, outputs start at band.first·W.
    let (hw, out_start) = ((band.end - band.first) * w, band.first * w);
    let per = groups * K * K;
    // Two vectors (16 outputs) per step, so each term's scalar work is shared by 16 lanes.
    let mut j0 = 0;
    while j0 + 16 <= hw {
        let mut mask_vectors = [[f32x8::ZERO; 2]; K];
        for kw in 0..K {
            mask_vectors[kw] = [
                load(&column_masks[kw * plane + j0..]),
                load(&column_masks[kw * plane + j0 + 8..]),
            ];
        }
        for n in 0..shape.out_channels {
            let (starts_n, weights_n) = (&starts[n * per..][..per], &table[n * per..][..per]);
            // acc[kw]: Σ over (g, kh) of t·P for kernel column kw, 16 outputs.
            let mut acc = [[f32x8::ZERO; 2]; K];
            for row in 0..groups * K {
                for kw in 0..K {
                    let q = row * K + kw;
                    let map = &maps[starts_n[q] + j0..][..16];
                    let weight = f32x8::splat(weights_n[q]);
                    acc[kw][0] = weight.mul_add(load(map), acc[kw][0]);
                    acc[kw][1] = weight.mul_add(load(&map[8..]), acc[kw][1]);
                }
            }
            let mut sum = acc[p];
            for kw in 0..K {
                if kw != p {
                    sum[0] = acc[kw][0].mul_add(mask_vectors[kw][0], sum[0]);
                    sum[1] = acc[kw][1].mul_add(mask_vectors[kw][1], sum[1]);
                }
            }
            let out = &mut output_image[n * plane + out_start + j0..][..16];
            store(out, sum[0]);
            store(&mut out[8..], sum[1]);
        }
        j0 += 16;
    }
    while j0 + 8 <= hw {
        let mut mask_vectors = [f32x8::ZERO; K];
        for kw in 0..K {
            mask_vectors[kw] = load(&column_masks[kw * plane + j0..]);
        }
        for n in 0..shape.out_channels {
            let (starts_n, weights_n) = (&starts[n * per..][..per], &table[n * per..][..per]);
            let mut acc = f32x8::ZERO;
            for q in 0..per {
                let weight = f32x8::splat(weights_n[q]) * mask_vectors[q % K];
                acc = weight.mul_add(load(&maps[starts_n[q] + j0..]), acc);
            }
            store(&mut output_image[n * plane + out_start + j0..], acc);
        }
        j0 += 8;
    }
    for j in j0..hw {
        for n in 0..shape.out_channels {
            let mut sum = 0.0;
            for q in 0..per {
                sum += table[n * per + q] * column_masks[(q % K) * plane + j] * maps[starts[n * per + q] + j];
            }
            output_image[n * plane + out_start + j] = sum;
        }
    }
}

/// dT of one image: dT[row(n),g,tap] += Σ_j R[b,n,j]·mask[kw][j]·P[b,g,tap,m(n), j + offset].
pub(super) fn masks_grad_image_guarded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    output_of_row: &[usize],
    column_masks: &[f32],
    maps: &[f32],
    layout: Guarded,
    band: RowBand,
    dy_image: &[f32],
    masks_grad: &mut [f32],
) {
    let (k, p, w, plane_len, taps) = (
        shape.kernel,
        shape.padding,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.taps(),
    );
    // The band's positions (j counts from its first row).
    let (hw, out_start) = ((band.end - band.first) * w, band.first * w);
    for (r, &n) in output_of_row.iter().enumerate() {
        let m = assignment.template_of[n];
        let dy = &dy_image[n * plane_len + out_start..][..hw];
        for g in 0..shape.groups {
            for tap in 0..taps {
                let plane = (g * taps + tap) * shape.templates + m;
                let offset = ((tap / k) as isize - p as isize) * w as isize + (tap % k) as isize - p as isize;
                let start = ((plane * layout.stride + layout.guard) as isize + offset) as usize;
                let (map, mask) = (
                    &maps[start..start + hw],
                    &column_masks[(tap % k) * plane_len..][..hw],
                );
                let mut acc = f32x8::ZERO;
                let mut j = 0;
                while j + 8 <= hw {
                    acc = (load(&dy[j..]) * load(&mask[j..])).mul_add(load(&map[j..]), acc);
                    j += 8;
                }
                let mut sum = acc.reduce_add();
                for j in j..hw {
                    sum += dy[j] * mask[j] * map[j];
                }
                masks_grad[(r * shape.groups + g) * taps + tap] += sum;
            }
        }
    }
}

/// dP of one image into guarded planes (the transpose of the gather, as a gather over outputs):
/// dP[b,g,tap,m,i] = mask[K−1−kw][i] · Σ_{n: m(n)=m} t(n,g,tap)·R[b,n,i − offset],
/// reading R from a guarded copy `dy_guarded` [N planes].
pub(super) fn maps_grad_image_guarded(
    shape: &SbfShape,
    outputs_of: &[Vec<usize>],
    table: &[f32],
    column_masks: &[f32],
    dy_guarded: &[f32],
    layout: Guarded,
    band: RowBand,
    maps_grad: &mut [f32],
) {
    let (k, p, w, plane_len, taps) = (
        shape.kernel,
        shape.padding,
        shape.in_width,
        shape.in_height * shape.in_width,
        shape.taps(),
    );
    let hw = (band.end - band.first) * w; // the band's positions
    let per = shape.groups * taps;
    for g in 0..shape.groups {
        for tap in 0..taps {
            let offset = ((tap / k) as isize - p as isize) * w as isize + (tap % k) as isize - p as isize;
            // A write to i is valid iff the output i − offset read it without wrapping.
            let mask = &column_masks[(k - 1 - tap % k) * plane_len..][..hw];
            let needs_mask = tap % k != p;
            for m in 0..shape.templates {
                let plane = (g * taps + tap) * shape.templates + m;
                let dp = &mut maps_grad[plane * layout.stride + layout.guard..][..hw];
                let source = |n: usize| ((n * layout.stride + layout.guard) as isize - offset) as usize;
                let mut i = 0;
                while i + 8 <= hw {
                    let mut acc = f32x8::ZERO;
                    for &n in &outputs_of[m] {
                        acc = f32x8::splat(table[n * per + g * taps + tap])
                            .mul_add(load(&dy_guarded[source(n) + i..]), acc);
                    }
                    if needs_mask {
                        acc *= load(&mask[i..]);
                    }
                    store(&mut dp[i..], acc);
                    i += 8;
                }
                for i in i..hw {
                    let mut sum = 0.0;
                    for &n in &outputs_of[m] {
                        sum += table[n * per + g * taps + tap] * dy_guarded[source(n) + i];
                    }
                    dp[i] = sum * mask[i];
                }
            }
        }
    }
}

/// dB (packed [G, K², M, Cg]) += dP[b,g] · X[b,g]ᵀ and dX[b,g] += Bᵀ_g · dP[b,g], from guarded dP planes.
pub(super) fn stage1_grads_image_guarded(
    shape: &SbfShape,
    operands: &[f32],
    input_image: &[f32],
    maps_grad: &[f32],
    layout: Guarded,
    band: RowBand,
    templates_grad: Option<&mut [f32]>,
    input_grad_image: Option<&mut [f32]>,
) {
    let (rows, cg, plane) = (
        shape.taps() * shape.templates,
        shape.group_channels(),
        shape.in_height * shape.in_width,
    );
    // The band's positions: `len` of them from `start` in every channel plane of X and dX.
    let (start, len) = (
        band.first * shape.in_width,
        (band.end - band.first) * shape.in_width,
    );
    if let Some(db) = templates_grad {
        for g in 0..shape.groups {
            // dB_g [K²·M × Cg] += dP[b,g, band] [K²·M × len] · X[b, group g, band]ᵀ
            let dp = &maps_grad[g * rows * layout.stride + layout.guard..];
            let x_band = &input_image[g * cg * plane + start..];
            gemm_nt_accumulate_strided(
                rows,
                len,
                cg,
                dp,
                layout.stride,
                x_band,
                plane,
                &mut db[g * rows * cg..][..rows * cg],
            );
        }
    }
    if let Some(dx) = input_grad_image {
        for g in 0..shape.groups {
            // dX[b, group g, band] [Cg × len] += Bᵀ_g [Cg × K²·M] · dP[b,g, band]
            let a = &operands[g * cg * rows..][..cg * rows];
            let dp = &maps_grad[g * rows * layout.stride + layout.guard..];
            gemm_accumulate_strided(
                cg,
                rows,
                len,
                a,
                dp,
                layout.stride,
                &mut dx[g * cg * plane + start..],
                plane,
            );
        }
    }
}

/// Copies R[b] rows first−p .. end+p (zeros outside the image) into guarded band planes
/// `dy_band` [N, stride] (same layout as the maps: row y at guard + (y − first)·W).
pub(super) fn copy_grad_output_band(
    shape: &SbfShape,
    dy_image: &[f32],
    layout: Guarded,
    band: RowBand,
    dy_band: &mut [f32],
) {
    let (p, w, plane) = (shape.padding, shape.in_width, shape.in_height * shape.in_width);
    let top = band.first as isize - p as isize;
    for (n, dst) in dy_band.chunks_mut(layout.stride).enumerate() {
        for r in 0..band.end - band.first + 2 * p {
            let y = top + r as isize;
            let row = &mut dst[p + r * w..][..w];
            if y >= 0 && (y as usize) < shape.in_height {
                row.copy_from_slice(&dy_image[n * plane + y as usize * w..][..w]);
            } else {
                row.fill(0.0);
            }
        }
    }
}

/// [`two_stage_backward`] in row bands (stride 1, same padding), per image and per band of
/// `band_rows` rows:
/// 1. dT: stage 1 of the band plus its halo (recomputed P), dotted with R of the band;
/// 2. dP of the band's input rows, gathered from R rows first−p .. end+p;
/// 3. dB += dP·Xᵀ and dX += Bᵀ·dP over the band's positions.
///
/// Images are split into fixed chunks (four per rayon thread); each chunk sums its dB and dT
/// partials in image order and the chunks' partials are added in chunk order, so the result is
/// bit-identical from run to run at the same thread count.
pub fn two_stage_backward_banded(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: TwoStageGrads,
    band_rows: usize,
) {
    assert!(
        shape.uses_row_bands() && band_rows >= 1,
        "banded backward: stride 1, 2p + 1 = K ≤ 8"
    );
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    let band_rows = band_rows.min(shape.in_height);
    let layout = shape.band_layout(band_rows);
    let (image_len, hw) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
    );
    let output_image = shape.out_channels * hw;
    let planes = shape.groups * shape.taps() * shape.templates;
    let (want_masks, want_templates) = (grads.masks.is_some(), grads.templates.is_some());
    let want_maps_grad = want_templates || grads.input.is_some();
    let (packed, table, column_masks) = (
        pack_templates(shape, templates),
        mask_table(shape, assignment, masks),
        column_masks(shape),
    );
    let operands = pack_input_grad_operands(shape, templates); // [G, Cg, K², M]
    let outputs_of = assignment.outputs_of_templates(shape.templates);
    let output_of_row = output_of_rows(shape, assignment);
    let input_grad_images: Vec<Option<&mut [f32]>> = match grads.input {
        Some(dx) => dx.chunks_mut(image_len).map(Some).collect(),
        None => (0..shape.batch).map(|_| None).collect(),
    };
    // Four chunks per thread, so a thread that the OS holds back does not stall the others.
    let chunk_images = shape.batch.div_ceil(4 * rayon::current_num_threads()).max(1);
    // Per chunk: (dB partial packed [G, K², M, Cg], dT partial [N−M, G, K²]).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = input_grad_images
        .into_par_iter()
        .enumerate()
        .chunks(chunk_images)
        .map(|images| {
            let mut templates_grad = vec![0.0f32; if want_templates { shape.templates_len() } else { 0 }];
            let mut masks_grad = vec![0.0f32; if want_masks { shape.masks_len() } else { 0 }];
            // Guarded band planes: P and dP [G, K², M, stride], a copy of R [N, stride].
            let mut maps = vec![0.0f32; if want_masks { planes * layout.stride } else { 0 }];
            let mut maps_grad = vec![0.0f32; if want_maps_grad { planes * layout.stride } else { 0 }];
            let mut dy_band = vec![
                0.0f32;
                if want_maps_grad {
                    shape.out_channels * layout.stride
                } else {
                    0
                }
            ];
            for (b, mut dx_image) in images {
                let input_image = &input[b * image_len..][..image_len];
                let dy_image = &grad_output[b * output_image..][..output_image];
                for first in (0..shape.in_height).step_by(band_rows) {
                    let band = RowBand {
                        first,
                        end: (first + band_rows).min(shape.in_height),
                    };
                    if want_masks {
                        stage1_band_guarded(shape, &packed, input_image, &mut maps, layout, band);
                        masks_grad_image_guarded(
                            shape,
                            assignment,
                            &output_of_row,
                            &column_masks,
                            &maps,
                            layout,
                            band,
                            dy_image,
                            &mut masks_grad,
                        );
                    }
                    if want_maps_grad {
                        copy_grad_output_band(shape, dy_image, layout, band, &mut dy_band);
                        maps_grad_image_guarded(
                            shape,
                            &outputs_of,
                            &table,
                            &column_masks,
                            &dy_band,
                            layout,
                            band,
                            &mut maps_grad,
                        );
                        stage1_grads_image_guarded(
                            shape,
                            &operands,
                            input_image,
                            &maps_grad,
                            layout,
                            band,
                            want_templates.then_some(&mut templates_grad[..]),
                            dx_image.as_deref_mut(),
                        );
                    }
                }
            }
            (templates_grad, masks_grad)
        })
        .collect();
    if let Some(dt) = grads.masks {
        for (_, partial) in &partials {
            dt.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
        }
    }
    if let Some(db) = grads.templates {
        let mut total = vec![0.0f32; shape.templates_len()];
        for (partial, _) in &partials {
            total.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
        }
        unpack_templates_grad(shape, &total, db);
    }
}
