//! The flag of every setting that the library names in its errors: the library writes
//! "`learning_rate` must be a positive number", the command line prints "--lr must be …".

/// (setting, flag): the training settings of `sbfnet::train::settings`, then the output,
/// pruning, distillation and benchmark settings.
pub const FLAGS: &[(&str, &str)] = &[
    ("epochs", "--epochs"),
    ("batch_size", "--batch-size"),
    ("shards", "--shards"),
    ("learning_rate", "--lr"),
    ("momentum", "--momentum"),
    ("nesterov", "--nesterov"),
    ("weight_decay", "--weight-decay"),
    ("schedule", "--schedule"),
    ("warmup_epochs", "--warmup-epochs"),
    ("label_smoothing", "--label-smoothing"),
    ("augmentation", "--augment"),
    ("rotation", "--rotate"),
    ("seed", "--seed"),
    ("time_budget_minutes", "--time-budget"),
    ("zero_init_residual", "--zero-init-residual"),
    ("ema_decay", "--ema"),
    ("lookahead", "--lookahead"),
    ("mask_lr_scale", "--mask-lr-scale"),
    ("mask_weight_decay", "--mask-decay"),
    ("eval_every", "--eval-every"),
    ("test_views", "--tta"),
    ("on_nonfinite", "--on-nonfinite"),
    ("train_images", "--train-limit"),
    ("target_rate", "--prune-rate"),
    ("ramp_epochs", "--prune-epochs"),
    ("min_templates", "--min-templates"),
    ("groups", "--groups"),
    ("kd_temperature", "--kd-temperature"),
    ("kd_weight", "--kd-weight"),
    ("steps", "--steps"),
];

/// `message` with every setting named in backticks replaced by its flag.
pub fn with_flags(message: &str) -> String {
    let mut text = message.to_string();
    for (setting, flag) in FLAGS {
        text = text.replace(&format!("`{setting}`"), flag);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_training_setting_has_a_flag_and_errors_show_it() {
        for setting in sbfnet::train::settings::SETTINGS {
            assert!(
                FLAGS.iter().any(|(name, _)| *name == setting.name),
                "no flag for the setting {}",
                setting.name
            );
        }
        assert_eq!(
            with_flags("`batch_size` 2 is smaller than `shards` 4"),
            "--batch-size 2 is smaller than --shards 4"
        );
        assert_eq!(with_flags("a plain batch size"), "a plain batch size");
    }
}
