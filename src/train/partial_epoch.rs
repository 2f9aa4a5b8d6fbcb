//! An epoch stopped between two steps (Ctrl-C, or any [`super::RunOptions::stop`]): how far it
//! got and what it had measured, saved in the checkpoint so that the resumed run continues from
//! the next step and ends bit for bit as a run that was never stopped.
//!
//! Continuing needs no saved random state: the epoch's shuffle and augmentation come from an
//! RNG seeded by (seed, epoch), so [`super::Trainer::train_epoch_until`] draws the batches of
//! the steps already done again, without training on them, and goes on from there.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use std::path::Path;

/// What the first `steps` steps of an unfinished epoch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartialEpoch {
    /// Steps of the epoch done, trained or skipped.
    pub steps: usize,
    /// Σ loss · images over the trained batches.
    pub loss_sum: f64,
    /// Images classified right, and images trained on.
    pub correct: usize,
    pub images: usize,
    /// Batches skipped for a non-finite loss or gradient.
    pub skipped: usize,
    /// Seconds the epoch has run so far.
    pub seconds: f64,
    /// Learning rate of the last step done.
    pub learning_rate: f32,
}

/// Checkpoint keys, in [`PartialEpoch`]'s field order.
const KEYS: [&str; 7] = [
    "partial_epoch_steps",
    "partial_epoch_loss_sum",
    "partial_epoch_correct",
    "partial_epoch_images",
    "partial_epoch_skipped",
    "partial_epoch_seconds",
    "partial_epoch_learning_rate",
];

impl PartialEpoch {
    /// Metadata entries for a checkpoint (floats in their shortest round-trip form).
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let values = [
            self.steps.to_string(),
            self.loss_sum.to_string(),
            self.correct.to_string(),
            self.images.to_string(),
            self.skipped.to_string(),
            self.seconds.to_string(),
            self.learning_rate.to_string(),
        ];
        KEYS.iter().map(|k| k.to_string()).zip(values).collect()
    }

    /// The unfinished epoch a checkpoint holds, or None for one written after a whole epoch.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path) -> Result<Option<PartialEpoch>> {
        if checkpoint.get(KEYS[0]).is_none() {
            return Ok(None);
        }
        fn value<T: std::str::FromStr>(checkpoint: &Checkpoint, path: &Path, key: &str) -> Result<T> {
            let text = checkpoint.get(key).unwrap_or("");
            text.parse()
                .map_err(|_| Error::file(path, format!("checkpoint's {key} = \"{text}\" is not valid")))
        }
        Ok(Some(PartialEpoch {
            steps: value(checkpoint, path, KEYS[0])?,
            loss_sum: value(checkpoint, path, KEYS[1])?,
            correct: value(checkpoint, path, KEYS[2])?,
            images: value(checkpoint, path, KEYS[3])?,
            skipped: value(checkpoint, path, KEYS[4])?,
            seconds: value(checkpoint, path, KEYS[5])?,
            learning_rate: value(checkpoint, path, KEYS[6])?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_epoch_round_trips_and_a_damaged_one_is_named() {
        let partial = PartialEpoch {
            steps: 7,
            loss_sum: 123.456_789_012_345_67,
            correct: 300,
            images: 896,
            skipped: 1,
            seconds: 12.5,
            learning_rate: 0.037_5,
        };
        let mut checkpoint = Checkpoint {
            metadata: partial.to_metadata(),
            ..Checkpoint::default()
        };
        let path = Path::new("last.ckpt");
        assert_eq!(
            PartialEpoch::from_checkpoint(&checkpoint, path).unwrap(),
            Some(partial)
        );
        assert_eq!(
            PartialEpoch::from_checkpoint(&Checkpoint::default(), path).unwrap(),
            None
        );
        checkpoint.metadata[2].1 = "many".into();
        let err = PartialEpoch::from_checkpoint(&checkpoint, path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "last.ckpt: checkpoint's partial_epoch_correct = \"many\" is not valid"
        );
    }
}
