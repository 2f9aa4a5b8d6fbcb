//! `sbfnet eval`: test accuracy, loss and per-class accuracy of a checkpoint.

use super::args::{data_folder, limited};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sbfnet::checkpoint::load_model;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::checkpoint::{load_prefixed_model_tensors, EMA_UPDATES_KEY, LIVE_PREFIX};
use sbfnet::data::cifar::{self, CLASS_NAMES};
use sbfnet::train::{evaluate_views_with_progress, TestViews};
use sbfnet::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (e.g. runs/x/best.ckpt)
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// CIFAR-10 binary folder [default: as for `sbfnet train`]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images per evaluation batch
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Evaluate on the first N test images only
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Test-time augmentation: none, or flip (each test image and its mirror image, logits
    /// averaged)
    #[arg(long, default_value = "none")]
    pub tta: String,
    /// With a checkpoint of a `--ema` run: evaluate the live weights (the ones training
    /// continues from) instead of their moving average
    #[arg(long)]
    pub live: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(Error::msg("--batch-size must be at least 1"));
    }
    let views = TestViews::parse(&args.tta)?;
    let checkpoint = Checkpoint::load(&args.checkpoint)?;
    let (model, mut store) = load_model(&checkpoint, &args.checkpoint)?;
    if args.live {
        if checkpoint.get(EMA_UPDATES_KEY).is_none() {
            return Err(Error::file(
                &args.checkpoint,
                "--live: the run had no --ema, so its weights are the live ones; drop --live",
            ));
        }
        load_prefixed_model_tensors(&mut store, &checkpoint, &args.checkpoint, LIVE_PREFIX)?;
    }
    let data = data_folder(args.data.as_deref());
    let test = limited(cifar::load_test_set(&data)?, args.test_limit, "--test-limit")?;
    let bar = ProgressBar::new(test.len() as u64).with_style(
        ProgressStyle::with_template("evaluating [{bar:30}] {pos}/{len} images ETA {eta}")
            .map_err(|e| Error::msg(format!("progress bar: {e}")))?
            .progress_chars("=> "),
    );
    let evaluation =
        evaluate_views_with_progress(&model, &store, &test, args.batch_size, views, &mut |done, _| {
            bar.set_position(done as u64)
        });
    bar.finish_and_clear();
    let epoch = checkpoint.get("epoch").unwrap_or("?");
    println!(
        "{} after epoch {epoch}: {}{}",
        model.description(),
        args.checkpoint.display(),
        if args.live { " (live weights)" } else { "" }
    );
    println!(
        "test accuracy {:.2}%  loss {:.4}  ({} images of {}; test-time augmentation: {})",
        100.0 * evaluation.accuracy,
        evaluation.loss,
        evaluation.images,
        data.display(),
        views.describe()
    );
    println!("{:<12} {:>8} {:>7}", "class", "accuracy", "images");
    for (k, name) in CLASS_NAMES.iter().enumerate() {
        let images = evaluation.per_class_images[k];
        let accuracy = if images > 0 {
            format!("{:.2}%", 100.0 * evaluation.per_class_accuracy[k])
        } else {
            "-".into()
        };
        println!("{name:<12} {accuracy:>8} {images:>7}");
    }
    Ok(())
}
