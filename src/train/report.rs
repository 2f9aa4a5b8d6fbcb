//! The results table of an output folder of runs, in the form of the paper's Table 3.1
//! (model, method, baseline accuracy, accuracy, change, MACs and parameter reductions).
//!
//! Everything is read from each run's `last.ckpt` and `metrics.csv`: the model description, the
//! pruning settings (`prune_rate`: pruned during training; a [`CONVERSION_NOTE`] beside it: a
//! converted dense run), the test accuracy of the last epoch and of the best, and the wall time.
//! The model is rebuilt to count its parameters and MACs beside the dense network of the same
//! name. The baseline of a run is the last-epoch accuracy of the dense run of the same model name
//! in the folder (the best dense run where there are several).
//!
//! A dense model narrower than its default width (`resnet20-w11`) in a folder that also holds
//! runs of the full-width model (`resnet20`) is the *thin* baseline: the dense network trained
//! small from the start to about the MACs that pruning leaves. It is reported under the
//! full-width model's name, with its reductions counted against the full-width network, so that
//! it stands beside the pruned runs of that model (pruning counts where it beats it). Without
//! full-width runs beside it, a narrow dense run is that model's plain dense baseline.

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
    /// The wall time of the run this one started from (a converted run: the dense run's, which
    /// the route also took); 0 for a run from scratch.
    pub seconds_before: f64,
    /// For a dense run narrower than its default width: the full-width model's name, dense
    /// parameters and dense MACs (what [`read_runs`] needs to report it as the thin baseline).
    pub full_width: Option<(String, usize, usize)>,
}

/// The line of a conversion note (and of a converted run's summary.txt) that holds the dense
/// run's wall time in seconds.
pub const DENSE_SECONDS_KEY: &str = "dense_seconds";

/// The file that stands for a run's checkpoint in a results folder (no checkpoints committed):
/// [`RunSummary::summary_text`].
pub const SUMMARY_FILE: &str = "summary.txt";

impl RunSummary {
    /// Reads `<dir>/last.ckpt` (with `metrics.csv`), or, in a results folder without checkpoints,
    /// `<dir>/summary.txt` with `metrics.csv`.
    pub fn read(dir: &Path) -> Result<RunSummary> {
        if !dir.join("last.ckpt").exists() && dir.join(SUMMARY_FILE).exists() {
            return RunSummary::read_recorded(dir);
        }
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
        // A narrow dense run may be the thin baseline of the full-width model (see read_runs).
        let full_spec = model.spec.at_default_width();
        let full_width = (is_dense && full_spec != model.spec).then(|| {
            let mut store = crate::autograd::ParamStore::default();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
            let full = full_spec.build(&mut store, &mut rng).layer_table(&store);
            (
                full_spec.name(),
                full.iter().map(|r| r.dense_params).sum(),
                full.iter().map(|r| r.dense_macs).sum(),
            )
        });
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
            seconds_before: note
                .as_deref()
                .and_then(|note| {
                    note.lines()
                        .find_map(|l| l.strip_prefix(DENSE_SECONDS_KEY)?.strip_prefix(' '))
                })
                .and_then(|seconds| seconds.parse().ok())
                .unwrap_or(0.0),
            full_width,
        })
    }
}

impl RunSummary {
    /// What a results folder keeps of the checkpoint: `key value` lines.
    pub fn summary_text(&self) -> String {
        let mut text = format!(
            "model {}\nmethod {}\ndense {}\nparams {}\ndense_params {}\nmacs {}\ndense_macs {}\n",
            self.model,
            self.method,
            self.is_dense,
            self.params,
            self.dense_params,
            self.macs,
            self.dense_macs
        );
        if self.seconds_before > 0.0 {
            text += &format!("{DENSE_SECONDS_KEY} {}\n", self.seconds_before);
        }
        text
    }

    /// A run of a results folder: `summary.txt` and `metrics.csv` (accuracy of the last and the best
    /// evaluated epoch, wall time of the last).
    fn read_recorded(dir: &Path) -> Result<RunSummary> {
        let path = dir.join(SUMMARY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, "cannot read", e))?;
        let value = |key: &str| -> Result<&str> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .ok_or_else(|| crate::Error::file(&path, format!("lacks the line \"{key} …\"")))
        };
        let count = |key: &str| -> Result<usize> {
            value(key)?
                .parse()
                .map_err(|_| crate::Error::file(&path, format!("{key} is not a count")))
        };
        let rows = metrics::read_csv(&dir.join("metrics.csv"))?;
        let tested: Vec<f32> = rows.iter().filter_map(|r| r.test_accuracy).collect();
        Ok(RunSummary {
            folder: dir
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            model: value("model")?.to_string(),
            method: value("method")?.to_string(),
            is_dense: value("dense")? == "true",
            accuracy: tested.last().copied().unwrap_or(f32::NAN),
            best_accuracy: tested.iter().copied().fold(f32::NAN, f32::max),
            params: count("params")?,
            dense_params: count("dense_params")?,
            macs: count("macs")?,
            dense_macs: count("dense_macs")?,
            seconds: rows.last().map_or(f64::NAN, |r| r.elapsed_seconds),
            seconds_before: value(DENSE_SECONDS_KEY)
                .ok()
                .and_then(|seconds| seconds.parse().ok())
                .unwrap_or(0.0),
            full_width: None,
        })
    }
}

