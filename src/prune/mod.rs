//! Generalised pruning: saliency, the global ramp, and the choice of templates.

pub mod assignment;
pub mod convert;
pub mod ramp;
pub mod report;
pub mod schedule;

pub use assignment::{assignment_metadata, kept_outputs, restore_assignments};
pub use ramp::{prune_step, PruneSettings, PruneState};
pub use schedule::{l1_norms, select_templates, LayerFilters, Ramp};
