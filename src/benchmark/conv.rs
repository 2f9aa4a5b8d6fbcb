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

use super::{fma_peak_gflops_on, median, median_cpu_seconds, median_seconds};
use crate::kernels::conv::ConvLayout;
use crate::kernels::simd::Isa;
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
    /// "N,Cin,Cout,HW,stride", the first column of the tables.
    pub fn label(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.batch, self.in_channels, self.out_channels, self.size, self.stride
        )
    }

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

/// (C, F, H = W, stride) of airbench94's 3×3 convolutions (the 2×2 whitening conv aside):
/// 64 channels on the 31×31 and 15×15 maps, 256 on 15×15, 7×7 and 3×3.
pub const AIRBENCH_CONVS: [(usize, usize, usize, usize); 5] = [
    (24, 64, 31, 1),
    (64, 64, 15, 1),
    (64, 256, 15, 1),
    (256, 256, 7, 1),
    (256, 256, 3, 1),
];

/// Which network's convolutions `sbfnet bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchNet {
    /// The CIFAR ResNets' ([`NETWORK_CONVS`], torch_ref.py's shapes).
    Resnet,
    /// airbench94's ([`AIRBENCH_CONVS`]).
    Airbench94,
}

/// The benchmarked shapes of `net` for each batch size (for the ResNets in torch_ref.py's order).
pub fn network_shapes(net: BenchNet, batches: &[usize]) -> Vec<BenchShape> {
    let convs: &[(usize, usize, usize, usize)] = match net {
        BenchNet::Resnet => &NETWORK_CONVS,
        BenchNet::Airbench94 => &AIRBENCH_CONVS,
    };
    batches
        .iter()
        .flat_map(|&batch| {
            convs
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

/// One timed pass of the dense convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
    /// forward, input_grad and weight_grad back to back.
    Total,
}

impl Pass {
    pub const ALL: [Pass; 4] = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad, Pass::Total];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "input grad",
            Pass::WeightGrad => "weight grad",
            Pass::Total => "fwd+bwd",
        }
    }

    /// FLOPs of the pass: 2·MACs per kernel.
    pub fn flops(self, shape: &ConvShape) -> f64 {
        let kernels = if self == Pass::Total { 3.0 } else { 1.0 };
        kernels * 2.0 * shape.macs() as f64
    }
}

/// Random x, w, dy of one shape and the buffers the passes write; allocated once.
pub struct PassData {
    shape: ConvShape,
    /// The layout of every pass; None: the ones they choose.
    layout: Option<ConvLayout>,
    x: Vec<f32>,  // [N, C, H, W]
    w: Vec<f32>,  // [F, C, K, K]
    dy: Vec<f32>, // [N, F, Ho, Wo]
    y: Vec<f32>,  // [N, F, Ho, Wo]
    dx: Vec<f32>, // [N, C, H, W]
    dw: Vec<f32>, // [F, C, K, K]
}

impl PassData {
    pub fn new(shape: &ConvShape) -> Self {
        let mut rng = StdRng::seed_from_u64(0);
        PassData {
            shape: *shape,
            layout: None,
            x: Tensor::normal(&[shape.input_len()], 1.0, &mut rng).data,
            w: Tensor::normal(&[shape.weight_len()], 0.1, &mut rng).data,
            dy: Tensor::normal(&[shape.output_len()], 1.0, &mut rng).data,
            y: vec![0.0; shape.output_len()],
            dx: vec![0.0; shape.input_len()],
            dw: vec![0.0; shape.weight_len()],
        }
    }

    /// The same data with every pass forced into `layout` (None: the ones they choose).
    pub fn with_layout(mut self, layout: Option<ConvLayout>) -> Self {
        self.layout = layout;
        self
    }

