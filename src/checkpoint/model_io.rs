//! A model's parameters and buffers in a checkpoint, and the model rebuilt from one.
//!
//! Names: `param.<name>` for parameters, `buffer.<name>` for buffers (batch-norm
//! running statistics); a run with `--ema` also keeps its live weights under
//! [`LIVE_PREFIX`] (`live.param.<name>`), beside the averaged ones.

use super::assignment::restore_assignments;
use super::format::Checkpoint;
use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::nn::{Model, ModelSpec};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::Path;

/// Prefix of the live weights' tensors in a checkpoint of a run with `--ema`.
pub const LIVE_PREFIX: &str = "live.";

/// Metadata key of the moving average's step count; present exactly in checkpoints of `--ema` runs.
pub const EMA_UPDATES_KEY: &str = "ema_updates";

/// Parameters (`param.<name>`) and buffers (`buffer.<name>`) as named tensors.
pub fn model_tensors(store: &ParamStore) -> Vec<(String, Tensor)> {
    let params = store
        .params
        .iter()
        .map(|p| (format!("param.{}", p.name), p.value.clone()));
    let buffers = store
        .buffers
        .iter()
        .map(|b| (format!("buffer.{}", b.name), b.value.clone()));
    params.chain(buffers).collect()
}

/// Copies parameters and buffers saved by [`model_tensors`] into `store`.
pub fn load_model_tensors(store: &mut ParamStore, checkpoint: &Checkpoint, path: &Path) -> Result<()> {
    load_prefixed_model_tensors(store, checkpoint, path, "")
}

/// [`load_model_tensors`] of the tensors whose names start with `prefix` (`live.param.…`).
pub fn load_prefixed_model_tensors(
    store: &mut ParamStore,
    checkpoint: &Checkpoint,
    path: &Path,
    prefix: &str,
) -> Result<()> {
    let targets = store
        .params
        .iter_mut()
        .map(|p| (format!("{prefix}param.{}", p.name), &mut p.value))
        .chain(
            store
                .buffers
                .iter_mut()
                .map(|b| (format!("{prefix}buffer.{}", b.name), &mut b.value)),
        );
    for (name, target) in targets {
        let saved = checkpoint
            .tensor(&name)
            .ok_or_else(|| Error::file(path, format!("checkpoint lacks tensor {name}")))?;
        if saved.shape != target.shape {
            return Err(Error::file(
                path,
                format!(
                    "checkpoint's {name} has shape {:?}, the model needs {:?}",
                    saved.shape, target.shape
                ),
            ));
        }
        target.data.copy_from_slice(&saved.data);
    }
    Ok(())
}

/// Rebuilds the model a checkpoint describes and loads its parameters and buffers.
pub fn load_model(checkpoint: &Checkpoint, path: &Path) -> Result<(Model, ParamStore)> {
    let spec = ModelSpec::parse_description(&checkpoint.model).map_err(|e| Error::file(path, e.message))?;
    let mut store = ParamStore::default();
    let mut model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
    restore_assignments(&mut model, &mut store, checkpoint, path)?;
    load_model_tensors(&mut store, checkpoint, path)?;
    Ok((model, store))
}
