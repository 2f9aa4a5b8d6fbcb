//! Command-line parsing (clap) and one module per subcommand. The command line
//! only parses and validates settings; the work is done by the library.

mod args;
mod bench;
mod bench_sbf;
mod bench_train;
mod download;
mod eval;
mod flags;
mod info;
mod interop;
mod interrupt;
mod out_folder;
mod progress;
mod prune;
mod report;
mod train;

use clap::{Parser, Subcommand};
pub use flags::with_flags;

#[derive(Parser)]
#[command(
    name = "sbfnet",
    version,
    about = "Train CIFAR-10 CNNs with SBF layers (templates + cheap spatial transformations) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this build runs on (instruction set, threads).
    System,
    /// Download the CIFAR-10 binary set (MD5-verified) into a data folder.
    Download(download::DownloadArgs),
    /// Train a model on CIFAR-10 (or resume a run): progress bar, metrics.csv, learning curve, checkpoints.
    Train(Box<args::TrainArgs>),
    /// Test accuracy, loss and per-class accuracy of a checkpoint.
    Eval(eval::EvalArgs),
    /// Convert a trained dense checkpoint to SBF layers at a global rate, then fine-tune it.
    Prune(Box<prune::PruneCommandArgs>),
    /// The Markdown results table (paper Table 3.1 form) of the runs in a folder.
    Report(report::ReportArgs),
    /// A model's layers with their parameters and MACs.
    Info(info::InfoArgs),
    /// Benchmark the convolution kernels (per shape and pass; optionally beside PyTorch).
    Bench(bench::BenchArgs),
    /// Time whole training steps (and inference) of a ResNet; optionally beside PyTorch.
    BenchTrain(bench_train::BenchTrainArgs),
    /// The SBF layer against the dense conv per shape, rate and batch (`--passes`: per kernel).
    BenchSbf(bench_sbf::BenchSbfArgs),
    /// Write a checkpoint's model for PyTorch (safetensors, SBF layers as dense filters).
    Export(interop::ExportArgs),
    /// Read a PyTorch state dict (safetensors) into a checkpoint.
    Import(interop::ImportArgs),
}

pub fn run() -> sbfnet::Result<()> {
    let command = Cli::parse().command;
    // A bad SBFNET_ISA stops every command before any kernel runs.
    sbfnet::kernels::simd::Isa::from_env()?;
    match command {
        Command::System => {
            println!("instruction set: {}", sbfnet::benchmark::instruction_set());
            println!("threads: {}", rayon::current_num_threads());
            Ok(())
        }
        Command::Download(args) => download::run(args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Prune(args) => prune::run(*args),
        Command::Report(args) => report::run(args),
        Command::Info(args) => info::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchTrain(args) => bench_train::run(args),
        Command::BenchSbf(args) => bench_sbf::run(args),
        Command::Export(args) => interop::export(args),
        Command::Import(args) => interop::import(args),
    }
}
