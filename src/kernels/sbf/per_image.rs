//! Fast kernels built from per-image blocks: each stage and its transposes for a batch.

use super::*;

// ---------------------------------------------------------------------------------------------
// Fast kernels, built from per-image blocks
// ---------------------------------------------------------------------------------------------

/// The GEMM operands of stage 1's backward into X: per group, Bᵀ as
/// `[Cg × K²·M]` (stride 1; layout [G, Cg, K², M]) or per tap `[Cg × M]` (stride > 1; layout [G, K², Cg, M]).
pub(super) fn pack_input_grad_operands(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    if shape.maps_on_input_grid() {
        return pack_templates_transposed(shape, templates);
    }
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut per_tap = vec![0.0f32; shape.groups * taps * cg * m_count]; // [G, K², Cg, M]
    for g in 0..shape.groups {
        for tap in 0..taps {
            for i in 0..cg {
                for m in 0..m_count {
                    per_tap[((g * taps + tap) * cg + i) * m_count + m] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    per_tap
}

/// Scratch for the strided layout's tap columns ([Cg, Ho·Wo]); empty at stride 1.
pub(super) fn columns_scratch(shape: &SbfShape) -> Vec<f32> {
    vec![
        0.0f32;
        if shape.maps_on_input_grid() {
            0
        } else {
            shape.group_channels() * shape.out_plane()
        }
    ]
}

/// Stage 1 of one image (overwrites maps_image [G, K², M, plane]); packed = [`pack_templates`].
pub(super) fn stage1_image(
    shape: &SbfShape,
    packed: &[f32],
    input_image: &[f32],
    maps_image: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // P[b,g] [K²·M × H·W] = B_g [K²·M × Cg] · X[b, group g] [Cg × H·W]
            let a = &packed[g * taps * m_count * cg..][..taps * m_count * cg];
            let x_group = &input_image[g * cg * plane..][..cg * plane];
            let c = &mut maps_image[g * taps * m_count * plane..][..taps * m_count * plane];
            gemm_overwrite(taps * m_count, cg, plane, a, x_group, c);
            continue;
        }
        for tap in 0..taps {
            // P[b,g,tap] [M × Ho·Wo] = B_{g,tap} [M × Cg] · columns [Cg × Ho·Wo]
            tap_columns(shape, input_image, g, tap / k, tap % k, columns);
            let a = &packed[(g * taps + tap) * m_count * cg..][..m_count * cg];
            let c = &mut maps_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            gemm_overwrite(m_count, cg, plane, a, columns, c);
        }
    }
}

/// dB of one image, accumulated into packed_grad [G, K², M, Cg] (the transposed stage-1 GEMMs).
pub(super) fn templates_grad_image(
    shape: &SbfShape,
    input_image: &[f32],
    maps_grad_image: &[f32],
    packed_grad: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // dB_g [K²·M × Cg] += dP[b,g] [K²·M × H·W] · X[b,g]ᵀ
            let dp = &maps_grad_image[g * taps * m_count * plane..][..taps * m_count * plane];
            let x_group = &input_image[g * cg * plane..][..cg * plane];
            let db = &mut packed_grad[g * taps * m_count * cg..][..taps * m_count * cg];
            gemm_nt_accumulate(taps * m_count, plane, cg, dp, x_group, db);
            continue;
        }
        for tap in 0..taps {
            // dB_{g,tap} [M × Cg] += dP[b,g,tap] [M × Ho·Wo] · columnsᵀ
            tap_columns(shape, input_image, g, tap / k, tap % k, columns);
            let dp = &maps_grad_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            let db = &mut packed_grad[(g * taps + tap) * m_count * cg..][..m_count * cg];
            gemm_nt_accumulate(m_count, plane, cg, dp, columns, db);
        }
    }
}

/// dX of one image, accumulated into grad_image [C, H, W]; operands = [`pack_input_grad_operands`].
pub(super) fn input_grad_image(
    shape: &SbfShape,
    operands: &[f32],
    maps_grad_image: &[f32],
    grad_image: &mut [f32],
    columns: &mut [f32],
) {
    let (m_count, cg, plane, k, taps) = (
        shape.templates,
        shape.group_channels(),
        shape.map_plane(),
        shape.kernel,
        shape.taps(),
    );
    for g in 0..shape.groups {
        if shape.maps_on_input_grid() {
            // dX[b,g] [Cg × H·W] += Bᵀ_g [Cg × K²·M] · dP[b,g] [K²·M × H·W]
            let a = &operands[g * cg * taps * m_count..][..cg * taps * m_count];
            let dp = &maps_grad_image[g * taps * m_count * plane..][..taps * m_count * plane];
            gemm_accumulate(
                cg,
                taps * m_count,
                plane,
                a,
                dp,
                &mut grad_image[g * cg * plane..][..cg * plane],
            );
            continue;
        }
        for tap in 0..taps {
            // dcolumns [Cg × Ho·Wo] = Bᵀ_{g,tap} [Cg × M] · dP[b,g,tap] [M × Ho·Wo], then col2im
            let a = &operands[(g * taps + tap) * cg * m_count..][..cg * m_count];
            let dp = &maps_grad_image[(g * taps + tap) * m_count * plane..][..m_count * plane];
            gemm_overwrite(cg, m_count, plane, a, dp, columns);
            add_tap_columns(shape, columns, g, tap / k, tap % k, grad_image);
        }
    }
}

