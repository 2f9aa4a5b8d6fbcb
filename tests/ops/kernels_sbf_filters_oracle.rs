//! `kernels::sbf_filters` is the oracle of the two-stage SBF kernels, so it gets
//! its own oracle: the formulas of SBF-NOTES §3 written out as plain loops.
//! Scalar masks: `Weff[n,i,kh,kw] = B[m(n),i,kh,kw] · T[row(n), g(i), kh, kw]`,
//! identity outputs copy their template. Affine / rotation: transforms whose
//! sampling points land exactly on taps (a one-column shift, a quarter turn)
//! must move the template's taps, with zeros where the point leaves the support.

use rand::{rngs::StdRng, SeedableRng};
use sbfnet::kernels::sbf::TemplateAssignment;
use sbfnet::kernels::sbf_filters::{effective_filters, TransformFamily};
use sbfnet::Tensor;

/// Weff [N, C, K, K] for `family` from B [M, C, K, K] and its transforms.
fn weff(
    family: TransformFamily,
    kernel: usize,
    groups: usize,
    assignment: &TemplateAssignment,
    templates: &Tensor,
    transforms: &[f32],
) -> Tensor {
    let channels = templates.shape[1];
    let mut out = Tensor::zeros(&[assignment.outputs(), channels, kernel, kernel]);
    effective_filters(
        family,
        kernel,
        groups,
        assignment,
        &templates.data,
        transforms,
        &mut out.data,
    );
    out
}

#[test]
fn scalar_masks_equal_the_formula_with_groups_and_kept_filters_in_place() {
    let mut rng = StdRng::seed_from_u64(41);
    let (n_out, channels, kernel, groups) = (7, 6, 3, 3);
    let assignment = TemplateAssignment::from_kept_outputs(n_out, &[5, 0, 3]);
    let m = assignment.templates();
    let templates = Tensor::normal(&[m, channels, kernel, kernel], 1.0, &mut rng);
    let masks = Tensor::normal(&[n_out - m, groups, kernel, kernel], 1.0, &mut rng);
    let got = weff(
        TransformFamily::Scalar,
        kernel,
        groups,
        &assignment,
        &templates,
        &masks.data,
    );

    let group_size = channels / groups;
    for n in 0..n_out {
        let template = assignment.template_of[n];
        for i in 0..channels {
            for kh in 0..kernel {
                for kw in 0..kernel {
                    let b = templates.data[((template * channels + i) * kernel + kh) * kernel + kw];
                    let expected = match assignment.mask_row[n] {
                        None => b,
                        Some(row) => {
                            let g = i / group_size;
                            b * masks.data[((row * groups + g) * kernel + kh) * kernel + kw]
                        }
                    };
                    let at = ((n * channels + i) * kernel + kh) * kernel + kw;
                    assert_eq!(got.data[at], expected, "Weff[{n},{i},{kh},{kw}]");
                }
            }
        }
    }
    // The kept filters keep their output channels: output 5 is template 0, output 3 template 2.
    assert_eq!(assignment.template_of[5], 0);
    assert_eq!(assignment.mask_row[5], None);
    assert_eq!(assignment.template_of[3], 2);
}

/// Checks that every transformed output reads template tap `source(kh, kw)` (None: zero).
fn assert_moves_taps(
    got: &Tensor,
    templates: &Tensor,
    kernel: usize,
    source: impl Fn(usize, usize) -> Option<(usize, usize)>,
) {
    let channels = templates.shape[1];
    // Output 1 is the transformed copy of template 0 (N = 2, M = 1).
    for i in 0..channels {
        for kh in 0..kernel {
            for kw in 0..kernel {
                let expected = source(kh, kw)
                    .map(|(sh, sw)| templates.data[(i * kernel + sh) * kernel + sw])
                    .unwrap_or(0.0);
                let value = got.data[((channels + i) * kernel + kh) * kernel + kw];
                assert!(
                    (value - expected).abs() < 1e-5,
                    "Weff[1,{i},{kh},{kw}] = {value}, expected {expected}"
                );
            }
        }
    }
}

#[test]
fn affine_shift_and_quarter_turn_move_taps_exactly() {
    let mut rng = StdRng::seed_from_u64(42);
    let (kernel, channels, groups) = (3, 2, 1);
    let assignment = TemplateAssignment::round_robin(2, 1);
    let templates = Tensor::normal(&[1, channels, kernel, kernel], 1.0, &mut rng);
    let c = (kernel - 1) / 2;

    // A = [[1, 0, 1], [0, 1, 0]]: tap (u, v) reads the template at (u + 1, v), one column right.
    let shift = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    let got = weff(
        TransformFamily::Affine,
        kernel,
        groups,
        &assignment,
        &templates,
        &shift,
    );
    assert_moves_taps(&got, &templates, kernel, |kh, kw| {
        (kw + 1 < kernel).then_some((kh, kw + 1))
    });
    // Output 0 is the template itself.
    assert_eq!(got.data[..templates.len()], templates.data[..]);

    // Rotation by θ = π/2: (px, py) = (u·cos θ − v·sin θ, u·sin θ + v·cos θ) = (−v, u).
    let quarter = [std::f32::consts::FRAC_PI_2];
    let got = weff(
        TransformFamily::Rotation,
        kernel,
        groups,
        &assignment,
        &templates,
        &quarter,
    );
    assert_moves_taps(&got, &templates, kernel, |kh, kw| {
        let (u, v) = (kw as isize - c as isize, kh as isize - c as isize);
        let (px, py) = (-v, u);
        Some(((py + c as isize) as usize, (px + c as isize) as usize))
    });
}
