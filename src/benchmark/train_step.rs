//! Whole-network benchmark: one training step of a CIFAR ResNet (forward,
//! cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4) on a
//! random batch, the same step as ../shared/bench/torch_ref.py times in PyTorch,
//! and inference (evaluation mode) on a larger batch.
//!
//! The step is `Trainer::train_step`, the code `sbfnet train` runs, so what
//! this measures is what training gets. Steady state: warm-up steps first (the
//! allocator and caches settle), then the median of single steps.

use crate::autograd::{Mode, Tape};
use crate::error::{Error, Result};
use crate::nn::ModelSpec;
use crate::tensor::Tensor;
use crate::train::{SgdConfig, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

/// A model name (`resnet20`) or a description with its conv plan (`resnet20 sbf:rate=0.5`).
fn parse_model(text: &str) -> Result<ModelSpec> {
    if text.contains(' ') {
        ModelSpec::parse_description(text)
    } else {
        ModelSpec::parse_name(text)
    }
}

/// What to time.
#[derive(Clone, Debug)]
pub struct TrainStepBench {
    /// A model name (`resnet20`) or description with its conv plan (`resnet20 sbf:rate=0.5,groups=2`).
    pub model: String,
    pub batch: usize,
    /// Data-parallel shards each batch is split into (see `train::trainer`).
    pub shards: usize,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
}

/// Wall seconds of each timed call (sorted), their median, and the median
/// process CPU seconds per call (all threads; unlike wall time it does not count
/// time other processes held the cores, so it is the steadier figure for tuning
/// on a shared machine; None where unavailable).
#[derive(Clone, Debug)]
pub struct Timing {
    pub samples: Vec<f64>,
    pub median_seconds: f64,
    pub median_cpu_seconds: Option<f64>,
}

impl Timing {
    fn from_samples(samples: Vec<(f64, Option<f64>)>) -> Timing {
        let median = |mut values: Vec<f64>| {
            values.sort_by(|a, b| a.total_cmp(b));
            values
        };
        let wall = median(samples.iter().map(|s| s.0).collect());
        let cpu: Option<Vec<f64>> = samples.iter().map(|s| s.1).collect();
        Timing {
            median_seconds: wall[wall.len() / 2],
            median_cpu_seconds: cpu.map(|cpu| median(cpu)[samples.len() / 2]),
            samples: wall,
        }
    }

    /// Times one call of `f`: (wall seconds, process CPU seconds).
    fn measure(f: impl FnOnce()) -> (f64, Option<f64>) {
        let cpu_start = super::process_cpu_seconds();
        let start = Instant::now();
        f();
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(super::process_cpu_seconds()).map(|(a, b)| b - a);
        (wall, cpu)
    }

    pub fn best_seconds(&self) -> f64 {
        self.samples[0]
    }
}

/// The trainer settings of the benchmark: PyTorch's `SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)`,
/// no augmentation (the batch is given), a constant learning rate.
pub fn bench_config(batch: usize, shards: usize) -> TrainConfig {
    let mut config = TrainConfig::recipe();
    config.batch_size = batch;
    config.shards = shards;
    config.sgd = SgdConfig {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-4,
    };
    config.warmup_epochs = 0;
    config.epochs = 1_000_000;
    config
}

/// A random batch: images N(0, 1) [B, 3, 32, 32] (as `torch.randn`) and labels in 0..10.
pub fn random_batch(batch: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let images = Tensor::normal(&[batch, 3, 32, 32], 1.0, &mut rng);
    let labels = (0..batch).map(|_| rng.gen_range(0..10)).collect();
    (images, labels)
}

/// Times training steps of `bench.model` on the current rayon pool.
pub fn time_train_steps(bench: &TrainStepBench) -> Result<Timing> {
    if bench.steps == 0 {
        return Err(Error::msg("`steps` must be at least 1"));
    }
    let spec = parse_model(&bench.model)?;
    let config = bench_config(bench.batch, bench.shards);
    // The trainer checks the batch against its epoch size; one "epoch" of a million batches.
    let trainer = Trainer::new(&spec, config, bench.batch * 1_000_000)?;
    time_steps(trainer, bench)
}

/// Times training steps of the model of a checkpoint (a pruned run's, with its real per-layer
/// template counts), with `bench`'s batch, shards and step counts (`bench.model` is not read).
pub fn time_checkpoint_train_steps(path: &Path, bench: &TrainStepBench) -> Result<Timing> {
    let checkpoint = crate::checkpoint::Checkpoint::load(path)?;
    let train_images = checkpoint
        .get("train_images")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::file(path, "has no train_images entry"))?;
    let mut trainer = Trainer::from_checkpoint(&checkpoint, path, train_images)?;
    trainer.config.batch_size = bench.batch;
    trainer.set_shards(bench.shards);
    time_steps(trainer, bench)
}

