//! The two stages one at a time: packing, and the naive oracles of stage 1 and of the gather.

use super::*;

// ---------------------------------------------------------------------------------------------
// Stage 1: grouped 1×1 convolution with every tap slice of the templates
// ---------------------------------------------------------------------------------------------

/// Copies the shifted, strided view of X that tap (kh, kw) reads, for the Cg
/// channels of group g of image `input_image` [C, H, W]:
/// `columns[i, h·Wo + w] = X[g·Cg + i, h·s + kh − p, w·s + kw − p]` (0 in the padding).
/// columns: [Cg, Ho·Wo]
pub fn tap_columns(
    shape: &SbfShape,
    input_image: &[f32],
    g: usize,
    kh: usize,
    kw: usize,
    columns: &mut [f32],
) {
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let cg = shape.group_channels();
    for i in 0..cg {
        let plane = &input_image[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        let column = &mut columns[i * h_out * w_out..][..h_out * w_out];
        for h in 0..h_out {
            let row = &mut column[h * w_out..][..w_out];
            let Some(y) = (h * shape.stride + kh)
                .checked_sub(shape.padding)
                .filter(|&y| y < h_in)
            else {
                row.fill(0.0);
                continue;
            };
            let src = &plane[y * w_in..][..w_in];
            for w in 0..w_out {
                let x = (w * shape.stride + kw).wrapping_sub(shape.padding);
                row[w] = if x < w_in { src[x] } else { 0.0 };
            }
        }
    }
}

/// The transpose of [`tap_columns`]: `dX[g·Cg + i, h·s+kh−p, w·s+kw−p] += columns[i, h·Wo + w]`
/// (col2im of one tap; positions in the padding are dropped).
pub fn add_tap_columns(
    shape: &SbfShape,
    columns: &[f32],
    g: usize,
    kh: usize,
    kw: usize,
    grad_image: &mut [f32],
) {
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    let cg = shape.group_channels();
    for i in 0..cg {
        let plane = &mut grad_image[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        let column = &columns[i * h_out * w_out..][..h_out * w_out];
        for h in 0..h_out {
            let Some(y) = (h * shape.stride + kh)
                .checked_sub(shape.padding)
                .filter(|&y| y < h_in)
            else {
                continue;
            };
            let dst = &mut plane[y * w_in..][..w_in];
            for w in 0..w_out {
                let x = (w * shape.stride + kw).wrapping_sub(shape.padding);
                if x < w_in {
                    dst[x] += column[h * w_out + w];
                }
            }
        }
    }
}

/// Repacks B [M, C, K, K] as per-group GEMM operands `[G, K², M, Cg]`:
/// `packed[g][tap][m][i]` = B[m, g·Cg + i, tap]. Per group this is one [K²·M × Cg] matrix
/// (stride 1) or K² matrices [M × Cg] (one per tap, stride > 1).
pub fn pack_templates(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut packed = vec![0.0; shape.groups * taps * m_count * cg]; // [G, K², M, Cg]
    for g in 0..shape.groups {
        for tap in 0..taps {
            for m in 0..m_count {
                for i in 0..cg {
                    packed[((g * taps + tap) * m_count + m) * cg + i] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    packed
}

/// The transpose of each per-group operand of [`pack_templates`]: `[G, Cg, K², M]`,
/// `packed[g][i][tap][m]` = B[m, g·Cg + i, tap].
pub fn pack_templates_transposed(shape: &SbfShape, templates: &[f32]) -> Vec<f32> {
    let (m_count, taps, cg, c) = (
        shape.templates,
        shape.taps(),
        shape.group_channels(),
        shape.in_channels,
    );
    let mut packed = vec![0.0; shape.groups * cg * taps * m_count]; // [G, Cg, K², M]
    for g in 0..shape.groups {
        for i in 0..cg {
            for tap in 0..taps {
                for m in 0..m_count {
                    packed[((g * cg + i) * taps + tap) * m_count + m] =
                        templates[(m * c + g * cg + i) * taps + tap];
                }
            }
        }
    }
    packed
}

/// Stage 1, naive: `P[b,g,tap,m,j] = Σ_{i∈g} X[b,i,y,x] · B[m,i,kh,kw]` with (y, x) = map_source(j)
/// (0 where j reads the padding). Overwrites maps.
pub fn stage1_forward_naive(shape: &SbfShape, input: &[f32], templates: &[f32], maps: &mut [f32]) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("P", maps.len(), shape.maps_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for b in 0..shape.batch {
        for g in 0..shape.groups {
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                for m in 0..shape.templates {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        let mut sum = 0.0;
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            for i in g * cg..(g + 1) * cg {
                                sum += input[((b * c + i) * h_in + y) * w_in + x]
                                    * templates[(m * c + i) * k * k + tap];
                            }
                        }
                        maps[base + j] = sum;
                    }
                }
            }
        }
    }
}

/// dB, naive: `dB[m,i,kh,kw] += Σ_{b,j} dP[b,g(i),tap,m,j] · X[b,i,map_source(j)]`.
pub fn stage1_templates_grad_naive(
    shape: &SbfShape,
    input: &[f32],
    maps_grad: &[f32],
    templates_grad: &mut [f32],
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("dB", templates_grad.len(), shape.templates_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for m in 0..shape.templates {
        for i in 0..c {
            let g = i / cg;
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                let mut sum = 0.0;
                for b in 0..shape.batch {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            sum += maps_grad[base + j] * input[((b * c + i) * h_in + y) * w_in + x];
                        }
                    }
                }
                templates_grad[(m * c + i) * k * k + tap] += sum;
            }
        }
    }
}

/// dX, naive: `dX[b,i,y,x] += Σ_{tap,m} B[m,i,kh,kw] · dP[b,g(i),tap,m,j]` over the plane indices j
/// with map_source(j) = (y, x) (a scatter over j: obviously the transpose of the naive stage 1).
pub fn stage1_input_grad_naive(
    shape: &SbfShape,
    maps_grad: &[f32],
    templates: &[f32],
    input_grad: &mut [f32],
) {
    shape.check("dP", maps_grad.len(), shape.maps_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("dX", input_grad.len(), shape.input_len());
    let (c, k, cg) = (shape.in_channels, shape.kernel, shape.group_channels());
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    for b in 0..shape.batch {
        for i in 0..c {
            let g = i / cg;
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let tap = kh * k + kw;
                for m in 0..shape.templates {
                    let base = shape.map_offset(b, g, tap, m);
                    for j in 0..shape.map_plane() {
                        if let Some((y, x)) = shape.map_source(j, kh, kw) {
                            input_grad[((b * c + i) * h_in + y) * w_in + x] +=
                                templates[(m * c + i) * k * k + tap] * maps_grad[base + j];
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: the gather (TransformGather) and its transposes
// ---------------------------------------------------------------------------------------------

/// For output row h at tap (kh, kw): the row of the P plane it reads and the range of output
/// columns w whose read is inside the plane, with the plane column of the first one:
/// `(plane_row_start, w_begin, w_end)`, or None if the whole row reads padding.
///
/// Input grid (stride 1): row y = h + kh − p, columns x = w + kw − p ∈ [0, W).
/// Strided layout: row h, all columns (padding reads are stored zeros).
#[inline]
pub(super) fn read_segment(
    shape: &SbfShape,
    h: usize,
    kh: usize,
    kw: usize,
) -> Option<(usize, usize, usize)> {
    if !shape.maps_on_input_grid() {
        let w_out = shape.out_width();
        return Some((h * w_out, 0, w_out));
    }
    let (p, w_in, w_out) = (shape.padding, shape.in_width, shape.out_width());
    let y = (h + kh).checked_sub(p).filter(|&y| y < shape.in_height)?;
    let w_begin = p.saturating_sub(kw);
    let w_end = (w_in + p).saturating_sub(kw).min(w_out);
    (w_begin < w_end).then(|| (y * w_in + w_begin + kw - p, w_begin, w_end))
}

/// Stage 2, naive: `Y[b,n,h,w] = Σ_g Σ_tap t(n,g,tap) · P[b,g,tap,m(n), map_position(h,w,kh,kw)]`. Overwrites output.
pub fn gather_forward_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    maps: &[f32],
    output: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("Y", output.len(), shape.output_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    for b in 0..shape.batch {
        for n in 0..shape.out_channels {
            for h in 0..shape.out_height() {
                for w in 0..w_out {
                    let mut sum = 0.0;
                    for g in 0..shape.groups {
                        for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                            let Some(j) = shape.map_position(h, w, kh, kw) else {
                                continue;
                            };
                            let t = mask_value(shape, masks, assignment.mask_row[n], g, kh * k + kw);
                            sum +=
                                t * maps[shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]) + j];
                        }
                    }
                    output[(b * shape.out_channels + n) * plane + h * w_out + w] = sum;
                }
            }
        }
    }
}

/// dT, naive: `dT[row(n),g,tap] += Σ_{b,h,w} R[b,n,h,w] · P[b,g,tap,m(n),map_position(h,w,kh,kw)]`.
pub fn gather_masks_grad_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    maps: &[f32],
    grad_output: &[f32],
    masks_grad: &mut [f32],
) {
    shape.check("P", maps.len(), shape.maps_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dT", masks_grad.len(), shape.masks_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    for n in 0..shape.out_channels {
        let Some(r) = assignment.mask_row[n] else { continue };
        for g in 0..shape.groups {
            for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                let base_of = |b| shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]);
                let mut sum = 0.0;
                for b in 0..shape.batch {
                    for h in 0..shape.out_height() {
                        for w in 0..w_out {
                            if let Some(j) = shape.map_position(h, w, kh, kw) {
                                sum += grad_output[(b * shape.out_channels + n) * plane + h * w_out + w]
                                    * maps[base_of(b) + j];
                            }
                        }
                    }
                }
                masks_grad[(r * shape.groups + g) * shape.taps() + kh * k + kw] += sum;
            }
        }
    }
}

/// dP, naive: `dP[b,g,tap,m(n),map_position(h,w,kh,kw)] += t(n,g,tap) · R[b,n,h,w]` over all n, h, w
/// (a scatter; dP is zeroed first, so it overwrites maps_grad).
pub fn gather_maps_grad_naive(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    masks: &[f32],
    grad_output: &[f32],
    maps_grad: &mut [f32],
) {
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    shape.check("dP", maps_grad.len(), shape.maps_len());
    let (k, w_out, plane) = (shape.kernel, shape.out_width(), shape.out_plane());
    maps_grad.fill(0.0);
    for b in 0..shape.batch {
        for n in 0..shape.out_channels {
            for g in 0..shape.groups {
                for (kh, kw) in (0..k).flat_map(|kh| (0..k).map(move |kw| (kh, kw))) {
                    let t = mask_value(shape, masks, assignment.mask_row[n], g, kh * k + kw);
                    let base = shape.map_offset(b, g, kh * k + kw, assignment.template_of[n]);
                    for h in 0..shape.out_height() {
                        for w in 0..w_out {
                            if let Some(j) = shape.map_position(h, w, kh, kw) {
                                maps_grad[base + j] +=
                                    t * grad_output[(b * shape.out_channels + n) * plane + h * w_out + w];
                            }
                        }
                    }
                }
            }
        }
    }
}
