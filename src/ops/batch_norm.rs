//! Batch normalisation over the N, H, W axes of an NCHW tensor.
//!
//! Training (batch statistics; M = N·H·W values per channel c):
//! ```text
//!   μ[c] = (1/M) Σ x,   σ²[c] = (1/M) Σ (x − μ)²,   x̂ = (x − μ)/√(σ² + ε)
//!   y = γ[c]·x̂ + β[c]
//!   ∂L/∂β = Σ R,   ∂L/∂γ = Σ R·x̂
//!   ∂L/∂x = γ/(M·√(σ²+ε)) · (M·R − Σ R − x̂·Σ R·x̂)      (sums over the channel's M values)
//! ```
//!
//! Evaluation (running statistics μ_r, σ²_r are constants):
//!   y = γ·(x − μ_r)/√(σ²_r + ε) + β,   ∂L/∂x = R·γ/√(σ²_r + ε)
//!
//! Epilogue (optional, in the same pass, so the intermediate tensors never exist): a residual
//! s added and a ReLU applied, out = max(y + s, 0), the end of a ResNet block. Backward: the
//! ReLU's mask is read from `out` (out > 0 exactly where y + s > 0), R′ = R·`[out > 0]`,
//! ∂L/∂s = R′, and R′ goes through the formulas above. The same floats as
//! batch_norm2d → add → relu (`fused_epilogue_matches_the_three_ops` checks it bit for bit).

use crate::autograd::{Tape, Var};
use crate::tensor::{Tensor, PARALLEL_CHUNK};
use rayon::prelude::*;

/// What the normalisation's pass does before it writes its output: out = max(y + s, 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue {
    /// s: a tensor of x's shape added to y (a ResNet block's shortcut).
    pub residual: Option<Var>,
    /// max(·, 0) last.
    pub relu: bool,
}

impl Epilogue {
    /// Batch norm, then ReLU.
    pub const RELU: Epilogue = Epilogue {
        residual: None,
        relu: true,
    };

    /// Batch norm, then + `residual`, then ReLU.
    pub fn residual_relu(residual: Var) -> Epilogue {
        Epilogue {
            residual: Some(residual),
            relu: true,
        }
    }
}

/// Which statistics normalise the input.
#[derive(Clone, Copy, Debug)]
pub enum Statistics<'r> {
    /// Mean and variance of this batch (training).
    Batch,
    /// Fixed running mean and variance (evaluation), each `[C]`.
    Running { mean: &'r [f32], var: &'r [f32] },
}

/// Per-channel mean and biased variance measured on the batch, and how many values each covers.
#[derive(Clone, Debug)]
pub struct MeasuredStatistics {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub count: usize,
}

/// Σ v and Σ v² of one plane, in f32 over 8 lanes (vectorised, fixed order).
fn plane_sum_and_squares(values: &[f32], shift: f32) -> (f32, f32) {
    let mut sum = [0.0f32; 8];
    let mut squares = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..8 {
            let v = chunk[lane] - shift;
            sum[lane] += v;
            squares[lane] += v * v;
        }
    }
    let (mut s, mut q) = (sum.iter().sum::<f32>(), squares.iter().sum::<f32>());
    for &v in tail {
        s += v - shift;
        q += (v - shift) * (v - shift);
    }
    (s, q)
}

/// Σ a and Σ a·(b − shift) of one plane, in f32 over 8 lanes.
fn plane_sum_and_dot(a: &[f32], b: &[f32], shift: f32) -> (f32, f32) {
    let mut sum = [0.0f32; 8];
    let mut dot = [0.0f32; 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            sum[lane] += ca[lane];
            dot[lane] += ca[lane] * (cb[lane] - shift);
        }
    }
    let (mut s, mut d) = (sum.iter().sum::<f32>(), dot.iter().sum::<f32>());
    for (&va, &vb) in tail_a.iter().zip(tail_b) {
        s += va;
        d += va * (vb - shift);
    }
    (s, d)
}

/// Per-plane reductions of a [N, C, plane] buffer, planes in parallel, then
/// summed over n in f64 in a fixed order (so the result does not depend on
/// the thread count): returns (Σ first, Σ second) per channel, each [C].
fn channel_sums(
    planes: usize,
    channels: usize,
    reduce_plane: impl Fn(usize) -> (f32, f32) + Sync + Send,
) -> (Vec<f64>, Vec<f64>) {
    // per_plane: [N·C] pairs
    let per_plane: Vec<(f32, f32)> = (0..planes).into_par_iter().map(reduce_plane).collect();
    let mut first = vec![0.0f64; channels];
    let mut second = vec![0.0f64; channels];
    for (index, (a, b)) in per_plane.into_iter().enumerate() {
        first[index % channels] += a as f64;
        second[index % channels] += b as f64;
    }
    (first, second)
}

