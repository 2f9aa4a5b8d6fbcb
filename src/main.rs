//! The `sbfnet` command.

fn main() {
    println!("sbfnet {}: see README.md", env!("CARGO_PKG_VERSION"));
}
