//! Training and pruning through the library: the data-parallel step, resume, pruning, and the
//! checkpoint and data readers against damaged and random files.

mod checkpoint_reliability;
mod fuzz_parsers;
mod pruning;
mod training;
