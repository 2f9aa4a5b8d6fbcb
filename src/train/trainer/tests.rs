//! The trainer's tests: the weight average, the residual start, the planned length and the
//! masks' learning rate, each across a checkpoint where it has one.

use super::*;
use crate::autograd::{Mode, Tape};
use crate::data::augment::{make_batch, Augmentation};
use crate::data::synthetic::synthetic_set;
use crate::ops;

/// The default recipe cut down for a few images: `epochs` epochs (`warmup_epochs` of them warm-up)
/// of 16-image batches split into `shards` shards.
fn small_config(epochs: usize, warmup_epochs: usize, shards: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        warmup_epochs,
        batch_size: 16,
        shards,
        ..TrainConfig::recipe()
    }
}

#[test]
fn averaged_weights_are_evaluated_and_saved_and_a_resumed_run_repeats_the_uninterrupted_one() {
    let set = synthetic_set(48, 10, 8);
    let mut config = small_config(3, 1, 2);
    config.ema_decay = Some(0.9);
    let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
    let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
    trainer.train_epoch(&set, |_| {}).unwrap();
    let average = trainer.average.as_ref().unwrap();
    assert_eq!(average.updates, 3);
    assert_ne!(average.store.params[0].value, trainer.store.params[0].value);
    // Evaluation and the checkpoint's model are the averaged weights.
    let by_hand = evaluate(&trainer.model, &average.store, &set, 16);
    assert_eq!(trainer.evaluate(&set, 16), by_hand);
    let checkpoint = trainer.to_checkpoint();
    let (model, saved) = crate::checkpoint::load_model(&checkpoint, Path::new("c")).unwrap();
    assert_eq!(evaluate(&model, &saved, &set, 16), by_hand);
    // A resumed run continues from the live weights, with the average where it was.
    let mut resumed = Trainer::from_checkpoint(&checkpoint, Path::new("c"), set.len()).unwrap();
    let values = |store: &ParamStore| store.params.iter().map(|p| p.value.clone()).collect::<Vec<_>>();
    assert_eq!(values(&resumed.store), values(&trainer.store));
    let resumed_average = resumed.average.as_ref().unwrap();
    assert_eq!(resumed_average.updates, 3);
    assert_eq!(values(&resumed_average.store), values(&average.store));
    trainer.train_epoch(&set, |_| {}).unwrap();
    resumed.train_epoch(&set, |_| {}).unwrap();
    assert_eq!(values(&resumed.store), values(&trainer.store));
    assert_eq!(
        values(resumed.evaluated_store()),
        values(trainer.evaluated_store())
    );
}

#[test]
fn zero_init_residual_starts_every_block_as_the_identity_and_gamma_still_learns() {
    let set = synthetic_set(32, 10, 6);
    let mut config = small_config(1, 0, 1);
    config.zero_init_residual = true;
    let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
    let mut trainer = Trainer::new(&spec, config.clone(), set.len()).unwrap();
    let Network::ResNet(resnet) = &trainer.model.network else {
        panic!("resnet8 is a ResNet")
    };
    let blocks: Vec<_> = resnet.stages.iter().flatten().cloned().collect();
    assert_eq!(blocks.len(), 3);
    let gamma = |trainer: &Trainer, id: ParamId| trainer.store.value(id).data.clone();
    for block in &blocks {
        assert!(gamma(&trainer, block.bn2.gamma).iter().all(|&g| g == 0.0));
        assert!(gamma(&trainer, block.bn1.gamma).iter().all(|&g| g == 1.0));
    }
    // Each block computes relu(shortcut(x)): the first block of stage 1 (stride 1, same
    // channels) returns relu(x) = x for its non-negative input.
    let (x, _) = make_batch(&set, &[0, 1], &Augmentation::NONE, &mut StdRng::seed_from_u64(0));
    let mut tape = Tape::new(&trainer.store, Mode::Eval);
    let input = tape.input(x);
    let stem = resnet.stem.forward(&mut tape, input);
    let stem = resnet.stem_bn.forward(&mut tape, stem);
    let stem = ops::relu(&mut tape, stem);
    let block = blocks[0].forward(&mut tape, stem);
    assert_eq!(tape.value(block).data, tape.value(stem).data);
    // γ gets a gradient and moves away from 0 in the first epoch; the other parameters
    // are those of a model built without the option.
    let plain = Trainer::new(
        &spec,
        TrainConfig {
            zero_init_residual: false,
            ..config
        },
        set.len(),
    )
    .unwrap();
    for id in 0..trainer.store.params.len() {
        let id = ParamId(id);
        let is_bn2_gamma = blocks.iter().any(|b| b.bn2.gamma == id);
        if !is_bn2_gamma {
            assert_eq!(trainer.store.value(id), plain.store.value(id));
        }
    }
    trainer.train_epoch(&set, |_| {}).unwrap();
    for block in &blocks {
        assert!(gamma(&trainer, block.bn2.gamma).iter().any(|&g| g != 0.0));
    }
    // A VGG has no residual blocks to start as the identity.
    let vgg = ModelSpec::parse_name("vgg16-w2").unwrap();
    let refused = Trainer::new(
        &vgg,
        TrainConfig {
            zero_init_residual: true,
            ..TrainConfig::recipe()
        },
        1000,
    );
    match refused {
        Err(e) => assert!(e.to_string().contains("`zero_init_residual`"), "{e}"),
        Ok(_) => panic!("a VGG was built with zero_init_residual"),
    }
}

