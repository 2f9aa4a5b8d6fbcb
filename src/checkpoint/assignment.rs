//! Saving and restoring the template assignment of every SBF layer of a model.
//!
//! A checkpoint stores a layer's template outputs as the metadata entry
//! `assignment.<layer name>` = "k0,k1,…" (the output position of template 0, 1, …, M−1).
//! When the transformed outputs are spread round-robin over the templates
//! (`TemplateAssignment::from_kept_outputs`: every fresh layer and every conversion) that list
//! determines the assignment. After a pruning ramp of several steps, a transformed output keeps
//! the template it was given at its own step, so the checkpoint also stores the template of every
//! output, `assignment_templates.<layer name>` = "m0,m1,…,m(N−1)". Loading rebuilds the layer's
//! parameters at those shapes (`SbfConv2d::set_assignment`) before the tensors are read, so a
//! pruned model reloads exactly.

use crate::autograd::{ParamId, ParamStore};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::Model;
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

/// Metadata key of the template of every output of a layer (absent for round-robin layouts).
pub fn templates_key(layer: &str) -> String {
    format!("assignment_templates.{layer}")
}

fn list(values: &[usize]) -> String {
    values.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

/// Reads [`list`]'s text back; None when an entry is not an index.
fn index_list(text: &str) -> Option<Vec<usize>> {
    text.split(',').map(|v| v.parse().ok()).collect()
}

/// `assignment.<layer>` metadata for every SBF layer of `model`, and
/// `assignment_templates.<layer>` for those whose layout is not round-robin.
pub fn assignment_metadata(model: &Model) -> Vec<(String, String)> {
    let mut metadata = Vec::new();
    for (name, layer) in model.conv_layers() {
        let Some(sbf) = layer.as_sbf() else { continue };
        let kept = kept_outputs(&sbf.assignment);
        metadata.push((assignment_key(&name), list(&kept)));
        if TemplateAssignment::from_kept_outputs(sbf.out_channels, &kept) != sbf.assignment {
            metadata.push((templates_key(&name), list(&sbf.assignment.template_of)));
        }
    }
    metadata
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
        let kept = index_list(text).ok_or_else(|| bad("not a list of output indices"))?;
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
        let assignment = match checkpoint.get(&templates_key(&name)) {
            None => TemplateAssignment::from_kept_outputs(sbf.out_channels, &kept),
            Some(text) => {
                let key = templates_key(&name);
                let bad = |why: &str| Error::file(path, format!("checkpoint's {key} = \"{text}\": {why}"));
                let template_of = index_list(text).ok_or_else(|| bad("not a list of template indices"))?;
                let fits = template_of.len() == sbf.out_channels
                    && template_of.iter().all(|&m| m < kept.len())
                    && kept.iter().enumerate().all(|(k, &n)| template_of[n] == k);
                if !fits {
                    return Err(bad(&format!(
                        "not a template in 0..{} for each of the {} outputs, with template k at output {}",
                        kept.len(),
                        sbf.out_channels,
                        assignment_key(&name)
                    )));
                }
                TemplateAssignment::with_templates(&kept, template_of)
            }
        };
        if assignment != sbf.assignment {
            sbf.set_assignment(store, assignment);
            reshaped.extend([sbf.templates, sbf.transforms]);
        }
    }
    Ok(reshaped)
}
