//! `sbfnet import` and `sbfnet export`: a PyTorch ResNet-8 (tests/fixtures/torch_resnet8) comes
//! in, is evaluated, converted to SBF by `sbfnet prune --from`, and goes back out (safetensors
//! and ONNX).

use crate::common::{fixture, s, succeed, text};
use std::process::Command;

fn sbfnet(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sbfnet"));
    command.args(args).env_remove("SBFNET_DATA");
    command
}

#[test]
fn a_pytorch_network_comes_in_is_pruned_and_goes_out() {
    let (root, data) = fixture("interop");
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch_resnet8/model.safetensors"
    );
    let imported = root.join("imported.ckpt");
    let out = succeed(&mut sbfnet(&[
        "import",
        "--safetensors",
        weights,
        "--model",
        "resnet8",
        "--out",
        s(&imported),
    ]));
    assert!(out.contains("resnet8 dense"), "{out}");
    // Nothing is overwritten.
    let again = sbfnet(&[
        "import",
        "--safetensors",
        weights,
        "--model",
        "resnet8",
        "--out",
        s(&imported),
    ])
    .output()
    .unwrap();
    let (_, stderr) = text(&again);
    assert!(!again.status.success() && stderr.contains("exists"), "{stderr}");
    succeed(&mut sbfnet(&[
        "eval",
        "--checkpoint",
        s(&imported),
        "--data",
        s(&data),
    ]));
    let pruned = root.join("pruned");
    succeed(&mut sbfnet(&[
        "prune",
        "--from",
        s(&imported),
        "--data",
        s(&data),
        "--out",
        s(&pruned),
        "--rate",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "2",
    ]));
    let exported = root.join("pruned.safetensors");
    let out = succeed(&mut sbfnet(&[
        "export",
        "--checkpoint",
        s(&pruned.join("last.ckpt")),
        "--out",
        s(&exported),
    ]));
    assert!(out.contains("sbf:") && exported.is_file(), "{out}");
    // The same network as an ONNX graph (the format follows the file's extension; onnxruntime
    // runs such graphs in checkpoint::onnx's test).
    let onnx = root.join("pruned.onnx");
    succeed(&mut sbfnet(&[
        "export",
        "--checkpoint",
        s(&pruned.join("last.ckpt")),
        "--out",
        s(&onnx),
    ]));
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(bytes.windows(6).any(|w| w == b"sbfnet") && bytes.windows(4).any(|w| w == b"Conv"));
    // The exported pruned network is a dense ResNet-8 again, which import takes.
    succeed(&mut sbfnet(&[
        "import",
        "--safetensors",
        s(&exported),
        "--model",
        "resnet8",
        "--out",
        s(&root.join("back.ckpt")),
    ]));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn exporting_a_missing_checkpoint_names_the_file() {
    let output = sbfnet(&[
        "export",
        "--checkpoint",
        "/nonexistent/last.ckpt",
        "--out",
        "/tmp/never.safetensors",
    ])
    .output()
    .unwrap();
    let (_, stderr) = text(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/last.ckpt") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
