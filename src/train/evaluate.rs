//! Test-set evaluation: loss and accuracy in evaluation mode, with optional
//! test-time views (the image and its mirror image).

use crate::autograd::{Mode, ParamStore, Tape};
use crate::data::augment::{flip_horizontally, make_batch, Augmentation};
use crate::data::cifar::{Cifar10, NUM_CLASSES};
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::ops;
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

/// Accuracy and loss on a set, in evaluation mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f32,
    pub accuracy: f32,
    /// Accuracy of each class (NaN for a class with no image).
    pub per_class_accuracy: [f32; NUM_CLASSES],
    pub per_class_images: [usize; NUM_CLASSES],
}

/// Index of the largest value of each row of logits [N, K].
pub fn predictions(logits: &Tensor) -> Vec<usize> {
    let classes = logits.dim(1);
    logits
        .data
        .chunks(classes)
        .map(|row| (0..classes).fold(0, |best, k| if row[k] > row[best] { k } else { best }))
        .collect()
}

/// Which views of each test image an evaluation looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestViews {
    /// The image as it is.
    #[default]
    Plain,
    /// Test-time augmentation: the image and its mirror image; the prediction
    /// and the loss come from the mean of their two logit vectors.
    PlainAndMirrored,
    /// airbench94's level 2: half the weight on the image and its mirror image, half on the
    /// image shifted one pixel up-left and one pixel down-right (reflect padding), each with its
    /// mirror image: logits = ½·m(x) + ¼·m(x↖) + ¼·m(x↘), m(v) = ½·(f(v) + f(mirror(v))).
    MirroredAndShifted,
}

impl TestViews {
    /// `none` or `flip` (the `--tta` flag).
    pub fn parse(text: &str) -> Result<TestViews> {
        match text {
            "none" => Ok(TestViews::Plain),
            "flip" => Ok(TestViews::PlainAndMirrored),
            "flip+shift" => Ok(TestViews::MirroredAndShifted),
            other => Err(Error::msg(format!(
                "`test_views`: unknown test-time augmentation {other:?}: expected none, flip or flip+shift"
            ))),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TestViews::Plain => "none",
            TestViews::PlainAndMirrored => "flip",
            TestViews::MirroredAndShifted => "flip+shift",
        }
    }
}

/// Loss, accuracy and per-class accuracy on `set` in evaluation mode (running
/// BN statistics, no augmentation). Batches of `batch_size` images are taken
/// in order; each is split into one shard per rayon thread, evaluated in
/// parallel, so at most `batch_size` images' activations are alive at once.
pub fn evaluate(model: &Model, store: &ParamStore, set: &Cifar10, batch_size: usize) -> Evaluation {
    evaluate_views(model, store, set, batch_size, TestViews::Plain)
}

/// The batch x [N, C, H, W] moved by `d` pixels down and right (d = ±1), the uncovered row and
/// column filled by reflection: out[y, x] = x_pad[y + 1 − d, x + 1 − d] of the 1-pixel reflect
/// padding (the reference's crops (0, 0) and (2, 2) of it).
fn shift_reflect(x: &Tensor, d: isize) -> Tensor {
    let [_, _, h, w] = x.nchw("shift_reflect");
    // Reflect padding: index −1 → 1, index n → n − 2.
    let reflect = |i: isize, n: usize| -> usize {
        if i < 0 {
            (-i) as usize
        } else if i as usize >= n {
            2 * n - 2 - i as usize
        } else {
            i as usize
        }
    };
    let mut out = Tensor::zeros(&x.shape);
    for (plane_out, plane) in out.data.chunks_mut(h * w).zip(x.data.chunks(h * w)) {
        for y in 0..h {
            let source_y = reflect(y as isize - d, h);
            for col in 0..w {
                plane_out[y * w + col] = plane[source_y * w + reflect(col as isize - d, w)];
            }
        }
    }
    out
}

/// [`evaluate`], looking at each image through `views`:
/// logits = (f(x) + f(mirror(x))) / 2 for [`TestViews::PlainAndMirrored`].
pub fn evaluate_views(
    model: &Model,
    store: &ParamStore,
    set: &Cifar10,
    batch_size: usize,
    views: TestViews,
) -> Evaluation {
    evaluate_views_with_progress(model, store, set, batch_size, views, &mut |_, _| {})
}

