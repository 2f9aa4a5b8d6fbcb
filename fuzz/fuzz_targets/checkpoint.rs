//! libFuzzer target: `sbfnet::checkpoint::Checkpoint::from_bytes`.
//!
//! A random 64-bit checksum is a wall no fuzzer climbs, so when the first byte is odd the rest of
//! the input is taken as a checkpoint body and its FNV-1a checksum is appended: the fuzzer then
//! explores the structure parser (lengths, counts, dimensions). An even first byte feeds the rest
//! as it is. Accepted input must re-encode to the same bytes; a refusal must be one line naming
//! the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sbfnet::checkpoint::{fnv1a64, Checkpoint};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        bytes.extend_from_slice(&fnv1a64(rest).to_le_bytes());
    }
    let path = Path::new("fuzz/case.ckpt");
    match Checkpoint::from_bytes(&bytes, path) {
        Ok(checkpoint) => {
            for (_, tensor) in &checkpoint.tensors {
                let elements = tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                assert_eq!(elements, Some(tensor.data.len()));
            }
            assert_eq!(checkpoint.to_bytes(), bytes);
        }
        Err(error) => {
            let text = error.to_string();
            assert!(text.starts_with("fuzz/case.ckpt: "), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }
});
