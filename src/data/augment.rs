//! Turning CIFAR-10 bytes into a normalised, augmented batch.
//!
//! For every image of the batch, independently (output pixel (c, y, x) of a 32×32 image):
//!
//!   1. horizontal flip:                   x₁ = 31 − x            (else x₁ = x)
//!      random (probability ½), or alternating: image i is mirrored in epoch e iff
//!      first(seed, i) XOR (e odd), so it is seen mirrored in every other epoch
//!      (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", the derandomised flip)
//!   2. random crop from the image padded with 4 zero pixels on each side:
//!      offsets dy, dx ∈ 0..=8,           (y₂, x₂) = (y + dy − 4, x₁ + dx − 4)
//!   3. random rotation by θ ∈ [−r, r] degrees about the image centre (15.5, 15.5),
//!      read with bilinear interpolation:  (y₃, x₃) = R(−θ)·((y₂, x₂) − centre) + centre
//!   4. normalisation:                      `out = (raw[c, y₃, x₃] / 255 − mean[c]) / std[c]`
//!
//! Pixels that fall outside the source image read raw 0 (black), as
//! torchvision's `RandomCrop(32, padding=4)` does before `Normalize`.
//! Without augmentation steps 1–3 are the identity and the batch is the images
//! in order, normalised. Every random choice comes from the `rng` passed in
//! (the alternating flip from the run's seed and the epoch, [`alternating_flip`]),
//! so the same seed gives the same batch.

use super::cifar::{Cifar10, CHANNELS, IMAGE_BYTES, IMAGE_SIDE};
use crate::tensor::Tensor;
use rand::Rng;

/// Per-channel mean of the CIFAR-10 training images (pixel values scaled to 0..1).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Zero pixels added on each side before the random crop.
pub const CROP_PADDING: usize = 4;

/// Which random transformations the training batches get.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// Random 32×32 crop of the 4-pixel zero-padded image.
    pub crop: bool,
    /// Random shift by up to this many pixels in each direction, the uncovered border filled by
    /// reflection (airbench94's translate-2); 0: none. Not with `crop`.
    pub translate: usize,
    /// Horizontal flip: never, at random, or alternating from epoch to epoch.
    pub flip: Flip,
    /// Largest rotation in degrees (uniform in [−r, r]); 0 disables rotation.
    pub rotation_degrees: f32,
}

impl Augmentation {
    /// No augmentation: evaluation batches.
    pub const NONE: Augmentation = Augmentation {
        crop: false,
        translate: 0,
        flip: Flip::Never,
        rotation_degrees: 0.0,
    };

    /// The standard CIFAR recipe: crop + flip, no rotation.
    pub const CROP_FLIP: Augmentation = Augmentation {
        crop: true,
        translate: 0,
        flip: Flip::Random,
        rotation_degrees: 0.0,
    };

    /// A short text for logs and checkpoints, e.g. "crop+flip", "crop+altflip" or "none".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.crop {
            parts.push("crop".to_string());
        }
        if self.translate > 0 {
            parts.push(format!("translate{}", self.translate));
        }
        match self.flip {
            Flip::Never => {}
            Flip::Random => parts.push("flip".to_string()),
            Flip::Alternating => parts.push("altflip".to_string()),
        }
        if self.rotation_degrees > 0.0 {
            parts.push(format!("rotate{}", self.rotation_degrees));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }

    /// Parses [`Augmentation::describe`]'s output.
    pub fn parse(text: &str) -> Option<Augmentation> {
        let mut augmentation = Augmentation::NONE;
        if text == "none" {
            return Some(augmentation);
        }
        for part in text.split('+') {
            match part {
                "crop" if augmentation.translate > 0 => return None,
                "crop" => augmentation.crop = true,
                _ if part.starts_with("translate") && augmentation.crop => return None,
                _ if part.starts_with("translate") => {
                    augmentation.translate =
                        part.strip_prefix("translate")?.parse().ok().filter(|&n| n > 0)?
                }
                "flip" | "altflip" if augmentation.flip != Flip::Never => return None,
                "flip" => augmentation.flip = Flip::Random,
                "altflip" => augmentation.flip = Flip::Alternating,
                _ => augmentation.rotation_degrees = part.strip_prefix("rotate")?.parse().ok()?,
            }
        }
        Some(augmentation)
    }
}

