//! Prints `sbfnet::benchmark::sbf::run(batch)`: `cargo run --release --example sbf_bench -- 128`.
fn main() {
    let batch = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(128);
    print!("{}", sbfnet::benchmark::sbf::run(batch));
}
