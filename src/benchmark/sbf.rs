//! `sbfnet bench-sbf`: the SBF layer against the dense conv of the same shape, forward and
//! forward+backward, with the MAC counts, the speed-up and how much of the MAC reduction it
//! turns into time (speed-up ÷ MAC reduction).
//!
//! Cells: the 3×3, pad-1 convs of a CIFAR ResNet (16 channels at 32×32, 32 at 16×16, 64 at 8×8,
//! and the stride-2 transitions 16→32 at 32×32 and 32→64 at 16×16) or of airbench94 (24→64 at
//! 31×31, 64 at 15×15, 64→256 at 15×15, 256 at 7×7 and 3×3), a fraction `rate` of the
//! filters transformed, G groups. Both layers run through the tape (`ops::conv2d`,
//! `ops::sbf_conv2d`), so both pay the same framework overhead; the dense conv is timed beside
//! every SBF cell, so each ratio compares two timings taken moments apart.
//!
//! [`measure_passes`] times the kernels one pass at a time (the measurements behind
//! [`crate::ops::sbf::FUSED_COSTS`]).
//!
//! Clock: with one rayon thread every time is the process's CPU time ([`median_cpu_seconds`]),
//! which on a shared machine does not count the time other processes held the core; with more
//! threads it is wall time.

use super::conv::{BenchNet, AIRBENCH_CONVS, NETWORK_CONVS};
use super::{median_cpu_seconds, median_seconds};
use crate::autograd::{Mode, ParamStore, Tape};
use crate::kernels::conv::ConvLayout;
use crate::kernels::sbf::{self as sbf_kernel, SbfGrads, SbfShape};
use crate::kernels::simd::Isa;
use crate::kernels::{conv as conv_kernel, ConvShape};
use crate::nn::cost::LayerCost;
use crate::ops::sbf::{sbf_conv2d, SbfConfig, SbfPath, TemplateAssignment, TransformFamily, FUSED_COSTS};
use crate::ops::{conv2d, ConvConfig};
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::fmt::Write;

/// One layer to time: C → N at size×size, stride, `rate` of the N filters transformed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CellSpec {
    pub in_channels: usize,
    pub outputs: usize,
    pub size: usize,
    pub stride: usize,
    pub rate: f64,
    pub batch: usize,
    pub groups: usize,
}

impl CellSpec {
    /// M = round(N·(1 − rate)), at least 1.
    pub fn templates(&self) -> usize {
        ((self.outputs as f64 * (1.0 - self.rate)).round() as usize).clamp(1, self.outputs)
    }

    /// "16ch 32x32", "64→256 15x15" or "16→32 32x32 /2".
    pub fn label(&self) -> String {
        let channels = if self.in_channels == self.outputs {
            format!("{}ch", self.in_channels)
        } else {
            format!("{}→{}", self.in_channels, self.outputs)
        };
        match self.stride {
            1 => format!("{channels} {}x{}", self.size, self.size),
            s => format!("{channels} {}x{} /{s}", self.size, self.size),
        }
    }

    fn shape(&self) -> SbfShape {
        SbfShape {
            batch: self.batch,
            in_channels: self.in_channels,
            in_height: self.size,
            in_width: self.size,
            out_channels: self.outputs,
            templates: self.templates(),
            kernel: 3,
            stride: self.stride,
            padding: 1,
            groups: self.groups,
        }
    }

    /// (SBF, dense) multiply-adds of the forward pass for the whole batch.
    pub fn macs(&self) -> (usize, usize) {
        let out = (self.size - 1) / self.stride + 1;
        let cost = LayerCost::sbf(
            "",
            self.in_channels,
            self.outputs,
            self.templates(),
            3,
            self.groups,
            TransformFamily::Scalar,
            out,
            out,
            false,
        );
        (self.batch * cost.macs, self.batch * cost.dense_macs)
    }
}

/// The cells of the table: every 3×3 conv of `net` (the ResNets' first, 3-channel one aside)
/// × rate × batch, G groups.
pub fn cells(net: BenchNet, batches: &[usize], rates: &[f64], groups: usize) -> Vec<CellSpec> {
    let convs: &[(usize, usize, usize, usize)] = match net {
        BenchNet::Resnet => &NETWORK_CONVS[1..],
        BenchNet::Airbench94 => &AIRBENCH_CONVS,
    };
    let mut cells = Vec::new();
    for &batch in batches {
        for &(in_channels, outputs, size, stride) in convs {
            for &rate in rates {
                cells.push(CellSpec {
                    in_channels,
                    outputs,
                    size,
                    stride,
                    rate,
                    batch,
                    groups,
                });
            }
        }
    }
    cells
}

