//! `sbfnet info`: a model's layers with their parameters and multiply-accumulates.

use clap::Args;
use rand::{rngs::StdRng, SeedableRng};
use sbfnet::autograd::ParamStore;
use sbfnet::kernels::sbf::SbfShape;
use sbfnet::kernels::simd::Isa;
use sbfnet::nn::ConvLayer;
use sbfnet::train::TrainConfig;
use sbfnet::{Error, Result};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// resnet20|resnet32|resnet44|resnet56|resnet110|vgg16 (any resnet6n+2; -w<k> sets the width)
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// Which convolutions are dense or SBF (as for `sbfnet train`)
    #[arg(long, default_value = "dense")]
    pub convs: String,
    /// Show the model saved in this checkpoint instead (e.g. a pruned run: its templates per layer)
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// The batch at which to plan how each SBF layer computes [default: the model's recipe
    /// batch: 1024 for airbench94, else 128]
    #[arg(long)]
    pub batch: Option<usize>,
    /// The threads at which to plan it
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let (model, store) = match &args.checkpoint {
        Some(path) => sbfnet::checkpoint::load_model(&sbfnet::checkpoint::Checkpoint::load(path)?, path)?,
        None => {
            let spec = super::args::model_spec(&args.model, &args.convs)?;
            let mut store = ParamStore::default();
            let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
            (model, store)
        }
    };
    let table = model.layer_table(&store);
    println!(
        "{} (per 3×32×32 image; \"dense\" columns: the same layer as a dense conv)",
        model.description()
    );
    let line = |name: &str,
                kind: &str,
                output: &str,
                params: usize,
                dense_params: usize,
                macs: usize,
                dense_macs: usize| {
        println!(
            "{name:<22} {kind:<14} {output:<12} {params:>10} {dense_params:>12} {macs:>14} {dense_macs:>14}"
        )
    };
    println!(
        "{:<22} {:<14} {:<12} {:>10} {:>12} {:>14} {:>14}",
        "layer", "type", "output", "params", "dense params", "MACs", "dense MACs"
    );
    for row in &table {
        let output = row
            .output
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        line(
            &row.name,
            &row.kind,
            &output,
            row.params,
            row.dense_params,
            row.macs,
            row.dense_macs,
        );
    }
    let sum = |f: fn(&sbfnet::nn::LayerRow) -> usize| table.iter().map(f).sum::<usize>();
    let (params, dense_params, macs, dense_macs) = (
        sum(|r| r.params),
        sum(|r| r.dense_params),
        sum(|r| r.macs),
        sum(|r| r.dense_macs),
    );
    line("total", "", "", params, dense_params, macs, dense_macs);
    println!(
        "{:.3} M parameters ({:.2}% fewer than dense), {:.2} M MACs per image ({:.2}% fewer than dense)",
        params as f64 / 1e6,
        100.0 * (1.0 - params as f64 / dense_params.max(1) as f64),
        macs as f64 / 1e6,
        100.0 * (1.0 - macs as f64 / dense_macs.max(1) as f64)
    );
    // How each SBF layer computes its passes at this batch and thread count on this CPU
    // (`SbfPath::Auto`: the cost model of ops::sbf and the layouts' predicted speed-ups).
    if args.batch == Some(0) || args.threads == 0 {
        return Err(Error::msg("info: --batch and --threads must be at least 1"));
    }
    let batch = args
        .batch
        .unwrap_or_else(|| TrainConfig::recipe_for(&model.spec).batch_size);
    let isa = Isa::active();
    let plans: Vec<String> = model
        .conv_layers()
        .into_iter()
        .filter_map(|(name, layer)| match layer {
            ConvLayer::Sbf(sbf) => {
                let [_, in_height, in_width] = table.iter().find(|row| row.name == name)?.input[..] else {
                    return None;
                };
                let shape = SbfShape {
                    batch,
                    in_channels: sbf.in_channels,
                    in_height,
                    in_width,
                    out_channels: sbf.out_channels,
                    templates: sbf.num_templates(),
                    kernel: sbf.kernel,
                    stride: sbf.config.stride,
                    padding: sbf.config.padding,
                    groups: sbf.config.groups,
                };
                let plan = sbf.config.plan_for(&shape, isa, args.threads);
                Some(format!("  {name} ({in_height}×{in_width}): {}", plan.describe()))
            }
            ConvLayer::Dense(_) => None,
        })
        .collect();
    if !plans.is_empty() {
        println!(
            "how the SBF layers compute at batch {batch} on {} threads of {} (fused kernels, or the \
             effective filters and the dense conv; the weight gradients always from the dense one):\n{}",
            args.threads,
            isa.name(),
            plans.join("\n")
        );
    }
    Ok(())
}