/// dB [M, C, K, K] += packed_grad [G, K², M, Cg].
pub(super) fn unpack_templates_grad(shape: &SbfShape, packed_grad: &[f32], templates_grad: &mut [f32]) {
    let (m_count, cg, taps) = (shape.templates, shape.group_channels(), shape.taps());
    for g in 0..shape.groups {
        for tap in 0..taps {
            for m in 0..m_count {
                for i in 0..cg {
                    templates_grad[(m * shape.in_channels + g * cg + i) * taps + tap] +=
                        packed_grad[((g * taps + tap) * m_count + m) * cg + i];
                }
            }
        }
    }
}

/// "Same" padding at stride 1 (2p + 1 = K): P and Y planes are both H×W with row stride W, so
/// every output j = h·W + w reads P at j + offset, offset = (kh−p)·W + (kw−p), and one long
/// contiguous range of outputs [begin, end) covers all reads of a tap that are inside P.
/// Inside that range the reads of |kw−p| columns per row wrap into the neighbouring row
/// (they should read padding); [`for_each_wrapped_read`] lists them so callers undo them.
#[inline]
pub(super) fn same_padding_range(shape: &SbfShape, kh: usize, kw: usize) -> Option<(usize, usize, isize)> {
    let (h, w) = (shape.in_height as isize, shape.in_width as isize);
    let (dy, dx) = (
        kh as isize - shape.padding as isize,
        kw as isize - shape.padding as isize,
    );
    let (h_begin, h_end) = ((-dy).max(0), (h - dy).min(h));
    let begin = h_begin * w + (-dx).max(0);
    let end = h_end * w - dx.max(0);
    (begin < end).then_some((begin as usize, end as usize, dy * w + dx))
}

/// Calls `undo(j)` for every output j in [`same_padding_range`] whose read wrapped around a row end.
#[inline]
pub(super) fn for_each_wrapped_read(shape: &SbfShape, kh: usize, kw: usize, mut undo: impl FnMut(usize)) {
    let Some((begin, end, _)) = same_padding_range(shape, kh, kw) else {
        return;
    };
    let w = shape.in_width;
    let dx = kw as isize - shape.padding as isize;
    let columns = if dx < 0 {
        0..(-dx) as usize
    } else {
        w - dx as usize..w
    };
    for row_start in (begin / w * w..end).step_by(w) {
        for column in columns.clone() {
            let j = row_start + column;
            if j >= begin && j < end {
                undo(j);
            }
        }
    }
}

impl SbfShape {
    /// Stride 1 with 2p + 1 = K: the layout of [`same_padding_range`].
    pub(super) fn same_padding(&self) -> bool {
        self.stride == 1 && 2 * self.padding + 1 == self.kernel
    }
}

/// Y[b,n] (one output plane, overwritten) = Σ_g Σ_tap t(n,g,tap) · (the read segments of P[b,g,tap,m(n)]).
pub(super) fn gather_plane(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps_image: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let (k, w_out, map_plane) = (shape.kernel, shape.out_width(), shape.map_plane());
    let (m, row) = (assignment.template_of[n], assignment.mask_row[n]);
    y.fill(0.0);
    for g in 0..shape.groups {
        for tap in 0..k * k {
            let t = mask_value(shape, masks, row, g, tap);
            let map = &maps_image[shape.map_offset(0, g, tap, m)..][..map_plane];
            if shape.same_padding() {
                // y[j] += t·P[j + offset] over one long range, then undo the wrapped reads.
                let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
                    continue;
                };
                let read = (begin as isize + offset) as usize;
                axpy(t, &map[read..read + (end - begin)], &mut y[begin..end]);
                for_each_wrapped_read(shape, tap / k, tap % k, |j| {
                    y[j] -= t * map[(j as isize + offset) as usize];
                });
                continue;
            }
            for h in 0..shape.out_height() {
                let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
                    continue;
                };
                axpy(
                    t,
                    &map[start..start + (w1 - w0)],
                    &mut y[h * w_out + w0..h * w_out + w1],
                );
            }
        }
    }
}

