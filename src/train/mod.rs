//! Training: the data-parallel trainer, SGD, learning-rate schedules,
//! per-epoch metrics and learning curves, checkpoints, time budgets, weight averaging.

pub mod config;
pub mod distillation;
pub mod evaluate;
pub mod metrics;
pub mod numerics;
pub mod optimizer;
pub mod parallel;
pub mod schedule;
pub mod time_budget;
pub mod trainer;
pub mod validate;
pub mod weight_average;

pub use config::TrainConfig;
pub use distillation::Distillation;
pub use evaluate::{evaluate, evaluate_views, Evaluation, TestViews};
pub use numerics::{NonFinitePolicy, NumericalFault};
pub use optimizer::{Sgd, SgdConfig};
pub use parallel::{data_parallel_gradients, Objective};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{EpochResult, Progress, StepResult, Trainer};
pub use weight_average::WeightAverage;