/// Every run folder (a sub-folder holding last.ckpt, or summary.txt) of `dir`, sorted by name.
pub fn read_runs(dir: &Path) -> Result<Vec<RunSummary>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, "cannot list the runs folder", e))?;
    let mut folders: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("last.ckpt").is_file() || p.join(SUMMARY_FILE).is_file())
        .collect();
    folders.sort();
    let mut runs: Vec<RunSummary> = folders
        .iter()
        .map(|f| RunSummary::read(f))
        .collect::<Result<_>>()?;
    // A narrow dense run beside runs of its full-width model is that model's thin baseline.
    let models: Vec<String> = runs.iter().map(|r| r.model.clone()).collect();
    for run in &mut runs {
        if let Some((full_name, dense_params, dense_macs)) = run.full_width.clone() {
            if models.contains(&full_name) {
                let width = run.model.rsplit("-w").next().unwrap_or_default().to_string();
                run.method = format!("thin dense, width {width}");
                run.model = full_name;
                run.is_dense = false;
                (run.dense_params, run.dense_macs) = (dense_params, dense_macs);
            }
        }
    }
    Ok(runs)
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
        // A converted run's wall time is the route's: the dense run's and its own.
        let wall = match run.seconds_before {
            before if before > 0.0 => format!(
                "{:.0} s ({before:.0} s dense + {:.0} s)",
                before + run.seconds,
                run.seconds
            ),
            _ => format!("{:.0} s", run.seconds),
        };
        text += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {wall} |\n",
            run.folder,
            run.model,
            run.method,
            baseline_text,
            100.0 * run.accuracy,
            100.0 * run.best_accuracy,
            change,
            100.0 * (1.0 - run.macs as f64 / run.dense_macs.max(1) as f64),
            100.0 * (1.0 - run.params as f64 / run.dense_params.max(1) as f64),
        );
    }
    text
}

