//! Conversion of a trained dense model into a pruned SBF model (`sbfnet prune`).
//!
//! The dense model's body convolutions become SBF layers with M = N whose templates are
//! the dense filters (`X.weight` → `X.templates`, same order: this layer computes exactly the
//! dense conv); every other tensor (stem, batch norms, classifier, running statistics) is
//! copied by name. One global L1 selection at the target rate ([`prune_step`]) then turns the
//! lowest-norm filters into transformed copies of the kept ones.

use super::ramp::{prune_step, PruneSettings};
use crate::autograd::ParamStore;
use crate::checkpoint::load_model_tensors;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::{ConvKind, Model, ModelSpec};
use crate::ops::TransformFamily;
use std::path::Path;

/// The file `sbfnet prune` writes in a converted run's folder (source checkpoint, rate, masks).
pub const CONVERSION_NOTE: &str = "converted_from.txt";

/// The SBF spec of a dense model: the body becomes `sbf:rate=0,groups=<groups>` with the
/// given transform family (scalar for SBF, zero for plain L1 filter pruning).
pub fn sbf_spec_of_dense(
    dense: &ModelSpec,
    groups: usize,
    family: TransformFamily,
    path: &Path,
) -> Result<ModelSpec> {
    if !dense.convs.is_dense() {
        return Err(Error::file(
            path,
            format!(
                "model \"{}\" is not dense: convert a dense checkpoint",
                dense.description()
            ),
        ));
    }
    let mut spec = dense.clone();
    spec.convs.body = ConvKind::Sbf {
        rate: 0.0,
        groups,
        family,
    };
    spec.validate().map_err(|e| Error::file(path, e.message))?;
    Ok(spec)
}

/// Loads the dense checkpoint's tensors into `store`, which holds `model` = the SBF (M = N)
/// version of the checkpoint's model, then prunes at `rate` in one step by `settings`' minimum,
/// saliency, mask init and template choice (not its ramp).
pub fn load_dense_and_prune(
    model: &mut Model,
    store: &mut ParamStore,
    dense: &Checkpoint,
    path: &Path,
    rate: f32,
    settings: &PruneSettings,
) -> Result<()> {
    let mut renamed = Checkpoint {
        model: dense.model.clone(),
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    for param in &store.params {
        let name = format!("param.{}", param.name);
        let source = match param.name.strip_suffix(".templates") {
            Some(layer) => format!("param.{layer}.weight"),
            None => name.clone(),
        };
        if param.value.is_empty() {
            // The (empty) transforms of an M = N layer.
            renamed.tensors.push((name, param.value.clone()));
        } else if let Some(tensor) = dense.tensor(&source) {
            renamed.tensors.push((name, tensor.clone()));
        }
    }
    for buffer in &store.buffers {
        let name = format!("buffer.{}", buffer.name);
        if let Some(tensor) = dense.tensor(&name) {
            renamed.tensors.push((name, tensor.clone()));
        }
    }
    load_model_tensors(store, &renamed, path)?;
    prune_step(model, store, rate, settings, None);
    Ok(())
}

/// How closely one converted layer's transformed outputs reproduce the dense filters they
/// replace: Σ_n ‖Weff_n − W_n‖² and Σ_n ‖W_n‖² over its transformed outputs n.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFit {
    pub layer: String,
    pub residual: f64,
    pub energy: f64,
}

impl LayerFit {
    /// The share of the replaced filters' energy that the masked templates reproduce:
    /// 1 − residual / energy (0 for plain pruning, 1 for an exact fit).
    pub fn explained(&self) -> f64 {
        if self.energy > 0.0 {
            1.0 - self.residual / self.energy
        } else {
            1.0
        }
    }
}

