//! Every setting of a [`TrainConfig`], defined once: its name (also its key in checkpoints),
//! how it reads from and writes to text, and what checkpoints written before it existed meant.
//! Its default is its value in [`TrainConfig::recipe`].
//!
//! Errors of the library name a setting in backticks, e.g. "`learning_rate` must be a positive
//! number"; the command line shows the setting's flag there instead (`--lr`).

use super::config::TrainConfig;
use super::schedule::ScheduleKind;
use crate::data::augment::Augmentation;
use crate::error::{Error, Result};
use std::str::FromStr;

/// One setting of a training run.
pub struct Setting {
    /// The name errors use and the checkpoint key.
    pub name: &'static str,
    /// The setting's value as text (floats in Rust's shortest round-trip form).
    pub get: fn(&TrainConfig) -> String,
    /// Sets the setting from text; the error says why the text is no value of it.
    pub set: fn(&mut TrainConfig, &str) -> std::result::Result<(), String>,
    /// Saved under its own key (false: part of another setting's text).
    pub saved: bool,
    /// The value of a checkpoint written before the setting existed; None: every checkpoint has it.
    pub before_it_existed: Option<&'static str>,
}

fn number<T: FromStr>(text: &str) -> std::result::Result<T, String> {
    text.parse()
        .map_err(|_| format!("\"{text}\" is not a valid value"))
}

fn optional<T: FromStr>(text: &str) -> std::result::Result<Option<T>, String> {
    match text {
        "none" => Ok(None),
        _ => number(text).map(Some),
    }
}

fn optional_text<T: ToString>(value: Option<T>) -> String {
    value.map_or("none".into(), |v| v.to_string())
}

/// A saved setting that is one field of the config, read and written with `FromStr`/`ToString`;
/// optionally with the value of checkpoints written before it existed.
macro_rules! plain {
    ($name:literal, $($field:ident).+) => {
        plain!($name, $($field).+, None)
    };
    ($name:literal, $($field:ident).+, $before:expr) => {
        Setting {
            name: $name,
            get: |c| c.$($field).+.to_string(),
            set: |c, t| {
                c.$($field).+ = number(t)?;
                Ok(())
            },
            saved: true,
            before_it_existed: $before,
        }
    };
}

/// A saved setting that may be absent ("none"), as older checkpoints were.
macro_rules! optional {
    ($name:literal, $($field:ident).+) => {
        Setting {
            name: $name,
            get: |c| optional_text(c.$($field).+),
            set: |c, t| {
                c.$($field).+ = optional(t)?;
                Ok(())
            },
            saved: true,
            before_it_existed: Some("none"),
        }
    };
}

/// Every setting, in the order a run describes them. `augmentation` comes before `rotation`, so
/// that setting both in this order gives the rotation asked for.
pub const SETTINGS: &[Setting] = &[
    // A decimal: 9.9 begins ten epochs and trains 90 % of the last (`TrainConfig::set_epochs`).
    Setting {
        name: "epochs",
        get: TrainConfig::epochs_text,
        set: |c, t| c.set_epochs(number(t)?),
        saved: true,
        before_it_existed: None,
    },
    plain!("batch_size", batch_size),
    plain!("shards", shards),
    plain!("learning_rate", learning_rate),
    plain!("momentum", sgd.momentum),
    plain!("nesterov", sgd.nesterov),
    plain!("weight_decay", sgd.weight_decay),
    Setting {
        name: "schedule",
        get: |c| c.schedule.name().to_string(),
        set: |c, t| {
            c.schedule = ScheduleKind::parse(t).ok_or_else(|| {
                format!("\"{t}\" is unknown (expected cosine, linear, step, onecycle or airbench)")
            })?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    plain!("warmup_epochs", warmup_epochs),
    plain!("label_smoothing", label_smoothing),
    Setting {
        name: "augmentation",
        get: |c| c.augmentation.describe(),
        set: |c, t| {
            c.augmentation = Augmentation::parse(t).ok_or_else(|| {
                format!("\"{t}\" is unknown (expected crop+flip, crop+altflip, crop, flip, altflip or none)")
            })?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "rotation",
        get: |c| c.augmentation.rotation_degrees.to_string(),
        set: |c, t| {
            c.augmentation.rotation_degrees = number(t)?;
            Ok(())
        },
        saved: false,
        before_it_existed: None,
    },
    plain!("seed", seed),
    optional!("time_budget_minutes", time_budget_minutes),
    // Checkpoints from before this setting started every block's last γ at 1.
    plain!("zero_init_residual", zero_init_residual, Some("false")),
    optional!("ema_decay", ema_decay),
    // Checkpoints from before this setting had no lookahead.
    plain!("lookahead", lookahead, Some("false")),
    // Checkpoints from before this setting trained the masks at the run's rate.
    plain!("mask_lr_scale", mask_lr_scale, Some("1")),
    // Checkpoints from before this setting did not decay the masks.
    plain!("mask_weight_decay", mask_weight_decay, Some("false")),
];

/// The setting called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl TrainConfig {
    /// The value of the setting `name` as text.
    ///
    /// Panics if no setting has that name (a programming error).
    pub fn get(&self, name: &str) -> String {
        let setting = setting(name).unwrap_or_else(|| panic!("no training setting is called {name}"));
        (setting.get)(self)
    }

    /// Sets the setting `name` from text, or says why the text is no value of it
    /// ("`schedule` \"x\" is unknown (expected …)"). Range checks are [`TrainConfig::validate`]'s.
    pub fn set(&mut self, name: &str, text: &str) -> Result<()> {
        let setting =
            setting(name).ok_or_else(|| Error::msg(format!("no training setting is called {name}")))?;
        (setting.set)(self, text).map_err(|why| Error::msg(format!("`{name}` {why}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reads_back_what_it_wrote_and_names_itself_in_errors() {
        let mut config = TrainConfig::recipe();
        config.time_budget_minutes = Some(69.5);
        config.ema_decay = Some(0.999);
        config.mask_lr_scale = 8.0;
        config.mask_weight_decay = true;
        config.augmentation.rotation_degrees = 15.0;
        for setting in SETTINGS {
            let text = (setting.get)(&config);
            let mut copy = TrainConfig::recipe();
            if setting.name == "rotation" {
                copy.augmentation = config.augmentation;
            }
            copy.set(setting.name, &text).unwrap();
            assert_eq!((setting.get)(&copy), text, "{}", setting.name);
        }
        let err = config.set("schedule", "exponential").unwrap_err().to_string();
        assert_eq!(
            err,
            "`schedule` \"exponential\" is unknown (expected cosine, linear, step, onecycle or airbench)"
        );
        let err = config.set("learning_rate", "fast").unwrap_err().to_string();
        assert_eq!(err, "`learning_rate` \"fast\" is not a valid value");
        assert!(config.set("speed", "1").is_err());
    }

    #[test]
    fn names_are_unique_and_the_rotation_follows_the_augmentation() {
        let names: std::collections::HashSet<_> = SETTINGS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SETTINGS.len());
        let position = |name| SETTINGS.iter().position(|s| s.name == name).unwrap();
        assert!(position("augmentation") < position("rotation"));
    }
}
