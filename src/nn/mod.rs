//! Layers that own parameters, and the models built from them.

pub mod airbench;
pub mod batch_norm2d;
pub mod conv2d;
pub mod conv_layer;
pub mod cost;
pub mod linear;
pub mod model;
pub mod resnet;
pub mod sbf_conv2d;
pub mod vgg;
pub mod whitening;

pub use batch_norm2d::BatchNorm2d;
pub use conv2d::Conv2d;
pub use conv_layer::{ConvKind, ConvLayer, ConvPlan};
pub use cost::LayerCost;
pub use linear::Linear;
pub use model::{LayerRow, Model, ModelSpec, Network};
pub use sbf_conv2d::{SbfConv2d, TemplateChoice, TransformInit};
