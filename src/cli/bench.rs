//! `sbfnet bench`: the convolution kernels per shape and pass, in GFLOP/s and
//! fraction of FP32 peak, optionally beside PyTorch's figures
//! (`--torch-json` from ../shared/bench/torch_ref.py).

use std::path::PathBuf;

use clap::Args;
use sbfnet::benchmark::{self, conv};
use sbfnet::kernels::conv::ConvLayout;
use sbfnet::kernels::simd::Isa;
use sbfnet::{Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Rayon threads; a list (1,2) runs the whole table once per count.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    threads: Vec<usize>,
    /// Batch sizes of the benchmarked convolutions.
    #[arg(long, value_delimiter = ',', default_value = "128,8")]
    batch: Vec<usize>,
    /// JSON written by ../shared/bench/torch_ref.py: print PyTorch's GFLOP/s and our ratio.
    #[arg(long)]
    torch_json: Option<PathBuf>,
    /// Minimum seconds of one timed repetition.
    #[arg(long, default_value_t = 0.1)]
    min_seconds: f64,
    /// Time in process CPU seconds ÷ threads instead of wall time: for tuning
    /// on a machine shared with other jobs (not comparable with PyTorch's wall times).
    #[arg(long)]
    cpu_time: bool,
    /// With several --threads: rounds of the speed-up table that times every
    /// pass in alternation between the first thread count and each other
    /// (robust to the VM's drifting speed) and prints median against median
    /// and best against best, under a fork-join control row; 0 skips it.
    #[arg(long, default_value_t = 7)]
    scaling_rounds: usize,
    /// Whose convolutions: `resnet` (the CIFAR ResNets', torch_ref.py's shapes) or
    /// `airbench94` (its 3×3 convs of 64 and 256 channels on 31×31 to 3×3 maps).
    #[arg(long, value_enum, default_value = "resnet")]
    net: NetArg,
    /// The layout of the three passes: `auto` (the ones the kernels choose; the channel
    /// layout is named in the pass column: `forward ch`, `input ch`, `weight ch`), `pixels`
    /// or `channels` (forced).
    #[arg(long, value_enum, default_value = "auto")]
    layout: LayoutArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NetArg {
    Resnet,
    Airbench94,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LayoutArg {
    Auto,
    Pixels,
    Channels,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.threads.contains(&0) || args.batch.contains(&0) {
        return Err(Error::msg("bench: --threads and --batch must be at least 1"));
    }
    let torch = match &args.torch_json {
        Some(path) => conv::read_torch_json(path)?,
        None => Vec::new(),
    };
    let net = match args.net {
        NetArg::Resnet => conv::BenchNet::Resnet,
        NetArg::Airbench94 => conv::BenchNet::Airbench94,
    };
    let shapes = conv::network_shapes(net, &args.batch);
    let layout = match args.layout {
        LayoutArg::Auto => None,
        LayoutArg::Pixels => Some(ConvLayout::PixelVectors),
        LayoutArg::Channels => Some(ConvLayout::ChannelVectors),
    };
    let pools = args
        .threads
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::msg(format!("bench: cannot start {threads} threads: {e}")))?;
            Ok((threads, pool))
        })
        .collect::<Result<Vec<_>>>()?;
    for (threads, pool) in &pools {
        let threads = *threads;
        let reference = torch.iter().find(|figures| figures.threads == threads);
        if args.torch_json.is_some() && reference.is_none() {
            println!("(no PyTorch run with {threads} threads in the JSON)");
        }
        println!();
        // The FMA peak of every instruction set this CPU runs; %peak uses the active one's.
        let peaks: Vec<(Isa, f64)> = Isa::available()
            .into_iter()
            .map(|isa| (isa, benchmark::fma_peak_gflops_on(pool, isa)))
            .collect();
        let listed: Vec<String> = peaks
            .iter()
            .map(|(isa, gflops)| format!("{} {gflops:.1}", isa.name()))
            .collect();
        println!(
            "FMA peak of {threads} thread(s) at once, GFLOP/s: {}",
            listed.join(", ")
        );
        let active = Isa::active();
        let peak = peaks.iter().find(|(isa, _)| *isa == active).map_or(0.0, |p| p.1);
        pool.install(|| {
            let clock = if args.cpu_time {
                conv::Clock::CpuPerThread
            } else {
                conv::Clock::Wall
            };
            conv::run(
                &shapes,
                layout,
                threads,
                peak,
                reference,
                args.min_seconds,
                clock,
                &mut std::io::stdout(),
            )
        })
        .map_err(|e| Error::msg(format!("bench: writing the table: {e}")))?;
    }
    if pools.len() > 1 && args.scaling_rounds > 0 {
        println!();
        conv::scaling(
            &shapes,
            &pools,
            args.min_seconds,
            args.scaling_rounds,
            &mut std::io::stdout(),
        )
        .map_err(|e| Error::msg(format!("bench: writing the table: {e}")))?;
    }
    Ok(())
}