/// [`LayerFit`] of every SBF layer of a converted `model` with transformed outputs, against the
/// dense filters `param.<layer>.weight` of the checkpoint it was converted from.
pub fn conversion_fit(model: &Model, store: &ParamStore, dense: &Checkpoint) -> Vec<LayerFit> {
    let mut fits = Vec::new();
    for (name, layer) in model.conv_layers() {
        let Some(sbf) = layer.as_sbf() else { continue };
        let Some(weight) = dense.tensor(&format!("param.{name}.weight")) else {
            continue;
        };
        let effective = sbf.effective_weight(store);
        let filter = weight.len() / sbf.out_channels;
        let (mut residual, mut energy) = (0.0, 0.0);
        for n in (0..sbf.out_channels).filter(|&n| sbf.assignment.mask_row[n].is_some()) {
            let range = n * filter..(n + 1) * filter;
            for (&w, &e) in weight.data[range.clone()].iter().zip(&effective.data[range]) {
                residual += (e as f64 - w as f64).powi(2);
                energy += (w as f64).powi(2);
            }
        }
        if energy > 0.0 {
            fits.push(LayerFit {
                layer: name,
                residual,
                energy,
            });
        }
    }
    fits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::model_tensors;
    use crate::nn::{TemplateChoice, TransformInit};
    use crate::prune::schedule::{Ramp, Saliency};
    use crate::prune::PruneState;
    use rand::{rngs::StdRng, SeedableRng};

    use crate::prune::test_logits as logits;

    /// A random dense resnet8-w8 (spec, model, store) and its checkpoint.
    fn dense_resnet8() -> (ModelSpec, Model, ParamStore, Checkpoint) {
        let spec = ModelSpec::parse_name("resnet8-w8").unwrap();
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(1));
        let checkpoint = Checkpoint {
            model: model.description(),
            metadata: Vec::new(),
            tensors: model_tensors(&store),
        };
        (spec, model, store, checkpoint)
    }

    #[test]
    fn converting_at_rate_zero_changes_no_output_and_a_rate_prunes_globally() {
        let (dense_spec, dense, dense_store, checkpoint) = dense_resnet8();
        let path = Path::new("dense.ckpt");
        let spec = sbf_spec_of_dense(&dense_spec, 2, TransformFamily::Scalar, path).unwrap();
        for (rate, transformed) in [(0.0, 0), (0.5, 56)] {
            let mut store = ParamStore::default();
            let mut model = spec.build(&mut store, &mut StdRng::seed_from_u64(2));
            load_dense_and_prune(
                &mut model,
                &mut store,
                &checkpoint,
                path,
                rate,
                &PruneSettings {
                    ramp: Ramp::new(rate, 1),
                    min_templates: 2,
                    init: TransformInit::Identity,
                    saliency: Saliency::L1,
                    choice: TemplateChoice::Balanced,
                },
            )
            .unwrap();
            let state = PruneState::of(&model);
            assert_eq!(state.layers.iter().map(|l| l.2 - l.1).sum::<usize>(), transformed);
            if rate == 0.0 {
                assert_eq!(logits(&model, &store).data, logits(&dense, &dense_store).data);
            }
        }
        let err = sbf_spec_of_dense(&spec, 2, TransformFamily::Scalar, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not dense"), "{err}");
    }

    #[test]
    fn the_fit_is_zero_for_plain_pruning_and_best_fit_explains_more_than_balanced() {
        let (dense_spec, _, _, checkpoint) = dense_resnet8();
        let path = Path::new("dense.ckpt");
        // The converted model's fits, summed over its layers: (residual, energy, layers).
        let fit = |family: TransformFamily, choice: TemplateChoice| {
            let spec = sbf_spec_of_dense(&dense_spec, 2, family, path).unwrap();
            let mut store = ParamStore::default();
            let mut model = spec.build(&mut store, &mut StdRng::seed_from_u64(2));
            let settings = PruneSettings {
                ramp: Ramp::new(0.5, 1),
                min_templates: 2,
                init: TransformInit::LeastSquares,
                saliency: Saliency::L1,
                choice,
            };
            load_dense_and_prune(&mut model, &mut store, &checkpoint, path, 0.5, &settings).unwrap();
            let fits = conversion_fit(&model, &store, &checkpoint);
            for layer in &fits {
                let explained = layer.explained();
                assert!((0.0..=1.0).contains(&explained), "{layer:?}");
            }
            let sum = |f: fn(&LayerFit) -> f64| fits.iter().map(f).sum::<f64>();
            (sum(|l| l.residual), sum(|l| l.energy), fits.len())
        };
        let (residual, energy, layers) = fit(TransformFamily::Zero, TemplateChoice::Balanced);
        assert!(layers > 0);
        assert_eq!(residual, energy, "plain pruning reproduces nothing");
        let (balanced, energy, _) = fit(TransformFamily::Scalar, TemplateChoice::Balanced);
        let (best, best_energy, _) = fit(TransformFamily::Scalar, TemplateChoice::BestFit);
        assert_eq!(energy, best_energy, "the same filters are transformed");
        assert!(best < balanced && balanced < energy, "{best} {balanced} {energy}");
    }
}
