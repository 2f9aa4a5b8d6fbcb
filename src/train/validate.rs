//! Checks of command-line settings that need more than a type: each returns
//! one line that names the flag, the value and what would be accepted, so the
//! command line can refuse an impossible run before any work starts.
//!
//! `TrainConfig::validate` covers the training recipe; these helpers are for
//! flags whose checks other code shares (the pruning rate and SBF group count
//! of `--convs`/pruning settings, the warm-up length).

use crate::error::{Error, Result};

/// A rate in [0, 1), e.g. a pruning rate (1 would remove every filter) or a momentum.
pub fn check_rate(flag: &str, value: f32) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::msg(format!("{flag} must be in [0, 1), got {value}")))
    }
}

/// A count of at least `minimum`.
pub fn check_at_least(flag: &str, value: usize, minimum: usize) -> Result<()> {
    if value >= minimum {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "{flag} must be at least {minimum}, got {value}"
        )))
    }
}

/// `groups` input-channel groups must divide the input channels of every
/// layer in `layers` (name, input channels); the first that it does not
/// divide is named.
pub fn check_groups_divide(flag: &str, groups: usize, layers: &[(String, usize)]) -> Result<()> {
    check_at_least(flag, groups, 1)?;
    match layers.iter().find(|(_, channels)| channels % groups != 0) {
        None => Ok(()),
        Some((name, channels)) => Err(Error::msg(format!(
            "{flag} {groups} does not divide the {channels} input channels of layer {name} \
             (every grouped layer needs channels divisible by the group count)"
        ))),
    }
}

/// A warm-up of `warmup` epochs must fit in a run of `epochs`.
pub fn check_warmup(warmup: usize, epochs: usize) -> Result<()> {
    if warmup <= epochs {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "`warmup_epochs` {warmup} is longer than the run (`epochs` {epochs}): the learning rate would \
             never reach its peak"
        )))
    }
}

/// The input channels of every convolution of `model`, in forward order, for [`check_groups_divide`].
pub fn conv_input_channels(model: &crate::nn::Model) -> Vec<(String, usize)> {
    model
        .conv_layers()
        .into_iter()
        .map(|(name, layer)| (name, layer.in_channels()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::ParamStore;
    use crate::nn::ModelSpec;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn rates_outside_zero_one_are_refused_naming_the_flag() {
        for ok in [0.0, 0.5, 0.999] {
            check_rate("--prune-rate", ok).unwrap();
        }
        for bad in [1.0, -0.1, 7.0, f32::NAN, f32::INFINITY] {
            let err = check_rate("--prune-rate", bad).unwrap_err().to_string();
            assert_eq!(err, format!("--prune-rate must be in [0, 1), got {bad}"));
        }
    }

    #[test]
    fn groups_must_divide_every_layer_and_the_first_that_fails_is_named() {
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name("resnet20")
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(0));
        let layers = conv_input_channels(&model);
        assert_eq!(layers[0], ("conv1".to_string(), 3));
        assert_eq!(layers[1], ("stage1.block0.conv1".to_string(), 16));
        assert_eq!(layers.len(), 19);
        // The body (16, 32 and 64 channels) takes 1, 2, 4, 8 and 16 groups.
        for groups in [1, 2, 4, 8, 16] {
            check_groups_divide("--groups", groups, &layers[1..]).unwrap();
        }
        let err = check_groups_divide("--groups", 32, &layers[1..])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--groups 32 does not divide the 16 input channels of layer stage1.block0.conv1 \
             (every grouped layer needs channels divisible by the group count)"
        );
        // The RGB stem has 3 channels.
        let err = check_groups_divide("--groups", 2, &layers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the 3 input channels of layer conv1"), "{err}");
        let err = check_groups_divide("--groups", 0, &layers)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--groups must be at least 1, got 0");
    }

    #[test]
    fn a_warmup_longer_than_the_run_is_refused() {
        check_warmup(2, 2).unwrap();
        check_warmup(0, 1).unwrap();
        let err = check_warmup(5, 3).unwrap_err().to_string();
        assert!(
            err.starts_with("`warmup_epochs` 5 is longer than the run (`epochs` 3)"),
            "{err}"
        );
    }
}
