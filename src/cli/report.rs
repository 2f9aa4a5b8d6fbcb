//! `sbfnet report DIR`: the Markdown results table (paper Table 3.1 form) of the runs in DIR.

use clap::Args;
use sbfnet::train::report::{markdown_table, read_runs};
use sbfnet::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folder whose sub-folders are runs (each with last.ckpt)
    pub dir: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let runs = read_runs(&args.dir)?;
    if runs.is_empty() {
        return Err(Error::file(
            &args.dir,
            "holds no run folder (a sub-folder with last.ckpt)",
        ));
    }
    print!("{}", markdown_table(&runs));
    Ok(())
}