/// One measured cell: milliseconds per call.
#[derive(Clone, Debug, PartialEq)]
pub struct SbfCell {
    pub spec: CellSpec,
    pub threads: usize,
    /// How the SBF layer computed each pass (`SbfPlan::describe`).
    pub plan: String,
    pub dense_forward_ms: f64,
    pub sbf_forward_ms: f64,
    pub dense_train_ms: f64,
    pub sbf_train_ms: f64,
    pub sbf_macs: usize,
    pub dense_macs: usize,
}

impl SbfCell {
    pub fn mac_reduction(&self) -> f64 {
        self.dense_macs as f64 / self.sbf_macs as f64
    }
    pub fn forward_speedup(&self) -> f64 {
        self.dense_forward_ms / self.sbf_forward_ms
    }
    pub fn train_speedup(&self) -> f64 {
        self.dense_train_ms / self.sbf_train_ms
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "shape": self.spec.label(),
            "in_channels": self.spec.in_channels,
            "outputs": self.spec.outputs,
            "size": self.spec.size,
            "stride": self.spec.stride,
            "rate": self.spec.rate,
            "templates": self.spec.templates(),
            "groups": self.spec.groups,
            "batch": self.spec.batch,
            "threads": self.threads,
            "plan": self.plan,
            "dense_forward_ms": self.dense_forward_ms,
            "sbf_forward_ms": self.sbf_forward_ms,
            "dense_forward_backward_ms": self.dense_train_ms,
            "sbf_forward_backward_ms": self.sbf_train_ms,
            "dense_macs": self.dense_macs,
            "sbf_macs": self.sbf_macs,
            "mac_reduction": self.mac_reduction(),
            "forward_speedup": self.forward_speedup(),
            "forward_backward_speedup": self.train_speedup(),
            "forward_speedup_per_mac_reduction": self.forward_speedup() / self.mac_reduction(),
            "forward_backward_speedup_per_mac_reduction": self.train_speedup() / self.mac_reduction(),
        })
    }
}

/// Median seconds per call of `f` (warm-up 1, `reps` samples): CPU seconds with one thread, else wall.
/// A CPU-time sample repeats the call for at least 50 ms: the process clock ticks in milliseconds.
fn seconds(f: impl FnMut(), reps: usize) -> f64 {
    if rayon::current_num_threads() == 1 {
        median_cpu_seconds(f, 1, reps, 0.05)
    } else {
        median_seconds(f, 1, reps, 0.0)
    }
}

/// The inputs of one cell, drawn once: x, the dense weight, templates, masks, the assignment.
struct CellData {
    x: Tensor,
    weight: Tensor,
    templates: Tensor,
    masks: Tensor,
    assignment: TemplateAssignment,
}

impl CellData {
    fn new(spec: &CellSpec) -> CellData {
        let mut rng = StdRng::seed_from_u64(0x5bf);
        let (c, n, m, g) = (spec.in_channels, spec.outputs, spec.templates(), spec.groups);
        CellData {
            x: Tensor::normal(&[spec.batch, c, spec.size, spec.size], 1.0, &mut rng),
            weight: Tensor::kaiming_normal(&[n, c, 3, 3], &mut rng),
            templates: Tensor::kaiming_normal(&[m, c, 3, 3], &mut rng),
            masks: Tensor::normal(&[n - m, g, 3, 3], 1.0, &mut rng),
            assignment: TemplateAssignment::round_robin(n, m),
        }
    }
}

