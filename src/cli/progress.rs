//! What `sbfnet train` prints while a run goes: a progress bar during each epoch, then one
//! line per epoch (and the pruning state, re-planned budgets, skipped batches).

use indicatif::{ProgressBar, ProgressStyle};
use sbfnet::train::{EpochReport, Observer, Progress};
use sbfnet::{Error, Result};

/// An [`Observer`] that draws the run on the terminal.
pub struct ProgressLines {
    style: ProgressStyle,
    bar: Option<ProgressBar>,
}

impl ProgressLines {
    pub fn new() -> Result<ProgressLines> {
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .map_err(|e| Error::msg(format!("progress bar: {e}")))?
            .progress_chars("=> ");
        Ok(ProgressLines { style, bar: None })
    }

    /// Clears a bar still on screen (a run that stopped mid-epoch).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn println(&self, line: &str) {
        // On standard output, with the bar (on standard error) cleared and redrawn around it.
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }
}

impl Observer for ProgressLines {
    fn epoch_started(&mut self, epoch: usize, planned_epochs: usize, steps: usize) {
        let bar = ProgressBar::new(steps as u64).with_style(self.style.clone());
        bar.set_prefix(format!("epoch {epoch}/{planned_epochs}"));
        self.bar = Some(bar);
    }

    fn step(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(p.step as u64);
        let skipped = match p.skipped_batches {
            0 => String::new(),
            n => format!(" ({n} skipped)"),
        };
        bar.set_message(format!(
            "loss {:.3} acc {:.1}% {:.0} img/s lr {:.4}{skipped}",
            p.loss,
            100.0 * p.accuracy,
            p.images_per_second,
            p.learning_rate
        ));
    }

    fn evaluating(&mut self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("evaluating: {done}/{total} test images"));
        }
    }

    fn epoch_finished(&mut self, report: &EpochReport) {
        self.finish();
        if let Some(pruning) = &report.pruning {
            println!(
                "  pruning: {:.1}% of the SBF filters transformed, {:.2} M MACs, templates {}",
                100.0 * pruning.transformed_fraction,
                pruning.macs as f64 / 1e6,
                pruning.templates
            );
        }
        let r = &report.result;
        let test_text = match &report.evaluation {
            Some(e) => format!("test loss {:.4} acc {:5.2}%", e.loss, 100.0 * e.accuracy),
            None => "test not evaluated".to_string(),
        };
        let skipped = match r.skipped.len() {
            0 => String::new(),
            n => format!("  {n} batch(es) skipped (non-finite)"),
        };
        println!(
            "epoch {:>3}/{}: lr {:.5}  train loss {:.4} acc {:5.2}%  {test_text}{}  {:.0} img/s  \
             {} elapsed, about {} to go{skipped}",
            r.epoch,
            report.planned_epochs,
            r.learning_rate,
            r.loss,
            100.0 * r.accuracy,
            if report.best { " (best)" } else { "" },
            r.images_per_second,
            duration_text(report.elapsed_seconds),
            duration_text(report.remaining_seconds),
        );
    }

    fn note(&mut self, text: &str) {
        self.println(text);
    }
}

/// Seconds as a person reads them: "42s", "7m 05s", "1h 08m".
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::duration_text;

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        assert_eq!(duration_text(0.2), "0s");
        assert_eq!(duration_text(59.4), "59s");
        assert_eq!(duration_text(425.0), "7m 05s");
        assert_eq!(duration_text(4080.0), "1h 08m");
    }
}
