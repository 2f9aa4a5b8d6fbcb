//! Layers that own parameters, and the models built from them.

pub mod batch_norm2d;
pub mod conv2d;
pub mod linear;

pub use batch_norm2d::BatchNorm2d;
pub use conv2d::Conv2d;
pub use linear::Linear;
