//! The fused layer kernels: both stages per image, with P[b] in a per-worker scratch buffer.

use super::*;

// ---------------------------------------------------------------------------------------------
// The fused layer kernels: both stages per image, with P[b] in a per-worker scratch buffer
// ---------------------------------------------------------------------------------------------
//
// The maps P hold K²·G·M planes per image (G·K²·M/N times the output: 9× for 16 channels at
// M = 8, G = 2). The layer never materialises them for the whole batch: the forward computes
// P[b] into a per-worker buffer and gathers it while it is in cache; the backward recomputes
// P[b] (one stage-1 GEMM per image) when dT is wanted, rather than keeping the batch's P
// alive between forward and backward. Peak memory is then one P[b] and one dP[b] per worker.

/// The layer's forward: per image (in parallel) stage 1 into a scratch `P[b]`, then stage 2 from
/// it. Overwrites output [Bt, N, Ho, Wo].
pub fn two_stage_forward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    output: &mut [f32],
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("Y", output.len(), shape.output_len());
    if shape.uses_row_bands() {
        return two_stage_forward_banded(
            shape,
            assignment,
            input,
            templates,
            masks,
            output,
            shape.band_rows(),
        );
    }
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let (image_len, plane) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
    );
    output
        .par_chunks_mut(shape.out_channels * plane)
        .enumerate()
        .for_each_init(
            // (P[b] [G, K², M, plane], columns)
            || (vec![0.0f32; shape.maps_per_image()], columns_scratch(shape)),
            |(maps_image, columns), (b, output_image)| {
                stage1_image(
                    shape,
                    &packed,
                    &input[b * image_len..][..image_len],
                    maps_image,
                    columns,
                );
                for (n, y) in output_image.chunks_mut(plane).enumerate() {
                    gather_plane(shape, assignment, masks, maps_image, n, y);
                }
            },
        );
}

/// Where [`two_stage_backward`] accumulates; `None` skips that gradient.
pub struct TwoStageGrads<'a> {
    /// dX [Bt, C, H, W]
    pub input: Option<&'a mut [f32]>,
    /// dB [M, C, K, K]
    pub templates: Option<&'a mut [f32]>,
    /// dT [N−M, G, K, K]
    pub masks: Option<&'a mut [f32]>,
}

/// The layer's backward (view B), per image in parallel: dT from a recomputed `P[b]` and `R[b]`;
/// `dP[b]` by the gather over outputs; then dB (partial sums per worker) and `dX[b]` from `dP[b]`.
/// Accumulates into `grads`.
pub fn two_stage_backward(
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    input: &[f32],
    templates: &[f32],
    masks: &[f32],
    grad_output: &[f32],
    grads: TwoStageGrads,
) {
    shape.check("X", input.len(), shape.input_len());
    shape.check("B", templates.len(), shape.templates_len());
    shape.check("T", masks.len(), shape.masks_len());
    shape.check("dY", grad_output.len(), shape.output_len());
    if shape.uses_row_bands() {
        let band_rows = shape.band_rows();
        return two_stage_backward_banded(
            shape,
            assignment,
            input,
            templates,
            masks,
            grad_output,
            grads,
            band_rows,
        );
    }
    let (image_len, plane, taps) = (
        shape.in_channels * shape.in_height * shape.in_width,
        shape.out_plane(),
        shape.taps(),
    );
    let output_image = shape.out_channels * plane;
    let (want_masks, want_templates) = (grads.masks.is_some(), grads.templates.is_some());
    let want_maps_grad = want_templates || grads.input.is_some();
    let packed = pack_templates(shape, templates); // [G, K², M, Cg]
    let operands = pack_input_grad_operands(shape, templates);
    let outputs_of = assignment.outputs_of_templates(shape.templates);
    let output_of_row = output_of_rows(shape, assignment);
    let input_grad_images: Vec<Option<&mut [f32]>> = match grads.input {
        Some(dx) => dx.chunks_mut(image_len).map(Some).collect(),
        None => (0..shape.batch).map(|_| None).collect(),
    };
    // Per worker: dB partial [G, K², M, Cg], dT partial [N−M, G, K²], and scratch P[b] / dP[b]
    // [G, K², M, plane] and columns.
    struct Worker {
        templates_grad: Vec<f32>,
        masks_grad: Vec<f32>,
        maps: Vec<f32>,
        maps_grad: Vec<f32>,
        columns: Vec<f32>,
    }
    let new_worker = || Worker {
        templates_grad: vec![0.0; if want_templates { shape.templates_len() } else { 0 }],
        masks_grad: vec![0.0; if want_masks { shape.masks_len() } else { 0 }],
        maps: vec![0.0; if want_masks { shape.maps_per_image() } else { 0 }],
        maps_grad: vec![0.0; if want_maps_grad { shape.maps_per_image() } else { 0 }],
        columns: columns_scratch(shape),
    };
    let total = input_grad_images
        .into_par_iter()
        .enumerate()
        .fold(new_worker, |mut worker, (b, dx_image)| {
            let input_image = &input[b * image_len..][..image_len];
            let dy_image = &grad_output[b * output_image..][..output_image];
            if want_masks {
                // dT[row(n),g,tap] += Σ R[b,n,·]·P[b,g,tap,m(n),·]   (P[b] recomputed)
                stage1_image(shape, &packed, input_image, &mut worker.maps, &mut worker.columns);
                for (r, &n) in output_of_row.iter().enumerate() {
                    let dy = &dy_image[n * plane..][..plane];
                    for g in 0..shape.groups {
                        for tap in 0..taps {
                            worker.masks_grad[(r * shape.groups + g) * taps + tap] +=
                                masks_grad_entry(shape, &worker.maps, dy, assignment.template_of[n], g, tap);
                        }
                    }
                }
            }
            if want_maps_grad {
                // dP[b,g,tap,m,·] = Σ_{n: m(n)=m} t(n,g,tap)·R[b,n,·]
                for (index, dp) in worker.maps_grad.chunks_mut(shape.map_plane()).enumerate() {
                    // index = (g·K² + tap)·M + m
                    let m = index % shape.templates;
                    let (tap, g) = (index / shape.templates % taps, index / (shape.templates * taps));
                    maps_grad_plane(shape, assignment, masks, &outputs_of[m], dy_image, g, tap, dp);
                }
                if want_templates {
                    // dB += dP[b]·X[b]ᵀ
                    templates_grad_image(
                        shape,
                        input_image,
                        &worker.maps_grad,
                        &mut worker.templates_grad,
                        &mut worker.columns,
                    );
                }
                if let Some(dx) = dx_image {
                    // dX[b] += Bᵀ·dP[b]
                    input_grad_image(shape, &operands, &worker.maps_grad, dx, &mut worker.columns);
                }
            }
            worker
        })
        .reduce(new_worker, |mut a, b| {
            a.templates_grad
                .iter_mut()
                .zip(&b.templates_grad)
                .for_each(|(x, y)| *x += y);
            a.masks_grad
                .iter_mut()
                .zip(&b.masks_grad)
                .for_each(|(x, y)| *x += y);
            a
        });
    if let Some(dt) = grads.masks {
        dt.iter_mut().zip(&total.masks_grad).for_each(|(d, p)| *d += p);
    }
    if let Some(db) = grads.templates {
        unpack_templates_grad(shape, &total.templates_grad, db);
    }
}
