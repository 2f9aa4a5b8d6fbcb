//! Command-line parsing (clap) and one module per subcommand. The command line
//! only parses and validates settings; the work is done by the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sbfnet",
    version,
    about = "Train CIFAR-10 CNNs with SBF layers (templates + cheap spatial transformations) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this build runs on (instruction set, threads).
    System,
}

pub fn run() -> sbfnet::Result<()> {
    match Cli::parse().command {
        Command::System => {
            println!("instruction set: {}", sbfnet::benchmark::instruction_set());
            println!("threads: {}", rayon::current_num_threads());
            Ok(())
        }
    }
}
