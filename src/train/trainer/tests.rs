//! The trainer's tests: the weight average, the residual start, the planned length and the
//! masks' learning rate, each across a checkpoint where it has one.

use super::*;
use crate::autograd::{Mode, Tape};
use crate::data::augment::{make_batch, Augmentation};
use crate::data::synthetic::synthetic_set;
use crate::ops;

#[test]
fn averaged_weights_are_evaluated_and_saved_and_a_resumed_run_repeats_the_uninterrupted_one() {
    let set = synthetic_set(48, 10, 8);
    let mut config = TrainConfig::recipe();
    (
        config.epochs,
        config.warmup_epochs,
        config.batch_size,
        config.shards,
    ) = (3, 1, 16, 2);
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
    let mut config = TrainConfig::recipe();
    (
        config.epochs,
        config.warmup_epochs,
        config.batch_size,
        config.shards,
    ) = (1, 0, 16, 1);
    config.zero_init_residual = true;
    let spec = ModelSpec::parse_name("resnet8-w2").unwrap();
    let mut trainer = Trainer::new(&spec, config.clone(), set.len()).unwrap();
    let Network::ResNet(resnet) = &trainer.model.network else {
        panic!("resnet8 is a ResNet")
    };
    let blocks: Vec<_> = resnet.stages.iter().flatten().cloned().collect();
    assert_eq!(blocks.len(), 3);
    for block in &blocks {
        assert!(trainer
            .store
            .value(block.bn2.gamma)
            .data
            .iter()
            .all(|&g| g == 0.0));
        assert!(trainer
            .store
            .value(block.bn1.gamma)
            .data
            .iter()
            .all(|&g| g == 1.0));
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
        assert!(trainer
            .store
            .value(block.bn2.gamma)
            .data
            .iter()
            .any(|&g| g != 0.0));
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
    let mut config = TrainConfig::recipe();
    (
        config.epochs,
        config.warmup_epochs,
        config.batch_size,
        config.shards,
    ) = (10, 1, 16, 1);
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

#[test]
fn the_masks_learn_at_their_own_rate_and_keep_it_across_a_checkpoint() {
    // One batch, one step: from zero momentum every parameter moves by lr·scale·(1 + μ)·g (+ decay).
    let set = synthetic_set(16, 10, 5);
    let mut config = TrainConfig::recipe();
    (
        config.epochs,
        config.warmup_epochs,
        config.batch_size,
        config.shards,
    ) = (2, 0, 16, 1);
    let spec = ModelSpec::parse_description("resnet8-w4 sbf:rate=0.5,groups=2").unwrap();
    let trained = |mask_lr_scale: f32| {
        let config = TrainConfig {
            mask_lr_scale,
            ..config.clone()
        };
        let mut trainer = Trainer::new(&spec, config, set.len()).unwrap();
        let start = trainer.store.clone();
        trainer.train_epoch(&set, |_| {}).unwrap();
        (trainer, start)
    };
    let (plain, start) = trained(1.0);
    let (scaled, scaled_start) = trained(4.0);
    let masks: Vec<ParamId> = scaled
        .model
        .conv_layers()
        .iter()
        .filter_map(|(_, layer)| layer.as_sbf().map(|sbf| sbf.transforms))
        .collect();
    assert_eq!(masks.len(), 6); // the six body convs; the stem (3 inputs) stays dense
    for (id, param) in scaled.store.params.iter().enumerate() {
        let id = ParamId(id);
        let expected = if masks.contains(&id) { 4.0 } else { 1.0 };
        assert_eq!(param.lr_scale, expected, "{}", param.name);
        let moved = |trainer: &Trainer, start: &ParamStore| -> Vec<f32> {
            let (now, before) = (trainer.store.value(id), start.value(id));
            now.data.iter().zip(&before.data).map(|(a, b)| a - b).collect()
        };
        let (plain_step, scaled_step) = (moved(&plain, &start), moved(&scaled, &scaled_start));
        if masks.contains(&id) {
            assert!(plain_step.iter().any(|&d| d != 0.0), "{}", param.name);
            // Each step is a difference of two weights, exact to a few ulps of the weight.
            let largest = |values: &[f32]| values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tolerance = 1e-5 * largest(&plain_step) + 1e-6 * largest(&start.value(id).data);
            for (p, s) in plain_step.iter().zip(&scaled_step) {
                assert!(
                    (s - 4.0 * p).abs() <= tolerance,
                    "{}: {s} against 4 × {p}",
                    param.name
                );
            }
        } else {
            assert_eq!(plain_step, scaled_step, "{}", param.name);
        }
    }
    // A resumed run keeps the masks' rate.
    let resumed = Trainer::from_checkpoint(&scaled.to_checkpoint(), Path::new("c"), set.len()).unwrap();
    assert_eq!(resumed.config.mask_lr_scale, 4.0);
    assert!(masks.iter().all(|id| resumed.store.params[id.0].lr_scale == 4.0));
    // A dense model has no masks to scale.
    let dense = ModelSpec::parse_name("resnet8-w4").unwrap();
    let config = TrainConfig {
        mask_lr_scale: 4.0,
        ..config
    };
    match Trainer::new(&dense, config, set.len()) {
        Err(e) => assert!(e.to_string().contains("`mask_lr_scale` needs SBF layers"), "{e}"),
        Ok(_) => panic!("a dense model took mask_lr_scale"),
    }
}
