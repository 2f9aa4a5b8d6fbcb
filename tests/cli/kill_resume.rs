//! A training run killed with SIGKILL — in the middle of an epoch, or in the
//! middle of writing a checkpoint — keeps its previous checkpoint intact, and
//! `sbfnet train --resume` from it ends with the parameters of a run that was
//! never stopped, bit for bit (same seed, same thread count). And the same seed
//! and thread count always give the same parameters.
//!
//! The kills land where they must through two test hooks: the binary's
//! `SBFNET_TEST_PAUSE_AT_STEP` (it prints a line and sleeps before that step)
//! and the checkpoint writer's `SBFNET_TEST_PAUSE_MID_WRITE` (it sleeps after
//! writing half of the temporary file, which the test watches for).

use super::common::*;
use sbfnet::checkpoint::{temporary_path, Checkpoint};
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

/// Kills `child` with SIGKILL (`Child::kill` sends SIGKILL on Unix) and reaps it.
fn kill(child: &mut std::process::Child) {
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
}

/// Resumes the run in `out` to its end and checks it against the uninterrupted run in `reference`.
fn resume_and_compare(data: &Path, out: &Path, reference: &Path) -> String {
    let stdout = succeed(&mut resume_command(data, out));
    assert!(stdout.contains("resuming after epoch 1 (step 4)"), "{stdout}");
    assert!(
        !stdout.contains("note:"),
        "the thread count was not taken from the run:\n{stdout}"
    );
    assert_same_state(&out.join("last.ckpt"), &reference.join("last.ckpt"));
    assert_eq!(metrics_without_timings(out), metrics_without_timings(reference));
    stdout
}

