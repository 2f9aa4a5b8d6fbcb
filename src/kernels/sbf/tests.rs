//! The fast kernels against their naive twins.

use super::*;
use crate::kernels::conv::ConvLayout;
use crate::kernels::simd::Isa;
use crate::tensor::{max_scaled_difference, Tensor};
use rand::{rngs::StdRng, SeedableRng};

fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
    Tensor::normal(&[len], 1.0, rng).data
}

/// Odd sizes, channels not a multiple of 8, planes with SIMD tails, both strides.
fn shapes() -> Vec<(SbfShape, TemplateAssignment)> {
    let mut out = Vec::new();
    for (batch, c, h, w, n, m, k, s, p, g) in [
        (2, 6, 7, 5, 5, 2, 3, 1, 1, 2),
        (3, 9, 9, 11, 7, 3, 3, 2, 1, 3),
        (1, 4, 6, 6, 4, 1, 1, 1, 0, 4),
        (2, 10, 8, 9, 6, 5, 5, 2, 2, 1),
        (2, 12, 5, 19, 9, 4, 3, 1, 0, 2),
        (2, 6, 6, 11, 5, 3, 5, 1, 2, 3),
        (1, 8, 3, 9, 6, 2, 3, 1, 1, 2),
        (1, 4, 11, 12, 5, 2, 3, 1, 1, 2),
    ] {
        let shape = SbfShape {
            batch,
            in_channels: c,
            in_height: h,
            in_width: w,
            out_channels: n,
            templates: m,
            kernel: k,
            stride: s,
            padding: p,
            groups: g,
        };
        shape.validate("test");
        // A scattered assignment, as pruning would hand over.
        let kept: Vec<usize> = (0..m).map(|j| (j * n) / m + (n / m) / 2).collect();
        out.push((shape, TemplateAssignment::from_kept_outputs(n, &kept)));
    }
    out
}

#[test]
fn stage1_input_grad_is_the_transpose_of_stage1_forward() {
    // <stage1(X), dP> = <X, stage1ᵀ(dP)> for the naive pair, so the solved-for (h, w) are right.
    let mut rng = StdRng::seed_from_u64(5);
    for (shape, _) in shapes() {
        let x = random(shape.input_len(), &mut rng);
        let b = random(shape.templates_len(), &mut rng);
        let dp = random(shape.maps_len(), &mut rng);
        let mut p = vec![0.0; shape.maps_len()];
        stage1_forward_naive(&shape, &x, &b, &mut p);
        let mut dx = vec![0.0; shape.input_len()];
        stage1_input_grad_naive(&shape, &dp, &b, &mut dx);
        let lhs: f64 = p.iter().zip(&dp).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
        assert!(
            (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs} for {shape:?}"
        );
    }
}

#[test]
fn assignments_put_kept_filters_in_place_and_spread_pruned_ones_round_robin() {
    let a = TemplateAssignment::from_kept_outputs(6, &[1, 4]);
    assert_eq!(a.template_of, vec![0, 0, 1, 0, 1, 1]);
    assert_eq!(a.mask_row, vec![Some(0), None, Some(1), Some(2), None, Some(3)]);
    a.validate("test", 6, 2);
    let r = TemplateAssignment::round_robin(5, 2);
    assert_eq!(r.template_of, vec![0, 1, 0, 1, 0]);
    assert_eq!(r.mask_row, vec![None, None, Some(0), Some(1), Some(2)]);
    assert_eq!(r.identity_outputs(), vec![0, 1]);
}

#[test]
#[should_panic(expected = "two identity outputs")]
fn an_assignment_with_a_doubled_template_is_rejected() {
    let a = TemplateAssignment {
        template_of: vec![0, 0, 1],
        mask_row: vec![None, None, Some(0)],
    };
    a.validate("sbf_conv2d", 3, 2);
}

