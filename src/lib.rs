//! # sbfnet
//!
//! A from-scratch CPU deep-learning framework built around one layer: the
//! SBF layer of "Reconstructing Pruned Filters using Cheap Spatial
//! Transformations" (Miles & Mikolajczyk, arXiv 2110.12844).
//!
//! Module map (dependencies point downward):
//! - [`tensor`]: shape + contiguous `Vec<f32>` (NCHW)
//! - [`autograd`]: the tape and the parameter store
//! - [`kernels`]: plain loops over slices; naive oracles beside fast versions
//! - [`ops`]: differentiable ops, forward and backward side by side
//! - [`nn`]: layers that own parameters (Conv2d, BatchNorm2d, Linear) and the models
//! - [`gradcheck`]: the finite-difference checker

pub mod autograd;
pub mod gradcheck;
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod tensor;

pub use autograd::{Mode, ParamId, ParamStore, Tape, Var};
pub use tensor::Tensor;
