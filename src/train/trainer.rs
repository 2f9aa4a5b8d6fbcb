//! The data-parallel trainer.
//!
//! One optimisation step on a mini-batch of B images:
//! ```text
//!   split the batch into S shards of ⌊B/S⌋ or ⌈B/S⌉ images (S = `TrainConfig::shards`)
//!   in parallel, shard s (n_s images) on its own Tape, all reading the same &ParamStore:
//!       loss_s = mean cross-entropy over the shard (or its distillation from a teacher)
//!       backward seeded with n_s/B, so   ∂(n_s/B · loss_s)/∂w  is this shard's share
//!   ∂L/∂w = Σ_s ∂(n_s/B · loss_s)/∂w      (summed in shard order: deterministic)
//!         = gradient of the mean loss over the whole batch
//!   one SGD step with the learning rate of this iteration
//!   fold every shard's batch-norm statistics into the running statistics
//! ```
//! Batch norm normalises each shard with that shard's own batch statistics
//! (as PyTorch's DataParallel / DDP without SyncBatchNorm do), so with BN the
//! gradient depends on S. The running statistics are merged exactly over the
//! shards by [`ParamStore::apply_batch_statistics`]. S is saved in checkpoints,
//! so a resumed run splits its batches exactly as the original did.
//!
//! Shards run as rayon tasks; the kernels inside them may use rayon too
//! (work stealing balances both levels). Set the number of threads with
//! `rayon::ThreadPoolBuilder` (the command line's `--threads`).
//!
//! Shards = threads is the faster choice (the command line's default):
//! measured with `sbfnet bench-train` on the 2-core VM, ResNet-20 at batch 128
//! and 2 threads, 2 shards ran 1.2–1.3× the images per second of 1 shard with
//! parallel kernels (each core works through its own tape with no barrier
//! after every op; the kernels' inner parallelism still lets an idle core
//! steal work), and used less CPU time per step.
//!
//! Randomness: the model is initialised from `seed`; every epoch's shuffle and
//! augmentation come from an RNG derived from (seed, epoch) alone, so resuming
//! from a checkpoint written at the end of an epoch repeats the run bit for bit.

use super::distillation::Distillation;
use super::numerics::{self, FaultKind, NonFinitePolicy, NumericalFault};
use super::optimizer::{Sgd, SgdConfig};
use super::schedule::{Schedule, ScheduleKind};
use super::weight_average::WeightAverage;
use crate::autograd::{BatchStatistics, Mode, ParamId, ParamStore, Tape, Var};
use crate::data::augment::{flip_horizontally, make_batch, make_batch_into, Augmentation, RunPosition};
use crate::data::cifar::{Cifar10, NUM_CLASSES};
use crate::error::{Error, Result};
use crate::nn::model::Network;
use crate::nn::{Model, ModelSpec};
use crate::ops;
use crate::prune::{assignment_metadata, prune_step, restore_assignments, PruneSettings};
use crate::prune::{Saliency, TaylorScores};
use crate::tensor::Tensor;
use crate::train::checkpoint::Checkpoint;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

/// Every setting of a training run (saved in checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Shards each batch is split into (one rayon task each); the command line sets it to --threads.
    pub shards: usize,
    /// Peak learning rate.
    pub learning_rate: f32,
    pub sgd: SgdConfig,
    pub schedule: ScheduleKind,
    pub warmup_epochs: usize,
    pub label_smoothing: f32,
    pub augmentation: Augmentation,
    pub seed: u64,
    /// Train to this wall-clock budget, training and evaluation (`time_budget`): the run then
    /// re-plans its length after every epoch and `epochs` is the most it may have.
    pub time_budget_minutes: Option<f32>,
    /// Start every residual block as the identity: the scale γ of its last batch norm is 0 instead
    /// of 1 ([`crate::nn::resnet::ResNet::zero_init_residual`]; Goyal et al. 2017). ResNets only.
    pub zero_init_residual: bool,
    /// Evaluate and save an exponential moving average of the weights with this decay per
    /// step ([`WeightAverage`]); None: the live weights.
    pub ema_decay: Option<f32>,
}

impl TrainConfig {
    /// The default recipe: 50 epochs, batch 128, SGD with Nesterov momentum 0.9,
    /// weight decay 5e-4, learning rate 0.1 with 2 warm-up epochs then cosine to 0, crop + flip.
    pub fn recipe() -> TrainConfig {
        TrainConfig {
            epochs: 50,
            batch_size: 128,
            shards: 1,
            learning_rate: 0.1,
            sgd: SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 2,
            label_smoothing: 0.0,
            augmentation: Augmentation::CROP_FLIP,
            seed: 0,
            time_budget_minutes: None,
            zero_init_residual: false,
            ema_decay: None,
        }
    }

