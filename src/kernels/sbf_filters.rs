//! The effective filters of an SBF layer ("view A"): materialise
//! Weff [N, C, K, K] from the templates and the transforms, so the layer is an
//! ordinary dense convolution with Weff. This is the test oracle of the
//! two-stage kernels, the cheaper path at low pruning rates, and the path of
//! the expressive (bilinear) transform families.
//!
//! Every transform is a linear map of a template's K×K taps, shared by the Cg
//! input channels of a group:
//!
//! ```text
//!   Weff[n,i,k] = B[m(n),i,k]                                  identity output
//!   Weff[n,i,k] = Σ_{k'} S_{row(n),g(i)}[k,k'] · B[m(n),i,k']   transformed output
//! ```
//!
//! - scalar masks:  S = diag(`T[row,g,:]`)                            (K² parameters)
//! - affine:        row k of S holds the bilinear weights of the point `A·[u,v,1]ᵀ`   (6 parameters)
//! - rotation:      affine with A = [[cos θ, −sin θ, 0], [sin θ, cos θ, 0]]          (1 parameter)
//!
//! Coordinates are kernel-centred: tap (kh, kw) sits at (u, v) = (kw − c, kh − c),
//! c = (K−1)/2. The sampling point (px, py) = A·[u, v, 1]ᵀ reads the template at
//! column px + c, row py + c; taps outside the K×K support contribute 0.
//!
//! Backward (R = ∂L/∂Weff):
//! ```text
//!   dB[m,i,k']  += Σ_{n: m(n)=m} Σ_k S_{row(n),g(i)}[k,k'] · R[n,i,k]     (S = I for the identity output)
//!   Q[k,k']      = Σ_{i∈g} R[n,i,k] · B[m(n),i,k']
//!   dθ           += Σ_{k,k'} Q[k,k'] · ∂S[k,k']/∂θ                         (θ: the transform's parameters)
//! ```

use super::sbf::TemplateAssignment;

/// How a transformed output is derived from its template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformFamily {
    /// Per-tap scalar masks T [N−M, G, K, K] (the paper's default; 1 MAC per tap).
    Scalar,
    /// A 2×3 matrix per output and group, [N−M, G, 2, 3], applied by bilinear sampling (4 MACs per tap).
    Affine,
    /// One angle per output and group, [N−M, G, 1]: the rotation special case of `Affine`.
    Rotation,
    /// No transform at all: a transformed output is zero (Weff = 0), which is plain filter
    /// pruning (the L1 baseline of SBF-NOTES §6: "T = 0"). No parameters, no MACs; the
    /// transform tensor is [N−M, G, 0].
    Zero,
}

impl TransformFamily {
    /// Parameters per transformed output and group.
    pub fn params_per_group(self, kernel: usize) -> usize {
        match self {
            TransformFamily::Scalar => kernel * kernel,
            TransformFamily::Affine => 6,
            TransformFamily::Rotation => 1,
            TransformFamily::Zero => 0,
        }
    }

    /// The shape of the transform tensor for `transformed` outputs and `groups` groups.
    pub fn param_shape(self, transformed: usize, groups: usize, kernel: usize) -> Vec<usize> {
        match self {
            TransformFamily::Scalar => vec![transformed, groups, kernel, kernel],
            TransformFamily::Affine => vec![transformed, groups, 2, 3],
            TransformFamily::Rotation => vec![transformed, groups, 1],
            TransformFamily::Zero => vec![transformed, groups, 0],
        }
    }

    /// The parameters of the identity transform (a copy of the template).
    pub fn identity(self, kernel: usize) -> Vec<f32> {
        match self {
            TransformFamily::Scalar => vec![1.0; kernel * kernel],
            TransformFamily::Affine => vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            TransformFamily::Rotation => vec![0.0],
            TransformFamily::Zero => vec![],
        }
    }

    /// Multiply-accumulates per tap of a transformed output in the two-stage form.
    pub fn macs_per_tap(self) -> usize {
        match self {
            TransformFamily::Scalar => 1,
            TransformFamily::Affine | TransformFamily::Rotation => 4,
            TransformFamily::Zero => 0,
        }
    }

    /// A short name, as saved in checkpoints and printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            TransformFamily::Scalar => "scalar",
            TransformFamily::Affine => "affine",
            TransformFamily::Rotation => "rotation",
            TransformFamily::Zero => "zero",
        }
    }
}

