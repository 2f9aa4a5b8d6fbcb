//! `sbfnet train`: train a model on CIFAR-10, or resume a run.
//!
//! Every setting is checked before any data is read. A fresh run refuses an
//! output folder that already holds a checkpoint (pass --resume, or another
//! --out); a resumed run takes every training setting from its checkpoint and
//! refuses flags that contradict it (so the run continues bit for bit).
//!
//! Failures: a NaN or infinite loss or gradient stops the run with a line that
//! names the step and the layer (or skips the batch, `--on-nonfinite skip`);
//! nothing of the failed epoch is saved. After every epoch metrics.csv and the
//! learning curve are written before the checkpoints (all atomically), so a run
//! killed at any moment resumes from `last.ckpt` with metrics that match it.
//!
//! Test hooks (environment variables holding 1-based step numbers, "6" or "5,6,7"):
//! `SBFNET_TEST_POISON_STEP` puts a NaN into the first pixel of those steps'
//! batches (a fault injected for tests/numerical_faults.rs);
//! `SBFNET_TEST_PAUSE_AT_STEP` prints "test hook: paused before step <n>" and
//! sleeps a minute (or until Ctrl-C) before those steps (for tests/kill_resume.rs to
//! kill or interrupt it there).
//!
//! Ctrl-C stops the run between two steps: the epoch in progress is not saved, the
//! process prints the command that resumes the run from `last.ckpt` and exits with 130.
//! A run stopped before its first epoch ends removes the folder it made.

use super::interrupt;
use super::progress::ProgressLines;
use clap::Args;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::cifar::{self, Cifar10, IMAGE_BYTES};
use sbfnet::nn::model::Architecture;
use sbfnet::nn::{ConvKind, ConvPlan, ModelSpec, TransformInit};
use sbfnet::ops::TransformFamily;
use sbfnet::prune::{self, PruneSettings, Ramp, Saliency};
use sbfnet::train::numerics::NonFinitePolicy;
use sbfnet::train::{self as training, RunEnd, RunOptions, TEST_IMAGES_KEY};
use sbfnet::train::{validate, Distillation, TestViews, TrainConfig, Trainer};
use sbfnet::{Error, Result};
use std::path::{Path, PathBuf};

/// The flags of `sbfnet train`: the model, a run to resume, pruning, and the [`RunArgs`].
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// resnet20|resnet32|resnet44|resnet56|resnet110|vgg16 (any resnet6n+2; -w<k> sets the width) [default: resnet20]
    #[arg(long)]
    pub model: Option<String>,
    /// Which convolutions are dense or SBF, e.g. "dense" (the stem stays dense unless the plan
    /// starts with first=<kind>,) [default: dense]
    #[arg(long)]
    pub convs: Option<String>,
    /// Continue the run saved in this checkpoint (e.g. runs/x/last.ckpt)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub pruning: PruneArgs,
}

