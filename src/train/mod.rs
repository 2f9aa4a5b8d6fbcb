//! Training: the data-parallel trainer, SGD, learning-rate schedules,
//! per-epoch metrics and learning curves, checkpoints, time budgets, weight averaging.

pub mod checkpoint;
pub mod distillation;
pub mod metrics;
pub mod numerics;
pub mod optimizer;
pub mod schedule;
pub mod time_budget;
pub mod trainer;
pub mod validate;
pub mod weight_average;

pub use distillation::Distillation;
pub use numerics::{NonFinitePolicy, NumericalFault};
pub use optimizer::{Sgd, SgdConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    evaluate, evaluate_views, load_model, EpochResult, Evaluation, Objective, Progress, StepResult,
    TestViews, TrainConfig, Trainer,
};
pub use weight_average::WeightAverage;