/// Times one cell in the current rayon pool: the layer through the op on `path`, the dense conv
/// beside it.
pub fn measure(spec: &CellSpec, path: SbfPath, reps: usize) -> SbfCell {
    let data = CellData::new(spec);
    let store = ParamStore::default();
    let conv = ConvConfig {
        stride: spec.stride,
        padding: 1,
    };
    let config = SbfConfig {
        path,
        ..SbfConfig::new(spec.stride, 1, spec.groups)
    };
    let dense_forward = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Eval);
            let (x, w) = (tape.input(data.x.clone()), tape.input(data.weight.clone()));
            std::hint::black_box(conv2d(&mut tape, x, w, None, conv));
        },
        reps,
    );
    let dense_train = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Train);
            let (x, w) = (tape.leaf(data.x.clone()), tape.leaf(data.weight.clone()));
            let y = conv2d(&mut tape, x, w, None, conv);
            let seed = Tensor::full(&tape.value(y).shape, 1.0);
            tape.backward_with(y, seed);
        },
        reps,
    );
    let sbf_forward = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Eval);
            let v = [&data.x, &data.templates, &data.masks].map(|t| tape.input(t.clone()));
            std::hint::black_box(sbf_conv2d(
                &mut tape,
                v[0],
                v[1],
                v[2],
                None,
                &data.assignment,
                config,
            ));
        },
        reps,
    );
    let sbf_train = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Train);
            let v = [&data.x, &data.templates, &data.masks].map(|t| tape.leaf(t.clone()));
            let y = sbf_conv2d(&mut tape, v[0], v[1], v[2], None, &data.assignment, config);
            let seed = Tensor::full(&tape.value(y).shape, 1.0);
            tape.backward_with(y, seed);
        },
        reps,
    );
    let (sbf_macs, dense_macs) = spec.macs();
    SbfCell {
        spec: *spec,
        threads: rayon::current_num_threads(),
        plan: config
            .plan_for(&spec.shape(), Isa::active(), rayon::current_num_threads())
            .describe(),
        dense_forward_ms: dense_forward * 1e3,
        sbf_forward_ms: sbf_forward * 1e3,
        dense_train_ms: dense_train * 1e3,
        sbf_train_ms: sbf_train * 1e3,
        sbf_macs,
        dense_macs,
    }
}

/// The table of measured cells.
pub fn table(cells: &[SbfCell]) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "{:<17} {:>4} {:>3} {:>5} {:>3} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>6} {:>8} {:>8}  plan",
        "shape",
        "rate",
        "M",
        "batch",
        "thr",
        "dense fw",
        "sbf fw",
        "fw ×",
        "dense f+b",
        "sbf f+b",
        "f+b ×",
        "MAC ÷",
        "fw/MAC÷",
        "f+b/MAC÷"
    )
    .unwrap();
    for cell in cells {
        writeln!(
            out,
            "{:<17} {:>4.2} {:>3} {:>5} {:>3} {:>7.2}ms {:>7.2}ms {:>6.2} {:>7.2}ms {:>7.2}ms {:>6.2} {:>6.2} {:>8.2} {:>8.2}  {}",
            cell.spec.label(),
            cell.spec.rate,
            cell.spec.templates(),
            cell.spec.batch,
            cell.threads,
            cell.dense_forward_ms,
            cell.sbf_forward_ms,
            cell.forward_speedup(),
            cell.dense_train_ms,
            cell.sbf_train_ms,
            cell.train_speedup(),
            cell.mac_reduction(),
            cell.forward_speedup() / cell.mac_reduction(),
            cell.train_speedup() / cell.mac_reduction(),
            cell.plan
        )
        .unwrap();
    }
    out
}

/// The kernels of one cell one pass at a time, milliseconds per call: the dense conv's forward
/// and input gradient, and the fused kernels' (without the op or the tape).
#[derive(Clone, Debug, PartialEq)]
pub struct PassTimes {
    pub spec: CellSpec,
    pub dense_forward_ms: f64,
    pub fused_forward_ms: f64,
    pub dense_input_grad_ms: f64,
    pub fused_input_grad_ms: f64,
    /// The layout and predicted speed-up over the pixel layout of each kernel: dense forward,
    /// dense input gradient, fused forward, fused input gradient.
    pub layouts: [(ConvLayout, f64); 4],
}

impl PassTimes {
    /// The time ratios fused ÷ dense that [`FUSED_COSTS`] and the layouts' speed-ups predict:
    /// (forward, input gradient).
    pub fn predicted_ratios(&self) -> (f64, f64) {
        let s = &self.spec;
        let dense = (s.in_channels * s.outputs) as f64;
        let ratio = |cost: crate::ops::sbf::PassCost, dense_pass: usize| {
            let fused = cost.templates * (s.in_channels * s.templates()) as f64
                + cost.masks * (s.groups * s.outputs) as f64;
            (fused / self.layouts[dense_pass + 2].1) / (dense / self.layouts[dense_pass].1)
        };
        (ratio(FUSED_COSTS.forward, 0), ratio(FUSED_COSTS.input_grad, 1))
    }
}

/// "px" or "ch": the layout column of the passes table.
fn layout_tag(layout: ConvLayout) -> &'static str {
    match layout {
        ConvLayout::PixelVectors => "px",
        ConvLayout::ChannelVectors => "ch",
    }
}

