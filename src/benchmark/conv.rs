//! `sbfnet bench`: times the fast convolution kernels (`kernels::conv`) per
//! shape and per pass, in GFLOP/s and as a fraction of the machine's FP32
//! peak, optionally beside PyTorch's figures from the JSON that
//! ../shared/bench/torch_ref.py writes (same shapes, same FLOP convention).
//!
//! FLOPs per pass = 2·N·F·C·K²·Ho·Wo (the forward's multiply-adds; each
//! gradient pass does as many), so forward + backward counts 3× that.

use std::io::Write;
use std::path::Path;

use rand::{rngs::StdRng, SeedableRng};

use super::{median_cpu_seconds, median_seconds, PEAK_GFLOPS_PER_CORE};
use crate::kernels::{conv, ConvShape};
use crate::{Error, Result, Tensor};

/// One benchmarked convolution: 3×3, padding 1, square input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub size: usize,
    pub stride: usize,
}

impl BenchShape {
    pub fn conv_shape(&self) -> ConvShape {
        ConvShape {
            batch: self.batch,
            in_channels: self.in_channels,
            in_height: self.size,
            in_width: self.size,
            out_channels: self.out_channels,
            kernel: 3,
            stride: self.stride,
            padding: 1,
        }
    }
}

/// (C, F, H = W, stride) of the CIFAR ResNets, the shapes of the kernel issue.
pub const NETWORK_CONVS: [(usize, usize, usize, usize); 6] = [
    (3, 16, 32, 1),
    (16, 16, 32, 1),
    (32, 32, 16, 1),
    (64, 64, 8, 1),
    (16, 32, 32, 2),
    (32, 64, 16, 2),
];

/// The benchmarked shapes for each batch size, in torch_ref.py's order.
pub fn network_shapes(batches: &[usize]) -> Vec<BenchShape> {
    batches
        .iter()
        .flat_map(|&batch| {
            NETWORK_CONVS
                .iter()
                .map(move |&(in_channels, out_channels, size, stride)| BenchShape {
                    batch,
                    in_channels,
                    out_channels,
                    size,
                    stride,
                })
        })
        .collect()
}

/// PyTorch's conv figures for one thread count: (shape, forward GFLOP/s, forward + backward GFLOP/s).
#[derive(Clone, Debug, Default)]
pub struct TorchFigures {
    pub threads: usize,
    pub convs: Vec<(BenchShape, f64, f64)>,
}

impl TorchFigures {
    fn find(&self, shape: &BenchShape) -> Option<(f64, f64)> {
        self.convs
            .iter()
            .find(|(s, _, _)| s == shape)
            .map(|&(_, forward, total)| (forward, total))
    }
}

/// Reads the JSON of torch_ref.py: `runs → "<threads>" → conv → [{shape: {N, C_in,
/// C_out, H, stride}, fwd_gflops, fwdbwd_gflops}]`.
pub fn read_torch_json(path: &Path) -> Result<Vec<TorchFigures>> {
    let mut figures = Vec::new();
    for (threads, run) in super::read_torch_runs(path)? {
        let convs = run
            .get("conv")
            .and_then(|c| c.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut figures_for_threads = TorchFigures {
            threads,
            convs: Vec::new(),
        };
        for conv in convs {
            let number = |object: &serde_json::Value, key: &str| {
                object.get(key).and_then(|v| v.as_f64()).ok_or_else(|| {
                    Error::file(
                        path,
                        format!("run {threads}: conv entry without a number {key:?}"),
                    )
                })
            };
            let shape = conv
                .get("shape")
                .ok_or_else(|| Error::file(path, format!("run {threads}: conv entry without \"shape\"")))?;
            let shape = BenchShape {
                batch: number(shape, "N")? as usize,
                in_channels: number(shape, "C_in")? as usize,
                out_channels: number(shape, "C_out")? as usize,
                size: number(shape, "H")? as usize,
                stride: number(shape, "stride")? as usize,
            };
            figures_for_threads.convs.push((
                shape,
                number(conv, "fwd_gflops")?,
                number(conv, "fwdbwd_gflops")?,
            ));
        }
        figures.push(figures_for_threads);
    }
    Ok(figures)
}

/// Seconds per call of each pass of one shape (medians).
#[derive(Clone, Copy, Debug)]
pub struct PassTimes {
    pub forward: f64,
    pub input_grad: f64,
    pub weight_grad: f64,
    /// forward, input_grad and weight_grad back to back.
    pub total: f64,
}

/// What a benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Wall-clock seconds (the real figure; needs an otherwise idle machine).
    Wall,
    /// CPU seconds of the whole process, divided by the thread count: robust
    /// to other processes on a shared machine; exact for one thread.
    CpuPerThread,
}

