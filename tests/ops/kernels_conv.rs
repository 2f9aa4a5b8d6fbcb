//! The fast convolution kernels (`kernels::conv`) against their naive oracle
//! (`kernels::conv_naive`) on random data: the shapes of the CIFAR networks at
//! a small batch, and the edge cases of the register tiling (channels not a
//! multiple of the tile, batch 1, maps narrower than a vector, K = 1 and 5,
//! stride 2 and 3, padding 0 and 2), on every instruction set the CPU runs
//! (AVX2, and AVX-512 where present: each forced in turn).

use rand::{rngs::StdRng, SeedableRng};
use sbfnet::kernels::conv::ConvLayout;
use sbfnet::kernels::simd::Isa;
use sbfnet::kernels::{conv, conv_naive, ConvShape};
use sbfnet::tensor::max_scaled_difference;
use sbfnet::Tensor;

/// (N, C, F, H, W, K, stride, padding)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// The shapes of the CIFAR ResNets (3×3, pad 1), batch 2.
const NETWORK_SHAPES: [Case; 6] = [
    (2, 3, 16, 32, 32, 3, 1, 1),
    (2, 16, 16, 32, 32, 3, 1, 1),
    (2, 32, 32, 16, 16, 3, 1, 1),
    (2, 64, 64, 8, 8, 3, 1, 1),
    (2, 16, 32, 32, 32, 3, 2, 1),
    (2, 32, 64, 16, 16, 3, 2, 1),
];

/// Edges of the blocking: odd channel counts, batch 1 and 3, maps smaller than
/// one 8-pixel vector or a tile, K = 1, 2, 5, strides 2 and 3, padding 0 and 2;
/// batch 1 with rows of 16 (the weight gradient split over output channels,
/// reading dy in place); channels that leave part of a 12-row (AVX-512) tile,
/// rows of 17–20 pixels (16 lanes and a tail, or 8 lanes on AVX-512).
const EDGE_SHAPES: [Case; 18] = [
    (2, 5, 25, 16, 16, 3, 1, 1),
    (1, 7, 13, 20, 20, 3, 2, 1),
    (2, 26, 5, 18, 17, 3, 1, 1),
    (1, 3, 12, 16, 16, 3, 1, 1),
    (1, 5, 7, 13, 11, 3, 1, 1),
    (3, 3, 5, 5, 4, 3, 1, 1),
    (2, 6, 10, 9, 9, 1, 1, 0),
    (2, 4, 6, 12, 10, 5, 1, 2),
    (2, 3, 9, 11, 11, 5, 2, 2),
    (2, 4, 4, 9, 9, 3, 2, 0),
    (2, 5, 3, 7, 7, 1, 2, 0),
    (2, 3, 4, 7, 7, 2, 2, 1),
    (1, 2, 3, 8, 8, 1, 3, 0),
    (1, 2, 3, 4, 4, 3, 1, 2),
    (2, 3, 4, 1, 1, 1, 1, 0),
    (2, 3, 4, 3, 1, 3, 1, 1),
    (1, 9, 13, 6, 17, 3, 1, 1),
    (4, 1, 1, 10, 3, 3, 2, 1),
];