/// The 2×3 matrix of an affine or rotation transform (row-major [a00 a01 a02 a10 a11 a12]).
fn affine_matrix(family: TransformFamily, params: &[f32]) -> [f32; 6] {
    match family {
        TransformFamily::Affine => params[..6].try_into().unwrap(),
        TransformFamily::Rotation => {
            let (sin, cos) = params[0].sin_cos();
            [cos, -sin, 0.0, sin, cos, 0.0]
        }
        TransformFamily::Scalar | TransformFamily::Zero => {
            panic!("affine_matrix: the {} family has no matrix", family.name())
        }
    }
}

/// The bilinear corners of a sampling point: (tap index k', weight, ∂weight/∂px, ∂weight/∂py),
/// only those inside the K×K support.
fn bilinear_corners(kernel: usize, px: f32, py: f32) -> impl Iterator<Item = (usize, f32, f32, f32)> {
    let c = (kernel as f32 - 1.0) / 2.0;
    let (col, row) = (px + c, py + c);
    let (x0, y0) = (col.floor(), row.floor());
    let (fx, fy) = (col - x0, row - y0);
    let corners = [
        (x0, y0, (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx)),
        (x0 + 1.0, y0, fx * (1.0 - fy), 1.0 - fy, -fx),
        (x0, y0 + 1.0, (1.0 - fx) * fy, -fy, 1.0 - fx),
        (x0 + 1.0, y0 + 1.0, fx * fy, fy, fx),
    ];
    let k = kernel as f32;
    corners
        .into_iter()
        .filter(move |&(x, y, ..)| x >= 0.0 && y >= 0.0 && x < k && y < k)
        .map(move |(x, y, weight, d_px, d_py)| ((y as usize) * kernel + x as usize, weight, d_px, d_py))
}

/// S [K², K²] of one transform: `S[k, k']`, the weight of template tap k' in filter tap k.
pub fn sampling_matrix(family: TransformFamily, kernel: usize, params: &[f32]) -> Vec<f32> {
    let taps = kernel * kernel;
    let mut s = vec![0.0; taps * taps]; // [K², K²]
    if family == TransformFamily::Zero {
        return s;
    }
    if family == TransformFamily::Scalar {
        for k in 0..taps {
            s[k * taps + k] = params[k];
        }
        return s;
    }
    let a = affine_matrix(family, params);
    let c = (kernel as f32 - 1.0) / 2.0;
    for kh in 0..kernel {
        for kw in 0..kernel {
            let (u, v) = (kw as f32 - c, kh as f32 - c);
            let (px, py) = (a[0] * u + a[1] * v + a[2], a[3] * u + a[4] * v + a[5]);
            for (k_src, weight, _, _) in bilinear_corners(kernel, px, py) {
                s[(kh * kernel + kw) * taps + k_src] += weight;
            }
        }
    }
    s
}

/// `Σ_{k,k'} q[k,k'] · ∂S[k,k']/∂params` for q [K², K²]: the gradient of one transform's parameters.
pub fn sampling_matrix_params_grad(
    family: TransformFamily,
    kernel: usize,
    params: &[f32],
    q: &[f32],
) -> Vec<f32> {
    let taps = kernel * kernel;
    if family == TransformFamily::Zero {
        return vec![];
    }
    if family == TransformFamily::Scalar {
        return (0..taps).map(|k| q[k * taps + k]).collect();
    }
    let a = affine_matrix(family, params);
    let c = (kernel as f32 - 1.0) / 2.0;
    let mut d_a = [0.0f32; 6];
    for kh in 0..kernel {
        for kw in 0..kernel {
            let k = kh * kernel + kw;
            let (u, v) = (kw as f32 - c, kh as f32 - c);
            let (px, py) = (a[0] * u + a[1] * v + a[2], a[3] * u + a[4] * v + a[5]);
            let (mut d_px, mut d_py) = (0.0, 0.0);
            for (k_src, _, dw_px, dw_py) in bilinear_corners(kernel, px, py) {
                d_px += q[k * taps + k_src] * dw_px;
                d_py += q[k * taps + k_src] * dw_py;
            }
            // px = a0·u + a1·v + a2,  py = a3·u + a4·v + a5
            for (j, basis) in [u, v, 1.0].into_iter().enumerate() {
                d_a[j] += d_px * basis;
                d_a[3 + j] += d_py * basis;
            }
        }
    }
    match family {
        TransformFamily::Affine => d_a.to_vec(),
        TransformFamily::Rotation => {
            // A(θ) = [[cos, −sin, 0], [sin, cos, 0]]
            let (sin, cos) = params[0].sin_cos();
            vec![-sin * d_a[0] - cos * d_a[1] + cos * d_a[3] - sin * d_a[4]]
        }
        TransformFamily::Scalar | TransformFamily::Zero => unreachable!(),
    }
}

