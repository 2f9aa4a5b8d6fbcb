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
//! batches (a fault injected for tests/cli/numerical_faults.rs);
//! `SBFNET_TEST_PAUSE_AT_STEP` prints "test hook: paused before step <n>" and
//! sleeps a minute (or until Ctrl-C) before those steps (for tests/cli/kill_resume.rs to
//! kill or interrupt it there).
//!
//! Ctrl-C stops the run between two steps and saves the unfinished epoch in `last.ckpt`;
//! the process prints the command that resumes the run from there and exits with 130.
//! A run stopped before its first step removes the folder it made.

use super::args::{
    check_resume_flags, data_folder, fresh_config, limited, model_spec, OutputSettings, TrainArgs,
};
use super::interrupt;
use super::out_folder::{check_out_folder, claim_new_folder, default_out_folder, record_command};
use super::progress::ProgressLines;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::cifar::{self, Cifar10};
use sbfnet::nn::ModelSpec;
use sbfnet::prune;
use sbfnet::train::{self as training, RunEnd, RunOptions, TEST_IMAGES_KEY, THREADS_KEY};
use sbfnet::train::{validate, TestViews, TrainConfig, Trainer};
use sbfnet::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    // 0. Under mpirun: one process of a run across processes (`--features mpi`).
    let mut processes = Processes::from_launch(args.overlap_exchange.unwrap_or(false))?;
    if args.overlap_exchange.is_some() && processes.count() == 1 {
        return Err(Error::msg(
            "--overlap-exchange applies to a run across processes only (started by mpirun, built with --features mpi)",
        ));
    }
    // 1. Settings, all checked before any data is read.
    let mut output = OutputSettings::of(&args.run)?;
    let hooks = TestHooks::from_environment()?;
    let resumed = open_resumed(&args)?;
    // A resumed run keeps its thread count unless told otherwise: the kernels split their work
    // by it, so it decides the last bits of every sum. (Checkpoints from before the count was
    // saved: the run's shards over the processes, the default then.)
    let run_threads = resumed.as_ref().map(|r| {
        let saved = r.checkpoint.get(THREADS_KEY).and_then(|t| t.parse().ok());
        saved.unwrap_or((r.config.shards / processes.count()).max(1))
    });
    let threads = args
        .run
        .threads
        .or(run_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    validate::check_at_least("--threads", threads, 1)?;
    let (spec, fresh) = match &resumed {
        Some(resumed) => {
            check_resume_flags(&args.run, &resumed.config, &resumed.path)?;
            if run_threads != Some(threads) && processes.writes() {
                println!(
                    "note: the run continues with its {0} shards per batch on {threads} threads × {1} \
                     processes, another thread count than it had: the kernels split their sums by it, so \
                     it will not repeat an uninterrupted run bit for bit",
                    resumed.config.shards,
                    processes.count()
                );
            }
            let spec = ModelSpec::parse_description(&resumed.checkpoint.model)
                .map_err(|e| Error::file(&resumed.path, e.message))?;
            (spec, None)
        }
        None => {
            let (spec, mut config) = fresh_model(&args, threads)?;
            // By default every process runs `threads` shards of each batch.
            config.shards = args.run.shards.unwrap_or(threads * processes.count());
            if config.shards < processes.count() {
                return Err(Error::msg(format!(
                    "--shards {} is fewer than the {} processes: each process computes at least one shard",
                    config.shards,
                    processes.count()
                )));
            }
            (spec, Some(config))
        }
    };
    let planned_epochs = match (&resumed, &fresh) {
        (Some(resumed), _) => resumed.config.epochs,
        (None, Some(config)) => config.epochs,
        (None, None) => unreachable!("a fresh run has its settings"),
    };
    match &resumed {
        Some(resumed) => output.keep_saved(&args.run, &resumed.checkpoint, &resumed.path)?,
        None => output.apply_recipe(&args.run, &spec, planned_epochs),
    }
    let out = match (&args.run.out, &resumed) {
        (Some(out), _) => out.clone(),
        (None, Some(resumed)) => resumed.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        (None, None) => default_out_folder(&spec.name()),
    };
    check_out_folder(&out, args.run.out.is_some(), resumed.is_some())?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::msg(format!("cannot start {threads} threads: {e}")))?;

    // 2. Data. A resumed run uses the image counts it was started with unless told otherwise.
    let saved_count = |key: &str| -> Option<usize> { resumed.as_ref()?.checkpoint.get(key)?.parse().ok() };
    let train_limit = args.run.train_limit.or_else(|| saved_count("train_images"));
    let test_limit = args.run.test_limit.or_else(|| saved_count(TEST_IMAGES_KEY));
    let data = data_folder(args.run.data.as_deref());
    let train = limited(cifar::load_training_set(&data)?, train_limit, "--train-limit")?;
    let test = limited(cifar::load_test_set(&data)?, test_limit, "--test-limit")?;

    // 3. The trainer, fresh or resumed.
    let mut trainer = match (&resumed, fresh) {
        (Some(resumed), _) => Trainer::from_checkpoint(&resumed.checkpoint, &resumed.path, train.len())?,
        (None, config) => {
            let config = config.expect("a fresh run has its settings");
            let mut trainer = Trainer::new(&spec, config.clone(), train.len())?;
            trainer.init_from_data(&train);
            trainer.pruning = args
                .pruning
                .settings(config.epochs)?
                .map(|(_, settings)| settings);
            trainer.distillation = args.run.distillation()?;
            trainer
        }
    };
    trainer.on_nonfinite = output.on_nonfinite;
    hooks.install(&mut trainer);
    let stop = processes.join(&mut trainer, (train.len(), test.len()))?;
    if !processes.writes() {
        return train_quietly(&mut trainer, &train, &test, &out, &output, stop);
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
    match &trainer.partial {
        Some(partial) => println!(
            "resuming in epoch {} after {} of its {} steps (step {})",
            trainer.epoch + 1,
            partial.steps,
            trainer.config.steps_in_epoch(trainer.epoch, train.len()),
            trainer.step
        ),
        None if trainer.epoch > 0 => {
            println!("resuming after epoch {} (step {})", trainer.epoch, trainer.step)
        }
        None => {}
    }

    // 4. The epochs, in the library's loop.
    train_to_end(&mut trainer, &train, &test, &out, out_existed, &output, stop)
}

