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

/// Every setting, in the order a run describes them. `augmentation` comes before `rotation`, so
/// that setting both in this order gives the rotation asked for.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "epochs",
        get: |c| c.epochs.to_string(),
        set: |c, t| {
            c.epochs = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "batch_size",
        get: |c| c.batch_size.to_string(),
        set: |c, t| {
            c.batch_size = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "shards",
        get: |c| c.shards.to_string(),
        set: |c, t| {
            c.shards = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "learning_rate",
        get: |c| c.learning_rate.to_string(),
        set: |c, t| {
            c.learning_rate = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "momentum",
        get: |c| c.sgd.momentum.to_string(),
        set: |c, t| {
            c.sgd.momentum = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "nesterov",
        get: |c| c.sgd.nesterov.to_string(),
        set: |c, t| {
            c.sgd.nesterov = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "weight_decay",
        get: |c| c.sgd.weight_decay.to_string(),
        set: |c, t| {
            c.sgd.weight_decay = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "schedule",
        get: |c| c.schedule.name().to_string(),
        set: |c, t| {
            c.schedule = ScheduleKind::parse(t)
                .ok_or_else(|| format!("\"{t}\" is unknown (expected cosine, linear, step or onecycle)"))?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "warmup_epochs",
        get: |c| c.warmup_epochs.to_string(),
        set: |c, t| {
            c.warmup_epochs = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "label_smoothing",
        get: |c| c.label_smoothing.to_string(),
        set: |c, t| {
            c.label_smoothing = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
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
    Setting {
        name: "seed",
        get: |c| c.seed.to_string(),
        set: |c, t| {
            c.seed = number(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: None,
    },
    Setting {
        name: "time_budget_minutes",
        get: |c| optional_text(c.time_budget_minutes),
        set: |c, t| {
            c.time_budget_minutes = optional(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: Some("none"),
    },
    Setting {
        name: "zero_init_residual",
        get: |c| c.zero_init_residual.to_string(),
        set: |c, t| {
            c.zero_init_residual = number(t)?;
            Ok(())
        },
        saved: true,
        // Such runs started every block's last γ at 1.
        before_it_existed: Some("false"),
    },
    Setting {
        name: "ema_decay",
        get: |c| optional_text(c.ema_decay),
        set: |c, t| {
            c.ema_decay = optional(t)?;
            Ok(())
        },
        saved: true,
        before_it_existed: Some("none"),
    },
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
            "`schedule` \"exponential\" is unknown (expected cosine, linear, step or onecycle)"
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
