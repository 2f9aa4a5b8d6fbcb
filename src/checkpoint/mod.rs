//! Checkpoints: the file format, and a model's parameters, buffers and SBF
//! template assignments saved in it and rebuilt from it.
//!
//! Everything that reads or writes a model from disk lives here, below pruning
//! and training, so both can use it without depending on each other.

pub mod assignment;
pub mod format;
pub mod model_io;
pub mod onnx;
pub mod safetensors;

pub use assignment::{assignment_metadata, kept_outputs, restore_assignments};
pub use format::{
    fnv1a64, remove_stale_temporaries, temporary_path, write_atomically, Checkpoint, FORMAT_VERSION,
};
pub use model_io::{
    load_model, load_model_tensors, load_prefixed_model_tensors, model_tensors, EMA_UPDATES_KEY, LIVE_PREFIX,
};