/// The picture a reader of a pruning paper looks at first: test accuracy (last epoch) against the
/// MAC reduction, one point per run, the runs of one method joined in order of reduction (dense
/// black, SBF orange, L1 pruning blue, thin dense green, other plans grey).
pub fn accuracy_against_macs(runs: &[RunSummary]) -> image::RgbImage {
    use super::metrics::{draw_panel, text, text_width, tick_labels, ticks, Panel, Series, AXIS_COLOUR};
    use image::{Rgb, RgbImage};
    let (width, height) = (640u32, 420u32);
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let reduction = |r: &RunSummary| 100.0 * (1.0 - r.macs as f64 / r.dense_macs.max(1) as f64);
    let accuracies: Vec<f64> = runs
        .iter()
        .map(|r| 100.0 * r.accuracy as f64)
        .filter(|a| a.is_finite())
        .collect();
    let (low, high) = accuracies
        .iter()
        .fold((100.0f64, 0.0f64), |(l, h), &a| (l.min(a), h.max(a)));
    let (low, high) = ((low - 1.0).floor().max(0.0), (high + 1.0).ceil().min(100.0));
    let panel = Panel {
        left: 64,
        top: 40,
        width: width as i64 - 64 - 24,
        height: height as i64 - 40 - 56,
        x_range: (0.0, 100.0),
        y_range: (low, high.max(low + 1.0)),
    };
    let kinds: [(&str, Rgb<u8>); 5] = [
        ("DENSE", AXIS_COLOUR),
        ("SBF", Rgb([255, 127, 14])),
        ("L1", Rgb([31, 119, 180])),
        ("THIN", Rgb([44, 160, 44])),
        ("OTHER", Rgb([150, 150, 150])),
    ];
    let kind_of = |r: &RunSummary| match () {
        _ if r.is_dense => 0,
        _ if r.method.starts_with("SBF") => 1,
        _ if r.method.starts_with("L1") => 2,
        _ if r.method.starts_with("thin") => 3,
        _ => 4,
    };
    let series: Vec<Series> = kinds
        .iter()
        .enumerate()
        .map(|(k, &(_, colour))| {
            let mut points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| kind_of(r) == k && r.accuracy.is_finite())
                .map(|r| (reduction(r), 100.0 * r.accuracy as f64))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (points, colour)
        })
        .collect();
    draw_panel(&mut image, &panel, &series);
    let x_ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| (20.0 * i as f64, format!("{}", 20 * i)))
        .collect();
    let y_ticks: Vec<(f64, String)> = ticks(panel.y_range.0, panel.y_range.1, 5)
        .into_iter()
        .map(|v| (v, format!("{v}")))
        .collect();
    tick_labels(&mut image, &panel, &x_ticks, &y_ticks);
    text(
        &mut image,
        panel.left,
        12,
        "TEST ACCURACY % AGAINST MAC REDUCTION %",
        AXIS_COLOUR,
    );
    let bottom = panel.top + panel.height;
    let label = "FEWER MACS %";
    text(
        &mut image,
        panel.left + panel.width / 2 - text_width(label) / 2,
        bottom + 28,
        label,
        AXIS_COLOUR,
    );
    let mut x = panel.left + panel.width;
    for (name, colour) in kinds.iter().rev() {
        x -= text_width(name) + 16;
        text(&mut image, x, panel.top + 8, name, *colour);
    }
    image
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
        let spec = ModelSpec::parse_name("resnet8").unwrap();
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

    /// A run folder holding a model trained for 2 epochs whose metrics say `accuracy` on each.
    fn write_run(dir: &Path, model: &str, accuracy: f32) {
        std::fs::create_dir_all(dir).unwrap();
        let spec = ModelSpec::parse_name(model).unwrap();
        let mut trainer = Trainer::new(&spec, TrainConfig::recipe(), 1000).unwrap();
        (trainer.epoch, trainer.best_test_accuracy) = (2, accuracy);
        trainer.to_checkpoint().save(&dir.join("last.ckpt")).unwrap();
        let row = |epoch| MetricsRow {
            epoch,
            learning_rate: 0.1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            test_loss: Some(1.0),
            test_accuracy: Some(accuracy),
            images_per_second: 100.0,
            elapsed_seconds: 10.0 * epoch as f64,
        };
        write_csv(&dir.join("metrics.csv"), &[row(1), row(2)]).unwrap();
    }

    #[test]
    fn a_converted_run_s_wall_time_includes_the_dense_run_s() {
        let dir = std::env::temp_dir().join(format!("sbfnet-report-converted-{}", std::process::id()));
        let converted = dir.join("converted");
        write_run(&converted, "resnet8", 0.6);
        std::fs::write(
            converted.join(CONVERSION_NOTE),
            "from dense/last.ckpt\ndense_seconds 100\n",
        )
        .unwrap();
        let run = RunSummary::read(&converted).unwrap();
        assert_eq!(run.seconds_before, 100.0);
        // A results folder keeps it in summary.txt.
        let recorded = dir.join("recorded");
        std::fs::create_dir_all(&recorded).unwrap();
        std::fs::write(recorded.join(SUMMARY_FILE), run.summary_text()).unwrap();
        std::fs::copy(converted.join("metrics.csv"), recorded.join("metrics.csv")).unwrap();
        let again = RunSummary::read(&recorded).unwrap();
        assert_eq!((again.seconds, again.seconds_before), (20.0, 100.0));
        let table = markdown_table(&[again]);
        assert!(table.contains("| 120 s (100 s dense + 20 s) |"), "{table}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_thin_dense_run_stands_beside_the_full_width_model() {
        let dir = std::env::temp_dir().join(format!("sbfnet-report-thin-{}", std::process::id()));
        write_run(&dir.join("dense"), "resnet8", 0.7);
        write_run(&dir.join("thin"), "resnet8-w8", 0.6);
        let runs = read_runs(&dir).unwrap();
        let thin = runs.iter().find(|r| r.folder == "thin").unwrap();
        assert_eq!((thin.model.as_str(), thin.is_dense), ("resnet8", false));
        assert_eq!(thin.method, "thin dense, width 8");
        // Half the width: about a quarter of the MACs of the full-width network.
        let kept = thin.macs as f64 / thin.dense_macs as f64;
        assert!((0.2..0.3).contains(&kept), "{kept}");
        let table = markdown_table(&runs);
        let line = table.lines().find(|l| l.starts_with("| thin ")).unwrap();
        assert!(line.contains("| 70.00 | 60.00 | 60.00 | -10.00 |"), "{table}");
        // Without the full-width model beside it, a narrow dense run is its own dense baseline.
        std::fs::remove_dir_all(dir.join("dense")).unwrap();
        let alone = read_runs(&dir).unwrap();
        assert_eq!((alone[0].model.as_str(), alone[0].is_dense), ("resnet8-w8", true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
