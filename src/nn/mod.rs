//! Layers that own parameters, and the models built from them.

pub mod batch_norm2d;
pub mod conv2d;
pub mod cost;
pub mod linear;
pub mod sbf_conv2d;

pub use batch_norm2d::BatchNorm2d;
pub use conv2d::Conv2d;
pub use cost::LayerCost;
pub use linear::Linear;
pub use sbf_conv2d::{SbfConv2d, TransformInit};