fn shape_of(
    &(batch, in_channels, out_channels, in_height, in_width, kernel, stride, padding): &Case,
) -> ConvShape {
    ConvShape {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// Compares all three fast kernels with the oracle on one shape, on every
/// instruction set the CPU runs. Backward kernels start from a nonzero
/// gradient to check that they accumulate.
fn check_against_oracle(case: &Case, seed: u64) {
    for isa in Isa::available() {
        check_isa_against_oracle(isa, case, seed);
    }
}

fn check_isa_against_oracle(isa: Isa, case: &Case, seed: u64) {
    let shape = shape_of(case);
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Tensor::normal(&[shape.input_len()], 1.0, &mut rng);
    let w = Tensor::normal(&[shape.weight_len()], 1.0, &mut rng);
    let dy = Tensor::normal(&[shape.output_len()], 1.0, &mut rng);
    let dx_start = Tensor::normal(&[shape.input_len()], 1.0, &mut rng);
    let dw_start = Tensor::normal(&[shape.weight_len()], 1.0, &mut rng);
    // Sums of L products of unit normals: rounding grows like √L · ε · (size of the terms).
    let tolerance = |length: usize| 1e-6 * (length as f32).sqrt().max(1.0) * 4.0;

    let mut y_fast = vec![f32::NAN; shape.output_len()];
    let mut y_naive = vec![0.0; shape.output_len()];
    conv::forward_with(isa, &shape, &x.data, &w.data, &mut y_fast);
    conv_naive::forward(&shape, &x.data, &w.data, &mut y_naive);
    let forward_length = shape.in_channels * shape.kernel * shape.kernel;
    let error = max_scaled_difference(&y_fast, &y_naive, 1e-5, tolerance(forward_length));
    assert!(
        error <= 1.0,
        "{isa:?} forward {case:?}: scaled difference {error}"
    );
    // Each output sums over (c, kh, kw) in one order with one FMA per term,
    // whatever the vector width or tile: the instruction sets agree bit for bit.
    let mut y_avx2 = vec![f32::NAN; shape.output_len()];
    conv::forward_with(Isa::Avx2, &shape, &x.data, &w.data, &mut y_avx2);
    assert!(y_avx2 == y_fast, "{isa:?} forward {case:?} differs from AVX2");
    // Both layouts, forced: the channel layout sums the same terms in the same order, only
    // without the padding taps' zeros, so it agrees bit for bit too (== holds 0.0 = −0.0).
    for layout in [ConvLayout::PixelVectors, ConvLayout::ChannelVectors] {
        let mut y_layout = vec![f32::NAN; shape.output_len()];
        conv::forward_layout_with(isa, layout, &shape, &x.data, &w.data, &mut y_layout);
        assert!(
            y_layout == y_avx2,
            "{isa:?} forward {case:?} in the {layout:?} layout differs from the default"
        );
        let mut dx_layout = dx_start.data.clone();
        let mut dx_default = dx_start.data.clone();
        conv::input_grad_layout_with(isa, layout, &shape, &dy.data, &w.data, &mut dx_layout);
        conv::input_grad_with(isa, &shape, &dy.data, &w.data, &mut dx_default);
        assert!(
            dx_layout == dx_default,
            "{isa:?} input_grad {case:?} in the {layout:?} layout differs from the default"
        );
        // The weight gradient's layouts reduce over pixels in different orders: each against
        // the oracle.
        let (mut dw_layout, mut dw_naive) = (dw_start.data.clone(), dw_start.data.clone());
        conv::weight_grad_layout_with(isa, layout, &shape, &x.data, &dy.data, &mut dw_layout);
        conv_naive::weight_grad(&shape, &x.data, &dy.data, &mut dw_naive);
        let weight_length = shape.batch * shape.out_height() * shape.out_width();
        let error = max_scaled_difference(&dw_layout, &dw_naive, 1e-5, tolerance(weight_length));
        assert!(
            error <= 1.0,
            "{isa:?} weight_grad {case:?} in the {layout:?} layout: scaled difference {error}"
        );
    }

    let (mut dx_fast, mut dx_naive) = (dx_start.data.clone(), dx_start.data.clone());
    conv::input_grad_with(isa, &shape, &dy.data, &w.data, &mut dx_fast);
    conv_naive::input_grad(&shape, &dy.data, &w.data, &mut dx_naive);
    let input_length = shape.out_channels * shape.kernel * shape.kernel;
    let error = max_scaled_difference(&dx_fast, &dx_naive, 1e-5, tolerance(input_length));
    assert!(
        error <= 1.0,
        "{isa:?} input_grad {case:?}: scaled difference {error}"
    );

    let (mut dw_fast, mut dw_naive) = (dw_start.data.clone(), dw_start.data.clone());
    conv::weight_grad_with(isa, &shape, &x.data, &dy.data, &mut dw_fast);
    conv_naive::weight_grad(&shape, &x.data, &dy.data, &mut dw_naive);
    let weight_length = shape.batch * shape.out_height() * shape.out_width();
    let error = max_scaled_difference(&dw_fast, &dw_naive, 1e-5, tolerance(weight_length));
    assert!(
        error <= 1.0,
        "{isa:?} weight_grad {case:?}: scaled difference {error}"
    );
}

#[test]
fn fast_conv_matches_naive_on_network_shapes() {
    if !Isa::Avx512.is_supported() {
        eprintln!("skipped: the AVX-512 path (this CPU has no AVX-512F+VL)");
    }
    for (i, case) in NETWORK_SHAPES.iter().enumerate() {
        check_against_oracle(case, 100 + i as u64);
    }
}

#[test]
fn fast_conv_matches_naive_on_blocking_edges() {
    for (i, case) in EDGE_SHAPES.iter().enumerate() {
        check_against_oracle(case, 200 + i as u64);
    }
}

/// The batch split of the weight gradient (one or two chunks per thread, groups
/// of several images) and the nested image × channel-block split, on 1 and 3
/// threads, with a batch that does not divide evenly.
#[test]
fn fast_conv_matches_naive_on_other_thread_counts() {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            check_against_oracle(&(5, 8, 12, 10, 10, 3, 1, 1), 300 + threads as u64);
            check_against_oracle(&(7, 16, 8, 8, 8, 3, 2, 1), 310 + threads as u64);
            // several images per weight-gradient group with rows a multiple of 8
            // (the channel-major copy of dy)
            check_against_oracle(&(8, 16, 12, 8, 8, 3, 1, 1), 320 + threads as u64);
            // two weight-gradient chunks per thread on 1 thread (batch ≥ 16), one
            // per thread on 3: the first chunk sums straight into dW, the others
            // into partials added after
            check_against_oracle(&(17, 4, 8, 6, 6, 3, 1, 1), 330 + threads as u64);
            // many channels on a small map: the weight gradient splits over
            // output channels on 3 threads (the padded batch is smaller than 2·|dW|)
            check_against_oracle(&(6, 16, 16, 4, 4, 3, 1, 1), 340 + threads as u64);
        });
    }
}

