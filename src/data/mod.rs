//! Data: the CIFAR-10 binary format, downloading it, augmented and normalised
//! batches, and small generated sets for tests.

pub mod augment;
pub mod cifar;
pub mod download;
pub mod synthetic;
