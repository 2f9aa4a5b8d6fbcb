//! Every setting of a training run, its validation, and its record in checkpoints.

use super::optimizer::SgdConfig;
use super::schedule::{Schedule, ScheduleKind};
use super::settings::SETTINGS;
use crate::checkpoint::Checkpoint;
use crate::data::augment::Augmentation;
use crate::error::{Error, Result};
use std::path::Path;

/// Every setting of a training run (saved in checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Epochs the run begins: ⌈`--epochs`⌉.
    pub epochs: usize,
    /// The share of its batches that the last epoch trains, in (0, 1]: 1 for a whole number of
    /// epochs, 0.9 for airbench94's 9.9 ([`TrainConfig::steps_in_epoch`]).
    pub last_epoch_fraction: f64,
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
    /// step ([`super::WeightAverage`]); None: the live weights.
    pub ema_decay: Option<f32>,
    /// Pull the weights back to a slow copy every 5 steps with airbench94's schedule
    /// ([`super::lookahead::Lookahead`]).
    pub lookahead: bool,
    /// The SBF masks T learn at this multiple of the run's rate (1: the same;
    /// [`Parameter::lr_scale`]). A transformed filter is T ⊙ B, so a step on T moves it by
    /// η·|B_g|² along its one direction. With a batch norm after the layer an undecayed mask's
    /// norm grows and takes back most of the factor (docs/sbf.md, "How the masks learn").
    ///
    /// [`Parameter::lr_scale`]: crate::autograd::Parameter::lr_scale
    pub mask_lr_scale: f32,
    /// The SBF masks take the run's weight decay too (false: none, as before). With a batch norm
    /// after the layer a mask's scale does not change the output; decay then holds its norm
    /// down, so that it keeps learning at the templates' pace instead of slowing as it grows.
    pub mask_weight_decay: bool,
}

impl TrainConfig {
    /// The default recipe: 50 epochs, batch 128, SGD with Nesterov momentum 0.9,
    /// weight decay 5e-4, learning rate 0.1 with 2 warm-up epochs then cosine to 0, crop + flip.
    pub fn recipe() -> TrainConfig {
        TrainConfig {
            epochs: 50,
            last_epoch_fraction: 1.0,
            batch_size: 128,
            shards: 1,
            learning_rate: 0.1,
            sgd: SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
            schedule: ScheduleKind::Cosine,
            warmup_epochs: TrainConfig::default_warmup_epochs(50),
            label_smoothing: 0.0,
            augmentation: Augmentation::CROP_FLIP,
            seed: 0,
            time_budget_minutes: None,
            zero_init_residual: false,
            lookahead: false,
            ema_decay: None,
            mask_lr_scale: 1.0,
            mask_weight_decay: false,
        }
    }

    /// The recipe a model selects, which every flag can override: airbench94's for airbench94
    /// (batch 1024; Nesterov SGD, momentum 0.85; its schedule; label smoothing 0.2; lookahead;
    /// translate-2 and alternating flips; 9.9 epochs), [`TrainConfig::recipe`] for the others.
    ///
    /// The reference sums its loss over the batch and sets lr = 11.5 / k and weight decay
    /// 0.0153·B / k per parameter group with k = 1024·(1 + 1/(1 − 0.85)); for sbfnet's mean loss
    /// the same steps are lr = 11.5·B/k = 1.50 and λ = 0.0153·B/(11.5·B) = 0.00133 (the batch-norm
    /// biases at 64× the rate with λ/64 come from the model, `Parameter::lr_scale`).
    pub fn recipe_for(spec: &crate::nn::ModelSpec) -> TrainConfig {
        match spec.architecture {
            crate::nn::model::Architecture::Airbench94 => {
                let k = 1024.0 * (1.0 + 1.0 / (1.0 - 0.85));
                TrainConfig {
                    // 9.9 epochs: ten, the last on ⌈0.9 · 48⌉ = 44 of its 48 batches (476 steps).
                    epochs: 10,
                    last_epoch_fraction: 0.9,
                    batch_size: 1024,
                    learning_rate: 11.5 * 1024.0 / k,
                    sgd: SgdConfig {
                        momentum: 0.85,
                        nesterov: true,
                        weight_decay: 0.0153 / 11.5,
                    },
                    schedule: ScheduleKind::Airbench,
                    warmup_epochs: 0,
                    label_smoothing: 0.2,
                    // Shifts of up to 2 pixels, reflect-padded, and alternating flips.
                    augmentation: Augmentation {
                        crop: false,
                        translate: 2,
                        flip: crate::data::augment::Flip::Alternating,
                        rotation_degrees: 0.0,
                    },
                    lookahead: true,
                    ..TrainConfig::recipe()
                }
            }
            _ => TrainConfig::recipe(),
        }
    }

