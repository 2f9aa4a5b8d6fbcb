//! Pooling: k×k max pool (VGG, airbench) and global average pool (ResNet head).

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// k×k max pool with stride k (trailing rows and columns that do not fill a window are dropped,
/// as PyTorch's `MaxPool2d(k)`): 2 in VGG and in airbench's conv groups, 3 in airbench's head.
///
/// ```text
///   x [N, C, H, W] → y [N, C, ⌊H/k⌋, ⌊W/k⌋]
///   y[n,c,oh,ow] = max_{dh,dw < k} x[n, c, k·oh + dh, k·ow + dw]
///   ∂L/∂x flows only to the position that won the max (the first, on ties).
/// ```
pub fn max_pool(tape: &mut Tape, x: Var, k: usize) -> Var {
    let [n_batch, channels, h_in, w_in] = tape.value(x).nchw("max_pool");
    let (h_out, w_out) = (h_in / k.max(1), w_in / k.max(1));
    assert!(
        k >= 1 && h_out > 0 && w_out > 0,
        "max_pool: input {:?} is smaller than the {k}×{k} window",
        tape.value(x).shape
    );
    let xv = tape.value(x);
    // y: [N, C, Ho, Wo]; winners: the index within its input plane of each output's winner, same
    // shape as y. Both passes run planes in parallel (a plane's winners are in its plane).
    let (plane_in, plane_out) = (h_in * w_in, h_out * w_out);
    assert!(
        plane_in <= u32::MAX as usize,
        "max_pool: a {h_in}×{w_in} plane is too large"
    );
    let mut y = Tensor::zeros(&[n_batch, channels, h_out, w_out]);
    let mut winners = vec![0u32; y.len()];
    y.data
        .par_chunks_mut(plane_out)
        .zip(winners.par_chunks_mut(plane_out))
        .zip(xv.data.par_chunks(plane_in))
        .for_each(|((y_plane, winners), x_plane)| {
            for oh in 0..h_out {
                for ow in 0..w_out {
                    let mut best = k * oh * w_in + k * ow;
                    for dh in 0..k {
                        for dw in 0..k {
                            let i = (k * oh + dh) * w_in + k * ow + dw;
                            if x_plane[i] > x_plane[best] {
                                best = i;
                            }
                        }
                    }
                    y_plane[oh * w_out + ow] = x_plane[best];
                    winners[oh * w_out + ow] = best as u32;
                }
            }
        });
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(grad_x) = ctx.grad(x) {
            grad_x
                .data
                .par_chunks_mut(plane_in)
                .zip(grad_y.data.par_chunks(plane_out))
                .zip(winners.par_chunks(plane_out))
                .for_each(|((grad_x_plane, grad_y_plane), winners)| {
                    for (&gy, &i) in grad_y_plane.iter().zip(winners) {
                        grad_x_plane[i as usize] += gy;
                    }
                });
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
        for k in [1, 2, 3] {
            check_gradients(|t, v| max_pool(t, v[0], k), &[x.clone()], &opts).unwrap();
        }
        check_gradients(|t, v| global_avg_pool(t, v[0]), &[x], &opts).unwrap();
    }
}
