//! Checkpoints under damage: cut at every byte, a bit flipped at every position, another format
//! version, another model — each refused with one line naming the file, never a panic — and
//! `write_atomically` killed with SIGKILL at random moments, which must leave the target either
//! absent or a complete checkpoint, never half of one.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sbfnet::checkpoint::{fnv1a64, write_atomically, Checkpoint, FORMAT_VERSION};
use sbfnet::Tensor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn small_checkpoint() -> Checkpoint {
    Checkpoint {
        model: "resnet20 sbf".into(),
        metadata: vec![("epoch".into(), "12".into()), ("seed".into(), "7".into())],
        tensors: vec![
            (
                "conv1.weight".into(),
                Tensor::from_vec(&[2, 1, 1, 3], vec![0.5, -1.0, 2.0, 1e-8, -0.0, 3.25]),
            ),
            ("bn1.running_mean".into(), Tensor::from_vec(&[2], vec![0.1, -0.2])),
            ("step".into(), Tensor::from_vec(&[], vec![42.0])),
        ],
    }
}

/// A fresh folder for one test.
fn fresh_dir(name: &str) -> PathBuf {
    // The process id keeps runs apart: a writer child orphaned by an interrupted run
    // (it stops by itself within 10 s) must not write into the next run's folder.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error of loading `bytes` from a file, checked to be one line starting with the file's name.
fn load_error(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    let error = match Checkpoint::load(path) {
        Ok(_) => panic!("accepted a damaged checkpoint ({} bytes)", bytes.len()),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with(&format!("{}: ", path.display())),
        "does not name the file: {error}"
    );
    assert!(!error.contains('\n'), "not one line: {error}");
    error
}

#[test]
fn cut_at_every_byte_is_refused_naming_the_file() {
    let dir = fresh_dir("cut");
    let path = dir.join("last.ckpt");
    let bytes = small_checkpoint().to_bytes();
    for cut in 0..bytes.len() {
        let error = load_error(&path, &bytes[..cut]);
        let expected = if cut < 8 {
            "bad magic"
        } else if cut < 20 {
            "truncated checkpoint"
        } else {
            "checksum mismatch"
        };
        assert!(error.contains(expected), "cut at {cut}: {error}");
    }
    // And the whole file still loads.
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), small_checkpoint());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bit_flipped_at_every_position_is_refused() {
    let path = Path::new("runs/a/last.ckpt");
    let bytes = small_checkpoint().to_bytes();
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let error = match Checkpoint::from_bytes(&damaged, path) {
            Ok(_) => panic!("accepted a flip of bit {bit}"),
            Err(error) => error.to_string(),
        };
        // FNV-1a detects every single-bit change: each step (xor a byte, multiply by an odd
        // constant mod 2^64) is a bijection of the running state.
        let expected = match bit / 8 {
            0..=7 => "bad magic",
            8..=11 => "checkpoint format version",
            _ => "checksum mismatch",
        };
        assert!(
            error.starts_with("runs/a/last.ckpt: ") && error.contains(expected),
            "bit {bit}: {error}"
        );
    }
}