/// How training images are mirrored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Flip {
    Never,
    /// Each image independently with probability ½, every epoch.
    Random,
    /// Image i in epoch e iff [`alternating_flip`]`(seed, i, e)`: half the images at random in
    /// the first epoch, then every image the other way round from the epoch before. Random flips
    /// show an image the same way round in two epochs in a row half the time; alternating ones
    /// never do, which is worth extra epochs in short runs (Jordan 2024, §3.6).
    Alternating,
}

/// Whether image `image` is mirrored in epoch `epoch` (0-based) under [`Flip::Alternating`]:
/// `first(seed, image) XOR (epoch odd)`, where `first` is a fair coin drawn from (seed, image)
/// alone, so the choice needs no state and a resumed run makes the same one.
pub fn alternating_flip(seed: u64, image: usize, epoch: usize) -> bool {
    // SplitMix64's finaliser: every input bit reaches the lowest output bit.
    let mut z = seed ^ (image as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let first = z & 1 == 1;
    first ^ (epoch % 2 == 1)
}

/// Where in a run a batch is drawn: the alternating flip depends on both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPosition {
    pub seed: u64,
    /// Epochs completed before this one (0 in the first).
    pub epoch: usize,
}

/// The random choices for one image.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ImageTransform {
    flip: bool,
    /// Shift: output (y, x) reads the (flipped) image at (y + dy, x + dx); a crop of the
    /// CROP_PADDING-padded image is a shift by −CROP_PADDING..=CROP_PADDING.
    dy: isize,
    dx: isize,
    /// Outside the image: reflection (translate) instead of zeros (crop).
    reflect: bool,
    /// Rotation angle in radians.
    angle: f32,
}

impl ImageTransform {
    const IDENTITY: ImageTransform = ImageTransform {
        flip: false,
        dy: 0,
        dx: 0,
        reflect: false,
        angle: 0.0,
    };

    /// Draws the choices for image `image` in a fixed order (crop, flip, rotation) so a seed
    /// always gives the same batch.
    fn draw(
        augmentation: &Augmentation,
        image: usize,
        position: RunPosition,
        rng: &mut impl Rng,
    ) -> ImageTransform {
        let mut t = ImageTransform::IDENTITY;
        if augmentation.crop {
            t.dy = rng.gen_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
            t.dx = rng.gen_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
        }
        if augmentation.translate > 0 {
            let n = augmentation.translate;
            t.dy = rng.gen_range(0..=2 * n) as isize - n as isize;
            t.dx = rng.gen_range(0..=2 * n) as isize - n as isize;
            t.reflect = true;
        }
        t.flip = match augmentation.flip {
            Flip::Never => false,
            Flip::Random => rng.gen::<bool>(),
            Flip::Alternating => alternating_flip(position.seed, image, position.epoch),
        };
        if augmentation.rotation_degrees > 0.0 {
            let r = augmentation.rotation_degrees;
            t.angle = rng.gen_range(-r..=r).to_radians();
        }
        t
    }
}

/// Index `i` of a row of `n` mirrored at the ends without repeating them (−1 → 1, n → n − 2), as
/// reflect padding does.
fn reflect(i: isize, n: isize) -> isize {
    if i < 0 {
        -i
    } else if i >= n {
        2 * n - 2 - i
    } else {
        i
    }
}

/// Raw pixel value (0..255) of `plane` [32, 32] at integer position (y, x), 0 outside.
fn pixel(plane: &[u8], y: isize, x: isize) -> f32 {
    let side = IMAGE_SIDE as isize;
    if (0..side).contains(&y) && (0..side).contains(&x) {
        plane[(y * side + x) as usize] as f32
    } else {
        0.0
    }
}

/// Bilinear read of `plane` at real position (y, x), 0 outside:
/// Σ over the 4 neighbours of (1 − |y − yᵢ|)(1 − |x − xᵢ|)·plane[yᵢ, xᵢ].
fn bilinear(plane: &[u8], y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    (1.0 - fy) * ((1.0 - fx) * pixel(plane, y0, x0) + fx * pixel(plane, y0, x0 + 1))
        + fy * ((1.0 - fx) * pixel(plane, y0 + 1, x0) + fx * pixel(plane, y0 + 1, x0 + 1))
}

