//! A whole training run: the epoch loop that `sbfnet train`, `sbfnet prune` and
//! examples/train_tiny.rs share.
//!
//! ```text
//!   for each epoch until the planned last one:
//!       train one epoch (stop between steps when asked; a numerical fault ends the run)
//!       with a time budget: re-plan how many epochs fit, and stretch or shrink the schedule
//!       every `eval_every`-th epoch and the last: evaluate on the test set
//!       write, each atomically, in this order:
//!           metrics.csv, learning_curve.png        (rows up to this epoch)
//!           best.ckpt                              (when the test accuracy is the best so far)
//!           last.ckpt
//!           pruning.csv                            (a run with a pruning ramp)
//! ```
//! The order makes every moment safe to be killed in: `last.ckpt` is always a finished
//! epoch, and a resumed run drops the metrics rows written after it. A run stopped through
//! [`RunOptions::stop`] saves its unfinished epoch in `last.ckpt` ([`super::PartialEpoch`]);
//! resumed, it continues from the next step. What happens is
//! reported to an [`Observer`]; the command line draws a progress bar from it.
//!
//! ```
//! use sbfnet::data::synthetic::synthetic_set;
//! use sbfnet::nn::ModelSpec;
//! use sbfnet::train::{run, RunEnd, RunOptions, Silent, TrainConfig, Trainer};
//!
//! let (train, test) = (synthetic_set(64, 10, 1), synthetic_set(32, 10, 2));
//! let config = TrainConfig { epochs: 2, batch_size: 32, ..TrainConfig::recipe() };
//! let mut trainer = Trainer::new(&ModelSpec::parse_name("resnet8-w4")?, config, train.len())?;
//! let out = std::env::temp_dir().join(format!("sbfnet-run-doc-{}", std::process::id()));
//! let summary = run(&mut trainer, &train, &test, &RunOptions::new(&out), &mut Silent)?;
//! assert_eq!((summary.end, summary.epochs), (RunEnd::Finished, 2));
//! assert!(out.join("last.ckpt").exists() && out.join("metrics.csv").exists());
//! # std::fs::remove_dir_all(&out).unwrap();
//! # Ok::<(), sbfnet::Error>(())
//! ```

use super::evaluate::{Evaluation, TestViews};
use super::metrics::{self, MetricsRow};
use super::numerics::NumericalFault;
use super::time_budget::{self, BudgetState};
use super::trainer::{EpochResult, Progress, Trainer};
use crate::checkpoint::{remove_stale_temporaries, Checkpoint};
use crate::data::cifar::Cifar10;
use crate::error::{Error, Result};
use crate::prune::PruneState;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Metadata key of the number of test images a run evaluates on (a resumed run keeps it).
pub const TEST_IMAGES_KEY: &str = "test_images";
/// Metadata key of the run's `eval_every` (a resumed run keeps it unless told otherwise).
pub const EVAL_EVERY_KEY: &str = "eval_every";
/// Metadata key of the run's test views, as `TestViews::describe` writes them (kept likewise).
pub const TEST_VIEWS_KEY: &str = "test_views";

/// Where a run writes and how it evaluates: output settings, not training ones (a resumed
/// run may change them without changing what it learns).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run's folder: checkpoints, metrics.csv, learning_curve.png, pruning.csv.
    pub out: PathBuf,
    /// Evaluate after every `eval_every`-th epoch and after the last (at least 1).
    pub eval_every: usize,
    /// The views of each test image an evaluation averages.
    pub test_views: TestViews,
    /// Checked before every step: once set, the run stops (see [`RunEnd::Stopped`]).
    pub stop: Option<Arc<AtomicBool>>,
    /// Remove `out` when the run ends before it wrote anything there and the folder is empty
    /// (the caller made the folder for this run).
    pub remove_unused_folder: bool,
    /// Write metrics, learning curve, pruning log and checkpoints into `out`; false on every
    /// process of a run across processes but rank 0.
    pub writes: bool,
}

impl RunOptions {
    /// Evaluate every epoch on the plain test images; never stopped from outside.
    pub fn new(out: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out: out.into(),
            eval_every: 1,
            test_views: TestViews::Plain,
            stop: None,
            remove_unused_folder: false,
            writes: true,
        }
    }
}

