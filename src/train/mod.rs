//! Training: the data-parallel trainer, SGD, learning-rate schedules,
//! per-epoch metrics and learning curves, checkpoints.

pub mod checkpoint;
pub mod distillation;
pub mod metrics;
pub mod numerics;
pub mod optimizer;
pub mod schedule;
pub mod trainer;
pub mod validate;

pub use distillation::Distillation;
pub use numerics::{NonFinitePolicy, NumericalFault};
pub use optimizer::{Sgd, SgdConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    evaluate, load_model, EpochResult, Evaluation, Objective, Progress, StepResult, TrainConfig, Trainer,
};
