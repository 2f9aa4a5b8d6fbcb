//! The naive dense convolution: plain nested loops, written to be obviously
//! correct. It is the test oracle of every faster convolution in the crate and
//! stays here forever.
//!
//! Shapes (NCHW, square K×K kernel, zero padding p, stride s):
//!   input  x [N, C, H, W]
//!   weight w [F, C, K, K]
//!   output y [N, F, Ho, Wo],  Ho = (H + 2p − K)/s + 1
//!
//! ```text
//!   y[n,f,oh,ow] = Σ_c Σ_kh Σ_kw  x[n, c, oh·s + kh − p, ow·s + kw − p] · w[f, c, kh, kw]
//! ```
//!
//! where x outside the image reads as 0.

use super::ConvShape;

/// `output = conv(input, weight)` (overwrites `output`).
pub fn forward(shape: &ConvShape, input: &[f32], weight: &[f32], output: &mut [f32]) {
    shape.check_buffers(input.len(), weight.len(), output.len());
    let ConvShape {
        batch: n_batch,
        in_channels,
        out_channels,
        kernel,
        ..
    } = *shape;
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    for n in 0..n_batch {
        for f in 0..out_channels {
            for oh in 0..h_out {
                for ow in 0..w_out {
                    let mut sum = 0.0f32;
                    for c in 0..in_channels {
                        for kh in 0..kernel {
                            for kw in 0..kernel {
                                if let Some((ih, iw)) = shape.input_position(oh, ow, kh, kw) {
                                    sum += input[((n * in_channels + c) * h_in + ih) * w_in + iw]
                                        * weight[((f * in_channels + c) * kernel + kh) * kernel + kw];
                                }
                            }
                        }
                    }
                    output[((n * out_channels + f) * h_out + oh) * w_out + ow] = sum;
                }
            }
        }
    }
}

/// `grad_input += ∂L/∂x`:  `dx[n,c,ih,iw]` = Σ over (f, oh, ow, kh, kw) that read
/// (ih, iw) of `dy[n,f,oh,ow]` · `w[f,c,kh,kw]`.
pub fn input_grad(shape: &ConvShape, grad_output: &[f32], weight: &[f32], grad_input: &mut [f32]) {
    shape.check_buffers(grad_input.len(), weight.len(), grad_output.len());
    let ConvShape {
        batch: n_batch,
        in_channels,
        out_channels,
        kernel,
        ..
    } = *shape;
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    for n in 0..n_batch {
        for f in 0..out_channels {
            for oh in 0..h_out {
                for ow in 0..w_out {
                    let dy = grad_output[((n * out_channels + f) * h_out + oh) * w_out + ow];
                    for c in 0..in_channels {
                        for kh in 0..kernel {
                            for kw in 0..kernel {
                                if let Some((ih, iw)) = shape.input_position(oh, ow, kh, kw) {
                                    grad_input[((n * in_channels + c) * h_in + ih) * w_in + iw] +=
                                        dy * weight[((f * in_channels + c) * kernel + kh) * kernel + kw];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `grad_weight += ∂L/∂w`:  `dw[f,c,kh,kw]` = Σ_n Σ_oh Σ_ow `dy[n,f,oh,ow]` · x[n,c,oh·s+kh−p, ow·s+kw−p].
pub fn weight_grad(shape: &ConvShape, input: &[f32], grad_output: &[f32], grad_weight: &mut [f32]) {
    shape.check_buffers(input.len(), grad_weight.len(), grad_output.len());
    let ConvShape {
        batch: n_batch,
        in_channels,
        out_channels,
        kernel,
        ..
    } = *shape;
    let (h_in, w_in) = (shape.in_height, shape.in_width);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    for f in 0..out_channels {
        for c in 0..in_channels {
            for kh in 0..kernel {
                for kw in 0..kernel {
                    let mut sum = 0.0f32;
                    for n in 0..n_batch {
                        for oh in 0..h_out {
                            for ow in 0..w_out {
                                if let Some((ih, iw)) = shape.input_position(oh, ow, kh, kw) {
                                    sum += grad_output[((n * out_channels + f) * h_out + oh) * w_out + ow]
                                        * input[((n * in_channels + c) * h_in + ih) * w_in + iw];
                                }
                            }
                        }
                    }
                    grad_weight[((f * in_channels + c) * kernel + kh) * kernel + kw] += sum;
                }
            }
        }
    }
}
