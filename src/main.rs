//! The `sbfnet` command: see `sbfnet --help`.

mod cli;

fn main() {
    // Training steps reuse the same buffers every step: keep freed memory (see sbfnet::memory).
    sbfnet::memory::retain_freed_memory();
    if let Err(error) = cli::run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