/// The pruning state after an epoch of a run with a pruning ramp.
#[derive(Clone, Debug, PartialEq)]
pub struct PruningSummary {
    /// Fraction of the SBF layers' filters that are transformed copies.
    pub transformed_fraction: f64,
    /// MACs per image of the whole model.
    pub macs: usize,
    /// Templates M/N of every SBF layer.
    pub templates: String,
}

/// What an epoch gave, as an [`Observer`] sees it.
#[derive(Clone, Debug)]
pub struct EpochReport {
    pub result: EpochResult,
    /// The run's length as now planned (a time budget may change it).
    pub planned_epochs: usize,
    /// None after an epoch that `eval_every` skips.
    pub evaluation: Option<Evaluation>,
    /// The evaluation is the best so far (`best.ckpt` was written).
    pub best: bool,
    /// Seconds of training and evaluation over the whole run, resumed sessions included.
    pub elapsed_seconds: f64,
    /// Estimated seconds until the last planned epoch ends, from this session's epochs.
    pub remaining_seconds: f64,
    pub pruning: Option<PruningSummary>,
}

/// Receives what a run does, as it does it. Every method has an empty default.
pub trait Observer {
    /// Epoch `epoch` (1-based) of `planned_epochs` starts; it has `steps` steps.
    fn epoch_started(&mut self, _epoch: usize, _planned_epochs: usize, _steps: usize) {}
    /// After every training step.
    fn step(&mut self, _progress: &Progress) {}
    /// The test set is being evaluated: `done` of `total` images.
    fn evaluating(&mut self, _done: usize, _total: usize) {}
    /// After an epoch's files are written.
    fn epoch_finished(&mut self, _report: &EpochReport) {}
    /// Something worth a line: a re-planned budget, a skipped batch, a removed temporary file.
    fn note(&mut self, _text: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Every planned epoch is done.
    Finished,
    /// Stopped through [`RunOptions::stop`] during epoch `epoch` (1-based), after `step` of its
    /// `steps` steps. When `saved`, `last.ckpt` holds the unfinished epoch and a resumed run
    /// continues it from its next step; otherwise (no step done) it holds the epoch before.
    Stopped {
        epoch: usize,
        step: usize,
        steps: usize,
        saved: bool,
    },
}

/// What [`run`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub end: RunEnd,
    /// Epochs completed (over every session of the run).
    pub epochs: usize,
    pub best_test_accuracy: f32,
}

