//! Generalised pruning: saliency, the global ramp, and the choice of templates.

pub mod schedule;

pub use schedule::{l1_norms, select_templates, LayerFilters, Ramp};
