//! The CIFAR-10 binary format.
//!
//! Each file (data_batch_1..5.bin, test_batch.bin) is a sequence of 3073-byte
//! records: one label byte (0..=9), then 1024 red, 1024 green and 1024 blue
//! bytes, each plane row-major 32×32. The official files hold 10 000 records each.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const IMAGE_SIDE: usize = 32;
pub const CHANNELS: usize = 3;
/// Bytes of one image: 3 × 32 × 32.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;
/// Bytes of one record: the label byte plus the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
pub const NUM_CLASSES: usize = 10;
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
pub const TRAINING_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// Images and labels, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cifar10 {
    /// [N, 3, 32, 32] bytes: image i starts at i·3072, red plane first.
    pub images: Vec<u8>,
    /// `[N]`, each 0..=9.
    pub labels: Vec<u8>,
}

impl Cifar10 {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 3072 bytes of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        &self.images[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES]
    }

    /// Appends another set's records.
    pub fn extend(&mut self, other: Cifar10) {
        self.images.extend(other.images);
        self.labels.extend(other.labels);
    }
}

/// Parses the records of one file's bytes. `path` only names the file in errors.
pub fn parse_records(bytes: &[u8], path: &Path) -> Result<Cifar10> {
    if bytes.is_empty() {
        return Err(Error::file(
            path,
            "the file is empty (expected 3073-byte CIFAR-10 records)",
        ));
    }
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(Error::file(
            path,
            format!(
                "size {} bytes is not a multiple of the 3073-byte CIFAR-10 record \
                 ({} whole records and {} bytes left over): truncated or not a CIFAR-10 binary file",
                bytes.len(),
                bytes.len() / RECORD_BYTES,
                bytes.len() % RECORD_BYTES
            ),
        ));
    }
    let count = bytes.len() / RECORD_BYTES;
    let mut set = Cifar10 {
        images: Vec::with_capacity(count * IMAGE_BYTES),
        labels: Vec::with_capacity(count),
    };
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if label as usize >= NUM_CLASSES {
            return Err(Error::file(
                path,
                format!(
                    "record {index} (byte offset {}) has label {label}, but CIFAR-10 labels are 0..=9",
                    index * RECORD_BYTES
                ),
            ));
        }
        set.labels.push(label);
        set.images.extend_from_slice(&record[1..]);
    }
    Ok(set)
}

/// Reads and parses one file.
pub fn load_file(path: &Path) -> Result<Cifar10> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read CIFAR-10 file", e))?;
    parse_records(&bytes, path)
}

fn check_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            "CIFAR-10 folder not found (expected data_batch_1..5.bin and test_batch.bin; \
             pass --data or run `sbfnet download`)",
        ));
    }
    Ok(())
}

fn file_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Error::file(&path, "missing CIFAR-10 file"));
    }
    Ok(path)
}

/// The 50 000 training images: data_batch_1..5.bin in `dir`.
pub fn load_training_set(dir: &Path) -> Result<Cifar10> {
    check_folder(dir)?;
    let mut set = Cifar10::default();
    for name in TRAINING_FILES {
        set.extend(load_file(&file_in(dir, name)?)?);
    }
    Ok(set)
}

/// The 10 000 test images: test_batch.bin in `dir`.
pub fn load_test_set(dir: &Path) -> Result<Cifar10> {
    check_folder(dir)?;
    load_file(&file_in(dir, TEST_FILE)?)
}

/// Serialises a set into the binary format (used to make test fixtures).
pub fn to_records(set: &Cifar10) -> Vec<u8> {
    let mut out = Vec::with_capacity(set.len() * RECORD_BYTES);
    for i in 0..set.len() {
        out.push(set.labels[i]);
        out.extend_from_slice(set.image(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..IMAGE_BYTES).map(fill));
        r
    }

    #[test]
    fn parses_labels_and_pixel_order() {
        // Image 0: red plane 1, green 2, blue 3; image 1: a ramp.
        let mut bytes = record(7, |i| (i / 1024) as u8 + 1);
        bytes.extend(record(2, |i| (i % 251) as u8));
        let set = parse_records(&bytes, Path::new("x.bin")).unwrap();
        assert_eq!(set.labels, vec![7, 2]);
        assert_eq!(set.image(0)[0], 1); // red, row 0, col 0
        assert_eq!(set.image(0)[1024], 2); // green
        assert_eq!(set.image(0)[3071], 3); // blue, row 31, col 31
        assert_eq!(set.image(1)[33], 33); // red, row 1, col 1
        assert_eq!(to_records(&set), bytes);
    }

    #[test]
    fn rejects_bad_sizes_and_labels_naming_the_file() {
        let err = parse_records(&[0u8; 3074], Path::new("cut.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cut.bin: size 3074 bytes is not a multiple"),
            "{err}"
        );
        let mut bytes = record(3, |_| 0);
        bytes.extend(record(10, |_| 0));
        let err = parse_records(&bytes, Path::new("bad.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.bin: record 1") && err.contains("label 10"),
            "{err}"
        );
        let err = parse_records(&[], Path::new("empty.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