/// Materialises Weff [N, C, K, K] (overwritten) from B [M, C, K, K] and the transforms
/// [N−M, G, params_per_group].
pub fn effective_filters(
    family: TransformFamily,
    kernel: usize,
    groups: usize,
    assignment: &TemplateAssignment,
    templates: &[f32],
    transforms: &[f32],
    weff: &mut [f32],
) {
    let (taps, n_out) = (kernel * kernel, assignment.outputs());
    let channels = weff.len() / (n_out * taps);
    let (cg, per) = (channels / groups, family.params_per_group(kernel));
    assert_eq!(
        weff.len(),
        n_out * channels * taps,
        "effective_filters: Weff size"
    );
    for n in 0..n_out {
        let m = assignment.template_of[n];
        for i in 0..channels {
            let src = &templates[(m * channels + i) * taps..][..taps];
            let dst = &mut weff[(n * channels + i) * taps..][..taps];
            let Some(r) = assignment.mask_row[n] else {
                dst.copy_from_slice(src);
                continue;
            };
            let params = &transforms[(r * groups + i / cg) * per..][..per];
            if family == TransformFamily::Zero {
                dst.fill(0.0);
            } else if family == TransformFamily::Scalar {
                for k in 0..taps {
                    dst[k] = src[k] * params[k];
                }
            } else {
                let s = sampling_matrix(family, kernel, params); // [K², K²]
                for k in 0..taps {
                    dst[k] = (0..taps).map(|k2| s[k * taps + k2] * src[k2]).sum();
                }
            }
        }
    }
}

/// The backward of [`effective_filters`]: `templates_grad += ∂L/∂B`, `transforms_grad += ∂L/∂θ`
/// from `weff_grad` = ∂L/∂Weff [N, C, K, K]. Either gradient may be skipped (None).
pub fn effective_filters_backward(
    family: TransformFamily,
    kernel: usize,
    groups: usize,
    assignment: &TemplateAssignment,
    templates: &[f32],
    transforms: &[f32],
    weff_grad: &[f32],
    mut templates_grad: Option<&mut [f32]>,
    mut transforms_grad: Option<&mut [f32]>,
) {
    let (taps, n_out) = (kernel * kernel, assignment.outputs());
    let channels = weff_grad.len() / (n_out * taps);
    let (cg, per) = (channels / groups, family.params_per_group(kernel));
    for n in 0..n_out {
        let m = assignment.template_of[n];
        let Some(r) = assignment.mask_row[n] else {
            if let Some(db) = templates_grad.as_deref_mut() {
                for (d, g) in db[m * channels * taps..][..channels * taps]
                    .iter_mut()
                    .zip(&weff_grad[n * channels * taps..][..channels * taps])
                {
                    *d += g;
                }
            }
            continue;
        };
        if family == TransformFamily::Zero {
            continue; // Weff[n] = 0 whatever B is: no gradient flows to the template
        }
        for g in 0..groups {
            let params = &transforms[(r * groups + g) * per..][..per];
            let s = sampling_matrix(family, kernel, params); // [K², K²]
            let mut q = vec![0.0f32; taps * taps]; // Q[k,k'] = Σ_{i∈g} R[n,i,k]·B[m,i,k']
            for i in g * cg..(g + 1) * cg {
                let r_row = &weff_grad[(n * channels + i) * taps..][..taps];
                let b_row = &templates[(m * channels + i) * taps..][..taps];
                for k in 0..taps {
                    for k2 in 0..taps {
                        q[k * taps + k2] += r_row[k] * b_row[k2];
                    }
                }
                if let Some(db) = templates_grad.as_deref_mut() {
                    let db_row = &mut db[(m * channels + i) * taps..][..taps];
                    for k2 in 0..taps {
                        db_row[k2] += (0..taps).map(|k| s[k * taps + k2] * r_row[k]).sum::<f32>();
                    }
                }
            }
            if let Some(dt) = transforms_grad.as_deref_mut() {
                let d_params = sampling_matrix_params_grad(family, kernel, params, &q);
                for (d, v) in dt[(r * groups + g) * per..][..per].iter_mut().zip(d_params) {
                    *d += v;
                }
            }
        }
    }
}