    /// Runs `pass` once, in the current rayon pool.
    pub fn run(&mut self, pass: Pass) {
        let shape = &self.shape;
        if matches!(pass, Pass::Forward | Pass::Total) {
            match self.layout {
                Some(layout) => {
                    conv::forward_layout_with(Isa::active(), layout, shape, &self.x, &self.w, &mut self.y)
                }
                None => conv::forward(shape, &self.x, &self.w, &mut self.y),
            }
        }
        if matches!(pass, Pass::InputGrad | Pass::Total) {
            match self.layout {
                Some(layout) => conv::input_grad_layout_with(
                    Isa::active(),
                    layout,
                    shape,
                    &self.dy,
                    &self.w,
                    &mut self.dx,
                ),
                None => conv::input_grad(shape, &self.dy, &self.w, &mut self.dx),
            }
        }
        if matches!(pass, Pass::WeightGrad | Pass::Total) {
            match self.layout {
                Some(layout) => conv::weight_grad_layout_with(
                    Isa::active(),
                    layout,
                    shape,
                    &self.x,
                    &self.dy,
                    &mut self.dw,
                ),
                None => conv::weight_grad(shape, &self.x, &self.dy, &mut self.dw),
            }
        }
    }
}

/// Times the three kernels of `shape` on random data, in the current rayon pool, the forward
/// passes in `layout` (None: the ones chosen).
pub fn time_passes(
    shape: &ConvShape,
    layout: Option<ConvLayout>,
    min_seconds: f64,
    clock: Clock,
) -> PassTimes {
    let threads = rayon::current_num_threads() as f64;
    let mut data = PassData::new(shape).with_layout(layout);
    let (warmup, reps) = (2, 5);
    let mut time = |pass| {
        let f = || data.run(pass);
        match clock {
            Clock::Wall => median_seconds(f, warmup, reps, min_seconds),
            Clock::CpuPerThread => median_cpu_seconds(f, warmup, reps, min_seconds * threads) / threads,
        }
    };
    PassTimes {
        forward: time(Pass::Forward),
        input_grad: time(Pass::InputGrad),
        weight_grad: time(Pass::WeightGrad),
        total: time(Pass::Total),
    }
}

