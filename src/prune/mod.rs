//! Generalised pruning: saliency, the global ramp, and the choice of templates.

pub mod convert;
pub mod ramp;
pub mod schedule;
pub mod taylor;

pub use ramp::{prune_step, silence_pruned_channels, PruneSettings, PruneState};
pub use schedule::{l1_norms, select_templates, LayerFilters, Ramp, Saliency};
pub use taylor::TaylorScores;

/// Test helper: the evaluation-mode logits of `model` on a fixed random batch [2, 3, 32, 32],
/// to check that a conversion or a pruning step changes no output.
#[cfg(test)]
pub(crate) fn test_logits(model: &crate::nn::Model, store: &crate::autograd::ParamStore) -> crate::Tensor {
    use rand::{rngs::StdRng, SeedableRng};
    let mut tape = crate::autograd::Tape::new(store, crate::autograd::Mode::Eval);
    let x = tape.input(crate::Tensor::normal(
        &[2, 3, 32, 32],
        1.0,
        &mut StdRng::seed_from_u64(9),
    ));
    let y = model.forward(&mut tape, x);
    tape.value(y).clone()
}
