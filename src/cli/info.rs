//! `sbfnet info`: a model's layers with their parameters and multiply-accumulates.

use clap::Args;
use rand::{rngs::StdRng, SeedableRng};
use sbfnet::autograd::ParamStore;
use sbfnet::Result;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// resnet20|resnet32|resnet44|resnet56|resnet110|vgg16 (any resnet6n+2; -w<k> sets the width)
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// Which convolutions are dense or SBF (as for `sbfnet train`)
    #[arg(long, default_value = "dense")]
    pub convs: String,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let spec = super::train::model_spec(&args.model, &args.convs)?;
    let mut store = ParamStore::default();
    let model = spec.build(&mut store, &mut StdRng::seed_from_u64(0));
    let table = model.layer_table(&store);
    println!("{} (per 3×32×32 image)", model.description());
    println!(
        "{:<22} {:<10} {:<14} {:>10} {:>14}",
        "layer", "type", "output", "params", "MACs"
    );
    for row in &table {
        let output = row
            .output
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        println!(
            "{:<22} {:<10} {:<14} {:>10} {:>14}",
            row.name, row.kind, output, row.params, row.macs
        );
    }
    let (params, macs): (usize, usize) = (
        table.iter().map(|r| r.params).sum(),
        table.iter().map(|r| r.macs).sum(),
    );
    println!(
        "{:<22} {:<10} {:<14} {:>10} {:>14}",
        "total", "", "", params, macs
    );
    println!(
        "{:.3} M parameters, {:.2} M MACs per image",
        params as f64 / 1e6,
        macs as f64 / 1e6
    );
    Ok(())
}
