//! Training: checkpoints.

pub mod checkpoint;
