//! The naive reference of the SBF layer, in one layout, written straight from the formulas: the
//! oracles of the fused kernels ([`super::fused_forward`], [`super::fused_backward`]).
//!
//! The maps P [Bt, G, K², M, plane] are materialised (plane = H·W at stride 1, on the input
//! grid; Ho·Wo at stride > 1, at the output positions: see [`SbfShape::map_source`]):
//!
//! ```text
//!   stage 1   P[b,g,tap,m,j] = Σ_{i∈g} X[b,i,y,x] · B[m,i,kh,kw]          (y,x) = map_source(j)
//!   stage 2   Y[b,n,h,w]     = Σ_g Σ_tap t(n,g,tap) · P[b,g,tap,m(n),map_position(h,w,kh,kw)]
//! ```
//!
//! and the backward of each stage ("view B"): dT and dP from the gather, dB and dX from stage 1.

use super::*;

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
