//! Saving and restoring the template assignment of every SBF layer of a model.
//!
//! Every assignment sbfnet makes is `TemplateAssignment::from_kept_outputs(N, kept)`
//! (a fresh layer's round-robin one is `from_kept_outputs(N, 0..M)`), so the list
//! `kept` (the output position of template 0, 1, …, M−1) determines it. A checkpoint
//! stores it as the metadata entry `assignment.<layer name>` = "k0,k1,…"; loading
//! rebuilds the layer's parameters at those shapes (`SbfConv2d::reassign`) before
//! the tensors are read, so a pruned model reloads exactly.

use crate::autograd::{ParamId, ParamStore};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::{Model, TransformInit};
use crate::ops::TemplateAssignment;
use std::path::Path;

/// Metadata key of a layer's assignment.
pub fn assignment_key(layer: &str) -> String {
    format!("assignment.{layer}")
}

/// The output position of each template, in template order: `kept[m]` = the n with m(n) = m and no mask.
pub fn kept_outputs(assignment: &TemplateAssignment) -> Vec<usize> {
    let mut kept: Vec<(usize, usize)> = (0..assignment.outputs())
        .filter(|&n| assignment.mask_row[n].is_none())
        .map(|n| (assignment.template_of[n], n))
        .collect();
    kept.sort_unstable();
    kept.into_iter().map(|(_, n)| n).collect()
}

/// `assignment.<layer>` metadata for every SBF layer of `model`.
pub fn assignment_metadata(model: &Model) -> Vec<(String, String)> {
    model
        .conv_layers()
        .into_iter()
        .filter_map(|(name, layer)| {
            let sbf = layer.as_sbf()?;
            let kept = kept_outputs(&sbf.assignment);
            assert_eq!(
                TemplateAssignment::from_kept_outputs(sbf.out_channels, &kept),
                sbf.assignment,
                "layer {name}: its assignment is not determined by its kept outputs"
            );
            let text = kept.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
            Some((assignment_key(&name), text))
        })
        .collect()
}

/// Gives every SBF layer of `model` the assignment saved in `checkpoint` (read from `path`),
/// reshaping its parameters (values are left to be loaded from the checkpoint's tensors).
/// Layers without a saved assignment keep the one the plan gave them. Returns the ids of the
/// reshaped parameters (their optimizer state must be rebuilt).
pub fn restore_assignments(
    model: &mut Model,
    store: &mut ParamStore,
    checkpoint: &Checkpoint,
    path: &Path,
) -> Result<Vec<ParamId>> {
    let mut reshaped = Vec::new();
    for (name, layer) in model.conv_layers_mut() {
        let Some(sbf) = layer.as_sbf_mut() else { continue };
        let key = assignment_key(&name);
        let Some(text) = checkpoint.get(&key) else {
            continue;
        };
        let bad = |why: &str| Error::file(path, format!("checkpoint's {key} = \"{text}\": {why}"));
        let kept: Vec<usize> = text
            .split(',')
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| bad("not a list of output indices"))
            })
            .collect::<Result<_>>()?;
        let mut seen = vec![false; sbf.out_channels];
        for &n in &kept {
            if n >= sbf.out_channels || std::mem::replace(&mut seen[n], true) {
                return Err(bad(&format!(
                    "output {n} is out of range 0..{} or repeated",
                    sbf.out_channels
                )));
            }
        }
        if kept.is_empty() {
            return Err(bad("no template"));
        }
        if kept_outputs(&sbf.assignment) != kept {
            sbf.reassign(store, &kept, TransformInit::Identity);
            reshaped.extend([sbf.templates, sbf.transforms]);
        }
    }
    Ok(reshaped)
}
