//! Knowledge distillation from a teacher's logits (Hinton et al. 2015; SBF-NOTES §6.3).
//!
//! ```text
//!   student logits s [N, K], teacher logits t [N, K] (constants), temperature τ, weight w:
//!   p[n,k]  = softmax(s[n] / τ)[k]          (the student, softened)
//!   q[n,k]  = softmax(t[n] / τ)[k]          (the teacher, softened)
//!   KD      = (1/N) Σ_n Σ_k q[n,k] · (log q[n,k] − log p[n,k])     (KL(q ‖ p), per image)
//!   L       = (1 − w) · CE(s, labels) + w · τ² · KD
//!   ∂(τ²·KD)/∂s[n,k] = τ · (p[n,k] − q[n,k]) / N
//! ```
//!
//! The τ² keeps the soft term's gradient on the scale of the hard one's as τ grows (Hinton's
//! choice). v1 of the paper used w = 1 (ω = 0 in its eq. 7: teacher only) and τ = 5 on CIFAR.

use super::loss::{cross_entropy, log_softmax_rows};
use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), the batch mean, as a `[1]` tensor. `teacher` [N, K] is a
/// constant (no gradient flows into the teacher).
pub fn soft_target_loss(tape: &mut Tape, logits: Var, teacher: &Tensor, temperature: f32) -> Var {
    let s = tape.value(logits);
    assert_eq!(
        s.shape, teacher.shape,
        "soft_target_loss: student logits {:?} and teacher logits {:?} differ",
        s.shape, teacher.shape
    );
    assert!(
        temperature > 0.0,
        "soft_target_loss: temperature {temperature} must be > 0"
    );
    let [n_batch, classes] = s.shape[..] else {
        panic!("soft_target_loss: logits {:?} must be [N, K]", s.shape)
    };
    let soften = |v: &[f32]| v.iter().map(|x| x / temperature).collect::<Vec<f32>>();
    let log_p = log_softmax_rows(&soften(&s.data), classes); // [N, K]
    let log_q = log_softmax_rows(&soften(&teacher.data), classes); // [N, K]
    let q: Vec<f32> = log_q.iter().map(|v| v.exp()).collect();
    let kl: f64 = (0..n_batch * classes)
        .map(|i| q[i] as f64 * (log_q[i] - log_p[i]) as f64)
        .sum();
    let value = temperature as f64 * temperature as f64 * kl / n_batch as f64;
    let y = Tensor::from_vec(&[1], vec![value as f32]);
    tape.push(y, &[logits], move |grad_y, ctx| {
        if let Some(gs) = ctx.grad(logits) {
            let scale = grad_y.data[0] * temperature / n_batch as f32;
            for i in 0..n_batch * classes {
                gs.data[i] += scale * (log_p[i].exp() - q[i]);
            }
        }
    })
}

/// L = (1 − w)·CE(s, labels; smoothing) + w·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)).
/// `weight` w ∈ [0, 1]: 0 is plain cross-entropy, 1 learns from the teacher only.
pub fn distillation_loss(
    tape: &mut Tape,
    logits: Var,
    teacher: &Tensor,
    labels: &[usize],
    temperature: f32,
    weight: f32,
    smoothing: f32,
) -> Var {
    assert!(
        (0.0..=1.0).contains(&weight),
        "distillation_loss: weight {weight} must be in [0, 1]"
    );
    let hard = cross_entropy(tape, logits, labels, smoothing);
    let soft = soft_target_loss(tape, logits, teacher, temperature);
    // L = (1 − w)·hard + w·soft: a two-input weighted sum, its backward the weights.
    let value = (1.0 - weight) * tape.value(hard).data[0] + weight * tape.value(soft).data[0];
    tape.push(
        Tensor::from_vec(&[1], vec![value]),
        &[hard, soft],
        move |grad, ctx| {
            if let Some(g) = ctx.grad(hard) {
                g.data[0] += (1.0 - weight) * grad.data[0];
            }
            if let Some(g) = ctx.grad(soft) {
                g.data[0] += weight * grad.data[0];
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Mode, ParamStore};
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn gradcheck_distillation_at_several_temperatures_and_weights() {
        let mut rng = StdRng::seed_from_u64(21);
        let s = Tensor::normal(&[4, 5], 2.0, &mut rng);
        let t = Tensor::normal(&[4, 5], 3.0, &mut rng);
        let labels = [1, 4, 0, 0];
        for (temperature, weight, smoothing) in
            [(1.0, 1.0, 0.0), (5.0, 1.0, 0.0), (4.0, 0.3, 0.1), (2.0, 0.0, 0.0)]
        {
            check_gradients(
                |tape, v| distillation_loss(tape, v[0], &t, &labels, temperature, weight, smoothing),
                &[s.clone()],
                &GradcheckOptions::default(),
            )
            .unwrap_or_else(|e| panic!("τ {temperature} w {weight}: {e}"));
        }
    }

    #[test]
    fn the_soft_loss_is_zero_when_the_student_matches_the_teacher_and_positive_otherwise() {
        let store = ParamStore::default();
        let mut tape = Tape::new(&store, Mode::Eval);
        let t = Tensor::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 0.0, -1.0, 4.0]);
        let same = tape.input(t.clone());
        let loss = soft_target_loss(&mut tape, same, &t, 5.0);
        assert!(tape.value(loss).data[0].abs() < 1e-6);
        // Shifting a row by a constant changes no probability.
        let shifted = tape.input(Tensor::from_vec(&[2, 3], vec![11.0, 12.0, 13.0, 0.0, -1.0, 4.0]));
        let loss = soft_target_loss(&mut tape, shifted, &t, 5.0);
        assert!(tape.value(loss).data[0].abs() < 1e-5);
        // Uniform student against a one-hot-ish teacher at τ = 1: KL = log K − H(q).
        let uniform = tape.input(Tensor::zeros(&[2, 3]));
        let loss = soft_target_loss(&mut tape, uniform, &t, 1.0);
        let value = tape.value(loss).data[0] as f64;
        let q = crate::ops::loss::softmax_rows(&t.data, 3);
        let entropy: f64 = q.iter().map(|&p| -(p as f64) * (p as f64).ln()).sum::<f64>() / 2.0;
        assert!((value - (3f64.ln() - entropy)).abs() < 1e-5, "{value}");
    }
}