/// Each pass picks the channel layout on the small maps of a large batch on AVX-512 (where it
/// skips many padding taps and fills every lane), and the pixel layout on large maps of few
/// channels, on batches too small to give every thread two tasks, and on AVX2.
#[test]
fn layout_choice_follows_the_map_and_the_batch() {
    let shape = |batch, channels, size| ConvShape {
        batch,
        in_channels: channels,
        in_height: size,
        in_width: size,
        out_channels: channels,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    for isa in Isa::available() {
        for choose in [
            ConvLayout::for_forward,
            ConvLayout::for_input_grad,
            ConvLayout::for_weight_grad,
        ] {
            let choose = |s: ConvShape| choose(isa, &s, 2);
            // AVX2 keeps the pixel layout (its 16 registers hold no good channel tile).
            let small_maps = match isa {
                Isa::Avx2 => ConvLayout::PixelVectors,
                Isa::Avx512 => ConvLayout::ChannelVectors,
            };
            assert_eq!(choose(shape(1024, 256, 3)), small_maps, "{isa:?}");
            assert_eq!(choose(shape(1024, 256, 7)), small_maps, "{isa:?}");
            assert_eq!(choose(shape(8, 256, 7)), ConvLayout::PixelVectors, "{isa:?}");
            assert_eq!(choose(shape(128, 16, 32)), ConvLayout::PixelVectors, "{isa:?}");
        }
    }
}

/// The channel layout's tasks of several images, with a batch that leaves the last task
/// short, on 1 and 3 threads, where the kernels choose it by themselves (on AVX-512; the
/// oracle check forces it on AVX2 too); stride 1 and 2.
#[test]
fn channel_layout_matches_naive_on_batches_that_choose_it() {
    let cases: [Case; 2] = [(37, 24, 64, 5, 5, 3, 1, 1), (37, 24, 64, 8, 7, 3, 2, 1)];
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (i, case) in cases.iter().enumerate() {
            let shape = shape_of(case);
            if Isa::Avx512.is_supported() {
                for choose in [
                    ConvLayout::for_forward,
                    ConvLayout::for_input_grad,
                    ConvLayout::for_weight_grad,
                ] {
                    assert_eq!(
                        choose(Isa::Avx512, &shape, threads),
                        ConvLayout::ChannelVectors,
                        "{case:?}"
                    );
                }
            }
            pool.install(|| check_against_oracle(case, 500 + 10 * threads as u64 + i as u64));
        }
    }
}

/// Workspaces are reused between calls: a big shape, then a small one, then
/// the big one again must give the oracle's answers each time (stale buffer
/// contents never leak into a result).
#[test]
fn reused_workspaces_do_not_leak_between_calls() {
    for (i, case) in [
        (2, 16, 16, 16, 16, 3, 1, 1),
        (1, 3, 4, 5, 5, 3, 2, 1),
        (2, 16, 16, 16, 16, 3, 1, 1),
        // the same shape again with other weights: each thread's packed
        // weight panels must be packed anew for every call
        (2, 16, 16, 16, 16, 3, 1, 1),
    ]
    .iter()
    .enumerate()
    {
        check_against_oracle(case, 400 + i as u64);
    }
}
