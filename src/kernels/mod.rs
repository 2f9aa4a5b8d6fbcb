//! The loops the ops call. Plain slices and shapes in, plain slices out: no
//! tape, no layers, so every fast kernel can be tested against its naive twin
//! and benchmarked alone.
//!
//! Contract: forward kernels overwrite their output; backward kernels
//! accumulate (`+=`) into their gradient buffers, because the tape sums the
//! gradients of a value used more than once.

pub mod conv;
pub mod conv_naive;
pub mod microkernel;
pub mod sbf;
pub mod sbf_filters;
pub mod simd;

/// The geometry of a dense 2-d convolution (NCHW, square K×K kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Ho = (H + 2p − K)/s + 1
    pub fn out_height(&self) -> usize {
        (self.in_height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Wo = (W + 2p − K)/s + 1
    pub fn out_width(&self) -> usize {
        (self.in_width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Elements of x [N, C, H, W].
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_height * self.in_width
    }

    /// Elements of w [F, C, K, K].
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }

    /// Elements of y [N, F, Ho, Wo].
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }

    /// Multiply-accumulates of the forward pass: N·F·Ho·Wo·C·K².
    pub fn macs(&self) -> usize {
        self.output_len() * self.in_channels * self.kernel * self.kernel
    }

    /// The input pixel read by output (oh, ow) at tap (kh, kw), or None in the padding:
    /// (oh·s + kh − p, ow·s + kw − p).
    #[inline]
    pub fn input_position(&self, oh: usize, ow: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let ih = (oh * self.stride + kh).checked_sub(self.padding)?;
        let iw = (ow * self.stride + kw).checked_sub(self.padding)?;
        (ih < self.in_height && iw < self.in_width).then_some((ih, iw))
    }

    /// Panics with every size if a buffer does not match the geometry.
    pub fn check_buffers(&self, input: usize, weight: usize, output: usize) {
        assert!(
            input == self.input_len() && weight == self.weight_len() && output == self.output_len(),
            "conv kernel: buffers of {input}/{weight}/{output} values do not fit {self:?} \
             (expects {}/{}/{})",
            self.input_len(),
            self.weight_len(),
            self.output_len()
        );
    }
}
