//! Data: the CIFAR-10 binary format, and augmented, normalised batches.

pub mod augment;
pub mod cifar;
