//! A tiny SBF ResNet learns a generated CIFAR-like task in a few seconds, through the same
//! training loop as `sbfnet train` ([`sbfnet::train::run`]), printing each epoch.
//!
//! ```text
//! cargo run --release --example train_tiny
//! ```
//!
//! Task: 32×32 colour images of 10 classes that differ by mean colour, noise added
//! (`sbfnet::data::synthetic`). Model: ResNet-8 at a quarter of the width, every body
//! convolution an SBF layer with half of its filters transformed copies of the other half
//! (G = 2). The run writes its checkpoints, metrics.csv and learning curve into a temporary
//! folder, as a real run does into runs/.
//!
//! To see the tape itself (forward, backward, gradients) on one layer, read the crate docs'
//! first example (`cargo doc --open`) and examples/gradcheck_op.rs.

use sbfnet::data::synthetic::synthetic_set;
use sbfnet::nn::{ConvPlan, ModelSpec};
use sbfnet::train::{self, EpochReport, Observer, Progress, RunOptions, TrainConfig, Trainer};

/// Prints one line per epoch, and a dot every tenth step.
struct PrintEpochs;

impl Observer for PrintEpochs {
    fn step(&mut self, progress: &Progress) {
        if progress.step.is_multiple_of(10) {
            print!(".");
        }
    }

    fn epoch_finished(&mut self, report: &EpochReport) {
        let r = &report.result;
        let test = report.evaluation.as_ref().map_or(0.0, |e| e.accuracy);
        println!(
            " epoch {}/{}: train loss {:.3}, train accuracy {:.1}%, test accuracy {:.1}%",
            r.epoch,
            report.planned_epochs,
            r.loss,
            100.0 * r.accuracy,
            100.0 * test
        );
    }
}

fn main() -> sbfnet::Result<()> {
    let (train_set, test_set) = (synthetic_set(1024, 10, 1), synthetic_set(256, 10, 2));
    let mut spec = ModelSpec::parse_name("resnet8-w4")?;
    spec.convs = ConvPlan::parse("sbf:rate=0.5,groups=2").map_err(sbfnet::Error::msg)?;
    let config = TrainConfig {
        epochs: 4,
        batch_size: 64,
        learning_rate: 0.05,
        warmup_epochs: 1,
        shards: 1,
        ..TrainConfig::recipe()
    };
    let mut trainer = Trainer::new(&spec, config, train_set.len())?;
    let table = trainer.model.layer_table(&trainer.store);
    println!(
        "{}: {} learned scalars, {:.2} M MACs per image",
        trainer.model.description(),
        trainer.store.num_scalars(),
        table.iter().map(|row| row.macs).sum::<usize>() as f64 / 1e6
    );
    let out = std::env::temp_dir().join(format!("sbfnet-train-tiny-{}", std::process::id()));
    let summary = train::run(
        &mut trainer,
        &train_set,
        &test_set,
        &RunOptions::new(&out),
        &mut PrintEpochs,
    )?;
    println!(
        "best test accuracy {:.1}% after {} epochs; checkpoints and metrics in {}",
        100.0 * summary.best_test_accuracy,
        summary.epochs,
        out.display()
    );
    Ok(())
}
