//! One step of generalised pruning on a model (SBF-NOTES §6.2), and the
//! settings of a pruning run.
//!
//! Design: every prunable convolution is an SBF layer from the start, with
//! M = N (all filters templates, no transforms: it computes exactly a dense
//! conv). A step scores each current template by the L1 norm of its filter,
//! picks the templates of all layers at once with one global threshold
//! ([`select_templates`]: per-layer minimum, monotone), and re-parameterises
//! every layer whose choice changed with [`SbfConv2d::reassign`]: the kept
//! filters stay templates at their output positions; a transformed output whose
//! template is kept keeps that template and its trained mask; every newly
//! transformed output (or one whose template was pruned) goes to the template
//! with the fewest copies, with a mask initialised as a copy (T = 1) or by the
//! least-squares fit of the filter it replaces. The parameters of a reassigned
//! layer change shape, so their
//! optimizer state is reset by the caller.

use super::schedule::{l1_norms, select_templates, LayerFilters, Ramp, Saliency};
use super::taylor::TaylorScores;
use crate::autograd::{ParamId, ParamStore};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::{ConvKind, Model, SbfConv2d, TemplateChoice, TransformInit};
use crate::ops::TransformFamily;
use std::path::Path;

/// How a run prunes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneSettings {
    pub ramp: Ramp,
    /// Each layer keeps at least this many templates (the paper: 8 on CIFAR).
    pub min_templates: usize,
    pub init: TransformInit,
    /// How filters are ranked ([`Saliency::L1Relative`] unless told otherwise).
    pub saliency: Saliency,
    /// Which template a newly transformed output copies ([`TemplateChoice::Balanced`] unless told otherwise).
    pub choice: TemplateChoice,
}

impl PruneSettings {
    /// The paper's ramp length scaled to the run: 40 of 300 epochs, i.e. ⌈2·epochs/15⌉ (at least 1).
    pub fn default_ramp_epochs(epochs: usize) -> usize {
        (2 * epochs).div_ceil(15).max(1)
    }

    /// Refuses a rate outside [0, 1), a zero minimum, an empty ramp or one longer than the run.
    pub fn validate(&self, epochs: usize) -> Result<()> {
        if !(0.0..1.0).contains(&self.ramp.target_rate) {
            return Err(Error::msg(format!(
                "`target_rate` must be in [0, 1), got {}",
                self.ramp.target_rate
            )));
        }
        if self.min_templates == 0 {
            return Err(Error::msg("`min_templates` must be at least 1"));
        }
        if self.ramp.epochs == 0 {
            return Err(Error::msg(
                "`ramp_epochs` must be at least 1: a ramp of 0 epochs would never take a pruning step",
            ));
        }
        if self.ramp.epochs_needed() > epochs {
            return Err(Error::msg(format!(
                "`ramp_epochs` {} is too long for `epochs` {epochs}: its steps come at the starts of \
                 epochs {} to {}",
                self.ramp.epochs,
                self.ramp.first_epoch + 1,
                self.ramp.epochs_needed()
            )));
        }
        Ok(())
    }

    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            ("prune_rate".into(), self.ramp.target_rate.to_string()),
            ("prune_epochs".into(), self.ramp.epochs.to_string()),
            ("prune_first_epoch".into(), self.ramp.first_epoch.to_string()),
            ("prune_min_templates".into(), self.min_templates.to_string()),
            ("prune_mask_init".into(), init_name(self.init).into()),
            ("prune_saliency".into(), self.saliency.name().into()),
            ("prune_template_choice".into(), self.choice.name().into()),
        ]
    }

    /// The settings saved by [`PruneSettings::to_metadata`], or None for a run that does not prune.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path) -> Result<Option<PruneSettings>> {
        let Some(rate) = checkpoint.get("prune_rate") else {
            return Ok(None);
        };
        let field = |key: &str| -> Result<&str> {
            checkpoint
                .get(key)
                .ok_or_else(|| Error::file(path, format!("checkpoint lacks the pruning setting \"{key}\"")))
        };
        let bad = |key: &str, text: &str| {
            Error::file(
                path,
                format!("checkpoint setting {key} = \"{text}\" is not valid"),
            )
        };
        let epochs = field("prune_epochs")?;
        let min = field("prune_min_templates")?;
        let init = field("prune_mask_init")?;
        // Checkpoints written before --saliency existed ranked by plain L1.
        let saliency = match checkpoint.get("prune_saliency") {
            None => Saliency::L1,
            Some(text) => Saliency::parse(text).ok_or_else(|| bad("prune_saliency", text))?,
        };
        // ... and before --template-choice existed by the fewest copies.
        let choice = match checkpoint.get("prune_template_choice") {
            None => TemplateChoice::Balanced,
            Some(text) => TemplateChoice::parse(text).ok_or_else(|| bad("prune_template_choice", text))?,
        };
        Ok(Some(PruneSettings {
            saliency,
            choice,
            ramp: Ramp {
                target_rate: rate.parse().map_err(|_| bad("prune_rate", rate))?,
                epochs: epochs.parse().map_err(|_| bad("prune_epochs", epochs))?,
                // Checkpoints written before the delay took their first step at epoch 0.
                first_epoch: match checkpoint.get("prune_first_epoch") {
                    None => 0,
                    Some(text) => text.parse().map_err(|_| bad("prune_first_epoch", text))?,
                },
            },
            min_templates: min.parse().map_err(|_| bad("prune_min_templates", min))?,
            init: parse_init(init).ok_or_else(|| bad("prune_mask_init", init))?,
        }))
    }
}

