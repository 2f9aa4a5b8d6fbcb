//! The `sbfnet` command end to end, as a child process on generated CIFAR-format folders:
//! training, resume after kill -9 and Ctrl-C, numerical faults, pruning, download, and the
//! one-line refusals of bad settings.

mod common;
#[cfg(feature = "mpi")]
mod distributed;
mod download;
mod interop;
mod kill_resume;
mod numerical_faults;
mod pruning;
mod train;
