//! Records the git commit the binary is built from, for the `commit` line of a run's
//! command.txt (`SBFNET_BUILD_COMMIT`: the hash, "<hash> with uncommitted changes", or empty
//! where the sources are not a git checkout). The line used to name the commit of the folder
//! the run was started in, which is not the binary's when a run uses a copied binary.

use std::process::Command;

fn git(args: &[&str]) -> Option<std::process::Output> {
    Command::new("git").args(args).output().ok()
}

fn main() {
    // Rerun when the sources or the checked-out commit change (a commit rewrites the index).
    for path in ["src", "build.rs", "Cargo.toml", ".git/HEAD", ".git/index"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| {
            let hash = String::from_utf8_lossy(&o.stdout).trim().to_string();
            // `git diff --quiet HEAD -- src Cargo.toml build.rs`: exit 1 where the sources differ
            let dirty = git(&["diff", "--quiet", "HEAD", "--", "src", "Cargo.toml", "build.rs"])
                .is_some_and(|o| o.status.code() == Some(1));
            if dirty {
                format!("{hash} with uncommitted changes")
            } else {
                hash
            }
        })
        .unwrap_or_default();
    println!("cargo:rustc-env=SBFNET_BUILD_COMMIT={commit}");
}
