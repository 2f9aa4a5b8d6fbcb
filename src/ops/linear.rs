//! Linear (fully connected): y = x·Wᵀ + b.
//!
//! ```text
//!   x [N, I], W [O, I], b [O] → y [N, O],   y[n,o] = b[o] + Σ_i x[n,i] · W[o,i]
//!   ∂L/∂x[n,i] = Σ_o R[n,o] · W[o,i]
//!   ∂L/∂W[o,i] = Σ_n R[n,o] · x[n,i]
//!   ∂L/∂b[o]   = Σ_n R[n,o]
//! ```

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

pub fn linear(tape: &mut Tape, x: Var, w: Var, b: Option<Var>) -> Var {
    let (xv, wv) = (tape.value(x), tape.value(w));
    let (n_batch, inputs, outputs) = match (&xv.shape[..], &wv.shape[..]) {
        (&[n, i], &[o, wi]) if i == wi => (n, i, o),
        _ => panic!(
            "linear: input {:?} and weight {:?} do not fit (expects [N, I] and [O, I])",
            xv.shape, wv.shape
        ),
    };
    let mut y = Tensor::zeros(&[n_batch, outputs]);
    for n in 0..n_batch {
        let row = &xv.data[n * inputs..(n + 1) * inputs];
        for o in 0..outputs {
            let weights = &wv.data[o * inputs..(o + 1) * inputs];
            y.data[n * outputs + o] = row.iter().zip(weights).map(|(a, b)| a * b).sum();
        }
    }
    if let Some(b) = b {
        let bv = tape.value(b);
        assert_eq!(
            bv.shape,
            [outputs],
            "linear: bias {:?} does not match {outputs} outputs",
            bv.shape
        );
        super::conv::add_channel_bias(&mut y.data, &bv.data, 1);
    }
    let all: Vec<Var> = [x, w].into_iter().chain(b).collect();
    tape.push(y, &all, move |grad_y, ctx| {
        let (xv, wv) = (ctx.value(x), ctx.value(w));
        let r = &grad_y.data;
        if let Some(gx) = ctx.grad(x) {
            for n in 0..n_batch {
                for o in 0..outputs {
                    let g = r[n * outputs + o];
                    for i in 0..inputs {
                        gx.data[n * inputs + i] += g * wv.data[o * inputs + i];
                    }
                }
            }
        }
        if let Some(gw) = ctx.grad(w) {
            for n in 0..n_batch {
                for o in 0..outputs {
                    let g = r[n * outputs + o];
                    for i in 0..inputs {
                        gw.data[o * inputs + i] += g * xv.data[n * inputs + i];
                    }
                }
            }
        }
        if let Some(gb) = b.and_then(|b| ctx.grad(b)) {
            super::conv::accumulate_channel_sums(r, &mut gb.data, 1);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_linear() {
        let mut rng = StdRng::seed_from_u64(6);
        let inputs = [
            Tensor::normal(&[3, 5], 1.0, &mut rng),
            Tensor::normal(&[4, 5], 1.0, &mut rng),
            Tensor::normal(&[4], 1.0, &mut rng),
        ];
        check_gradients(
            |t, v| linear(t, v[0], v[1], Some(v[2])),
            &inputs,
            &GradcheckOptions::default(),
        )
        .unwrap();
    }
}