/// Writes image `image` (3072 raw bytes, [3, 32, 32]) transformed by `t` and
/// normalised into `out` (3072 floats, [3, 32, 32]).
fn transform_image(image: &[u8], t: &ImageTransform, out: &mut [f32]) {
    let side = IMAGE_SIDE as isize;
    let centre = (IMAGE_SIDE as f32 - 1.0) / 2.0;
    let (sin, cos) = t.angle.sin_cos();
    for c in 0..CHANNELS {
        let plane = &image[c * IMAGE_SIDE * IMAGE_SIDE..(c + 1) * IMAGE_SIDE * IMAGE_SIDE];
        let out_plane = &mut out[c * IMAGE_SIDE * IMAGE_SIDE..(c + 1) * IMAGE_SIDE * IMAGE_SIDE];
        let (mean, std) = (CIFAR10_MEAN[c], CIFAR10_STD[c]);
        for y in 0..side {
            for x in 0..side {
                let x_flipped = if t.flip { side - 1 - x } else { x };
                let (mut y_cropped, mut x_cropped) = (y + t.dy, x_flipped + t.dx);
                if t.reflect {
                    (y_cropped, x_cropped) = (reflect(y_cropped, side), reflect(x_cropped, side));
                }
                let raw = if t.angle == 0.0 {
                    pixel(plane, y_cropped, x_cropped)
                } else {
                    // Inverse rotation: where in the source does this output pixel come from?
                    let (dy, dx) = (y_cropped as f32 - centre, x_cropped as f32 - centre);
                    let source_y = centre + cos * dy - sin * dx;
                    let source_x = centre + sin * dy + cos * dx;
                    bilinear(plane, source_y, source_x)
                };
                out_plane[(y * side + x) as usize] = (raw / 255.0 - mean) / std;
            }
        }
    }
}

/// The images `indices` of `set`, augmented and normalised: x [N, 3, 32, 32]
/// and their labels `[N]`. Random choices are drawn image by image, in order, from `rng`
/// (an alternating flip is that of the first epoch of seed 0: training uses [`make_batch_into`]).
pub fn make_batch(
    set: &Cifar10,
    indices: &[usize],
    augmentation: &Augmentation,
    rng: &mut impl Rng,
) -> (Tensor, Vec<usize>) {
    let mut batch = Tensor::zeros(&[indices.len(), CHANNELS, IMAGE_SIDE, IMAGE_SIDE]);
    let mut labels = Vec::with_capacity(indices.len());
    let start = RunPosition { seed: 0, epoch: 0 };
    make_batch_into(set, indices, augmentation, start, rng, &mut batch, &mut labels);
    (batch, labels)
}

/// [`make_batch`] into existing buffers (reshaped and overwritten), so a training loop can reuse
/// them, at `position` in the run (which decides an alternating flip).
pub fn make_batch_into(
    set: &Cifar10,
    indices: &[usize],
    augmentation: &Augmentation,
    position: RunPosition,
    rng: &mut impl Rng,
    batch: &mut Tensor,
    labels: &mut Vec<usize>,
) {
    batch.shape = vec![indices.len(), CHANNELS, IMAGE_SIDE, IMAGE_SIDE];
    batch.data.resize(indices.len() * IMAGE_BYTES, 0.0);
    labels.clear();
    for (slot, &index) in indices.iter().enumerate() {
        let t = ImageTransform::draw(augmentation, index, position, rng);
        let out = &mut batch.data[slot * IMAGE_BYTES..(slot + 1) * IMAGE_BYTES];
        transform_image(set.image(index), &t, out);
        labels.push(set.labels[index] as usize);
    }
}