/// The flags of a training run that `sbfnet train` and `sbfnet prune` share: the data, the
/// recipe, the output and the teacher.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// CIFAR-10 binary folder [default: $SBFNET_DATA, else ../shared/data/cifar-10-batches-bin,
    /// else ./data/cifar-10-batches-bin]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs of the whole run [default: 50]
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Images per optimisation step [default: 128]
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Peak learning rate [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// SGD momentum [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f32>,
    /// Nesterov momentum: --nesterov, --nesterov true|false [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub nesterov: Option<bool>,
    /// Weight decay of conv and linear weights (not BN, not biases) [default: 5e-4]
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// cosine|linear|step|onecycle [default: cosine]
    #[arg(long)]
    pub schedule: Option<String>,
    /// Epochs of linear learning-rate warm-up [default: 2, at most the epochs less one]
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_epochs: Option<usize>,
    /// Label smoothing ε [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub label_smoothing: Option<f32>,
    /// Training augmentation: crop+flip, crop, flip or none; altflip instead of flip mirrors each
    /// image in every other epoch instead of at random (e.g. crop+altflip) [default: crop+flip]
    #[arg(long)]
    pub augment: Option<String>,
    /// Start every residual block as the identity (the γ of its last batch norm at 0):
    /// --zero-init-residual, --zero-init-residual true|false [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub zero_init_residual: Option<bool>,
    /// Evaluate and save an exponential moving average of the weights and BN statistics,
    /// with this decay per step (e.g. 0.999: about the last 1000 steps) [default: none]
    #[arg(long, allow_negative_numbers = true)]
    pub ema: Option<f32>,
    /// Also rotate training images by up to this many degrees (bilinear) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub rotate: Option<f32>,
    /// Worker threads; each batch is split into this many shards [default: all cores; when
    /// resuming: the run's]
    #[arg(long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Seed of the initialisation, shuffling and augmentation [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Output folder [default: runs/<model>-<UTC time>; when resuming: the checkpoint's folder]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train on the first N training images only (quick runs)
    #[arg(long, allow_negative_numbers = true)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test images only (quick runs)
    #[arg(long, allow_negative_numbers = true)]
    pub test_limit: Option<usize>,
    /// Evaluate on the test set after every N-th epoch and after the last (evaluation takes
    /// 5–10 % of an epoch of ResNet-20); other epochs leave the test columns of metrics.csv empty
    /// and cannot become best.ckpt [default: 1]
    #[arg(long, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
    /// Train to this wall-clock budget in minutes, training and evaluation: after every epoch the
    /// run re-plans how many epochs fit (at most --epochs) and fits its learning-rate schedule to
    /// end there; not repeatable bit for bit, since the length depends on the machine's speed
    #[arg(long, allow_negative_numbers = true)]
    pub time_budget: Option<f32>,
    /// Test-time augmentation of those evaluations: none, or flip (each test image and its mirror
    /// image, logits averaged; twice the evaluation time) [default: none]
    #[arg(long)]
    pub tta: Option<String>,
    /// A NaN or infinite loss or gradient: stop (keep the last checkpoint and exit with the step
    /// and layer) or skip (leave the parameters unchanged, count the batch as skipped) [default: stop]
    #[arg(long)]
    pub on_nonfinite: Option<String>,
    /// Distil from this trained model's checkpoint (knowledge distillation, e.g. the dense
    /// baseline's best.ckpt): the loss becomes (1 − w)·CE + w·τ²·KL(teacher ‖ student)
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Distillation temperature τ [default: 5, the paper's v1 on CIFAR]
    #[arg(long, allow_negative_numbers = true)]
    pub kd_temperature: Option<f32>,
    /// Distillation weight w of the teacher term, in [0, 1] [default: 1, the teacher only, as the paper's v1]
    #[arg(long, allow_negative_numbers = true)]
    pub kd_weight: Option<f32>,
}

impl RunArgs {
    /// The distillation of a fresh run, or None without --teacher.
    pub(super) fn distillation(&self) -> Result<Option<Distillation>> {
        let Some(teacher) = &self.teacher else {
            if self.kd_temperature.is_some() || self.kd_weight.is_some() {
                return Err(Error::msg("--kd-temperature and --kd-weight need --teacher"));
            }
            return Ok(None);
        };
        Distillation::load(
            teacher,
            self.kd_temperature.unwrap_or(5.0),
            self.kd_weight.unwrap_or(1.0),
        )
        .map(Some)
    }

    /// The training settings these flags set, as (setting, text), in the order of
    /// `sbfnet::train::settings::SETTINGS`.
    pub(super) fn given_settings(&self) -> Vec<(&'static str, String)> {
        fn text<T: ToString>(value: &Option<T>) -> Option<String> {
            value.as_ref().map(T::to_string)
        }
        [
            ("epochs", text(&self.epochs)),
            ("batch_size", text(&self.batch_size)),
            ("learning_rate", text(&self.lr)),
            ("momentum", text(&self.momentum)),
            ("nesterov", text(&self.nesterov)),
            ("weight_decay", text(&self.weight_decay)),
            ("schedule", text(&self.schedule)),
            ("warmup_epochs", text(&self.warmup_epochs)),
            ("label_smoothing", text(&self.label_smoothing)),
            ("augmentation", text(&self.augment)),
            ("rotation", text(&self.rotate)),
            ("seed", text(&self.seed)),
            ("time_budget_minutes", text(&self.time_budget)),
            ("zero_init_residual", text(&self.zero_init_residual)),
            ("ema_decay", text(&self.ema)),
        ]
        .into_iter()
        .filter_map(|(setting, value)| Some((setting, value?)))
        .collect()
    }
}

/// Generalised pruning from random initialisation (docs/sbf.md): every body conv starts as an SBF
/// layer with all filters templates; each epoch of the ramp re-selects the templates globally.
#[derive(Args, Debug, Default)]
pub struct PruneArgs {
    /// Target global fraction of transformed filters, in [0, 1) (turns pruning on)
    #[arg(long)]
    pub prune_rate: Option<f32>,
    /// Epochs of the linear pruning ramp [default: ⌈2·epochs/15⌉, the paper's 40 of 300]
    #[arg(long)]
    pub prune_epochs: Option<usize>,
    #[command(flatten)]
    pub conversion: ConversionArgs,
}

/// How filters are chosen and replaced: the flags that pruning during training and converting a
/// trained network (`sbfnet prune`) share.
#[derive(Args, Debug, Default)]
pub struct ConversionArgs {
    /// Templates every layer keeps at least [default: 8]
    #[arg(long)]
    pub min_templates: Option<usize>,
    /// Input-channel groups G of the SBF layers [default: 2]
    #[arg(long)]
    pub groups: Option<usize>,
    /// Masks of newly transformed filters: copy (T = 1) or lstsq (least-squares fit of the dropped filter) [default: lstsq]
    #[arg(long)]
    pub mask_init: Option<String>,
    /// What replaces a pruned filter: sbf (a masked copy of a kept template) or l1 (nothing: plain
    /// L1 filter pruning, the baseline; the output is zero) [default: sbf]
    #[arg(long)]
    pub method: Option<String>,
    /// Filter ranking: l1-relative (L1 norm / the layer's mean L1 norm), l1 (plain L1 norm) or
    /// taylor (first-order Taylor over the previous epoch / the layer's mean) [default: l1-relative]
    #[arg(long)]
    pub saliency: Option<String>,
}

impl PruneArgs {
    fn any_given(&self) -> bool {
        let c = &self.conversion;
        self.prune_epochs.is_some()
            || c.min_templates.is_some()
            || c.groups.is_some()
            || c.mask_init.is_some()
            || c.method.is_some()
            || c.saliency.is_some()
    }

    /// The conv plan and pruning settings of a fresh pruning run, or None without --prune-rate.
    pub fn settings(&self, epochs: usize) -> Result<Option<(String, PruneSettings)>> {
        let Some(rate) = self.prune_rate else {
            if self.any_given() {
                return Err(Error::msg(
                    "--prune-epochs, --min-templates, --groups, --mask-init, --method and --saliency need --prune-rate",
                ));
            }
            return Ok(None);
        };
        let init = self.conversion.mask_init()?;
        let settings = PruneSettings {
            ramp: Ramp {
                target_rate: rate,
                epochs: self
                    .prune_epochs
                    .unwrap_or(PruneSettings::default_ramp_epochs(epochs)),
            },
            min_templates: self.conversion.min_templates.unwrap_or(8),
            init,
            saliency: self.conversion.saliency()?,
        };
        settings.validate(epochs)?;
        let groups = self.conversion.groups.unwrap_or(2);
        if groups == 0 {
            return Err(Error::msg("--groups must be at least 1"));
        }
        let family = self.conversion.family()?;
        let plan = ConvKind::Sbf {
            rate: 0.0,
            groups,
            family,
        }
        .describe();
        Ok(Some((plan, settings)))
    }
}

impl ConversionArgs {
    /// --method as the transform family of the pruned layers: scalar masks (sbf) or zero (l1).
    pub fn family(&self) -> Result<TransformFamily> {
        match self.method.as_deref() {
            None | Some("sbf") => Ok(TransformFamily::Scalar),
            Some("l1") => Ok(TransformFamily::Zero),
            Some(other) => Err(Error::msg(format!(
                "unknown --method \"{other}\" (expected sbf or l1)"
            ))),
        }
    }

    /// --mask-init, parsed. The default is lstsq: at ~50 % fewer MACs it gave 79.78 % against 77.93 %
    /// for copy masks (docs/results.md).
    pub fn mask_init(&self) -> Result<TransformInit> {
        match &self.mask_init {
            None => Ok(TransformInit::LeastSquares),
            Some(text) => prune::ramp::parse_init(text).ok_or_else(|| {
                Error::msg(format!("unknown --mask-init \"{text}\" (expected copy or lstsq)"))
            }),
        }
    }

    /// --saliency, parsed.
    pub fn saliency(&self) -> Result<Saliency> {
        match &self.saliency {
            None => Ok(Saliency::L1Relative),
            Some(text) => Saliency::parse(text).ok_or_else(|| {
                Error::msg(format!(
                    "unknown --saliency \"{text}\" (expected l1-relative, l1 or taylor)"
                ))
            }),
        }
    }
}

/// The data folder: --data, else $SBFNET_DATA, else the first of the usual places that exists.
pub fn data_folder(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("SBFNET_DATA") {
        return PathBuf::from(path);
    }
    let shared = PathBuf::from("../shared/data/cifar-10-batches-bin");
    if shared.is_dir() {
        shared
    } else {
        PathBuf::from("data/cifar-10-batches-bin")
    }
}

/// The model named `name` with the conv plan `convs` (e.g. "dense").
pub fn model_spec(name: &str, convs: &str) -> Result<ModelSpec> {
    let mut spec = ModelSpec::parse_name(name)?;
    spec.convs = ConvPlan::parse(convs).map_err(|e| Error::msg(format!("--convs \"{convs}\": {e}")))?;
    spec.validate()?;
    Ok(spec)
}

/// The first `limit` images of `set` (all when `limit` is None); refuses a limit of 0.
pub fn limited(mut set: Cifar10, limit: Option<usize>, flag: &str) -> Result<Cifar10> {
    if let Some(n) = limit {
        if n == 0 {
            return Err(Error::msg(format!("{flag} must be at least 1")));
        }
        let n = n.min(set.len());
        set.images.truncate(n * IMAGE_BYTES);
        set.labels.truncate(n);
    }
    Ok(set)
}

/// The settings of a fresh run: the recipe, changed by the flags given.
pub(super) fn fresh_config(args: &RunArgs, threads: usize) -> Result<TrainConfig> {
    let mut config = TrainConfig::recipe();
    config.shards = threads;
    for (setting, text) in args.given_settings() {
        config.set(setting, &text)?;
    }
    match args.warmup_epochs {
        Some(warmup) => validate::check_warmup(warmup, config.epochs)?,
        None => config.warmup_epochs = TrainConfig::default_warmup_epochs(config.epochs),
    }
    Ok(config)
}

/// A resumed run keeps its settings: a flag that contradicts the checkpoint is refused.
fn check_resume_flags(args: &RunArgs, saved: &TrainConfig, path: &Path) -> Result<()> {
    let mut conflicts = Vec::new();
    for (setting, text) in args.given_settings() {
        let mut wanted = saved.clone();
        wanted.set(setting, &text)?;
        let (wanted, kept) = (wanted.get(setting), saved.get(setting));
        if wanted != kept {
            conflicts.push(format!("`{setting}` {wanted} (the run uses {kept})"));
        }
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::file(
            path,
            format!(
                "a resumed run keeps the settings of its checkpoint; drop {}",
                conflicts.join(", ")
            ),
        ))
    }
}

