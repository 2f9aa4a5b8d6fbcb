//! Parameter and multiply-accumulate counts of conv layers, dense and SBF,
//! with the corrected formulas of SBF-NOTES §5 (per image, Ho×Wo output):
//!
//! ```text
//!   dense:  params = K²·C·N                     MACs = Ho·Wo·K²·C·N
//!   SBF:    params = K²·C·M + P_t·G·(N−M)      MACs = Ho·Wo·(K²·C·M + a·K²·G·(N−M))
//! ```
//!
//! P_t = parameters of one transform per group (scalar masks K², affine 6,
//! rotation 1); a = MACs per tap of a transformed output (scalar 1, bilinear 4).
//! Identity outputs cost nothing beyond their template (the paper counts their
//! additions as free). A bias adds N parameters (its additions are not counted).

use crate::kernels::sbf_filters::TransformFamily;

/// Cost of one layer, beside the dense conv of the same shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerCost {
    pub name: String,
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
    pub dense_params: usize,
    pub dense_macs: usize,
}

impl LayerCost {
    /// A dense K×K conv, C → N, Ho×Wo output.
    pub fn dense(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        out_height: usize,
        out_width: usize,
        bias: bool,
    ) -> LayerCost {
        let params = kernel * kernel * in_channels * out_channels + if bias { out_channels } else { 0 };
        let macs = out_height * out_width * kernel * kernel * in_channels * out_channels;
        LayerCost {
            name: name.to_string(),
            params,
            macs,
            dense_params: params,
            dense_macs: macs,
        }
    }

    /// An SBF layer: M templates of a C → N, K×K layer, G groups, Ho×Wo output.
    pub fn sbf(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        templates: usize,
        kernel: usize,
        groups: usize,
        family: TransformFamily,
        out_height: usize,
        out_width: usize,
        bias: bool,
    ) -> LayerCost {
        let dense = LayerCost::dense(
            name,
            in_channels,
            out_channels,
            kernel,
            out_height,
            out_width,
            bias,
        );
        let taps = kernel * kernel;
        let transformed = out_channels - templates;
        let template_params = taps * in_channels * templates;
        let params = template_params
            + family.params_per_group(kernel) * groups * transformed
            + if bias { out_channels } else { 0 };
        let macs =
            out_height * out_width * (template_params + family.macs_per_tap() * taps * groups * transformed);
        LayerCost {
            params,
            macs,
            ..dense
        }
    }

    /// params / dense params
    pub fn param_ratio(&self) -> f64 {
        self.params as f64 / self.dense_params.max(1) as f64
    }

    /// MACs / dense MACs
    pub fn mac_ratio(&self) -> f64 {
        self.macs as f64 / self.dense_macs.max(1) as f64
    }

    /// The sum of several layers, named `name`.
    pub fn total(name: &str, layers: &[LayerCost]) -> LayerCost {
        LayerCost {
            name: name.to_string(),
            params: layers.iter().map(|l| l.params).sum(),
            macs: layers.iter().map(|l| l.macs).sum(),
            dense_params: layers.iter().map(|l| l.dense_params).sum(),
            dense_macs: layers.iter().map(|l| l.dense_macs).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_worked_example_c512_n512_m51_g2() {
        // 9·512·51 + 9·2·461 = 235008 + 8298; dense 9·512·512.
        let cost = LayerCost::sbf("l", 512, 512, 51, 3, 2, TransformFamily::Scalar, 4, 4, false);
        assert_eq!(cost.params, 243_306);
        assert_eq!(cost.macs, 16 * 243_306);
        assert_eq!(cost.dense_params, 2_359_296);
        assert_eq!(cost.dense_macs, 16 * 2_359_296);
        // M/N + G/C − GM/(CN) ≈ 0.103 (SBF-NOTES §5).
        assert!((cost.mac_ratio() - 0.1031).abs() < 1e-3, "{}", cost.mac_ratio());
    }

    #[test]
    fn cifar_stage1_layer_at_half_pruning_with_bias() {
        // C = N = 16, M = 8, 32×32: 9·16·8 + 9·2·8 = 1296 per pixel; bias adds 16 params.
        let cost = LayerCost::sbf("s1", 16, 16, 8, 3, 2, TransformFamily::Scalar, 32, 32, true);
        assert_eq!(cost.params, 1152 + 144 + 16);
        assert_eq!(cost.macs, 1024 * 1296);
        assert_eq!(cost.dense_params, 2304 + 16);
        assert_eq!(cost.dense_macs, 1024 * 2304);
    }

    #[test]
    fn affine_and_rotation_cost_four_macs_per_tap() {
        // C = 8, N = 6, M = 2, K = 3, G = 4, 5×5: templates 144; 4 transformed outputs × 4 groups.
        let affine = LayerCost::sbf("a", 8, 6, 2, 3, 4, TransformFamily::Affine, 5, 5, false);
        assert_eq!(affine.params, 144 + 6 * 16);
        assert_eq!(affine.macs, 25 * (144 + 4 * 9 * 16));
        let rotation = LayerCost::sbf("r", 8, 6, 2, 3, 4, TransformFamily::Rotation, 5, 5, false);
        assert_eq!(rotation.params, 144 + 16);
        assert_eq!(rotation.macs, affine.macs);
        assert_eq!((affine.dense_params, affine.dense_macs), (432, 25 * 432));
        let total = LayerCost::total("net", &[affine, rotation]);
        assert_eq!(total.params, 240 + 160);
    }

    #[test]
    fn plain_filter_pruning_costs_the_kept_filters_only() {
        // The zero family (L1 pruning): M of N filters, no transforms: M/N of the dense layer.
        let pruned = LayerCost::sbf("p", 16, 16, 6, 3, 2, TransformFamily::Zero, 32, 32, false);
        let dense = LayerCost::dense("p", 16, 6, 3, 32, 32, false);
        assert_eq!((pruned.params, pruned.macs), (dense.params, dense.macs));
        assert_eq!(pruned.dense_macs, 32 * 32 * 9 * 16 * 16);
    }
}
