//! Generalised pruning: which filters stay templates, epoch by epoch.
//!
//! SBF-NOTES §6: start with every filter a template; each epoch of the ramp,
//! rank the filters of all prunable layers by a saliency (L1 norm) against one
//! global threshold, and turn the lowest-ranked into transformations of the
//! kept ones, until the global fraction of transformed filters reaches the
//! target. Each layer keeps at least `min_templates`. A filter once transformed
//! stays transformed (the ramp is monotone).

/// The linear ramp of the global fraction of transformed filters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ramp {
    /// Fraction of all prunable filters transformed at the end of the ramp, in [0, 1).
    pub target_rate: f32,
    /// Pruning steps, one at the start of each epoch of the ramp (the paper: 40 epochs of 300).
    pub epochs: usize,
    /// The 0-based epoch of the first step: 1, so that the first ranking sees one epoch of
    /// training instead of the random initialisation (runs saved before this setting: 0).
    pub first_epoch: usize,
}

impl Ramp {
    /// The ramp of `epochs` steps to `target_rate`, the first after one epoch of training.
    pub fn new(target_rate: f32, epochs: usize) -> Ramp {
        Ramp {
            target_rate,
            epochs,
            first_epoch: 1,
        }
    }

    /// The rate of the step at the start of the 0-based epoch e: target · min(1, (e − first + 1)/E),
    /// 0 before the first step; it reaches the target at the start of epoch first + E − 1.
    pub fn rate_at(&self, epoch: usize) -> f32 {
        if epoch < self.first_epoch {
            return 0.0;
        }
        let step = (epoch - self.first_epoch + 1) as f32;
        self.target_rate * (step / self.epochs.max(1) as f32).min(1.0)
    }

    /// Whether the start of epoch `epoch` takes a pruning step.
    pub fn steps_at(&self, epoch: usize) -> bool {
        (self.first_epoch..self.first_epoch + self.epochs).contains(&epoch)
    }

    /// True once the assignment must no longer change.
    pub fn is_frozen(&self, epoch: usize) -> bool {
        epoch >= self.first_epoch + self.epochs
    }

    /// Epochs a run needs for the whole ramp: its last step falls inside the run.
    pub fn epochs_needed(&self) -> usize {
        self.first_epoch + self.epochs
    }
}

/// One prunable layer as the selection sees it.
#[derive(Clone, Debug)]
pub struct LayerFilters {
    /// Saliency of each output filter (higher = more important), `[N]`.
    pub scores: Vec<f32>,
    /// Whether each output filter is currently a template, `[N]`.
    pub is_template: Vec<bool>,
    /// The layer keeps at least this many templates (or all N if N is smaller).
    pub min_templates: usize,
}

