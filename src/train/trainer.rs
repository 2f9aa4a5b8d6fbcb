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

use super::config::TrainConfig;
use super::distillation::Distillation;
use super::evaluate::{evaluate, Evaluation};
use super::lookahead::{self, Lookahead};
use super::numerics::{self, FaultKind, NonFinitePolicy, NumericalFault};
use super::optimizer::Sgd;
use super::parallel::{data_parallel_gradients_in, Objective, ShardExchange, ShardLayout};

mod processes;
use super::partial_epoch::PartialEpoch;
use super::schedule::{Anchor, Schedule};
use super::weight_average::WeightAverage;
use crate::autograd::{ParamId, ParamStore};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::{
    assignment_metadata, load_model_tensors, load_prefixed_model_tensors, model_tensors, restore_assignments,
    EMA_UPDATES_KEY, LIVE_PREFIX,
};
use crate::data::augment::{make_batch_into, RunPosition};
use crate::data::cifar::Cifar10;
use crate::error::{Error, Result};
use crate::nn::model::Network;
use crate::nn::{Model, ModelSpec};
use crate::prune::{prune_step, silence_pruned_channels, PruneSettings};
use crate::prune::{Saliency, TaylorScores};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The checkpoint key of the thread count that computed the run (`rayon`'s pool size).
pub const THREADS_KEY: &str = "threads";

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
    /// The batches skipped for a non-finite loss or gradient ([`NonFinitePolicy::Skip`]) in
    /// this session (an epoch resumed from a checkpoint does not list those before the stop).
    pub skipped: Vec<NumericalFault>,
    /// Batches skipped in the whole epoch.
    pub skipped_batches: usize,
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
    /// The slow weights of `--lookahead`.
    pub lookahead: Option<Lookahead>,
    /// Knowledge distillation from a teacher; None: plain cross-entropy.
    pub distillation: Option<Distillation>,
    /// The unfinished epoch `epoch + 1`, when a run stopped inside it; None between epochs.
    pub partial: Option<PartialEpoch>,
    /// Per-shard gradient buffers of this process's shards, [shards][parameters], reused across steps.
    worker_gradients: Vec<Vec<Tensor>>,
    /// The other processes of a run across processes ([`Trainer::distribute`]); None: one process.
    exchange: Option<Box<dyn ShardExchange>>,
    /// The current batch [B, 3, 32, 32] and its labels, reused across steps.
    batch: Tensor,
    labels: Vec<usize>,
}

