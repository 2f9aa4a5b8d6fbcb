//! Helpers shared by the tests that run the `sbfnet` binary as a child
//! process on a generated CIFAR-format folder (tests/cli/kill_resume.rs,
//! tests/cli/numerical_faults.rs).

#![allow(dead_code)] // each test file uses its own part

use sbfnet::checkpoint::Checkpoint;
use sbfnet::data::synthetic::{synthetic_set, write_cifar_folder};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A short run: resnet8-w4 on 64 generated images, batches of 16 (4 steps per epoch), 3 epochs,
/// 3 threads (more than this machine's cores: a resumed run must pick the count up from the
/// checkpoint, not from the machine), evaluated on 16 test images.
pub const RUN: [&str; 16] = [
    "--model",
    "resnet8-w4",
    "--batch-size",
    "16",
    "--epochs",
    "3",
    "--threads",
    "3",
    "--seed",
    "11",
    "--train-limit",
    "64",
    "--test-limit",
    "16",
    "--lr",
    "0.05",
];
pub const STEPS_PER_EPOCH: usize = 4;

/// A fresh folder under the test target dir with a generated CIFAR-10 folder `cifar/` in it.
pub fn fixture(name: &str) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("cifar");
    write_cifar_folder(&data, &synthetic_set(80, 4, 21), &synthetic_set(20, 4, 22)).unwrap();
    (root, data)
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `sbfnet train --data <data> <RUN> --out <out> <extra>` as a command (not
/// started); a flag in `extra` replaces the same flag of [`RUN`].
pub fn train_command(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sbfnet"));
    let run = RUN.chunks(2).filter(|pair| !extra.contains(&pair[0])).flatten();
    command
        .arg("train")
        .args(["--data", s(data), "--out", s(out)])
        .args(run)
        .args(extra)
        .env_remove("SBFNET_DATA")
        .env_remove("SBFNET_TEST_PAUSE_MID_WRITE")
        .env_remove("SBFNET_TEST_POISON_STEP")
        .env_remove("SBFNET_TEST_PAUSE_AT_STEP");
    command
}

/// `sbfnet train --resume <out>/last.ckpt --data <data>`: every setting from the checkpoint.
pub fn resume_command(data: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sbfnet"));
    command
        .arg("train")
        .args(["--resume", s(&out.join("last.ckpt")), "--data", s(data)])
        .env_remove("SBFNET_DATA")
        .env_remove("SBFNET_TEST_PAUSE_MID_WRITE")
        .env_remove("SBFNET_TEST_POISON_STEP")
        .env_remove("SBFNET_TEST_PAUSE_AT_STEP");
    command
}

/// Runs `command` to the end; panics with its output unless it succeeded.
pub fn succeed(command: &mut Command) -> String {
    let output = command.output().expect("the sbfnet binary runs");
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "sbfnet failed:\n{stdout}\n{stderr}");
    stdout
}

pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An uninterrupted run of [`RUN`] into `<root>/<name>`; returns its folder.
pub fn uninterrupted_run(root: &Path, data: &Path, name: &str) -> PathBuf {
    let out = root.join(name);
    succeed(&mut train_command(data, &out, &[]));
    out
}

/// Asserts that two checkpoints hold the same tensors bit for bit (parameters,
/// batch-norm statistics, momentum) and the same position and settings.
pub fn assert_same_state(a: &Path, b: &Path) {
    let (x, y) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    assert_eq!(x.model, y.model);
    let names = |c: &Checkpoint| c.tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&x), names(&y));
    for ((name, t), (_, u)) in x.tensors.iter().zip(&y.tensors) {
        assert_eq!(t.shape, u.shape, "{name}");
        let bits = |t: &sbfnet::Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        if bits(t) != bits(u) {
            let differing = t
                .data
                .iter()
                .zip(&u.data)
                .filter(|(p, q)| p.to_bits() != q.to_bits())
                .count();
            panic!(
                "{name} differs in {differing} of {} values between {} and {}",
                t.len(),
                a.display(),
                b.display()
            );
        }
    }
    // Everything but the wall-clock time.
    let settings = |c: &Checkpoint| {
        c.metadata
            .iter()
            .filter(|(k, _)| k != "elapsed_seconds")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(settings(&x), settings(&y));
}

/// The columns of metrics.csv that do not depend on the wall clock
/// (epoch, lr, train loss and accuracy, test loss and accuracy).
pub fn metrics_without_timings(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|line| line.split(',').take(6).collect::<Vec<_>>().join(","))
        .collect()
}

/// The epoch a checkpoint was written after.
pub fn epoch_of(path: &Path) -> usize {
    Checkpoint::load(path)
        .unwrap()
        .get("epoch")
        .unwrap()
        .parse()
        .unwrap()
}
