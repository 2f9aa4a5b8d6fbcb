//! The `sbfnet` binary end to end on a generated CIFAR-format folder:
//! train one short epoch, resume, evaluate, print a layer table, and refuse
//! impossible settings with one line before doing any work.

use sbfnet::data::synthetic::{synthetic_set, write_cifar_folder};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sbfnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbfnet"))
        .args(args)
        .env_remove("SBFNET_DATA")
        .output()
        .expect("the sbfnet binary runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("sbfnet-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("cifar");
    write_cifar_folder(&data, &synthetic_set(40, 4, 1), &synthetic_set(20, 4, 2)).unwrap();
    (root, data)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The data folder, the tiny model, batch 8 and 2 threads: what the short runs here share.
fn tiny_run(data: &Path) -> [&str; 8] {
    [
        "--data",
        s(data),
        "--model",
        "resnet8-w2",
        "--batch-size",
        "8",
        "--threads",
        "2",
    ]
}

#[test]
fn train_one_epoch_then_resume_and_evaluate() {
    let (root, data) = fixture("train");
    let out = root.join("run");
    let common = tiny_run(&data);
    let output = sbfnet(
        &[
            &["train"][..],
            &common,
            &[
                "--epochs",
                "2",
                "--train-limit",
                "32",
                "--test-limit",
                "16",
                "--out",
                s(&out),
            ],
        ]
        .concat(),
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "train failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("epoch   1/2") && stdout.contains("epoch   2/2"),
        "{stdout}"
    );
    for file in [
        "metrics.csv",
        "learning_curve.png",
        "last.ckpt",
        "best.ckpt",
        "command.txt",
    ] {
        assert!(out.join(file).is_file(), "{file} missing in {}", out.display());
    }
    // How the run was made: the command, the date, the commit, the machine.
    let command = std::fs::read_to_string(out.join("command.txt")).unwrap();
    let keys: Vec<&str> = command.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        keys,
        ["command", "date", "commit", "machine", "version"],
        "{command}"
    );
    assert!(
        command.starts_with("command sbfnet train --data ") && command.contains(" --epochs 2 "),
        "{command}"
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,elapsed_s"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[2].starts_with("2,"), "{csv}");
    let png = image::open(out.join("learning_curve.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // A finished run resumes to "already finished"; a contradicting flag is refused.
    let last = out.join("last.ckpt");
    // (The image counts come from the checkpoint: no --train-limit needed.)
    let output = sbfnet(&["train", "--resume", s(&last), "--data", s(&data)]);
    let (stdout, stderr) = text(&output);
    assert!(stdout.contains("(32 training, 16 test images)"), "{stdout}");
    assert!(
        output.status.success() && stdout.contains("already finished all 2 epochs"),
        "{stdout}\n{stderr}"
    );
    let output = sbfnet(&["train", "--resume", s(&last), "--data", s(&data), "--lr", "0.5"]);
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("drop --lr 0.5 (the run uses 0.1)"),
        "{stderr}"
    );
    let output = sbfnet(&["train", "--resume", s(&last), "--model", "resnet20"]);
    let (_, stderr) = text(&output);
    assert!(
        stderr.contains("checkpoint is of model \"resnet8-w2 dense\""),
        "{stderr}"
    );
    // A fresh run into the same folder would overwrite it: refused.
    let output = sbfnet(&[&["train"][..], &common, &["--out", s(&out)]].concat());
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("already holds a run"),
        "{stderr}"
    );

    let output = sbfnet(&[
        "eval",
        "--checkpoint",
        s(&out.join("best.ckpt")),
        "--data",
        s(&data),
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("resnet8-w2 dense")
            && stdout.contains("test accuracy")
            && stdout.contains("airplane"),
        "{stdout}"
    );
    assert!(stdout.contains("(20 images"), "{stdout}");
    // --live needs a run with --ema: without one the saved weights already are the live ones.
    let best = out.join("best.ckpt");
    let output = sbfnet(&["eval", "--checkpoint", s(&best), "--data", s(&data), "--live"]);
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("best.ckpt") && stderr.contains("had no --ema"),
        "{stderr}"
    );

    // A diverging run stops with one line and saves nothing of the bad epoch.
    let diverged = root.join("diverged");
    let output = sbfnet(
        &[
            &["train"][..],
            &common,
            &["--lr", "1e30", "--epochs", "1", "--out", s(&diverged)],
        ]
        .concat(),
    );
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("training diverged"),
        "{stderr}"
    );
    assert!(!diverged.join("last.ckpt").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// The short-run options: alternating flips, identity-initialised blocks and averaged weights.
/// `sbfnet eval` of the checkpoint sees the averaged model that the run evaluated.
#[test]
fn averaged_weights_are_what_the_run_and_eval_both_evaluate() {
    let (root, data) = fixture("ema");
    let out = root.join("run");
    let options = [
        "--ema",
        "0.9",
        "--augment",
        "crop+altflip",
        "--zero-init-residual",
    ];
    let limits = [
        "--epochs",
        "2",
        "--train-limit",
        "32",
        "--test-limit",
        "16",
        "--out",
        s(&out),
    ];
    let output = sbfnet(&[&["train"][..], &tiny_run(&data), &options, &limits].concat());
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("augmentation crop+altflip, seed 0, residual blocks start as the identity, weights averaged (decay 0.9)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let (run_loss, run_accuracy): (f32, f32) = (last[4].parse().unwrap(), last[5].parse().unwrap());
    // [accuracy %, loss, …] of `sbfnet eval` on the last checkpoint, with `extra` flags.
    let evaluate = |extra: &[&str]| -> Vec<f32> {
        let last = out.join("last.ckpt");
        let common = [
            "eval",
            "--checkpoint",
            s(&last),
            "--data",
            s(&data),
            "--test-limit",
            "16",
        ];
        let output = sbfnet(&[&common[..], extra].concat());
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stderr}");
        stdout
            .lines()
            .find(|l| l.starts_with("test accuracy"))
            .unwrap()
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches('%').parse().ok())
            .collect()
    };
    let figures = evaluate(&[]);
    assert_eq!(
        format!("{:.2}", figures[0]),
        format!("{:.2}", 100.0 * run_accuracy),
        "{figures:?}\n{csv}"
    );
    assert!((figures[1] - run_loss).abs() < 2e-4, "{figures:?}\n{csv}");
    // `--live` evaluates the other copy: after 2 epochs at decay ≤ 0.9 the two differ.
    let live = evaluate(&["--live"]);
    assert!((live[1] - figures[1]).abs() > 1e-4, "{live:?} vs {figures:?}");
    // The resumed run keeps its average: a contradicting decay is refused.
    let output = sbfnet(&[
        "train",
        "--resume",
        s(&out.join("last.ckpt")),
        "--data",
        s(&data),
        "--ema",
        "0.99",
    ]);
    let (_, stderr) = text(&output);
    assert!(stderr.contains("drop --ema 0.99 (the run uses 0.9)"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--eval-every 2` over 3 epochs evaluates after epochs 2 and 3 (the last): epoch 1's test
/// columns are empty, and resuming the run reads those empty fields back.
#[test]
fn evaluate_every_second_epoch_and_resume_the_sparse_metrics() {
    let (root, data) = fixture("eval-every");
    let out = root.join("run");
    let common = [
        &tiny_run(&data)[..],
        &["--train-limit", "16", "--test-limit", "8", "--eval-every", "2"],
    ]
    .concat();
    let output = sbfnet(&[&["train"][..], &common, &["--epochs", "3", "--out", s(&out)]].concat());
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "train failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test not evaluated"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!((rows[0][4], rows[0][5]), ("", ""), "{csv}");
    for row in &rows[1..] {
        let accuracy: f32 = row[5].parse().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{csv}");
    }
    // Resuming reads the empty fields back (a malformed row would be refused).
    let output = sbfnet(&["train", "--resume", s(&out.join("last.ckpt")), "--data", s(&data)]);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success() && stdout.contains("already finished all 3 epochs"),
        "{stdout}\n{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// airbench94's recipe evaluates as its reference script: once, after the last epoch, with TTA
/// level 2 (flip+shift); the flags still override both.
#[test]
fn airbench94_evaluates_after_the_last_epoch_with_flip_and_shift_unless_told_otherwise() {
    let (root, data) = fixture("airbench-eval");
    let common = [
        "train",
        "--data",
        s(&data),
        "--model",
        "airbench94-w4",
        "--batch-size",
        "8",
        "--threads",
        "2",
        "--train-limit",
        "16",
        "--test-limit",
        "8",
        "--epochs",
        "2",
    ];
    let recipe = root.join("recipe");
    let output = sbfnet(&[&common[..], &["--out", s(&recipe)]].concat());
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("evaluation after every 2. epoch and the last, test-time augmentation flip+shift"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(recipe.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!((rows[0][5], rows.len()), ("", 2), "{csv}");
    assert!(!rows[1][5].is_empty(), "{csv}");
    let told = root.join("told");
    let output = sbfnet(
        &[
            &common[..],
            &["--out", s(&told), "--eval-every", "1", "--tta", "none"],
        ]
        .concat(),
    );
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success() && !stdout.contains("test-time augmentation"),
        "{stdout}\n{stderr}"
    );
    let csv = std::fs::read_to_string(told.join("metrics.csv")).unwrap();
    assert!(
        csv.lines()
            .skip(1)
            .all(|l| !l.split(',').nth(5).unwrap().is_empty()),
        "{csv}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A bad `SBFNET_ISA` stops every command with one line naming the variable; a good one
/// is what the kernels run (`sbfnet system` prints it).
#[test]
fn sbfnet_isa_is_checked_before_any_command_and_forces_the_instruction_set() {
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_sbfnet"))
            .arg("system")
            .env("SBFNET_ISA", value)
            .output()
            .unwrap()
    };
    let output = run("sse2");
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("SBFNET_ISA=\"sse2\": expected avx2 or avx512"),
        "{stderr}"
    );
    let output = run("avx2");
    let (stdout, _) = text(&output);
    assert!(
        output.status.success() && stdout.contains("instruction set: AVX2+FMA (chosen at run time"),
        "{stdout}"
    );
    let output = run("avx512");
    let (stdout, stderr) = text(&output);
    if sbfnet::kernels::simd::Isa::Avx512.is_supported() {
        assert!(
            output.status.success() && stdout.contains("instruction set: AVX-512F"),
            "{stdout}"
        );
    } else {
        assert!(
            !output.status.success() && stderr.contains("no AVX-512F+VL"),
            "{stderr}"
        );
    }
}

#[test]
fn a_reader_that_stops_early_ends_the_command_without_a_panic() {
    // As `sbfnet info --model resnet110 | head -1`: the reader closes the pipe at once.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sbfnet"))
        .args(["info", "--model", "resnet110"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the sbfnet binary runs");
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let (_, stderr) = text(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // Ended by SIGPIPE, or finished before the pipe closed.
        assert!(
            output.status.signal() == Some(13) || output.status.success(),
            "{:?}",
            output.status
        );
    }
}

#[test]
fn info_prints_the_layer_table() {
    let output = sbfnet(&["info", "--model", "resnet20"]);
    let (stdout, _) = text(&output);
    assert!(output.status.success());
    assert!(
        stdout.contains("stage3.block2.conv2") && stdout.contains("269722") && stdout.contains("40551040"),
        "{stdout}"
    );
    // A plan that names stage 3: its layers are SBF, stage 2's stay dense.
    let output = sbfnet(&["info", "--convs", "dense;stage3=sbf:rate=0.75,groups=2"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let kind_of = |layer: &str| {
        let line = stdout.lines().find(|l| l.starts_with(layer)).unwrap_or_default();
        line.split_whitespace().nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(kind_of("stage2.block2.conv2"), "conv3x3", "{stdout}");
    assert_eq!(kind_of("stage3.block0.conv1"), "sbf3x3", "{stdout}");
    // At rate 0.75 (16 templates of 64) the cost model sends both passes of every stage-3 layer,
    // the strided one (16×16 input) included, through the fused kernels at the default batch 128.
    assert!(
        stdout.contains("how the SBF layers compute at batch 128 on 2 threads"),
        "{stdout}"
    );
    for layer in ["stage3.block0.conv1 (16×16)", "stage3.block2.conv2 (8×8)"] {
        let line = format!("  {layer}: forward fused, input gradient fused");
        assert!(stdout.lines().any(|l| l == line), "{stdout}");
    }
    assert!(!stdout.contains("stage2.block0.conv1 ("), "{stdout}");
    // --batch plans at another batch; 0 is refused, naming the flags.
    let output = sbfnet(&["info", "--convs", "sbf:rate=0.5,groups=2", "--batch", "8"]);
    assert!(
        text(&output).0.contains("at batch 8 on 2 threads"),
        "{}",
        text(&output).0
    );
    let output = sbfnet(&["info", "--batch", "0"]);
    assert!(
        !output.status.success() && text(&output).1.contains("--batch"),
        "{}",
        text(&output).1
    );
}

#[test]
fn a_time_budget_ends_the_run_when_its_minutes_are_spent() {
    let (root, data) = fixture("budget");
    let out = root.join("run");
    // 1.2 seconds for at most 10,000 epochs of a few steps each: the budget, not --epochs, ends it.
    let args = [
        "--epochs",
        "10000",
        "--warmup-epochs",
        "1",
        "--time-budget",
        "0.02",
        "--tta",
        "flip",
        "--train-limit",
        "32",
        "--test-limit",
        "16",
        "--out",
        s(&out),
    ];
    let output = sbfnet(&[&["train"][..], &tiny_run(&data), &args].concat());
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("time budget 0.02 min"), "{stdout}");
    assert!(stdout.contains("epochs fit in 0.02 min (were 10000)"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let epochs = csv.lines().count() - 1;
    assert!((1..10000).contains(&epochs), "{csv}");
    // The last epoch run is the last of the plan, and it was evaluated.
    assert!(
        stdout.contains(&format!("epoch {epochs:>3}/{epochs}:")),
        "{stdout}"
    );
    let last = csv.lines().last().unwrap();
    assert!(!last.split(',').nth(5).unwrap().is_empty(), "{csv}");
    // Resuming the finished run: its plan was saved with it.
    let output = sbfnet(&["train", "--resume", s(&out.join("last.ckpt")), "--data", s(&data)]);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success() && stdout.contains(&format!("already finished all {epochs} epochs")),
        "{stdout}\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn impossible_settings_are_refused_with_one_line() {
    let (root, data) = fixture("refuse");
    let out = root.join("never");
    let d = s(&data);
    for (args, message) in [
        (vec!["--batch-size", "0"], "--batch-size must be at least 1"),
        (
            vec!["--epochs", "0"],
            "--epochs must be a positive number of epochs",
        ),
        (
            vec!["--epochs", "-2"],
            "--epochs \"-2\" is not a positive number of epochs",
        ),
        (
            vec!["--batch-size", "2", "--threads", "4"],
            "--batch-size 2 is smaller than --threads 4",
        ),
        (
            vec!["--batch-size", "2", "--threads", "1", "--shards", "3"],
            "--batch-size 2 is smaller than --shards 3",
        ),
        (vec!["--model", "resnet19"], "6n + 2"),
        (vec!["--model", "alexnet"], "unknown model \"alexnet\""),
        (
            vec!["--schedule", "exponential"],
            "--schedule \"exponential\" is unknown",
        ),
        (vec!["--convs", "sparse"], "--convs \"sparse\": unknown conv kind"),
        (
            vec!["--convs", "dense;stage4=sbf:rate=0.5"],
            "\"stage4\", which is no convolution of resnet20",
        ),
        (vec!["--batch-size", "64"], "larger than the 40 training images"),
        (
            vec!["--overlap-exchange", "false"],
            "--overlap-exchange applies to a run across processes only",
        ),
    ] {
        let output = sbfnet(&[&["train", "--data", d, "--out", s(&out)][..], &args].concat());
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} created the output folder");
    }
    let missing_parent = root.join("no/such/run");
    let output = sbfnet(&["train", "--data", d, "--out", s(&missing_parent)]);
    let (_, stderr) = text(&output);
    assert!(
        stderr.contains("parent") && stderr.contains("does not exist"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Settings that do not depend on the data are refused before the data is
/// read: with a data folder that does not exist, the setting is what is named.
#[test]
fn settings_are_refused_before_the_data_is_read() {
    let root = std::env::temp_dir().join(format!("sbfnet-cli-early-{}", std::process::id()));
    let (missing_data, out) = (root.join("no-data"), root.join("never"));
    for (args, message) in [
        (vec!["--threads", "0"], "--threads must be at least 1, got 0"),
        (vec!["--lr", "0"], "--lr must be a positive number, got 0"),
        (vec!["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
        (vec!["--lr", "inf"], "--lr must be a positive number, got inf"),
        (vec!["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
        (vec!["--weight-decay", "-1"], "--weight-decay must be ≥ 0, got -1"),
        (
            vec!["--label-smoothing", "1"],
            "--label-smoothing must be in [0, 1), got 1",
        ),
        (
            vec!["--rotate", "200"],
            "--rotate must be in [0, 180] degrees, got 200",
        ),
        (
            vec!["--warmup-epochs", "10", "--epochs", "3"],
            "--warmup-epochs 10 is longer than the run (--epochs 3)",
        ),
        (
            vec!["--on-nonfinite", "ignore"],
            "unknown --on-nonfinite \"ignore\" (expected stop or skip)",
        ),
        (
            vec!["--train-limit", "0"],
            "--train-limit must be at least 1, got 0",
        ),
        (
            vec!["--test-limit", "0"],
            "--test-limit must be at least 1, got 0",
        ),
        (
            vec!["--eval-every", "0"],
            "--eval-every must be at least 1, got 0",
        ),
        (vec!["--augment", "mixup"], "--augment \"mixup\" is unknown"),
        (
            vec!["--time-budget", "0"],
            "--time-budget must be a positive number of minutes, got 0",
        ),
        (
            vec!["--tta", "rotate"],
            "--tta: unknown test-time augmentation \"rotate\": expected none, flip or flip+shift",
        ),
        (
            vec!["--ema", "1"],
            "--ema 1: the decay must lie strictly between 0 and 1",
        ),
        (
            vec!["--prune-rate", "0.5", "--prune-epochs", "0"],
            "--prune-epochs must be at least 1: a ramp of 0 epochs would never take a pruning step",
        ),
        (
            vec!["--prune-rate", "0.5", "--prune-epochs", "3", "--epochs", "3"],
            "--prune-epochs 3 is too long for --epochs 3: its steps come at the starts of epochs 2 to 4",
        ),
        (
            vec!["--model", "vgg16", "--zero-init-residual"],
            "--zero-init-residual needs a model with residual blocks, and vgg16 has none",
        ),
        (
            vec!["--augment", "flip+altflip"],
            "--augment \"flip+altflip\" is unknown",
        ),
        (
            vec!["--prune-rate", "0.5", "--mask-lr-scale", "0"],
            "--mask-lr-scale must be a positive number, got 0",
        ),
        (
            vec!["--model", "vgg16", "--mask-lr-scale", "4"],
            "--mask-lr-scale needs SBF layers (--prune-rate, or SBF layers in the model's conv plan), and vgg16 dense has none",
        ),
        (
            vec!["--template-choice", "best-fit"],
            "--prune-epochs, --min-templates, --groups, --mask-init, --method, --saliency and --template-choice need --prune-rate",
        ),
        (
            vec!["--prune-rate", "0.5", "--template-choice", "closest"],
            "unknown --template-choice \"closest\" (expected balanced or best-fit)",
        ),
        (
            vec!["--model", "vgg16", "--mask-decay"],
            "--mask-decay needs SBF layers (--prune-rate, or SBF layers in the model's conv plan), and vgg16 dense has none",
        ),
    ] {
        let output = sbfnet(
            &[
                &["train", "--data", s(&missing_data), "--out", s(&out)][..],
                &args,
            ]
            .concat(),
        );
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {message}")),
            "{args:?}: {stderr}"
        );
    }
    assert!(!root.exists(), "a refused run created {}", root.display());
}

/// A student distilled from a teacher checkpoint; the teacher is saved with the run and reloaded
/// on resume, and a missing teacher or a bad setting is a one-line error that names it.
#[test]
fn distil_from_a_teacher_then_resume_and_refuse_bad_settings() {
    let (root, data) = fixture("distil");
    let common = tiny_run(&data);
    let limits = ["--train-limit", "16", "--test-limit", "8"];
    let teacher = root.join("teacher");
    let output = sbfnet(
        &[
            &["train"][..],
            &common,
            &limits,
            &["--epochs", "1", "--out", s(&teacher)],
        ]
        .concat(),
    );
    assert!(output.status.success(), "{:?}", text(&output));
    let teacher_ckpt = teacher.join("last.ckpt");
    let student = root.join("student");
    let output = sbfnet(
        &[
            &["train"][..],
            &common,
            &limits,
            &[
                "--epochs",
                "2",
                "--teacher",
                s(&teacher_ckpt),
                "--kd-temperature",
                "4",
                "--kd-weight",
                "0.5",
            ],
            &["--out", s(&student)],
        ]
        .concat(),
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("at temperature 4, teacher weight 0.5"),
        "{stdout}"
    );
    // Resume the first epoch's checkpoint: it reloads the teacher.
    let resumed = sbfnet(&[
        "train",
        "--data",
        s(&data),
        "--resume",
        s(&student.join("best.ckpt")),
    ]);
    let (stdout, stderr) = text(&resumed);
    assert!(
        resumed.status.success() && stdout.contains("distilling from"),
        "{stdout}\n{stderr}"
    );
    // Bad settings and a missing teacher.
    for (extra, expected) in [
        (
            vec!["--kd-weight", "0.5"],
            "--kd-temperature and --kd-weight need --teacher",
        ),
        (
            vec!["--teacher", s(&teacher_ckpt), "--kd-weight", "2"],
            "--kd-weight must be in [0, 1], got 2",
        ),
        (vec!["--teacher", s(&root.join("none.ckpt"))], "none.ckpt"),
    ] {
        let output = sbfnet(
            &[
                &["train"][..],
                &common,
                &limits,
                &extra,
                &["--out", s(&root.join("x"))],
            ]
            .concat(),
        );
        let (stdout, stderr) = text(&output);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{extra:?}: {stdout}\n{stderr}"
        );
    }
    std::fs::rename(&teacher_ckpt, root.join("moved.ckpt")).unwrap();
    let output = sbfnet(&[
        "train",
        "--data",
        s(&data),
        "--resume",
        s(&student.join("last.ckpt")),
    ]);
    let (_, stderr) = text(&output);
    assert!(
        !output.status.success() && stderr.contains("the run was distilled from teacher"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Pruning works with the recipe that works: averaged weights restart at every pruning step and
/// average the final model after the ramp; a time budget never ends the run before the ramp's
/// last step has trained for an epoch.
#[test]
fn pruning_runs_with_averaged_weights_and_a_time_budget() {
    let (root, data) = fixture("prune-recipe");
    let out = root.join("run");
    let args = [
        "--epochs",
        "50",
        "--time-budget",
        "0.000001",
        "--ema",
        "0.9",
        "--prune-rate",
        "0.5",
        "--prune-epochs",
        "2",
        "--min-templates",
        "1",
        "--train-limit",
        "32",
        "--test-limit",
        "16",
        "--out",
        s(&out),
    ];
    let output = sbfnet(&[&["train"][..], &tiny_run(&data), &args].concat());
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // 60 µs of budget: the planner wants 1 epoch, the ramp (steps at epochs 2 and 3) needs 3.
    let log = std::fs::read_to_string(out.join("pruning.csv")).unwrap();
    let rows: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{log}\n{stdout}");
    assert!(rows[2].starts_with("3,0.5"), "{log}");
    // The run saved the average of the final model and the live weights beside it.
    let checkpoint = sbfnet::checkpoint::Checkpoint::load(&out.join("last.ckpt")).unwrap();
    let updates: usize = checkpoint.get("ema_updates").unwrap().parse().unwrap();
    assert_eq!(
        updates, 4,
        "the average restarted at the last step: one epoch of 4 steps"
    );
    let output = sbfnet(&[
        "eval",
        "--checkpoint",
        s(&out.join("last.ckpt")),
        "--data",
        s(&data),
        "--live",
    ]);
    assert!(output.status.success(), "{}", text(&output).1);
    let _ = std::fs::remove_dir_all(&root);
}
