//! The shape of every elementwise op: y = f(x), ∂L/∂x = ∂L/∂y · f′(x), over 16K-value chunks in
//! parallel, the gradient written once (no zero fill). Each op (ReLU, GELU) brings its f and f′.

use crate::autograd::{Tape, Var};
use crate::tensor::{Tensor, PARALLEL_CHUNK};
use rayon::prelude::*;

/// y = f(x) elementwise, any shape, with the backward ∂L/∂x = ∂L/∂y · `derivative(x)`.
pub fn elementwise(
    tape: &mut Tape,
    x: Var,
    f: impl Fn(f32) -> f32 + Sync,
    derivative: impl Fn(f32) -> f32 + Send + Sync + 'static,
) -> Var {
    let x_value = tape.value(x);
    let y = Tensor {
        shape: x_value.shape.clone(),
        data: x_value
            .data
            .par_iter()
            .with_min_len(PARALLEL_CHUNK)
            .map(|&v| f(v))
            .collect(),
    };
    tape.push(y, &[x], move |grad_y, ctx| {
        if ctx.needs_grad(x) {
            let x_value = ctx.value(x);
            let grad_x = Tensor {
                shape: x_value.shape.clone(),
                data: (grad_y.data.par_iter().with_min_len(PARALLEL_CHUNK))
                    .zip(&x_value.data)
                    .map(|(&gy, &v)| gy * derivative(v))
                    .collect(),
            };
            ctx.accumulate(x, grad_x);
        }
    })
}