/// Trains `trainer` from where it stands to its last planned epoch, evaluating on `test` and
/// writing into `options.out` (created if missing). A trainer resumed from a checkpoint
/// continues its run: the rows of `metrics.csv` after its epoch are dropped.
pub fn run(
    trainer: &mut Trainer,
    train: &Cifar10,
    test: &Cifar10,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    if options.eval_every == 0 {
        return Err(Error::msg("eval_every must be at least 1"));
    }
    let out = &options.out;
    let writes = options.writes;
    if writes {
        prepare_out_folder(out, observer)?;
    }
    let csv_path = out.join("metrics.csv");
    let mut rows: Vec<MetricsRow> = if trainer.epoch > 0 && csv_path.exists() {
        metrics::read_csv(&csv_path)?
            .into_iter()
            .filter(|r| r.epoch <= trainer.epoch)
            .collect()
    } else {
        Vec::new()
    };
    let never = AtomicBool::new(false);
    let stop = options.stop.as_deref().unwrap_or(&never);
    let (session_started, first_epoch) = (Instant::now(), trainer.epoch);
    let evaluation_keys = evaluation_metadata(test.len(), options);
    // What training epochs and evaluations cost in this session (for a time budget's plan).
    let (mut epoch_seconds, mut eval_seconds) = (Vec::new(), None);
    while trainer.epoch < trainer.planned_epochs {
        let steps = trainer.config.steps_in_epoch(trainer.epoch, train.len());
        observer.epoch_started(trainer.epoch + 1, trainer.planned_epochs, steps);
        let result = trainer.train_epoch_until(train, |p| observer.step(p), stop);
        // A fault keeps the last good checkpoint: nothing of this epoch is saved.
        let result = match result {
            Ok(Some(result)) => result,
            Ok(None) => {
                let done = trainer.partial.as_ref().map_or(0, |p| p.steps);
                // The unfinished epoch goes into last.ckpt, to be continued from its next step.
                if done > 0 && writes {
                    save_last(trainer, out, &evaluation_keys)?;
                }
                let end = RunEnd::Stopped {
                    epoch: trainer.epoch + 1,
                    step: done,
                    steps,
                    saved: done > 0,
                };
                if done == 0 && writes {
                    remove_if_unused(options, trainer.epoch);
                }
                return Ok(summary(trainer, end));
            }
            Err(fault) => {
                if writes {
                    remove_if_unused(options, trainer.epoch);
                }
                return Err(diverged(&fault, out));
            }
        };
        for fault in &result.skipped {
            observer.note(&format!("skipped {fault}"));
        }
        if result.skipped_batches == steps {
            return Err(Error::msg(format!(
                "training diverged: every batch of epoch {} had a non-finite loss or gradient and was skipped; \
                 nothing of it is saved (try a lower `learning_rate` or more `warmup_epochs`)",
                result.epoch
            )));
        }
        epoch_seconds.push(result.seconds);
        replan_to_budget(
            trainer,
            &epoch_seconds,
            eval_seconds,
            options.eval_every,
            observer,
        );
        let evaluation = (trainer.epoch.is_multiple_of(options.eval_every)
            || trainer.epoch == trainer.planned_epochs)
            .then(|| {
                let started = Instant::now();
                let evaluation = trainer.evaluate_views(
                    test,
                    trainer.config.batch_size.max(128),
                    options.test_views,
                    &mut |done, total| observer.evaluating(done, total),
                );
                let seconds = started.elapsed().as_secs_f64();
                trainer.elapsed_seconds += seconds;
                eval_seconds = Some(seconds);
                evaluation
            });
        let best = match &evaluation {
            Some(e) if e.accuracy > trainer.best_test_accuracy => {
                trainer.best_test_accuracy = e.accuracy;
                true
            }
            _ => false,
        };
        rows.push(MetricsRow {
            epoch: result.epoch,
            learning_rate: result.learning_rate,
            train_loss: result.loss,
            train_accuracy: result.accuracy,
            test_loss: evaluation.as_ref().map(|e| e.loss),
            test_accuracy: evaluation.as_ref().map(|e| e.accuracy),
            images_per_second: result.images_per_second,
            elapsed_seconds: trainer.elapsed_seconds,
        });
        let pruning = if writes {
            write_epoch(trainer, out, &rows, best, &evaluation_keys, result.epoch)?
        } else {
            None
        };
        let session_epochs = (trainer.epoch - first_epoch) as f64;
        observer.epoch_finished(&EpochReport {
            planned_epochs: trainer.planned_epochs,
            evaluation,
            best,
            elapsed_seconds: trainer.elapsed_seconds,
            remaining_seconds: session_started.elapsed().as_secs_f64() / session_epochs
                * (trainer.planned_epochs - trainer.epoch) as f64,
            pruning,
            result,
        });
    }
    Ok(summary(trainer, RunEnd::Finished))
}

/// Creates `out` and removes the partial writes an interrupted run left there.
fn prepare_out_folder(out: &Path, observer: &mut dyn Observer) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "cannot create the output folder", e))?;
    for file in [
        "last.ckpt",
        "best.ckpt",
        "metrics.csv",
        "learning_curve.png",
        "pruning.csv",
    ] {
        for stale in remove_stale_temporaries(&out.join(file))? {
            observer.note(&format!(
                "removed {}: the partial write of an interrupted run",
                stale.display()
            ));
        }
    }
    Ok(())
}

/// Writes what an epoch leaves in `out`: metrics.csv, the learning curve, best.ckpt if
/// `best`, last.ckpt and the pruning log; returns the pruning state of a pruning run.
fn write_epoch(
    trainer: &Trainer,
    out: &Path,
    rows: &[MetricsRow],
    best: bool,
    evaluation_keys: &[(String, String)],
    epoch: usize,
) -> Result<Option<PruningSummary>> {
    // Metrics first: a run killed before last.ckpt is written resumes from the
    // epoch before, and drops the rows after that epoch when it reads metrics.csv.
    metrics::write_csv(&out.join("metrics.csv"), rows)?;
    let transformed = match trainer.pruning {
        Some(_) => transformed_fractions(trainer, &out.join("pruning.csv"), epoch),
        None => Vec::new(),
    };
    metrics::write_learning_curve(&out.join("learning_curve.png"), rows, &transformed)?;
    if best {
        checkpoint_of(trainer, evaluation_keys).save(&out.join("best.ckpt"))?;
    }
    save_last(trainer, out, evaluation_keys)?;
    match trainer.pruning {
        Some(_) => Ok(Some(log_pruning(trainer, &out.join("pruning.csv"), epoch)?)),
        None => Ok(None),
    }
}

