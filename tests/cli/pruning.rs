//! `sbfnet train --prune-rate`, `sbfnet prune` and `sbfnet info --checkpoint` end to end on a
//! generated CIFAR-format folder.

use sbfnet::data::synthetic::{synthetic_set, write_cifar_folder};
use std::path::Path;
use std::process::Command;

fn sbfnet(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sbfnet"))
        .args(args)
        .env_remove("SBFNET_DATA")
        .output()
        .expect("the sbfnet binary runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn prune_during_training_and_convert_a_dense_run() {
    let root = std::env::temp_dir().join(format!("sbfnet-prune-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("cifar");
    write_cifar_folder(&data, &synthetic_set(32, 4, 1), &synthetic_set(16, 4, 2)).unwrap();
    let common = [
        "--data",
        s(&data),
        "--model",
        "resnet8-w8",
        "--batch-size",
        "8",
        "--threads",
        "2",
    ];
    prune_from_random_initialisation(&root, &common);
    convert_a_dense_run(&root, &data, &common);
    std::fs::remove_dir_all(&data).unwrap();
    report_the_runs(&root);
    let _ = std::fs::remove_dir_all(&root);
}

/// `sbfnet train --prune-rate` into `<root>/pruned`.
fn prune_from_random_initialisation(root: &Path, common: &[&str]) {
    // Pruning from random init: 2 epochs, a ramp of 1 step to 0.5 with at least 2 templates.
    let pruned = root.join("pruned");
    let (ok, text) = sbfnet(
        &[
            &["train"][..],
            common,
            &[
                "--epochs",
                "2",
                "--prune-rate",
                "0.5",
                "--prune-epochs",
                "1",
                "--min-templates",
                "2",
            ],
            &["--mask-init", "copy", "--out", s(&pruned)],
        ]
        .concat(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("50.0% of the SBF filters transformed"), "{text}");
    let log = std::fs::read_to_string(pruned.join("pruning.csv")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].starts_with("epoch,transformed_fraction,macs,params,stage1.block0.conv1"));
    // Epoch 1 trains the unpruned network; the one step of the ramp comes at the start of epoch 2.
    assert!(
        lines[1].starts_with("1,0.00000,") && lines[2].starts_with("2,0.50000,"),
        "{log}"
    );
    let (ok, info) = sbfnet(&["info", "--checkpoint", s(&pruned.join("last.ckpt"))]);
    assert!(
        ok && info.contains("resnet8-w8 sbf:rate=0,groups=2") && info.contains("fewer than dense"),
        "{info}"
    );
    // The pruned model, with its per-layer template counts, times in bench-train.
    let (ok, timed) = sbfnet(&[
        "bench-train",
        "--checkpoint",
        s(&pruned.join("last.ckpt")),
        "--model",
        "pruned",
        "--batch",
        "4",
        "--threads",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--infer-batch",
        "4",
    ]);
    assert!(
        ok && timed.contains("model of ") && timed.matches("pruned ").count() == 2,
        "{timed}"
    );
}

/// A dense run into `<root>/dense`, converted by `sbfnet prune` into `<root>/converted` (SBF)
/// and `<root>/l1` (the L1 baseline).
fn convert_a_dense_run(root: &Path, data: &Path, common: &[&str]) {
    // A dense run, converted at rate 0.5 and fine-tuned one epoch.
    let dense = root.join("dense");
    let (ok, text) = sbfnet(&[&["train"][..], common, &["--epochs", "1", "--out", s(&dense)]].concat());
    assert!(ok, "{text}");
    let from = dense.join("last.ckpt");
    // `sbfnet prune --from <dense> --data <data> --batch-size 8 --threads 2 --out <root>/<out> <extra>`
    let prune = |out: &str, extra: &[&str]| {
        let out = root.join(out);
        let fixed = ["prune", "--from", s(&from), "--data", s(data), "--out", s(&out)];
        sbfnet(&[&fixed[..], &["--batch-size", "8", "--threads", "2"], extra].concat())
    };
    let (ok, text) = prune(
        "converted",
        &[
            "--rate",
            "0.5",
            "--min-templates",
            "2",
            "--epochs",
            "2",
            "--eval-every",
            "2",
            "--on-nonfinite",
            "skip",
            "--template-choice",
            "best-fit",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("converted resnet8-w8 dense at rate 0.5: 50.0%"),
        "{text}"
    );
    assert!(
        text.contains("the transformed filters reproduce ")
            && text.contains("% of the energy of the dense filters"),
        "{text}"
    );
    let note = std::fs::read_to_string(root.join("converted").join("converted_from.txt")).unwrap();
    assert!(note.contains("template_choice best-fit"), "{note}");
    // The route's wall time is the dense run's and the fine-tuning's.
    let (ok, table) = sbfnet(&["report", s(root)]);
    let row = table.lines().find(|l| l.starts_with("| converted |"));
    assert!(
        ok && row.is_some_and(|row| row.contains(" s dense + ")),
        "{table}"
    );
    // The fine-tuning honours the output flags (it used to drop them).
    assert!(text.contains("on non-finite: skip"), "{text}");
    assert!(
        text.contains("epoch   1/2") && text.contains("test not evaluated") && text.contains("epoch   2/2"),
        "{text}"
    );
    let (ok, text) = prune("x", &["--rate", "1"]);
    assert!(!ok && text.contains("--rate must be in [0, 1)"), "{text}");
    // The L1 baseline: the same conversion, the pruned filters zeroed instead of transformed.
    let (ok, text) = prune(
        "l1",
        &[
            "--rate",
            "0.5",
            "--min-templates",
            "2",
            "--method",
            "l1",
            "--epochs",
            "1",
        ],
    );
    assert!(ok && text.contains("50.0%"), "{text}");
    let (ok, text) = prune("y", &["--rate", "0.5", "--method", "zeros"]);
    assert!(
        !ok && text.contains("unknown --method \"zeros\" (expected sbf or l1)"),
        "{text}"
    );
    // Its --help lists only what it takes: the model comes from --from, the rate from --rate.
    let (ok, help) = sbfnet(&["prune", "--help"]);
    assert!(
        ok && help.contains("--min-templates") && help.contains("--eval-every"),
        "{help}"
    );
    for refused in ["--model", "--convs", "--resume", "--prune-rate", "--prune-epochs"] {
        assert!(
            !help.contains(refused),
            "sbfnet prune --help lists {refused}:\n{help}"
        );
    }
}

/// `sbfnet report` over the four runs: the dense run is every run's baseline.
fn report_the_runs(root: &Path) {
    let (ok, report) = sbfnet(&["report", s(root)]);
    assert!(ok, "{report}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 6, "{report}");
    for (row, start) in [
        (0, "| Run | Model | Method | Baseline Acc |"),
        (2, "| converted | resnet8-w8 | SBF converted 0.50, lstsq masks |"),
        (3, "| dense | resnet8-w8 | dense |"),
        (4, "| l1 | resnet8-w8 | L1 pruning converted 0.50 |"),
        (5, "| pruned | resnet8-w8 | SBF ramp 0.50, copy masks |"),
    ] {
        assert!(lines[row].starts_with(start), "row {row}:\n{report}");
    }
    assert!(lines[3].contains("| +0.00 | 0.00 | 0.00 |"), "{report}");
    // The same table from a results folder without checkpoints (summary.txt + metrics.csv), and
    // the plot of accuracy against MAC reduction.
    let (table, plot) = (root.join("table.md"), root.join("plot.png"));
    let (ok, text) = sbfnet(&[
        "report",
        s(root),
        "--write-summaries",
        "--out",
        s(&table),
        "--plot",
        s(&plot),
    ]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(&table).unwrap(), report);
    let png = image::open(&plot).unwrap();
    assert!(png.width() > 300 && png.height() > 300);
    let results = root.join("results");
    for run in ["converted", "dense", "l1", "pruned"] {
        std::fs::create_dir_all(results.join(run)).unwrap();
        for file in ["summary.txt", "metrics.csv"] {
            std::fs::copy(root.join(run).join(file), results.join(run).join(file)).unwrap();
        }
    }
    let (ok, from_results) = sbfnet(&["report", s(&results)]);
    assert!(ok, "{from_results}");
    assert_eq!(from_results, report);
    // At the same rate, plain pruning saves more MACs than SBF (its pruned filters cost nothing).
    let macs_saved = |line: &str| -> f64 { line.split('|').nth(8).unwrap().trim().parse().unwrap() };
    assert!(macs_saved(lines[4]) > macs_saved(lines[2]), "{report}");
}
