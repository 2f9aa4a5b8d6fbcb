//! ReLU: y = max(x, 0);  ∂L/∂x = ∂L/∂y · `[x > 0]`.

use super::unary::elementwise;
use crate::autograd::{Tape, Var};

/// y = max(x, 0), elementwise, any shape. A NaN input stays NaN (as in
/// PyTorch), so a fault upstream is not hidden from the loss.
pub fn relu(tape: &mut Tape, x: Var) -> Var {
    elementwise(
        tape,
        x,
        |v| if v < 0.0 { 0.0 } else { v },
        // ∂y/∂x = 1 where x > 0, else 0.
        |v| if v > 0.0 { 1.0 } else { 0.0 },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{away_from_zero, check_gradients, GradcheckOptions};
    use crate::tensor::Tensor;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_relu() {
        let mut rng = StdRng::seed_from_u64(1);
        // Keep inputs away from the kink at 0, where the derivative jumps.
        let x = away_from_zero(Tensor::normal(&[2, 3, 4, 5], 1.0, &mut rng), 0.05);
        check_gradients(|tape, v| relu(tape, v[0]), &[x], &GradcheckOptions::default()).unwrap();
    }

    #[test]
    fn nan_passes_through() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
        let x = tape.input(Tensor::from_vec(&[3], vec![f32::NAN, -1.0, 2.0]));
        let y = relu(&mut tape, x);
        let out = &tape.value(y).data;
        assert!(out[0].is_nan());
        assert_eq!(&out[1..], &[0.0, 2.0]);
    }
}