/// The mirror image of every image of a batch: `out[n, c, y, x] = batch[n, c, y, W−1−x]`.
/// Test-time augmentation evaluates each test image and its mirror image.
pub fn flip_horizontally(batch: &Tensor) -> Tensor {
    let width = *batch.shape.last().expect("a batch has dimensions");
    let mut flipped = batch.clone();
    for row in flipped.data.chunks_mut(width.max(1)) {
        row.reverse();
    }
    flipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn flipping_mirrors_each_row_and_flipping_twice_gives_the_batch_back() {
        // [1, 2, 2, 3]: rows (0 1 2) (3 4 5) | (6 7 8) (9 10 11).
        let batch = Tensor::from_vec(&[1, 2, 2, 3], (0..12).map(|v| v as f32).collect());
        let flipped = flip_horizontally(&batch);
        assert_eq!(flipped.shape, batch.shape);
        assert_eq!(flipped.data, [2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
        assert_eq!(flip_horizontally(&flipped), batch);
    }

    /// Two images: pixel value = a ramp that identifies position and channel.
    fn ramp_set() -> Cifar10 {
        let mut set = Cifar10::default();
        for (i, label) in [3u8, 8].into_iter().enumerate() {
            set.images
                .extend((0..IMAGE_BYTES).map(|p| ((p * 7 + i * 13) % 256) as u8));
            set.labels.push(label);
        }
        set
    }

    fn normalised(raw: u8, channel: usize) -> f32 {
        (raw as f32 / 255.0 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]
    }

    #[test]
    fn without_augmentation_pixel_order_is_preserved() {
        let set = ramp_set();
        let mut rng = StdRng::seed_from_u64(1);
        let (x, labels) = make_batch(&set, &[1, 0], &Augmentation::NONE, &mut rng);
        assert_eq!(x.shape, vec![2, 3, 32, 32]);
        assert_eq!(labels, vec![8, 3]);
        for (slot, index) in [(0, 1), (1, 0)] {
            for p in 0..IMAGE_BYTES {
                let expected = normalised(set.image(index)[p], p / 1024);
                assert_eq!(
                    x.data[slot * IMAGE_BYTES + p],
                    expected,
                    "image {index} pixel {p}"
                );
            }
        }
    }

    #[test]
    fn flip_mirrors_each_row() {
        let set = ramp_set();
        let flip = ImageTransform {
            flip: true,
            ..ImageTransform::IDENTITY
        };
        let mut out = vec![0.0; IMAGE_BYTES];
        transform_image(set.image(0), &flip, &mut out);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let source = set.image(0)[c * 1024 + y * 32 + (31 - x)];
                    assert_eq!(out[c * 1024 + y * 32 + x], normalised(source, c));
                }
            }
        }
    }

    #[test]
    fn crop_shifts_and_pads_with_black() {
        let set = ramp_set();
        // Offsets (1, 7): the window starts 3 rows above and 3 columns right of the image's origin.
        let crop = ImageTransform {
            dy: 1 - CROP_PADDING as isize,
            dx: 7 - CROP_PADDING as isize,
            ..ImageTransform::IDENTITY
        };
        let mut out = vec![0.0; IMAGE_BYTES];
        transform_image(set.image(1), &crop, &mut out);
        for c in 0..3 {
            for y in 0..32usize {
                for x in 0..32usize {
                    let (sy, sx) = (y as isize - 3, x as isize + 3);
                    let raw = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                        set.image(1)[c * 1024 + sy as usize * 32 + sx as usize]
                    } else {
                        0
                    };
                    assert_eq!(out[c * 1024 + y * 32 + x], normalised(raw, c), "c{c} y{y} x{x}");
                }
            }
        }
    }

    #[test]
    fn rotation_by_zero_is_identity_and_by_a_quarter_turn_is_a_transpose() {
        let set = ramp_set();
        let mut plain = vec![0.0; IMAGE_BYTES];
        transform_image(set.image(0), &ImageTransform::IDENTITY, &mut plain);
        let quarter = ImageTransform {
            angle: std::f32::consts::FRAC_PI_2,
            ..ImageTransform::IDENTITY
        };
        let mut rotated = vec![0.0; IMAGE_BYTES];
        transform_image(set.image(0), &quarter, &mut rotated);
        // θ = 90°: output (y, x) reads source (centre − (x − centre)·1, centre + (y − centre)) = (31 − x, y).
        for y in 0..32 {
            for x in 0..32 {
                let expected = plain[(31 - x) * 32 + y];
                assert!((rotated[y * 32 + x] - expected).abs() < 1e-3, "y{y} x{x}");
            }
        }
    }

    #[test]
    fn translate_shifts_and_fills_the_border_by_reflection() {
        let set = ramp_set();
        // Shift (−2, +1): output (y, x) reads (y − 2, x + 1), mirrored at the edges.
        let shift = ImageTransform {
            dy: -2,
            dx: 1,
            reflect: true,
            ..ImageTransform::IDENTITY
        };
        let mut out = vec![0.0; IMAGE_BYTES];
        transform_image(set.image(0), &shift, &mut out);
        let mirror = |i: isize| if i < 0 { -i } else if i > 31 { 62 - i } else { i } as usize;
        for c in 0..3 {
            for y in 0..32isize {
                for x in 0..32isize {
                    let raw = set.image(0)[c * 1024 + mirror(y - 2) * 32 + mirror(x + 1)];
                    assert_eq!(out[c * 1024 + (y * 32 + x) as usize], normalised(raw, c));
                }
            }
        }
    }

    #[test]
    fn same_seed_gives_the_same_batch_and_another_seed_does_not() {
        let set = ramp_set();
        let augmentation = Augmentation {
            crop: true,
            translate: 0,
            flip: Flip::Random,
            rotation_degrees: 10.0,
        };
        let indices = [0, 1, 1, 0, 1];
        let batch = |seed| make_batch(&set, &indices, &augmentation, &mut StdRng::seed_from_u64(seed));
        assert_eq!(batch(5), batch(5));
        assert_ne!(batch(5).0, batch(6).0);
    }

    #[test]
    fn describe_and_parse_round_trip() {
        for a in [
            Augmentation::NONE,
            Augmentation::CROP_FLIP,
            Augmentation {
                crop: false,
                translate: 0,
                flip: Flip::Random,
                rotation_degrees: 7.5,
            },
            Augmentation {
                crop: true,
                translate: 0,
                flip: Flip::Alternating,
                rotation_degrees: 0.0,
            },
            Augmentation {
                crop: false,
                translate: 2,
                flip: Flip::Alternating,
                rotation_degrees: 0.0,
            },
        ] {
            assert_eq!(Augmentation::parse(&a.describe()), Some(a));
        }
        assert_eq!(Augmentation::parse("crop+wobble"), None);
        assert_eq!(Augmentation::parse("crop+translate2"), None);
        assert_eq!(Augmentation::parse("translate0"), None);
        assert_eq!(Augmentation::parse("flip+altflip"), None);
    }

    #[test]
    fn alternating_flip_mirrors_every_image_in_every_other_epoch() {
        let seed = 7;
        let images = 2000;
        let first: Vec<bool> = (0..images).map(|i| alternating_flip(seed, i, 0)).collect();
        // The first epoch mirrors about half the images (a fair coin per image: 1000 ± 3σ).
        let mirrored = first.iter().filter(|&&f| f).count();
        assert!(
            (1000 - 3 * 23..=1000 + 3 * 23).contains(&mirrored),
            "{mirrored} of {images}"
        );
        for epoch in 1..6 {
            for (i, &f) in first.iter().enumerate() {
                assert_eq!(
                    alternating_flip(seed, i, epoch),
                    f ^ (epoch % 2 == 1),
                    "image {i} epoch {epoch}"
                );
            }
        }
        // Another seed draws another first epoch.
        let other = (0..images)
            .filter(|&i| alternating_flip(seed + 1, i, 0) != first[i])
            .count();
        assert!(other > images / 4, "only {other} images changed with the seed");
    }

    #[test]
    fn an_alternating_batch_is_mirrored_the_other_way_in_the_next_epoch() {
        let set = ramp_set();
        let augmentation = Augmentation {
            crop: false,
            translate: 0,
            flip: Flip::Alternating,
            rotation_degrees: 0.0,
        };
        let indices = [0, 1];
        let batch_at = |epoch| {
            let (mut batch, mut labels) = (Tensor::zeros(&[0]), Vec::new());
            let position = RunPosition { seed: 3, epoch };
            let mut rng = StdRng::seed_from_u64(0);
            make_batch_into(
                &set,
                &indices,
                &augmentation,
                position,
                &mut rng,
                &mut batch,
                &mut labels,
            );
            batch
        };
        let (even, odd) = (batch_at(4), batch_at(5));
        assert_eq!(flip_horizontally(&even), odd);
        assert_eq!(batch_at(6), even);
        let plain = make_batch(&set, &indices, &Augmentation::NONE, &mut StdRng::seed_from_u64(0)).0;
        for (slot, &image) in indices.iter().enumerate() {
            let expected = if alternating_flip(3, image, 4) {
                flip_horizontally(&plain)
            } else {
                plain.clone()
            };
            let range = slot * IMAGE_BYTES..(slot + 1) * IMAGE_BYTES;
            assert_eq!(even.data[range.clone()], expected.data[range], "image {image}");
        }
    }
}
