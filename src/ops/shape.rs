//! Elementwise add/mul, the option-A ResNet shortcut, and flatten.

use crate::autograd::{Tape, Var};
use crate::tensor::{Tensor, PARALLEL_CHUNK};
use rayon::prelude::*;

fn same_shape(op: &str, tape: &Tape, a: Var, b: Var) {
    let (sa, sb) = (&tape.value(a).shape, &tape.value(b).shape);
    assert_eq!(sa, sb, "{op}: shapes {sa:?} and {sb:?} differ");
}

/// y = a + b (same shapes);  ∂L/∂a = ∂L/∂b = ∂L/∂y.
pub fn add(tape: &mut Tape, a: Var, b: Var) -> Var {
    same_shape("add", tape, a, b);
    let (av, bv) = (tape.value(a), tape.value(b));
    // Chunks in parallel; every element on its own.
    let y = Tensor {
        shape: av.shape.clone(),
        data: (av.data.par_iter().with_min_len(PARALLEL_CHUNK))
            .zip(&bv.data)
            .map(|(x, y)| x + y)
            .collect(),
    };
    tape.push(y, &[a, b], move |grad_y, ctx| {
        for input in [a, b] {
            ctx.accumulate_copy(input, grad_y);
        }
    })
}

/// y = a ⊙ b (same shapes);  ∂L/∂a = ∂L/∂y ⊙ b,  ∂L/∂b = ∂L/∂y ⊙ a.
pub fn mul(tape: &mut Tape, a: Var, b: Var) -> Var {
    same_shape("mul", tape, a, b);
    let (av, bv) = (tape.value(a), tape.value(b));
    let y = Tensor {
        shape: av.shape.clone(),
        data: av.data.iter().zip(&bv.data).map(|(x, y)| x * y).collect(),
    };
    tape.push(y, &[a, b], move |grad_y, ctx| {
        for (input, other) in [(a, b), (b, a)] {
            let other_value = ctx.value(other);
            if let Some(g) = ctx.grad(input) {
                for ((gi, gy), o) in g.data.iter_mut().zip(&grad_y.data).zip(&other_value.data) {
                    *gi += gy * o;
                }
            }
        }
    })
}

/// The option-A shortcut of the CIFAR ResNets (He et al. 2016, §4.2):
/// subsample by `stride` and pad channels with zeros, half before, half after.
///
///   x [N, C, H, W] → y [N, F, Ho, Wo],  Ho = ⌈H/s⌉,  F ≥ C,  front = (F − C)/2
///   y[n, front + c, oh, ow] = x[n, c, oh·s, ow·s],  all other channels 0
///   ∂L/∂x[n, c, oh·s, ow·s] = ∂L/∂y[n, front + c, oh, ow],  other positions 0
pub fn shortcut_option_a(tape: &mut Tape, x: Var, out_channels: usize, stride: usize) -> Var {
    let [n_batch, c_in, h_in, w_in] = tape.value(x).nchw("shortcut_option_a");
    assert!(
        out_channels >= c_in && stride >= 1,
        "shortcut_option_a: cannot map input {:?} to {out_channels} channels with stride {stride}",
        tape.value(x).shape
    );
    let (h_out, w_out) = (h_in.div_ceil(stride), w_in.div_ceil(stride));
    let front = (out_channels - c_in) / 2;
    // y: [N, F, Ho, Wo]
    let mut y = Tensor::zeros(&[n_batch, out_channels, h_out, w_out]);
    let xv = tape.value(x);
    let input_index = move |n: usize, c: usize, oh: usize, ow: usize| {
        ((n * c_in + c) * h_in + oh * stride) * w_in + ow * stride
    };
    let output_index = move |n: usize, c: usize, oh: usize, ow: usize| {
        ((n * out_channels + front + c) * h_out + oh) * w_out + ow
    };
    for n in 0..n_batch {
        for c in 0..c_in {
            for oh in 0..h_out {
                for ow in 0..w_out {
                    y.data[output_index(n, c, oh, ow)] = xv.data[input_index(n, c, oh, ow)];
                }
            }
        }
    }
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(grad_x) = ctx.grad(x) {
            for n in 0..n_batch {
                for c in 0..c_in {
                    for oh in 0..h_out {
                        for ow in 0..w_out {
                            grad_x.data[input_index(n, c, oh, ow)] += grad_y.data[output_index(n, c, oh, ow)];
                        }
                    }
                }
            }
        }
    })
}

/// y = s·x for a constant s (airbench's logit scale);  ∂L/∂x = s·∂L/∂y.
pub fn scale(tape: &mut Tape, x: Var, s: f32) -> Var {
    let xv = tape.value(x);
    let y = Tensor {
        shape: xv.shape.clone(),
        data: xv.data.iter().map(|v| s * v).collect(),
    };
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(g) = ctx.grad(x) {
            g.data
                .iter_mut()
                .zip(&grad_y.data)
                .for_each(|(gi, gy)| *gi += s * gy);
        }
    })
}

/// [N, C, H, W] → [N, C·H·W] (the data does not move).
pub fn flatten(tape: &mut Tape, x: Var) -> Var {
    let xv = tape.value(x);
    let n = xv.dim(0);
    let rest = xv.len() / n.max(1);
    let y = xv.clone().reshape(&[n, rest]);
    tape.push(y, &[x], move |grad_y, ctx| {
        if let Some(g) = ctx.grad(x) {
            for (gi, gy) in g.data.iter_mut().zip(&grad_y.data) {
                *gi += gy;
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
    fn gradcheck_add_mul_flatten() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = Tensor::normal(&[2, 3, 2, 3], 1.0, &mut rng);
        let b = Tensor::normal(&[2, 3, 2, 3], 1.0, &mut rng);
        let opts = GradcheckOptions::default();
        check_gradients(|t, v| add(t, v[0], v[1]), &[a.clone(), b.clone()], &opts).unwrap();
        check_gradients(|t, v| mul(t, v[0], v[1]), &[a.clone(), b], &opts).unwrap();
        check_gradients(|t, v| flatten(t, v[0]), &[a], &opts).unwrap();
    }

    #[test]
    fn gradcheck_shortcut_odd_sizes_and_padding() {
        let mut rng = StdRng::seed_from_u64(4);
        let x = Tensor::normal(&[2, 3, 5, 4], 1.0, &mut rng);
        let opts = GradcheckOptions::default();
        check_gradients(|t, v| shortcut_option_a(t, v[0], 8, 2), &[x.clone()], &opts).unwrap();
        check_gradients(|t, v| shortcut_option_a(t, v[0], 3, 1), &[x], &opts).unwrap();
    }

    #[test]
    fn shortcut_places_channels_in_the_middle() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
        let x = tape.input(Tensor::from_vec(
            &[1, 2, 2, 2],
            (1..=8).map(|v| v as f32).collect(),
        ));
        let y = shortcut_option_a(&mut tape, x, 4, 2);
        assert_eq!(tape.value(y).data, vec![0.0, 1.0, 5.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "add: shapes [2, 3] and [3, 2] differ")]
    fn add_names_both_shapes() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
        let a = tape.input(Tensor::zeros(&[2, 3]));
        let b = tape.input(Tensor::zeros(&[3, 2]));
        add(&mut tape, a, b);
    }
}
