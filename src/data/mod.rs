//! Data: the CIFAR-10 binary format.

pub mod cifar;