/// Times the three kernels of `shape` on random data, in the current rayon pool.
pub fn time_passes(shape: &ConvShape, min_seconds: f64, clock: Clock) -> PassTimes {
    let threads = rayon::current_num_threads() as f64;
    let median_seconds = |f: &mut dyn FnMut(), warmup, reps, min_seconds| match clock {
        Clock::Wall => median_seconds(f, warmup, reps, min_seconds),
        Clock::CpuPerThread => median_cpu_seconds(f, warmup, reps, min_seconds * threads) / threads,
    };
    let mut rng = StdRng::seed_from_u64(0);
    // x [N,C,H,W], w [F,C,K,K], dy [N,F,Ho,Wo] and their gradients; allocated once.
    let x = Tensor::normal(&[shape.input_len()], 1.0, &mut rng);
    let w = Tensor::normal(&[shape.weight_len()], 0.1, &mut rng);
    let dy = Tensor::normal(&[shape.output_len()], 1.0, &mut rng);
    let mut y = vec![0.0; shape.output_len()];
    let mut dx = vec![0.0; shape.input_len()];
    let mut dw = vec![0.0; shape.weight_len()];
    let (warmup, reps) = (2, 5);
    let forward = median_seconds(
        &mut || conv::forward(shape, &x.data, &w.data, &mut y),
        warmup,
        reps,
        min_seconds,
    );
    let input_grad = median_seconds(
        &mut || conv::input_grad(shape, &dy.data, &w.data, &mut dx),
        warmup,
        reps,
        min_seconds,
    );
    let weight_grad = median_seconds(
        &mut || conv::weight_grad(shape, &x.data, &dy.data, &mut dw),
        warmup,
        reps,
        min_seconds,
    );
    let total = median_seconds(
        &mut || {
            conv::forward(shape, &x.data, &w.data, &mut y);
            conv::input_grad(shape, &dy.data, &w.data, &mut dx);
            conv::weight_grad(shape, &x.data, &dy.data, &mut dw);
        },
        warmup,
        reps,
        min_seconds,
    );
    PassTimes {
        forward,
        input_grad,
        weight_grad,
        total,
    }
}

/// Single-thread throughput of independent `f32x8` FMA chains, in GFLOP/s:
/// about PEAK_GFLOPS_PER_CORE when f32x8 runs as one 256-bit FMA, half or
/// less when it falls back to two 128-bit halves or separate multiply and add.
pub fn fma_throughput_gflops() -> f64 {
    use wide::f32x8;
    const CHAINS: usize = 12;
    const STEPS: usize = 20_000_000;
    let multiplier = f32x8::splat(std::hint::black_box(0.999_999));
    let addend = f32x8::splat(std::hint::black_box(1e-7));
    let mut chains = [f32x8::splat(1.0); CHAINS];
    let start = std::time::Instant::now();
    for _ in 0..STEPS {
        for chain in chains.iter_mut() {
            *chain = chain.mul_add(multiplier, addend);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(chains);
    (STEPS * CHAINS * 8 * 2) as f64 / seconds / 1e9
}

/// Benchmarks every shape in the current rayon pool (`threads` threads) and
/// prints one row per pass; PyTorch's figures for the same thread count, when
/// given, are printed beside ours with the ratio ours / PyTorch.
pub fn run(
    shapes: &[BenchShape],
    threads: usize,
    torch: Option<&TorchFigures>,
    min_seconds: f64,
    clock: Clock,
    out: &mut impl Write,
) -> std::io::Result<Vec<(BenchShape, PassTimes)>> {
    let peak = PEAK_GFLOPS_PER_CORE * threads as f64;
    writeln!(out, "instruction set: {}", super::instruction_set())?;
    writeln!(
        out,
        "threads: {threads}, FP32 peak for them: {peak:.0} GFLOP/s, clock: {clock:?}"
    )?;
    writeln!(
        out,
        "{:<24}{:<12}{:>10}{:>9}{:>8}{:>12}{:>8}",
        "N,Cin,Cout,HW,stride", "pass", "ms", "GFLOP/s", "%peak", "torch GF/s", "ratio"
    )?;
    let mut results = Vec::new();
    for shape in shapes {
        let conv_shape = shape.conv_shape();
        let times = time_passes(&conv_shape, min_seconds, clock);
        let flops = 2.0 * conv_shape.macs() as f64;
        let reference = torch.and_then(|t| t.find(shape));
        let label = format!(
            "{},{},{},{},{}",
            shape.batch, shape.in_channels, shape.out_channels, shape.size, shape.stride
        );
        let rows = [
            ("forward", times.forward, flops, reference.map(|r| r.0)),
            ("input grad", times.input_grad, flops, None),
            ("weight grad", times.weight_grad, flops, None),
            ("fwd+bwd", times.total, 3.0 * flops, reference.map(|r| r.1)),
        ];
        for (i, (pass, seconds, flops, torch_gflops)) in rows.into_iter().enumerate() {
            let gflops = flops / seconds / 1e9;
            let (torch_column, ratio_column) = match torch_gflops {
                Some(t) => (format!("{t:.1}"), format!("{:.2}", gflops / t)),
                None => (String::new(), String::new()),
            };
            writeln!(
                out,
                "{:<24}{:<12}{:>10.3}{:>9.1}{:>7.0}%{:>12}{:>8}",
                if i == 0 { label.as_str() } else { "" },
                pass,
                seconds * 1e3,
                gflops,
                100.0 * gflops / peak,
                torch_column,
                ratio_column
            )?;
        }
        results.push((*shape, times));
    }
    Ok(results)
}