/// "runs/<model>-<YYYYmmdd-HHMMSS>" in UTC.
fn default_out_folder(model: &str) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{model}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        time / 3600,
        time / 60 % 60,
        time % 60
    ))
}

/// Creates `base`, or `base-2`, `base-3`, … when it exists already (another run started in
/// the same second), and returns the folder it made.
fn claim_new_folder(base: &Path) -> Result<PathBuf> {
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create the runs folder", e))?;
    }
    for attempt in 1.. {
        let folder = match attempt {
            1 => base.to_path_buf(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        };
        match std::fs::create_dir(&folder) {
            Ok(()) => return Ok(folder),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&folder, "cannot create the output folder", e)),
        }
    }
    unreachable!("the attempts above never end without returning")
}

/// Checks that the output folder can be made (a folder given with --out must
/// have an existing parent) and that a fresh run would not overwrite an earlier run.
fn check_out_folder(out: &Path, given: bool, resuming: bool) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if given && !parent.is_dir() {
        return Err(Error::file(
            out,
            format!("the output folder's parent {} does not exist", parent.display()),
        ));
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::file(out, "the output path exists and is not a folder"));
    }
    if !resuming && out.join("last.ckpt").exists() {
        return Err(Error::file(
            out,
            "already holds a run (last.ckpt): pass --resume <folder>/last.ckpt to continue it, or another --out",
        ));
    }
    Ok(())
}

