//! Every differentiable op in `sbfnet::ops`, checked against central finite
//! differences on the awkward cases the per-op unit tests leave out: odd
//! sizes with batch > 1, batch 1, kernels 1 and 5, stride 2 with padding 2,
//! inputs smaller than the kernel, BN with a single image, the SBF layer as a
//! layer (kept filters in place, bias, G = 2, stride 2, both paths), the effective
//! filters of every transform family, and conv2d's forward against hand-computed values.
//! Then the checker itself: it must fail on a backward that is only 5 % off.

use rand::{rngs::StdRng, SeedableRng};
use sbfnet::gradcheck::{away_from_zero, check_gradients, GradcheckOptions};
use sbfnet::nn::{SbfConv2d, TransformInit};
use sbfnet::ops::{
    self, batch_norm::Statistics, ConvConfig, SbfConfig, SbfPath, TemplateAssignment, TransformFamily,
};
use sbfnet::{ParamStore, Tape, Tensor, Var};

fn options() -> GradcheckOptions {
    GradcheckOptions::default()
}

fn check(what: &str, build: impl Fn(&mut Tape, &[Var]) -> Var, inputs: &[Tensor]) {
    let report = check_gradients(build, inputs, &options()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let expected: usize = inputs.iter().map(|t| t.len()).sum();
    assert_eq!(report.checked, expected, "{what}: every element compared");
}

#[test]
fn conv2d_kernel_1_and_5_stride_2_padding_2_and_input_smaller_than_kernel() {
    let mut rng = StdRng::seed_from_u64(21);
    // (batch, C, F, H, W, K, stride, padding)
    let cases = [
        (2, 3, 2, 5, 7, 1, 2, 0), // 1×1, stride 2, odd sizes: every other pixel
        (2, 2, 3, 5, 5, 5, 1, 2), // 5×5 "same"
        (3, 2, 2, 7, 6, 5, 2, 2), // 5×5, stride 2, padding 2
        (2, 1, 2, 3, 2, 5, 1, 2), // input smaller than the kernel: most taps read padding
        (1, 3, 1, 4, 5, 3, 2, 1), // batch 1, one filter
        (2, 2, 2, 6, 6, 3, 3, 1), // stride 3
    ];
    for (batch, c, f, h, w, k, stride, padding) in cases {
        let inputs = [
            Tensor::normal(&[batch, c, h, w], 1.0, &mut rng),
            Tensor::normal(&[f, c, k, k], 0.5, &mut rng),
            Tensor::normal(&[f], 0.5, &mut rng),
        ];
        let config = ConvConfig { stride, padding };
        check(
            &format!("conv2d k{k} s{stride} p{padding} {h}x{w} batch {batch}"),
            |tape, v| ops::conv2d(tape, v[0], v[1], Some(v[2]), config),
            &inputs,
        );
    }
}

#[test]
fn batch_norm_with_a_single_image_and_odd_spatial_size() {
    let mut rng = StdRng::seed_from_u64(22);
    // Batch 1: the statistics come from the 3×5 positions alone.
    for shape in [[1, 3, 3, 5], [3, 2, 1, 3]] {
        let inputs = [
            Tensor::normal(&shape, 2.0, &mut rng),
            Tensor::uniform(&[shape[1]], 0.5, 1.5, &mut rng),
            Tensor::normal(&[shape[1]], 1.0, &mut rng),
        ];
        check(
            &format!("batch_norm2d {shape:?}"),
            |tape, v| ops::batch_norm2d(tape, v[0], v[1], v[2], 1e-5, Statistics::Batch).0,
            &inputs,
        );
    }
}

#[test]
fn relu_pools_add_mul_flatten_on_odd_sizes_with_batch_above_1() {
    let mut rng = StdRng::seed_from_u64(23);
    let shape = [3, 2, 5, 3];
    let x = away_from_zero(Tensor::normal(&shape, 1.0, &mut rng), 0.05);
    let y = Tensor::normal(&shape, 1.0, &mut rng);
    check("relu", |t, v| ops::relu(t, v[0]), &[x.clone()]);
    check("gelu", |t, v| ops::gelu(t, v[0]), &[y.clone()]);
    check("scale", |t, v| ops::scale(t, v[0], -0.25), &[y.clone()]);
    // 5×3 → 2×1: the last row and column are dropped by the pool. Values all distinct, spaced
    // 0.05 apart (> 2·step) in a scrambled order, so no finite-difference step changes a window's winner.
    let len = x.len(); // 90; 37 is coprime with it, so i ↦ 37·i mod 90 is a permutation
    let distinct = Tensor::from_vec(
        &shape,
        (0..len).map(|i| ((37 * i) % len) as f32 * 0.05 - 2.0).collect(),
    );
    check(
        "max_pool 2",
        |t, v| ops::max_pool(t, v[0], 2),
        &[distinct.clone()],
    );
    check("max_pool 3", |t, v| ops::max_pool(t, v[0], 3), &[distinct]);
    check(
        "global_avg_pool",
        |t, v| ops::global_avg_pool(t, v[0]),
        &[x.clone()],
    );
    check("add", |t, v| ops::add(t, v[0], v[1]), &[x.clone(), y.clone()]);
    check("mul", |t, v| ops::mul(t, v[0], v[1]), &[x.clone(), y]);
    // The same input twice: both uses must add into one gradient.
    check("mul(x, x)", |t, v| ops::mul(t, v[0], v[0]), &[x.clone()]);
    check("flatten", |t, v| ops::flatten(t, v[0]), &[x]);
}

#[test]
fn shortcut_option_a_stride_1_and_2_odd_sizes() {
    let mut rng = StdRng::seed_from_u64(24);
    for (shape, out_channels, stride) in [
        ([3, 3, 5, 5], 7, 2), // odd padding split: 2 channels before, 2 after
        ([2, 2, 3, 4], 6, 2),
        ([2, 3, 5, 3], 5, 1),
        ([1, 4, 3, 3], 4, 1), // identity
    ] {
        let x = Tensor::normal(&shape, 1.0, &mut rng);
        check(
            &format!("shortcut_option_a {shape:?} → {out_channels} stride {stride}"),
            |t, v| ops::shortcut_option_a(t, v[0], out_channels, stride),
            &[x],
        );
    }
}

#[test]
fn linear_with_batch_1_and_without_bias() {
    let mut rng = StdRng::seed_from_u64(25);
    let x = Tensor::normal(&[1, 5], 1.0, &mut rng);
    let w = Tensor::normal(&[3, 5], 1.0, &mut rng);
    let b = Tensor::normal(&[3], 1.0, &mut rng);
    check(
        "linear batch 1",
        |t, v| ops::linear(t, v[0], v[1], Some(v[2])),
        &[x.clone(), w.clone(), b],
    );
    check(
        "linear without bias",
        |t, v| ops::linear(t, v[0], v[1], None),
        &[x, w],
    );
}

#[test]
fn cross_entropy_with_smoothing_batch_1_and_odd_classes() {
    let mut rng = StdRng::seed_from_u64(26);
    let logits = Tensor::normal(&[1, 7], 2.0, &mut rng);
    check(
        "cross_entropy batch 1 smoothing 0.1",
        |t, v| ops::cross_entropy(t, v[0], &[6], 0.1),
        &[logits],
    );
    let logits = Tensor::normal(&[3, 5], 2.0, &mut rng);
    for smoothing in [0.0, 0.3] {
        check(
            &format!("cross_entropy smoothing {smoothing}"),
            |t, v| ops::cross_entropy(t, v[0], &[0, 4, 4], smoothing),
            &[logits.clone()],
        );
    }
}

/// The SBF layer built as a pruned layer is (kept filters in place, least-squares masks),
/// with a bias, stride 2 and G = 2: its op checked on both computation paths with
/// x, the templates, the masks and the bias as inputs.
#[test]
fn sbf_layer_converted_from_a_dense_one_stride_2_groups_2_both_paths() {
    let mut rng = StdRng::seed_from_u64(27);
    for (kernel, padding) in [(3, 1), (1, 0)] {
        let dense = Tensor::normal(&[6, 4, kernel, kernel], 0.5, &mut rng);
        let bias = Tensor::normal(&[6], 0.5, &mut rng);
        let kept = [4, 1]; // out of order: output 4 is template 0, output 1 is template 1
        for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
            let mut store = ParamStore::default();
            let config = SbfConfig {
                path,
                ..SbfConfig::new(2, padding, 2)
            };
            let layer = SbfConv2d::from_dense(
                &mut store,
                "sbf",
                &dense,
                Some(&bias),
                &kept,
                config,
                TransformInit::LeastSquares,
            );
            assert_eq!(layer.num_templates(), 2);
            assert_eq!(layer.assignment.template_of[4], 0);
            // Perturb the fitted masks so no mask is exactly 1 (a copy of the template).
            let mut masks = store.value(layer.transforms).clone();
            for (m, noise) in masks
                .data
                .iter_mut()
                .zip(Tensor::normal(&masks.shape, 0.3, &mut rng).data)
            {
                *m += noise;
            }
            let inputs = [
                Tensor::normal(&[2, 4, 5, 6], 1.0, &mut rng),
                store.value(layer.templates).clone(),
                masks,
                store.value(layer.bias.unwrap()).clone(),
            ];
            let assignment = layer.assignment.clone();
            check(
                &format!("sbf_conv2d k{kernel} {path:?}"),
                |t, v| ops::sbf_conv2d(t, v[0], v[1], v[2], Some(v[3]), &assignment, config),
                &inputs,
            );
        }
    }
}