#[test]
fn a_planned_length_reshapes_the_schedule_and_survives_a_checkpoint() {
    let set = synthetic_set(64, 10, 4);
    let config = small_config(10, 1, 1);
    let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
    let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
    assert_eq!((trainer.planned_epochs, trainer.schedule.total_steps), (10, 40));
    trainer.plan_epochs(6);
    assert_eq!((trainer.planned_epochs, trainer.schedule.total_steps), (6, 24));
    assert_eq!(trainer.schedule.warmup_steps, 4);
    assert_eq!(trainer.schedule.learning_rate(24), 0.0);
    // Never past --epochs.
    trainer.plan_epochs(12);
    assert_eq!(trainer.planned_epochs, 10);
    trainer.plan_epochs(6);
    trainer.train_epoch(&set, |_| {}).unwrap();
    trainer.train_epoch(&set, |_| {}).unwrap();
    // Past the warm-up, a new plan keeps the rate of the next step and anneals from there.
    let rate = trainer.schedule.learning_rate(trainer.step);
    trainer.plan_epochs(4);
    assert!(trainer.schedule.anchor.is_some());
    assert!((trainer.schedule.learning_rate(trainer.step) - rate).abs() < 1e-7);
    assert_eq!(trainer.schedule.learning_rate(16), 0.0);
    let resumed = Trainer::from_checkpoint(&trainer.to_checkpoint(), Path::new("c"), set.len()).unwrap();
    assert_eq!(resumed.planned_epochs, 4);
    assert_eq!(resumed.schedule, trainer.schedule);
}

/// An SBF ResNet-8 with `config` after one step on one batch (from zero momentum every parameter
/// moves by lr·scale·(1 + μ)·(g + decay·w) under Nesterov), its parameters before, and its masks.
fn one_sbf_step(config: TrainConfig) -> (Trainer, ParamStore, Vec<ParamId>) {
    let set = synthetic_set(16, 10, 5);
    let spec = ModelSpec::parse_description("resnet8-w4 sbf:rate=0.5,groups=2").unwrap();
    let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
    let start = trainer.store.clone();
    trainer.train_epoch(&set, |_| {}).unwrap();
    let masks: Vec<ParamId> = trainer
        .model
        .conv_layers()
        .iter()
        .filter_map(|(_, layer)| layer.as_sbf().map(|sbf| sbf.transforms))
        .collect();
    assert_eq!(masks.len(), 6); // the six body convs; the stem (3 inputs) stays dense
    (trainer, start, masks)
}

/// How far parameter `id` moved from `start`.
fn step_of(trainer: &Trainer, start: &ParamStore, id: ParamId) -> Vec<f32> {
    let (now, before) = (trainer.store.value(id), start.value(id));
    now.data.iter().zip(&before.data).map(|(a, b)| a - b).collect()
}