/// The steps listed in the test-hook variable `name` (see the module documentation).
fn hook_steps(name: &str) -> Result<Vec<usize>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|step| step.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::msg(format!("{name}=\"{text}\" is not a list of step numbers")))
}

pub fn run(args: TrainArgs) -> Result<()> {
    // 1. Settings, all checked before any data is read.
    let output = OutputSettings::of(&args.run)?;
    let (poison_steps, pause_steps) = (
        hook_steps("SBFNET_TEST_POISON_STEP")?,
        hook_steps("SBFNET_TEST_PAUSE_AT_STEP")?,
    );
    let resumed = match &args.resume {
        Some(path) => {
            let checkpoint = Checkpoint::load(path)?;
            if args.model.is_some() || args.convs.is_some() {
                let saved = ModelSpec::parse_description(&checkpoint.model)
                    .map_err(|e| Error::file(path, e.message))?;
                let name = args.model.clone().unwrap_or(saved.name());
                let convs = args.convs.clone().unwrap_or(saved.convs.describe());
                checkpoint.expect_model(&model_spec(&name, &convs)?.description(), path)?;
            }
            let saved = TrainConfig::from_checkpoint(&checkpoint, path)?;
            if args.run.teacher.is_some() || args.run.kd_temperature.is_some() || args.run.kd_weight.is_some()
            {
                return Err(Error::file(
                    path,
                    "a resumed run keeps the teacher of its checkpoint; drop --teacher/--kd-temperature/--kd-weight",
                ));
            }
            if args.pruning.prune_rate.is_some() || args.pruning.any_given() {
                return Err(Error::file(
                    path,
                    "a resumed run keeps the pruning settings of its checkpoint; drop the --prune-*/--min-templates/--groups/--mask-init/--method/--saliency flags",
                ));
            }
            Some((path.clone(), checkpoint, saved))
        }
        None => None,
    };
    // A resumed run keeps its thread count unless told otherwise: the kernels
    // split their work by it, so it decides the last bits of every sum.
    let threads = args
        .run
        .threads
        .or(resumed.as_ref().map(|(_, _, saved)| saved.shards))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    validate::check_at_least("--threads", threads, 1)?;
    if let Some((path, _, saved)) = &resumed {
        check_resume_flags(&args.run, saved, path)?;
        if threads != saved.shards {
            println!(
                "note: the run was started with --threads {}; with {threads} threads it continues with {} \
                 shards per batch but will not repeat an uninterrupted run bit for bit",
                saved.shards, saved.shards
            );
        }
    }
    let (spec, config) = match &resumed {
        Some((path, checkpoint, saved)) => (
            ModelSpec::parse_description(&checkpoint.model).map_err(|e| Error::file(path, e.message))?,
            saved.clone(),
        ),
        None => {
            if args.pruning.prune_rate.is_some() {
                if args.run.ema.is_some() {
                    return Err(Error::msg(
                        "--ema cannot be combined with --prune-rate: pruning reshapes the weights it would average",
                    ));
                }
                if args.run.time_budget.is_some() {
                    return Err(Error::msg(
                        "--time-budget cannot be combined with --prune-rate: the pruning ramp needs a run of known length",
                    ));
                }
            }
            let config = fresh_config(&args.run, threads)?;
            let pruning = args.pruning.settings(config.epochs)?;
            let convs =
                match (&pruning, &args.convs) {
                    (Some(_), Some(_)) => return Err(Error::msg(
                        "--prune-rate builds its own SBF plan (all filters templates at first): drop --convs",
                    )),
                    (Some((plan, _)), None) => plan.clone(),
                    (None, convs) => convs.clone().unwrap_or("dense".into()),
                };
            let spec = model_spec(args.model.as_deref().unwrap_or("resnet20"), &convs)?;
            if config.zero_init_residual && !matches!(spec.architecture, Architecture::ResNet { .. }) {
                return Err(Error::msg(format!(
                    "--zero-init-residual needs a model with residual blocks, and {} has none",
                    spec.name()
                )));
            }
            // Everything that does not depend on the data's size.
            config.validate(usize::MAX)?;
            (spec, config)
        }
    };
    let out = match (&args.run.out, &resumed) {
        (Some(out), _) => out.clone(),
        (None, Some((path, ..))) => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        (None, None) => default_out_folder(&spec.name()),
    };
    check_out_folder(&out, args.run.out.is_some(), resumed.is_some())?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::msg(format!("cannot start {threads} threads: {e}")))?;

    // 2. Data. A resumed run uses the image counts it was started with unless told otherwise.
    let saved_count = |key: &str| -> Option<usize> {
        let (_, checkpoint, _) = resumed.as_ref()?;
        checkpoint.get(key)?.parse().ok()
    };
    let train_limit = args.run.train_limit.or_else(|| saved_count("train_images"));
    let test_limit = args.run.test_limit.or_else(|| saved_count(TEST_IMAGES_KEY));
    let data = data_folder(args.run.data.as_deref());
    let train = limited(cifar::load_training_set(&data)?, train_limit, "--train-limit")?;
    let test = limited(cifar::load_test_set(&data)?, test_limit, "--test-limit")?;

    // 3. The trainer, fresh or resumed.
    let mut trainer = match &resumed {
        Some((path, checkpoint, _)) => Trainer::from_checkpoint(checkpoint, path, train.len())?,
        None => {
            let mut trainer = Trainer::new(&spec, config.clone(), train.len())?;
            trainer.pruning = args
                .pruning
                .settings(config.epochs)?
                .map(|(_, settings)| settings);
            trainer.distillation = args.run.distillation()?;
            trainer
        }
    };
    trainer.on_nonfinite = output.on_nonfinite;
    if !poison_steps.is_empty() || !pause_steps.is_empty() {
        trainer.batch_hook = Some(Box::new(move |step, batch| {
            if pause_steps.contains(&step) {
                println!("test hook: paused before step {step}");
                // A minute, or until Ctrl-C asks the run to stop.
                let stop = interrupt::stop_on_ctrl_c();
                let started = std::time::Instant::now();
                while started.elapsed().as_secs() < 60 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            if poison_steps.contains(&step) {
                batch.data[0] = f32::NAN;
            }
        }));
    }
    if let Some(pruning) = trainer.pruning {
        println!(
            "pruning: target rate {} over the first {} epochs, at least {} templates per layer, masks {}, saliency {}",
            pruning.ramp.target_rate,
            pruning.ramp.epochs,
            pruning.min_templates,
            prune::ramp::init_name(pruning.init),
            pruning.saliency.name()
        );
    }
    if let Some(kd) = &trainer.distillation {
        println!(
            "distilling from {} ({}) at temperature {}, teacher weight {}",
            kd.source.display(),
            kd.teacher.description(),
            kd.temperature,
            kd.weight
        );
    }
    // A run without --out claims a fresh folder now, so two runs started in the same second
    // cannot share one.
    let (out, out_existed) = match (&args.run.out, &resumed) {
        (None, None) => (claim_new_folder(&out)?, false),
        _ => {
            let existed = out.is_dir();
            (out, existed)
        }
    };
    print_run_header(&trainer, &data, (train.len(), test.len()), threads, &out, &output);
    if trainer.epoch >= trainer.planned_epochs {
        println!("the run already finished all {} epochs", trainer.planned_epochs);
        return Ok(());
    }
    if trainer.epoch > 0 {
        println!("resuming after epoch {} (step {})", trainer.epoch, trainer.step);
    }

    // 4. The epochs, in the library's loop.
    train_to_end(&mut trainer, &train, &test, &out, out_existed, &output)
}

