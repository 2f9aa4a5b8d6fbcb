//! # sbfnet
//!
//! A from-scratch CPU deep-learning framework built around one layer: the
//! SBF layer of "Reconstructing Pruned Filters using Cheap Spatial
//! Transformations" (Miles & Mikolajczyk, arXiv 2110.12844).
//!
//! ## The SBF layer in ten lines
//!
//! A convolution has N filters `W[n] ∈ R^{C×K×K}`. The SBF layer keeps only M < N of
//! them, the **templates** `B [M, C, K, K]`; every other output n is a cheap transform
//! of its template `m(n) = n mod M`: a learned K×K **mask** per input-channel **group**
//! (G groups of C/G channels), `Weff[n,i,kh,kw] = B[m(n),i,kh,kw] · T[n−M, g(i), kh, kw]`
//! for n ≥ M, with the masks `T [N−M, G, K, K]`. Outputs 0..M are the templates
//! themselves (no mask). This is a fresh layer's round-robin layout; after pruning,
//! the kept filters stay at their own output positions and the r-th pruned one reads
//! mask row r ([`ops::TemplateAssignment`]). Because a mask does not depend on the
//! channel within a group, it factors out of the channel sum, giving **two stages**:
//! stage 1, a grouped 1×1 convolution of x with each of the K² tap slices of B (the maps
//! `P [G, K², M, H, W]`, one GEMM); stage 2, a gather that sums, for each output pixel,
//! the G·K² maps of its template read at the tap's offset and scaled by the mask.
//! Cost relative to the dense convolution (MACs and parameters): `M/N + G/C − G·M/(C·N)`
//! (e.g. C = N = 512, G = 2, M = 51: about 10 %). See [`ops::sbf`] and [`nn::SbfConv2d`].
//!
//! ## Module map (dependencies point downward)
//!
//! - [`tensor`] — shape + contiguous `Vec<f32>` (NCHW), seeded initialisers
//! - [`autograd`] — the define-by-run tape (`Tape::push` records a backward closure) and the parameter store
//! - [`kernels`] — plain loops over slices: the dense conv ([`kernels::conv`], its oracle
//!   [`kernels::conv_naive`], the SIMD [`kernels::microkernel`]), the SBF stages ([`kernels::sbf`],
//!   each fast kernel beside its `*_naive` oracle) and the effective filters ([`kernels::sbf_filters`])
//! - [`ops`] — differentiable ops, forward and backward side by side (conv2d, sbf_conv2d, batch norm,
//!   relu, pools, linear, cross-entropy, add/mul/flatten/shortcut)
//! - [`nn`] — layers that own parameters ([`nn::Conv2d`], [`nn::SbfConv2d`], [`nn::BatchNorm2d`],
//!   [`nn::Linear`]), [`nn::cost`] (MACs and parameters per layer), [`nn::model`] (ResNet / VGG specs)
//! - [`data`] — the CIFAR-10 binary format ([`data::cifar`]), [`data::download`],
//!   [`data::augment`] (crops, flips, normalisation), [`data::synthetic`] (small generated sets for tests)
//! - [`checkpoint`] — the checkpoint file format (atomic writes, checksums) and a model's
//!   parameters, buffers and SBF assignments saved in it and rebuilt from it
//! - [`prune`] — generalised pruning (saliency, the ramp, template selection)
//! - [`train`] — the data-parallel trainer, SGD, learning-rate schedules, evaluation,
//!   [`train::numerics`] (non-finite detection), [`train::validate`] (settings checked before a run)
//! - [`gradcheck`] — the central finite-difference checker
//! - [`benchmark`] — timing helpers for `sbfnet bench` and `sbfnet bench-train`
//! - [`memory`] — glibc malloc tuning (keep freed memory across training steps)
//! - [`error`] — [`Error`]: one line naming the file and the problem
//!
//! ## A first run
//!
//! Build an SBF layer (8 outputs from 2 templates, G = 2, stride 2), run it forward on a
//! tape, backward, then check the op's gradients against central finite differences:
//!
//! ```
//! use rand::{rngs::StdRng, SeedableRng};
//! use sbfnet::gradcheck::{check_gradients, GradcheckOptions};
//! use sbfnet::nn::SbfConv2d;
//! use sbfnet::ops::{self, SbfConfig};
//! use sbfnet::{Mode, ParamStore, Tape, Tensor};
//!
//! let mut rng = StdRng::seed_from_u64(0);
//! let mut store = ParamStore::default();
//! // C = 4 inputs, N = 8 outputs, M = 2 templates, K = 3; stride 2, padding 1, G = 2.
//! let layer = SbfConv2d::new(&mut store, "sbf", 4, 8, 2, 3, SbfConfig::new(2, 1, 2), true, &mut rng);
//!
//! let mut tape = Tape::new(&store, Mode::Train);
//! let x = tape.input(Tensor::normal(&[2, 4, 5, 5], 1.0, &mut rng)); // [Bt, C, H, W]
//! let y = layer.forward(&mut tape, x); // [2, 8, 3, 3]
//! assert_eq!(tape.value(y).shape, [2, 8, 3, 3]);
//! let logits = ops::global_avg_pool(&mut tape, y); // [2, 8]
//! let loss = ops::cross_entropy(&mut tape, logits, &[1, 5], 0.0);
//! tape.backward(loss);
//! let gradients: Vec<_> = tape.param_gradients().map(|(id, g)| (id, g.clone())).collect();
//! drop(tape);
//! for (id, g) in &gradients {
//!     store.params[id.0].grad.add_assign(g);
//! }
//! assert!(store.grad(layer.templates).data.iter().any(|g| *g != 0.0));
//!
//! // The same op with x, B and T as inputs of the gradient check.
//! let inputs = [
//!     Tensor::normal(&[1, 4, 5, 5], 1.0, &mut rng),
//!     store.value(layer.templates).clone(),
//!     Tensor::normal(&[6, 2, 3, 3], 1.0, &mut rng), // masks [N−M, G, K, K]
//! ];
//! let (assignment, config) = (layer.assignment.clone(), layer.config);
//! let report = check_gradients(
//!     |tape, v| ops::sbf_conv2d(tape, v[0], v[1], v[2], None, &assignment, config),
//!     &inputs,
//!     &GradcheckOptions::default(),
//! )
//! .expect("analytic and numeric gradients agree");
//! assert_eq!(report.checked, 100 + 72 + 108);
//! ```
//!
//! More to run first: `cargo run --release --example gradcheck_op` (write an op, check it,
//! watch a wrong backward fail) and `cargo run --release --example train_tiny`.

pub mod autograd;
pub mod benchmark;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gradcheck;
pub mod kernels;
pub mod memory;
pub mod nn;
pub mod ops;
pub mod prune;
pub mod tensor;
pub mod train;

pub use autograd::{Mode, ParamId, ParamStore, Tape, Var};
pub use error::{Error, Result};
pub use tensor::Tensor;
