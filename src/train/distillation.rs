//! Training against a teacher: knowledge distillation (SBF-NOTES §6.3, `ops::distillation`).
//!
//! The teacher is a trained model loaded from a checkpoint (usually the dense baseline). Every
//! training shard runs it in evaluation mode on the same augmented images as the student and
//! the student's loss becomes (1 − w)·CE + w·τ²·KL(teacher ‖ student) at temperature τ.
//! Checkpoints of the student keep the teacher's path, τ and w, so `--resume` reloads it.

use crate::autograd::{Mode, ParamStore, Tape};
use crate::checkpoint::load_model;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// A teacher model and how strongly the student follows it.
pub struct Distillation {
    pub teacher: Model,
    pub teacher_store: ParamStore,
    /// τ > 0 (v1 of the paper: 5 on CIFAR).
    pub temperature: f32,
    /// w ∈ [0, 1]: the weight of the teacher term (v1: 1, the teacher only).
    pub weight: f32,
    /// The checkpoint the teacher was read from.
    pub source: PathBuf,
}

impl Distillation {
    /// Loads the teacher from `path`; refuses τ ≤ 0 or w outside [0, 1].
    pub fn load(path: &Path, temperature: f32, weight: f32) -> Result<Distillation> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::msg(format!(
                "`kd_temperature` must be > 0, got {temperature}"
            )));
        }
        if !(0.0..=1.0).contains(&weight) {
            return Err(Error::msg(format!("`kd_weight` must be in [0, 1], got {weight}")));
        }
        let checkpoint = Checkpoint::load(path)?;
        let (teacher, teacher_store) = load_model(&checkpoint, path)?;
        Ok(Distillation {
            teacher,
            teacher_store,
            temperature,
            weight,
            source: path.to_path_buf(),
        })
    }

    /// The teacher's logits [N, 10] for images x [N, 3, 32, 32] (evaluation mode: running
    /// batch-norm statistics, nothing recorded).
    pub fn teacher_logits(&self, x: &Tensor) -> Tensor {
        let mut tape = Tape::new(&self.teacher_store, Mode::Eval);
        let input = tape.input(x.clone());
        let logits = self.teacher.forward(&mut tape, input);
        tape.value(logits).clone()
    }

    /// Checkpoint metadata: the teacher's path, τ and w.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            ("kd_teacher".into(), self.source.display().to_string()),
            ("kd_temperature".into(), self.temperature.to_string()),
            ("kd_weight".into(), self.weight.to_string()),
        ]
    }

    /// The distillation a checkpoint was trained with (its teacher reloaded), or None.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path) -> Result<Option<Distillation>> {
        let Some(teacher) = checkpoint.get("kd_teacher") else {
            return Ok(None);
        };
        let number = |key: &str| -> Result<f32> {
            let text = checkpoint.get(key).ok_or_else(|| {
                Error::file(
                    path,
                    format!("checkpoint lacks the distillation setting \"{key}\""),
                )
            })?;
            text.parse().map_err(|_| {
                Error::file(
                    path,
                    format!("checkpoint setting {key} = \"{text}\" is not valid"),
                )
            })
        };
        let (temperature, weight) = (number("kd_temperature")?, number("kd_weight")?);
        Distillation::load(Path::new(teacher), temperature, weight)
            .map(Some)
            .map_err(|e| {
                Error::file(
                    path,
                    format!("the run was distilled from teacher {teacher}, which cannot be loaded: {e}"),
                )
            })
    }
}
