//! libFuzzer target: `sbfnet::data::cifar::parse_records` on any bytes.
//! Accepted input must hold labels 0..=9 and re-encode to the same bytes; a refusal must be one
//! line naming the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sbfnet::data::cifar;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/data_batch_1.bin");
    match cifar::parse_records(data, path) {
        Ok(set) => {
            assert!(set.labels.iter().all(|&label| label < 10));
            assert_eq!(cifar::to_records(&set), data);
        }
        Err(error) => {
            let text = error.to_string();
            assert!(text.starts_with("fuzz/data_batch_1.bin: "), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }
});
