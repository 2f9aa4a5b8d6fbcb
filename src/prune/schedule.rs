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
    /// Epochs over which the fraction grows linearly (the paper: 40 of 300).
    pub epochs: usize,
}

impl Ramp {
    /// rate(e) = target · min(1, (e + 1) / E) for the 0-based epoch e; reaches the
    /// target at the end of epoch E − 1 and stays there.
    pub fn rate_at(&self, epoch: usize) -> f32 {
        if self.epochs == 0 {
            return self.target_rate;
        }
        self.target_rate * ((epoch + 1) as f32 / self.epochs as f32).min(1.0)
    }

    /// True once the assignment must no longer change.
    pub fn is_frozen(&self, epoch: usize) -> bool {
        epoch >= self.epochs
    }
}

/// One prunable layer as the selection sees it.
#[derive(Clone, Debug)]
pub struct LayerFilters {
    /// Saliency of each output filter (higher = more important), [N].
    pub scores: Vec<f32>,
    /// Whether each output filter is currently a template, [N].
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

    fn layer(scores: &[f32], min_templates: usize) -> LayerFilters {
        LayerFilters {
            scores: scores.to_vec(),
            is_template: vec![true; scores.len()],
            min_templates,
        }
    }

    #[test]
    fn ramp_is_linear_then_flat() {
        let ramp = Ramp {
            target_rate: 0.8,
            epochs: 4,
        };
        let rates: Vec<f32> = (0..6).map(|e| ramp.rate_at(e)).collect();
        assert_eq!(rates, vec![0.2, 0.4, 0.6, 0.8, 0.8, 0.8]);
        assert!(!ramp.is_frozen(3) && ramp.is_frozen(4));
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
