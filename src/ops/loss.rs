//! Mean softmax cross-entropy, with optional label smoothing.
//!
//! ```text
//!   logits z [N, K], labels t[n] ∈ 0..K, smoothing ε:
//!   p[n,k] = exp(z[n,k]) / Σ_j exp(z[n,j])
//!   q[n,k] = (1 − ε)·[k = t[n]] + ε/K
//!   L = −(1/N) Σ_n Σ_k q[n,k] · log p[n,k]
//!   ∂L/∂z[n,k] = (p[n,k] − q[n,k]) / N
//! ```

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// Softmax of each row of a [N, K] slice, computed stably (max subtracted).
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut p = logits.to_vec();
    for row in p.chunks_mut(classes) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    p
}

/// log softmax of each row of a [N, K] slice, by log-sum-exp (no −∞ for a tiny probability).
pub fn log_softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_mut(classes) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        row.iter_mut().for_each(|v| *v -= lse);
    }
    out
}

/// The loss above, as a `[1]` tensor. Panics if a label is out of range.
pub fn cross_entropy(tape: &mut Tape, logits: Var, labels: &[usize], smoothing: f32) -> Var {
    let zv = tape.value(logits);
    let (n_batch, classes) = match zv.shape[..] {
        [n, k] if n == labels.len() => (n, k),
        _ => panic!(
            "cross_entropy: logits {:?} do not fit {} labels (expects [N, K])",
            zv.shape,
            labels.len()
        ),
    };
    if let Some(bad) = labels.iter().find(|&&t| t >= classes) {
        panic!("cross_entropy: label {bad} is out of range for {classes} classes");
    }
    // p: [N, K]
    let p = softmax_rows(&zv.data, classes);
    let target = |n: usize, k: usize| {
        (1.0 - smoothing) * f32::from(u8::from(k == labels[n])) + smoothing / classes as f32
    };
    let log_p = log_softmax_rows(&zv.data, classes); // [N, K]
    let mut loss = 0.0f64;
    for n in 0..n_batch {
        for k in 0..classes {
            let q = target(n, k);
            if q > 0.0 {
                loss -= (q * log_p[n * classes + k]) as f64;
            }
        }
    }
    let y = Tensor::from_vec(&[1], vec![(loss / n_batch as f64) as f32]);
    let labels = labels.to_vec();
    tape.push(y, &[logits], move |grad_y, ctx| {
        if let Some(gz) = ctx.grad(logits) {
            let scale = grad_y.data[0] / n_batch as f32;
            for n in 0..n_batch {
                for k in 0..classes {
                    let q =
                        (1.0 - smoothing) * f32::from(u8::from(k == labels[n])) + smoothing / classes as f32;
                    gz.data[n * classes + k] += scale * (p[n * classes + k] - q);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_cross_entropy_with_and_without_smoothing() {
        let mut rng = StdRng::seed_from_u64(7);
        let z = Tensor::normal(&[4, 5], 2.0, &mut rng);
        let labels = [0, 4, 2, 2];
        for eps in [0.0, 0.1] {
            check_gradients(
                |t, v| cross_entropy(t, v[0], &labels, eps),
                &[z.clone()],
                &GradcheckOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn uniform_logits_give_log_k() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
        let z = tape.input(Tensor::zeros(&[2, 10]));
        let l = cross_entropy(&mut tape, z, &[3, 7], 0.0);
        assert!((tape.value(l).data[0] - 10f32.ln()).abs() < 1e-6);
    }
}
