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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::model_tensors;
    use crate::nn::{TemplateChoice, TransformInit};
    use crate::prune::schedule::{Ramp, Saliency};
    use crate::prune::PruneState;
    use rand::{rngs::StdRng, SeedableRng};

    use crate::prune::test_logits as logits;

    #[test]
    fn converting_at_rate_zero_changes_no_output_and_a_rate_prunes_globally() {
        let dense_spec = ModelSpec::parse_name("resnet8-w8").unwrap();
        let mut dense_store = ParamStore::default();
        let dense = dense_spec.build(&mut dense_store, &mut StdRng::seed_from_u64(1));
        let checkpoint = Checkpoint {
            model: dense.description(),
            metadata: Vec::new(),
            tensors: model_tensors(&dense_store),
        };
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
}