fn time_steps(mut trainer: Trainer, bench: &TrainStepBench) -> Result<Timing> {
    if bench.steps == 0 {
        return Err(Error::msg("`steps` must be at least 1"));
    }
    let (images, labels) = random_batch(bench.batch, 0);
    for _ in 0..bench.warmup {
        trainer.train_step(&images, &labels);
    }
    let samples = (0..bench.steps)
        .map(|_| {
            Timing::measure(|| {
                let result = trainer.train_step(&images, &labels);
                assert!(result.loss.is_finite(), "the benchmark's loss diverged");
            })
        })
        .collect();
    Ok(Timing::from_samples(samples))
}

/// Times evaluation-mode forward passes of `model` on a batch of `batch` random images.
pub fn time_inference(model: &str, batch: usize, calls: usize, warmup: usize) -> Result<Timing> {
    let spec = parse_model(model)?;
    let mut store = crate::autograd::ParamStore::default();
    let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
    time_forward(&model, &store, batch, calls, warmup)
}

/// Times evaluation-mode forward passes of the model of a checkpoint.
pub fn time_checkpoint_inference(path: &Path, batch: usize, calls: usize, warmup: usize) -> Result<Timing> {
    let checkpoint = crate::checkpoint::Checkpoint::load(path)?;
    let (model, store) = crate::checkpoint::load_model(&checkpoint, path)?;
    time_forward(&model, &store, batch, calls, warmup)
}

fn time_forward(
    model: &crate::nn::Model,
    store: &crate::autograd::ParamStore,
    batch: usize,
    calls: usize,
    warmup: usize,
) -> Result<Timing> {
    let (images, _) = random_batch(batch, 1);
    let forward = || {
        let mut tape = Tape::new(store, Mode::Eval);
        let x = tape.input(images.clone());
        let logits = model.forward(&mut tape, x);
        std::hint::black_box(tape.value(logits).data[0]);
    };
    for _ in 0..warmup {
        forward();
    }
    let samples = (0..calls.max(1)).map(|_| Timing::measure(forward)).collect();
    Ok(Timing::from_samples(samples))
}

/// The process's peak resident memory so far in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// PyTorch's whole-network figures for one thread count (from torch_ref.py's JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct TorchNetworkFigures {
    pub threads: usize,
    /// (model, batch, images per second) of each training run, e.g. ("resnet20", 128, 500.0).
    pub train: Vec<(String, usize, f64)>,
    /// (model, batch, images per second) of each inference run.
    pub infer: Vec<(String, usize, f64)>,
}

impl TorchNetworkFigures {
    fn find(list: &[(String, usize, f64)], model: &str, batch: usize) -> Option<f64> {
        list.iter()
            .find(|(m, b, _)| m == model && *b == batch)
            .map(|&(_, _, images_per_second)| images_per_second)
    }

    /// PyTorch's training images per second for `model` at `batch`, if it was measured.
    pub fn train_images_per_second(&self, model: &str, batch: usize) -> Option<f64> {
        Self::find(&self.train, model, batch)
    }

    /// PyTorch's inference images per second for `model` at `batch`, if it was measured.
    pub fn infer_images_per_second(&self, model: &str, batch: usize) -> Option<f64> {
        Self::find(&self.infer, model, batch)
    }
}

