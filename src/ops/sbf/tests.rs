//! The SBF op: both paths against each other and the dense oracle, gradchecks, the cost model.
use super::*;
use crate::autograd::{Mode, ParamStore};
use crate::gradcheck::{check_gradients, GradcheckOptions};
use crate::kernels::{conv_naive, ConvShape};
use crate::tensor::max_scaled_difference;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// y = conv(x, w) with the naive dense oracle.
fn dense_conv(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
    let [batch, in_channels, in_height, in_width] = x.nchw("test");
    let [out_channels, _, kernel, _] = w.nchw("test");
    let shape = ConvShape {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel,
        stride,
        padding,
    };
    let mut y = Tensor::zeros(&[batch, out_channels, shape.out_height(), shape.out_width()]);
    conv_naive::forward(&shape, &x.data, &w.data, &mut y.data);
    y
}

/// Forward value of sbf_conv2d (evaluation mode, no bias).
fn sbf_value(
    x: &Tensor,
    b: &Tensor,
    t: &Tensor,
    assignment: &TemplateAssignment,
    config: SbfConfig,
) -> Tensor {
    let store = ParamStore::default();
    let mut tape = Tape::new(&store, Mode::Eval);
    let (xv, bv, tv) = (
        tape.input(x.clone()),
        tape.input(b.clone()),
        tape.input(t.clone()),
    );
    let y = sbf_conv2d(&mut tape, xv, bv, tv, None, assignment, config);
    tape.value(y).clone()
}

fn config(stride: usize, padding: usize, groups: usize, path: SbfPath) -> SbfConfig {
    SbfConfig {
        path,
        ..SbfConfig::new(stride, padding, groups)
    }
}

#[test]
fn all_templates_with_identity_transforms_equal_the_dense_conv_of_the_templates() {
    let mut rng = StdRng::seed_from_u64(1);
    let x = Tensor::normal(&[2, 6, 7, 9], 1.0, &mut rng);
    let b = Tensor::normal(&[5, 6, 3, 3], 0.5, &mut rng);
    let t = Tensor::zeros(&[0, 2, 3, 3]);
    let assignment = TemplateAssignment::round_robin(5, 5);
    let dense = dense_conv(&x, &b, 1, 1);
    for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
        let y = sbf_value(&x, &b, &t, &assignment, config(1, 1, 2, path));
        // Equal up to f32 summation order: within 1e-6 of the largest output.
        let d = max_scaled_difference(&y.data, &dense.data, 0.0, 1e-6 * dense.max_abs());
        assert!(d <= 1.0, "{path:?}: differs from conv2d(x, B) by {d}");
    }
}

#[test]
fn zero_masks_equal_ordinary_pruning() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = Tensor::normal(&[2, 4, 6, 5], 1.0, &mut rng);
    let b = Tensor::normal(&[2, 4, 3, 3], 0.5, &mut rng);
    let kept = [1, 3];
    let assignment = TemplateAssignment::from_kept_outputs(6, &kept);
    let t = Tensor::zeros(&[4, 2, 3, 3]);
    // The pruned conv: the kept filters at their positions, zeros elsewhere.
    let mut w = Tensor::zeros(&[6, 4, 3, 3]);
    for (k, &n) in kept.iter().enumerate() {
        w.data[n * 36..(n + 1) * 36].copy_from_slice(&b.data[k * 36..(k + 1) * 36]);
    }
    let pruned = dense_conv(&x, &w, 2, 1);
    for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
        let y = sbf_value(&x, &b, &t, &assignment, config(2, 1, 2, path));
        assert!(
            max_scaled_difference(&y.data, &pruned.data, 1e-6, 1e-6) <= 1.0,
            "{path:?}"
        );
        let plane = y.dim(2) * y.dim(3);
        for n in [0, 2, 4, 5] {
            assert!(
                y.data[n * plane..(n + 1) * plane].iter().all(|&v| v == 0.0),
                "channel {n}"
            );
        }
    }
}