    /// The warm-up a run of `epochs` epochs gets unless told otherwise: 2 epochs, but never the
    /// whole run (a 1-epoch run has none, a 2-epoch run warms up for 1), so that the learning
    /// rate of a short trial run still reaches its peak and decays.
    pub fn default_warmup_epochs(epochs: usize) -> usize {
        2.min(epochs.saturating_sub(1))
    }

    /// Refuses settings that the model `spec` cannot honour, before it is built: a residual start
    /// without residual blocks, the masks' rate or decay without SBF layers.
    pub fn check_model(&self, spec: &crate::nn::ModelSpec) -> Result<()> {
        let residual = matches!(spec.architecture, crate::nn::model::Architecture::ResNet { .. });
        if self.zero_init_residual && !residual {
            return Err(Error::msg(format!(
                "`zero_init_residual` needs a model with residual blocks, and {} has none",
                spec.name()
            )));
        }
        let masks = [
            ("mask_lr_scale", self.mask_lr_scale != 1.0),
            ("mask_weight_decay", self.mask_weight_decay),
        ];
        if let Some((setting, _)) = masks.iter().find(|(_, set)| *set) {
            if spec.convs.is_dense() {
                return Err(Error::msg(format!(
                    "`{setting}` needs SBF layers (`target_rate`, or SBF layers in the model's conv plan), and {} has none",
                    spec.description()
                )));
            }
        }
        Ok(())
    }