/// Reads the "train" and "infer" entries of every run of torch_ref.py's JSON
/// (`{"runs": {"<threads>": {"train": [{"model", "batch", "images_per_s", …}], "infer": […]}}}`).
pub fn read_torch_network_json(path: &Path) -> Result<Vec<TorchNetworkFigures>> {
    let mut figures = Vec::new();
    for (threads, run) in super::read_torch_runs(path)? {
        let entries = |part: &str| -> Result<Vec<(String, usize, f64)>> {
            let list = run
                .get(part)
                .and_then(|c| c.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            list.iter()
                .map(|entry| {
                    let model = entry.get("model").and_then(|v| v.as_str());
                    let batch = entry.get("batch").and_then(|v| v.as_u64());
                    let rate = entry.get("images_per_s").and_then(|v| v.as_f64());
                    match (model, batch, rate) {
                        (Some(m), Some(b), Some(r)) => Ok((m.to_string(), b as usize, r)),
                        _ => Err(Error::file(
                            path,
                            format!("run {threads}: a {part} entry lacks \"model\", \"batch\" or \"images_per_s\""),
                        )),
                    }
                })
                .collect()
        };
        figures.push(TorchNetworkFigures {
            threads,
            train: entries("train")?,
            infer: entries("infer")?,
        });
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's step trains: a few steps on one fixed batch lower its loss.
    #[test]
    fn bench_steps_run_and_fit_the_batch() {
        let spec = ModelSpec::parse_name("resnet8-w4").unwrap();
        let mut config = bench_config(8, 2);
        config.learning_rate = 0.05;
        let mut trainer = Trainer::new(&spec, config, 8_000).unwrap();
        let (images, labels) = random_batch(8, 3);
        let first = trainer.train_step(&images, &labels).loss;
        let mut last = first;
        for _ in 0..10 {
            last = trainer.train_step(&images, &labels).loss;
        }
        assert!(last < first, "loss {first} → {last}");
        let timing = time_inference("resnet8-w4", 4, 2, 0).unwrap();
        assert_eq!(timing.samples.len(), 2);
        assert!(timing.best_seconds() > 0.0);
    }

    /// Parallel reductions (batch-norm statistics, shard sums) add in a fixed
    /// order: two runs with the same seed on the same number of threads give
    /// bit-identical parameters, whichever worker ran which task.
    #[test]
    fn same_seed_and_threads_give_bit_identical_parameters() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let run = || {
            pool.install(|| {
                let spec = ModelSpec::parse_name("resnet8-w4").unwrap();
                let mut trainer = Trainer::new(&spec, bench_config(16, 2), 16_000).unwrap();
                for seed in 0..3 {
                    let (images, labels) = random_batch(16, seed);
                    trainer.train_step(&images, &labels);
                }
                let values: Vec<u32> = trainer
                    .store
                    .params
                    .iter()
                    .flat_map(|p| p.value.data.iter().map(|v| v.to_bits()))
                    .chain(
                        trainer
                            .store
                            .buffers
                            .iter()
                            .flat_map(|b| b.value.data.iter().map(|v| v.to_bits())),
                    )
                    .collect();
                values
            })
        };
        let first = run();
        for _ in 0..3 {
            assert!(run() == first, "parameters differ between identical runs");
        }
    }

    #[test]
    fn reads_torch_network_figures_and_names_the_file_on_errors() {
        let dir = std::env::temp_dir().join(format!("sbfnet-torch-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"runs": {"2": {"conv": [], "train": [{"model": "resnet20", "batch": 128, "images_per_s": 500.5}],
                "infer": [{"model": "resnet20", "batch": 256, "images_per_s": 1630.0}]}}}"#,
        )
        .unwrap();
        let figures = read_torch_network_json(&good).unwrap();
        assert_eq!(figures[0].threads, 2);
        assert_eq!(figures[0].train_images_per_second("resnet20", 128), Some(500.5));
        assert_eq!(figures[0].infer_images_per_second("resnet20", 256), Some(1630.0));
        assert_eq!(figures[0].train_images_per_second("resnet56", 128), None);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"runs": {"1": {"train": [{"model": "resnet20"}]}}}"#).unwrap();
        let err = read_torch_network_json(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("images_per_s"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