/// `fast` equals `naive` to 1e-5 of the largest |naive| value: a sum of a few hundred float32
/// terms with cancellation can miss its own small value by more than 1e-5 of itself in either
/// summation order, but never the scale of the tensor.
fn assert_close_to_scale(name: &str, fast: &[f32], naive: &[f32]) {
    let scale = naive.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = max_scaled_difference(fast, naive, 0.0, 1e-5 * scale.max(1e-30));
    assert!(
        d <= 1.0,
        "{name}: fast differs from naive by {d} × 1e-5 of the largest value {scale}"
    );
}

/// The grid: G ∈ {1, 2, 4}, stride ∈ {1, 2}, padding ∈ {0, 1}, K ∈ {1, 3, 5},
/// M ∈ {1, N/2, N−1}, with non-square inputs, batch 1 and 3, channel counts that are not
/// multiples of 8 and maps narrower than a tile. Each case: `(shape, assignment)`.
fn fused_grid() -> Vec<(SbfShape, TemplateAssignment)> {
    let mut cases = Vec::new();
    for (index, (groups, stride, padding, kernel)) in [1, 2, 4]
        .into_iter()
        .flat_map(|g| [1, 2].into_iter().map(move |s| (g, s)))
        .flat_map(|(g, s)| [0, 1].into_iter().map(move |p| (g, s, p)))
        .flat_map(|(g, s, p)| [1, 3, 5].into_iter().map(move |k| (g, s, p, k)))
        .enumerate()
    {
        let out_channels = [7, 12, 13][index % 3];
        for templates in [1, out_channels / 2, out_channels - 1] {
            let (in_height, in_width) = [(6, 11), (9, 5), (13, 20)][(index + templates) % 3];
            let shape = SbfShape {
                batch: [1, 3][index % 2],
                in_channels: groups * [3, 5][(index / 2) % 2],
                in_height,
                in_width,
                out_channels,
                templates,
                kernel,
                stride,
                padding,
                groups,
            };
            if in_height + 2 * padding < kernel || in_width + 2 * padding < kernel {
                continue;
            }
            shape.validate("fused grid");
            let kept: Vec<usize> = (0..templates).map(|j| (j * out_channels) / templates).collect();
            cases.push((shape, TemplateAssignment::from_kept_outputs(out_channels, &kept)));
        }
    }
    cases
}

/// Runs `work` on a pool of `threads` threads.
fn on_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(work)
}

#[test]
fn fused_forward_equals_the_naive_stages_over_the_grid_on_1_2_and_3_threads() {
    if !Isa::Avx512.is_supported() {
        eprintln!("skipped: the AVX-512 path (this CPU has no AVX-512F+VL)");
    }
    let mut rng = StdRng::seed_from_u64(21);
    let cases = fused_grid();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for (shape, assignment) in cases {
        let x = random(shape.input_len(), &mut rng);
        let b = random(shape.templates_len(), &mut rng);
        let t = random(shape.masks_len(), &mut rng);
        let mut p_naive = vec![0.0; shape.maps_len()];
        stage1_forward_naive(&shape, &x, &b, &mut p_naive);
        let mut y_naive = vec![0.0; shape.output_len()];
        gather_forward_naive(&shape, &assignment, &t, &p_naive, &mut y_naive);
        let run = |isa, threads| {
            on_threads(threads, || {
                let mut y = vec![9.0; shape.output_len()];
                fused_forward_with(isa, &shape, &assignment, &x, &b, &t, &mut y);
                y
            })
        };
        let y = run(Isa::Avx2, 1);
        assert_close_to_scale(&format!("fused_forward {shape:?}"), &y, &y_naive);
        for threads in [2, 3] {
            assert!(
                run(Isa::Avx2, threads) == y,
                "fused_forward differs on {threads} threads: {shape:?}"
            );
        }
        // Each output sums in one order whatever the vector: AVX-512 gives the same bits.
        if Isa::Avx512.is_supported() {
            assert!(
                run(Isa::Avx512, 2) == y,
                "fused_forward differs on AVX-512: {shape:?}"
            );
        }
    }
}