/// The speed-up from the first pool to each other, per shape and pass, timed
/// in alternation: every round times each pass of each shape once in each
/// pool (a repetition of at least `min_seconds`, the two back to back), and
/// the samples of all rounds are compared two ways: median against median,
/// and best against best. This VM's speed drifts by tens of percent over
/// minutes, and for seconds at a time it runs its two virtual cores as little
/// more than one (then even the control row, pure FMA work, falls well short
/// of ×2: ×1.66 by the medians in one sitting). Alternating within a fraction of a second cancels the drift;
/// since a round runs through every shape before the next begins, a pass's
/// samples are spread over the whole benchmark, and the best sample of each
/// side is one taken while the machine gave both cores.
///
/// Two rows come first: the machine's ceiling (long independent FMA chains on
/// every thread) and a fork-join control, `CONTROL_TASKS` balanced tasks of
/// pure FMA work per call, as long in all as a batch-8 kernel call: what the
/// machine and rayon give a short parallel call with no memory traffic.
pub fn scaling(
    shapes: &[BenchShape],
    pools: &[(usize, rayon::ThreadPool)],
    min_seconds: f64,
    rounds: usize,
    out: &mut impl Write,
) -> std::io::Result<Vec<(BenchShape, [Speedup; 4])>> {
    let (first_threads, _) = pools[0];
    let rounds = rounds.max(1);
    let mut data: Vec<PassData> = shapes
        .iter()
        .map(|shape| PassData::new(&shape.conv_shape()))
        .collect();
    let mut results = Vec::new();
    for (index, &(threads, _)) in pools.iter().enumerate().skip(1) {
        let sides = [0, index];
        // samples[shape][pass][side], control[side]: seconds per call; fma[side]: GFLOP/s
        let mut samples: Vec<[[Vec<f64>; 2]; 4]> = vec![Default::default(); shapes.len()];
        let mut control: [Vec<f64>; 2] = Default::default();
        let mut fma: [Vec<f64>; 2] = Default::default();
        for _ in 0..rounds {
            for (side, &pool_index) in sides.iter().enumerate() {
                let pool = &pools[pool_index].1;
                fma[side].push(fma_peak_gflops_on(pool, crate::kernels::simd::Isa::active()));
            }
            for (side, &pool_index) in sides.iter().enumerate() {
                let pool = &pools[pool_index].1;
                control[side].push(pool.install(|| median_seconds(fork_join_control, 1, 1, min_seconds)));
            }
            for (shape_data, shape_samples) in data.iter_mut().zip(samples.iter_mut()) {
                for (pass, pass_samples) in Pass::ALL.into_iter().zip(shape_samples.iter_mut()) {
                    for (side, &pool_index) in sides.iter().enumerate() {
                        let seconds = pools[pool_index]
                            .1
                            .install(|| median_seconds(|| shape_data.run(pass), 1, 1, min_seconds));
                        pass_samples[side].push(seconds);
                    }
                }
            }
        }
        writeln!(
            out,
            "speed-up {first_threads} → {threads} threads, timed in alternation ({rounds} rounds): \
             median against median (best against best)"
        )?;
        let fma_median = fma.clone().map(median);
        let fma_best = fma.map(|gflops| gflops.into_iter().fold(0.0, f64::max));
        writeln!(
            out,
            "FMA chains of the active instruction set on every thread (the machine's ceiling): {:.1} → {:.1} GFLOP/s, ×{:.2} (×{:.2})",
            fma_median[0],
            fma_median[1],
            fma_median[1] / fma_median[0],
            fma_best[1] / fma_best[0]
        )?;
        let control = Speedup::of(control);
        writeln!(
            out,
            "fork-join control, {CONTROL_TASKS} tasks of FMA chains per call: {:.3} ms on {first_threads} thread(s), \
             ×{:.2} (×{:.2})",
            control.first_seconds * 1e3,
            control.median,
            control.best
        )?;
        write!(out, "{:<24}", "N,Cin,Cout,HW,stride")?;
        for pass in Pass::ALL {
            write!(out, "{:>16}", pass.name())?;
        }
        writeln!(out)?;
        for (shape, shape_samples) in shapes.iter().zip(samples) {
            let speedups = shape_samples.map(Speedup::of);
            write!(out, "{:<24}", shape.label())?;
            for speedup in &speedups {
                let cell = format!("{:.2}× ({:.2}×)", speedup.median, speedup.best);
                write!(out, "{cell:>16}")?;
            }
            writeln!(out)?;
            results.push((*shape, speedups));
        }
    }
    Ok(results)
}

/// One pass's speed-up from the first pool to another, from its samples of
/// seconds per call on each side.
#[derive(Clone, Copy, Debug)]
pub struct Speedup {
    /// Median seconds on the first side.
    pub first_seconds: f64,
    /// median(first) / median(other)
    pub median: f64,
    /// min(first) / min(other): both sides at their best moment.
    pub best: f64,
}

impl Speedup {
    fn of([first, other]: [Vec<f64>; 2]) -> Self {
        let best = |samples: &[f64]| samples.iter().copied().fold(f64::INFINITY, f64::min);
        let (first_best, other_best) = (best(&first), best(&other));
        let (first_median, other_median) = (median(first), median(other));
        Speedup {
            first_seconds: first_median,
            median: first_median / other_median,
            best: first_best / other_best,
        }
    }
}

/// Tasks of the fork-join control (a batch-8 call has 8 images).
pub const CONTROL_TASKS: usize = 8;

/// FMA steps of one control task: about 25 µs on one core, so that a call
/// lasts about as long as a batch-8 kernel call (0.1–0.5 ms).
const CONTROL_TASK_STEPS: usize = 15_000;

/// One call of the fork-join control: CONTROL_TASKS equal tasks of FMA chains
/// in the current rayon pool.
fn fork_join_control() {
    use rayon::prelude::*;
    (0..CONTROL_TASKS).into_par_iter().for_each(|_| {
        std::hint::black_box(
            crate::kernels::simd::fma_chains::<crate::kernels::simd::F32x8<16>>(CONTROL_TASK_STEPS),
        );
    });
}