    /// Refuses impossible settings with one line that names the setting.
    pub fn validate(&self, train_images: usize) -> Result<()> {
        let fail = |m: String| Err(Error::msg(m));
        if self.epochs == 0 {
            return fail("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return fail("--batch-size must be at least 1".into());
        }
        if self.shards == 0 {
            return fail("--threads must be at least 1".into());
        }
        if self.batch_size < self.shards {
            return fail(format!(
                "--batch-size {} is smaller than --threads {}: every thread needs at least one image",
                self.batch_size, self.shards
            ));
        }
        if self.batch_size > train_images {
            return fail(format!(
                "--batch-size {} is larger than the {train_images} training images",
                self.batch_size
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return fail(format!(
                "--lr must be a positive number, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) {
            return fail(format!("--momentum must be in [0, 1), got {}", self.sgd.momentum));
        }
        if !(self.sgd.weight_decay >= 0.0 && self.sgd.weight_decay.is_finite()) {
            return fail(format!(
                "--weight-decay must be ≥ 0, got {}",
                self.sgd.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return fail(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if !(0.0..=180.0).contains(&self.augmentation.rotation_degrees) {
            return fail(format!(
                "--rotate must be in [0, 180] degrees, got {}",
                self.augmentation.rotation_degrees
            ));
        }
        if let Some(decay) = self.ema_decay {
            if !(decay > 0.0 && decay < 1.0) {
                return fail(format!(
                    "--ema {decay}: the decay must lie strictly between 0 and 1"
                ));
            }
        }
        if let Some(minutes) = self.time_budget_minutes {
            if !(minutes.is_finite() && minutes > 0.0) {
                return fail(format!(
                    "--time-budget must be a positive number of minutes, got {minutes}"
                ));
            }
        }
        Ok(())
    }

    /// Iterations per epoch: the last incomplete batch of each (reshuffled) epoch is dropped.
    pub fn steps_per_epoch(&self, train_images: usize) -> usize {
        train_images / self.batch_size
    }

    /// The per-iteration learning-rate schedule of a run of `epochs` epochs.
    pub fn schedule_for(&self, train_images: usize, epochs: usize) -> Schedule {
        let steps = self.steps_per_epoch(train_images);
        Schedule {
            kind: self.schedule,
            base: self.learning_rate,
            warmup_steps: self.warmup_epochs * steps,
            total_steps: epochs * steps,
        }
    }

    /// Key/value pairs for a checkpoint (floats in Rust's shortest round-trip form).
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        [
            ("epochs", self.epochs.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("shards", self.shards.to_string()),
            ("learning_rate", self.learning_rate.to_string()),
            ("momentum", self.sgd.momentum.to_string()),
            ("nesterov", self.sgd.nesterov.to_string()),
            ("weight_decay", self.sgd.weight_decay.to_string()),
            ("schedule", self.schedule.name().to_string()),
            ("warmup_epochs", self.warmup_epochs.to_string()),
            ("label_smoothing", self.label_smoothing.to_string()),
            ("augmentation", self.augmentation.describe()),
            ("seed", self.seed.to_string()),
            (
                "time_budget_minutes",
                self.time_budget_minutes.map_or("none".into(), |m| m.to_string()),
            ),
            ("zero_init_residual", self.zero_init_residual.to_string()),
            (
                "ema_decay",
                self.ema_decay.map_or("none".into(), |d| d.to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads [`TrainConfig::to_metadata`]'s pairs back; `path` names the checkpoint in errors.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path) -> Result<TrainConfig> {
        fn field<T: std::str::FromStr>(checkpoint: &Checkpoint, path: &Path, key: &str) -> Result<T> {
            let text = checkpoint.get(key).ok_or_else(|| {
                Error::file(path, format!("checkpoint lacks the training setting \"{key}\""))
            })?;
            text.parse().map_err(|_| {
                Error::file(
                    path,
                    format!("checkpoint setting {key} = \"{text}\" is not valid"),
                )
            })
        }
        macro_rules! field {
            ($key:expr) => {
                field(checkpoint, path, $key)?
            };
        }
        let schedule_text: String = field!("schedule");
        let augmentation_text: String = field!("augmentation");
        Ok(TrainConfig {
            epochs: field!("epochs"),
            batch_size: field!("batch_size"),
            shards: field!("shards"),
            learning_rate: field!("learning_rate"),
            sgd: SgdConfig {
                momentum: field!("momentum"),
                nesterov: field!("nesterov"),
                weight_decay: field!("weight_decay"),
            },
            schedule: ScheduleKind::parse(&schedule_text)
                .ok_or_else(|| Error::file(path, format!("unknown schedule \"{schedule_text}\"")))?,
            warmup_epochs: field!("warmup_epochs"),
            label_smoothing: field!("label_smoothing"),
            augmentation: Augmentation::parse(&augmentation_text)
                .ok_or_else(|| Error::file(path, format!("unknown augmentation \"{augmentation_text}\"")))?,
            seed: field!("seed"),
            // Absent from checkpoints written before budgets existed.
            time_budget_minutes: match checkpoint.get("time_budget_minutes") {
                None | Some("none") => None,
                Some(_) => Some(field!("time_budget_minutes")),
            },
            // Absent from checkpoints written before the option existed: they started at γ = 1.
            zero_init_residual: match checkpoint.get("zero_init_residual") {
                None => false,
                Some(_) => field!("zero_init_residual"),
            },
            // Absent from checkpoints written before weight averaging existed.
            ema_decay: match checkpoint.get("ema_decay") {
                None | Some("none") => None,
                Some(_) => Some(field!("ema_decay")),
            },
        })
    }
}

/// The RNG of epoch `epoch` (shuffle and augmentation): a function of (seed, epoch) only.
pub fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// What one optimisation step measured (on the training batch, in training mode).
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Images whose largest logit is their label.
    pub correct: usize,
    pub images: usize,
    pub learning_rate: f32,
    /// A non-finite loss, gradient or updated parameter (see [`numerics`]).
    /// A fault that [`FaultKind::can_skip`] left the parameters unchanged.
    pub fault: Option<FaultKind>,
}

/// Progress within an epoch, handed to the caller after every step.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Steps done in this epoch, 1..=steps.
    pub step: usize,
    pub steps: usize,
    /// Mean loss and accuracy over the epoch so far.
    pub loss: f32,
    pub accuracy: f32,
    pub images_per_second: f32,
    pub learning_rate: f32,
    /// Batches skipped so far in this epoch ([`NonFinitePolicy::Skip`]).
    pub skipped_batches: usize,
}

/// One epoch's training figures (loss and accuracy over the batches not skipped).
#[derive(Clone, Debug, PartialEq)]
pub struct EpochResult {
    /// 1-based number of the epoch just finished.
    pub epoch: usize,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f32,
    pub loss: f32,
    pub accuracy: f32,
    pub images_per_second: f32,
    pub seconds: f64,
    /// The batches skipped for a non-finite loss or gradient ([`NonFinitePolicy::Skip`]).
    pub skipped: Vec<NumericalFault>,
}

/// Accuracy and loss on a set, in evaluation mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f32,
    pub accuracy: f32,
    /// Accuracy of each class (NaN for a class with no image).
    pub per_class_accuracy: [f32; NUM_CLASSES],
    pub per_class_images: [usize; NUM_CLASSES],
}

/// Index of the largest value of each row of logits [N, K].
pub fn predictions(logits: &Tensor) -> Vec<usize> {
    let classes = logits.dim(1);
    logits
        .data
        .chunks(classes)
        .map(|row| (0..classes).fold(0, |best, k| if row[k] > row[best] { k } else { best }))
        .collect()
}

/// Values per parallel task when summing shard gradients.
const REDUCTION_CHUNK: usize = 1 << 14;

/// What one shard returns: its share of the loss (n_s/B · mean loss), its correct count, its BN statistics.
struct ShardResult {
    weighted_loss: f32,
    correct: usize,
    statistics: Vec<BatchStatistics>,
}

/// The loss a training step minimises: mean cross-entropy with label smoothing, or its
/// distillation from a teacher (`ops::distillation`).
#[derive(Clone, Copy)]
pub struct Objective<'a> {
    pub label_smoothing: f32,
    pub distillation: Option<&'a Distillation>,
}

impl Objective<'_> {
    /// Plain cross-entropy with `label_smoothing`.
    pub fn cross_entropy(label_smoothing: f32) -> Objective<'static> {
        Objective {
            label_smoothing,
            distillation: None,
        }
    }
}

/// The gradient of the mean loss over the batch `x` [B, 3, 32, 32], computed
/// on `worker_gradients.len()` shards in parallel and written into
/// `store`'s gradients (overwriting them). `worker_gradients[s]` is shard s's
/// reusable buffer, one tensor per parameter. Returns (mean loss, correct
/// count, batch statistics of every shard in shard order).
pub fn data_parallel_gradients(
    store: &mut ParamStore,
    worker_gradients: &mut [Vec<Tensor>],
    x: &Tensor,
    labels: &[usize],
    objective: Objective,
    forward: impl Fn(&mut Tape, Var) -> Var + Sync,
) -> (f32, usize, Vec<BatchStatistics>) {
    let batch = labels.len();
    let shards = worker_gradients.len();
    assert!(
        shards >= 1 && batch >= shards,
        "data_parallel_gradients: {batch} images cannot be split into {shards} shards"
    );
    let image_len = x.len() / batch;
    // Shard s holds images start(s)..start(s + 1): sizes differ by at most one.
    let start = |s: usize| s * batch / shards;
    let shared: &ParamStore = store;
    let results: Vec<ShardResult> = worker_gradients
        .par_iter_mut()
        .enumerate()
        .map(|(s, gradients)| {
            let (first, end) = (start(s), start(s + 1));
            let mut shape = x.shape.clone();
            shape[0] = end - first;
            let shard = Tensor::from_vec(&shape, x.data[first * image_len..end * image_len].to_vec());
            let teacher_logits = objective.distillation.map(|kd| kd.teacher_logits(&shard));
            let mut tape = Tape::new(shared, Mode::Train);
            let input = tape.input(shard);
            let logits = forward(&mut tape, input);
            let shard_labels = &labels[first..end];
            let loss = match (objective.distillation, &teacher_logits) {
                (Some(kd), Some(teacher)) => ops::distillation::distillation_loss(
                    &mut tape,
                    logits,
                    teacher,
                    shard_labels,
                    kd.temperature,
                    kd.weight,
                    objective.label_smoothing,
                ),
                _ => ops::cross_entropy(&mut tape, logits, shard_labels, objective.label_smoothing),
            };
            let share = (end - first) as f32 / batch as f32;
            let correct = predictions(tape.value(logits))
                .iter()
                .zip(&labels[first..end])
                .filter(|(p, t)| p == t)
                .count();
            let weighted_loss = share * tape.value(loss).data[0];
            tape.backward_with(loss, Tensor::full(&[1], share));
            for g in gradients.iter_mut() {
                g.data.fill(0.0);
            }
            for (id, g) in tape.param_gradients() {
                gradients[id.0].add_assign(g);
            }
            ShardResult {
                weighted_loss,
                correct,
                statistics: tape.batch_statistics().to_vec(),
            }
        })
        .collect();
    // Sum the shards' gradients into the store, in shard order, in parallel
    // over chunks of each parameter (a few VGG weights hold most of the values).
    for (p, param) in store.params.iter_mut().enumerate() {
        param
            .grad
            .data
            .par_chunks_mut(REDUCTION_CHUNK)
            .enumerate()
            .for_each(|(chunk, sum)| {
                let range = chunk * REDUCTION_CHUNK..chunk * REDUCTION_CHUNK + sum.len();
                sum.copy_from_slice(&worker_gradients[0][p].data[range.clone()]);
                for gradients in &worker_gradients[1..] {
                    for (total, g) in sum.iter_mut().zip(&gradients[p].data[range.clone()]) {
                        *total += g;
                    }
                }
            });
    }
    let loss = results.iter().map(|r| r.weighted_loss).sum();
    let correct = results.iter().map(|r| r.correct).sum();
    let statistics = results.into_iter().flat_map(|r| r.statistics).collect();
    (loss, correct, statistics)
}

/// See [`Trainer::batch_hook`].
pub type BatchHook = Box<dyn FnMut(usize, &mut Tensor) + Send + Sync>;

/// A model, its parameters, its optimiser and where the run stands.
pub struct Trainer {
    pub model: Model,
    pub store: ParamStore,
    pub optimizer: Sgd,
    pub config: TrainConfig,
    pub schedule: Schedule,
    /// Epochs of the run: `config.epochs`, or fewer as a time budget plans ([`Trainer::plan_epochs`]).
    pub planned_epochs: usize,
    /// Training images per epoch (fixes the schedule; checked on resume).
    pub train_images: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
    pub step: usize,
    /// Best test accuracy seen at the end of an epoch (0 before the first).
    pub best_test_accuracy: f32,
    /// Seconds spent training and evaluating so far, over every resumed session.
    pub elapsed_seconds: f64,
    /// What [`Trainer::train_epoch`] does when a step's loss or gradient is not finite.
    pub on_nonfinite: NonFinitePolicy,
    /// Called with the 1-based step number and the batch [B, 3, 32, 32] just
    /// before every step of [`Trainer::train_epoch`]. A hook for tests
    /// (injecting a fault) and experiments; None in normal runs.
    pub batch_hook: Option<BatchHook>,
    /// Generalised pruning (`prune::ramp`): at the start of each epoch of the ramp the
    /// templates of every SBF layer are re-selected; None: the assignment never changes.
    pub pruning: Option<PruneSettings>,
    /// First-order Taylor sums since the last pruning step (only with `Saliency::Taylor`).
    pub taylor: TaylorScores,
    /// The moving average of the weights that evaluation and checkpoints use (`--ema`).
    pub average: Option<WeightAverage>,
    /// Knowledge distillation from a teacher; None: plain cross-entropy.
    pub distillation: Option<Distillation>,
    /// Per-shard gradient buffers, [shards][parameters], reused across steps.
    worker_gradients: Vec<Vec<Tensor>>,
    /// The current batch [B, 3, 32, 32] and its labels, reused across steps.
    batch: Tensor,
    labels: Vec<usize>,
}

impl Trainer {
    /// A fresh run: the model initialised from `config.seed`.
    pub fn new(spec: &ModelSpec, config: TrainConfig, train_images: usize) -> Result<Trainer> {
        config.validate(train_images)?;
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(config.seed));
        if config.zero_init_residual {
            match &model.network {
                Network::ResNet(resnet) => resnet.zero_init_residual(&mut store),
                Network::Vgg(_) => {
                    return Err(Error::msg(format!(
                        "--zero-init-residual needs a model with residual blocks, and {} has none",
                        spec.name()
                    )))
                }
            }
        }
        let optimizer = Sgd::new(config.sgd, &store);
        let average = config.ema_decay.map(|decay| WeightAverage::new(decay, &store));
        let worker_gradients = (0..config.shards).map(|_| store.zeros_like_params()).collect();
        Ok(Trainer {
            model,
            schedule: config.schedule_for(train_images, config.epochs),
            planned_epochs: config.epochs,
            optimizer,
            store,
            config,
            train_images,
            epoch: 0,
            step: 0,
            best_test_accuracy: 0.0,
            elapsed_seconds: 0.0,
            on_nonfinite: NonFinitePolicy::Stop,
            batch_hook: None,
            pruning: None,
            distillation: None,
            average,
            taylor: TaylorScores::default(),
            worker_gradients,
            batch: Tensor::zeros(&[0]),
            labels: Vec::new(),
        })
    }

    /// One optimisation step on the batch `x` [B, 3, 32, 32] with `labels` [B].
    /// A non-finite loss or gradient is reported in [`StepResult::fault`] and
    /// the update is not made (the step still counts); see [`numerics`].
    pub fn train_step(&mut self, x: &Tensor, labels: &[usize]) -> StepResult {
        let learning_rate = self.schedule.learning_rate(self.step);
        let model = &self.model;
        let (loss, correct, statistics) = data_parallel_gradients(
            &mut self.store,
            &mut self.worker_gradients,
            x,
            labels,
            Objective {
                label_smoothing: self.config.label_smoothing,
                distillation: self.distillation.as_ref(),
            },
            |tape, input| model.forward(tape, input),
        );
        let mut fault = self.fault_before_update(loss, x, labels);
        if fault.is_none() {
            if let Some(pruning) = self.pruning {
                // Taylor evidence for the next pruning step (there is none after the ramp).
                if pruning.saliency == Saliency::Taylor && !pruning.ramp.is_frozen(self.epoch + 1) {
                    self.taylor.accumulate(&self.model, &self.store);
                }
            }
            self.optimizer.step(&mut self.store, learning_rate);
            self.store.apply_batch_statistics(&statistics);
            fault = numerics::first_nonfinite_parameter(&self.store).map(|parameter| FaultKind::Update {
                parameter,
                learning_rate,
            });
            if let (None, Some(average)) = (&fault, &mut self.average) {
                average.update(&self.store);
            }
        }
        self.step += 1;
        StepResult {
            loss,
            correct,
            images: labels.len(),
            learning_rate,
            fault,
        }
    }

    /// A non-finite loss or gradient of the step on `x`, located by a second forward pass.
    fn fault_before_update(&self, loss: f32, x: &Tensor, labels: &[usize]) -> Option<FaultKind> {
        let gradients = numerics::nonfinite_gradients(&self.store);
        if loss.is_finite() && gradients.is_none() {
            return None;
        }
        let model = &self.model;
        let forward = numerics::locate_nonfinite_forward(
            &self.store,
            x,
            labels,
            self.config.shards,
            self.config.label_smoothing,
            |tape, input| model.forward(tape, input),
        );
        Some(match gradients {
            Some((first_reached, parameters)) if loss.is_finite() => FaultKind::Gradient {
                forward,
                first_reached,
                parameters,
            },
            _ => FaultKind::Loss { loss, forward },
        })
    }

    /// Trains one epoch on `set` (which must hold `train_images` images),
    /// calling `progress` after every step. A step whose loss or gradient is
    /// not finite ends the epoch with the fault ([`NonFinitePolicy::Stop`]:
    /// the trainer is left mid-epoch, to be dropped or reloaded from a
    /// checkpoint) or is skipped ([`NonFinitePolicy::Skip`]); an update that
    /// made a parameter non-finite always ends it.
    pub fn train_epoch(
        &mut self,
        set: &Cifar10,
        mut progress: impl FnMut(&Progress),
    ) -> std::result::Result<EpochResult, NumericalFault> {
        assert_eq!(
            set.len(),
            self.train_images,
            "train_epoch: the set holds {} images, the run was set up for {}",
            set.len(),
            self.train_images
        );
        let started = Instant::now();
        self.apply_pruning_ramp();
        let mut rng = epoch_rng(self.config.seed, self.epoch);
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.shuffle(&mut rng);
        let steps = self.config.steps_per_epoch(set.len());
        let (mut loss_sum, mut correct, mut images) = (0.0f64, 0usize, 0usize);
        let mut learning_rate = 0.0;
        let mut batch = std::mem::replace(&mut self.batch, Tensor::zeros(&[0]));
        let mut labels = std::mem::take(&mut self.labels);
        let mut skipped = Vec::new();
        for (index, indices) in order.chunks_exact(self.config.batch_size).enumerate() {
            let position = RunPosition {
                seed: self.config.seed,
                epoch: self.epoch,
            };
            make_batch_into(
                set,
                indices,
                &self.config.augmentation,
                position,
                &mut rng,
                &mut batch,
                &mut labels,
            );
            if let Some(hook) = &mut self.batch_hook {
                hook(self.step + 1, &mut batch);
            }
            let result = self.train_step(&batch, &labels);
            learning_rate = result.learning_rate;
            match result.fault {
                None => {
                    loss_sum += result.loss as f64 * result.images as f64;
                    correct += result.correct;
                    images += result.images;
                }
                Some(kind) => {
                    let fault = NumericalFault {
                        step: self.step,
                        epoch: self.epoch + 1,
                        batch: index + 1,
                        batches: steps,
                        kind,
                    };
                    if self.on_nonfinite == NonFinitePolicy::Stop || !fault.kind.can_skip() {
                        (self.batch, self.labels) = (batch, labels);
                        return Err(fault);
                    }
                    skipped.push(fault);
                }
            }
            progress(&Progress {
                step: index + 1,
                steps,
                loss: (loss_sum / images.max(1) as f64) as f32,
                accuracy: correct as f32 / images.max(1) as f32,
                images_per_second: images as f32 / started.elapsed().as_secs_f32().max(1e-9),
                learning_rate,
                skipped_batches: skipped.len(),
            });
        }
        (self.batch, self.labels) = (batch, labels);
        self.epoch += 1;
        let seconds = started.elapsed().as_secs_f64();
        self.elapsed_seconds += seconds;
        Ok(EpochResult {
            epoch: self.epoch,
            learning_rate,
            loss: (loss_sum / images.max(1) as f64) as f32,
            accuracy: correct as f32 / images.max(1) as f32,
            images_per_second: (images as f64 / seconds.max(1e-9)) as f32,
            seconds,
            skipped,
        })
    }

    /// The pruning step of the current epoch, if it is in the ramp: one global selection at
    /// the ramp's rate, then fresh optimizer state for the reassigned parameters.
    pub fn apply_pruning_ramp(&mut self) {
        let Some(pruning) = self.pruning else { return };
        if pruning.ramp.is_frozen(self.epoch) {
            return;
        }
        let rate = pruning.ramp.rate_at(self.epoch);
        let reshaped = prune_step(
            &mut self.model,
            &mut self.store,
            rate,
            pruning.min_templates,
            pruning.init,
            pruning.saliency,
            Some(&self.taylor),
        );
        self.taylor.clear();
        self.parameters_reshaped(&reshaped);
    }

    /// Zero momentum and gradient buffers of the new shape for parameters whose shape changed.
    pub fn parameters_reshaped(&mut self, ids: &[ParamId]) {
        for id in ids {
            let shape = self.store.value(*id).shape.clone();
            self.optimizer.velocity[id.0] = Tensor::zeros(&shape);
            for shard in &mut self.worker_gradients {
                shard[id.0] = Tensor::zeros(&shape);
            }
            if let Some(average) = &mut self.average {
                average.store.params[id.0].value = self.store.value(*id).clone();
            }
        }
    }

    /// Saves parameters, buffers, optimiser state, settings and position.
    pub fn to_checkpoint(&self) -> Checkpoint {
        let mut metadata = self.config.to_metadata();
        for (key, value) in [
            ("epoch", self.epoch.to_string()),
            ("step", self.step.to_string()),
            ("train_images", self.train_images.to_string()),
            ("best_test_accuracy", self.best_test_accuracy.to_string()),
            ("elapsed_seconds", self.elapsed_seconds.to_string()),
            ("planned_epochs", self.planned_epochs.to_string()),
        ] {
            metadata.push((key.to_string(), value));
        }
        metadata.extend(self.pruning.iter().flat_map(|p| p.to_metadata()));
        metadata.extend(self.distillation.iter().flat_map(|d| d.to_metadata()));
        metadata.extend(assignment_metadata(&self.model));
        // The model a checkpoint holds is the one evaluated: with --ema the averaged weights,
        // and the live ones that training continues from beside them as `live.*`.
        let mut tensors = model_tensors(self.evaluated_store());
        if let Some(average) = &self.average {
            metadata.push((EMA_UPDATES_KEY.into(), average.updates.to_string()));
            let live = model_tensors(&self.store).into_iter();
            tensors.extend(live.map(|(name, t)| (format!("{LIVE_PREFIX}{name}"), t)));
        }
        tensors.extend(self.optimizer.export(&self.store));
        tensors.extend(self.taylor.to_tensors());
        Checkpoint {
            model: self.model.description(),
            metadata,
            tensors,
        }
    }

    /// Continues a run from `checkpoint` (read from `path`, which names it in
    /// errors). `train_images` must match the saved run's.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path, train_images: usize) -> Result<Trainer> {
        let spec =
            ModelSpec::parse_description(&checkpoint.model).map_err(|e| Error::file(path, e.message))?;
        let config = TrainConfig::from_checkpoint(checkpoint, path)?;
        fn number<T: std::str::FromStr>(checkpoint: &Checkpoint, path: &Path, key: &str) -> Result<T> {
            checkpoint
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::file(path, format!("checkpoint lacks a valid \"{key}\"")))
        }
        let saved_images: usize = number(checkpoint, path, "train_images")?;
        if saved_images != train_images {
            return Err(Error::file(
                path,
                format!(
                    "the checkpoint's run trained on {saved_images} images per epoch, this one has {train_images} \
                     (use the same data and --train-limit to resume)"
                ),
            ));
        }
        let mut trainer =
            Trainer::new(&spec, config, train_images).map_err(|e| Error::file(path, e.message))?;
        let reshaped = restore_assignments(&mut trainer.model, &mut trainer.store, checkpoint, path)?;
        trainer.parameters_reshaped(&reshaped);
        trainer.pruning = PruneSettings::from_checkpoint(checkpoint, path)?;
        trainer.distillation = Distillation::from_checkpoint(checkpoint, path)?;
        let sbf_layers = crate::prune::PruneState::of(&trainer.model).layers.len();
        trainer.taylor = TaylorScores::from_checkpoint(checkpoint, path, sbf_layers)?;
        load_model_tensors(&mut trainer.store, checkpoint, path)?;
        if let Some(average) = &mut trainer.average {
            average.store = trainer.store.clone();
            average.updates = number(checkpoint, path, EMA_UPDATES_KEY)?;
            load_prefixed_model_tensors(&mut trainer.store, checkpoint, path, LIVE_PREFIX)?;
        }
        let store = &trainer.store;
        trainer
            .optimizer
            .import(store, |name| checkpoint.tensor(name))
            .map_err(|e| Error::file(path, e.message))?;
        trainer.epoch = number(checkpoint, path, "epoch")?;
        trainer.step = number(checkpoint, path, "step")?;
        trainer.best_test_accuracy = number(checkpoint, path, "best_test_accuracy")?;
        trainer.elapsed_seconds = number(checkpoint, path, "elapsed_seconds")?;
        if checkpoint.get("planned_epochs").is_some() {
            trainer.plan_epochs(number(checkpoint, path, "planned_epochs")?);
        }
        Ok(trainer)
    }

    /// Sets the run's length to `epochs` (at most `config.epochs`) and stretches or shrinks
    /// the learning-rate schedule to end there.
    pub fn plan_epochs(&mut self, epochs: usize) {
        self.planned_epochs = epochs.min(self.config.epochs);
        self.schedule = self.config.schedule_for(self.train_images, self.planned_epochs);
    }

    /// The weights that are evaluated and saved: the moving average with `--ema`, else the live ones.
    pub fn evaluated_store(&self) -> &ParamStore {
        self.average
            .as_ref()
            .map_or(&self.store, |average| &average.store)
    }

    /// Test-set evaluation of the current parameters (the averaged ones with `--ema`).
    pub fn evaluate(&self, set: &Cifar10, batch_size: usize) -> Evaluation {
        evaluate(&self.model, self.evaluated_store(), set, batch_size)
    }
}

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

/// Which views of each test image an evaluation looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestViews {
    /// The image as it is.
    #[default]
    Plain,
    /// Test-time augmentation: the image and its mirror image; the prediction
    /// and the loss come from the mean of their two logit vectors.
    PlainAndMirrored,
}

impl TestViews {
    /// `none` or `flip` (the `--tta` flag).
    pub fn parse(text: &str) -> Result<TestViews> {
        match text {
            "none" => Ok(TestViews::Plain),
            "flip" => Ok(TestViews::PlainAndMirrored),
            other => Err(Error::msg(format!(
                "--tta: unknown test-time augmentation {other:?}: expected none or flip"
            ))),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TestViews::Plain => "none",
            TestViews::PlainAndMirrored => "flip",
        }
    }
}

/// Loss, accuracy and per-class accuracy on `set` in evaluation mode (running
/// BN statistics, no augmentation). Batches of `batch_size` images are taken
/// in order; each is split into one shard per rayon thread, evaluated in
/// parallel, so at most `batch_size` images' activations are alive at once.
pub fn evaluate(model: &Model, store: &ParamStore, set: &Cifar10, batch_size: usize) -> Evaluation {
    evaluate_views(model, store, set, batch_size, TestViews::Plain)
}

/// [`evaluate`], looking at each image through `views`:
/// logits = (f(x) + f(mirror(x))) / 2 for [`TestViews::PlainAndMirrored`].
pub fn evaluate_views(
    model: &Model,
    store: &ParamStore,
    set: &Cifar10,
    batch_size: usize,
    views: TestViews,
) -> Evaluation {
    let indices: Vec<usize> = (0..set.len()).collect();
    let threads = rayon::current_num_threads();
    let mut loss_sum = 0.0f64;
    let (mut correct, mut seen) = ([0usize; NUM_CLASSES], [0usize; NUM_CLASSES]);
    for batch in indices.chunks(batch_size.max(1)) {
        let shard_size = batch.len().div_ceil(threads);
        // Per shard: (loss sum, predictions and labels).
        let shards: Vec<(f64, Vec<usize>, Vec<usize>)> = batch
            .par_chunks(shard_size)
            .map(|shard| {
                let (x, labels) = make_batch(set, shard, &Augmentation::NONE, &mut StdRng::seed_from_u64(0));
                let logits = match views {
                    TestViews::Plain => eval_logits(model, store, x),
                    TestViews::PlainAndMirrored => {
                        let mirrored = eval_logits(model, store, flip_horizontally(&x));
                        let mut logits = eval_logits(model, store, x);
                        for (a, b) in logits.data.iter_mut().zip(&mirrored.data) {
                            *a = 0.5 * (*a + b);
                        }
                        logits
                    }
                };
                let mut tape = Tape::new(store, Mode::Eval);
                let predicted = predictions(&logits);
                let logits = tape.input(logits);
                let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0);
                let loss_sum = tape.value(loss).data[0] as f64 * shard.len() as f64;
                (loss_sum, predicted, labels)
            })
            .collect();
        for (shard_loss, predicted, labels) in shards {
            loss_sum += shard_loss;
            for (&p, &t) in predicted.iter().zip(&labels) {
                seen[t] += 1;
                correct[t] += usize::from(p == t);
            }
        }
    }
    let images = set.len();
    Evaluation {
        images,
        loss: (loss_sum / images.max(1) as f64) as f32,
        accuracy: correct.iter().sum::<usize>() as f32 / images.max(1) as f32,
        per_class_accuracy: std::array::from_fn(|k| correct[k] as f32 / seen[k] as f32),
        per_class_images: seen,
    }
}

/// The model's logits [N, 10] for the images `x` [N, 3, 32, 32], in evaluation mode.
fn eval_logits(model: &Model, store: &ParamStore, x: Tensor) -> Tensor {
    let mut tape = Tape::new(store, Mode::Eval);
    let input = tape.input(x);
    let logits = model.forward(&mut tape, input);
    tape.value(logits).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::synthetic_set;

    #[test]
    fn evaluation_counts_every_image_once_and_does_not_depend_on_the_batch_size() {
        let set = synthetic_set(37, 10, 3);
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name("resnet8-w2")
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(1));
        let a = evaluate(&model, &store, &set, 5);
        let b = evaluate(&model, &store, &set, 64);
        assert_eq!(a.images, 37);
        assert_eq!(a.per_class_images.iter().sum::<usize>(), 37);
        assert_eq!((a.accuracy, a.per_class_images), (b.accuracy, b.per_class_images));
        assert!((a.loss - b.loss).abs() < 1e-5 * a.loss);
        // Accuracy by hand from the logits of one tape over the whole set.
        let (x, labels) = make_batch(
            &set,
            &(0..37).collect::<Vec<_>>(),
            &Augmentation::NONE,
            &mut StdRng::seed_from_u64(0),
        );
        let mut tape = Tape::new(&store, Mode::Eval);
        let input = tape.input(x);
        let logits = model.forward(&mut tape, input);
        let right = predictions(tape.value(logits))
            .iter()
            .zip(&labels)
            .filter(|(p, t)| p == t)
            .count();
        assert_eq!(a.accuracy, right as f32 / 37.0);
    }