#[test]
fn fused_backward_equals_the_naive_stages_over_the_grid_on_1_2_and_3_threads() {
    if !Isa::Avx512.is_supported() {
        eprintln!("skipped: the AVX-512 path (this CPU has no AVX-512F+VL)");
    }
    let mut rng = StdRng::seed_from_u64(22);
    for (shape, assignment) in fused_grid() {
        let x = random(shape.input_len(), &mut rng);
        let b = random(shape.templates_len(), &mut rng);
        let t = random(shape.masks_len(), &mut rng);
        let dy = random(shape.output_len(), &mut rng);
        // Naive chain: P; dT from P; dP; dB and dX from dP (all accumulating onto 0.5).
        let mut p_naive = vec![0.0; shape.maps_len()];
        stage1_forward_naive(&shape, &x, &b, &mut p_naive);
        let mut dt_naive = vec![0.5; shape.masks_len()];
        gather_masks_grad_naive(&shape, &assignment, &p_naive, &dy, &mut dt_naive);
        let mut dp_naive = vec![0.0; shape.maps_len()];
        gather_maps_grad_naive(&shape, &assignment, &t, &dy, &mut dp_naive);
        let mut db_naive = vec![0.5; shape.templates_len()];
        stage1_templates_grad_naive(&shape, &x, &dp_naive, &mut db_naive);
        let mut dx_naive = vec![0.5; shape.input_len()];
        stage1_input_grad_naive(&shape, &dp_naive, &b, &mut dx_naive);
        let run_with = |isa, threads, want: [bool; 3]| {
            on_threads(threads, || {
                let mut dx = vec![0.5; shape.input_len()];
                let mut db = vec![0.5; shape.templates_len()];
                let mut dt = vec![0.5; shape.masks_len()];
                let grads = SbfGrads {
                    input: want[0].then_some(&mut dx[..]),
                    templates: want[1].then_some(&mut db[..]),
                    masks: want[2].then_some(&mut dt[..]),
                };
                fused_backward_with(isa, &shape, &assignment, &x, &b, &t, &dy, grads);
                (dx, db, dt)
            })
        };
        let run = |threads, want| run_with(Isa::Avx2, threads, want);
        if Isa::Avx512.is_supported() {
            let (dx, db, dt) = run_with(Isa::Avx512, 2, [true; 3]);
            assert_close_to_scale(&format!("AVX-512 fused_backward dX {shape:?}"), &dx, &dx_naive);
            assert_close_to_scale(&format!("AVX-512 fused_backward dB {shape:?}"), &db, &db_naive);
            assert_close_to_scale(&format!("AVX-512 fused_backward dT {shape:?}"), &dt, &dt_naive);
        }
        for threads in [1, 2, 3] {
            let (dx, db, dt) = run(threads, [true; 3]);
            assert_close_to_scale(&format!("fused_backward dX {shape:?}"), &dx, &dx_naive);
            assert_close_to_scale(&format!("fused_backward dB {shape:?}"), &db, &db_naive);
            assert_close_to_scale(&format!("fused_backward dT {shape:?}"), &dt, &dt_naive);
            assert!(
                run(threads, [true; 3]) == (dx.clone(), db.clone(), dt.clone()),
                "fused_backward differs from run to run on {threads} threads: {shape:?}"
            );
            // A gradient not asked for is left alone; the others do not change.
            let (dx_alone, db_untouched, dt_untouched) = run(threads, [true, false, false]);
            assert!(dx_alone == dx && db_untouched.iter().chain(&dt_untouched).all(|&v| v == 0.5));
            let (_, db_alone, dt_alone) = run(threads, [false, true, true]);
            assert!(db_alone == db && dt_alone == dt);
        }
    }
}