/// The lines that open a run: model, data, settings, output folder.
pub(super) fn print_run_header(
    trainer: &Trainer,
    data: &Path,
    images: (usize, usize),
    threads: usize,
    out: &Path,
    output: &OutputSettings,
) {
    let config = &trainer.config;
    let table = trainer.model.layer_table(&trainer.store);
    let macs: usize = table.iter().map(|r| r.macs).sum();
    println!(
        "{}: {} parameters, {:.1} M MACs per image",
        trainer.model.description(),
        trainer.store.num_scalars(),
        macs as f64 / 1e6
    );
    println!(
        "data {} ({} training, {} test images), {threads} threads, {} shards per batch",
        data.display(),
        images.0,
        images.1,
        config.shards
    );
    let mut model_options = String::new();
    if config.zero_init_residual {
        model_options += ", residual blocks start as the identity";
    }
    if let Some(decay) = config.ema_decay {
        model_options += &format!(", weights averaged (decay {decay})");
    }
    println!(
        "epochs {}, batch {}, lr {} {} (warm-up epochs {}), momentum {}{}, weight decay {}, label smoothing {}, \
         augmentation {}, seed {}{}, on non-finite: {}",
        config.epochs,
        config.batch_size,
        config.learning_rate,
        config.schedule.name(),
        config.warmup_epochs,
        config.sgd.momentum,
        if config.sgd.nesterov { " (Nesterov)" } else { "" },
        config.sgd.weight_decay,
        config.label_smoothing,
        config.augmentation.describe(),
        config.seed,
        model_options,
        output.on_nonfinite.name()
    );
    if let Some(minutes) = config.time_budget_minutes {
        println!(
            "time budget {minutes} min: the run re-plans its length after every epoch (at most {} epochs)",
            config.epochs
        );
    }
    println!("output {}", out.display());
}