/// `y = x³` with a backward that is `scale` times the true `3x²`.
fn cube_with_scaled_backward(tape: &mut Tape, x: Var, scale: f32) -> Var {
    let value = tape.value(x);
    let y = Tensor::from_vec(&value.shape, value.data.iter().map(|v| v * v * v).collect());
    tape.push(y, &[x], move |grad_y, ctx| {
        let value = ctx.value(x);
        if let Some(grad_x) = ctx.grad(x) {
            for i in 0..grad_x.len() {
                grad_x.data[i] += grad_y.data[i] * 3.0 * value.data[i] * value.data[i] * scale;
            }
        }
    })
}

#[test]
fn checker_fails_on_a_backward_5_percent_off_and_passes_the_exact_one() {
    let mut rng = StdRng::seed_from_u64(28);
    // Values of magnitude ≥ 0.5 so that 5 % of the gradient (≥ 0.04·|r|) is well above atol.
    let x = away_from_zero(Tensor::normal(&[2, 3, 3], 1.0, &mut rng), 0.5);
    let exact = check_gradients(
        |t, v| cube_with_scaled_backward(t, v[0], 1.0),
        &[x.clone()],
        &options(),
    )
    .expect("the exact backward passes");
    assert!(
        exact.worst_ratio < 0.5,
        "exact backward worst ratio {}",
        exact.worst_ratio
    );
    for scale in [1.05, 0.95] {
        let failure = check_gradients(
            |t, v| cube_with_scaled_backward(t, v[0], scale),
            &[x.clone()],
            &options(),
        )
        .expect_err("a backward off by 5 % must fail at the default tolerances");
        let relative = (failure.analytic - failure.numeric).abs() / failure.numeric.abs();
        assert!(
            (relative - 0.05).abs() < 0.01,
            "scale {scale}: reported element is off by {relative}: {failure}"
        );
    }
}