    #[test]
    fn mirrored_views_average_the_logits_of_each_image_and_its_mirror_image() {
        let set = synthetic_set(23, 10, 5);
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name("resnet8-w2")
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(2));
        let tta = evaluate_views(&model, &store, &set, 8, TestViews::PlainAndMirrored);
        // By hand: one tape per view over the whole set, logits averaged.
        let (x, labels) = make_batch(
            &set,
            &(0..23).collect::<Vec<_>>(),
            &Augmentation::NONE,
            &mut StdRng::seed_from_u64(0),
        );
        let plain = eval_logits(&model, &store, x.clone());
        let mirrored = eval_logits(&model, &store, flip_horizontally(&x));
        let mean = Tensor::from_vec(
            &plain.shape,
            plain
                .data
                .iter()
                .zip(&mirrored.data)
                .map(|(a, b)| (a + b) / 2.0)
                .collect(),
        );
        let right = predictions(&mean)
            .iter()
            .zip(&labels)
            .filter(|(p, t)| p == t)
            .count();
        assert_eq!(tta.accuracy, right as f32 / 23.0);
        let mut tape = Tape::new(&store, Mode::Eval);
        let mean = tape.input(mean);
        let loss = ops::cross_entropy(&mut tape, mean, &labels, 0.0);
        assert!((tta.loss - tape.value(loss).data[0]).abs() < 1e-5 * tta.loss);
        // The views really differ: synthetic images are not mirror-symmetric.
        assert_ne!(tta.loss, evaluate(&model, &store, &set, 8).loss);
        // A set of mirror images gives the same evaluation.
        let mut mirror_set = set.clone();
        for image in mirror_set.images.chunks_mut(32) {
            image.reverse();
        }
        let of_mirrors = evaluate_views(&model, &store, &mirror_set, 8, TestViews::PlainAndMirrored);
        assert_eq!(of_mirrors.accuracy, tta.accuracy);
        assert!((of_mirrors.loss - tta.loss).abs() < 1e-5 * tta.loss);
    }

    #[test]
    fn test_views_parse_their_flag_values() {
        assert_eq!(TestViews::parse("none").unwrap(), TestViews::Plain);
        assert_eq!(TestViews::parse("flip").unwrap(), TestViews::PlainAndMirrored);
        assert!(TestViews::parse("mirror")
            .unwrap_err()
            .message
            .contains("expected none or flip"));
    }

    #[test]
    fn predictions_pick_the_first_largest_logit() {
        let logits = Tensor::from_vec(&[3, 3], vec![0.1, 0.9, 0.3, 2.0, 2.0, 1.0, -1.0, -3.0, -0.5]);
        assert_eq!(predictions(&logits), vec![1, 0, 2]);
    }

    #[test]
    fn config_metadata_round_trips_and_bad_settings_are_named() {
        let mut config = TrainConfig::recipe();
        config.label_smoothing = 0.1;
        config.augmentation.rotation_degrees = 7.5;
        config.shards = 3;
        // A config written to a checkpoint's metadata and read back.
        let saved = |config: &TrainConfig| Checkpoint {
            metadata: config.to_metadata(),
            ..Checkpoint::default()
        };
        let checkpoint = saved(&config);
        assert_eq!(
            TrainConfig::from_checkpoint(&checkpoint, Path::new("c")).unwrap(),
            config
        );
        let mut broken = checkpoint.clone();
        broken.metadata.retain(|(k, _)| k != "momentum");
        let err = TrainConfig::from_checkpoint(&broken, Path::new("c.ckpt"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "c.ckpt: checkpoint lacks the training setting \"momentum\"");
        let mut bad = TrainConfig::recipe();
        bad.learning_rate = -1.0;
        assert!(bad.validate(1000).unwrap_err().to_string().contains("--lr"));
        bad = TrainConfig::recipe();
        bad.sgd.momentum = 1.0;
        assert!(bad.validate(1000).unwrap_err().to_string().contains("--momentum"));
        bad = TrainConfig::recipe();
        bad.time_budget_minutes = Some(0.0);
        assert!(bad
            .validate(1000)
            .unwrap_err()
            .to_string()
            .contains("--time-budget"));
        // A budget round-trips; a checkpoint from before budgets existed has none.
        config.time_budget_minutes = Some(70.5);
        let budgeted = saved(&config);
        assert_eq!(
            TrainConfig::from_checkpoint(&budgeted, Path::new("c")).unwrap(),
            config
        );
        let mut old = budgeted.clone();
        old.metadata.retain(|(k, _)| k != "time_budget_minutes");
        let loaded = TrainConfig::from_checkpoint(&old, Path::new("c")).unwrap();
        assert_eq!(loaded.time_budget_minutes, None);
        // So do zero-initialised residual blocks and the alternating flip; a checkpoint from
        // before the option existed started its blocks at γ = 1.
        config.zero_init_residual = true;
        config.augmentation.flip = crate::data::augment::Flip::Alternating;
        let zeroed = saved(&config);
        assert_eq!(
            TrainConfig::from_checkpoint(&zeroed, Path::new("c")).unwrap(),
            config
        );
        let mut old = zeroed.clone();
        old.metadata.retain(|(k, _)| k != "zero_init_residual");
        assert!(
            !TrainConfig::from_checkpoint(&old, Path::new("c"))
                .unwrap()
                .zero_init_residual
        );
    }

    #[test]
    fn averaged_weights_are_evaluated_and_saved_and_a_resumed_run_repeats_the_uninterrupted_one() {
        let set = synthetic_set(48, 10, 8);
        let mut config = TrainConfig::recipe();
        (
            config.epochs,
            config.warmup_epochs,
            config.batch_size,
            config.shards,
        ) = (3, 1, 16, 2);
        config.ema_decay = Some(0.9);
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
        trainer.train_epoch(&set, |_| {}).unwrap();
        let average = trainer.average.as_ref().unwrap();
        assert_eq!(average.updates, 3);
        assert_ne!(average.store.params[0].value, trainer.store.params[0].value);
        // Evaluation and the checkpoint's model are the averaged weights.
        let by_hand = evaluate(&trainer.model, &average.store, &set, 16);
        assert_eq!(trainer.evaluate(&set, 16), by_hand);
        let checkpoint = trainer.to_checkpoint();
        let (model, saved) = load_model(&checkpoint, Path::new("c")).unwrap();
        assert_eq!(evaluate(&model, &saved, &set, 16), by_hand);
        // A resumed run continues from the live weights, with the average where it was.
        let mut resumed = Trainer::from_checkpoint(&checkpoint, Path::new("c"), set.len()).unwrap();
        let values = |store: &ParamStore| store.params.iter().map(|p| p.value.clone()).collect::<Vec<_>>();
        assert_eq!(values(&resumed.store), values(&trainer.store));
        let resumed_average = resumed.average.as_ref().unwrap();
        assert_eq!(resumed_average.updates, 3);
        assert_eq!(values(&resumed_average.store), values(&average.store));
        trainer.train_epoch(&set, |_| {}).unwrap();
        resumed.train_epoch(&set, |_| {}).unwrap();
        assert_eq!(values(&resumed.store), values(&trainer.store));
        assert_eq!(
            values(resumed.evaluated_store()),
            values(trainer.evaluated_store())
        );
    }

    #[test]
    fn zero_init_residual_starts_every_block_as_the_identity_and_gamma_still_learns() {
        let set = synthetic_set(32, 10, 6);
        let mut config = TrainConfig::recipe();
        (
            config.epochs,
            config.warmup_epochs,
            config.batch_size,
            config.shards,
        ) = (1, 0, 16, 1);
        config.zero_init_residual = true;
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let mut trainer = Trainer::new(&spec, config.clone(), set.len()).unwrap();
        let Network::ResNet(resnet) = &trainer.model.network else {
            panic!("resnet8 is a ResNet")
        };
        let blocks: Vec<_> = resnet.stages.iter().flatten().cloned().collect();
        assert_eq!(blocks.len(), 3);
        for block in &blocks {
            assert!(trainer
                .store
                .value(block.bn2.gamma)
                .data
                .iter()
                .all(|&g| g == 0.0));
            assert!(trainer
                .store
                .value(block.bn1.gamma)
                .data
                .iter()
                .all(|&g| g == 1.0));
        }
        // Each block computes relu(shortcut(x)): the first block of stage 1 (stride 1, same
        // channels) returns relu(x) = x for its non-negative input.
        let (x, _) = make_batch(&set, &[0, 1], &Augmentation::NONE, &mut StdRng::seed_from_u64(0));
        let mut tape = Tape::new(&trainer.store, Mode::Eval);
        let input = tape.input(x);
        let stem = resnet.stem.forward(&mut tape, input);
        let stem = resnet.stem_bn.forward(&mut tape, stem);
        let stem = ops::relu(&mut tape, stem);
        let block = blocks[0].forward(&mut tape, stem);
        assert_eq!(tape.value(block).data, tape.value(stem).data);
        // γ gets a gradient and moves away from 0 in the first epoch; the other parameters
        // are those of a model built without the option.
        let plain = Trainer::new(
            &spec,
            TrainConfig {
                zero_init_residual: false,
                ..config
            },
            set.len(),
        )
        .unwrap();
        for id in 0..trainer.store.params.len() {
            let id = ParamId(id);
            let is_bn2_gamma = blocks.iter().any(|b| b.bn2.gamma == id);
            if !is_bn2_gamma {
                assert_eq!(trainer.store.value(id), plain.store.value(id));
            }
        }
        trainer.train_epoch(&set, |_| {}).unwrap();
        for block in &blocks {
            assert!(trainer
                .store
                .value(block.bn2.gamma)
                .data
                .iter()
                .any(|&g| g != 0.0));
        }
        // A VGG has no residual blocks to start as the identity.
        let vgg = ModelSpec::parse_name("vgg16-w2").unwrap();
        let refused = Trainer::new(
            &vgg,
            TrainConfig {
                zero_init_residual: true,
                ..TrainConfig::recipe()
            },
            1000,
        );
        match refused {
            Err(e) => assert!(e.to_string().contains("--zero-init-residual"), "{e}"),
            Ok(_) => panic!("a VGG was built with --zero-init-residual"),
        }
    }

    #[test]
    fn a_planned_length_reshapes_the_schedule_and_survives_a_checkpoint() {
        let set = synthetic_set(64, 10, 4);
        let mut config = TrainConfig::recipe();
        (
            config.epochs,
            config.warmup_epochs,
            config.batch_size,
            config.shards,
        ) = (10, 1, 16, 1);
        let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
        let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
        assert_eq!((trainer.planned_epochs, trainer.schedule.total_steps), (10, 40));
        trainer.plan_epochs(6);
        assert_eq!((trainer.planned_epochs, trainer.schedule.total_steps), (6, 24));
        assert_eq!(trainer.schedule.warmup_steps, 4);
        assert_eq!(trainer.schedule.learning_rate(24), 0.0);
        // Never past --epochs.
        trainer.plan_epochs(12);
        assert_eq!(trainer.planned_epochs, 10);
        trainer.plan_epochs(6);
        trainer.train_epoch(&set, |_| {}).unwrap();
        let resumed = Trainer::from_checkpoint(&trainer.to_checkpoint(), Path::new("c"), set.len()).unwrap();
        assert_eq!(resumed.planned_epochs, 6);
        assert_eq!(resumed.schedule, trainer.schedule);
    }
}