/// The settings of what a run writes and evaluates, and of its response to a non-finite
/// number: taken from the flags, also when resuming.
pub(super) struct OutputSettings {
    pub on_nonfinite: NonFinitePolicy,
    pub test_views: TestViews,
    pub eval_every: usize,
}

impl OutputSettings {
    /// Parsed and checked before any data is read (the image limits too).
    pub(super) fn of(args: &RunArgs) -> Result<OutputSettings> {
        let on_nonfinite = match &args.on_nonfinite {
            Some(text) => NonFinitePolicy::parse(text).ok_or_else(|| {
                Error::msg(format!(
                    "unknown --on-nonfinite \"{text}\" (expected stop or skip)"
                ))
            })?,
            None => NonFinitePolicy::Stop,
        };
        let test_views = match args.tta.as_deref() {
            Some(text) => TestViews::parse(text)?,
            None => TestViews::Plain,
        };
        for (flag, limit) in [
            ("--train-limit", args.train_limit),
            ("--test-limit", args.test_limit),
            ("--eval-every", args.eval_every),
        ] {
            if let Some(n) = limit {
                validate::check_at_least(flag, n, 1)?;
            }
        }
        Ok(OutputSettings {
            on_nonfinite,
            test_views,
            eval_every: args.eval_every.unwrap_or(1),
        })
    }
}

