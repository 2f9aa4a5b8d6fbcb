//! The shape of every elementwise op: y = f(x), ∂L/∂x = ∂L/∂y · f′(x), over 16K-value chunks in
//! parallel, the gradient written once (no zero fill). Each op (ReLU, GELU) brings its f and f′.

use crate::autograd::{Tape, Var};
use crate::tensor::{Tensor, PARALLEL_CHUNK};
use rayon::prelude::*;
use wide::f32x8;

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

/// [`elementwise`] with f and f′ computed 8 values at a time (`wide::f32x8`; the last vector of
/// a chunk padded with zeros): for the ops whose f has a transcendental part (GELU's `exp`),
/// which the compiler does not vectorise from a scalar closure.
pub fn elementwise_x8(
    tape: &mut Tape,
    x: Var,
    f: impl Fn(f32x8) -> f32x8 + Sync,
    derivative: impl Fn(f32x8) -> f32x8 + Send + Sync + 'static,
) -> Var {
    let x_value = tape.value(x);
    let mut y = Tensor::zeros(&x_value.shape);
    map_x8(&x_value.data, &mut y.data, |v, _| f(v), None);
    tape.push(y, &[x], move |grad_y, ctx| {
        if ctx.needs_grad(x) {
            let x_value = ctx.value(x);
            let mut grad_x = Tensor::zeros(&x_value.shape);
            map_x8(
                &x_value.data,
                &mut grad_x.data,
                |v, gy| gy * derivative(v),
                Some(&grad_y.data),
            );
            ctx.accumulate(x, grad_x);
        }
    })
}

/// out[i] = op(x[i], other[i]) 8 lanes at a time, in parallel chunks (`other` is zeros if None).
fn map_x8(x: &[f32], out: &mut [f32], op: impl Fn(f32x8, f32x8) -> f32x8 + Sync, other: Option<&[f32]>) {
    let load = |values: &[f32]| {
        let mut lanes = [0.0f32; 8];
        lanes[..values.len()].copy_from_slice(values);
        f32x8::from(lanes)
    };
    out.par_chunks_mut(PARALLEL_CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * PARALLEL_CHUNK;
            let x = &x[start..start + out.len()];
            let other = other.map(|o| &o[start..start + out.len()]);
            for (i, out) in out.chunks_mut(8).enumerate() {
                let v = load(&x[i * 8..i * 8 + out.len()]);
                let w = other.map_or(f32x8::ZERO, |o| load(&o[i * 8..i * 8 + out.len()]));
                out.copy_from_slice(&op(v, w).to_array()[..out.len()]);
            }
        });
}
