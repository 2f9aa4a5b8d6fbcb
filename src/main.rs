//! The `sbfnet` command: see `sbfnet --help`.

mod cli;

fn main() {
    if let Err(error) = cli::run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
