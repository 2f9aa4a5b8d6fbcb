//! ReLU: y = max(x, 0);  ∂L/∂x = ∂L/∂y · [x > 0].

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// y = max(x, 0), elementwise, any shape.
pub fn relu(tape: &mut Tape, x: Var) -> Var {
    let x_value = tape.value(x);
    let y = Tensor {
        shape: x_value.shape.clone(),
        data: x_value.data.iter().map(|&v| v.max(0.0)).collect(),
    };
    tape.push(y, &[x], move |grad_y, ctx| {
        let x_value = ctx.value(x);
        if let Some(grad_x) = ctx.grad(x) {
            for ((gx, &gy), &xv) in grad_x.data.iter_mut().zip(&grad_y.data).zip(&x_value.data) {
                if xv > 0.0 {
                    *gx += gy;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{away_from_zero, check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_relu() {
        let mut rng = StdRng::seed_from_u64(1);
        // Keep inputs away from the kink at 0, where the derivative jumps.
        let x = away_from_zero(Tensor::normal(&[2, 3, 4, 5], 1.0, &mut rng), 0.05);
        check_gradients(|tape, v| relu(tape, v[0]), &[x], &GradcheckOptions::default()).unwrap();
    }
}
