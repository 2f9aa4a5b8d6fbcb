//! The SBF layer against the dense conv of the same shape: forward and
//! forward+backward time, speed-up, MAC reduction and their ratio (how much of
//! the MAC saving turns into time), plus the GFLOP/s of the stage-1 GEMMs.
//!
//! Shapes: the 3×3, pad-1 convs of a CIFAR ResNet (16 channels at 32×32, 32 at
//! 16×16, 64 at 8×8, and the stride-2 transitions 16→32 at 32×32 and 32→64 at
//! 16×16), G = 2, 50 / 70 / 90 % of the filters transformed. Both layers run through the tape (`ops::conv2d`,
//! `ops::sbf_conv2d` with the two-stage path forced), so both pay the same
//! framework overhead. "GEMM GFLOP/s" is stage 1 alone; "sbf GFLOP/s" is the whole forward
//! counted at the layer's own MACs (2 flops each).
//!
//! Clock: with one rayon thread (`RAYON_NUM_THREADS=1`) every time is the process's CPU time
//! ([`median_cpu_seconds`]), which on a shared, loaded machine does not count the time other
//! processes held the core; with more threads it is wall time. The dense conv is timed again
//! beside every SBF cell, so each ratio compares two timings taken moments apart.

use super::{median_cpu_seconds, median_seconds};
use crate::autograd::{Mode, ParamStore, Tape};
use crate::kernels::sbf::{self as sbf_kernel, SbfShape};
use crate::nn::cost::LayerCost;
use crate::ops::sbf::{sbf_conv2d, SbfConfig, SbfPath, TemplateAssignment, TransformFamily};
use crate::ops::{conv2d, ConvConfig};
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::fmt::Write;

/// Median seconds per call of `f` (warm-up 1, `reps` samples): CPU seconds with one thread, else wall.
fn seconds(f: impl FnMut(), reps: usize) -> f64 {
    if rayon::current_num_threads() == 1 {
        median_cpu_seconds(f, 1, reps, 0.0)
    } else {
        median_seconds(f, 1, reps, 0.0)
    }
}

/// Seconds per call of (forward, forward + backward) of the dense conv C → N, K×K, pad 1.
fn time_dense(x: &Tensor, weight: &Tensor, stride: usize, reps: usize) -> (f64, f64) {
    let store = ParamStore::default();
    let config = ConvConfig { stride, padding: 1 };
    let forward = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Eval);
            let (xv, wv) = (tape.input(x.clone()), tape.input(weight.clone()));
            std::hint::black_box(conv2d(&mut tape, xv, wv, None, config));
        },
        reps,
    );
    let both = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Train);
            let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(weight.clone()));
            let y = conv2d(&mut tape, xv, wv, None, config);
            let seed = Tensor::full(&tape.value(y).shape, 1.0);
            tape.backward_with(y, seed);
        },
        reps,
    );
    (forward, both)
}

/// Seconds per call of (forward, forward + backward) of the SBF layer on `path`.
fn time_sbf(
    x: &Tensor,
    templates: &Tensor,
    masks: &Tensor,
    assignment: &TemplateAssignment,
    config: SbfConfig,
    reps: usize,
) -> (f64, f64) {
    let store = ParamStore::default();
    let forward = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Eval);
            let v = [x, templates, masks].map(|t| tape.input(t.clone()));
            std::hint::black_box(sbf_conv2d(&mut tape, v[0], v[1], v[2], None, assignment, config));
        },
        reps,
    );
    let both = seconds(
        || {
            let mut tape = Tape::new(&store, Mode::Train);
            let v = [x, templates, masks].map(|t| tape.leaf(t.clone()));
            let y = sbf_conv2d(&mut tape, v[0], v[1], v[2], None, assignment, config);
            let seed = Tensor::full(&tape.value(y).shape, 1.0);
            tape.backward_with(y, seed);
        },
        reps,
    );
    (forward, both)
}

