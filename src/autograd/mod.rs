//! Reverse-mode automatic differentiation: the tape, and the parameters that outlive it.

mod params;
mod tape;

pub use params::{BatchStatistics, Buffer, BufferId, ParamId, ParamStore, Parameter};
pub use tape::{BackwardContext, Mode, Tape, Var};