/// y = γ·x̂ + β.  x `[N,C,H,W]`, γ `[C]`, β `[C]` → y `[N,C,H,W]`, plus the batch
/// statistics when `statistics` is `Batch`.
///
/// Fast version of [`batch_norm2d_naive`]: the statistics in one pass per
/// plane (sums shifted by the channel's first value, so Σ(x−s)² stays
/// accurate), y = a·x + b in one pass, and x̂ recomputed from x in backward
/// instead of being kept (one `[N,C,H,W]` buffer less per layer).
pub fn batch_norm2d(
    tape: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    eps: f32,
    statistics: Statistics,
) -> (Var, Option<MeasuredStatistics>) {
    batch_norm2d_with(tape, x, gamma, beta, eps, statistics, Epilogue::default())
}

/// [`batch_norm2d`] followed by `epilogue` in the same pass: out = max(y + s, 0) with the
/// residual and the ReLU that it names (the module doc has the backward).
pub fn batch_norm2d_with(
    tape: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    eps: f32,
    statistics: Statistics,
    epilogue: Epilogue,
) -> (Var, Option<MeasuredStatistics>) {
    let [n_batch, channels, h, w] = tape.value(x).nchw("batch_norm2d");
    if let Some(residual) = epilogue.residual {
        let (rs, xs) = (&tape.value(residual).shape, &tape.value(x).shape);
        assert_eq!(
            rs, xs,
            "batch_norm2d: residual shape {rs:?} does not match input {xs:?}"
        );
    }
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

    // mean, var: [C]
    let (mean, var, measured) = match statistics {
        Statistics::Batch => {
            // shift: [C], the channel's first value
            let shift: Vec<f32> = (0..channels).map(|c| xv.data[c * plane]).collect();
            let (sum, squares) = channel_sums(n_batch * channels, channels, |p| {
                plane_sum_and_squares(&xv.data[p * plane..(p + 1) * plane], shift[p % channels])
            });
            let m = count as f64;
            let mut mean = vec![0.0f32; channels];
            let mut var = vec![0.0f32; channels];
            for c in 0..channels {
                let shifted_mean = sum[c] / m;
                mean[c] = (shift[c] as f64 + shifted_mean) as f32;
                var[c] = (squares[c] / m - shifted_mean * shifted_mean).max(0.0) as f32;
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

    // y = a[c]·x + b[c] with a = γ/√(σ²+ε), b = β − μ·a.  y: [N, C, H, W]
    let (gv, bv) = (tape.value(gamma), tape.value(beta));
    let a: Vec<f32> = (0..channels).map(|c| gv.data[c] * inv_std[c]).collect();
    let b: Vec<f32> = (0..channels).map(|c| bv.data[c] - mean[c] * a[c]).collect();
    // out = max(y + s, 0) as the epilogue asks, each step rounded as the separate ops round it
    let residual = epilogue.residual.map(|s| &tape.value(s).data);
    let relu = epilogue.relu;
    let y = Tensor::from_planes(&xv.shape, plane, |p| {
        let (a, b) = (a[p % channels], b[p % channels]);
        let x = &xv.data[p * plane..][..plane];
        let s = residual.map(|s| &s[p * plane..][..plane]);
        (0..plane).map(move |i| {
            let mut v = a * x[i] + b;
            if let Some(s) = s {
                v += s[i];
            }
            if relu && v < 0.0 {
                v = 0.0;
            }
            v
        })
    });
    let uses_batch_statistics = measured.is_some();
    let mut inputs = vec![x, gamma, beta];
    inputs.extend(epilogue.residual);
    let out = tape.push(y, &inputs, move |grad_y, ctx| {
        let (xv, gv) = (ctx.value(x), ctx.value(gamma));
        // R′ = R·[out > 0] through the ReLU (the same floats as the ReLU op's backward)
        let masked = relu.then(|| Tensor {
            shape: grad_y.shape.clone(),
            data: (grad_y.data.par_iter().with_min_len(PARALLEL_CHUNK))
                .zip(&ctx.output().data)
                .map(|(&gy, &v)| gy * if v > 0.0 { 1.0 } else { 0.0 })
                .collect(),
        });
        let r = &masked.as_ref().unwrap_or(grad_y).data;
        // Σ R and Σ R·(x − μ) per channel, then Σ R·x̂ = inv_std·Σ R·(x − μ): [C]
        let (sum_r, sum_r_centred) = channel_sums(n_batch * channels, channels, |p| {
            let range = p * plane..(p + 1) * plane;
            plane_sum_and_dot(&r[range.clone()], &xv.data[range], mean[p % channels])
        });
        let sum_r_xhat: Vec<f64> = (0..channels)
            .map(|c| inv_std[c] as f64 * sum_r_centred[c])
            .collect();
        if let Some(gb) = ctx.grad(beta) {
            for (g, s) in gb.data.iter_mut().zip(&sum_r) {
                *g += *s as f32;
            }
        }
        if let Some(gg) = ctx.grad(gamma) {
            for (g, s) in gg.data.iter_mut().zip(&sum_r_xhat) {
                *g += *s as f32;
            }
        }
        if ctx.needs_grad(x) {
            // ∂L/∂x = k_r·R + k_x·x + k_1 per channel, from the formula in the module doc:
            //   batch:   k_r = γ·inv_std, k_x = −γ·inv_std²·Σ R·x̂ / M, k_1 = −γ·inv_std·Σ R / M − k_x·μ
            //   running: k_r = γ·inv_std, k_x = k_1 = 0
            let m = count as f64;
            let coefficients: Vec<[f32; 3]> = (0..channels)
                .map(|c| {
                    let scale = gv.data[c] as f64 * inv_std[c] as f64;
                    if uses_batch_statistics {
                        let k_x = -scale * inv_std[c] as f64 * sum_r_xhat[c] / m;
                        let k_1 = -scale * sum_r[c] / m - k_x * mean[c] as f64;
                        [scale as f32, k_x as f32, k_1 as f32]
                    } else {
                        [scale as f32, 0.0, 0.0]
                    }
                })
                .collect();
            // written plane by plane as a fresh tensor (no zero-filled accumulator)
            let grad_x = Tensor::from_planes(&xv.shape, plane, |p| {
                let [k_r, k_x, k_1] = coefficients[p % channels];
                let range = p * plane..(p + 1) * plane;
                (r[range.clone()].iter())
                    .zip(&xv.data[range])
                    .map(move |(&ri, &xi)| k_r * ri + k_x * xi + k_1)
            });
            ctx.accumulate(x, grad_x);
        }
        // ∂L/∂s = R′, handed over whole where it is a fresh tensor
        if let Some(residual) = epilogue.residual {
            match masked {
                Some(masked) => ctx.accumulate(residual, masked),
                None => ctx.accumulate_copy(residual, grad_y),
            }
        }
    });
    (out, measured)
}

/// The naive version of [`batch_norm2d`], kept as its test oracle: the
/// module doc's formulas loop by loop (two f64 passes for the statistics, x̂
/// kept for backward).
pub fn batch_norm2d_naive(
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

    /// The running statistics `mean`, `var` if `running`, else the batch's.
    fn statistics_of<'a>(running: bool, mean: &'a [f32], var: &'a [f32]) -> Statistics<'a> {
        if running {
            Statistics::Running { mean, var }
        } else {
            Statistics::Batch
        }
    }

    type BatchNormOp = fn(&mut Tape, Var, Var, Var, f32, Statistics) -> (Var, Option<MeasuredStatistics>);

    /// The fast op against the naive oracle: values, statistics and every
    /// gradient, with a large channel offset (tests the shifted sums), odd plane
    /// sizes (the 8-lane tails) and both statistics.
    #[test]
    fn fast_matches_naive() {
        let mut rng = StdRng::seed_from_u64(10);
        for shape in [[3usize, 4, 5, 7], [2, 3, 8, 8], [1, 2, 1, 1]] {
            let mut x = Tensor::normal(&shape, 2.0, &mut rng);
            for (i, v) in x.data.iter_mut().enumerate() {
                *v += 50.0 * ((i / (shape[2] * shape[3])) % shape[1]) as f32;
            }
            let c = shape[1];
            let gamma = Tensor::uniform(&[c], 0.5, 1.5, &mut rng);
            let beta = Tensor::normal(&[c], 1.0, &mut rng);
            let grad_y = Tensor::normal(&shape, 1.0, &mut rng);
            let (mean, var): (Vec<f32>, Vec<f32>) = (0..c).map(|k| (k as f32 * 0.1, 1.0 + k as f32)).unzip();
            for running in [false, true] {
                let statistics = statistics_of(running, &mean, &var);
                let run = |op: BatchNormOp| {
                    let store = crate::autograd::ParamStore::default();
                    let mut tape = Tape::new(&store, crate::autograd::Mode::Train);
                    let vars = [
                        tape.leaf(x.clone()),
                        tape.leaf(gamma.clone()),
                        tape.leaf(beta.clone()),
                    ];
                    let (y, measured) = op(&mut tape, vars[0], vars[1], vars[2], 1e-5, statistics);
                    tape.backward_with(y, grad_y.clone());
                    let mut outputs = vec![tape.value(y).clone()];
                    outputs.extend(vars.iter().map(|&v| tape.grad(v).unwrap().clone()));
                    (outputs, measured.map(|m| (m.mean, m.var)))
                };
                let (fast, fast_stats) = run(batch_norm2d);
                let (naive, naive_stats) = run(batch_norm2d_naive);
                for (name, (f, n)) in ["y", "dx", "dgamma", "dbeta"].iter().zip(fast.iter().zip(&naive)) {
                    let difference = crate::tensor::max_scaled_difference(&f.data, &n.data, 1e-4, 1e-4);
                    assert!(
                        difference <= 1.0,
                        "{shape:?} running={running} {name}: {difference}"
                    );
                }
                if let (Some((fm, fv)), Some((nm, nv))) = (fast_stats, naive_stats) {
                    assert!(crate::tensor::max_scaled_difference(&fm, &nm, 1e-5, 1e-5) <= 1.0);
                    assert!(crate::tensor::max_scaled_difference(&fv, &nv, 1e-4, 1e-4) <= 1.0);
                }
            }
        }
    }

    /// The fused epilogue against batch_norm2d → add → relu: output and every gradient
    /// (x, γ, β, the residual) bit for bit, with and without a residual, both statistics.
    /// The shift makes about half of the values negative, so the ReLU's mask matters.
    #[test]
    fn fused_epilogue_matches_the_three_ops() {
        let mut rng = StdRng::seed_from_u64(11);
        let shape = [3usize, 4, 5, 7];
        let x = Tensor::normal(&shape, 2.0, &mut rng);
        let residual = Tensor::normal(&shape, 1.0, &mut rng);
        let gamma = Tensor::uniform(&[4], 0.5, 1.5, &mut rng);
        let beta = Tensor::normal(&[4], 0.5, &mut rng);
        let grad_y = Tensor::normal(&shape, 1.0, &mut rng);
        let (mean, var) = ([0.3f32, -0.2, 0.1, 0.0], [1.5f32, 0.7, 2.0, 1.0]);
        for running in [false, true] {
            let statistics = statistics_of(running, &mean, &var);
            for with_residual in [false, true] {
                let run = |fused: bool| {
                    let store = crate::autograd::ParamStore::default();
                    let mut tape = Tape::new(&store, crate::autograd::Mode::Train);
                    let vars =
                        [x.clone(), gamma.clone(), beta.clone(), residual.clone()].map(|t| tape.leaf(t));
                    let skip = with_residual.then_some(vars[3]);
                    let y = if fused {
                        let epilogue = Epilogue {
                            residual: skip,
                            relu: true,
                        };
                        batch_norm2d_with(&mut tape, vars[0], vars[1], vars[2], 1e-5, statistics, epilogue).0
                    } else {
                        let y = batch_norm2d(&mut tape, vars[0], vars[1], vars[2], 1e-5, statistics).0;
                        let y = match skip {
                            Some(s) => crate::ops::add(&mut tape, y, s),
                            None => y,
                        };
                        crate::ops::relu(&mut tape, y)
                    };
                    tape.backward_with(y, grad_y.clone());
                    let grads: Vec<Option<Tensor>> = vars.iter().map(|&v| tape.grad(v).cloned()).collect();
                    (tape.value(y).clone(), grads)
                };
                let (fused, separate) = (run(true), run(false));
                assert!(fused.0.data.contains(&0.0) && fused.0.data.iter().any(|&v| v > 0.0));
                assert_eq!(fused.1[3].is_some(), with_residual);
                assert_eq!(fused, separate, "running={running} residual={with_residual}");
            }
        }
    }

    /// The fused op's own gradcheck: out = relu(bn(x) + s), with s chosen so that every
    /// bn(x) + s lies at least 0.3 from the ReLU's kink (finite differences of 1e-3 in x move
    /// bn(x) far less).
    #[test]
    fn gradcheck_fused_epilogue() {
        let mut rng = StdRng::seed_from_u64(12);
        let shape = [3usize, 2, 3, 5];
        let x = Tensor::normal(&shape, 2.0, &mut rng);
        let gamma = Tensor::uniform(&[2], 0.5, 1.5, &mut rng);
        let beta = Tensor::normal(&[2], 1.0, &mut rng);
        let normalised = {
            let store = crate::autograd::ParamStore::default();
            let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
            let vars = [x.clone(), gamma.clone(), beta.clone()].map(|t| tape.input(t));
            let y = batch_norm2d(&mut tape, vars[0], vars[1], vars[2], 1e-5, Statistics::Batch).0;
            tape.value(y).clone()
        };
        let target = crate::gradcheck::away_from_zero(Tensor::normal(&shape, 1.0, &mut rng), 0.3);
        let residual = Tensor::from_vec(
            &shape,
            target
                .data
                .iter()
                .zip(&normalised.data)
                .map(|(t, n)| t - n)
                .collect(),
        );
        check_gradients(
            |t, v| {
                let epilogue = Epilogue::residual_relu(v[3]);
                batch_norm2d_with(t, v[0], v[1], v[2], 1e-5, Statistics::Batch, epilogue).0
            },
            &[x, gamma, beta, residual],
            &GradcheckOptions::default(),
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