/// Weff as an op of its own (the effective-filters path's first step), for each transform
/// family, G = 2, kept filters out of order. Affine and rotation parameters keep every
/// sampling point off the integer lattice (where bilinear weights have kinks), except the
/// centre tap of a rotation, which does not move with θ.
#[test]
fn sbf_effective_filters_every_family_groups_2() {
    let mut rng = StdRng::seed_from_u64(29);
    let assignment = TemplateAssignment::from_kept_outputs(5, &[3, 0]);
    let (channels, groups, kernel) = (4, 2, 3);
    let templates = Tensor::normal(&[2, channels, kernel, kernel], 1.0, &mut rng);
    let transformed = 3 * groups; // N − M = 3 outputs, one transform per group
    for family in [
        TransformFamily::Scalar,
        TransformFamily::Affine,
        TransformFamily::Rotation,
        TransformFamily::Zero,
    ] {
        let params: Vec<f32> = match family {
            TransformFamily::Scalar => Tensor::normal(&[transformed * kernel * kernel], 1.0, &mut rng).data,
            TransformFamily::Affine => (0..transformed)
                .flat_map(|j| {
                    let wobble = 0.02 * j as f32;
                    [
                        1.0 - wobble,
                        0.05,
                        0.3 + wobble,
                        -0.04,
                        1.0 + wobble,
                        0.4 - wobble,
                    ]
                })
                .collect(),
            TransformFamily::Rotation => (0..transformed).map(|j| 0.3 + 0.05 * j as f32).collect(),
            TransformFamily::Zero => vec![], // no parameters: only dB is checked
        };
        let transforms = Tensor::from_vec(&family.param_shape(3, groups, kernel), params);
        check(
            &format!("sbf_effective_filters {family:?}"),
            |t, v| ops::sbf::sbf_effective_filters(t, v[0], v[1], &assignment, groups, family),
            &[templates.clone(), transforms],
        );
    }
}

/// The convolution itself (not only its gradient) against values worked out by hand, so
/// the fast kernel and its naive oracle cannot agree on a wrong answer.
#[test]
fn conv2d_forward_matches_hand_computed_values() {
    let store = ParamStore::default();
    let mut tape = Tape::new(&store, sbfnet::Mode::Eval);
    // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,0],[0,−1]] (top-left minus bottom-right).
    let x = tape.input(Tensor::from_vec(
        &[1, 1, 3, 3],
        (1..=9).map(|v| v as f32).collect(),
    ));
    let w = tape.input(Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 0.0, 0.0, -1.0]));
    let valid = ops::conv2d(
        &mut tape,
        x,
        w,
        None,
        ConvConfig {
            stride: 1,
            padding: 0,
        },
    );
    assert_eq!(tape.value(valid).data, [-4.0, -4.0, -4.0, -4.0]);
    // Stride 2, padding 1: windows start at (−1,−1), (−1,1), (1,−1), (1,1); out-of-range reads are 0.
    // (−1,−1): 0 − x[0,0] = −1;  (−1,1): 0 − x[0,2] = −3;  (1,−1): 0 − x[2,0] = −7;  (1,1): x[1,1] − x[2,2] = −4.
    let strided = ops::conv2d(
        &mut tape,
        x,
        w,
        None,
        ConvConfig {
            stride: 2,
            padding: 1,
        },
    );
    assert_eq!(tape.value(strided).shape, [1, 1, 2, 2]);
    assert_eq!(tape.value(strided).data, [-1.0, -3.0, -7.0, -4.0]);
}
