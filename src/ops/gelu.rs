//! GELU (the exact form, as PyTorch's `nn.GELU()`):
//!
//! ```text
//!   y = x · Φ(x) = ½ · x · (1 + erf(x / √2))
//!   ∂y/∂x = Φ(x) + x · φ(x),   φ(x) = exp(−x²/2) / √(2π)
//! ```

use super::unary::elementwise_x8;
use crate::autograd::{Tape, Var};
use wide::f32x8;

/// erf(x) by Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7 (Rust's `erf` is not
/// stable yet): erf(x) = 1 − t·(a1 + t·(a2 + …))·exp(−x²), t = 1/(1 + p·|x|), odd in x, for
/// 8 lanes at a time (`wide`'s `exp`, within a few ulp of libm's). In f32 the rounding adds
/// about as much again, below GELU's float32 resolution at its scale. Scalar twin:
/// `tests::erf_scalar`.
#[inline(always)]
fn erf(x: f32x8) -> f32x8 {
    let t = f32x8::ONE / x.abs().mul_add(f32x8::splat(0.327_591_1), f32x8::ONE);
    let poly = t * t.mul_add(
        t.mul_add(
            t.mul_add(
                t.mul_add(f32x8::splat(1.061_405_4), f32x8::splat(-1.453_152)),
                f32x8::splat(1.421_413_8),
            ),
            f32x8::splat(-0.284_496_74),
        ),
        f32x8::splat(0.254_829_6),
    );
    (f32x8::ONE - poly * (-x * x).exp()).copysign(x)
}

/// Φ(x), the standard normal CDF.
#[inline(always)]
fn normal_cdf(x: f32x8) -> f32x8 {
    f32x8::splat(0.5) * (f32x8::ONE + erf(x * f32x8::splat(std::f32::consts::FRAC_1_SQRT_2)))
}

/// φ(x), the standard normal density.
#[inline(always)]
fn normal_pdf(x: f32x8) -> f32x8 {
    let scale = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    (f32x8::splat(-0.5) * x * x).exp() * f32x8::splat(scale)
}

/// y = GELU(x), elementwise, any shape.
pub fn gelu(tape: &mut Tape, x: Var) -> Var {
    elementwise_x8(
        tape,
        x,
        |v| v * normal_cdf(v),
        // ∂y/∂x = Φ(x) + x·φ(x)
        |v| normal_cdf(v) + v * normal_pdf(v),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use crate::tensor::Tensor;
    use rand::{rngs::StdRng, SeedableRng};

    /// The scalar formulas, straight from the module docs (libm's `exp`).
    fn erf_scalar(x: f32) -> f32 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let poly =
            t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
        (1.0 - poly * (-x * x).exp()).copysign(x)
    }

    #[test]
    fn the_vector_gelu_and_its_derivative_match_the_scalar_formulas() {
        let values: Vec<f32> = (-4000..=4000)
            .map(|i| i as f32 * 0.002)
            .chain([-30.0, 30.0, 0.0])
            .collect();
        for v in values {
            let lanes = |f: fn(f32x8) -> f32x8| f(f32x8::splat(v)).to_array()[0];
            let cdf = 0.5 * (1.0 + erf_scalar(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f32::consts::PI).sqrt();
            let (y, dy) = (v * cdf, cdf + v * pdf);
            assert!(
                (lanes(|x| x * normal_cdf(x)) - y).abs() <= 1e-6 * (1.0 + y.abs()),
                "GELU({v})"
            );
            assert!(
                (lanes(|x| normal_cdf(x) + x * normal_pdf(x)) - dy).abs() <= 1e-6 * (1.0 + dy.abs()),
                "GELU'({v})"
            );
        }
    }

    #[test]
    fn gradcheck_gelu() {
        let x = Tensor::normal(&[2, 3, 4, 5], 2.0, &mut StdRng::seed_from_u64(2));
        check_gradients(|tape, v| gelu(tape, v[0]), &[x], &GradcheckOptions::default()).unwrap();
    }

    #[test]
    fn gelu_matches_known_values() {
        // PyTorch: torch.nn.functional.gelu(torch.tensor([-3., -1., -0.5, 0., 0.5, 1., 3.]))
        let expected = [
            -0.004_050_225,
            -0.158_655_26,
            -0.154_268_77,
            0.0,
            0.345_731_23,
            0.841_344_7,
            2.995_949_7,
        ];
        let store = crate::autograd::ParamStore::default();
        let mut tape = Tape::new(&store, crate::autograd::Mode::Eval);
        let x = tape.input(Tensor::from_vec(&[7], vec![-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]));
        let y = gelu(&mut tape, x);
        for (got, want) in tape.value(y).data.iter().zip(expected) {
            assert!((got - want).abs() < 2e-6, "{got} vs {want}");
        }
    }
}
