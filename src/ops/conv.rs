//! conv2d: dense K×K convolution with stride, zero padding and optional bias.
//!
//! ```text
//!   y[n,f,oh,ow] = b[f] + Σ_c Σ_kh Σ_kw x[n,c,oh·s+kh−p, ow·s+kw−p] · w[f,c,kh,kw]
//! ```
//!
//! Backward (R = ∂L/∂y):
//! ```text
//!   ∂L/∂x[n,c,ih,iw] = Σ_{f,kh,kw : ih = oh·s+kh−p, iw = ow·s+kw−p} R[n,f,oh,ow] · w[f,c,kh,kw]
//!   ∂L/∂w[f,c,kh,kw] = Σ_{n,oh,ow} R[n,f,oh,ow] · x[n,c,oh·s+kh−p, ow·s+kw−p]
//!   ∂L/∂b[f]         = Σ_{n,oh,ow} R[n,f,oh,ow]
//! ```
//!
//! The loops live in `kernels::conv` (fast) and `kernels::conv_naive` (oracle).

use crate::autograd::{Tape, Var};
use crate::kernels::{conv as kernel, ConvShape};
use crate::tensor::Tensor;

/// Stride and zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    pub stride: usize,
    pub padding: usize,
}

/// Checks `x [N,C,H,W]` against `w [F,C,K,K]` and returns the geometry; panics
/// with both shapes when they do not fit.
pub fn conv_shape(op: &str, x: &Tensor, w: &Tensor, config: ConvConfig) -> ConvShape {
    let [batch, in_channels, in_height, in_width] = x.nchw(op);
    let [out_channels, w_channels, kernel, kernel_w] = w.nchw(op);
    assert!(
        w_channels == in_channels && kernel == kernel_w && kernel > 0,
        "{op}: input {:?} and weight {:?} do not fit (weight must be [F, C, K, K] with C = input channels)",
        x.shape,
        w.shape
    );
    assert!(config.stride > 0, "{op}: stride must be at least 1");
    assert!(
        in_height + 2 * config.padding >= kernel && in_width + 2 * config.padding >= kernel,
        "{op}: input {:?} with padding {} is smaller than the {kernel}×{kernel} kernel",
        x.shape,
        config.padding
    );
    ConvShape {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel,
        stride: config.stride,
        padding: config.padding,
    }
}

/// y = conv2d(x, w) + b.  x `[N,C,H,W]`, w `[F,C,K,K]`, b `[F]` → y `[N,F,Ho,Wo]`.
pub fn conv2d(tape: &mut Tape, x: Var, w: Var, bias: Option<Var>, config: ConvConfig) -> Var {
    let shape = conv_shape("conv2d", tape.value(x), tape.value(w), config);
    let (h_out, w_out) = (shape.out_height(), shape.out_width());
    // y: [N, F, Ho, Wo]
    let mut y = Tensor::zeros(&[shape.batch, shape.out_channels, h_out, w_out]);
    kernel::forward(&shape, &tape.value(x).data, &tape.value(w).data, &mut y.data);
    if let Some(b) = bias {
        let b_value = tape.value(b);
        assert_eq!(
            b_value.shape,
            [shape.out_channels],
            "conv2d: bias shape {:?} does not match {} output channels",
            b_value.shape,
            shape.out_channels
        );
        add_channel_bias(&mut y.data, &b_value.data, h_out * w_out);
    }
    let inputs: Vec<Var> = [x, w].into_iter().chain(bias).collect();
    tape.push(y, &inputs, move |grad_y, ctx| {
        let (x_value, w_value) = (ctx.value(x), ctx.value(w));
        if let Some(grad_x) = ctx.grad(x) {
            kernel::input_grad(&shape, &grad_y.data, &w_value.data, &mut grad_x.data);
        }
        if let Some(grad_w) = ctx.grad(w) {
            kernel::weight_grad(&shape, &x_value.data, &grad_y.data, &mut grad_w.data);
        }
        if let Some(grad_b) = bias.and_then(|b| ctx.grad(b)) {
            accumulate_channel_sums(&grad_y.data, &mut grad_b.data, h_out * w_out);
        }
    })
}

/// `y[n,f,:,:]` += `b[f]` for a [N, F, plane] buffer.
pub fn add_channel_bias(y: &mut [f32], bias: &[f32], plane: usize) {
    for (i, chunk) in y.chunks_mut(plane).enumerate() {
        let b = bias[i % bias.len()];
        chunk.iter_mut().for_each(|v| *v += b);
    }
}

/// `db[f]` += Σ_{n, plane} `dy[n,f,plane]` for a [N, F, plane] buffer.
pub fn accumulate_channel_sums(grad_y: &[f32], grad_b: &mut [f32], plane: usize) {
    let channels = grad_b.len();
    for (i, chunk) in grad_y.chunks(plane).enumerate() {
        grad_b[i % channels] += chunk.iter().sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    fn check(
        batch: usize,
        c: usize,
        f: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) {
        let mut rng = StdRng::seed_from_u64((c * 100 + h * 10 + stride + padding) as u64);
        let mut inputs = vec![
            Tensor::normal(&[batch, c, h, w], 1.0, &mut rng),
            Tensor::normal(&[f, c, k, k], 0.5, &mut rng),
        ];
        if bias {
            inputs.push(Tensor::normal(&[f], 0.5, &mut rng));
        }
        let config = ConvConfig { stride, padding };
        check_gradients(
            |tape, v| conv2d(tape, v[0], v[1], v.get(2).copied(), config),
            &inputs,
            &GradcheckOptions::default(),
        )
        .unwrap_or_else(|e| panic!("conv2d k{k} s{stride} p{padding} {h}x{w}: {e}"));
    }

    #[test]
    fn gradcheck_stride_1_and_2_padding_0_and_1_odd_nonsquare_sizes() {
        for (stride, padding) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            check(2, 3, 4, 5, 7, 3, stride, padding, true);
        }
        check(3, 2, 3, 6, 5, 1, 1, 0, false);
        check(2, 2, 2, 7, 6, 5, 2, 2, false);
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn mismatched_channels_name_both_shapes() {
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Train);
        let x = tape.input(Tensor::zeros(&[1, 3, 8, 8]));
        let w = tape.input(Tensor::zeros(&[4, 2, 3, 3]));
        conv2d(
            &mut tape,
            x,
            w,
            None,
            ConvConfig {
                stride: 1,
                padding: 1,
            },
        );
    }
}
