//! The flags of `sbfnet train` and `sbfnet prune`, grouped by who takes them, and the
//! settings built from them: a fresh run's [`TrainConfig`], the check that a resumed run's
//! flags agree with its checkpoint, and the output settings.

use clap::Args;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::cifar::{Cifar10, IMAGE_BYTES};
use sbfnet::nn::{ConvKind, ConvPlan, ModelSpec, TemplateChoice, TransformInit};
use sbfnet::ops::TransformFamily;
use sbfnet::prune::{self, PruneSettings, Ramp, Saliency};
use sbfnet::train::numerics::NonFinitePolicy;
use sbfnet::train::{validate, Distillation, TestViews, TrainConfig, EVAL_EVERY_KEY, TEST_VIEWS_KEY};
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
    /// Across processes (under mpirun): send the gradients in buckets while the backward pass
    /// goes on (true), or all at once after it (false); the step is the same bit for bit. The
    /// overlap needs a core to spare for the exchange thread [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub overlap_exchange: Option<bool>,
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
    /// Epochs of the whole run; a fraction trains part of the last epoch (9.9: ten epochs, the
    /// last on its first 90 % of batches) [default: 50; airbench94: 9.9]
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<f64>,
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
    /// cosine|linear|step|onecycle|airbench [default: cosine]
    #[arg(long)]
    pub schedule: Option<String>,
    /// Epochs of linear learning-rate warm-up [default: 2, at most the epochs less one]
    #[arg(long, allow_negative_numbers = true)]
    pub warmup_epochs: Option<usize>,
    /// Label smoothing ε [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub label_smoothing: Option<f32>,
    /// Training augmentation: crop+flip, crop, flip or none; altflip instead of flip mirrors each
    /// image in every other epoch instead of at random (e.g. crop+altflip); translateN instead of
    /// crop shifts by up to N pixels with reflect padding (e.g. translate2+altflip) [default: crop+flip]
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
    /// Pull the weights back to a slow copy every 5 steps (lookahead with airbench94's
    /// schedule): --lookahead, --lookahead true|false [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub lookahead: Option<bool>,
    /// The SBF layers' masks learn at this multiple of the learning rate; needs a model with SBF
    /// layers [default: 1]
    #[arg(long, allow_negative_numbers = true)]
    pub mask_lr_scale: Option<f32>,
    /// The SBF layers' masks take the weight decay too: --mask-decay, --mask-decay true|false;
    /// needs a model with SBF layers [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub mask_decay: Option<bool>,
    /// Also rotate training images by up to this many degrees (bilinear) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub rotate: Option<f32>,
    /// Worker threads; unless --shards says otherwise, each batch is split into this many shards
    /// [default: all cores; when resuming: the run's]
    #[arg(long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Shards each batch is split into, over all threads and processes: batch norm normalises each
    /// shard with its own statistics, so this is part of the recipe; fixing it trains the same
    /// recipe on any thread count (rounded differently) [default: threads × processes; when
    /// resuming: the run's]
    #[arg(long, allow_negative_numbers = true)]
    pub shards: Option<usize>,
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
    /// and cannot become best.ckpt [default: 1; airbench94's recipe: only after the last]
    #[arg(long, allow_negative_numbers = true)]
    pub eval_every: Option<usize>,
    /// Train to this wall-clock budget in minutes, training and evaluation: after every epoch the
    /// run re-plans how many epochs fit (at most --epochs) and fits its learning-rate schedule to
    /// end there; not repeatable bit for bit, since the length depends on the machine's speed
    #[arg(long, allow_negative_numbers = true)]
    pub time_budget: Option<f32>,
    /// Test-time augmentation of those evaluations: none, flip (each test image and its mirror
    /// image, logits averaged; twice the evaluation time), or flip+shift (airbench94's level 2:
    /// also the image shifted a pixel up-left and down-right, each mirrored; six views) [default:
    /// none; airbench94's recipe: flip+shift]
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
            ("shards", text(&self.shards)),
            ("time_budget_minutes", text(&self.time_budget)),
            ("zero_init_residual", text(&self.zero_init_residual)),
            ("lookahead", text(&self.lookahead)),
            ("ema_decay", text(&self.ema)),
            ("mask_lr_scale", text(&self.mask_lr_scale)),
            ("mask_weight_decay", text(&self.mask_decay)),
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
    /// Template of a newly transformed filter: balanced (the one with the fewest copies: the
    /// paper's round-robin) or best-fit (the one whose least-squares masks reproduce it best,
    /// at most ⌈(N−M)/M⌉ copies each) [default: balanced]
    #[arg(long)]
    pub template_choice: Option<String>,
}

impl PruneArgs {
    pub(super) fn any_given(&self) -> bool {
        let c = &self.conversion;
        self.prune_epochs.is_some()
            || c.min_templates.is_some()
            || c.groups.is_some()
            || c.mask_init.is_some()
            || c.method.is_some()
            || c.saliency.is_some()
            || c.template_choice.is_some()
    }