/// "copy" or "lstsq".
pub fn init_name(init: TransformInit) -> &'static str {
    match init {
        TransformInit::Identity => "copy",
        TransformInit::LeastSquares => "lstsq",
    }
}

/// Parses [`init_name`]'s text.
pub fn parse_init(text: &str) -> Option<TransformInit> {
    match text {
        "copy" => Some(TransformInit::Identity),
        "lstsq" => Some(TransformInit::LeastSquares),
        _ => None,
    }
}

/// Where the pruning of a model stands.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneState {
    /// (layer name, templates M, outputs N) of every SBF layer, in forward order.
    pub layers: Vec<(String, usize, usize)>,
}

impl PruneState {
    pub fn of(model: &Model) -> PruneState {
        PruneState {
            layers: model
                .conv_layers()
                .into_iter()
                .filter_map(|(name, layer)| {
                    let sbf = layer.as_sbf()?;
                    Some((name, sbf.num_templates(), sbf.out_channels))
                })
                .collect(),
        }
    }

    /// Transformed filters / all filters of the SBF layers.
    pub fn transformed_fraction(&self) -> f64 {
        let outputs: usize = self.layers.iter().map(|l| l.2).sum();
        let templates: usize = self.layers.iter().map(|l| l.1).sum();
        (outputs - templates) as f64 / outputs.max(1) as f64
    }