/// The processes of a run: this one alone, or (`--features mpi`, under mpirun) one rank of
/// several ([`sbfnet::train::distributed`]).
enum Processes {
    One,
    #[cfg(feature = "mpi")]
    Mpi(Option<sbfnet::train::distributed::MpiExchange>, usize, usize),
}

impl Processes {
    /// `overlap`: whether the gradients travel while the backward pass goes on (`--overlap-exchange`).
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn from_launch(overlap: bool) -> Result<Processes> {
        #[cfg(feature = "mpi")]
        if sbfnet::train::distributed::MpiExchange::launched() {
            use sbfnet::train::ShardExchange;
            let requested = interrupt::stop_on_signals();
            let exchange = sbfnet::train::distributed::MpiExchange::initialize(requested, overlap)?;
            let (rank, ranks) = (exchange.rank(), exchange.ranks());
            return Ok(Processes::Mpi(Some(exchange), rank, ranks));
        }
        #[cfg(not(feature = "mpi"))]
        if ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| v != "1"))
        {
            return Err(Error::msg(
                "launched by mpirun, but this sbfnet was built without MPI: build it with `cargo build --release --features mpi`",
            ));
        }
        Ok(Processes::One)
    }

    fn count(&self) -> usize {
        match self {
            Processes::One => 1,
            #[cfg(feature = "mpi")]
            Processes::Mpi(_, _, ranks) => *ranks,
        }
    }

    /// Whether this process writes the run's files and prints its progress: rank 0.
    fn writes(&self) -> bool {
        match self {
            Processes::One => true,
            #[cfg(feature = "mpi")]
            Processes::Mpi(_, rank, _) => *rank == 0,
        }
    }

    /// Hands the exchange to `trainer` after checking that every process runs the same
    /// settings on the same data; returns the flag that stops the run between two steps.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn join(&mut self, trainer: &mut Trainer, images: (usize, usize)) -> Result<Arc<AtomicBool>> {
        match self {
            Processes::One => Ok(interrupt::stop_on_ctrl_c()),
            #[cfg(feature = "mpi")]
            Processes::Mpi(exchange, _, _) => {
                let exchange = exchange.take().expect("join is called once");
                use sbfnet::train::ShardExchange;
                let settings = format!(
                    "model {}\nsettings {:#?}\nimages {images:?}\nepoch {} step {}\noverlap-exchange {}",
                    trainer.model.spec.description(),
                    trainer.config,
                    trainer.epoch,
                    trainer.step,
                    exchange.overlaps(),
                );
                exchange.check_same("settings", &settings)?;
                let stop = exchange.stop_flag();
                trainer.distribute(Box::new(exchange))?;
                Ok(stop)
            }
        }
    }
}

