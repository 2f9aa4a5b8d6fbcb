//! The `sbfnet` command: see `sbfnet --help`.

mod cli;

fn main() {
    // Training steps reuse the same buffers every step: keep freed memory (see sbfnet::memory).
    sbfnet::memory::retain_freed_memory();
    end_quietly_on_a_closed_pipe();
    if let Err(error) = cli::run() {
        eprintln!("error: {}", cli::with_flags(&error.to_string()));
        std::process::exit(1);
    }
}

/// `sbfnet info | head` should stop like any Unix tool when `head` has read enough. Rust ignores
/// SIGPIPE, so a write to the closed pipe fails and `println!` panics; with the default action
/// restored, the process ends silently instead (checkpoints are written to a temporary file and
/// renamed, so no saved file is left half-written).
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    {
        use std::ffi::c_int;
        extern "C" {
            /// The C library's `sighandler_t signal(int signum, sighandler_t handler)`.
            fn signal(signum: c_int, handler: usize) -> usize;
        }
        const SIGPIPE: c_int = 13; // Linux and macOS alike
        const SIG_DFL: usize = 0;
        // SAFETY: restores the default action of one signal at start-up, before any thread runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