/// Benchmarks every shape in the current rayon pool (`threads` threads) and
/// prints one row per pass, with its share of `peak` (GFLOP/s of the pool,
/// measured: [`fma_peak_gflops_on`]); PyTorch's figures for the same thread
/// count, when given, are printed beside ours with the ratio ours / PyTorch.
pub fn run(
    shapes: &[BenchShape],
    layout: Option<ConvLayout>,
    threads: usize,
    peak: f64,
    torch: Option<&TorchFigures>,
    min_seconds: f64,
    clock: Clock,
    out: &mut impl Write,
) -> std::io::Result<Vec<(BenchShape, PassTimes)>> {
    writeln!(out, "instruction set: {}", super::instruction_set())?;
    writeln!(
        out,
        "threads: {threads}, FP32 peak for them (measured): {peak:.0} GFLOP/s, clock: {clock:?}"
    )?;
    writeln!(
        out,
        "{:<24}{:<12}{:>10}{:>9}{:>8}{:>12}{:>8}",
        "N,Cin,Cout,HW,stride", "pass", "ms", "GFLOP/s", "%peak", "torch GF/s", "ratio"
    )?;
    let mut results = Vec::new();
    for shape in shapes {
        let conv_shape = shape.conv_shape();
        let times = time_passes(&conv_shape, layout, min_seconds, clock);
        let isa = Isa::active();
        let layouts = [
            layout.unwrap_or_else(|| ConvLayout::for_forward(isa, &conv_shape, threads)),
            layout.unwrap_or_else(|| ConvLayout::for_input_grad(isa, &conv_shape, threads)),
            layout.unwrap_or_else(|| ConvLayout::for_weight_grad(isa, &conv_shape, threads)),
        ];
        let reference = torch.and_then(|t| t.find(shape));
        let label = shape.label();
        let rows = [
            (Pass::Forward, times.forward, reference.map(|r| r.0)),
            (Pass::InputGrad, times.input_grad, None),
            (Pass::WeightGrad, times.weight_grad, None),
            (Pass::Total, times.total, reference.map(|r| r.1)),
        ];
        for (i, (pass, seconds, torch_gflops)) in rows.into_iter().enumerate() {
            let gflops = pass.flops(&conv_shape) / seconds / 1e9;
            let (torch_column, ratio_column) = match torch_gflops {
                Some(t) => (format!("{t:.1}"), format!("{:.2}", gflops / t)),
                None => (String::new(), String::new()),
            };
            writeln!(
                out,
                "{:<24}{:<12}{:>10.3}{:>9.1}{:>7.0}%{:>12}{:>8}",
                if i == 0 { label.as_str() } else { "" },
                match (pass, layouts) {
                    (Pass::Forward, [ConvLayout::ChannelVectors, _, _]) => "forward ch",
                    (Pass::InputGrad, [_, ConvLayout::ChannelVectors, _]) => "input ch",
                    (Pass::WeightGrad, [_, _, ConvLayout::ChannelVectors]) => "weight ch",
                    _ => pass.name(),
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The alternating speed-up table: one row per shape with a finite,
    /// positive speed-up per pass, under a header naming both thread counts.
    #[test]
    fn scaling_times_every_pass_in_both_pools() {
        let pools: Vec<(usize, rayon::ThreadPool)> = [1, 2]
            .into_iter()
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                (threads, pool)
            })
            .collect();
        let shapes = [BenchShape {
            batch: 2,
            in_channels: 3,
            out_channels: 4,
            size: 9,
            stride: 2,
        }];
        let mut out = Vec::new();
        let results = scaling(&shapes, &pools, 0.0, 3, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("speed-up 1 → 2 threads"), "{text}");
        assert!(text.contains("2,3,4,9,2"), "{text}");
        assert_eq!(results.len(), 1);
        for speedup in results[0].1 {
            for ratio in [speedup.median, speedup.best] {
                assert!(ratio.is_finite() && ratio > 0.0, "{:?}", results[0].1);
            }
        }
        assert!(text.contains("fork-join control"), "{text}");
    }
}
