//! Training: the data-parallel trainer, SGD, learning-rate schedules,
//! per-epoch metrics and learning curves, checkpoints, time budgets, weight averaging.

pub mod config;
pub mod distillation;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod evaluate;
pub mod lookahead;
pub mod metrics;
pub mod numerics;
pub mod optimizer;
pub mod parallel;
pub mod partial_epoch;
pub mod report;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod time_budget;
pub mod trainer;
pub mod validate;
pub mod weight_average;

pub use config::TrainConfig;
pub use distillation::Distillation;
pub use evaluate::{evaluate, evaluate_views, evaluate_views_with_progress, Evaluation, TestViews};
pub use numerics::{NonFinitePolicy, NumericalFault};
pub use optimizer::{Sgd, SgdConfig};
pub use parallel::{
    data_parallel_gradients, data_parallel_gradients_in, Objective, ShardExchange, ShardLayout,
};
pub use partial_epoch::PartialEpoch;
pub use run::{
    run, EpochReport, Observer, PruningSummary, RunEnd, RunOptions, RunSummary, Silent, EVAL_EVERY_KEY,
    TEST_IMAGES_KEY, TEST_VIEWS_KEY,
};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{EpochResult, Progress, StepResult, Trainer, THREADS_KEY};
pub use weight_average::WeightAverage;
