//! The results table of an output folder of runs, in the form of the paper's Table 3.1
//! (model, method, baseline accuracy, accuracy, change, MACs and parameter reductions).
//!
//! Everything is read from each run's `last.ckpt` and `metrics.csv`: the model description, the
//! pruning settings (`prune_rate`: pruned during training; a [`CONVERSION_NOTE`] beside it: a
//! converted dense run), the test accuracy of the last epoch and of the best, and the wall time.
//! The model is rebuilt to count its parameters and MACs beside the dense network of the same
//! name. The baseline of a run is the last-epoch accuracy of the dense run of the same model name
//! in the folder (the best dense run where there are several).

use super::metrics;
use crate::checkpoint::load_model;
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::prune::convert::CONVERSION_NOTE;
use crate::prune::{PruneState, Saliency};
use std::path::Path;

/// One run of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub folder: String,
    /// e.g. "resnet20".
    pub model: String,
    /// "dense", "SBF ramp 0.50, lstsq masks", "SBF converted 0.50, copy masks", "L1 pruning ramp
    /// 0.50" (the fraction of the body's filters transformed or pruned), or the conv plan; then
    /// ", l1 saliency" or ", taylor saliency" where it is not the default, ", distilled" with a teacher.
    pub method: String,
    pub is_dense: bool,
    /// Test accuracy of the last evaluated epoch (from metrics.csv; the best one without it).
    pub accuracy: f32,
    /// Best test accuracy of any evaluated epoch.
    pub best_accuracy: f32,
    pub params: usize,
    pub dense_params: usize,
    pub macs: usize,
    pub dense_macs: usize,
    pub seconds: f64,
}

impl RunSummary {
    /// Reads `<dir>/last.ckpt`.
    pub fn read(dir: &Path) -> Result<RunSummary> {
        let path = dir.join("last.ckpt");
        let checkpoint = Checkpoint::load(&path)?;
        let (model, store) = load_model(&checkpoint, &path)?;
        let table = model.layer_table(&store);
        let number = |key: &str| {
            checkpoint
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        // The note `sbfnet prune` leaves in a converted run's folder.
        let note = std::fs::read_to_string(dir.join(CONVERSION_NOTE)).ok();
        let is_dense = model.spec.convs.is_dense();
        let method = if is_dense {
            "dense".to_string()
        } else if checkpoint.get("prune_rate").is_some() || note.is_some() {
            // Plain filter pruning is the zero family: its pruned outputs are zero.
            let method = match &model.spec.convs.body {
                crate::nn::ConvKind::Sbf {
                    family: crate::ops::TransformFamily::Zero,
                    ..
                } => "L1 pruning",
                _ => "SBF",
            };
            let how = if checkpoint.get("prune_rate").is_some() {
                "ramp"
            } else {
                "converted"
            };
            let fraction = PruneState::of(&model).transformed_fraction();
            let mut text = format!("{method} {how} {fraction:.2}");
            // How the masks started (SBF only: pruned filters have none): from the
            // checkpoint of a ramp, from the conversion note of a converted run.
            let init = checkpoint.get("prune_mask_init").or_else(|| {
                note.as_deref()?
                    .lines()
                    .find_map(|l| l.strip_prefix("mask_init "))
            });
            if let (Some(init), "SBF") = (init, method) {
                text += &format!(", {init} masks");
            }
            match checkpoint.get("prune_saliency") {
                Some(saliency) if saliency != Saliency::L1Relative.name() => {
                    text += &format!(", {saliency} saliency")
                }
                _ => {}
            }
            text
        } else {
            model.spec.convs.describe()
        };
        // The last evaluated epoch of metrics.csv, up to the checkpoint's epoch.
        let epoch = number("epoch");
        let last_accuracy = metrics::read_csv(&dir.join("metrics.csv")).ok().and_then(|rows| {
            rows.iter()
                .filter(|r| r.epoch as f64 <= epoch)
                .filter_map(|r| r.test_accuracy)
                .next_back()
        });
        let method = match checkpoint.get("kd_teacher") {
            Some(_) => format!("{method}, distilled"),
            None => method,
        };
        Ok(RunSummary {
            folder: dir
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            model: model.name(),
            method,
            is_dense,
            accuracy: last_accuracy.unwrap_or(number("best_test_accuracy") as f32),
            best_accuracy: number("best_test_accuracy") as f32,
            params: table.iter().map(|r| r.params).sum(),
            dense_params: table.iter().map(|r| r.dense_params).sum(),
            macs: table.iter().map(|r| r.macs).sum(),
            dense_macs: table.iter().map(|r| r.dense_macs).sum(),
            seconds: number("elapsed_seconds"),
        })
    }
}

/// Every run folder (a sub-folder holding last.ckpt) of `dir`, sorted by name.
pub fn read_runs(dir: &Path) -> Result<Vec<RunSummary>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, "cannot list the runs folder", e))?;
    let mut folders: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("last.ckpt").is_file())
        .collect();
    folders.sort();
    folders.iter().map(|f| RunSummary::read(f)).collect()
}

