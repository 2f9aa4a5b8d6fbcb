//! Numerical gradient checking: the analytic gradient of every input against
//! central finite differences.
//!
//! The function under test may return any shape; it is reduced to the scalar
//! `L = Σ_j y[j]·r[j]` with a fixed random projection r (so every output element
//! matters and no gradient is trivially symmetric), accumulated in f64.
//! For each input element x_i:
//!
//!   numeric_i = (L(x + h·e_i) − L(x − h·e_i)) / 2h
//!   passes if |analytic_i − numeric_i| ≤ atol + rtol·|numeric_i|

use crate::autograd::{Mode, ParamStore, Tape, Var};
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::fmt;

/// Step and tolerances of a gradient check.
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step h.
    pub step: f32,
    pub rtol: f32,
    pub atol: f32,
    /// Seed of the projection r.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    /// Chosen for f32 forward passes on O(1) values: h = 1e-2 keeps rounding
    /// noise (~1e-7·|L|/h) well under the tolerances, while the O(h²)
    /// truncation error of smooth ops stays below them too.
    fn default() -> Self {
        GradcheckOptions {
            step: 1e-2,
            rtol: 1e-2,
            atol: 1e-3,
            seed: 0x5bf,
        }
    }
}

/// The first element whose analytic and numeric gradients disagree.
#[derive(Clone, Debug)]
pub struct GradcheckFailure {
    pub input: usize,
    pub element: usize,
    pub analytic: f64,
    pub numeric: f64,
    pub shape: Vec<usize>,
}

impl fmt::Display for GradcheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gradient of input {} (shape {:?}) element {}: analytic {:.6e}, numeric {:.6e}",
            self.input, self.shape, self.element, self.analytic, self.numeric
        )
    }
}

impl std::error::Error for GradcheckFailure {}

/// What a passing check measured.
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// Number of gradient elements compared.
    pub checked: usize,
    /// Largest |analytic − numeric| / (atol + rtol·|numeric|) seen (≤ 1 passes).
    pub worst_ratio: f64,
}

/// Checks the gradient of `build` with respect to every tensor in `inputs`.
/// `build` gets the inputs as leaves on a fresh tape and returns the output.
pub fn check_gradients(
    build: impl Fn(&mut Tape, &[Var]) -> Var,
    inputs: &[Tensor],
    options: &GradcheckOptions,
) -> Result<GradcheckReport, GradcheckFailure> {
    let store = ParamStore::default();

    // Analytic: one backward pass seeded with r.
    let mut tape = Tape::new(&store, Mode::Train);
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let output = build(&mut tape, &vars);
    let output_shape = tape.value(output).shape.clone();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let projection = Tensor::normal(&output_shape, 1.0, &mut rng);
    tape.backward_with(output, projection.clone());
    let analytic: Vec<Tensor> = vars
        .iter()
        .zip(inputs)
        .map(|(v, t)| tape.grad(*v).cloned().unwrap_or_else(|| Tensor::zeros(&t.shape)))
        .collect();

    // L(inputs) = Σ y·r in f64, evaluated on a fresh tape (the same mode, so
    // batch norm uses batch statistics exactly as in the analytic pass).
    let loss = |perturbed: &[Tensor]| -> f64 {
        let mut tape = Tape::new(&store, Mode::Train);
        let vars: Vec<Var> = perturbed.iter().map(|t| tape.input(t.clone())).collect();
        let y = build(&mut tape, &vars);
        tape.value(y)
            .data
            .iter()
            .zip(&projection.data)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    };

    let mut report = GradcheckReport {
        checked: 0,
        worst_ratio: 0.0,
    };
    let mut work = inputs.to_vec();
    for (input, grad) in analytic.iter().enumerate() {
        for element in 0..work[input].len() {
            let original = work[input].data[element];
            work[input].data[element] = original + options.step;
            let plus = loss(&work);
            work[input].data[element] = original - options.step;
            let minus = loss(&work);
            work[input].data[element] = original;
            // The step actually taken in f32 (x ± h is rounded).
            let taken = (original + options.step) as f64 - (original - options.step) as f64;
            let numeric = (plus - minus) / taken;
            let analytic_value = grad.data[element] as f64;
            let ratio = (analytic_value - numeric).abs()
                / (options.atol as f64 + options.rtol as f64 * numeric.abs());
            report.checked += 1;
            report.worst_ratio = report.worst_ratio.max(ratio);
            if ratio > 1.0 || !analytic_value.is_finite() {
                return Err(GradcheckFailure {
                    input,
                    element,
                    analytic: analytic_value,
                    numeric,
                    shape: work[input].shape.clone(),
                });
            }
        }
    }
    Ok(report)
}

/// Moves every value at least `margin` away from 0 (keeping its sign), so a
/// finite-difference step never crosses the kink of ReLU-like ops.
pub fn away_from_zero(mut t: Tensor, margin: f32) -> Tensor {
    for v in &mut t.data {
        if v.abs() < margin {
            *v = if *v < 0.0 { -margin } else { margin } + *v;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;

    /// A deliberately wrong op: y = x², with the backward of y = x² + x.
    fn square_with_wrong_backward(tape: &mut Tape, x: Var) -> Var {
        let xv = tape.value(x).clone();
        let y = Tensor::from_vec(&xv.shape, xv.data.iter().map(|v| v * v).collect());
        tape.push(y, &[x], move |grad_y, ctx| {
            let xv = ctx.value(x);
            if let Some(g) = ctx.grad(x) {
                for i in 0..g.len() {
                    g.data[i] += grad_y.data[i] * (2.0 * xv.data[i] + 1.0);
                }
            }
        })
    }

    /// The same op with the right backward.
    fn square(tape: &mut Tape, x: Var) -> Var {
        ops::mul(tape, x, x)
    }

    #[test]
    fn checker_fails_on_a_wrong_backward_and_passes_the_right_one() {
        let mut rng = StdRng::seed_from_u64(1);
        let x = Tensor::normal(&[3, 4], 1.0, &mut rng);
        let opts = GradcheckOptions::default();
        let wrong = check_gradients(|t, v| square_with_wrong_backward(t, v[0]), &[x.clone()], &opts);
        let failure = wrong.expect_err("a wrong backward must fail the check");
        assert!((failure.analytic - failure.numeric).abs() > 0.1, "{failure}");
        let right = check_gradients(|t, v| square(t, v[0]), &[x], &opts).expect("right backward passes");
        assert_eq!(right.checked, 12);
        assert!(right.worst_ratio < 1.0);
    }

    #[test]
    fn checker_fails_when_a_gradient_is_missing() {
        // y = a ⊙ b, but the backward forgets b.
        let a = Tensor::full(&[2], 2.0);
        let b = Tensor::full(&[2], 3.0);
        let result = check_gradients(
            |tape, v| {
                let av = tape.value(v[0]).clone();
                let bv = tape.value(v[1]).clone();
                let y = Tensor::from_vec(&[2], av.data.iter().zip(&bv.data).map(|(x, y)| x * y).collect());
                let (va, vb) = (v[0], v[1]);
                tape.push(y, &[va, vb], move |gy, ctx| {
                    let bv = ctx.value(vb);
                    if let Some(g) = ctx.grad(va) {
                        for i in 0..2 {
                            g.data[i] += gy.data[i] * bv.data[i];
                        }
                    }
                })
            },
            &[a, b],
            &GradcheckOptions::default(),
        );
        assert_eq!(result.unwrap_err().input, 1);
    }
}