#[test]
fn killed_in_the_middle_of_an_epoch_the_run_resumes_to_the_uninterrupted_parameters() {
    let (root, data) = fixture("kill-mid-epoch");
    let reference = uninterrupted_run(&root, &data, "reference");
    let out = root.join("killed");

    // Stop before step 6: epoch 2, after its first batch has changed the parameters in memory.
    let pause_step = STEPS_PER_EPOCH + 2;
    let (mut child, _, seen) = start_paused(&data, &out, pause_step, &[]);
    assert!(seen.iter().any(|l| l.starts_with("epoch   1/3")), "{seen:?}");
    let saved = std::fs::read(out.join("last.ckpt")).unwrap();
    kill(&mut child);

    // The epoch-1 checkpoint is as it was, and complete; no temporary is left.
    assert_eq!(std::fs::read(out.join("last.ckpt")).unwrap(), saved);
    assert_eq!(epoch_of(&out.join("last.ckpt")), 1);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    resume_and_compare(&data, &out, &reference);
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--shards` fixes the batch-norm shards apart from the thread count; the checkpoint keeps the
/// thread count too, so a plain `--resume` runs on the 3 threads the run had, not on 1 thread per
/// shard, and repeats the uninterrupted run bit for bit.
#[test]
fn a_run_with_fewer_shards_than_threads_resumes_on_its_own_thread_count() {
    let (root, data) = fixture("kill-shards");
    let reference = root.join("reference");
    let stdout = succeed(&mut train_command(&data, &reference, &["--shards", "1"]));
    assert!(stdout.contains("3 threads, 1 shards per batch"), "{stdout}");
    let out = root.join("killed");
    let (mut child, _, _) = start_paused(&data, &out, STEPS_PER_EPOCH + 2, &["--shards", "1"]);
    kill(&mut child);
    resume_and_compare(&data, &out, &reference);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn killed_in_the_middle_of_writing_a_checkpoint_the_previous_one_is_intact_and_the_run_resumes() {
    let (root, data) = fixture("kill-mid-write");
    let reference = uninterrupted_run(&root, &data, "reference");
    let out = root.join("killed");
    let last = out.join("last.ckpt");

    // Every atomic write pauses half-way for 0.5 s; wait for a write of last.ckpt
    // while an earlier last.ckpt exists (epoch 2's write), and kill it there.
    let mut child = train_command(&data, &out, &[])
        .env("SBFNET_TEST_PAUSE_MID_WRITE", "0.5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let temporary = temporary_path(&last, child.id()).unwrap();
    let started = Instant::now();
    let saved = loop {
        if last.exists() && temporary.exists() {
            // last.ckpt is replaced only by a rename, after the pause: this is the previous one.
            break std::fs::read(&last).unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a second write of last.ckpt was seen");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no second write of last.ckpt"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    kill(&mut child);

    // The temporary file holds part of a checkpoint (which does not load); last.ckpt
    // is the complete epoch-1 checkpoint it was before the write began.
    assert!(temporary.exists(), "the kill did not land inside the write");
    assert!(
        std::fs::metadata(&temporary).unwrap().len() < saved.len() as u64,
        "the temporary file is not partial"
    );
    let err = Checkpoint::load(&temporary).unwrap_err().to_string();
    assert!(
        err.contains("checksum mismatch") || err.contains("truncated"),
        "{err}"
    );
    assert_eq!(std::fs::read(&last).unwrap(), saved);
    assert_eq!(epoch_of(&last), 1);

    // The resumed run removes the partial file and ends as the uninterrupted run did.
    let stdout = resume_and_compare(&data, &out, &reference);
    assert!(
        stdout.contains("the partial write of an interrupted run"),
        "{stdout}"
    );
    assert!(!temporary.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_same_seed_and_thread_count_give_bit_identical_parameters() {
    let (root, data) = fixture("determinism");
    let first = uninterrupted_run(&root, &data, "first");
    let second = uninterrupted_run(&root, &data, "second");
    assert_same_state(&first.join("last.ckpt"), &second.join("last.ckpt"));
    assert_eq!(metrics_without_timings(&first), metrics_without_timings(&second));

    // Another thread count splits every batch into other shards (batch norm
    // statistics per shard) and the kernels' sums into other partial sums: the
    // run is as good, but not the same bit for bit (README, "When things go wrong").
    let other = root.join("two-threads");
    succeed(&mut train_command(&data, &other, &["--threads", "2"]));
    let (a, b) = (
        Checkpoint::load(&first.join("last.ckpt")).unwrap(),
        Checkpoint::load(&other.join("last.ckpt")).unwrap(),
    );
    assert_ne!(a.tensor("param.conv1.weight"), b.tensor("param.conv1.weight"));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Real runs are not killed where a hook says: kill the run at random moments
/// (seeded, so the schedule repeats; where the kills land still depends on the
/// machine's speed), restart it each time — `--resume` when a `last.ckpt`
/// exists, from scratch otherwise — and it still ends with the parameters of
/// the run that was never stopped, with no temporary file left behind.
#[test]
fn a_run_killed_at_random_moments_and_restarted_each_time_ends_as_the_uninterrupted_run() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let (root, data) = fixture("kill-random");
    let reference = uninterrupted_run(&root, &data, "reference");
    let out = root.join("killed");
    let last = out.join("last.ckpt");
    let mut rng = StdRng::seed_from_u64(7);
    let (mut kills, mut sessions, mut resumes) = (0, 0, 0);
    loop {
        sessions += 1;
        let mut command = if last.exists() {
            resumes += 1;
            resume_command(&data, &out)
        } else {
            train_command(&data, &out, &[])
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A few kills early in the session, at any moment of it, then let the run finish.
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(10..250));
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if kills >= 8 || Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            break None;
        };
        match finished {
            Some(status) => {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
                assert!(status.success(), "session {sessions} failed: {stderr}");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                // Whatever the moment, last.ckpt (when there is one) is a complete checkpoint.
                if last.exists() {
                    Checkpoint::load(&last).unwrap();
                }
            }
        }
    }
    eprintln!("{kills} kills, {sessions} sessions, {resumes} of them resumed from last.ckpt");
    assert!(kills >= 1, "no kill landed before the run finished");
    assert_same_state(&last, &reference.join("last.ckpt"));
    assert_eq!(metrics_without_timings(&out), metrics_without_timings(&reference));
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The run of [`RUN`] (with `extra` flags) into `out`, started with a pause before `pause_step` and followed until it
/// pauses there: the child, the rest of its standard output, and the lines it printed before.
fn start_paused(
    data: &Path,
    out: &Path,
    pause_step: usize,
    extra: &[&str],
) -> (Child, Lines<BufReader<ChildStdout>>, Vec<String>) {
    let mut child = train_command(data, out, extra)
        .env("SBFNET_TEST_PAUSE_AT_STEP", pause_step.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let paused = format!("test hook: paused before step {pause_step}");
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == paused {
            return (child, lines, seen);
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    panic!("the run ended ({status}) without pausing:\n{}", seen.join("\n"))
}

/// Sends SIGINT (Ctrl-C) to the run paused before `pause_step`; returns its exit code and the
/// whole of its standard output.
fn interrupt_at(data: &Path, out: &Path, pause_step: usize, extra: &[&str]) -> (Option<i32>, String) {
    let (mut child, lines, mut seen) = start_paused(data, out, pause_step, extra);
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    (status.code(), seen.join("\n"))
}

#[test]
fn ctrl_c_saves_the_unfinished_epoch_and_the_resumed_run_is_the_uninterrupted_one() {
    let (root, data) = fixture("ctrl-c");
    let reference = uninterrupted_run(&root, &data, "reference");
    // In epoch 2 (after epoch 1 was saved whole), and in epoch 1 (before any epoch ended).
    for (pause_step, epoch, done, name) in
        [(STEPS_PER_EPOCH + 2, 2, 2, "in-epoch-2"), (2, 1, 2, "in-epoch-1")]
    {
        let out = root.join(name);
        let (code, stdout) = interrupt_at(&data, &out, pause_step, &[]);
        assert_eq!(code, Some(130), "{stdout}");
        let stopped = format!("stopped in epoch {epoch} after {done} of {STEPS_PER_EPOCH} steps");
        let resume = format!("sbfnet train --resume {}", out.join("last.ckpt").display());
        assert!(stdout.contains(&stopped) && stdout.contains(&resume), "{stdout}");
        assert_eq!(epoch_of(&out.join("last.ckpt")), epoch - 1);
        let stdout = succeed(&mut resume_command(&data, &out));
        let resuming = format!(
            "resuming in epoch {epoch} after {done} of its {STEPS_PER_EPOCH} steps (step {pause_step})"
        );
        assert!(stdout.contains(&resuming), "{stdout}");
        assert_same_state(&out.join("last.ckpt"), &reference.join("last.ckpt"));
        assert_eq!(metrics_without_timings(&out), metrics_without_timings(&reference));
        // command.txt holds both sessions.
        let command = std::fs::read_to_string(out.join("command.txt")).unwrap();
        let sessions: Vec<&str> = command.lines().filter(|l| l.starts_with("command ")).collect();
        assert!(
            sessions.len() == 2 && sessions[1].contains("--resume"),
            "{command}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// command.txt names the commit the binary was built from (build.rs), also for a run started
/// outside the checkout: a copied binary (as the long runs use) used to record the commit of
/// whatever folder it was started in, or none outside a checkout.
#[test]
fn command_txt_names_the_commit_the_binary_was_built_from() {
    let (root, data) = fixture("build-commit");
    let out = root.join("run");
    succeed(train_command(&data, &out, &["--epochs", "1"]).current_dir(std::env::temp_dir()));
    let text = std::fs::read_to_string(out.join("command.txt")).unwrap();
    let commit = text.lines().find_map(|l| l.strip_prefix("commit  ")).unwrap();
    match env!("SBFNET_BUILD_COMMIT") {
        "" => assert!(commit.starts_with("unknown"), "{commit}"),
        built => assert_eq!(commit, built),
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// A resumed run evaluates as it did before: `--eval-every` and `--tta` are saved in its
/// checkpoint, so a plain `--resume` neither evaluates the epochs the run skipped nor drops its
/// test-time augmentation (before, it fell back to every epoch and plain views).
#[test]
fn a_resumed_run_keeps_its_evaluation_settings() {
    let (root, data) = fixture("resume-evaluation");
    let out = root.join("run");
    let (code, stdout) = interrupt_at(&data, &out, 2, &["--eval-every", "2", "--tta", "flip"]);
    assert_eq!(code, Some(130), "{stdout}");
    let stdout = succeed(&mut resume_command(&data, &out));
    assert!(
        stdout.contains("evaluation after every 2. epoch and the last, test-time augmentation flip"),
        "{stdout}"
    );
    // epoch,lr,train_loss,train_acc,test_loss,test_acc: epoch 1 skipped, 2 and 3 (the last) evaluated
    let evaluated: Vec<bool> = metrics_without_timings(&out)[1..]
        .iter()
        .map(|row| !row.split(',').nth(5).unwrap().is_empty())
        .collect();
    assert_eq!(evaluated, [false, true, true]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// airbench94 (its whitening filters fitted to the first training images, GELU, max pools,
/// frozen batch-norm scales) with its schedule and lookahead (pulls after steps 5 and 10, the
/// slow weights taken after step 12): the same seed gives the same bits, and a run stopped with
/// Ctrl-C after step 5 resumes to the uninterrupted run's parameters (the slow weights are saved).
#[test]
fn airbench94_is_deterministic_and_resumes_bit_exact() {
    let (root, data) = fixture("airbench94");
    let extra = [
        "--model",
        "airbench94-w4",
        "--lookahead",
        "--schedule",
        "airbench",
    ];
    let reference = root.join("reference");
    succeed(&mut train_command(&data, &reference, &extra));
    let again = root.join("again");
    succeed(&mut train_command(&data, &again, &extra));
    assert_same_state(&reference.join("last.ckpt"), &again.join("last.ckpt"));
    let out = root.join("interrupted");
    let (code, text) = interrupt_at(&data, &out, STEPS_PER_EPOCH + 2, &extra);
    assert_eq!(code, Some(130), "{text}");
    succeed(&mut resume_command(&data, &out));
    assert_same_state(&out.join("last.ckpt"), &reference.join("last.ckpt"));
    let _ = std::fs::remove_dir_all(&root);
}