/// [`evaluate_views`], calling `progress(images done, images)` after every batch.
pub fn evaluate_views_with_progress(
    model: &Model,
    store: &ParamStore,
    set: &Cifar10,
    batch_size: usize,
    views: TestViews,
    progress: &mut dyn FnMut(usize, usize),
) -> Evaluation {
    evaluate_images(model, store, set, 0..set.len(), batch_size, views, progress).evaluation()
}

/// What an evaluation counts over some images: summed loss, correct and seen per class. The
/// tallies of disjoint parts of a set add up to the whole set's (a run across processes
/// evaluates one part on each).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tally {
    pub loss_sum: f64,
    pub correct: [usize; NUM_CLASSES],
    pub seen: [usize; NUM_CLASSES],
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.loss_sum += other.loss_sum;
        for k in 0..NUM_CLASSES {
            self.correct[k] += other.correct[k];
            self.seen[k] += other.seen[k];
        }
    }

    pub fn evaluation(&self) -> Evaluation {
        let images = self.seen.iter().sum::<usize>();
        Evaluation {
            images,
            loss: (self.loss_sum / images.max(1) as f64) as f32,
            accuracy: self.correct.iter().sum::<usize>() as f32 / images.max(1) as f32,
            per_class_accuracy: std::array::from_fn(|k| self.correct[k] as f32 / self.seen[k] as f32),
            per_class_images: self.seen,
        }
    }

    /// As floats for an exchange between processes: the loss sum's 64 bits as two floats'
    /// bits, then the counts (exact below 2^24).
    pub fn to_floats(&self) -> Vec<f32> {
        let bits = self.loss_sum.to_bits();
        let mut floats = vec![f32::from_bits((bits >> 32) as u32), f32::from_bits(bits as u32)];
        floats.extend(self.correct.iter().chain(&self.seen).map(|&n| n as f32));
        floats
    }

    /// The tallies of [`Tally::to_floats`], concatenated.
    pub fn from_floats(floats: &[f32]) -> Vec<Tally> {
        floats
            .chunks_exact(2 + 2 * NUM_CLASSES)
            .map(|f| {
                let bits = (u64::from(f[0].to_bits()) << 32) | u64::from(f[1].to_bits());
                Tally {
                    loss_sum: f64::from_bits(bits),
                    correct: std::array::from_fn(|k| f[2 + k] as usize),
                    seen: std::array::from_fn(|k| f[2 + NUM_CLASSES + k] as usize),
                }
            })
            .collect()
    }
}

/// The [`Tally`] of the images `images` of `set`.
pub fn evaluate_images(
    model: &Model,
    store: &ParamStore,
    set: &Cifar10,
    images: std::ops::Range<usize>,
    batch_size: usize,
    views: TestViews,
    progress: &mut dyn FnMut(usize, usize),
) -> Tally {
    let total = images.len();
    let indices: Vec<usize> = images.collect();
    let threads = rayon::current_num_threads();
    let mut loss_sum = 0.0f64;
    let (mut correct, mut seen) = ([0usize; NUM_CLASSES], [0usize; NUM_CLASSES]);
    for batch in indices.chunks(batch_size.max(1)) {
        let shard_size = batch.len().div_ceil(threads);
        // Per shard: (loss sum, predictions and labels).
        let shards: Vec<(f64, Vec<usize>, Vec<usize>)> = batch
            .par_chunks(shard_size)
            .map(|shard| {
                let (x, labels) = make_batch(set, shard, &Augmentation::NONE, &mut StdRng::seed_from_u64(0));
                // m(v) = ½·(f(v) + f(mirror(v)))
                let mirrored_mean = |v: Tensor| {
                    let mirrored = eval_logits(model, store, flip_horizontally(&v));
                    let mut logits = eval_logits(model, store, v);
                    for (a, b) in logits.data.iter_mut().zip(&mirrored.data) {
                        *a = 0.5 * (*a + b);
                    }
                    logits
                };
                let logits = match views {
                    TestViews::Plain => eval_logits(model, store, x),
                    TestViews::PlainAndMirrored => mirrored_mean(x),
                    TestViews::MirroredAndShifted => {
                        let (up_left, down_right) = (shift_reflect(&x, -1), shift_reflect(&x, 1));
                        let mut logits = mirrored_mean(x);
                        let (a, b) = (mirrored_mean(up_left), mirrored_mean(down_right));
                        for ((l, a), b) in logits.data.iter_mut().zip(&a.data).zip(&b.data) {
                            *l = 0.5 * *l + 0.25 * (a + b);
                        }
                        logits
                    }
                };
                let mut tape = Tape::new(store, Mode::Eval);
                let predicted = predictions(&logits);
                let logits = tape.input(logits);
                let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0);
                let loss_sum = tape.value(loss).data[0] as f64 * shard.len() as f64;
                (loss_sum, predicted, labels)
            })
            .collect();
        for (shard_loss, predicted, labels) in shards {
            loss_sum += shard_loss;
            for (&p, &t) in predicted.iter().zip(&labels) {
                seen[t] += 1;
                correct[t] += usize::from(p == t);
            }
        }
        progress(seen.iter().sum(), total);
    }
    Tally {
        loss_sum,
        correct,
        seen,
    }
}