/// dX alone of [`fused_backward_layout_with`] from X, B, T and dY, added onto 0.5.
fn input_grad_alone(
    isa: Isa,
    layout: ConvLayout,
    shape: &SbfShape,
    assignment: &TemplateAssignment,
    [x, b, t, dy]: [&[f32]; 4],
) -> Vec<f32> {
    let mut dx = vec![0.5; shape.input_len()];
    let grads = SbfGrads {
        input: Some(&mut dx[..]),
        templates: None,
        masks: None,
    };
    fused_backward_layout_with(isa, layout, shape, assignment, x, b, t, dy, grads);
    dx
}

#[test]
fn the_channel_layout_gives_the_pixel_layouts_floats_over_the_grid() {
    // Batches of 1, 7 and 13 images: one task with repeated rows, then whole and partial tasks
    // of 6. AVX2 runs the channel layout forced (it never picks it).
    let mut rng = StdRng::seed_from_u64(23);
    for (index, (shape, assignment)) in fused_grid().into_iter().enumerate() {
        let shape = SbfShape {
            batch: [1, 7, 13][index % 3],
            ..shape
        };
        let x = random(shape.input_len(), &mut rng);
        let b = random(shape.templates_len(), &mut rng);
        let t = random(shape.masks_len(), &mut rng);
        let dy = random(shape.output_len(), &mut rng);
        for isa in Isa::available() {
            let forward = |layout| {
                on_threads(2, || {
                    let mut y = vec![9.0; shape.output_len()];
                    fused_forward_layout_with(isa, layout, &shape, &assignment, &x, &b, &t, &mut y);
                    y
                })
            };
            assert!(
                forward(ConvLayout::ChannelVectors) == forward(ConvLayout::PixelVectors),
                "{isa:?} forward: the layouts differ for {shape:?}"
            );
            let input_grad = |layout| {
                let operands: [&[f32]; 4] = [&x, &b, &t, &dy];
                on_threads(2, || input_grad_alone(isa, layout, &shape, &assignment, operands))
            };
            assert!(
                input_grad(ConvLayout::ChannelVectors) == input_grad(ConvLayout::PixelVectors),
                "{isa:?} input gradient: the layouts differ for {shape:?}"
            );
        }
    }
}

#[test]
fn a_template_with_many_outputs_gets_as_many_slots() {
    // Template 0 copied by 9 of 12 outputs, template 1 by 3: a block of slots for each output of
    // template 0, empty for template 1 past its 3 (their lanes thrown away).
    let shape = SbfShape {
        batch: 13,
        in_channels: 8,
        in_height: 5,
        in_width: 4,
        out_channels: 12,
        templates: 2,
        kernel: 3,
        stride: 1,
        padding: 1,
        groups: 2,
    };
    let mut template_of = vec![0; 12];
    template_of[3] = 1;
    template_of[7] = 1;
    template_of[11] = 1;
    let assignment = TemplateAssignment::with_templates(&[0, 3], template_of);
    let mut rng = StdRng::seed_from_u64(24);
    let x = random(shape.input_len(), &mut rng);
    let b = random(shape.templates_len(), &mut rng);
    let t = random(shape.masks_len(), &mut rng);
    let mut p_naive = vec![0.0; shape.maps_len()];
    stage1_forward_naive(&shape, &x, &b, &mut p_naive);
    let mut y_naive = vec![0.0; shape.output_len()];
    gather_forward_naive(&shape, &assignment, &t, &p_naive, &mut y_naive);
    for isa in Isa::available() {
        let mut y = vec![9.0; shape.output_len()];
        fused_forward_layout_with(
            isa,
            ConvLayout::ChannelVectors,
            &shape,
            &assignment,
            &x,
            &b,
            &t,
            &mut y,
        );
        assert_close_to_scale(&format!("{isa:?} channel-layout forward"), &y, &y_naive);
        let dy = random(shape.output_len(), &mut rng);
        let input_grad = |layout| input_grad_alone(isa, layout, &shape, &assignment, [&x, &b, &t, &dy]);
        assert!(input_grad(ConvLayout::ChannelVectors) == input_grad(ConvLayout::PixelVectors));
    }
}
