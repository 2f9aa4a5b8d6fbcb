//! Write a differentiable op, check its backward against finite differences,
//! and watch the checker catch a backward that is wrong by 5 %.
//!
//! ```text
//! cargo run --release --example gradcheck_op
//! ```
//!
//! The op is softplus, `y[i] = ln(1 + e^{x[i]})`, whose derivative is the
//! logistic sigmoid, `∂y[i]/∂x[i] = 1 / (1 + e^{−x[i]})`.

use rand::{rngs::StdRng, SeedableRng};
use sbfnet::gradcheck::{check_gradients, GradcheckOptions};
use sbfnet::{Tape, Tensor, Var};

/// `y = softplus(x)`, any shape. `backward_scale` multiplies the gradient the
/// backward writes: 1.0 is the right op, 1.05 a bug of 5 %.
fn softplus(tape: &mut Tape, x: Var, backward_scale: f32) -> Var {
    // Forward: compute the value now. Written as max(x, 0) + ln(1 + e^{−|x|}), stable for large |x|.
    let x_value = tape.value(x); // [any shape]
    let y = Tensor::from_vec(
        &x_value.shape,
        x_value
            .data
            .iter()
            .map(|&v| v.max(0.0) + (-v.abs()).exp().ln_1p())
            .collect(),
    );
    // Backward: a closure run by `tape.backward`. It gets ∂L/∂y and must ADD
    // ∂L/∂x = ∂L/∂y · sigmoid(x) into the input's gradient (`None` when x needs none).
    tape.push(y, &[x], move |grad_y, ctx| {
        let x_value = ctx.value(x);
        if let Some(grad_x) = ctx.grad(x) {
            for i in 0..grad_x.len() {
                let sigmoid = 1.0 / (1.0 + (-x_value.data[i]).exp());
                grad_x.data[i] += grad_y.data[i] * sigmoid * backward_scale;
            }
        }
    })
}

fn main() {
    let mut rng = StdRng::seed_from_u64(7);
    // Small, odd shapes: every element is perturbed twice, so the check costs 2·len forward passes.
    let x = Tensor::normal(&[2, 3, 5], 2.0, &mut rng);
    let options = GradcheckOptions::default();
    println!(
        "checking softplus on {:?} with step {}, rtol {}, atol {}",
        x.shape, options.step, options.rtol, options.atol
    );

    let right = check_gradients(|tape, v| softplus(tape, v[0], 1.0), &[x.clone()], &options)
        .expect("the right backward passes");
    println!(
        "right backward: {} elements agree (worst |analytic − numeric| / tolerance = {:.3})",
        right.checked, right.worst_ratio
    );

    match check_gradients(|tape, v| softplus(tape, v[0], 1.05), &[x], &options) {
        Ok(report) => panic!("a backward 5 % off must fail, but passed: {report:?}"),
        Err(failure) => println!("backward 5 % off: caught, {failure}"),
    }
}