/// A process of a run across processes other than rank 0: trains in step with the others,
/// writes nothing and prints only errors.
fn train_quietly(
    trainer: &mut Trainer,
    train: &Cifar10,
    test: &Cifar10,
    out: &Path,
    output: &OutputSettings,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let options = RunOptions {
        out: out.to_path_buf(),
        eval_every: output.eval_every,
        test_views: output.test_views,
        stop: Some(stop),
        remove_unused_folder: false,
        writes: false,
    };
    let summary = training::run(trainer, train, test, &options, &mut sbfnet::train::Silent)?;
    trainer.leave_processes();
    if let RunEnd::Stopped { .. } = summary.end {
        std::process::exit(130);
    }
    Ok(())
}

/// A run to continue: its checkpoint, the path it was read from, and its settings.
struct Resumed {
    path: PathBuf,
    checkpoint: Checkpoint,
    config: TrainConfig,
}

/// The run `--resume` names, if any, after checking that no flag asks it to change its model,
/// teacher or pruning.
fn open_resumed(args: &TrainArgs) -> Result<Option<Resumed>> {
    let Some(path) = &args.resume else {
        return Ok(None);
    };
    let checkpoint = Checkpoint::load(path)?;
    if args.model.is_some() || args.convs.is_some() {
        let saved =
            ModelSpec::parse_description(&checkpoint.model).map_err(|e| Error::file(path, e.message))?;
        let name = args.model.clone().unwrap_or(saved.name());
        let convs = args.convs.clone().unwrap_or(saved.convs.describe());
        checkpoint.expect_model(&model_spec(&name, &convs)?.description(), path)?;
    }
    let config = TrainConfig::from_checkpoint(&checkpoint, path)?;
    let run = &args.run;
    if run.teacher.is_some() || run.kd_temperature.is_some() || run.kd_weight.is_some() {
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
    Ok(Some(Resumed {
        path: path.clone(),
        checkpoint,
        config,
    }))
}

/// The model and settings of a fresh run, after checking everything that does not depend on the data.
fn fresh_model(args: &TrainArgs, threads: usize) -> Result<(ModelSpec, TrainConfig)> {
    // The model's name picks the recipe; the recipe's epochs shape a pruning plan.
    let model_name = args.model.as_deref().unwrap_or("resnet20");
    let config = fresh_config(&args.run, &model_spec(model_name, "dense")?, threads)?;
    let convs = match (args.pruning.settings(config.epochs)?, &args.convs) {
        (Some(_), Some(_)) => {
            return Err(Error::msg(
                "--prune-rate builds its own SBF plan (all filters templates at first): drop --convs",
            ))
        }
        (Some((plan, _)), None) => plan,
        (None, convs) => convs.clone().unwrap_or("dense".into()),
    };
    let spec = model_spec(model_name, &convs)?;
    // Everything that does not depend on the data's size.
    config.check_model(&spec)?;
    config.validate(usize::MAX)?;
    Ok((spec, config))
}

/// The test hooks of the module documentation: steps to poison, steps to pause before.
struct TestHooks {
    poison_steps: Vec<usize>,
    pause_steps: Vec<usize>,
}

impl TestHooks {
    fn from_environment() -> Result<TestHooks> {
        Ok(TestHooks {
            poison_steps: hook_steps("SBFNET_TEST_POISON_STEP")?,
            pause_steps: hook_steps("SBFNET_TEST_PAUSE_AT_STEP")?,
        })
    }

    fn install(self, trainer: &mut Trainer) {
        let TestHooks {
            poison_steps,
            pause_steps,
        } = self;
        if poison_steps.is_empty() && pause_steps.is_empty() {
            return;
        }
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
    if config.lookahead {
        model_options += ", lookahead every 5 steps";
    }
    if config.mask_lr_scale != 1.0 {
        model_options += &format!(", SBF masks at {}× the learning rate", config.mask_lr_scale);
    }
    if config.mask_weight_decay {
        model_options += ", SBF masks with weight decay";
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
    if output.eval_every != 1 || output.test_views != TestViews::Plain {
        println!(
            "evaluation after every {}. epoch and the last, test-time augmentation {}",
            output.eval_every,
            output.test_views.describe()
        );
    }
    if let Some(minutes) = config.time_budget_minutes {
        println!(
            "time budget {minutes} min: the run re-plans its length after every epoch (at most {} epochs)",
            config.epochs
        );
    }
    if let Some(pruning) = trainer.pruning {
        println!(
            "pruning: target rate {} in {} steps at the starts of epochs {} to {}, at least {} templates per layer, \
             masks {}, saliency {}, templates {}",
            pruning.ramp.target_rate,
            pruning.ramp.epochs,
            pruning.ramp.first_epoch + 1,
            pruning.ramp.epochs_needed(),
            pruning.min_templates,
            prune::ramp::init_name(pruning.init),
            pruning.saliency.name(),
            pruning.choice.name()
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
    println!("output {}", out.display());
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
    stop: Arc<AtomicBool>,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "cannot create the output folder", e))?;
    record_command(out, rayon::current_num_threads())?;
    let options = RunOptions {
        out: out.to_path_buf(),
        eval_every: output.eval_every,
        test_views: output.test_views,
        stop: Some(stop),
        remove_unused_folder: !out_existed,
        writes: true,
    };
    let mut progress = ProgressLines::new()?;
    let started = std::time::Instant::now();
    let summary = training::run(trainer, train, test, &options, &mut progress)?;
    progress.finish();
    let (_, processes) = trainer.process();
    if processes > 1 {
        let (exchange, total) = (trainer.exchange_seconds(), started.elapsed().as_secs_f64());
        println!(
            "rank 0 waited for its exchanges with the other {} processes after its backward passes for {exchange:.1} s of {total:.1} s ({:.1} %, waiting for them included)",
            processes - 1,
            100.0 * exchange / total.max(1e-9)
        );
    }
    match summary.end {
        RunEnd::Finished => println!(
            "done: best test accuracy {:.2}%; checkpoints, metrics.csv and learning_curve.png in {}",
            100.0 * summary.best_test_accuracy,
            out.display()
        ),
        RunEnd::Stopped {
            epoch,
            step,
            steps,
            saved,
        } => {
            let resume = out.join("last.ckpt");
            let kept = if saved {
                format!(
                    "{} holds it, to be continued from step {}",
                    resume.display(),
                    step + 1
                )
            } else {
                format!("{} holds epoch {}", resume.display(), summary.epochs)
            };
            if resume.exists() {
                println!(
                    "stopped in epoch {epoch} after {step} of {steps} steps; {kept}. Resume with\n  \
                     sbfnet train --resume {}",
                    resume.display()
                );
            } else {
                println!("stopped in epoch {epoch} before its first step; nothing was saved");
                if !out_existed {
                    // The folder this run made holds only its command.txt.
                    let _ = std::fs::remove_file(out.join("command.txt"));
                    let _ = std::fs::remove_dir(out);
                }
            }
            trainer.leave_processes();
            std::process::exit(130);
        }
    }
    trainer.leave_processes();
    Ok(())
}