/// dT[row(n), g, tap] contribution of one image: Σ_{h,w} R[b,n,h,w] · P[b,g,tap,m(n), read position].
pub(super) fn masks_grad_entry(
    shape: &SbfShape,
    maps_image: &[f32],
    dy_plane: &[f32],
    m: usize,
    g: usize,
    tap: usize,
) -> f32 {
    let (k, w_out) = (shape.kernel, shape.out_width());
    let map = &maps_image[shape.map_offset(0, g, tap, m)..][..shape.map_plane()];
    if shape.same_padding() {
        // Σ_j R[j]·P[j + offset] over one long range, minus the wrapped reads.
        let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
            return 0.0;
        };
        let read = (begin as isize + offset) as usize;
        let mut sum = dot(&dy_plane[begin..end], &map[read..read + (end - begin)]);
        for_each_wrapped_read(shape, tap / k, tap % k, |j| {
            sum -= dy_plane[j] * map[(j as isize + offset) as usize];
        });
        return sum;
    }
    let mut sum = 0.0;
    for h in 0..shape.out_height() {
        let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
            continue;
        };
        sum += dot(
            &dy_plane[h * w_out + w0..h * w_out + w1],
            &map[start..start + (w1 - w0)],
        );
    }
    sum
}

/// dP[b,g,tap,m] (one map plane, overwritten) = Σ_{n: m(n)=m} t(n,g,tap) · R[b,n] at the positions it read.
pub(super) fn maps_grad_plane(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    outputs_of_template: &[usize],
    grad_output_image: &[f32],
    g: usize,
    tap: usize,
    dp: &mut [f32],
) {
    let (plane, k, w_out) = (shape.out_plane(), shape.kernel, shape.out_width());
    dp.fill(0.0);
    for &n in outputs_of_template {
        let t = mask_value(shape, masks, assignment.mask_row[n], g, tap);
        let dy = &grad_output_image[n * plane..][..plane];
        if shape.same_padding() {
            // dP[j + offset] += t·R[j] over one long range, then undo the wrapped writes.
            let Some((begin, end, offset)) = same_padding_range(shape, tap / k, tap % k) else {
                continue;
            };
            let write = (begin as isize + offset) as usize;
            axpy(t, &dy[begin..end], &mut dp[write..write + (end - begin)]);
            for_each_wrapped_read(shape, tap / k, tap % k, |j| {
                dp[(j as isize + offset) as usize] -= t * dy[j];
            });
            continue;
        }
        for h in 0..shape.out_height() {
            let Some((start, w0, w1)) = read_segment(shape, h, tap / k, tap % k) else {
                continue;
            };
            axpy(
                t,
                &dy[h * w_out + w0..h * w_out + w1],
                &mut dp[start..start + (w1 - w0)],
            );
        }
    }
}

/// Stage 1, fast: one image per task (in parallel). Overwrites maps.
///
/// - stride 1: per group, ONE GEMM `P[b,g] [K²·M × H·W] = packed B [K²·M × Cg] · X[b, group g] [Cg × H·W]`
///   (X's channels of a group are already a contiguous [Cg × H·W] matrix: no copy at all);
/// - stride > 1: per group and tap, `P[b,g,tap] [M × Ho·Wo] = packed B_tap [M × Cg] · columns [Cg × Ho·Wo]`,
///   the columns being the tap's strided view of X (only the positions that are read).
pub fn stage1_forward(shape: &SbfShape, input: &[f32], templates: &[f32], maps: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("P", maps.len(), shape.maps_len());
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    maps.par_chunks_mut(shape.maps_per_image())
        .enumerate()
        .for_each_init(
            || columns_scratch(shape),
            |columns, (b, maps_image)| {
                stage1_image(
                    shape,
                    &packed,
                    &input[b * image_len..][..image_len],
                    maps_image,
                    columns,
                )
            },
        );
}

/// dB, fast: per image (in parallel, partial sums in packed layout reduced at the end), the
/// transposed stage-1 GEMMs.
pub fn stage1_templates_grad(shape: &SbfShape, input: &[f32], maps_grad: &[f32], templates_grad: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("dB", templates_grad.len(), shape.templates_len());
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    let packed_len = shape.templates_len();
    let packed_grad = (0..shape.batch)
        .into_par_iter()
        .fold(
            || (vec![0.0f32; packed_len], columns_scratch(shape)),
            |(mut partial, mut columns), b| {
                let maps_grad_image = &maps_grad[b * shape.maps_per_image()..][..shape.maps_per_image()];
                templates_grad_image(
                    shape,
                    &input[b * image_len..][..image_len],
                    maps_grad_image,
                    &mut partial,
                    &mut columns,
                );
                (partial, columns)
            },
        )
        .map(|(partial, _)| partial)
        .reduce(|| vec![0.0f32; packed_len], add_vectors);
    unpack_templates_grad(shape, &packed_grad, templates_grad);
}