/// How the run evaluates, for its checkpoints: the number of test images, `eval_every` and
/// the test views, which a resumed run keeps unless told otherwise.
fn evaluation_metadata(test_images: usize, options: &RunOptions) -> Vec<(String, String)> {
    vec![
        (TEST_IMAGES_KEY.into(), test_images.to_string()),
        (EVAL_EVERY_KEY.into(), options.eval_every.to_string()),
        (TEST_VIEWS_KEY.into(), options.test_views.describe().into()),
    ]
}

/// The trainer's checkpoint, with how the run evaluates ([`evaluation_metadata`]).
fn checkpoint_of(trainer: &Trainer, evaluation_keys: &[(String, String)]) -> Checkpoint {
    let mut checkpoint = trainer.to_checkpoint();
    checkpoint.metadata.extend_from_slice(evaluation_keys);
    checkpoint
}

/// Writes `out/last.ckpt`: where the run stands.
fn save_last(trainer: &Trainer, out: &Path, evaluation_keys: &[(String, String)]) -> Result<()> {
    checkpoint_of(trainer, evaluation_keys).save(&out.join("last.ckpt"))
}

fn summary(trainer: &Trainer, end: RunEnd) -> RunSummary {
    RunSummary {
        end,
        epochs: trainer.epoch,
        best_test_accuracy: trainer.best_test_accuracy,
    }
}

/// With a time budget: after every epoch, plan how many epochs fit from the mean of the last
/// epochs and the last evaluation, at most the configured epochs, and reshape the schedule
/// (across processes, every process takes rank 0's plan).
fn replan_to_budget(
    trainer: &mut Trainer,
    epoch_seconds: &[f64],
    eval_seconds: Option<f64>,
    eval_every: usize,
    observer: &mut dyn Observer,
) {
    let Some(minutes) = trainer.config.time_budget_minutes else {
        return;
    };
    let last = *epoch_seconds.last().expect("called after an epoch");
    let train_epoch_seconds = time_budget::recent_epoch_seconds(epoch_seconds).unwrap_or(last);
    let planned = time_budget::epochs_within_budget(&BudgetState {
        budget_seconds: 60.0 * minutes as f64,
        elapsed_seconds: trainer.elapsed_seconds,
        epochs_done: trainer.epoch,
        max_epochs: trainer.config.epochs,
        train_epoch_seconds,
        // Before the first evaluation: 10 % of an epoch, about what ResNet-20's costs.
        eval_seconds: eval_seconds.unwrap_or(0.1 * train_epoch_seconds),
        eval_every,
    });
    // A pruning ramp is fixed when the run starts: the run lasts until its last step has trained
    // for an epoch, even past the budget.
    let planned = match trainer.pruning {
        Some(pruning) => planned.max(pruning.ramp.epochs_needed()),
        None => planned,
    };
    // Across processes every clock differs: all follow rank 0's plan.
    let planned = trainer.rank_zero_value(planned);
    if planned != trainer.planned_epochs {
        observer.note(&format!(
            "time budget: {planned} epochs fit in {minutes} min (were {}); the schedule now ends there",
            trainer.planned_epochs
        ));
        trainer.plan_epochs(planned);
    }
}

/// A run that ends before its first epoch is saved leaves no empty folder behind.
fn remove_if_unused(options: &RunOptions, epochs_done: usize) {
    if options.remove_unused_folder && epochs_done == 0 {
        // Fails, and keeps the folder, when anything is in it.
        let _ = std::fs::remove_dir(&options.out);
    }
}