    /// The conv plan and pruning settings of a fresh pruning run, or None without --prune-rate.
    pub fn settings(&self, epochs: usize) -> Result<Option<(String, PruneSettings)>> {
        let Some(rate) = self.prune_rate else {
            if self.any_given() {
                return Err(Error::msg(
                    "--prune-epochs, --min-templates, --groups, --mask-init, --method, --saliency and --template-choice \
                     need --prune-rate",
                ));
            }
            return Ok(None);
        };
        let init = self.conversion.mask_init()?;
        let settings = PruneSettings {
            ramp: Ramp::new(
                rate,
                self.prune_epochs
                    .unwrap_or(PruneSettings::default_ramp_epochs(epochs)),
            ),
            min_templates: self.conversion.min_templates.unwrap_or(8),
            init,
            saliency: self.conversion.saliency()?,
            choice: self.conversion.template_choice()?,
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
        let default = TransformInit::LeastSquares;
        parse_choice(
            "--mask-init",
            &self.mask_init,
            default,
            prune::ramp::parse_init,
            "copy or lstsq",
        )
    }

    /// --template-choice, parsed.
    pub fn template_choice(&self) -> Result<TemplateChoice> {
        let default = TemplateChoice::Balanced;
        parse_choice(
            "--template-choice",
            &self.template_choice,
            default,
            TemplateChoice::parse,
            "balanced or best-fit",
        )
    }

    /// --saliency, parsed.
    pub fn saliency(&self) -> Result<Saliency> {
        let expected = "l1-relative, l1 or taylor";
        parse_choice(
            "--saliency",
            &self.saliency,
            Saliency::L1Relative,
            Saliency::parse,
            expected,
        )
    }
}

/// The value of a flag that names one of a few choices: `default` when it is not given, else
/// `parse(text)`, else the error `unknown FLAG "text" (expected …)`.
fn parse_choice<T>(
    flag: &str,
    given: &Option<String>,
    default: T,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<T> {
    match given {
        None => Ok(default),
        Some(text) => {
            parse(text).ok_or_else(|| Error::msg(format!("unknown {flag} \"{text}\" (expected {expected})")))
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
/// The settings of a fresh run: the recipe the model selects ([`TrainConfig::recipe_for`]), then
/// every flag given.
pub(super) fn fresh_config(
    args: &RunArgs,
    spec: &sbfnet::nn::ModelSpec,
    threads: usize,
) -> Result<TrainConfig> {
    let mut config = TrainConfig::recipe_for(spec);
    let preset_warmup = config.warmup_epochs;
    config.shards = threads;
    for (setting, text) in args.given_settings() {
        config.set(setting, &text)?;
    }
    if args.shards.is_none() && (1..threads).contains(&config.batch_size) {
        return Err(Error::msg(format!(
            "--batch-size {} is smaller than --threads {threads}: each thread's shard needs at least one image \
             (or set --shards)",
            config.batch_size
        )));
    }
    match args.warmup_epochs {
        Some(warmup) => validate::check_warmup(warmup, config.epochs)?,
        // A recipe without warm-up keeps none; otherwise the default of the run's length.
        None if preset_warmup == 0 => config.warmup_epochs = 0,
        None => config.warmup_epochs = TrainConfig::default_warmup_epochs(config.epochs),
    }
    Ok(config)
}

/// A resumed run keeps its settings: a flag that contradicts the checkpoint is refused.
pub(super) fn check_resume_flags(args: &RunArgs, saved: &TrainConfig, path: &Path) -> Result<()> {
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

/// The settings of what a run writes and evaluates, and of its response to a non-finite
/// number: taken from the flags, also when resuming (where `--eval-every` and `--tta` default
/// to the run's own, see [`OutputSettings::keep_saved`]).
pub(super) struct OutputSettings {
    pub on_nonfinite: NonFinitePolicy,
    pub test_views: TestViews,
    pub eval_every: usize,
}

impl OutputSettings {
    /// The defaults a model's recipe gives the settings that `args` leaves unset: airbench94
    /// evaluates as its reference script does, once after the last epoch (`--eval-every` =
    /// the run's epochs) with TTA level 2 (`--tta flip+shift`).
    pub(super) fn apply_recipe(&mut self, args: &RunArgs, spec: &ModelSpec, epochs: usize) {
        if spec.architecture == sbfnet::nn::model::Architecture::Airbench94 {
            if args.tta.is_none() {
                self.test_views = TestViews::MirroredAndShifted;
            }
            if args.eval_every.is_none() {
                self.eval_every = epochs.max(1);
            }
        }
    }

    /// A resumed run evaluates as it did before (`--eval-every`, `--tta`, saved in its
    /// checkpoint; the recipe's defaults were applied when it started) unless `args` set them.
    /// Checkpoints from before these were saved keep the flags' defaults.
    pub(super) fn keep_saved(&mut self, args: &RunArgs, checkpoint: &Checkpoint, path: &Path) -> Result<()> {
        if args.eval_every.is_none() {
            if let Some(text) = checkpoint.get(EVAL_EVERY_KEY) {
                self.eval_every = text.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    Error::file(
                        path,
                        format!("`{EVAL_EVERY_KEY}` is {text:?}, not a count of at least 1"),
                    )
                })?;
            }
        }
        if args.tta.is_none() {
            if let Some(text) = checkpoint.get(TEST_VIEWS_KEY) {
                self.test_views = TestViews::parse(text).map_err(|e| Error::file(path, e.message))?;
            }
        }
        Ok(())
    }

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
