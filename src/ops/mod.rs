//! Differentiable ops. One file per op: its forward, its backward and the
//! index formulas, side by side. Each op computes its value now and records a
//! backward closure on the tape.

pub mod batch_norm;
pub mod conv;
pub mod distillation;
pub mod gelu;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod sbf;
pub mod shape;
pub mod unary;

pub use batch_norm::batch_norm2d;
pub use conv::{conv2d, ConvConfig};
pub use gelu::gelu;
pub use linear::linear;
pub use loss::cross_entropy;
pub use pool::{global_avg_pool, max_pool};
pub use relu::relu;
pub use sbf::{sbf_conv2d, SbfConfig, SbfPath, TemplateAssignment, TransformFamily};
pub use shape::{add, flatten, mul, scale, shortcut_option_a};