/// Trains `trainer` to its last planned epoch in `out`, drawing progress. Ctrl-C stops it
/// between two steps: the process then exits with status 130 after the line that resumes it.
pub(super) fn train_to_end(
    trainer: &mut Trainer,
    train: &Cifar10,
    test: &Cifar10,
    out: &Path,
    out_existed: bool,
    output: &OutputSettings,
) -> Result<()> {
    let options = RunOptions {
        out: out.to_path_buf(),
        eval_every: output.eval_every,
        test_views: output.test_views,
        stop: Some(interrupt::stop_on_ctrl_c()),
        remove_unused_folder: !out_existed,
    };
    let mut progress = ProgressLines::new()?;
    let summary = training::run(trainer, train, test, &options, &mut progress)?;
    progress.finish();
    match summary.end {
        RunEnd::Finished => println!(
            "done: best test accuracy {:.2}%; checkpoints, metrics.csv and learning_curve.png in {}",
            100.0 * summary.best_test_accuracy,
            out.display()
        ),
        RunEnd::Stopped { epoch, step, steps } => {
            let resume = out.join("last.ckpt");
            if summary.epochs == 0 || !resume.exists() {
                println!(
                    "stopped in epoch {epoch} after {step} of {steps} steps; no epoch was finished, so nothing \
                     was saved"
                );
            } else {
                println!(
                    "stopped in epoch {epoch} after {step} of {steps} steps; the epoch in progress is not saved. \
                     {} holds epoch {}: resume with\n  sbfnet train --resume {}",
                    resume.display(),
                    summary.epochs,
                    resume.display()
                );
            }
            std::process::exit(130);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::claim_new_folder;

    #[test]
    fn runs_started_in_the_same_second_get_folders_of_their_own() {
        let root = std::env::temp_dir().join(format!("sbfnet-claim-{}", std::process::id()));
        let base = root.join("runs").join("resnet20-20261206-120000");
        let first = claim_new_folder(&base).unwrap();
        let second = claim_new_folder(&base).unwrap();
        assert_eq!(first, base);
        assert_eq!(second, root.join("runs").join("resnet20-20261206-120000-2"));
        assert!(first.is_dir() && second.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