fn largest(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `config` with the masks' settings given, on a dense model: refused, naming `setting`.
fn refused_without_masks(config: TrainConfig, setting: &str) {
    let dense = ModelSpec::parse_name("resnet8-w4").unwrap();
    match Trainer::new(&dense, config, 16) {
        Err(e) => assert!(
            e.to_string().contains(&format!("`{setting}` needs SBF layers")),
            "{e}"
        ),
        Ok(_) => panic!("a dense model took {setting}"),
    }
}

#[test]
fn the_masks_learn_at_their_own_rate_and_keep_it_across_a_checkpoint() {
    let config = small_config(2, 0, 1);
    let (plain, start, masks) = one_sbf_step(config.clone());
    let scaled_config = TrainConfig {
        mask_lr_scale: 4.0,
        ..config
    };
    let (scaled, scaled_start, _) = one_sbf_step(scaled_config.clone());
    for (id, param) in scaled.store.params.iter().enumerate() {
        let id = ParamId(id);
        let (plain_step, scaled_step) = (step_of(&plain, &start, id), step_of(&scaled, &scaled_start, id));
        if masks.contains(&id) {
            assert_eq!(param.lr_scale, 4.0, "{}", param.name);
            assert!(plain_step.iter().any(|&d| d != 0.0), "{}", param.name);
            // Each step is a difference of two weights, exact to a few ulps of the weight.
            let tolerance = 1e-5 * largest(&plain_step) + 1e-6 * largest(&start.value(id).data);
            for (p, s) in plain_step.iter().zip(&scaled_step) {
                assert!(
                    (s - 4.0 * p).abs() <= tolerance,
                    "{}: {s} against 4 × {p}",
                    param.name
                );
            }
        } else {
            assert_eq!(param.lr_scale, 1.0, "{}", param.name);
            assert_eq!(plain_step, scaled_step, "{}", param.name);
        }
    }
    // A resumed run keeps the masks' rate.
    let resumed = Trainer::from_checkpoint(&scaled.to_checkpoint(), Path::new("c"), 16).unwrap();
    assert_eq!(resumed.config.mask_lr_scale, 4.0);
    assert!(masks.iter().all(|id| resumed.store.params[id.0].lr_scale == 4.0));
    refused_without_masks(scaled_config, "mask_lr_scale");
}

#[test]
fn decayed_masks_shrink_by_the_decay_and_keep_it_across_a_checkpoint() {
    let config = small_config(2, 0, 1);
    let (plain, start, masks) = one_sbf_step(config.clone());
    let decayed_config = TrainConfig {
        mask_weight_decay: true,
        ..config
    };
    let (decayed, decayed_start, _) = one_sbf_step(decayed_config.clone());
    // The decay's share of the first Nesterov step: −lr·(1 + μ)·λ·w.
    let (lr, sgd) = (plain.schedule.learning_rate(0), decayed.config.sgd);
    let shrink = lr * (1.0 + sgd.momentum) * sgd.weight_decay;
    assert!(shrink > 0.0);
    for (id, param) in decayed.store.params.iter().enumerate() {
        let id = ParamId(id);
        let (plain_step, decayed_step) = (step_of(&plain, &start, id), step_of(&decayed, &decayed_start, id));
        if masks.contains(&id) {
            assert!(param.decay, "{}", param.name);
            let weights = &start.value(id).data;
            let tolerance = 1e-5 * largest(&plain_step) + 1e-6 * largest(weights);
            for ((p, d), w) in plain_step.iter().zip(&decayed_step).zip(weights) {
                assert!(
                    (d - (p - shrink * w)).abs() <= tolerance,
                    "{}: {d} against {p} − {shrink}·{w}",
                    param.name
                );
            }
        } else {
            assert_eq!(plain_step, decayed_step, "{}", param.name);
        }
    }
    let resumed = Trainer::from_checkpoint(&decayed.to_checkpoint(), Path::new("c"), 16).unwrap();
    assert!(resumed.config.mask_weight_decay);
    assert!(masks.iter().all(|id| resumed.store.params[id.0].decay));
    refused_without_masks(decayed_config, "mask_weight_decay");
}