/// The one line a run stopped by a numerical fault ends with.
fn diverged(fault: &NumericalFault, out: &Path) -> Error {
    let kept = if fault.epoch > 1 {
        format!(
            "{} (epoch {}) is kept",
            out.join("last.ckpt").display(),
            fault.epoch - 1
        )
    } else {
        "no checkpoint was written yet".into()
    };
    let hint = if fault.kind.can_skip() {
        "try a lower `learning_rate` or more `warmup_epochs`, or `on_nonfinite` skip to skip such batches"
    } else {
        "try a lower `learning_rate` or more `warmup_epochs`"
    };
    Error::msg(format!(
        "training diverged at {fault}; nothing of epoch {} is saved, {kept} ({hint})",
        fault.epoch
    ))
}

/// The transformed fraction after every epoch up to `epoch`: the earlier ones from `pruning.csv`,
/// this one from the model.
fn transformed_fractions(trainer: &Trainer, log: &Path, epoch: usize) -> Vec<(usize, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut fractions: Vec<(usize, f64)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            let row_epoch = fields.next()?.parse().ok()?;
            Some((row_epoch, fields.next()?.parse().ok()?))
        })
        .filter(|&(e, _)| e < epoch)
        .collect();
    fractions.push((epoch, PruneState::of(&trainer.model).transformed_fraction()));
    fractions
}

/// The pruning state after `epoch`, appended to `pruning.csv`.
fn log_pruning(trainer: &Trainer, path: &Path, epoch: usize) -> Result<PruningSummary> {
    let state = PruneState::of(&trainer.model);
    let macs: usize = trainer
        .model
        .layer_table(&trainer.store)
        .iter()
        .map(|r| r.macs)
        .sum();
    write_pruning_log(path, epoch, &state, macs, trainer.store.num_scalars())?;
    Ok(PruningSummary {
        transformed_fraction: state.transformed_fraction(),
        macs,
        templates: state.templates_text(),
    })
}

