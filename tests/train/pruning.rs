//! Generalised pruning end to end on tiny generated data: a run from random init
//! reaches its target rate, its checkpoint reloads with identical outputs, and a
//! run resumed mid-ramp continues bit for bit.

use rand::{rngs::StdRng, SeedableRng};
use sbfnet::autograd::ParamStore;
use sbfnet::autograd::{Mode, Tape};
use sbfnet::checkpoint::load_model;
use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::augment::Augmentation;
use sbfnet::data::synthetic::synthetic_set;
use sbfnet::nn::{Model, ModelSpec, TemplateChoice, TransformInit};
use sbfnet::prune::{PruneSettings, PruneState, Ramp, Saliency};
use sbfnet::train::{ScheduleKind, SgdConfig, TrainConfig, Trainer};
use sbfnet::Tensor;

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        last_epoch_fraction: 1.0,
        batch_size: 16,
        shards: 2,
        learning_rate: 0.05,
        sgd: SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
        schedule: ScheduleKind::Cosine,
        warmup_epochs: 0,
        label_smoothing: 0.0,
        augmentation: Augmentation::CROP_FLIP,
        seed: 7,
        time_budget_minutes: None,
        zero_init_residual: false,
        ema_decay: None,
        lookahead: false,
        mask_lr_scale: 1.0,
        mask_weight_decay: false,
    }
}

fn pruning_trainer(epochs: usize, images: usize, saliency: Saliency, choice: TemplateChoice) -> Trainer {
    let spec = ModelSpec::parse_description("resnet8-w8 sbf:rate=0,groups=2").unwrap();
    let mut trainer = Trainer::new(&spec, config(epochs), images).unwrap();
    trainer.pruning = Some(PruneSettings {
        ramp: Ramp::new(0.5, 2),
        min_templates: 2,
        init: TransformInit::LeastSquares,
        saliency,
        choice,
    });
    trainer
}

fn logits(model: &Model, store: &ParamStore) -> Tensor {
    let mut tape = Tape::new(store, Mode::Eval);
    let x = tape.input(Tensor::normal(
        &[3, 3, 32, 32],
        1.0,
        &mut StdRng::seed_from_u64(5),
    ));
    let y = model.forward(&mut tape, x);
    tape.value(y).clone()
}

#[test]
fn a_pruning_run_reaches_its_rate_reloads_exactly_and_resumes_bit_for_bit() {
    for (saliency, choice) in [
        (Saliency::L1Relative, TemplateChoice::Balanced),
        (Saliency::Taylor, TemplateChoice::Balanced),
        (Saliency::L1Relative, TemplateChoice::BestFit),
    ] {
        pruning_run_reaches_its_rate_reloads_exactly_and_resumes_bit_for_bit(saliency, choice);
    }
}

fn pruning_run_reaches_its_rate_reloads_exactly_and_resumes_bit_for_bit(
    saliency: Saliency,
    choice: TemplateChoice,
) {
    let set = synthetic_set(48, 10, 3);
    let dir = std::env::temp_dir().join(format!(
        "sbfnet-pruning-{}-{}-{}",
        saliency.name(),
        choice.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();

    let mut trainer = pruning_trainer(3, set.len(), saliency, choice);
    let transformed = |state: &PruneState| state.layers.iter().map(|l| l.2 - l.1).sum::<usize>();
    // Epoch 1 trains the whole network: the first step comes after it, at the start of epoch 2.
    trainer.train_epoch(&set, |_| {}).unwrap();
    assert_eq!(transformed(&PruneState::of(&trainer.model)), 0);
    trainer.train_epoch(&set, |_| {}).unwrap();
    let after_first = PruneState::of(&trainer.model);
    // The first of 2 steps to 0.5: rate 0.25 of 112 filters → 28 transformed.
    assert_eq!(transformed(&after_first), 28, "{}", after_first.templates_text());
    let path = dir.join("epoch2.ckpt");
    trainer.to_checkpoint().save(&path).unwrap();
    // Taylor: the evidence of epoch 2 is carried to the pruning step of epoch 3 (and saved).
    assert_eq!(trainer.taylor.steps > 0, saliency == Saliency::Taylor);
    let saved_taylor = trainer.taylor.clone();
    let result = trainer.train_epoch(&set, |_| {}).unwrap();
    assert!(result.loss.is_finite());
    let state = PruneState::of(&trainer.model);
    assert_eq!(
        state.layers.iter().map(|l| l.2 - l.1).sum::<usize>(),
        56,
        "{}",
        state.templates_text()
    );
    assert!(state.layers.iter().all(|l| l.1 >= 2));

    // The final checkpoint reloads the pruned model exactly.
    let final_path = dir.join("last.ckpt");
    trainer.to_checkpoint().save(&final_path).unwrap();
    let checkpoint = Checkpoint::load(&final_path).unwrap();
    let (model, store) = load_model(&checkpoint, &final_path).unwrap();
    assert_eq!(PruneState::of(&model), state);
    assert_eq!(
        logits(&model, &store).data,
        logits(&trainer.model, &trainer.store).data
    );
    assert_eq!(store.num_scalars(), trainer.store.num_scalars());

    // Resuming after epoch 2 (mid-ramp) repeats epoch 3 exactly.
    let checkpoint = Checkpoint::load(&path).unwrap();
    let mut resumed = Trainer::from_checkpoint(&checkpoint, &path, set.len()).unwrap();
    assert_eq!(PruneState::of(&resumed.model), after_first);
    assert_eq!(resumed.pruning, trainer.pruning);
    assert_eq!(resumed.taylor, saved_taylor);
    resumed.train_epoch(&set, |_| {}).unwrap();
    assert_eq!(PruneState::of(&resumed.model), state);
    for (a, b) in resumed.store.params.iter().zip(&trainer.store.params) {
        assert_eq!(a.value.data, b.value.data, "{}", a.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plain L1 filter pruning (the zero family) removes a pruned output channel entirely: the
/// batch norm after the conv outputs 0 there too (γ = β = 0, kept so through training), so the
/// next layer sees no learned constant.
#[test]
fn l1_pruning_silences_the_batch_norm_of_every_pruned_channel_through_training() {
    let set = synthetic_set(64, 10, 3);
    let spec = ModelSpec::parse_description("resnet8-w8 sbf:rate=0,groups=2,family=zero").unwrap();
    let mut trainer = Trainer::new(&spec, config(3), set.len()).unwrap();
    trainer.pruning = Some(PruneSettings {
        ramp: Ramp::new(0.5, 2),
        min_templates: 2,
        init: TransformInit::Identity,
        saliency: Saliency::L1,
        choice: TemplateChoice::Balanced,
    });
    for _ in 0..3 {
        trainer.train_epoch(&set, |_| {}).unwrap();
    }
    let mut silenced = 0;
    for (_, conv, bn) in trainer.model.conv_batch_norms() {
        let Some(sbf) = conv.as_sbf() else { continue };
        for n in (0..sbf.out_channels).filter(|&n| sbf.assignment.mask_row[n].is_some()) {
            let (gamma, beta) = (trainer.store.value(bn.gamma), trainer.store.value(bn.beta));
            assert_eq!((gamma.data[n], beta.data[n]), (0.0, 0.0), "channel {n}");
            silenced += 1;
        }
    }
    assert!(silenced > 20, "only {silenced} channels were pruned");
}
