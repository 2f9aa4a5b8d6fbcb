//! The fixed first layer of airbench94: a 2×2 convolution whose filters whiten the 2×2 patches
//! of the training images (Jordan 2024, following Coates & Ng 2011).
//!
//! ```text
//!   p        every 2×2 patch of every image, flattened to c·4 + dh·2 + dw   (12 values for RGB)
//!   C        = (1/P) Σ_p p·pᵀ                       (the patches' second moment, not centred)
//!   C        = Σ_i λ_i · v_i·v_iᵀ,  λ_1 ≥ λ_2 ≥ …    (eigendecomposition, float64, Jacobi)
//!   filter_i = v_i / √(λ_i + ε)   for i < 12,  then the 12 negated:  24 filters [24, C, 2, 2]
//! ```
//!
//! So filter_i · p has second moment λ_i / (λ_i + ε) ≈ 1: the first layer sees decorrelated
//! inputs of unit scale, and the negated copies let the GELU after it pass both signs.

use crate::tensor::Tensor;

/// Eigenvalues (descending) and unit eigenvectors (`vectors[i]` belongs to `values[i]`) of a
/// symmetric n×n matrix (row-major), by cyclic Jacobi rotations in float64.
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(
        matrix.len(),
        n * n,
        "symmetric_eigen: {} values for {n}×{n}",
        matrix.len()
    );
    let mut a = matrix.to_vec();
    let mut v = vec![0.0f64; n * n]; // columns: eigenvectors
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                // The rotation (c, s) that zeroes a[p][q]: tan 2θ = 2·a_pq / (a_qq − a_pp).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    // A ← Jᵀ A J, columns p and q, then rows p and q.
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| (0..n).map(|k| v[k * n + i]).collect())
        .collect();
    (values, vectors)
}

/// The patches' second moment C [c·k², c·k²] of every k×k window of `images` [N, c, H, W].
pub fn patch_second_moment(images: &Tensor, k: usize) -> Vec<f64> {
    let [n, c, h, w] = images.nchw("patch_second_moment");
    let d = c * k * k;
    let mut sum = vec![0.0f64; d * d];
    let mut patch = vec![0.0f64; d];
    let mut count = 0usize;
    for image in images.data.chunks(c * h * w).take(n) {
        for y in 0..=h - k {
            for x in 0..=w - k {
                for ch in 0..c {
                    for dy in 0..k {
                        for dx in 0..k {
                            patch[(ch * k + dy) * k + dx] = image[(ch * h + y + dy) * w + x + dx] as f64;
                        }
                    }
                }
                for i in 0..d {
                    for j in i..d {
                        sum[i * d + j] += patch[i] * patch[j];
                    }
                }
                count += 1;
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            sum[i * d + j] = sum[j * d + i];
        }
    }
    sum.iter_mut().for_each(|s| *s /= count.max(1) as f64);
    sum
}

/// The whitening filters [2·c·k², c, k, k] of `images` [N, c, H, W] (see the module comment).
pub fn whitening_filters(images: &Tensor, k: usize, eps: f64) -> Tensor {
    let c = images.dim(1);
    let d = c * k * k;
    let (values, vectors) = symmetric_eigen(&patch_second_moment(images, k), d);
    let mut data = Vec::with_capacity(2 * d * d);
    for sign in [1.0f64, -1.0] {
        for (value, vector) in values.iter().zip(&vectors) {
            let scale = sign / (value.max(0.0) + eps).sqrt();
            data.extend(vector.iter().map(|x| (x * scale) as f32));
        }
    }
    Tensor::from_vec(&[2 * d, c, k, k], data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn jacobi_finds_the_eigenpairs_of_a_symmetric_matrix() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 12;
        // A = Bᵀ B + a ridge: symmetric positive definite with spread eigenvalues.
        let b: Vec<f64> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>() + if i == j { 0.1 } else { 0.0 };
            }
        }
        let (values, vectors) = symmetric_eigen(&a, n);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for (value, vector) in values.iter().zip(&vectors) {
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vector[j]).sum();
                assert!((av - value * vector[i]).abs() < 1e-10, "A·v ≠ λ·v");
            }
        }
        for (i, u) in vectors.iter().enumerate() {
            for (j, v) in vectors.iter().enumerate() {
                let dot: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
                assert!(
                    (dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10,
                    "not orthonormal"
                );
            }
        }
        // The trace is the sum of the eigenvalues.
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        assert!((trace - values.iter().sum::<f64>()).abs() < 1e-10);
    }

    #[test]
    fn the_filters_whiten_the_patches_of_a_small_set() {
        // Correlated channels (G and B follow R), so the patches are far from white.
        let mut rng = StdRng::seed_from_u64(2);
        let (n, size) = (6, 9);
        let mut data = Vec::new();
        for _ in 0..n {
            let red: Vec<f32> = (0..size * size).map(|_| rng.gen_range(-1.0..1.0)).collect();
            data.extend(&red);
            data.extend(red.iter().map(|r| 0.8 * r + rng.gen_range(-0.2..0.2)));
            data.extend(red.iter().map(|r| -0.5 * r + rng.gen_range(-0.3..0.3)));
        }
        let images = Tensor::from_vec(&[n, 3, size, size], data);
        let eps = 5e-4;
        let filters = whitening_filters(&images, 2, eps);
        assert_eq!(filters.shape, vec![24, 3, 2, 2]);
        // W·C·Wᵀ = diag(λ/(λ + ε)) for the first 12 filters; the last 12 are their negatives.
        let moment = patch_second_moment(&images, 2);
        let (values, _) = symmetric_eigen(&moment, 12);
        let row = |i: usize| -> Vec<f64> { filters.data[i * 12..][..12].iter().map(|&x| x as f64).collect() };
        for i in 0..12 {
            for j in 0..12 {
                let (wi, wj) = (row(i), row(j));
                let cw: f64 = (0..12)
                    .map(|a| wi[a] * (0..12).map(|b| moment[a * 12 + b] * wj[b]).sum::<f64>())
                    .sum();
                let want = if i == j {
                    values[i] / (values[i] + eps)
                } else {
                    0.0
                };
                assert!(
                    (cw - want).abs() < 1e-4,
                    "whitened moment ({i},{j}) = {cw}, want {want}"
                );
            }
            assert!(row(i).iter().zip(row(i + 12)).all(|(a, b)| a == &-b));
        }
    }
}