    /// "M/N" of every layer, separated by spaces.
    pub fn templates_text(&self) -> String {
        self.layers
            .iter()
            .map(|(_, m, n)| format!("{m}/{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Scores of a layer's outputs: the saliency of its template's filter for a template output
/// (0 for transformed outputs, which are no longer candidates).
fn template_scores(
    layer: &SbfConv2d,
    store: &ParamStore,
    saliency: Saliency,
    taylor: Option<&[f32]>,
) -> LayerFilters {
    let norms = match (saliency, taylor) {
        (Saliency::Taylor, Some(sums)) => saliency.scores(sums),
        // No Taylor evidence yet (before the first step): rank by the relative L1 norm.
        (Saliency::Taylor, None) => Saliency::L1Relative.scores(&l1_norms(store.value(layer.templates))),
        _ => saliency.scores(&l1_norms(store.value(layer.templates))),
    };
    let assignment = &layer.assignment;
    LayerFilters {
        scores: (0..layer.out_channels)
            .map(|n| {
                if assignment.mask_row[n].is_none() {
                    norms[assignment.template_of[n]]
                } else {
                    0.0
                }
            })
            .collect(),
        is_template: assignment.mask_row.iter().map(|r| r.is_none()).collect(),
        min_templates: 0,
    }
}

/// One global selection at `rate` over every SBF layer of `model`, then `reassign` of every
/// layer whose templates changed, by the minimum, saliency, mask init and template choice of
/// `settings` (its ramp is the caller's). `taylor`: the accumulated sums for
/// [`Saliency::Taylor`] (None or empty: rank by the relative L1 norm). Returns the ids of the
/// reshaped parameters.
pub fn prune_step(
    model: &mut Model,
    store: &mut ParamStore,
    rate: f32,
    settings: &PruneSettings,
    taylor: Option<&TaylorScores>,
) -> Vec<ParamId> {
    let PruneSettings {
        min_templates,
        init,
        saliency,
        choice,
        ..
    } = *settings;
    let taylor = taylor.filter(|t| t.steps > 0);
    let mut layers: Vec<&mut SbfConv2d> = model
        .conv_layers_mut()
        .into_iter()
        .filter_map(|(_, layer)| layer.as_sbf_mut())
        .collect();
    let filters: Vec<LayerFilters> = layers
        .iter()
        .enumerate()
        .map(|(l, layer)| LayerFilters {
            min_templates,
            ..template_scores(layer, store, saliency, taylor.map(|t| t.layers[l].as_slice()))
        })
        .collect();
    let chosen = select_templates(&filters, rate);
    let mut reshaped = Vec::new();
    for ((layer, before), after) in layers.iter_mut().zip(&filters).zip(chosen) {
        if after == before.is_template {
            continue;
        }
        let kept: Vec<usize> = (0..after.len()).filter(|&n| after[n]).collect();
        layer.reassign(store, &kept, init, choice);
        reshaped.extend([layer.templates, layer.transforms]);
    }
    drop(layers);
    silence_pruned_channels(model, store);
    reshaped
}

/// Plain filter pruning (`--method l1`, the zero family) removes a pruned filter's whole output
/// channel: its convolution output is zero, and so is the output of the batch norm after it, whose
/// scale γ and shift β are set to 0 (a trainable β alone would feed the next layer a learned
/// constant). Called after every pruning step and every optimiser step; SBF layers, whose
/// transformed outputs are live, are left alone.
pub fn silence_pruned_channels(model: &Model, store: &mut ParamStore) {
    // Called every step: a model without plain filter pruning has nothing to do here.
    let plan = &model.spec.convs;
    let zero = |kind: &ConvKind| {
        matches!(
            kind,
            ConvKind::Sbf {
                family: TransformFamily::Zero,
                ..
            }
        )
    };
    if !(zero(&plan.first) || zero(&plan.body) || plan.layers.iter().any(|(_, kind)| zero(kind))) {
        return;
    }
    for (_, conv, bn) in model.conv_batch_norms() {
        let Some(sbf) = conv.as_sbf().filter(|s| s.config.family == TransformFamily::Zero) else {
            continue;
        };
        for (n, row) in sbf.assignment.mask_row.iter().enumerate() {
            if row.is_some() {
                store.value_mut(bn.gamma).data[n] = 0.0;
                store.value_mut(bn.beta).data[n] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;
    use crate::tensor::{max_scaled_difference, Tensor};
    use rand::{rngs::StdRng, SeedableRng};

    fn model(description: &str) -> (Model, ParamStore) {
        let mut store = ParamStore::default();
        let spec = ModelSpec::parse_description(description).unwrap();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(3));
        (model, store)
    }

    use crate::prune::test_logits as logits;

    /// A step's settings with balanced template choice (the ramp is not read by `prune_step`).
    fn rules(min_templates: usize, init: TransformInit, saliency: Saliency) -> PruneSettings {
        PruneSettings {
            ramp: Ramp::new(0.5, 1),
            min_templates,
            init,
            saliency,
            choice: TemplateChoice::Balanced,
        }
    }

    #[test]
    fn the_ramp_reaches_the_target_keeps_the_minimum_and_then_freezes() {
        // resnet8-w8: 6 SBF layers of 8, 8, 16, 16, 32, 32 outputs (112 filters).
        let (mut model, mut store) = model("resnet8-w8 sbf:rate=0,groups=2");
        let ramp = Ramp::new(0.6, 3);
        let min_templates = 4;
        let mut previous = PruneState::of(&model);
        assert_eq!(previous.transformed_fraction(), 0.0);
        for epoch in (0..ramp.epochs_needed()).filter(|&e| ramp.steps_at(e)) {
            prune_step(
                &mut model,
                &mut store,
                ramp.rate_at(epoch),
                &rules(min_templates, TransformInit::Identity, Saliency::L1Relative),
                None,
            );
            let state = PruneState::of(&model);
            for (before, after) in previous.layers.iter().zip(&state.layers) {
                assert!(after.1 <= before.1, "templates came back in {}", after.0);
                assert!(
                    after.1 >= min_templates.min(after.2),
                    "{} below its minimum",
                    after.0
                );
            }
            previous = state;
        }
        // 0.6·112 = 67.2 → 67 transformed: reachable, since the minimum holds back at most 6·4 = 24.
        assert_eq!(
            previous.layers.iter().map(|l| l.2 - l.1).sum::<usize>(),
            67,
            "{}",
            previous.templates_text()
        );
        // After the ramp (the trainer stops calling prune_step; the selection at the same rate is a
        // no-op too): the assignment does not change.
        let before: Vec<_> = model
            .conv_layers()
            .iter()
            .filter_map(|(_, l)| l.as_sbf().map(|s| s.assignment.clone()))
            .collect();
        let reshaped = prune_step(
            &mut model,
            &mut store,
            ramp.target_rate,
            &rules(min_templates, TransformInit::Identity, Saliency::L1Relative),
            None,
        );
        assert!(reshaped.is_empty());
        let after: Vec<_> = model
            .conv_layers()
            .iter()
            .filter_map(|(_, l)| l.as_sbf().map(|s| s.assignment.clone()))
            .collect();
        assert_eq!(before, after);
        assert!(ramp.is_frozen(ramp.epochs_needed()));
    }

    #[test]
    fn the_minimum_limits_the_rate_when_layers_are_small() {
        let (mut model, mut store) = model("resnet8-w4 sbf:rate=0,groups=2");
        // 4, 4, 8, 8, 16, 16 outputs (56); a minimum of 8 leaves only 8 + 8 transformable filters.
        prune_step(
            &mut model,
            &mut store,
            0.9,
            &rules(8, TransformInit::Identity, Saliency::L1),
            None,
        );
        let state = PruneState::of(&model);
        assert_eq!(state.templates_text(), "4/4 4/4 8/8 8/8 8/16 8/16");
    }

    #[test]
    fn pruning_at_rate_zero_changes_no_output_and_copy_init_keeps_kept_filters() {
        let (mut model, mut store) = model("resnet8-w4 sbf:rate=0,groups=2");
        let before = logits(&model, &store);
        assert!(prune_step(
            &mut model,
            &mut store,
            0.0,
            &rules(1, TransformInit::LeastSquares, Saliency::L1),
            None
        )
        .is_empty());
        assert_eq!(logits(&model, &store).data, before.data);
        // Prune: kept filters keep their exact values (the others change).
        let weights: Vec<Tensor> = model
            .conv_layers()
            .iter()
            .filter_map(|(_, l)| l.as_sbf().map(|s| s.effective_weight(&store)))
            .collect();
        prune_step(
            &mut model,
            &mut store,
            0.5,
            &rules(1, TransformInit::Identity, Saliency::L1),
            None,
        );
        for ((_, layer), old) in model
            .conv_layers()
            .iter()
            .filter(|(_, l)| l.as_sbf().is_some())
            .zip(&weights)
        {
            let sbf = layer.as_sbf().unwrap();
            let new = sbf.effective_weight(&store);
            let per_filter = new.len() / sbf.out_channels;
            for n in (0..sbf.out_channels).filter(|&n| sbf.assignment.mask_row[n].is_none()) {
                let range = n * per_filter..(n + 1) * per_filter;
                assert_eq!(new.data[range.clone()], old.data[range]);
            }
        }
    }

    #[test]
    fn least_squares_init_reproduces_a_masked_copy_of_a_kept_template() {
        // Layer stage1.block0.conv1 (C = N = 4): make filter 3 = filter 0 ⊙ a per-tap, per-group mask
        // and give it the smallest norm, so it is transformed, copying template 0.
        let (mut model, mut store) = model("resnet8-w4 sbf:rate=0,groups=2");
        let layer = model.conv_layers()[1].1.as_sbf().unwrap().clone();
        let mask: Vec<f32> = (0..18).map(|j| 0.01 * (1.0 + j as f32)).collect();
        let b = store.value_mut(layer.templates);
        for i in 0..4 {
            for k in 0..9 {
                b.data[(3 * 4 + i) * 9 + k] = b.data[i * 9 + k] * mask[(i / 2) * 9 + k];
            }
        }
        let wanted = layer.effective_weight(&store);
        prune_step(
            &mut model,
            &mut store,
            1.0 / 56.0,
            &rules(1, TransformInit::LeastSquares, Saliency::L1),
            None,
        );
        let pruned = model.conv_layers()[1].1.as_sbf().unwrap().clone();
        assert_eq!(
            pruned.num_templates(),
            3,
            "filter 3 (smallest norm) is the one transformed"
        );
        assert_eq!(pruned.assignment.template_of[3], 0);
        let got = pruned.effective_weight(&store);
        assert!(max_scaled_difference(&got.data, &wanted.data, 1e-5, 1e-5) <= 1.0);
    }

    /// For every SBF layer: (output, its template's output position, its mask values) of each
    /// transformed output.
    fn transformed_outputs(model: &Model, store: &ParamStore) -> Vec<Vec<(usize, usize, Vec<f32>)>> {
        let layers = model.conv_layers();
        let sbf_layers = layers.iter().filter_map(|(_, l)| l.as_sbf());
        sbf_layers
            .map(|sbf| {
                let identity = sbf.assignment.identity_outputs();
                let masks = store.value(sbf.transforms);
                let row = masks.len() / (sbf.out_channels - sbf.num_templates()).max(1);
                (0..sbf.out_channels)
                    .filter_map(|n| {
                        let r = sbf.assignment.mask_row[n]?;
                        let template = identity[sbf.assignment.template_of[n]];
                        Some((n, template, masks.data[r * row..(r + 1) * row].to_vec()))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_later_ramp_step_keeps_the_templates_and_trained_masks_of_earlier_transformed_outputs() {
        for init in [TransformInit::LeastSquares, TransformInit::Identity] {
            later_step_keeps_masks(init);
        }
    }

    fn later_step_keeps_masks(init: TransformInit) {
        let (mut model, mut store) = model("resnet8-w8 sbf:rate=0,groups=2");
        let step = |model: &mut Model, store: &mut ParamStore, rate: f32| {
            prune_step(model, store, rate, &rules(2, init, Saliency::L1), None);
        };
        step(&mut model, &mut store, 0.3);
        // Training moves the masks away from their least-squares start.
        let mut rng = StdRng::seed_from_u64(5);
        for (_, layer) in model.conv_layers() {
            let Some(sbf) = layer.as_sbf() else { continue };
            let masks = store.value_mut(sbf.transforms);
            let noise = Tensor::normal(&masks.shape, 0.1, &mut rng);
            for (t, e) in masks.data.iter_mut().zip(&noise.data) {
                *t += e;
            }
        }
        let before = transformed_outputs(&model, &store);
        step(&mut model, &mut store, 0.6);
        let after = transformed_outputs(&model, &store);
        let mut kept = 0;
        for (layer_before, layer_after) in before.iter().zip(&after) {
            for (n, template, mask) in layer_before {
                let now = layer_after
                    .iter()
                    .find(|(m, ..)| m == n)
                    .expect("transformed stays transformed");
                // Its template is still a template: the same template and the trained mask.
                if layer_after.iter().all(|(m, ..)| m != template) {
                    assert_eq!((now.1, &now.2), (*template, mask), "output {n}");
                    kept += 1;
                }
            }
        }
        assert!(kept > 10, "only {kept} outputs kept their template");
        // The layout is saved: a model rebuilt from the checkpoint computes the same logits.
        let checkpoint = Checkpoint {
            model: model.description(),
            metadata: crate::checkpoint::assignment_metadata(&model),
            tensors: crate::checkpoint::model_tensors(&store),
        };
        assert!(checkpoint
            .metadata
            .iter()
            .any(|(k, _)| k.starts_with("assignment_templates.")));
        let (reloaded, reloaded_store) = crate::checkpoint::load_model(&checkpoint, Path::new("c")).unwrap();
        assert_eq!(
            logits(&reloaded, &reloaded_store).data,
            logits(&model, &store).data
        );
    }

    #[test]
    fn settings_round_trip_and_older_runs_keep_their_ramp_from_epoch_zero() {
        let settings = PruneSettings {
            ramp: Ramp::new(0.55, 3),
            min_templates: 8,
            init: TransformInit::LeastSquares,
            saliency: Saliency::L1Relative,
            choice: TemplateChoice::BestFit,
        };
        let mut checkpoint = Checkpoint {
            metadata: settings.to_metadata(),
            ..Checkpoint::default()
        };
        let path = Path::new("c.ckpt");
        assert_eq!(
            PruneSettings::from_checkpoint(&checkpoint, path).unwrap(),
            Some(settings)
        );
        checkpoint.metadata.retain(|(k, _)| k != "prune_first_epoch");
        let old = PruneSettings::from_checkpoint(&checkpoint, path)
            .unwrap()
            .unwrap();
        assert_eq!(old.ramp.first_epoch, 0);
        // Checkpoints written before --template-choice existed chose balanced.
        checkpoint.metadata.retain(|(k, _)| k != "prune_template_choice");
        let old = PruneSettings::from_checkpoint(&checkpoint, path)
            .unwrap()
            .unwrap();
        assert_eq!(old.choice, TemplateChoice::Balanced);
        // The run needs an epoch after the ramp's last step.
        let err = settings.validate(3).unwrap_err().to_string();
        assert!(err.contains("epochs 2 to 4"), "{err}");
        settings.validate(4).unwrap();
    }
}