/// Chooses the templates of every layer so that the global fraction of
/// transformed filters reaches `rate` (as closely as the per-layer minimum
/// allows), transforming the lowest-scored templates first. Returns the new
/// `is_template` of each layer; filters already transformed stay transformed.
pub fn select_templates(layers: &[LayerFilters], rate: f32) -> Vec<Vec<bool>> {
    assert!(
        (0.0..1.0).contains(&rate),
        "pruning rate {rate} must be in [0, 1)"
    );
    let total: usize = layers.iter().map(|l| l.scores.len()).sum();
    let wanted = (rate as f64 * total as f64).round() as usize;
    let mut result: Vec<Vec<bool>> = layers.iter().map(|l| l.is_template.clone()).collect();
    let mut transformed: usize = result.iter().flatten().filter(|t| !**t).count();
    let mut templates_left: Vec<usize> = result.iter().map(|l| l.iter().filter(|t| **t).count()).collect();

    // Candidates: every current template, lowest score first (ties: earlier layer, earlier filter).
    let mut candidates: Vec<(f32, usize, usize)> = layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| {
            (0..layer.scores.len())
                .filter(move |&f| layer.is_template[f])
                .map(move |f| (layer.scores[f], l, f))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    for (_score, l, f) in candidates {
        if transformed >= wanted {
            break;
        }
        let floor = layers[l].min_templates.min(layers[l].scores.len()).max(1);
        if templates_left[l] > floor {
            result[l][f] = false;
            templates_left[l] -= 1;
            transformed += 1;
        }
    }
    result
}

/// How a filter's importance is scored for the global ranking.
///
/// The paper ranks filters by magnitude against one global threshold and notes that this
/// "naturally leads to a uniform pruning strategy across all layers" (SBF-NOTES §6.1). That
/// holds for trained filters; from random initialisation it does not: under Kaiming
/// initialisation a weight has standard deviation √(2 / fan-in), so a filter's L1 norm grows
/// as √(fan-in) (fan-in = C·K²): every 16-channel filter of a CIFAR ResNet scores half of every
/// 64-channel one, and the whole first stage would be pruned to its minimum before the third
/// stage loses one filter. With batch norm after each conv, a layer's weight scale carries no
/// meaning at all. [`Saliency::L1Relative`] divides each layer's norms by their mean (v1 of
/// the paper subtracted the layer mean on ImageNet for the same reason), so the one global
/// threshold compares filters by how they stand within their layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saliency {
    /// ‖W_n‖₁ (Li et al., ICLR'17): the paper's literal criterion.
    L1,
    /// ‖W_n‖₁ / mean over the layer's current templates of ‖W_m‖₁ (the default).
    L1Relative,
    /// First-order Taylor (`prune::taylor`), divided by the layer's mean like `L1Relative`.
    Taylor,
}

impl Saliency {
    /// "l1" or "l1-relative", as in `--saliency` and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Saliency::L1 => "l1",
            Saliency::L1Relative => "l1-relative",
            Saliency::Taylor => "taylor",
        }
    }

    /// Parses [`Saliency::name`]'s text.
    pub fn parse(text: &str) -> Option<Saliency> {
        [Saliency::L1, Saliency::L1Relative, Saliency::Taylor]
            .into_iter()
            .find(|s| s.name() == text)
    }

    /// Scores of one layer's template filters from their raw evidence (same order): L1 norms, or
    /// for `Taylor` the accumulated sums.
    pub fn scores(self, template_norms: &[f32]) -> Vec<f32> {
        match self {
            Saliency::L1 => template_norms.to_vec(),
            Saliency::L1Relative | Saliency::Taylor => {
                let mean = template_norms.iter().map(|&v| v as f64).sum::<f64>()
                    / template_norms.len().max(1) as f64;
                let scale = if mean > 0.0 { (1.0 / mean) as f32 } else { 1.0 };
                template_norms.iter().map(|v| v * scale).collect()
            }
        }
    }
}