/// The model's logits [N, 10] for the images `x` [N, 3, 32, 32], in evaluation mode.
fn eval_logits(model: &Model, store: &ParamStore, x: Tensor) -> Tensor {
    let mut tape = Tape::new(store, Mode::Eval);
    let input = tape.input(x);
    let logits = model.forward(&mut tape, input);
    tape.value(logits).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::synthetic_set;
    use crate::nn::ModelSpec;

    /// The tallies of three parts of a set add up to the whole set's, and survive the trip
    /// through floats that an exchange between processes takes.
    #[test]
    fn tallies_of_parts_add_up_to_the_whole_and_round_trip_through_floats() {
        let (model, store) = tiny_model(5);
        let set = synthetic_set(37, 10, 6);
        let plain = TestViews::Plain;
        let whole = evaluate_images(&model, &store, &set, 0..37, 8, plain, &mut |_, _| {});
        let parts = [0..12, 12..25, 25..37]
            .map(|part| evaluate_images(&model, &store, &set, part, 8, plain, &mut |_, _| {}));
        let floats: Vec<f32> = parts.iter().flat_map(Tally::to_floats).collect();
        let received = Tally::from_floats(&floats);
        assert_eq!(received, parts.to_vec());
        let mut sum = received[0];
        for tally in &received[1..] {
            sum.add(tally);
        }
        assert_eq!((sum.correct, sum.seen), (whole.correct, whole.seen));
        assert!((sum.loss_sum - whole.loss_sum).abs() <= 1e-9 * whole.loss_sum.abs());
        assert_eq!(sum.evaluation().images, 37);
    }

    /// A half-width ResNet-8 initialised from `seed`.
    fn tiny_model(seed: u64) -> (Model, ParamStore) {
        let mut store = ParamStore::default();
        let model = ModelSpec::parse_name("resnet8-w2")
            .unwrap()
            .build(&mut store, &mut StdRng::seed_from_u64(seed));
        (model, store)
    }

    /// The whole set as one batch, unaugmented, and its labels.
    fn whole_set(set: &Cifar10) -> (Tensor, Vec<usize>) {
        let all: Vec<usize> = (0..set.len()).collect();
        make_batch(set, &all, &Augmentation::NONE, &mut StdRng::seed_from_u64(0))
    }

    /// The fraction of `labels` that the largest of `logits` picks.
    fn accuracy_by_hand(logits: &Tensor, labels: &[usize]) -> f32 {
        let right = predictions(logits)
            .iter()
            .zip(labels)
            .filter(|(p, t)| p == t)
            .count();
        right as f32 / labels.len() as f32
    }

    #[test]
    fn evaluation_counts_every_image_once_and_does_not_depend_on_the_batch_size() {
        let set = synthetic_set(37, 10, 3);
        let (model, store) = tiny_model(1);
        let a = evaluate(&model, &store, &set, 5);
        let b = evaluate(&model, &store, &set, 64);
        assert_eq!(a.images, 37);
        assert_eq!(a.per_class_images.iter().sum::<usize>(), 37);
        assert_eq!((a.accuracy, a.per_class_images), (b.accuracy, b.per_class_images));
        assert!((a.loss - b.loss).abs() < 1e-5 * a.loss);
        // Accuracy by hand from the logits of one tape over the whole set.
        let (x, labels) = whole_set(&set);
        assert_eq!(
            a.accuracy,
            accuracy_by_hand(&eval_logits(&model, &store, x), &labels)
        );
    }

    #[test]
    fn mirrored_views_average_the_logits_of_each_image_and_its_mirror_image() {
        let set = synthetic_set(23, 10, 5);
        let (model, store) = tiny_model(2);
        let tta = evaluate_views(&model, &store, &set, 8, TestViews::PlainAndMirrored);
        // By hand: one tape per view over the whole set, logits averaged.
        let (x, labels) = whole_set(&set);
        let plain = eval_logits(&model, &store, x.clone());
        let mirrored = eval_logits(&model, &store, flip_horizontally(&x));
        let mean = Tensor::from_vec(
            &plain.shape,
            plain
                .data
                .iter()
                .zip(&mirrored.data)
                .map(|(a, b)| (a + b) / 2.0)
                .collect(),
        );
        assert_eq!(tta.accuracy, accuracy_by_hand(&mean, &labels));
        let mut tape = Tape::new(&store, Mode::Eval);
        let mean = tape.input(mean);
        let loss = ops::cross_entropy(&mut tape, mean, &labels, 0.0);
        assert!((tta.loss - tape.value(loss).data[0]).abs() < 1e-5 * tta.loss);
        // The views really differ: synthetic images are not mirror-symmetric.
        assert_ne!(tta.loss, evaluate(&model, &store, &set, 8).loss);
        // A set of mirror images gives the same evaluation.
        let mut mirror_set = set.clone();
        for image in mirror_set.images.chunks_mut(32) {
            image.reverse();
        }
        let of_mirrors = evaluate_views(&model, &store, &mirror_set, 8, TestViews::PlainAndMirrored);
        assert_eq!(of_mirrors.accuracy, tta.accuracy);
        assert!((of_mirrors.loss - tta.loss).abs() < 1e-5 * tta.loss);
    }

    #[test]
    fn test_views_parse_their_flag_values() {
        assert_eq!(TestViews::parse("none").unwrap(), TestViews::Plain);
        assert_eq!(TestViews::parse("flip").unwrap(), TestViews::PlainAndMirrored);
        assert_eq!(
            TestViews::parse("flip+shift").unwrap(),
            TestViews::MirroredAndShifted
        );
        assert_eq!(TestViews::MirroredAndShifted.describe(), "flip+shift");
        assert!(TestViews::parse("mirror")
            .unwrap_err()
            .message
            .contains("expected none, flip or flip+shift"));
    }

    #[test]
    fn predictions_pick_the_first_largest_logit() {
        let logits = Tensor::from_vec(&[3, 3], vec![0.1, 0.9, 0.3, 2.0, 2.0, 1.0, -1.0, -3.0, -0.5]);
        assert_eq!(predictions(&logits), vec![1, 0, 2]);
    }

    #[test]
    fn a_shift_moves_the_image_a_pixel_and_reflects_at_the_border() {
        // One 3×3 plane 0..9 row by row. Down-right: out[y][x] = in[y−1][x−1], −1 reflected to 1.
        let x = Tensor::from_vec(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
        assert_eq!(
            shift_reflect(&x, 1).data,
            vec![4.0, 3.0, 4.0, 1.0, 0.0, 1.0, 4.0, 3.0, 4.0]
        );
        // Up-left: out[y][x] = in[y+1][x+1], 3 reflected to 1.
        assert_eq!(
            shift_reflect(&x, -1).data,
            vec![4.0, 5.0, 4.0, 7.0, 8.0, 7.0, 4.0, 5.0, 4.0]
        );
    }

    #[test]
    fn on_images_that_shifts_and_mirrors_leave_alone_all_views_agree() {
        // Every image one colour: its mirror image and its shifts are itself, so the six-view
        // mean (weights ½ on the mirror pair, ¼ on each shifted pair) is the plain logits.
        let mut set = Cifar10::default();
        for i in 0..6u8 {
            set.images
                .extend((0..3 * 1024).map(|p| i * 30 + (p / 1024) as u8 * 10));
            set.labels.push(i % 10);
        }
        let (model, store) = tiny_model(3);
        let plain = evaluate_views(&model, &store, &set, 4, TestViews::Plain);
        let six = evaluate_views(&model, &store, &set, 4, TestViews::MirroredAndShifted);
        assert!(
            (plain.loss - six.loss).abs() < 1e-5,
            "{} vs {}",
            plain.loss,
            six.loss
        );
        assert_eq!(plain.accuracy, six.accuracy);
    }
}
