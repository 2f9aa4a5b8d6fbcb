//! Criterion bench of the fast convolution kernels on a few CIFAR ResNet
//! shapes (batch 8 and 128), forward and forward + backward, in the global
//! rayon pool. `sbfnet bench` prints the full table with GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, SeedableRng};
use sbfnet::benchmark::conv::BenchShape;
use sbfnet::kernels::conv;
use sbfnet::Tensor;

fn conv_passes(c: &mut Criterion) {
    let shapes = [
        (8, 16, 16, 32, 1),
        (8, 64, 64, 8, 1),
        (128, 32, 32, 16, 1),
        (128, 16, 32, 32, 2),
    ];
    let mut group = c.benchmark_group("conv3x3");
    group.sample_size(10);
    for (batch, in_channels, out_channels, size, stride) in shapes {
        let shape = BenchShape {
            batch,
            in_channels,
            out_channels,
            size,
            stride,
        }
        .conv_shape();
        let mut rng = StdRng::seed_from_u64(0);
        let x = Tensor::normal(&[shape.input_len()], 1.0, &mut rng);
        let w = Tensor::normal(&[shape.weight_len()], 0.1, &mut rng);
        let dy = Tensor::normal(&[shape.output_len()], 1.0, &mut rng);
        let (mut y, mut dx, mut dw) = (
            vec![0.0; shape.output_len()],
            vec![0.0; shape.input_len()],
            vec![0.0; shape.weight_len()],
        );
        let name = format!("{batch}x{in_channels}->{out_channels}@{size}s{stride}");
        group.throughput(Throughput::Elements(2 * shape.macs() as u64));
        group.bench_function(format!("forward/{name}"), |b| {
            b.iter(|| conv::forward(&shape, &x.data, &w.data, &mut y))
        });
        group.throughput(Throughput::Elements(6 * shape.macs() as u64));
        group.bench_function(format!("fwd+bwd/{name}"), |b| {
            b.iter(|| {
                conv::forward(&shape, &x.data, &w.data, &mut y);
                conv::input_grad(&shape, &dy.data, &w.data, &mut dx);
                conv::weight_grad(&shape, &x.data, &dy.data, &mut dw);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, conv_passes);
criterion_main!(benches);
