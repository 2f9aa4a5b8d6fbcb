//! A NaN or infinite loss or gradient: the run stops with one line naming the
//! step and where the fault appeared, and keeps its last good checkpoint
//! (resuming from it repeats an uninterrupted run bit for bit); with
//! `--on-nonfinite skip` the batch is skipped with the parameters unchanged.
//!
//! Faults are injected with the binary's `SBFNET_TEST_POISON_STEP` hook (a NaN
//! pixel in the batch of the listed steps), with the trainer's `batch_hook`,
//! and by a learning rate that makes training diverge.

use super::common::*;
use rand::{rngs::StdRng, SeedableRng};
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::augment::{make_batch, Augmentation};
use sbfnet::data::synthetic::synthetic_set;
use sbfnet::nn::ModelSpec;
use sbfnet::train::numerics::{all_finite, NonFinitePolicy, Site};
use sbfnet::train::{TrainConfig, Trainer};

#[test]
fn a_poisoned_batch_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let (root, data) = fixture("fault-stop");
    let reference = uninterrupted_run(&root, &data, "reference");
    let out = root.join("poisoned");

    // Step 6 is epoch 2, batch 2.
    let output = train_command(&data, &out, &[])
        .env("SBFNET_TEST_POISON_STEP", "6")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "the poisoned run succeeded:\n{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // (A ReLU maps NaN to 0, so the loss may stay finite while the gradient is NaN:
    // either way the second forward pass finds where the NaN entered.)
    assert!(
        stderr.starts_with("error: training diverged at step 6 (epoch 2, batch 2/4): "),
        "{stderr}"
    );
    let kept = format!(
        "the first non-finite value of the forward pass is in the input images (shard 1 of 3); nothing of \
         epoch 2 is saved, {} (epoch 1) is kept",
        out.join("last.ckpt").display()
    );
    assert!(stderr.contains(&kept), "{stderr}");
    assert!(
        stdout.contains("epoch   1/3") && !stdout.contains("epoch   2/3"),
        "{stdout}"
    );

    // last.ckpt is epoch 1's, untouched: resuming from it ends exactly as the uninterrupted run.
    assert_eq!(epoch_of(&out.join("last.ckpt")), 1);
    assert_eq!(metrics_without_timings(&out).len(), 2, "header and epoch 1");
    succeed(&mut resume_command(&data, &out));
    assert_same_state(&out.join("last.ckpt"), &reference.join("last.ckpt"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn with_on_nonfinite_skip_poisoned_batches_are_skipped_and_counted() {
    let (root, data) = fixture("fault-skip");
    let out = root.join("skipping");
    let stdout = succeed(
        train_command(&data, &out, &["--on-nonfinite", "skip"]).env("SBFNET_TEST_POISON_STEP", "2,7"),
    );
    let skipped: Vec<&str> = stdout.lines().filter(|l| l.starts_with("skipped ")).collect();
    assert_eq!(skipped.len(), 2, "{stdout}");
    for (line, step) in skipped
        .iter()
        .zip(["step 2 (epoch 1, batch 2/4)", "step 7 (epoch 2, batch 3/4)"])
    {
        assert!(line.starts_with(&format!("skipped {step}: ")), "{line}");
        assert!(
            line.ends_with(
                "the first non-finite value of the forward pass is in the input images (shard 1 of 3)"
            ),
            "{line}"
        );
    }
    let epoch_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epoch_lines.len(), 3, "{stdout}");
    assert!(
        epoch_lines[0].ends_with("1 batch(es) skipped (non-finite)"),
        "{stdout}"
    );
    assert!(
        epoch_lines[1].ends_with("1 batch(es) skipped (non-finite)"),
        "{stdout}"
    );
    assert!(!epoch_lines[2].contains("skipped"), "{stdout}");
    let last = Checkpoint::load(&out.join("last.ckpt")).unwrap();
    assert_eq!(
        last.get("step"),
        Some("12"),
        "skipped batches still count as steps"
    );
    for (name, tensor) in &last.tensors {
        assert!(all_finite(&tensor.data), "{name} is not finite");
    }

    // An epoch in which every batch is skipped stops the run.
    let dead = root.join("dead");
    let output = train_command(&data, &dead, &["--on-nonfinite", "skip"])
        .env("SBFNET_TEST_POISON_STEP", "5,6,7,8")
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(
        stderr.contains("every batch of epoch 2 had a non-finite loss or gradient"),
        "{stderr}"
    );
    assert_eq!(epoch_of(&dead.join("last.ckpt")), 1);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_diverging_learning_rate_names_the_step_and_a_layer() {
    let (root, data) = fixture("fault-lr");
    let out = root.join("diverged");
    let output = train_command(&data, &out, &["--lr", "1e30"]).output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Where the first non-finite number appears depends on the arithmetic; that a
    // step and a layer are named does not.
    let step: usize = stderr
        .strip_prefix("error: training diverged at step ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {stderr}"));
    assert!(step >= 1, "{stderr}");
    assert!(stderr.contains(" layer "), "no layer named: {stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

fn tiny_trainer(policy: NonFinitePolicy) -> Trainer {
    let mut config = TrainConfig::recipe();
    config.batch_size = 8;
    config.shards = 2;
    config.epochs = 2;
    config.warmup_epochs = 0;
    let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
    let mut trainer = Trainer::new(&spec, config, 32).unwrap();
    trainer.on_nonfinite = policy;
    trainer
}

#[test]
fn a_faulty_step_leaves_parameters_momentum_and_statistics_unchanged() {
    let set = synthetic_set(32, 4, 3);
    let mut trainer = tiny_trainer(NonFinitePolicy::Stop);
    let (x, labels) = make_batch(
        &set,
        &(0..8).collect::<Vec<_>>(),
        &Augmentation::NONE,
        &mut StdRng::seed_from_u64(0),
    );
    assert_eq!(trainer.train_step(&x, &labels).fault, None);
    let before = (trainer.store.clone(), trainer.optimizer.velocity.clone());
    let mut poisoned = x.clone();
    poisoned.data[3 * 3072 + 5] = f32::INFINITY; // image 3: the first shard holds images 0..4
    let result = trainer.train_step(&poisoned, &labels);
    let fault = result.fault.expect("no fault reported");
    assert!(fault.can_skip(), "{fault:?}");
    let forward = fault.forward_site().expect("the forward pass was not searched");
    assert_eq!(
        (&forward.site, forward.shard, forward.shards),
        (&Site::InputImages, 0, 2)
    );
    assert_eq!(trainer.step, 2, "the skipped step still counts");
    for (a, b) in trainer.store.params.iter().zip(&before.0.params) {
        assert_eq!(a.value, b.value, "{}", a.name);
    }
    for (a, b) in trainer.store.buffers.iter().zip(&before.0.buffers) {
        assert_eq!(a.value, b.value, "{}", a.name);
    }
    assert_eq!(trainer.optimizer.velocity, before.1);
}

#[test]
fn train_epoch_stops_or_skips_as_told() {
    let set = synthetic_set(32, 4, 3);
    let poison = |trainer: &mut Trainer, at: usize| {
        trainer.batch_hook = Some(Box::new(move |step, batch| {
            if step == at {
                batch.data[100] = f32::NAN;
            }
        }))
    };
    let mut stopping = tiny_trainer(NonFinitePolicy::Stop);
    poison(&mut stopping, 3);
    let fault = stopping.train_epoch(&set, |_| {}).unwrap_err();
    assert_eq!(
        (fault.step, fault.epoch, fault.batch, fault.batches),
        (3, 1, 3, 4)
    );
    assert!(
        fault
            .to_string()
            .starts_with("step 3 (epoch 1, batch 3/4): the loss is"),
        "{fault}"
    );

    let mut skipping = tiny_trainer(NonFinitePolicy::Skip);
    poison(&mut skipping, 3);
    let mut skipped_seen = Vec::new();
    let result = skipping
        .train_epoch(&set, |p| skipped_seen.push(p.skipped_batches))
        .unwrap();
    assert_eq!(skipped_seen, vec![0, 0, 1, 1]);
    assert_eq!(result.skipped.len(), 1);
    assert_eq!(result.skipped[0].step, 3);
    assert!(result.loss.is_finite() && result.accuracy.is_finite());
    assert_eq!((skipping.epoch, skipping.step), (1, 4));
}
