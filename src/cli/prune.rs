//! `sbfnet prune`: convert a trained dense checkpoint into an SBF model with one global
//! L1 selection at --rate (SBF-NOTES §6; `prune::convert`), save it as epoch 0 of a new run
//! in --out, then fine-tune it with the train command's machinery (the assignment stays
//! fixed: the run has no ramp). All training flags of `sbfnet train` apply to the fine-tuning,
//! --teacher included.

use super::args::{self, ConversionArgs, RunArgs};
use super::train;
use clap::Args;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::cifar;
use sbfnet::nn::ModelSpec;
use sbfnet::prune::{self, PruneSettings, PruneState, Ramp, Saliency};
use sbfnet::train::{Trainer, TEST_IMAGES_KEY};
use sbfnet::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PruneCommandArgs {
    /// The trained dense checkpoint to convert (e.g. runs/x/best.ckpt)
    #[arg(long)]
    pub from: PathBuf,
    /// Global fraction of the body convolutions' filters to transform, in [0, 1)
    #[arg(long)]
    pub rate: f32,
    #[command(flatten)]
    pub conversion: ConversionArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(args: PruneCommandArgs) -> Result<()> {
    let PruneCommandArgs {
        from,
        rate,
        conversion,
        run,
    } = args;
    let out = run
        .out
        .clone()
        .ok_or_else(|| Error::msg("sbfnet prune needs --out <folder> for the converted run"))?;
    if out.join("last.ckpt").exists() {
        return Err(Error::file(
            &out,
            "already holds a run (last.ckpt): choose another --out",
        ));
    }
    if !(0.0..1.0).contains(&rate) {
        return Err(Error::msg(format!("--rate must be in [0, 1), got {rate}")));
    }
    let min_templates = conversion.min_templates.unwrap_or(8);
    if min_templates == 0 {
        return Err(Error::msg("--min-templates must be at least 1"));
    }
    let init = conversion.mask_init()?;
    let groups = conversion.groups.unwrap_or(2);
    let dense = Checkpoint::load(&from)?;
    let dense_spec = ModelSpec::parse_description(&dense.model).map_err(|e| Error::file(&from, e.message))?;
    let family = conversion.family()?;
    let saliency = conversion.saliency()?;
    let choice = conversion.template_choice()?;
    if saliency == Saliency::Taylor {
        return Err(Error::msg(
            "--saliency taylor needs gradients from training steps; a conversion has none: use l1-relative or l1 \
             (or prune during training with sbfnet train --prune-rate --saliency taylor)",
        ));
    }
    let spec = prune::convert::sbf_spec_of_dense(&dense_spec, groups, family, &from)?;
    let output = args::OutputSettings::of(&run)?;
    let threads = run
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = args::fresh_config(&run, &spec, threads)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::msg(format!("cannot start {threads} threads: {e}")))?;
    let data = args::data_folder(run.data.as_deref());
    let train_set = args::limited(cifar::load_training_set(&data)?, run.train_limit, "--train-limit")?;
    let test_set = args::limited(cifar::load_test_set(&data)?, run.test_limit, "--test-limit")?;
    let (train_images, test_images) = (train_set.len(), test_set.len());

    let mut trainer = Trainer::new(&spec, config, train_images)?;
    prune::convert::load_dense_and_prune(
        &mut trainer.model,
        &mut trainer.store,
        &dense,
        &from,
        rate,
        &PruneSettings {
            ramp: Ramp::new(rate, 1),
            min_templates,
            init,
            saliency,
            choice,
        },
    )?;
    let reshaped: Vec<_> = trainer
        .model
        .conv_layers()
        .iter()
        .filter_map(|(_, layer)| layer.as_sbf().map(|s| [s.templates, s.transforms]))
        .flatten()
        .collect();
    trainer.parameters_reshaped(&reshaped);
    trainer.restart_average();
    // The checkpoint carries the teacher, so the fine-tuning below (a resume) distils too.
    trainer.distillation = run.distillation()?;
    let state = PruneState::of(&trainer.model);
    println!(
        "converted {} at rate {rate}: {:.1}% of the body filters transformed (templates {})",
        dense.model,
        100.0 * state.transformed_fraction(),
        state.templates_text()
    );
    let fits = prune::convert::conversion_fit(&trainer.model, &trainer.store, &dense);
    if !fits.is_empty() {
        let (residual, energy) = fits
            .iter()
            .fold((0.0, 0.0), |(r, e), fit| (r + fit.residual, e + fit.energy));
        let per_layer: Vec<String> = fits.iter().map(|fit| format!("{:.3}", fit.explained())).collect();
        println!(
            "the transformed filters reproduce {:.1}% of the energy of the dense filters they replace \
             (per layer: {})",
            100.0 * (1.0 - residual / energy),
            per_layer.join(" ")
        );
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "cannot create the output folder", e))?;
    let mut checkpoint = trainer.to_checkpoint();
    checkpoint
        .metadata
        .push((TEST_IMAGES_KEY.into(), test_images.to_string()));
    // The training loop rewrites the checkpoint's metadata: the conversion is noted beside it.
    let note = out.join(prune::convert::CONVERSION_NOTE);
    std::fs::write(
        &note,
        format!(
            "from {}\nrate {rate}\nmask_init {}\ntemplate_choice {}\n{} {}\n",
            from.display(),
            prune::ramp::init_name(init),
            choice.name(),
            sbfnet::train::report::DENSE_SECONDS_KEY,
            dense.get("elapsed_seconds").unwrap_or("0"),
        ),
    )
    .map_err(|e| Error::io(&note, "cannot write the conversion note", e))?;
    let start = out.join("last.ckpt");
    checkpoint.save(&start)?;
    // Fine-tune from the saved epoch 0, exactly as `sbfnet train --resume` would continue it.
    let mut trainer = Trainer::from_checkpoint(&checkpoint, &start, train_images)?;
    trainer.on_nonfinite = output.on_nonfinite;
    train::print_run_header(
        &trainer,
        &data,
        (train_images, test_images),
        threads,
        &out,
        &output,
    );
    let stop = super::interrupt::stop_on_ctrl_c();
    train::train_to_end(&mut trainer, &train_set, &test_set, &out, true, &output, stop)
}
