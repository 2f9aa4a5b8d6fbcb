//! Pooling: 2×2 max pool (VGG) and global average pool (ResNet head).

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// 2×2 max pool, stride 2 (odd trailing rows/columns are dropped).
///
/// ```text
///   x [N, C, H, W] → y [N, C, H/2, W/2]
///   y[n,c,oh,ow] = max_{dh,dw ∈ {0,1}} x[n, c, 2·oh + dh, 2·ow + dw]
///   ∂L/∂x flows only to the position that won the max (the first, on ties).
/// ```
pub fn max_pool2x2(tape: &mut Tape, x: Var) -> Var {
    let [n_batch, channels, h_in, w_in] = tape.value(x).nchw("max_pool2x2");
    let (h_out, w_out) = (h_in / 2, w_in / 2);
    assert!(
        h_out > 0 && w_out > 0,
        "max_pool2x2: input {:?} is smaller than 2×2",
        tape.value(x).shape
    );
    let xv = tape.value(x);
    // y: [N, C, Ho, Wo]; argmax: index into x of each winner, same shape as y
    let mut y = Tensor::zeros(&[n_batch, channels, h_out, w_out]);
    let mut argmax = vec![0usize; y.len()];
    for plane in 0..n_batch * channels {
        for oh in 0..h_out {
            for ow in 0..w_out {
                let mut best = plane * h_in * w_in + 2 * oh * w_in + 2 * ow;
                for (dh, dw) in [(0, 1), (1, 0), (1, 1)] {
                    let i = plane * h_in * w_in + (2 * oh + dh) * w_in + 2 * ow + dw;
                    if xv.data[i] > xv.data[best] {
                        best = i;
                    }
                }
                let o = (plane * h_out + oh) * w_out + ow;
                y.data[o] = xv.data[best];
                argmax[o] = best;
            }
        }
    }
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(grad_x) = ctx.grad(x) {
            for (o, &i) in argmax.iter().enumerate() {
                grad_x.data[i] += grad_y.data[o];
            }
        }
    })
}

/// Global average pool: x [N, C, H, W] → y [N, C],  `y[n,c]` = (1/HW) Σ_{h,w} `x[n,c,h,w]`;
/// `∂L/∂x[n,c,h,w]` = `∂L/∂y[n,c]` / HW.
pub fn global_avg_pool(tape: &mut Tape, x: Var) -> Var {
    let [n_batch, channels, h, w] = tape.value(x).nchw("global_avg_pool");
    let plane = h * w;
    let xv = tape.value(x);
    let y = Tensor::from_vec(
        &[n_batch, channels],
        xv.data
            .chunks(plane)
            .map(|p| p.iter().sum::<f32>() / plane as f32)
            .collect(),
    );
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(grad_x) = ctx.grad(x) {
            for (p, g) in grad_x.data.chunks_mut(plane).zip(&grad_y.data) {
                p.iter_mut().for_each(|v| *v += g / plane as f32);
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
    fn gradcheck_pools_odd_sizes() {
        let mut rng = StdRng::seed_from_u64(5);
        // Distinct values spaced > 2·eps apart so no finite-difference step changes a winner.
        let mut values: Vec<f32> = (0..2 * 3 * 5 * 7).map(|i| i as f32 * 0.05).collect();
        rand::seq::SliceRandom::shuffle(&mut values[..], &mut rng);
        let x = Tensor::from_vec(&[2, 3, 5, 7], values);
        let opts = GradcheckOptions::default();
        check_gradients(|t, v| max_pool2x2(t, v[0]), &[x.clone()], &opts).unwrap();
        check_gradients(|t, v| global_avg_pool(t, v[0]), &[x], &opts).unwrap();
    }
}
