//! `sbfnet bench-sbf`: the SBF layer against the dense conv of the same shape, per shape, rate,
//! batch and thread count; `--passes` times the kernels one pass at a time beside the cost
//! model that `SbfPath::Auto` decides with.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sbfnet::benchmark::conv::BenchNet;
use sbfnet::benchmark::sbf::{self as bench, SbfCell};
use sbfnet::ops::sbf::SbfPath;
use sbfnet::{Error, Result};

#[derive(Clone, Copy, ValueEnum)]
enum PathChoice {
    /// Per pass, whichever the cost model predicts faster.
    Auto,
    /// The fused kernels for the forward and the input gradient.
    Fused,
    /// The effective filters and the dense conv.
    Dense,
}

#[derive(Clone, Copy, ValueEnum)]
enum NetChoice {
    Resnet,
    Airbench94,
}

#[derive(Args)]
pub struct BenchSbfArgs {
    /// Rayon threads; a list (1,2) runs the whole table once per count.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    threads: Vec<usize>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "128,8")]
    batch: Vec<usize>,
    /// Fractions of the filters transformed (0 < rate < 1).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    rates: Vec<f64>,
    /// Input-channel groups G of the masks.
    #[arg(long, default_value_t = 2)]
    groups: usize,
    /// How the SBF layer computes its passes.
    #[arg(long, value_enum, default_value = "auto")]
    path: PathChoice,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Time the kernels one pass at a time instead (forward and input gradient, fused against
    /// dense, beside the cost model's prediction).
    #[arg(long)]
    passes: bool,
    /// Whose convolutions: `resnet` (the CIFAR ResNets' 3×3 convs after the first) or
    /// `airbench94` (its five 3×3 convs).
    #[arg(long, value_enum, default_value = "resnet")]
    net: NetChoice,
    /// Also write the cells as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: BenchSbfArgs) -> Result<()> {
    if args.threads.contains(&0) || args.batch.contains(&0) || args.reps == 0 {
        return Err(Error::msg(
            "bench-sbf: --threads, --batch and --reps must be at least 1",
        ));
    }
    if let Some(rate) = args.rates.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
        return Err(Error::msg(format!(
            "bench-sbf: --rates must lie strictly between 0 and 1, got {rate}"
        )));
    }
    let net = match args.net {
        NetChoice::Resnet => BenchNet::Resnet,
        NetChoice::Airbench94 => BenchNet::Airbench94,
    };
    let inputs: &[usize] = match net {
        BenchNet::Resnet => &[16, 32, 64],
        BenchNet::Airbench94 => &[24, 64, 256],
    };
    if args.groups == 0 || !inputs.iter().all(|c| c % args.groups == 0) {
        return Err(Error::msg(format!(
            "bench-sbf: --groups {} must divide the {inputs:?} input channels of the benchmarked layers",
            args.groups
        )));
    }
    let path = match args.path {
        PathChoice::Auto => SbfPath::Auto,
        PathChoice::Fused => SbfPath::Fused,
        PathChoice::Dense => SbfPath::EffectiveFilters,
    };
    let cells = bench::cells(net, &args.batch, &args.rates, args.groups);
    let mut measured: Vec<SbfCell> = Vec::new();
    println!("instruction set: {}", sbfnet::benchmark::instruction_set());
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::msg(format!("bench-sbf: cannot start {threads} threads: {e}")))?;
        let clock = if threads == 1 { "CPU time" } else { "wall time" };
        println!("\n{threads} thread(s), {clock}, 3×3 pad 1, G = {}", args.groups);
        if args.passes {
            let rows: Vec<_> = pool.install(|| {
                cells
                    .iter()
                    .map(|c| bench::measure_passes(c, args.reps))
                    .collect()
            });
            print!("{}", bench::passes_table(&rows));
            continue;
        }
        let rows: Vec<SbfCell> =
            pool.install(|| cells.iter().map(|c| bench::measure(c, path, args.reps)).collect());
        print!("{}", bench::table(&rows));
        measured.extend(rows);
    }
    if let Some(json_path) = &args.json {
        let json = serde_json::json!({
            "instruction_set": sbfnet::benchmark::instruction_set(),
            "cells": measured.iter().map(SbfCell::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&json).expect("a JSON value prints");
        sbfnet::checkpoint::format::write_atomically(json_path, text.as_bytes())?;
        println!("wrote {}", json_path.display());
    }
    Ok(())
}