#[test]
fn fused_equals_effective_filters_over_the_grid() {
    let mut rng = StdRng::seed_from_u64(3);
    let (c, n) = (8, 6);
    let mut cases = 0;
    for groups in [1, 2, 4] {
        for stride in [1, 2] {
            for padding in [0, 1] {
                for kernel in [1, 3, 5] {
                    for m in [1, n / 2, n - 1] {
                        let x = Tensor::normal(&[2, c, 7, 9], 1.0, &mut rng);
                        let b = Tensor::normal(&[m, c, kernel, kernel], 0.5, &mut rng);
                        let t = Tensor::normal(&[n - m, groups, kernel, kernel], 1.0, &mut rng);
                        let kept: Vec<usize> = (0..m).map(|j| (j * 5 + 2) % n).collect();
                        let mut kept_sorted = kept.clone();
                        kept_sorted.sort();
                        kept_sorted.dedup();
                        let assignment = if kept_sorted.len() == m {
                            TemplateAssignment::from_kept_outputs(n, &kept)
                        } else {
                            TemplateAssignment::round_robin(n, m)
                        };
                        let fast = sbf_value(
                            &x,
                            &b,
                            &t,
                            &assignment,
                            config(stride, padding, groups, SbfPath::Fused),
                        );
                        let weff = effective_filters(&b, &t, &assignment, groups, TransformFamily::Scalar);
                        let reference = dense_conv(&x, &weff, stride, padding);
                        let d = max_scaled_difference(&fast.data, &reference.data, 1e-5, 1e-5);
                        assert!(
                            d <= 1.0,
                            "G{groups} s{stride} p{padding} K{kernel} M{m}: scaled difference {d}"
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 108);
}

fn gradcheck_case(
    family: TransformFamily,
    path: SbfPath,
    stride: usize,
    padding: usize,
    transforms: Tensor,
    kernel: usize,
) {
    let mut rng = StdRng::seed_from_u64(10 + stride as u64 * 3 + padding as u64);
    let (c, n, m, groups) = (4, 5, 2, 2);
    let inputs = vec![
        Tensor::normal(&[2, c, 5, 6], 1.0, &mut rng),
        Tensor::normal(&[m, c, kernel, kernel], 0.5, &mut rng),
        transforms,
        Tensor::normal(&[n], 0.5, &mut rng),
    ];
    let assignment = TemplateAssignment::from_kept_outputs(n, &[3, 1]);
    let cfg = SbfConfig {
        stride,
        padding,
        groups,
        family,
        path,
    };
    check_gradients(
        |tape, v| sbf_conv2d(tape, v[0], v[1], v[2], Some(v[3]), &assignment, cfg),
        &inputs,
        &GradcheckOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{family:?} {path:?} s{stride} p{padding}: {e}"));
}

#[test]
fn gradcheck_scalar_masks_both_paths_with_borders_and_strides() {
    let mut rng = StdRng::seed_from_u64(4);
    for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
        for (stride, padding) in [(1, 1), (2, 1), (2, 0), (1, 2)] {
            let t = Tensor::normal(&[3, 2, 3, 3], 1.0, &mut rng);
            gradcheck_case(TransformFamily::Scalar, path, stride, padding, t, 3);
        }
    }
}

/// Affine (or rotation) parameters whose sampling points all stay ≥ 0.06 away from the
/// integer grid (the bilinear kinks), so a finite-difference step of 0.01 never crosses one.
fn smooth_transform_params(
    family: TransformFamily,
    count: usize,
    kernel: usize,
    rng: &mut StdRng,
) -> Vec<f32> {
    let c = (kernel as f32 - 1.0) / 2.0;
    let mut out = Vec::new();
    while out.len() < count * family.params_per_group(kernel) {
        let candidate: Vec<f32> = match family {
            TransformFamily::Affine => [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                .iter()
                .map(|v| v + rng.gen_range(-0.3..0.3))
                .collect(),
            _ => vec![rng.gen_range(-1.2..1.2)],
        };
        let s = match family {
            TransformFamily::Affine => candidate.clone(),
            _ => {
                let (sin, cos) = candidate[0].sin_cos();
                vec![cos, -sin, 0.0, sin, cos, 0.0]
            }
        };
        let smooth = (0..kernel * kernel).all(|k| {
            let (u, v) = ((k % kernel) as f32 - c, (k / kernel) as f32 - c);
            if family == TransformFamily::Rotation && u == 0.0 && v == 0.0 {
                return true; // the centre never moves under a rotation
            }
            let (px, py) = (s[0] * u + s[1] * v + s[2], s[3] * u + s[4] * v + s[5]);
            [px, py].iter().all(|p| (p - p.round()).abs() > 0.06)
        });
        if smooth {
            out.extend(candidate);
        }
    }
    out
}

#[test]
fn gradcheck_affine_and_rotation_transforms_away_from_bilinear_kinks() {
    let mut rng = StdRng::seed_from_u64(5);
    for family in [TransformFamily::Affine, TransformFamily::Rotation] {
        for (stride, padding) in [(1, 1), (2, 0)] {
            let params = smooth_transform_params(family, 3 * 2, 3, &mut rng);
            let t = Tensor::from_vec(&family.param_shape(3, 2, 3), params);
            gradcheck_case(family, SbfPath::Auto, stride, padding, t, 3);
        }
    }
}

#[test]
fn identity_affine_and_rotation_transforms_copy_the_template() {
    let mut rng = StdRng::seed_from_u64(6);
    let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
    let assignment = TemplateAssignment::round_robin(5, 2);
    let scalar = effective_filters(
        &b,
        &Tensor::full(&[3, 2, 3, 3], 1.0),
        &assignment,
        2,
        TransformFamily::Scalar,
    );
    for family in [TransformFamily::Affine, TransformFamily::Rotation] {
        let identity: Vec<f32> = (0..6).flat_map(|_| family.identity(3)).collect();
        let t = Tensor::from_vec(&family.param_shape(3, 2, 3), identity);
        let weff = effective_filters(&b, &t, &assignment, 2, family);
        assert!(
            max_scaled_difference(&weff.data, &scalar.data, 1e-6, 1e-6) <= 1.0,
            "{family:?}"
        );
    }
    // A quarter turn moves tap (kh, kw) = (0, 1) (u = 0, v = −1) to read the template at (u, v) = (1, 0).
    let t = Tensor::from_vec(&[3, 2, 1], vec![std::f32::consts::FRAC_PI_2; 6]);
    let weff = effective_filters(&b, &t, &assignment, 2, TransformFamily::Rotation);
    let (n, i) = (2, 1); // output 2 copies template 0
    assert!((weff.data[(n * 4 + i) * 9 + 1] - b.data[i * 9 + 5]).abs() < 1e-5);
}

#[test]
fn view_a_and_view_b_give_the_same_gradients() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = Tensor::normal(&[3, 6, 7, 6], 1.0, &mut rng);
    let b = Tensor::normal(&[3, 6, 3, 3], 0.5, &mut rng);
    let t = Tensor::normal(&[4, 3, 3, 3], 1.0, &mut rng);
    let bias = Tensor::normal(&[7], 1.0, &mut rng);
    let seed = Tensor::normal(&[3, 7, 4, 3], 1.0, &mut rng);
    let assignment = TemplateAssignment::from_kept_outputs(7, &[0, 2, 5]);
    let grads = |path: SbfPath| -> Vec<Tensor> {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Train);
        let vars: Vec<Var> = [&x, &b, &t, &bias]
            .iter()
            .map(|v| tape.leaf((*v).clone()))
            .collect();
        let y = sbf_conv2d(
            &mut tape,
            vars[0],
            vars[1],
            vars[2],
            Some(vars[3]),
            &assignment,
            config(2, 1, 3, path),
        );
        tape.backward_with(y, seed.clone());
        vars.iter().map(|v| tape.grad(*v).unwrap().clone()).collect()
    };
    let (view_a, view_b) = (grads(SbfPath::EffectiveFilters), grads(SbfPath::Fused));
    for (name, (a, b)) in ["dX", "dB", "dT", "dbias"].iter().zip(view_a.iter().zip(&view_b)) {
        let d = max_scaled_difference(&b.data, &a.data, 1e-4, 1e-4);
        assert!(d <= 1.0, "{name}: view B differs from view A by {d}");
    }
}

#[test]
fn a_mixed_plan_gives_the_values_and_gradients_of_the_effective_filters() {
    // C = N = 16, M = 8, G = 2: Auto takes the fused forward and the dense input gradient.
    let mut rng = StdRng::seed_from_u64(9);
    let x = Tensor::normal(&[2, 16, 5, 6], 1.0, &mut rng);
    let b = Tensor::normal(&[8, 16, 3, 3], 0.5, &mut rng);
    let t = Tensor::normal(&[8, 2, 3, 3], 1.0, &mut rng);
    let seed = Tensor::normal(&[2, 16, 5, 6], 1.0, &mut rng);
    let assignment = TemplateAssignment::round_robin(16, 8);
    let auto = config(1, 1, 2, SbfPath::Auto);
    assert_eq!(
        auto.plan(16, 16, 8),
        SbfPlan {
            forward_fused: true,
            input_grad_fused: false
        }
    );
    let run = |path: SbfPath| -> Vec<Tensor> {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Train);
        let vars: Vec<Var> = [&x, &b, &t].iter().map(|v| tape.leaf((*v).clone())).collect();
        let y = sbf_conv2d(
            &mut tape,
            vars[0],
            vars[1],
            vars[2],
            None,
            &assignment,
            config(1, 1, 2, path),
        );
        let value = tape.value(y).clone();
        tape.backward_with(y, seed.clone());
        std::iter::once(value)
            .chain(vars.iter().map(|v| tape.grad(*v).unwrap().clone()))
            .collect()
    };
    let (mixed, dense) = (run(SbfPath::Auto), run(SbfPath::EffectiveFilters));
    for (name, (a, b)) in ["Y", "dX", "dB", "dT"].iter().zip(mixed.iter().zip(&dense)) {
        let d = max_scaled_difference(&a.data, &b.data, 1e-4, 1e-4);
        assert!(
            d <= 1.0,
            "{name}: the mixed plan differs from the effective filters by {d}"
        );
    }
}

#[test]
fn the_zero_family_is_scalar_masks_fixed_at_zero_i_e_plain_filter_pruning() {
    // Same output and template gradient as scalar masks that are all 0; no transform parameters.
    let mut rng = StdRng::seed_from_u64(11);
    let x = Tensor::normal(&[2, 4, 6, 5], 1.0, &mut rng);
    let b = Tensor::normal(&[2, 4, 3, 3], 0.5, &mut rng);
    let seed = Tensor::normal(&[2, 5, 3, 3], 1.0, &mut rng);
    let assignment = TemplateAssignment::from_kept_outputs(5, &[3, 1]);
    let run = |family: TransformFamily, t: &Tensor| -> (Tensor, Tensor, Tensor) {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Train);
        let (xv, bv, tv) = (tape.leaf(x.clone()), tape.leaf(b.clone()), tape.leaf(t.clone()));
        let cfg = SbfConfig {
            family,
            ..config(2, 1, 2, SbfPath::Auto)
        };
        let y = sbf_conv2d(&mut tape, xv, bv, tv, None, &assignment, cfg);
        tape.backward_with(y, seed.clone());
        let grad = |v| tape.grad(v).unwrap().clone();
        (tape.value(y).clone(), grad(bv), grad(xv))
    };
    let zero = run(TransformFamily::Zero, &Tensor::zeros(&[3, 2, 0]));
    let masked = run(TransformFamily::Scalar, &Tensor::zeros(&[3, 2, 3, 3]));
    assert_eq!(zero.0.data, masked.0.data, "outputs");
    assert_eq!(zero.1.data, masked.1.data, "template gradients");
    assert_eq!(zero.2.data, masked.2.data, "input gradients");
    // Pruned outputs 0, 2 and 4 are exactly zero; kept outputs 3 and 1 are not.
    for (n, pruned) in [(0, true), (1, false), (2, true), (3, false), (4, true)] {
        let plane = &zero.0.data[n * 9..(n + 1) * 9];
        assert_eq!(plane.iter().all(|v| *v == 0.0), pruned, "output {n}");
    }
    gradcheck_case(
        TransformFamily::Zero,
        SbfPath::Auto,
        2,
        1,
        Tensor::zeros(&[3, 2, 0]),
        3,
    );
}

#[test]
fn auto_takes_the_pass_the_cost_model_predicts_faster() {
    let plan = |fused_forward, fused_input_grad| SbfPlan {
        forward_fused: fused_forward,
        input_grad_fused: fused_input_grad,
    };
    let cfg = SbfConfig::new(1, 1, 2);
    // C = N = 64, G = 2: forward fused iff 1.1·64·M + 2.8·128 < 64·64 (M ≤ 53),
    // input gradient iff 1.15·64·M + 6·128 < 64·64 (M ≤ 45).
    assert_eq!(cfg.plan(64, 64, 64), plan(false, false));
    assert_eq!(cfg.plan(64, 64, 48), plan(true, false));
    assert_eq!(cfg.plan(64, 64, 32), plan(true, true));
    // Against a dense conv predicted 1.5× faster (the channel layout of a small map), the
    // fused forward pays only while 1.1·64·M + 2.8·128 < 64·64 / 1.5 (M ≤ 33), the input
    // gradient while 1.15·64·M + 6·128 < 64·64 / 1.5 (M ≤ 26).
    let pixels = [1.0; 2];
    assert_eq!(
        cfg.plan_against(64, 64, 32, [1.5, 1.5], pixels),
        plan(true, false)
    );
    assert_eq!(cfg.plan_against(64, 64, 24, [1.5, 1.5], pixels), plan(true, true));
    assert_eq!(cfg.plan_against(64, 64, 32, [1.5, 1.0], pixels), plan(true, true));
    assert_eq!(
        cfg.plan_against(64, 64, 32, [5.0, 5.0], pixels),
        plan(false, false)
    );
    // Fused kernels in the channel layout as well, predicted 4.5× faster than in the pixel
    // layout where the dense conv is 5×: the forward pays while 1.1·64·M + 2.8·128 <
    // 64·64 · 4.5/5 (M ≤ 47), the input gradient while 1.15·64·M + 6·128 < 64·64 · 4.5/5 (M ≤ 39).
    assert_eq!(
        cfg.plan_against(64, 64, 40, [5.0; 2], [4.5; 2]),
        plan(true, false)
    );
    assert_eq!(cfg.plan_against(64, 64, 32, [5.0; 2], [4.5; 2]), plan(true, true));
    // C = N = 16: stage 2 weighs more (G·N against C·N): forward M ≤ 9, input gradient M ≤ 3.
    assert_eq!(cfg.plan(16, 16, 8), plan(true, false));
    assert_eq!(cfg.plan(16, 16, 2), plan(true, true));
    // The same rule at stride 2.
    assert_eq!(SbfConfig::new(2, 1, 2).plan(32, 64, 6), plan(true, true));
    let affine = SbfConfig {
        family: TransformFamily::Affine,
        ..cfg
    };
    assert_eq!(affine.plan(64, 64, 6), plan(false, false));
    let forced = |path| SbfConfig { path, ..cfg };
    assert_eq!(forced(SbfPath::Fused).plan(64, 64, 64), plan(true, true));
    assert_eq!(
        forced(SbfPath::EffectiveFilters).plan(64, 64, 6),
        plan(false, false)
    );
}

#[test]
#[should_panic(expected = "groups G = 3 must divide the 4 input channels")]
fn groups_that_do_not_divide_the_channels_are_rejected() {
    let mut rng = StdRng::seed_from_u64(8);
    let x = Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng);
    let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
    let t = Tensor::zeros(&[1, 3, 3, 3]);
    sbf_value(
        &x,
        &b,
        &t,
        &TemplateAssignment::round_robin(3, 2),
        config(1, 1, 3, SbfPath::Auto),
    );
}

#[test]
#[should_panic(expected = "must have shape [2, 2, 3, 3]")]
fn masks_of_the_wrong_shape_are_rejected() {
    let mut rng = StdRng::seed_from_u64(9);
    let x = Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng);
    let b = Tensor::normal(&[2, 4, 3, 3], 1.0, &mut rng);
    let t = Tensor::zeros(&[2, 1, 3, 3]);
    sbf_value(
        &x,
        &b,
        &t,
        &TemplateAssignment::round_robin(4, 2),
        config(1, 1, 2, SbfPath::Auto),
    );
}
