//! Batch normalisation over the N, H, W axes of an NCHW tensor.
//!
//! Training (batch statistics; M = N·H·W values per channel c):
//!   μ[c] = (1/M) Σ x,   σ²[c] = (1/M) Σ (x − μ)²,   x̂ = (x − μ)/√(σ² + ε)
//!   y = γ[c]·x̂ + β[c]
//!   ∂L/∂β = Σ R,   ∂L/∂γ = Σ R·x̂
//!   ∂L/∂x = γ/(M·√(σ²+ε)) · (M·R − Σ R − x̂·Σ R·x̂)      (sums over the channel's M values)
//!
//! Evaluation (running statistics μ_r, σ²_r are constants):
//!   y = γ·(x − μ_r)/√(σ²_r + ε) + β,   ∂L/∂x = R·γ/√(σ²_r + ε)

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// Which statistics normalise the input.
#[derive(Clone, Copy, Debug)]
pub enum Statistics<'r> {
    /// Mean and variance of this batch (training).
    Batch,
    /// Fixed running mean and variance (evaluation), each [C].
    Running { mean: &'r [f32], var: &'r [f32] },
}

/// Per-channel mean and biased variance measured on the batch, and how many values each covers.
#[derive(Clone, Debug)]
pub struct MeasuredStatistics {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub count: usize,
}

/// y = γ·x̂ + β.  x [N,C,H,W], γ [C], β [C] → y [N,C,H,W], plus the batch
/// statistics when `statistics` is `Batch`.
pub fn batch_norm2d(
    tape: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    eps: f32,
    statistics: Statistics,
) -> (Var, Option<MeasuredStatistics>) {
    let [n_batch, channels, h, w] = tape.value(x).nchw("batch_norm2d");
    for (name, v) in [("gamma", gamma), ("beta", beta)] {
        let s = &tape.value(v).shape;
        assert_eq!(
            s,
            &[channels],
            "batch_norm2d: {name} shape {s:?} does not match input {:?}",
            tape.value(x).shape
        );
    }
    let plane = h * w;
    let count = n_batch * plane;
    let xv = tape.value(x);
    // The value at (n, c, i) of a [N, C, plane] buffer.
    let index = move |n: usize, c: usize, i: usize| (n * channels + c) * plane + i;

    // mean, inv_std: [C]
    let (mean, var, measured) = match statistics {
        Statistics::Batch => {
            let mut mean = vec![0.0f32; channels];
            let mut var = vec![0.0f32; channels];
            for c in 0..channels {
                let mut sum = 0.0f64;
                for n in 0..n_batch {
                    sum += xv.data[index(n, c, 0)..index(n, c, plane)]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>();
                }
                let m = sum / count as f64;
                let mut sq = 0.0f64;
                for n in 0..n_batch {
                    sq += xv.data[index(n, c, 0)..index(n, c, plane)]
                        .iter()
                        .map(|&v| (v as f64 - m) * (v as f64 - m))
                        .sum::<f64>();
                }
                mean[c] = m as f32;
                var[c] = (sq / count as f64) as f32;
            }
            let measured = MeasuredStatistics {
                mean: mean.clone(),
                var: var.clone(),
                count,
            };
            (mean, var, Some(measured))
        }
        Statistics::Running { mean, var } => {
            assert!(
                mean.len() == channels && var.len() == channels,
                "batch_norm2d: running statistics of {} channels for input {:?}",
                mean.len(),
                xv.shape
            );
            (mean.to_vec(), var.to_vec(), None)
        }
    };
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();

    // x_hat, y: [N, C, H, W]
    let (gv, bv) = (tape.value(gamma), tape.value(beta));
    let mut x_hat = Tensor::zeros(&xv.shape);
    let mut y = Tensor::zeros(&xv.shape);
    for n in 0..n_batch {
        for c in 0..channels {
            for i in index(n, c, 0)..index(n, c, plane) {
                x_hat.data[i] = (xv.data[i] - mean[c]) * inv_std[c];
                y.data[i] = gv.data[c] * x_hat.data[i] + bv.data[c];
            }
        }
    }
    let uses_batch_statistics = measured.is_some();
    let out = tape.push(y, &[x, gamma, beta], move |grad_y, ctx| {
        let gv = ctx.value(gamma);
        let r = &grad_y.data;
        // Σ R and Σ R·x̂ per channel: [C]
        let mut sum_r = vec![0.0f32; channels];
        let mut sum_r_xhat = vec![0.0f32; channels];
        for n in 0..n_batch {
            for c in 0..channels {
                for i in index(n, c, 0)..index(n, c, plane) {
                    sum_r[c] += r[i];
                    sum_r_xhat[c] += r[i] * x_hat.data[i];
                }
            }
        }
        if let Some(gb) = ctx.grad(beta) {
            gb.add_assign(&Tensor::from_vec(&[channels], sum_r.clone()));
        }
        if let Some(gg) = ctx.grad(gamma) {
            gg.add_assign(&Tensor::from_vec(&[channels], sum_r_xhat.clone()));
        }
        if let Some(gx) = ctx.grad(x) {
            let m = count as f32;
            for n in 0..n_batch {
                for c in 0..channels {
                    let scale = gv.data[c] * inv_std[c];
                    for i in index(n, c, 0)..index(n, c, plane) {
                        gx.data[i] += if uses_batch_statistics {
                            scale / m * (m * r[i] - sum_r[c] - x_hat.data[i] * sum_r_xhat[c])
                        } else {
                            scale * r[i]
                        };
                    }
                }
            }
        }
    });
    (out, measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_batch_and_running_statistics() {
        let mut rng = StdRng::seed_from_u64(8);
        let inputs = [
            Tensor::normal(&[3, 2, 3, 5], 2.0, &mut rng),
            Tensor::uniform(&[2], 0.5, 1.5, &mut rng),
            Tensor::normal(&[2], 1.0, &mut rng),
        ];
        let opts = GradcheckOptions::default();
        check_gradients(
            |t, v| batch_norm2d(t, v[0], v[1], v[2], 1e-5, Statistics::Batch).0,
            &inputs,
            &opts,
        )
        .unwrap();
        let (mean, var) = ([0.3f32, -0.2], [1.5f32, 0.7]);
        let running = Statistics::Running {
            mean: &mean,
            var: &var,
        };
        check_gradients(
            |t, v| batch_norm2d(t, v[0], v[1], v[2], 1e-5, running).0,
            &inputs,
            &opts,
        )
        .unwrap();
    }

    #[test]
    fn normalised_output_has_zero_mean_unit_variance() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Train);
        let mut rng = StdRng::seed_from_u64(9);
        let x = tape.input(Tensor::normal(&[4, 1, 3, 3], 3.0, &mut rng));
        let g = tape.input(Tensor::full(&[1], 1.0));
        let b = tape.input(Tensor::zeros(&[1]));
        let (y, _) = batch_norm2d(&mut tape, x, g, b, 0.0, Statistics::Batch);
        let yv = tape.value(y);
        let mean = yv.sum() / 36.0;
        let var = yv.data.iter().map(|v| v * v).sum::<f32>() / 36.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
    }
}