/// Saliency: the L1 norm of each output filter of a weight [N, ...] (Li et al., ICLR'17).
pub fn l1_norms(weight: &crate::Tensor) -> Vec<f32> {
    let n = weight.dim(0);
    let per_filter = weight.len() / n.max(1);
    weight
        .data
        .chunks(per_filter)
        .map(|f| f.iter().map(|v| v.abs()).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_saliency_is_blind_to_a_layer_scale_and_plain_l1_is_not() {
        let small = [1.0, 2.0, 3.0, 6.0]; // a layer at scale 1
        let large: Vec<f32> = small.iter().map(|v| 10.0 * v).collect(); // the same layer ×10
        assert_eq!(
            Saliency::L1Relative.scores(&small),
            Saliency::L1Relative.scores(&large)
        );
        assert_eq!(
            Saliency::L1Relative.scores(&small),
            vec![1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0]
        );
        assert_ne!(Saliency::L1.scores(&small), Saliency::L1.scores(&large));
        // Globally ranked, relative scores split 4 removals evenly over the two layers.
        let layer = |norms: &[f32], saliency: Saliency| LayerFilters {
            scores: saliency.scores(norms),
            is_template: vec![true; 4],
            min_templates: 1,
        };
        for (saliency, per_layer) in [(Saliency::L1Relative, [2, 2]), (Saliency::L1, [3, 1])] {
            let chosen = select_templates(&[layer(&small, saliency), layer(&large, saliency)], 0.5);
            let removed: Vec<usize> = chosen.iter().map(|l| l.iter().filter(|t| !**t).count()).collect();
            assert_eq!(removed, per_layer, "{}", saliency.name());
        }
        for s in [Saliency::L1, Saliency::L1Relative, Saliency::Taylor] {
            assert_eq!(Saliency::parse(s.name()), Some(s));
        }
        assert_eq!(Saliency::parse("hessian"), None);
    }

    fn layer(scores: &[f32], min_templates: usize) -> LayerFilters {
        LayerFilters {
            scores: scores.to_vec(),
            is_template: vec![true; scores.len()],
            min_templates,
        }
    }

    #[test]
    fn ramp_is_linear_then_flat() {
        // Steps at the starts of epochs 1..=4: the first ranking sees one epoch of training.
        let ramp = Ramp::new(0.8, 4);
        let rates: Vec<f32> = (0..7).map(|e| ramp.rate_at(e)).collect();
        assert_eq!(rates, vec![0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8]);
        let steps: Vec<bool> = (0..7).map(|e| ramp.steps_at(e)).collect();
        assert_eq!(steps, [false, true, true, true, true, false, false]);
        assert!(!ramp.is_frozen(4) && ramp.is_frozen(5));
        assert_eq!(ramp.epochs_needed(), 5);
        // A run saved before the delay existed stepped at the starts of epochs 0..=3.
        let legacy = Ramp {
            first_epoch: 0,
            ..ramp
        };
        let rates: Vec<f32> = (0..5).map(|e| legacy.rate_at(e)).collect();
        assert_eq!(rates, vec![0.2, 0.4, 0.6, 0.8, 0.8]);
        assert!(!legacy.is_frozen(3) && legacy.is_frozen(4));
    }

    #[test]
    fn global_threshold_picks_lowest_scores_across_layers() {
        let layers = [layer(&[5.0, 1.0, 4.0, 9.0], 1), layer(&[2.0, 8.0, 3.0, 7.0], 1)];
        let kept = select_templates(&layers, 0.5);
        // The four lowest scores overall: 1, 2, 3, 4.
        assert_eq!(kept[0], vec![true, false, false, true]);
        assert_eq!(kept[1], vec![false, true, false, true]);
    }

    #[test]
    fn per_layer_minimum_is_respected_and_the_rest_comes_from_elsewhere() {
        // Layer 0 has all the low scores but must keep 3 templates.
        let layers = [layer(&[0.1, 0.2, 0.3, 0.4], 3), layer(&[5.0, 6.0, 7.0, 8.0], 1)];
        let kept = select_templates(&layers, 0.5);
        assert_eq!(kept[0].iter().filter(|t| **t).count(), 3);
        assert_eq!(kept.iter().flatten().filter(|t| !**t).count(), 4);
        assert_eq!(kept[1], vec![false, false, false, true]);
    }

    #[test]
    fn transformed_filters_stay_transformed_as_the_rate_grows() {
        let mut layers = vec![layer(&[3.0, 1.0, 2.0, 4.0, 6.0, 5.0], 1)];
        let first = select_templates(&layers, 0.34);
        layers[0].is_template = first[0].clone();
        // Scores change between epochs; the earlier choice is kept anyway.
        layers[0].scores = vec![1.0, 9.0, 9.0, 2.0, 3.0, 4.0];
        let second = select_templates(&layers, 0.67);
        for f in 0..6 {
            assert!(first[0][f] || !second[0][f], "filter {f} came back");
        }
        assert_eq!(second[0].iter().filter(|t| !**t).count(), 4);
    }

    #[test]
    fn l1_norm_per_filter() {
        let w = crate::Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, -2.0, 0.5, 0.5]);
        assert_eq!(l1_norms(&w), vec![3.0, 1.0]);
    }
}
