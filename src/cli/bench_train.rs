//! `sbfnet bench-train`: images per second of whole training steps (and of
//! inference), optionally beside PyTorch's figures (`--torch-json` from
//! ../shared/bench/torch_ref.py), one row per model and thread count.

use std::path::PathBuf;

use clap::Args;
use sbfnet::benchmark::train_step::{self, TrainStepBench};
use sbfnet::{Error, Result};

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Models to time (names as for `sbfnet train --model`); a list runs each.
    #[arg(long, value_delimiter = ',', default_value = "resnet20")]
    model: Vec<String>,
    /// Which convolutions are dense or SBF, as `sbfnet train --convs` (e.g. "sbf:rate=0.5,groups=2");
    /// PyTorch's figure beside it is always its dense model's.
    #[arg(long, default_value = "dense")]
    convs: String,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Rayon threads; a list (1,2) times every model once per count.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Data-parallel shards per batch [default: the thread count, as `sbfnet train`;
    /// 1 shard normalises over the whole batch, as PyTorch's single-process step does].
    #[arg(long)]
    shards: Option<usize>,
    /// Timed training steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first (allocator and caches settle).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Batch of the inference (evaluation mode) timing; 0 skips it.
    #[arg(long, default_value_t = 256)]
    infer_batch: usize,
    /// JSON written by ../shared/bench/torch_ref.py: print PyTorch's img/s and our ratio.
    #[arg(long)]
    torch_json: Option<PathBuf>,
    /// Time the model of this checkpoint instead (a pruned run's, with its real per-layer
    /// template counts); --model then only names the row and PyTorch's figure beside it.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

pub fn run(args: BenchTrainArgs) -> Result<()> {
    if args.threads.contains(&0) || args.batch == 0 || args.shards == Some(0) {
        return Err(Error::msg(
            "bench-train: --threads, --batch and --shards must be at least 1",
        ));
    }
    let torch = match &args.torch_json {
        Some(path) => train_step::read_torch_network_json(path)?,
        None => Vec::new(),
    };
    println!("instruction set: {}", sbfnet::benchmark::instruction_set());
    match &args.checkpoint {
        Some(path) => println!("model of {} (PyTorch figures: its dense model)", path.display()),
        None => println!("convolutions: {} (PyTorch figures: its dense model)", args.convs),
    }
    println!(
        "{:<10} {:>5} {:>7} {:>7} {:>9} {:>9} {:>9} {:>11} {:>7} {:>11}",
        "model",
        "batch",
        "threads",
        "shards",
        "ms/step",
        "img/s",
        "best",
        "torch img/s",
        "ratio",
        "CPU ms/step"
    );
    let cpu_text = |timing: &train_step::Timing| {
        timing
            .median_cpu_seconds
            .map_or("-".to_string(), |s| format!("{:.1}", s * 1e3))
    };
    let torch_for = |threads: usize| torch.iter().find(|figures| figures.threads == threads);
    let ratio_text = |ours: f64, theirs: Option<f64>| match theirs {
        Some(theirs) => (format!("{theirs:.1}"), format!("{:.2}", ours / theirs)),
        None => ("-".into(), "-".into()),
    };
    for model in &args.model {
        for &threads in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::msg(format!("bench-train: cannot start {threads} threads: {e}")))?;
            let bench = TrainStepBench {
                model: format!("{model} {}", args.convs),
                batch: args.batch,
                shards: args.shards.unwrap_or(threads),
                steps: args.steps,
                warmup: args.warmup,
            };
            let timing = pool.install(|| match &args.checkpoint {
                Some(path) => train_step::time_checkpoint_train_steps(path, &bench),
                None => train_step::time_train_steps(&bench),
            })?;
            let images_per_second = args.batch as f64 / timing.median_seconds;
            let theirs = torch_for(threads).and_then(|t| t.train_images_per_second(model, args.batch));
            let (torch_text, ratio) = ratio_text(images_per_second, theirs);
            println!(
                "{:<10} {:>5} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>11} {:>7} {:>11}",
                model,
                args.batch,
                threads,
                bench.shards,
                timing.median_seconds * 1e3,
                images_per_second,
                args.batch as f64 / timing.best_seconds(),
                torch_text,
                ratio,
                cpu_text(&timing)
            );
        }
    }
    if args.infer_batch > 0 {
        println!("\ninference (evaluation mode):");
        for model in &args.model {
            for &threads in &args.threads {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::msg(format!("bench-train: cannot start {threads} threads: {e}")))?;
                let timing = pool.install(|| match &args.checkpoint {
                    Some(path) => {
                        train_step::time_checkpoint_inference(path, args.infer_batch, args.steps, args.warmup)
                    }
                    None => train_step::time_inference(
                        &format!("{model} {}", args.convs),
                        args.infer_batch,
                        args.steps,
                        args.warmup,
                    ),
                })?;
                let images_per_second = args.infer_batch as f64 / timing.median_seconds;
                let theirs =
                    torch_for(threads).and_then(|t| t.infer_images_per_second(model, args.infer_batch));
                let (torch_text, ratio) = ratio_text(images_per_second, theirs);
                println!(
                    "{:<10} {:>5} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>11} {:>7} {:>11}",
                    model,
                    args.infer_batch,
                    threads,
                    "-",
                    timing.median_seconds * 1e3,
                    images_per_second,
                    args.infer_batch as f64 / timing.best_seconds(),
                    torch_text,
                    ratio,
                    cpu_text(&timing)
                );
            }
        }
    }
    if let Some(mib) = train_step::peak_rss_mib() {
        println!("\npeak resident memory of this process (VmHWM): {mib:.0} MiB");
    }
    Ok(())
}