/// The Markdown table. Acc is the last epoch's test accuracy, Best the best epoch's; Change =
/// Acc − baseline (percentage points; negative: a drop); reductions are 1 − (network's count /
/// the dense network's count), whole network.
pub fn markdown_table(runs: &[RunSummary]) -> String {
    let mut text = String::from(
        "| Run | Model | Method | Baseline Acc | Acc | Best | Change | MACs↓ % | Params↓ % | Wall time |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        let baseline = runs
            .iter()
            .filter(|r| r.is_dense && r.model == run.model)
            .map(|r| r.accuracy)
            .fold(None, |best: Option<f32>, a| Some(best.map_or(a, |b| b.max(a))));
        let (baseline_text, change) = match baseline {
            Some(b) => (
                format!("{:.2}", 100.0 * b),
                format!("{:+.2}", 100.0 * (run.accuracy - b)),
            ),
            None => ("–".into(), "–".into()),
        };
        text += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.0} s |\n",
            run.folder,
            run.model,
            run.method,
            baseline_text,
            100.0 * run.accuracy,
            100.0 * run.best_accuracy,
            change,
            100.0 * (1.0 - run.macs as f64 / run.dense_macs.max(1) as f64),
            100.0 * (1.0 - run.params as f64 / run.dense_params.max(1) as f64),
            run.seconds
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;
    use crate::train::metrics::{write_csv, MetricsRow};
    use crate::train::{TrainConfig, Trainer};

    #[test]
    fn a_run_reports_its_last_epoch_beside_its_best() {
        let dir = std::env::temp_dir().join(format!("sbfnet-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let mut trainer = Trainer::new(&spec, TrainConfig::recipe(), 1000).unwrap();
        (trainer.epoch, trainer.best_test_accuracy) = (2, 0.8);
        trainer.to_checkpoint().save(&dir.join("last.ckpt")).unwrap();
        let row = |epoch, test_accuracy| MetricsRow {
            epoch,
            learning_rate: 0.1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            test_loss: Some(1.0),
            test_accuracy: Some(test_accuracy),
            images_per_second: 100.0,
            elapsed_seconds: 10.0 * epoch as f64,
        };
        // Epoch 3 was written by a session killed before its checkpoint: not the run's.
        write_csv(&dir.join("metrics.csv"), &[row(1, 0.8), row(2, 0.7), row(3, 0.9)]).unwrap();
        let run = RunSummary::read(&dir).unwrap();
        assert_eq!((run.accuracy, run.best_accuracy), (0.7, 0.8));
        let table = markdown_table(&[run]);
        assert!(
            table
                .lines()
                .nth(2)
                .unwrap()
                .contains("| dense | 70.00 | 70.00 | 80.00 | +0.00 |"),
            "{table}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
