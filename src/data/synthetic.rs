//! Small generated CIFAR-format sets for tests, examples and quick runs.
//!
//! Image of class k: every pixel of channel c is `COLOURS[k][c]` plus uniform
//! noise in ±48, and a bright 8×8 square at a random place. The class is in
//! the mean colour, so a small network learns it within an epoch or two; the
//! noise and the square keep it from being trivial.

use super::cifar::{Cifar10, CHANNELS, IMAGE_BYTES, IMAGE_SIDE, NUM_CLASSES};
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// The mean colour of each class (RGB, 0..255).
pub const COLOURS: [[u8; 3]; NUM_CLASSES] = [
    [200, 60, 60],
    [60, 200, 60],
    [60, 60, 200],
    [200, 200, 60],
    [200, 60, 200],
    [60, 200, 200],
    [128, 128, 128],
    [230, 150, 90],
    [90, 150, 230],
    [40, 40, 40],
];

/// `images` generated images with labels 0..classes (classes ≤ 10), from `seed`.
pub fn synthetic_set(images: usize, classes: usize, seed: u64) -> Cifar10 {
    assert!(
        (1..=NUM_CLASSES).contains(&classes),
        "synthetic_set: classes must be 1..=10"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = Cifar10 {
        images: Vec::with_capacity(images * IMAGE_BYTES),
        labels: Vec::with_capacity(images),
    };
    for _ in 0..images {
        let label = rng.gen_range(0..classes);
        let (square_y, square_x) = (rng.gen_range(0..IMAGE_SIDE - 8), rng.gen_range(0..IMAGE_SIDE - 8));
        for c in 0..CHANNELS {
            for y in 0..IMAGE_SIDE {
                for x in 0..IMAGE_SIDE {
                    let in_square =
                        (square_y..square_y + 8).contains(&y) && (square_x..square_x + 8).contains(&x);
                    let value = if in_square {
                        250
                    } else {
                        COLOURS[label][c] as i32 + rng.gen_range(-48..=48)
                    };
                    set.images.push(value.clamp(0, 255) as u8);
                }
            }
        }
        set.labels.push(label as u8);
    }
    set
}

/// Writes `train` as data_batch_1..5.bin (split as evenly as possible; every
/// file gets at least one record) and `test` as test_batch.bin into `dir`.
pub fn write_cifar_folder(dir: &Path, train: &Cifar10, test: &Cifar10) -> Result<()> {
    use super::cifar::{to_records, TEST_FILE, TRAINING_FILES};
    if train.len() < TRAINING_FILES.len() || test.is_empty() {
        return Err(Error::file(
            dir,
            "a CIFAR-10 folder needs at least 5 training and 1 test image",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create folder", e))?;
    let files = TRAINING_FILES.len();
    for (i, name) in TRAINING_FILES.iter().enumerate() {
        let (start, end) = (i * train.len() / files, (i + 1) * train.len() / files);
        let part = Cifar10 {
            images: train.images[start * IMAGE_BYTES..end * IMAGE_BYTES].to_vec(),
            labels: train.labels[start..end].to_vec(),
        };
        let path = dir.join(name);
        std::fs::write(&path, to_records(&part)).map_err(|e| Error::io(&path, "cannot write", e))?;
    }
    let path = dir.join(TEST_FILE);
    std::fs::write(&path, to_records(test)).map_err(|e| Error::io(&path, "cannot write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_folder_loads_back() {
        let dir = std::env::temp_dir().join(format!("sbfnet-synthetic-{}", std::process::id()));
        let (train, test) = (synthetic_set(23, 4, 1), synthetic_set(7, 4, 2));
        assert!(train.labels.iter().all(|&l| l < 4));
        write_cifar_folder(&dir, &train, &test).unwrap();
        assert_eq!(super::super::cifar::load_training_set(&dir).unwrap(), train);
        assert_eq!(super::super::cifar::load_test_set(&dir).unwrap(), test);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
