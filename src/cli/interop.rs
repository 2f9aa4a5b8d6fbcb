//! `sbfnet export` and `sbfnet import`: models out to and in from PyTorch through safetensors
//! files, under the state-dict names of ../shared/bench/torch_ref.py's CIFAR ResNet (see
//! `sbfnet::checkpoint::safetensors`), and out as ONNX inference graphs
//! (`sbfnet::checkpoint::onnx`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use sbfnet::checkpoint::onnx::export_onnx;
use sbfnet::checkpoint::safetensors::{export_safetensors, import_safetensors};
use sbfnet::checkpoint::{load_model, model_tensors, Checkpoint};
use sbfnet::nn::ModelSpec;
use sbfnet::{Error, Result};

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// Parameters and batch-norm statistics under PyTorch's state-dict names; SBF layers as their
    /// effective dense filters.
    Safetensors,
    /// The inference graph (opset 13, dynamic batch); SBF layers as their effective dense filters.
    Onnx,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The checkpoint to export (a training run's last.ckpt or best.ckpt, dense or SBF).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// What to write [default: onnx for a .onnx file, else safetensors].
    #[arg(long, value_enum)]
    format: Option<ExportFormat>,
}

pub fn export(args: ExportArgs) -> Result<()> {
    if !args.checkpoint.is_file() {
        return Err(Error::file(&args.checkpoint, "--checkpoint: no such file"));
    }
    let checkpoint = Checkpoint::load(&args.checkpoint)?;
    let (model, store) = load_model(&checkpoint, &args.checkpoint)?;
    let onnx_file = args.out.extension().is_some_and(|e| e == "onnx");
    let format = args.format.unwrap_or(if onnx_file {
        ExportFormat::Onnx
    } else {
        ExportFormat::Safetensors
    });
    match format {
        ExportFormat::Safetensors => export_safetensors(&model, &store, &args.out)?,
        ExportFormat::Onnx => export_onnx(&model, &store, &args.out)?,
    }
    println!("wrote {} ({})", args.out.display(), model.description());
    Ok(())
}

#[derive(Args)]
pub struct ImportArgs {
    /// A safetensors file of a PyTorch CIFAR ResNet or VGG-16 state dict.
    #[arg(long)]
    safetensors: PathBuf,
    /// The architecture the file holds (e.g. resnet20, resnet56, vgg16).
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// The checkpoint to write: `sbfnet eval --checkpoint` and `sbfnet prune --from` read it.
    #[arg(long)]
    out: PathBuf,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let spec = ModelSpec::parse_name(&args.model)?;
    let (model, store) = import_safetensors(&args.safetensors, &spec)?;
    if args.out.exists() {
        return Err(Error::file(
            &args.out,
            "--out: exists; choose a new file (nothing is overwritten)",
        ));
    }
    let checkpoint = Checkpoint {
        model: model.description(),
        metadata: vec![("imported_from".into(), args.safetensors.display().to_string())],
        tensors: model_tensors(&store),
    };
    checkpoint.save(&args.out)?;
    println!("wrote {} ({})", args.out.display(), model.description());
    Ok(())
}
