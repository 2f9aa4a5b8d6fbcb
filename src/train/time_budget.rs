//! Training to a wall-clock budget (`sbfnet train --time-budget MINUTES`).
//!
//! A schedule that decays to zero needs the run's length in advance, but on a shared machine an
//! epoch can take 20 % more or less from one hour to the next. With a budget, the run re-plans
//! its length after every epoch from what the recent epochs cost:
//!
//!   per epoch  c = t_train + t_eval / eval_every        (the evaluations it will also run)
//!   room       r = B − elapsed − t_eval                 (the final evaluation is reserved)
//!   epochs     E = min(E_max, done + ⌊r / c⌋)
//!
//! and the learning-rate schedule is stretched or shrunk to end at epoch E (its warm-up, counted
//! in steps, does not move). Re-planning makes the run's length, and so its parameters, depend on
//! the machine's speed: a budgeted run is not repeatable bit for bit, as a fixed-length one is.

/// What the planner knows after an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetState {
    /// B: the whole run's budget, training and evaluation, in seconds.
    pub budget_seconds: f64,
    /// Seconds spent so far, training and evaluating (over every resumed session).
    pub elapsed_seconds: f64,
    /// Epochs completed.
    pub epochs_done: usize,
    /// E_max: `--epochs`, the most the run may have.
    pub max_epochs: usize,
    /// t_train: what one training epoch costs now (the mean of the last few).
    pub train_epoch_seconds: f64,
    /// t_eval: what one test-set evaluation costs.
    pub eval_seconds: f64,
    /// The test set is evaluated after every `eval_every`-th epoch.
    pub eval_every: usize,
}

/// E: how many epochs the run has in all, `epochs_done` of them done (see the module doc).
/// Never fewer than `epochs_done`: a run over its budget ends with the epoch it has finished.
pub fn epochs_within_budget(state: &BudgetState) -> usize {
    let per_epoch = state.train_epoch_seconds + state.eval_seconds / state.eval_every.max(1) as f64;
    let room = state.budget_seconds - state.elapsed_seconds - state.eval_seconds;
    let more = if room > 0.0 && per_epoch > 0.0 {
        (room / per_epoch).floor() as usize
    } else {
        0
    };
    (state.epochs_done + more)
        .min(state.max_epochs)
        .max(state.epochs_done)
}

/// t_train: the mean of the last (up to) three epochs' training seconds; the machine's speed
/// drifts over the hours, so older epochs say less about the next one.
pub fn recent_epoch_seconds(history: &[f64]) -> Option<f64> {
    let recent = &history[history.len().saturating_sub(3)..];
    (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 minutes, 10 done in 1000 s, 100-s epochs, 10-s evaluations after every epoch.
    fn state() -> BudgetState {
        BudgetState {
            budget_seconds: 3600.0,
            elapsed_seconds: 1000.0,
            epochs_done: 10,
            max_epochs: 50,
            train_epoch_seconds: 100.0,
            eval_seconds: 10.0,
            eval_every: 1,
        }
    }

    #[test]
    fn the_epochs_that_fit_are_planned_with_the_final_evaluation_reserved() {
        // Room 3600 − 1000 − 10 = 2590 s at 110 s an epoch: 23 more (2530 s), not 24 (2640 s).
        assert_eq!(epochs_within_budget(&state()), 33);
        // Evaluating every 5th epoch costs 102 s an epoch: 25 more (2550 s).
        assert_eq!(
            epochs_within_budget(&BudgetState {
                eval_every: 5,
                ..state()
            }),
            35
        );
        // A slower machine plans fewer.
        let slower = BudgetState {
            train_epoch_seconds: 150.0,
            ..state()
        };
        assert_eq!(epochs_within_budget(&slower), 10 + 16); // 2590 / 160
    }

    #[test]
    fn the_plan_stays_between_the_epochs_done_and_the_most_allowed() {
        let generous = BudgetState {
            budget_seconds: 1e6,
            ..state()
        };
        assert_eq!(epochs_within_budget(&generous), 50);
        let spent = BudgetState {
            elapsed_seconds: 4000.0,
            ..state()
        };
        assert_eq!(epochs_within_budget(&spent), 10);
        // Room for less than one epoch: the run ends now.
        let almost = BudgetState {
            elapsed_seconds: 3500.0,
            ..state()
        };
        assert_eq!(epochs_within_budget(&almost), 10);
    }

    #[test]
    fn the_epoch_estimate_is_the_mean_of_the_last_three() {
        assert_eq!(recent_epoch_seconds(&[]), None);
        assert_eq!(recent_epoch_seconds(&[90.0]), Some(90.0));
        assert_eq!(recent_epoch_seconds(&[500.0, 90.0, 100.0, 110.0]), Some(100.0));
    }
}