/// Times the passes of one cell (see [`PassTimes`]).
pub fn measure_passes(spec: &CellSpec, reps: usize) -> PassTimes {
    let data = CellData::new(spec);
    let shape = spec.shape();
    let conv: ConvShape = shape.conv_shape();
    let mut y = vec![0.0f32; shape.output_len()];
    let mut dx = vec![0.0f32; shape.input_len()];
    let dy = Tensor::normal(&[shape.output_len()], 1.0, &mut StdRng::seed_from_u64(1)).data;
    let (x, w, b, t) = (
        &data.x.data,
        &data.weight.data,
        &data.templates.data,
        &data.masks.data,
    );
    let a = &data.assignment;
    let dense_forward_ms = 1e3 * seconds(|| conv_kernel::forward(&conv, x, w, &mut y), reps);
    let fused_forward_ms = 1e3 * seconds(|| sbf_kernel::fused_forward(&shape, a, x, b, t, &mut y), reps);
    let dense_input_grad_ms = 1e3 * seconds(|| conv_kernel::input_grad(&conv, &dy, w, &mut dx), reps);
    let fused_input_grad_ms = 1e3
        * seconds(
            || {
                let grads = SbfGrads {
                    input: Some(&mut dx),
                    templates: None,
                    masks: None,
                };
                sbf_kernel::fused_backward(&shape, a, x, b, t, &dy, grads)
            },
            reps,
        );
    let (isa, threads) = (Isa::active(), rayon::current_num_threads());
    PassTimes {
        spec: *spec,
        dense_forward_ms,
        fused_forward_ms,
        dense_input_grad_ms,
        fused_input_grad_ms,
        layouts: [
            ConvLayout::forward_choice(isa, &conv, threads),
            ConvLayout::input_grad_choice(isa, &conv, threads),
            sbf_kernel::fused_forward_choice(isa, &shape, threads),
            sbf_kernel::fused_input_grad_choice(isa, &shape, threads),
        ],
    }
}

/// The table of [`PassTimes`]: measured fused ÷ dense beside the model's prediction.
pub fn passes_table(rows: &[PassTimes]) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "{:<17} {:>4} {:>3} {:>5} {:>9} {:>9} {:>6} {:>6} {:>9} {:>9} {:>6} {:>6}  layouts",
        "shape",
        "rate",
        "M",
        "batch",
        "dense fw",
        "fused fw",
        "ratio",
        "model",
        "dense dx",
        "fused dx",
        "ratio",
        "model"
    )
    .unwrap();
    for row in rows {
        let (forward_model, input_grad_model) = row.predicted_ratios();
        writeln!(
            out,
            "{:<17} {:>4.2} {:>3} {:>5} {:>7.2}ms {:>7.2}ms {:>6.2} {:>6.2} {:>7.2}ms {:>7.2}ms {:>6.2} {:>6.2}  {}",
            row.spec.label(),
            row.spec.rate,
            row.spec.templates(),
            row.spec.batch,
            row.dense_forward_ms,
            row.fused_forward_ms,
            row.fused_forward_ms / row.dense_forward_ms,
            forward_model,
            row.dense_input_grad_ms,
            row.fused_input_grad_ms,
            row.fused_input_grad_ms / row.dense_input_grad_ms,
            input_grad_model,
            row.layouts.map(|(layout, _)| layout_tag(layout)).join(" ")
        )
        .unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_every_shape_rate_and_batch_with_sensible_template_counts() {
        let cells = cells(BenchNet::Resnet, &[128, 8], &[0.5, 0.9], 2);
        assert_eq!(cells.len(), 2 * 5 * 2);
        let c = cells
            .iter()
            .find(|c| c.outputs == 64 && c.stride == 2 && c.rate == 0.9)
            .unwrap();
        assert_eq!(c.templates(), 6);
        let (sbf, dense) = c.macs();
        assert!(sbf < dense / 5, "{sbf} vs {dense}");
    }

    #[test]
    fn a_measured_cell_reports_consistent_ratios() {
        let spec = CellSpec {
            in_channels: 4,
            outputs: 4,
            size: 6,
            stride: 1,
            rate: 0.5,
            batch: 2,
            groups: 2,
        };
        let cell = measure(&spec, SbfPath::Fused, 1);
        assert!(cell.dense_forward_ms > 0.0 && cell.sbf_train_ms > 0.0);
        let json = cell.to_json();
        assert_eq!(json["templates"], 2);
        let speedup = json["forward_speedup"].as_f64().unwrap();
        assert!((speedup - cell.dense_forward_ms / cell.sbf_forward_ms).abs() < 1e-12);
        assert_eq!(cell.plan, "forward fused, input gradient fused");
    }
}
