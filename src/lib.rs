//! # sbfnet
//!
//! A from-scratch CPU deep-learning framework built around one layer: the
//! SBF layer of "Reconstructing Pruned Filters using Cheap Spatial
//! Transformations" (Miles & Mikolajczyk, arXiv 2110.12844).
//!
//! Module map (dependencies point downward):
//! - [`tensor`] — shape + contiguous `Vec<f32>` (NCHW)
//! - [`autograd`] — the tape and the parameter store
//! - [`kernels`] — plain loops over slices; naive oracles beside fast versions
//! - [`ops`] — differentiable ops, forward and backward side by side
//! - [`nn`] — layers that own parameters (Conv2d, BatchNorm2d, Linear) and the models
//! - [`data`] — the CIFAR-10 binary format, download, augmentation
//! - [`train`] — the data-parallel trainer, SGD, learning-rate schedules, checkpoints
//! - [`prune`] — generalised pruning (saliency, the ramp, template selection)
//! - [`gradcheck`] — the finite-difference checker
//! - [`benchmark`] — timing helpers for `sbfnet bench` and `sbfnet bench-train`
//! - [`memory`] — glibc malloc tuning (keep freed memory across training steps)

pub mod autograd;
pub mod benchmark;
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