pub(super) fn add_vectors(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// dX, fast: per image (in parallel): stride 1, one GEMM per group
/// `dX[b,g] [Cg × H·W] += Bᵀ_g [Cg × K²·M] · dP[b,g] [K²·M × H·W]`; stride > 1, per tap
/// `dcolumns [Cg × Ho·Wo] = Bᵀ_tap [Cg × M] · dP[b,g,tap] [M × Ho·Wo]`, then the col2im of the tap into dX.
pub fn stage1_input_grad(shape: &SbfShape, maps_grad: &[f32], templates: &[f32], input_grad: &mut [f32]) {
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("dX", input_grad.len(), shape.input_len());
    let operands = pack_input_grad_operands(shape, templates);
    let image_len = shape.in_channels * shape.in_height * shape.in_width;
    input_grad.par_chunks_mut(image_len).enumerate().for_each_init(
        || columns_scratch(shape),
        |columns, (b, grad_image)| {
            let maps_grad_image = &maps_grad[b * shape.maps_per_image()..][..shape.maps_per_image()];
            input_grad_image(shape, &operands, maps_grad_image, grad_image, columns)
        },
    );
}

/// Stage 2, fast: one output plane per task (in parallel); for each group, tap and output row,
/// one f32x8 axpy of the row segment of the template's map that it reads.
pub fn gather_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps: &[f32],
    output: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("Y", output.len(), shape.output_len());
    let n_out = shape.out_channels;
    output
        .par_chunks_mut(shape.out_plane())
        .enumerate()
        .for_each(|(bn, y)| {
            let (b, n) = (bn / n_out, bn % n_out);
            let maps_image = &maps[b * shape.maps_per_image()..][..shape.maps_per_image()];
            gather_plane(shape, assignment, masks, maps_image, n, y);
        });
}

/// For each mask row r, the transformed output n that uses it.
pub(super) fn output_of_rows(shape: &SbfShape, assignment: &TemplateAssignment) -> Vec<usize> {
    let mut output_of_row = vec![0; shape.transformed()];
    for n in 0..shape.out_channels {
        if let Some(r) = assignment.mask_row[n] {
            output_of_row[r] = n;
        }
    }
    output_of_row
}

/// dT, fast: one mask row per task (in parallel), f32x8 dot products of the row segments.
pub fn gather_masks_grad(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    maps: &[f32],
    grad_output: &[f32],
    masks_grad: &mut [f32],
) {
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dT", masks_grad.len(), shape.masks_len());
    let (plane, taps) = (shape.out_plane(), shape.taps());
    let output_of_row = output_of_rows(shape, assignment);
    let row_len = shape.groups * taps;
    if row_len == 0 {
        return;
    }
    masks_grad
        .par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(r, dt)| {
            let n = output_of_row[r];
            for b in 0..shape.batch {
                let maps_image = &maps[b * shape.maps_per_image()..][..shape.maps_per_image()];
                let dy = &grad_output[(b * shape.out_channels + n) * plane..][..plane];
                for g in 0..shape.groups {
                    for tap in 0..taps {
                        dt[g * taps + tap] +=
                            masks_grad_entry(shape, maps_image, dy, assignment.template_of[n], g, tap);
                    }
                }
            }
        });
}

/// dP, fast: a gather over the outputs of each template (no atomics): one plane `dP[b,g,tap,m]` per
/// task (in parallel); for each output n with m(n) = m and each output row h, one f32x8 axpy of the
/// row of R into the plane segment it read (for stride 1 this is the solve h = y − kh + p).
pub fn gather_maps_grad(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    grad_output: &[f32],
    maps_grad: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    let (m_count, taps) = (shape.templates, shape.taps());
    let outputs_of = assignment.outputs_of_templates(m_count);
    let output_image = shape.out_channels * shape.out_plane();
    maps_grad
        .par_chunks_mut(shape.map_plane())
        .enumerate()
        .for_each(|(index, dp)| {
            // index = ((b·G + g)·K² + tap)·M + m
            let m = index % m_count;
            let tap = index / m_count % taps;
            let g = index / (m_count * taps) % shape.groups;
            let b = index / (m_count * taps * shape.groups);
            let dy_image = &grad_output[b * output_image..][..output_image];
            maps_grad_plane(shape, assignment, masks, &outputs_of[m], dy_image, g, tap, dp);
        });
}