impl Trainer {
    /// A fresh run: the model initialised from `config.seed`.
    pub fn new(spec: &ModelSpec, config: TrainConfig, train_images: usize) -> Result<Trainer> {
        config.validate(train_images)?;
        config.check_model(spec)?;
        let mut store = ParamStore::default();
        let model = spec.build(&mut store, &mut StdRng::seed_from_u64(config.seed));
        if config.zero_init_residual {
            if let Network::ResNet(resnet) = &model.network {
                resnet.zero_init_residual(&mut store);
            }
        }
        // A plan whose SBF entries name no layer of this model builds none.
        let masks_set = config.mask_lr_scale != 1.0 || config.mask_weight_decay;
        let layers = model.set_mask_optimisation(&mut store, config.mask_lr_scale, config.mask_weight_decay);
        if masks_set && layers == 0 {
            return Err(Error::msg(format!(
                "the masks' settings (`mask_lr_scale`, `mask_weight_decay`) need SBF layers, and the plan of {} builds none",
                spec.description()
            )));
        }
        let optimizer = Sgd::new(config.sgd, &store);
        let average = config.ema_decay.map(|decay| WeightAverage::new(decay, &store));
        let lookahead = config.lookahead.then(|| Lookahead::new(&store));
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
            lookahead,
            taylor: TaylorScores::default(),
            partial: None,
            worker_gradients,
            exchange: None,
            batch: Tensor::zeros(&[0]),
            labels: Vec::new(),
        })
    }

    /// One optimisation step on the batch `x` [B, 3, 32, 32] with `labels` `[B]`.
    /// A non-finite loss or gradient is reported in [`StepResult::fault`] and
    /// the update is not made (the step still counts); see [`numerics`].
    pub fn train_step(&mut self, x: &Tensor, labels: &[usize]) -> StepResult {
        let learning_rate = self.schedule.learning_rate(self.step);
        if let Network::Airbench(net) = &self.model.network {
            // airbench94's whitening bias trains in the first 3 epochs only.
            net.freeze_whitening_bias_after(self.epoch, &mut self.store);
        }
        let model = &self.model;
        let layout = match &self.exchange {
            Some(exchange) => ShardLayout::across(self.config.shards, exchange.as_ref()),
            None => ShardLayout::whole(self.config.shards),
        };
        let (loss, correct, statistics) = data_parallel_gradients_in(
            layout,
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
            silence_pruned_channels(&self.model, &mut self.store);
            self.store.apply_batch_statistics(&statistics);
            fault = numerics::first_nonfinite_parameter(&self.store).map(|parameter| FaultKind::Update {
                parameter,
                learning_rate,
            });
            if let (None, Some(average)) = (&fault, &mut self.average) {
                average.update(&self.store);
            }
            if let (None, Some(slow)) = (&fault, &mut self.lookahead) {
                slow.after_step(self.step + 1, self.schedule.total_steps, &mut self.store);
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
        progress: impl FnMut(&Progress),
    ) -> std::result::Result<EpochResult, NumericalFault> {
        let never = AtomicBool::new(false);
        let finished = self.train_epoch_until(set, progress, &never)?;
        Ok(finished.expect("an epoch that nobody stops finishes"))
    }

    /// [`Trainer::train_epoch`] that checks `stop` before every step: once it is set, the
    /// epoch ends early with `Ok(None)` and [`Trainer::partial`] says how far it got (a
    /// checkpoint then saves the unfinished epoch). An epoch that a checkpoint left unfinished
    /// continues from its next step: the batches of the steps done are drawn again and not
    /// trained on, so the epoch ends as if it had never stopped.
    pub fn train_epoch_until(
        &mut self,
        set: &Cifar10,
        mut progress: impl FnMut(&Progress),
        stop: &AtomicBool,
    ) -> std::result::Result<Option<EpochResult>, NumericalFault> {
        assert_eq!(
            set.len(),
            self.train_images,
            "train_epoch: the set holds {} images, the run was set up for {}",
            set.len(),
            self.train_images
        );
        let started = Instant::now();
        let before = self.partial.take();
        if before.is_none() {
            self.apply_pruning_ramp();
        }
        let before = before.unwrap_or_default();
        let mut rng = epoch_rng(self.config.seed, self.epoch);
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.shuffle(&mut rng);
        let steps = self.config.steps_in_epoch(self.epoch, set.len());
        let (mut loss_sum, mut correct, mut images) = (before.loss_sum, before.correct, before.images);
        let mut learning_rate = before.learning_rate;
        let mut batch = std::mem::replace(&mut self.batch, Tensor::zeros(&[0]));
        let mut labels = std::mem::take(&mut self.labels);
        let mut skipped = Vec::new();
        let position = RunPosition {
            seed: self.config.seed,
            epoch: self.epoch,
        };
        for (index, indices) in order.chunks_exact(self.config.batch_size).take(steps).enumerate() {
            if index >= before.steps && stop.load(Ordering::Relaxed) {
                let seconds = started.elapsed().as_secs_f64();
                self.elapsed_seconds += seconds;
                self.partial = Some(PartialEpoch {
                    steps: index,
                    loss_sum,
                    correct,
                    images,
                    skipped: before.skipped + skipped.len(),
                    seconds: before.seconds + seconds,
                    learning_rate,
                });
                (self.batch, self.labels) = (batch, labels);
                return Ok(None);
            }
            let augmentation = &self.config.augmentation;
            make_batch_into(
                set,
                indices,
                augmentation,
                position,
                &mut rng,
                &mut batch,
                &mut labels,
            );
            if index < before.steps {
                continue; // done before the stop: its draws are repeated, not its step
            }
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
                images_per_second: (images - before.images) as f32
                    / started.elapsed().as_secs_f32().max(1e-9),
                learning_rate,
                skipped_batches: before.skipped + skipped.len(),
            });
        }
        (self.batch, self.labels) = (batch, labels);
        self.epoch += 1;
        let session_seconds = started.elapsed().as_secs_f64();
        self.elapsed_seconds += session_seconds;
        let seconds = before.seconds + session_seconds;
        Ok(Some(EpochResult {
            epoch: self.epoch,
            learning_rate,
            loss: (loss_sum / images.max(1) as f64) as f32,
            accuracy: correct as f32 / images.max(1) as f32,
            images_per_second: (images as f64 / seconds.max(1e-9)) as f32,
            seconds,
            skipped_batches: before.skipped + skipped.len(),
            skipped,
        }))
    }

    /// The pruning step of the current epoch, if it is in the ramp: one global selection at
    /// the ramp's rate, then fresh optimizer state for the reassigned parameters.
    pub fn apply_pruning_ramp(&mut self) {
        let Some(pruning) = self.pruning else { return };
        if !pruning.ramp.steps_at(self.epoch) {
            return;
        }
        let rate = pruning.ramp.rate_at(self.epoch);
        let reshaped = prune_step(
            &mut self.model,
            &mut self.store,
            rate,
            &pruning,
            Some(&self.taylor),
        );
        self.taylor.clear();
        self.parameters_reshaped(&reshaped);
        self.restart_average();
    }

    /// The data-dependent initialisation of a fresh run: airbench94's whitening filters from the
    /// first 5,000 training images (normalised, not augmented), as the reference does. Other
    /// models have none.
    pub fn init_from_data(&mut self, train: &Cifar10) {
        if let Network::Airbench(net) = &self.model.network {
            let indices: Vec<usize> = (0..train.len().min(5000)).collect();
            let mut rng = StdRng::seed_from_u64(0);
            let (images, _) = crate::data::augment::make_batch(
                train,
                &indices,
                &crate::data::augment::Augmentation::NONE,
                &mut rng,
            );
            net.init_whitening(&mut self.store, &images);
            self.restart_average();
        }
    }

    /// With `--ema`: the average starts again from the live weights; with `--lookahead`, the
    /// slow weights too. A pruning step or a conversion changes the model's parameters (and their
    /// shapes), so an average across it would mix two models; after the ramp's last step it
    /// averages the final model only.
    pub fn restart_average(&mut self) {
        if let Some(average) = &mut self.average {
            *average = WeightAverage::new(average.decay, &self.store);
        }
        if let Some(slow) = &mut self.lookahead {
            *slow = Lookahead::new(&self.store);
        }
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
            if let Some(slow) = &mut self.lookahead {
                slow.slow.params[id.0].value = self.store.value(*id).clone();
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
            // The kernels split their sums by the thread count: a resume on as many threads
            // repeats the run bit for bit, so the command line takes it by default.
            (THREADS_KEY, rayon::current_num_threads().to_string()),
        ] {
            metadata.push((key.to_string(), value));
        }
        if let Some(anchor) = self.schedule.anchor {
            metadata.push(("schedule_anchor_step".into(), anchor.step.to_string()));
            metadata.push(("schedule_anchor_progress".into(), anchor.progress.to_string()));
        }
        metadata.extend(self.pruning.iter().flat_map(|p| p.to_metadata()));
        metadata.extend(self.distillation.iter().flat_map(|d| d.to_metadata()));
        metadata.extend(assignment_metadata(&self.model));
        metadata.extend(self.partial.iter().flat_map(|p| p.to_metadata()));
        // The model a checkpoint holds is the one evaluated: with --ema the averaged weights,
        // and the live ones that training continues from beside them as `live.*`.
        let mut tensors = model_tensors(self.evaluated_store());
        if let Some(average) = &self.average {
            metadata.push((EMA_UPDATES_KEY.into(), average.updates.to_string()));
            let live = model_tensors(&self.store).into_iter();
            tensors.extend(live.map(|(name, t)| (format!("{LIVE_PREFIX}{name}"), t)));
        }
        if let Some(slow) = &self.lookahead {
            let tensors_of_slow = model_tensors(&slow.slow).into_iter();
            tensors.extend(tensors_of_slow.map(|(name, t)| (format!("{}{name}", lookahead::PREFIX), t)));
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
                     (use the same data and `train_images` to resume)"
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
        if let Some(slow) = &mut trainer.lookahead {
            load_prefixed_model_tensors(&mut slow.slow, checkpoint, path, lookahead::PREFIX)?;
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
            trainer.planned_epochs = number(checkpoint, path, "planned_epochs")?;
            trainer.schedule = trainer.config.schedule_for(train_images, trainer.planned_epochs);
        }
        if checkpoint.get("schedule_anchor_step").is_some() {
            trainer.schedule.anchor = Some(Anchor {
                step: number(checkpoint, path, "schedule_anchor_step")?,
                progress: number(checkpoint, path, "schedule_anchor_progress")?,
            });
        }
        trainer.partial = PartialEpoch::from_checkpoint(checkpoint, path)?;
        Ok(trainer)
    }

    /// Sets the run's length to `epochs` (at most `config.epochs`) and fits the learning-rate
    /// schedule to end there: from the current step on it keeps its rate and anneals over the
    /// steps left ([`Schedule::replanned`]).
    pub fn plan_epochs(&mut self, epochs: usize) {
        self.planned_epochs = epochs.min(self.config.epochs);
        let total_steps = self
            .config
            .steps_in_epochs(self.planned_epochs, self.train_images);
        self.schedule = self.schedule.replanned(self.step, total_steps);
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

#[cfg(test)]
mod tests;
