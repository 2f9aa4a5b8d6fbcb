//! Training across processes (`--features mpi`), launched with
//! `mpirun --allow-run-as-root --oversubscribe -np R`: R ranks take the steps of one process
//! with the same total number of shards, a layout repeats itself bit for bit, rank 0 alone
//! writes, a resumed run continues, and a killed rank stops the job with the last checkpoint
//! intact.

use crate::common::{assert_same_state, fixture, s, succeed, text, train_command};
use sbfnet::checkpoint::Checkpoint;
use std::path::Path;
use std::process::Command;

/// 48 training images in batches of 16: 3 steps an epoch.
const SHORT: [&str; 4] = ["--train-limit", "48", "--epochs", "1"];

/// `mpirun -np <ranks> sbfnet train …` with `threads` threads a rank, into `out`.
fn mpirun(ranks: usize, threads: usize, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let single = train_command(data, out, &[&["--threads", &threads.to_string()], extra].concat());
    let mut command = Command::new("mpirun");
    command
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &ranks.to_string(),
        ])
        .arg(single.get_program())
        .args(single.get_args());
    for (key, value) in single.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command
}

/// The largest ‖a − b‖ / ‖a‖ over the tensors of two checkpoints (zero tensors skipped).
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let (x, y) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    let mut worst = 0.0f64;
    for ((name, t), (_, u)) in x.tensors.iter().zip(&y.tensors) {
        assert_eq!(t.shape, u.shape, "{name}");
        let norm = t.data.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let difference = t
            .data
            .iter()
            .zip(&u.data)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            worst = worst.max(difference / norm);
        }
    }
    worst
}

#[test]
fn ranks_take_the_steps_of_one_process_with_as_many_shards() {
    let (root, data) = fixture("mpi-steps");
    for (ranks, threads) in [(2, 1), (3, 1)] {
        let one = root.join(format!("one-{ranks}"));
        succeed(&mut train_command(
            &data,
            &one,
            &[&["--threads", &ranks.to_string()][..], &SHORT].concat(),
        ));
        let across = root.join(format!("across-{ranks}"));
        let stdout = succeed(&mut mpirun(ranks, threads, &data, &across, &SHORT));
        // One process prints: rank 0.
        assert_eq!(stdout.matches("done: best test accuracy").count(), 1, "{stdout}");
        let difference = max_relative_difference(&one.join("last.ckpt"), &across.join("last.ckpt"));
        assert!(
            difference <= 1e-6,
            "{ranks} ranks differ from one process by {difference}"
        );
    }
}

#[test]
fn the_same_layout_repeats_bit_for_bit_and_a_killed_rank_stops_the_job_which_resumes() {
    let (root, data) = fixture("mpi-repeat");
    let [first, second] = ["first", "second"].map(|name| root.join(name));
    for out in [&first, &second] {
        succeed(&mut mpirun(2, 1, &data, out, &["--epochs", "2"]));
    }
    assert_same_state(&first.join("last.ckpt"), &second.join("last.ckpt"));

    // Rank 1 pauses mid-epoch 2 (step 6 of 8) and is killed with SIGKILL there.
    let killed = root.join("killed");
    let mut command = mpirun(2, 1, &data, &killed, &["--epochs", "2"]);
    let child = command
        .env("SBFNET_TEST_PAUSE_AT_STEP", "6")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rank_1 = wait_for_rank(1, &killed, std::time::Duration::from_secs(60));
    // Wait until epoch 1's checkpoint is there (rank 0 writes it before step 5).
    let started = std::time::Instant::now();
    while !killed.join("last.ckpt").exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-9", &rank_1.to_string()])
        .status()
        .unwrap()
        .success());
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    // mpirun's own line names the rank that died.
    assert!(
        format!("{stdout}{stderr}").contains("rank 1"),
        "no line names rank 1:\n{stdout}\n{stderr}"
    );
    // The last checkpoint is epoch 1's, intact: resuming it under mpirun repeats the first run.
    let mut resume = Command::new("mpirun");
    resume
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_sbfnet"))
        .args([
            "train",
            "--resume",
            s(&killed.join("last.ckpt")),
            "--data",
            s(&data),
        ])
        .env_remove("SBFNET_TEST_PAUSE_AT_STEP");
    succeed(&mut resume);
    assert_same_state(&first.join("last.ckpt"), &killed.join("last.ckpt"));
}