/// Rewrites `pruning.csv` with one row per epoch up to `epoch` (rows of later epochs, left by an
/// interrupted session, are dropped): epoch, transformed fraction, MACs per image, parameters,
/// and the templates M/N of every SBF layer.
fn write_pruning_log(
    path: &Path,
    epoch: usize,
    state: &PruneState,
    macs: usize,
    params: usize,
) -> Result<()> {
    let header = format!(
        "epoch,transformed_fraction,macs,params,{}",
        state
            .layers
            .iter()
            .map(|l| l.0.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut lines: Vec<String> = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .skip(1)
            .filter(|line| {
                line.split(',')
                    .next()
                    .and_then(|e| e.parse::<usize>().ok())
                    .is_some_and(|e| e < epoch)
            })
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    };
    let templates: Vec<String> = state.layers.iter().map(|(_, m, n)| format!("{m}/{n}")).collect();
    lines.push(format!(
        "{epoch},{:.5},{macs},{params},{}",
        state.transformed_fraction(),
        templates.join(",")
    ));
    let text = std::iter::once(header)
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    crate::checkpoint::write_atomically(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::synthetic_set;
    use crate::nn::ModelSpec;
    use crate::train::TrainConfig;
    use std::sync::atomic::Ordering;

    /// Sets the stop flag once `after` steps of the run are done.
    struct StopAfter {
        after: usize,
        seen: usize,
        stop: Arc<AtomicBool>,
    }

    impl Observer for StopAfter {
        fn step(&mut self, _: &Progress) {
            self.seen += 1;
            if self.seen == self.after {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Runs `trainer` with `options(stop)` until an observer sets `stop` after `after` steps.
    fn run_stopped_after(
        after: usize,
        trainer: &mut Trainer,
        (train, test): (&Cifar10, &Cifar10),
        options: RunOptions,
        stop: Arc<AtomicBool>,
    ) -> RunEnd {
        let mut observer = StopAfter { after, seen: 0, stop };
        run(trainer, train, test, &options, &mut observer).unwrap().end
    }

    /// Runs `trainer` to its end (or its stop flag) without output.
    fn run_silent(trainer: &mut Trainer, (train, test): (&Cifar10, &Cifar10), options: RunOptions) -> RunEnd {
        run(trainer, train, test, &options, &mut Silent).unwrap().end
    }

    /// The trainer of `folder`'s last.ckpt.
    fn resumed_from(folder: &Path, train_images: usize) -> Trainer {
        let path = folder.join("last.ckpt");
        Trainer::from_checkpoint(&Checkpoint::load(&path).unwrap(), &path, train_images).unwrap()
    }

    /// `a` and `b` hold the same parameters, bit for bit.
    fn assert_same_parameters(a: &Trainer, b: &Trainer) {
        for (a, b) in a.store.params.iter().zip(&b.store.params) {
            assert_eq!(a.value.data, b.value.data, "{}", a.name);
        }
    }

    #[test]
    fn a_stopped_run_saves_its_unfinished_epoch_or_leaves_no_folder() {
        let (train, test) = (synthetic_set(64, 10, 1), synthetic_set(16, 10, 2));
        let config = TrainConfig {
            epochs: 2,
            batch_size: 16,
            ..TrainConfig::recipe()
        };
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let root = std::env::temp_dir().join(format!("sbfnet-run-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let fresh = || Trainer::new(&spec, config.clone(), train.len()).unwrap();
        let options = |name: &str, stop: &Arc<AtomicBool>| RunOptions {
            stop: Some(stop.clone()),
            remove_unused_folder: true,
            ..RunOptions::new(root.join(name))
        };

        let stopped = |epoch, step, saved| RunEnd::Stopped {
            epoch,
            step,
            steps: 4,
            saved,
        };
        // Stopped before its first step: nothing to save, and the folder is gone.
        let stop = Arc::new(AtomicBool::new(true));
        let summary = run(&mut fresh(), &train, &test, &options("early", &stop), &mut Silent).unwrap();
        assert_eq!(summary.end, stopped(1, 0, false));
        assert!(!root.join("early").exists());

        // Stopped after step 6 (epoch 2): last.ckpt holds the unfinished epoch, and the resumed
        // run ends with the parameters of the run that was never stopped.
        let never = Arc::new(AtomicBool::new(false));
        let mut straight = fresh();
        run(
            &mut straight,
            &train,
            &test,
            &options("straight", &never),
            &mut Silent,
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let end = run_stopped_after(6, &mut fresh(), (&train, &test), options("stopped", &stop), stop);
        assert_eq!(end, stopped(2, 2, true));
        let mut resumed = resumed_from(&root.join("stopped"), 64);
        assert_eq!(
            (resumed.epoch, resumed.partial.as_ref().map(|p| p.steps)),
            (1, Some(2))
        );
        let end = run_silent(&mut resumed, (&train, &test), options("stopped", &never));
        assert_eq!(end, RunEnd::Finished);
        assert_same_parameters(&resumed, &straight);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_fractional_last_epoch_trains_its_share_and_resumes_bit_exact() {
        let (train, test) = (synthetic_set(64, 10, 1), synthetic_set(16, 10, 2));
        let mut config = TrainConfig {
            batch_size: 16,
            ..TrainConfig::recipe()
        };
        config.set("epochs", "1.75").unwrap(); // 4 steps, then ⌈0.75 · 4⌉ = 3: 7 in all
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let root = std::env::temp_dir().join(format!("sbfnet-run-fraction-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let fresh = || Trainer::new(&spec, config.clone(), train.len()).unwrap();
        let options = |name: &str, stop: &Arc<AtomicBool>| RunOptions {
            stop: Some(stop.clone()),
            ..RunOptions::new(root.join(name))
        };
        let never = Arc::new(AtomicBool::new(false));
        let mut straight = fresh();
        let summary = run(
            &mut straight,
            &train,
            &test,
            &options("straight", &never),
            &mut Silent,
        )
        .unwrap();
        assert_eq!(
            (
                summary.end,
                straight.epoch,
                straight.step,
                straight.schedule.total_steps
            ),
            (RunEnd::Finished, 2, 7, 7)
        );
        // Stopped after step 5, the last epoch's first of 3, and resumed: the same parameters.
        let stop = Arc::new(AtomicBool::new(false));
        let end = run_stopped_after(5, &mut fresh(), (&train, &test), options("stopped", &stop), stop);
        let stopped = RunEnd::Stopped {
            epoch: 2,
            step: 1,
            steps: 3,
            saved: true,
        };
        assert_eq!(end, stopped);
        let mut resumed = resumed_from(&root.join("stopped"), 64);
        assert_eq!(resumed.config.epochs_text(), "1.75");
        let end = run_silent(&mut resumed, (&train, &test), options("stopped", &never));
        assert_eq!((end, resumed.step), (RunEnd::Finished, 7));
        assert_same_parameters(&resumed, &straight);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