/// Runs the comparison at `batch` images and returns the report (a table, one row per shape and rate).
pub fn run(batch: usize) -> String {
    let mut out = String::new();
    let threads = rayon::current_num_threads();
    writeln!(
        out,
        "SBF layer vs dense conv, batch {batch}, 3×3 pad 1, G = 2, {threads} threads ({} time), {}",
        if threads == 1 { "CPU" } else { "wall" },
        super::instruction_set()
    )
    .unwrap();
    writeln!(
        out,
        "{:<22} {:>5} {:>3} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9} {:>11} {:>11} {:>8}",
        "shape",
        "rate",
        "M",
        "dense fw",
        "sbf fw",
        "fw ×",
        "dense f+b",
        "sbf f+b",
        "f+b ×",
        "MAC ÷",
        "fw ×/MAC÷",
        "f+b ×/MAC÷",
        "GEMM GFLOP/s",
        "sbf GFLOP/s",
        "auto"
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(0x5bf);
    let reps = 3;
    // (C inputs, N outputs, input side, stride)
    for (channels, outputs, size, stride) in [
        (16, 16, 32, 1),
        (32, 32, 16, 1),
        (64, 64, 8, 1),
        (16, 32, 32, 2),
        (32, 64, 16, 2),
    ] {
        let out_size = (size - 1) / stride + 1;
        let x = Tensor::normal(&[batch, channels, size, size], 1.0, &mut rng);
        let weight = Tensor::kaiming_normal(&[outputs, channels, 3, 3], &mut rng);
        for rate in [0.5, 0.7, 0.9] {
            let templates_count = ((outputs as f64 * (1.0 - rate)).round() as usize).max(1);
            let groups = 2;
            let templates = Tensor::kaiming_normal(&[templates_count, channels, 3, 3], &mut rng);
            let masks = Tensor::normal(&[outputs - templates_count, groups, 3, 3], 1.0, &mut rng);
            let assignment = TemplateAssignment::round_robin(outputs, templates_count);
            let config = SbfConfig {
                path: SbfPath::TwoStage,
                ..SbfConfig::new(stride, 1, groups)
            };
            let (dense_forward, dense_both) = time_dense(&x, &weight, stride, reps);
            let (sbf_forward, sbf_both) = time_sbf(&x, &templates, &masks, &assignment, config, reps);
            let cost = LayerCost::sbf(
                "",
                channels,
                outputs,
                templates_count,
                3,
                groups,
                TransformFamily::Scalar,
                out_size,
                out_size,
                false,
            );
            let mac_reduction = 1.0 / cost.mac_ratio();
            // Stage 1 alone: 2·Bt·K²·C·M·Ho·Wo flops.
            let shape = SbfShape {
                batch,
                in_channels: channels,
                in_height: size,
                in_width: size,
                out_channels: outputs,
                templates: templates_count,
                kernel: 3,
                stride,
                padding: 1,
                groups,
            };
            let mut maps = vec![0.0; shape.maps_len()];
            let stage1 = seconds(
                || sbf_kernel::stage1_forward(&shape, &x.data, &templates.data, &mut maps),
                reps,
            );
            let gflops =
                2.0 * (batch * 9 * channels * templates_count * out_size * out_size) as f64 / stage1 / 1e9;
            let auto =
                match SbfConfig::new(stride, 1, groups).resolved_path(channels, outputs, templates_count) {
                    SbfPath::TwoStage => "two-stage",
                    _ => "dense",
                };
            let (speed_forward, speed_both) = (dense_forward / sbf_forward, dense_both / sbf_both);
            writeln!(
                out,
                "{:<22} {:>5.2} {:>3} {:>8.2}ms {:>8.2}ms {:>7.2} {:>8.2}ms {:>8.2}ms {:>7.2} {:>7.2} {:>9.2} {:>9.2} {:>11.1} {:>11.1} {:>8}",
                match stride {
                    1 => format!("{channels}ch {size}x{size}"),
                    _ => format!("{channels}→{outputs} {size}x{size} /{stride}"),
                },
                rate,
                templates_count,
                dense_forward * 1e3,
                sbf_forward * 1e3,
                speed_forward,
                dense_both * 1e3,
                sbf_both * 1e3,
                speed_both,
                mac_reduction,
                speed_forward / mac_reduction,
                speed_both / mac_reduction,
                gflops,
                2.0 * (batch * cost.macs) as f64 / sbf_forward / 1e9,
                auto
            )
            .unwrap();
        }
    }
    out
}