/// The gradients sent in buckets during the backward pass (the default) or all at once after
/// it: the same steps, bit for bit, on 2 and on 3 ranks (4 shards: ranks of 2, 1 and 1 shards).
#[test]
fn overlapping_the_exchange_with_the_backward_pass_changes_no_bit() {
    let (root, data) = fixture("mpi-overlap");
    for ranks in [2, 3] {
        let runs = [("true", "overlap"), ("false", "after")].map(|(overlap, name)| {
            let out = root.join(format!("{name}-{ranks}"));
            let flags = [&SHORT[..], &["--shards", "4", "--overlap-exchange", overlap]].concat();
            let stdout = succeed(&mut mpirun(ranks, 1, &data, &out, &flags));
            assert!(stdout.contains("rank 0 waited for its exchanges"), "{stdout}");
            out
        });
        assert_same_state(&runs[0].join("last.ckpt"), &runs[1].join("last.ckpt"));
    }
    // Ranks that disagree on it are refused before the first step.
    let program = env!("CARGO_BIN_EXE_sbfnet");
    let args = |overlap: &str| -> Vec<String> {
        let flags = [&["--threads", "1", "--overlap-exchange"][..], &[overlap]].concat();
        let command = train_command(&data, &root.join("mixed"), &flags);
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let output = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "1", program])
        .args(args("true"))
        .arg(":")
        .args(["-np", "1", program])
        .args(args("false"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("overlap-exchange"), "{stdout}\n{stderr}");
}

/// The PID of rank `rank` of a run writing into `out` (its environment names the rank, its
/// command line the folder).
fn wait_for_rank(rank: usize, out: &Path, timeout: std::time::Duration) -> u32 {
    let started = std::time::Instant::now();
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let read = |file: &str| std::fs::read(entry.path().join(file)).unwrap_or_default();
            let command_line = String::from_utf8_lossy(&read("cmdline")).into_owned();
            let environment = String::from_utf8_lossy(&read("environ")).into_owned();
            if command_line.contains(s(out))
                && !command_line.starts_with("mpirun")
                && environment.split('\0').any(|v| v == wanted)
            {
                return pid;
            }
        }
        assert!(
            started.elapsed() < timeout,
            "rank {rank} of {} never started",
            out.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A time budget across processes: every rank re-plans after each epoch and follows rank 0's
/// plan (`Trainer::rank_zero_value`, tested with a fake exchange in tests/train); the tiny
/// set's 5 epochs fit in the minute, and rank 0 alone writes their 5 rows.
#[test]
fn a_time_budget_runs_across_processes() {
    let (root, data) = fixture("mpi-budget");
    let out = root.join("run");
    let budget = ["--train-limit", "48", "--epochs", "5", "--time-budget", "1"];
    let stdout = succeed(&mut mpirun(2, 1, &data, &out, &budget));
    assert_eq!(stdout.matches("done: best test accuracy").count(), 1, "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 5, "{metrics}");
}

#[test]
fn settings_that_differ_between_ranks_are_refused_naming_the_ranks() {
    let (root, data) = fixture("mpi-mismatch");
    // Rank 1 asks for another learning rate (mpirun's MPMD form: one command per rank).
    let args = |extra: &[&str]| -> Vec<String> {
        let command = train_command(&data, &root.join("run"), &[&["--threads", "1"], extra].concat());
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let program = env!("CARGO_BIN_EXE_sbfnet");
    let output = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "1", program])
        .args(args(&[]))
        .arg(":")
        .args(["-np", "1", program])
        .args(args(&["--lr", "0.01"]))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("differ in their settings") && stderr.contains("rank"),
        "{stdout}\n{stderr}"
    );
    assert!(!root.join("run").join("last.ckpt").exists());
}
