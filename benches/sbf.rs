//! Criterion benches of the SBF layer on small shapes: the fused kernels alone, and the layer's
//! forward and forward+backward on both paths. `cargo bench --bench sbf`.
//! (The full CIFAR-shape comparison with the dense conv is `sbfnet::benchmark::sbf::run`.)

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{rngs::StdRng, SeedableRng};
use sbfnet::kernels::sbf::{self as kernel, SbfShape};
use sbfnet::ops::sbf::{sbf_conv2d, SbfConfig, SbfPath, TemplateAssignment};
use sbfnet::{Mode, ParamStore, Tape, Tensor};

fn bench_sbf(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let (batch, channels, size, templates, groups) = (8, 32, 16, 10, 2); // 70 % of the filters transformed
    let x = Tensor::normal(&[batch, channels, size, size], 1.0, &mut rng);
    let b = Tensor::kaiming_normal(&[templates, channels, 3, 3], &mut rng);
    let t = Tensor::normal(&[channels - templates, groups, 3, 3], 1.0, &mut rng);
    let assignment = TemplateAssignment::round_robin(channels, templates);
    for stride in [1, 2] {
        let shape = SbfShape {
            batch,
            in_channels: channels,
            in_height: size,
            in_width: size,
            out_channels: channels,
            templates,
            kernel: 3,
            stride,
            padding: 1,
            groups,
        };
        let x_strided = &x.data;
        let mut y = vec![0.0; shape.output_len()];
        let dy = vec![1.0; shape.output_len()];
        let mut dx = vec![0.0; shape.input_len()];
        c.bench_function(&format!("sbf fused forward 32ch 16x16 M10 s{stride}"), |bench| {
            bench.iter(|| kernel::fused_forward(&shape, &assignment, x_strided, &b.data, &t.data, &mut y))
        });
        c.bench_function(
            &format!("sbf fused input grad 32ch 16x16 M10 s{stride}"),
            |bench| {
                bench.iter(|| {
                    let grads = kernel::SbfGrads {
                        input: Some(&mut dx),
                        templates: None,
                        masks: None,
                    };
                    kernel::fused_backward(&shape, &assignment, x_strided, &b.data, &t.data, &dy, grads)
                })
            },
        );
    }
    let store = ParamStore::default();
    for path in [SbfPath::Fused, SbfPath::EffectiveFilters] {
        let config = SbfConfig {
            path,
            ..SbfConfig::new(1, 1, groups)
        };
        c.bench_function(&format!("sbf layer forward {path:?}"), |bench| {
            bench.iter(|| {
                let mut tape = Tape::new(&store, Mode::Eval);
                let v = [&x, &b, &t].map(|v| tape.input(v.clone()));
                sbf_conv2d(&mut tape, v[0], v[1], v[2], None, &assignment, config)
            })
        });
        c.bench_function(&format!("sbf layer forward+backward {path:?}"), |bench| {
            bench.iter(|| {
                let mut tape = Tape::new(&store, Mode::Train);
                let v = [&x, &b, &t].map(|v| tape.leaf(v.clone()));
                let out = sbf_conv2d(&mut tape, v[0], v[1], v[2], None, &assignment, config);
                let seed = Tensor::full(&tape.value(out).shape, 1.0);
                tape.backward_with(out, seed);
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_sbf
}
criterion_main!(benches);