    /// Refuses impossible settings with one line that names the setting (in backticks).
    pub fn validate(&self, train_images: usize) -> Result<()> {
        let fail = |m: String| Err(Error::msg(m));
        if self.epochs == 0 {
            return fail("`epochs` must be a positive number of epochs".into());
        }
        if !(self.last_epoch_fraction > 0.0 && self.last_epoch_fraction <= 1.0) {
            return fail(format!(
                "`epochs`: the last epoch's fraction {} must lie in (0, 1]",
                self.last_epoch_fraction
            ));
        }
        if self.batch_size == 0 {
            return fail("`batch_size` must be at least 1".into());
        }
        if self.shards == 0 {
            return fail("`shards` must be at least 1".into());
        }
        if self.batch_size < self.shards {
            return fail(format!(
                "`batch_size` {} is smaller than `shards` {}: every shard needs at least one image",
                self.batch_size, self.shards
            ));
        }
        if self.batch_size > train_images {
            return fail(format!(
                "`batch_size` {} is larger than the {train_images} training images",
                self.batch_size
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return fail(format!(
                "`learning_rate` must be a positive number, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) {
            return fail(format!("`momentum` must be in [0, 1), got {}", self.sgd.momentum));
        }
        if !(self.sgd.weight_decay >= 0.0 && self.sgd.weight_decay.is_finite()) {
            return fail(format!(
                "`weight_decay` must be ≥ 0, got {}",
                self.sgd.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return fail(format!(
                "`label_smoothing` must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if !(0.0..=180.0).contains(&self.augmentation.rotation_degrees) {
            return fail(format!(
                "`rotation` must be in [0, 180] degrees, got {}",
                self.augmentation.rotation_degrees
            ));
        }
        if let Some(decay) = self.ema_decay {
            if !(decay > 0.0 && decay < 1.0) {
                return fail(format!(
                    "`ema_decay` {decay}: the decay must lie strictly between 0 and 1"
                ));
            }
        }
        if !(self.mask_lr_scale > 0.0 && self.mask_lr_scale.is_finite()) {
            return fail(format!(
                "`mask_lr_scale` must be a positive number, got {}",
                self.mask_lr_scale
            ));
        }
        if let Some(minutes) = self.time_budget_minutes {
            if !(minutes.is_finite() && minutes > 0.0) {
                return fail(format!(
                    "`time_budget_minutes` must be a positive number of minutes, got {minutes}"
                ));
            }
        }
        Ok(())
    }

    /// Iterations per epoch: the last incomplete batch of each (reshuffled) epoch is dropped.
    pub fn steps_per_epoch(&self, train_images: usize) -> usize {
        train_images / self.batch_size
    }

    /// Steps of epoch `epoch` (0-based): all of them, but the run's last epoch trains only the
    /// first ⌈fraction · steps⌉ of its batches when `--epochs` has a fraction. That is
    /// airbench94's count: 9.9 epochs of 48 steps are ⌈475.2⌉ = 476 steps, the tenth epoch 44.
    pub fn steps_in_epoch(&self, epoch: usize, train_images: usize) -> usize {
        let steps = self.steps_per_epoch(train_images);
        if epoch + 1 == self.epochs && self.last_epoch_fraction < 1.0 {
            // The tolerance keeps a product that is whole in decimal (0.5 · 48) from rounding up.
            let share = (self.last_epoch_fraction * steps as f64 - 1e-9).ceil() as usize;
            share.clamp(1, steps)
        } else {
            steps
        }
    }

    /// Steps of the first `epochs` epochs of the run.
    pub fn steps_in_epochs(&self, epochs: usize, train_images: usize) -> usize {
        (0..epochs)
            .map(|epoch| self.steps_in_epoch(epoch, train_images))
            .sum()
    }

    /// `--epochs` as text: a whole number, or the decimal it was given as (`9.9`).
    pub fn epochs_text(&self) -> String {
        if self.last_epoch_fraction == 1.0 {
            self.epochs.to_string()
        } else {
            (self.epochs.saturating_sub(1) as f64 + self.last_epoch_fraction).to_string()
        }
    }

    /// Sets `epochs` and `last_epoch_fraction` from `--epochs`' number: 9.9 begins ten epochs and
    /// trains 0.9 of the last (9.9 − 9, exact in floating point, so that the text reads back).
    pub fn set_epochs(&mut self, epochs: f64) -> std::result::Result<(), String> {
        if !(0.0..=1e9).contains(&epochs) {
            return Err(format!("\"{epochs}\" is not a positive number of epochs"));
        }
        let whole = epochs.ceil();
        self.epochs = whole as usize;
        self.last_epoch_fraction = if whole == 0.0 { 1.0 } else { epochs - (whole - 1.0) };
        Ok(())
    }

    /// The per-iteration learning-rate schedule of a run of `epochs` epochs.
    pub fn schedule_for(&self, train_images: usize, epochs: usize) -> Schedule {
        Schedule {
            kind: self.schedule,
            base: self.learning_rate,
            warmup_steps: self.warmup_epochs * self.steps_per_epoch(train_images),
            total_steps: self.steps_in_epochs(epochs, train_images),
            anchor: None,
        }
    }

    /// Key/value pairs for a checkpoint: every saved setting of [`SETTINGS`] under its name.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        SETTINGS
            .iter()
            .filter(|s| s.saved)
            .map(|s| (s.name.to_string(), (s.get)(self)))
            .collect()
    }

    /// Reads [`TrainConfig::to_metadata`]'s pairs back; `path` names the checkpoint in errors.
    /// A setting that a checkpoint predates takes the value it had before it existed.
    pub fn from_checkpoint(checkpoint: &Checkpoint, path: &Path) -> Result<TrainConfig> {
        let mut config = TrainConfig::recipe();
        for setting in SETTINGS.iter().filter(|s| s.saved) {
            let text = checkpoint
                .get(setting.name)
                .or(setting.before_it_existed)
                .ok_or_else(|| {
                    Error::file(
                        path,
                        format!("checkpoint lacks the training setting \"{}\"", setting.name),
                    )
                })?;
            (setting.set)(&mut config, text).map_err(|why| {
                Error::file(
                    path,
                    format!("checkpoint setting {} = \"{text}\": {why}", setting.name),
                )
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn airbench94_selects_its_recipe_and_the_others_the_default() {
        let airbench = TrainConfig::recipe_for(&crate::nn::ModelSpec::parse_name("airbench94").unwrap());
        assert_eq!(
            (
                airbench.batch_size,
                airbench.epochs_text(),
                airbench.warmup_epochs
            ),
            (1024, "9.9".to_string(), 0)
        );
        // ⌈9.9 · 48⌉ = 476 steps, as the reference counts them: the tenth epoch trains 44.
        assert_eq!(airbench.steps_in_epoch(9, 50_000), 44);
        assert_eq!(airbench.steps_in_epoch(8, 50_000), 48);
        assert_eq!(airbench.schedule_for(50_000, 10).total_steps, 476);
        assert!((airbench.learning_rate - 1.5).abs() < 1e-3 && airbench.lookahead);
        assert_eq!(
            (airbench.schedule, airbench.label_smoothing),
            (ScheduleKind::Airbench, 0.2)
        );
        assert_eq!(airbench.augmentation.describe(), "translate2+altflip");
        let resnet = TrainConfig::recipe_for(&crate::nn::ModelSpec::parse_name("resnet20").unwrap());
        assert_eq!(resnet, TrainConfig::recipe());
    }

    use super::*;

    #[test]
    fn the_default_warm_up_never_fills_a_short_run() {
        let warmups: Vec<usize> = (0..6).map(TrainConfig::default_warmup_epochs).collect();
        assert_eq!(warmups, [0, 0, 1, 2, 2, 2]);
        assert_eq!(TrainConfig::recipe().warmup_epochs, 2);
    }

    #[test]
    fn fractional_epochs_train_part_of_the_last_epoch_and_read_back() {
        let mut config = TrainConfig::recipe();
        for (text, epochs, last_steps, total) in [
            ("9.9", 10, 44, 476),
            ("0.5", 1, 24, 24),
            ("2.25", 3, 12, 108),
            ("3", 3, 48, 144),
            ("0.001", 1, 1, 1),
        ] {
            config.set("epochs", text).unwrap();
            assert_eq!(config.epochs, epochs, "{text}");
            assert_eq!(config.epochs_text(), text);
            // 48 steps an epoch: 6,144 images at batch 128.
            assert_eq!(config.steps_in_epoch(epochs - 1, 6_144), last_steps, "{text}");
            assert_eq!(config.steps_in_epochs(epochs, 6_144), total, "{text}");
            assert_eq!(config.schedule_for(6_144, epochs).total_steps, total, "{text}");
            config.validate(6_144).unwrap();
        }
        // A run planned shorter by a time budget ends on whole epochs.
        config.set("epochs", "9.9").unwrap();
        assert_eq!(config.steps_in_epochs(6, 6_144), 6 * 48);
        for bad in ["-1", "NaN", "inf", "ten"] {
            let err = config.set("epochs", bad).unwrap_err().to_string();
            assert!(err.starts_with("`epochs`"), "{err}");
        }
        config.set("epochs", "0").unwrap();
        let err = config.validate(6_144).unwrap_err().to_string();
        assert_eq!(err, "`epochs` must be a positive number of epochs");
    }

    #[test]
    fn config_metadata_round_trips_and_bad_settings_are_named() {
        let mut config = TrainConfig::recipe();
        config.label_smoothing = 0.1;
        config.augmentation.rotation_degrees = 7.5;
        config.shards = 3;
        config.set_epochs(9.9).unwrap();
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
        assert!(bad
            .validate(1000)
            .unwrap_err()
            .to_string()
            .contains("`learning_rate`"));
        bad = TrainConfig::recipe();
        bad.sgd.momentum = 1.0;
        assert!(bad.validate(1000).unwrap_err().to_string().contains("`momentum`"));
        bad = TrainConfig::recipe();
        bad.time_budget_minutes = Some(0.0);
        assert!(bad
            .validate(1000)
            .unwrap_err()
            .to_string()
            .contains("`time_budget_minutes`"));
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
}