#[test]
fn another_format_version_is_refused_even_with_a_valid_checksum() {
    let dir = fresh_dir("version");
    let path = dir.join("old.ckpt");
    for version in [0, FORMAT_VERSION + 1, u32::MAX] {
        let mut bytes = small_checkpoint().to_bytes();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = fnv1a64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        let error = load_error(&path, &bytes);
        assert!(
            error.contains(&format!(
                "checkpoint format version {version}, but this sbfnet reads version {FORMAT_VERSION}"
            )),
            "{error}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_model_is_refused_naming_both() {
    let dir = fresh_dir("model");
    let path = dir.join("vgg.ckpt");
    small_checkpoint().save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    loaded.expect_model("resnet20 sbf", &path).unwrap();
    let error = loaded.expect_model("vgg16 dense", &path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}: checkpoint is of model \"resnet20 sbf\", but this run uses \"vgg16 dense\"",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_save_keeps_the_old_file_and_leaves_no_temporary() {
    let dir = fresh_dir("failed-save");
    let path = dir.join("last.ckpt");
    small_checkpoint().save(&path).unwrap();
    // The rename cannot replace a non-empty folder: the save fails after writing its temporary.
    let blocked = dir.join("blocked.ckpt");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let error = small_checkpoint().save(&blocked).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}: cannot write", blocked.display())),
        "{error}"
    );
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked.ckpt", "last.ckpt"]);
    assert_eq!(Checkpoint::load(&path).unwrap(), small_checkpoint());
    std::fs::remove_dir_all(&dir).unwrap();
}

// -------------------------------------------------------------------------------------------
// SIGKILL during write_atomically.

const WRITER_TARGET: &str = "SBFNET_ATOMIC_WRITER_TARGET";
const WRITER_FIRST_GENERATION: &str = "SBFNET_ATOMIC_WRITER_GENERATION";
/// 1 Mi floats: a 4 MiB checkpoint, so a kill often lands in the middle of a write.
const WRITER_FLOATS: usize = 1 << 20;

/// The value at `index` of generation `generation`'s tensor (so a mix of two generations shows).
fn writer_value(generation: u64, index: usize) -> f32 {
    (generation * 1000 + (index % 997) as u64) as f32
}

fn writer_checkpoint(generation: u64) -> Checkpoint {
    Checkpoint {
        model: "kill test".into(),
        metadata: vec![("generation".into(), generation.to_string())],
        tensors: vec![(
            "weights".into(),
            Tensor::from_vec(
                &[WRITER_FLOATS],
                (0..WRITER_FLOATS).map(|i| writer_value(generation, i)).collect(),
            ),
        )],
    }
}

/// The child process of `write_atomically_survives_sigkill_at_random_moments`: the test binary
/// re-invoked with `--ignored --exact` and the target in an environment variable. Writes
/// checkpoints of increasing generation in a loop until killed (or, should the parent be gone,
/// for at most 10 seconds).
#[test]
#[ignore = "child process of write_atomically_survives_sigkill_at_random_moments"]
fn atomic_writer_child() {
    let Some(target) = std::env::var_os(WRITER_TARGET) else {
        return;
    };
    let mut generation: u64 = std::env::var(WRITER_FIRST_GENERATION).unwrap().parse().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        write_atomically(Path::new(&target), &writer_checkpoint(generation).to_bytes()).unwrap();
        generation += 1;
    }
}

/// Reads the target: None when absent, else its generation after checking every value.
fn complete_generation(target: &Path) -> Option<u64> {
    if !target.exists() {
        return None;
    }
    let checkpoint = Checkpoint::load(target).unwrap_or_else(|e| panic!("half-written target: {e}"));
    let generation: u64 = checkpoint.get("generation").unwrap().parse().unwrap();
    let weights = checkpoint.tensor("weights").unwrap();
    assert_eq!(weights.data.len(), WRITER_FLOATS);
    for (i, &v) in weights.data.iter().enumerate() {
        assert_eq!(
            v,
            writer_value(generation, i),
            "generation {generation}, value {i}"
        );
    }
    Some(generation)
}

#[test]
fn write_atomically_survives_sigkill_at_random_moments() {
    let dir = fresh_dir("sigkill");
    let target = dir.join("last.ckpt");
    let mut rng = SmallRng::seed_from_u64(2110_12844);
    let mut last_seen: Option<u64> = None;
    let mut killed_mid_write = 0;
    const ROUNDS: u64 = 25;
    for round in 0..ROUNDS {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "checkpoint_reliability::atomic_writer_child",
                "--test-threads=1",
                "-q",
            ])
            .env(WRITER_TARGET, &target)
            .env(WRITER_FIRST_GENERATION, (round * 1_000_000).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..100)));
        child.kill().unwrap(); // SIGKILL on Unix: no destructor, no cleanup runs.
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the writer exited by itself before being killed"
        );

        // The target is absent only until the first write completes, then always complete, and
        // never older than what was seen before (the old file or the new one, never a mix).
        let seen = complete_generation(&target);
        match (last_seen, seen) {
            (Some(before), None) => panic!("round {round}: the target (generation {before}) vanished"),
            (Some(before), Some(now)) => assert!(now >= before, "round {round}: went back to {now}"),
            _ => {}
        }
        last_seen = seen.or(last_seen);
        // A temporary left behind means the kill landed in the middle of a write.
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path() != target {
                killed_mid_write += 1;
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    assert!(last_seen.is_some(), "no write ever completed");
    eprintln!("{ROUNDS} kills, {killed_mid_write} in the middle of a write; the target was never torn");
    std::fs::remove_dir_all(&dir).unwrap();
}
