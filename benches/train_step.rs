//! Criterion bench of whole training steps (forward, cross-entropy, backward,
//! SGD) of the CIFAR ResNet-20 at batch 32 and 128, in the global rayon pool
//! with one shard per thread (as `sbfnet train`). `sbfnet bench-train` prints
//! the table beside PyTorch.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sbfnet::benchmark::train_step::{bench_config, random_batch};
use sbfnet::nn::ModelSpec;
use sbfnet::train::Trainer;

fn train_steps(c: &mut Criterion) {
    sbfnet::memory::retain_freed_memory();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    let spec = ModelSpec::parse_name("resnet20").expect("resnet20 is a known model");
    for batch in [32, 128] {
        let config = bench_config(batch, rayon::current_num_threads().min(batch));
        let mut trainer = Trainer::new(&spec, config, batch * 1_000_000).expect("valid settings");
        let (images, labels) = random_batch(batch, 0);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("resnet20/batch{batch}"), |b| {
            b.iter(|| trainer.train_step(&images, &labels).loss)
        });
    }
    group.finish();
}

criterion_group!(benches, train_steps);
criterion_main!(benches);
