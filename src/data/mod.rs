//! Data: the CIFAR-10 binary format, and downloading it.

pub mod cifar;
pub mod download;
