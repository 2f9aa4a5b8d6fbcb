//! Writes a small generated CIFAR-10-format folder, to try `sbfnet train`
//! without the real data set:
//!
//! ```sh
//! cargo run --release --example synthetic_cifar -- /tmp/synthetic-cifar 2000 500
//! cargo run --release -- train --data /tmp/synthetic-cifar --model resnet8-w4 --epochs 3 --batch-size 32
//! ```
//! Arguments: folder, training images (default 2000), test images (default 500).
//! The ten classes differ by mean colour (see `sbfnet::data::synthetic`).

use sbfnet::data::synthetic::{synthetic_set, write_cifar_folder};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let folder = PathBuf::from(args.first().map_or("synthetic-cifar", String::as_str));
    let count = |i: usize, default: usize| {
        args.get(i)
            .map_or(Ok(default), |v| v.parse::<usize>())
            .unwrap_or_else(|_| {
                eprintln!("error: argument {} must be a number of images", i + 1);
                std::process::exit(1)
            })
    };
    let (train, test) = (count(1, 2000), count(2, 500));
    if let Err(e) = write_cifar_folder(&folder, &synthetic_set(train, 10, 1), &synthetic_set(test, 10, 2)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!(
        "wrote {train} training and {test} test images to {}",
        folder.display()
    );
}
