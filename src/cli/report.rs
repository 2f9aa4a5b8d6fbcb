//! `sbfnet report DIR`: the Markdown results table (paper Table 3.1 form) of the runs in DIR, and
//! optionally the plot of accuracy against MAC reduction.
//!
//! DIR holds run folders: training output folders (with `last.ckpt`), or the committed results
//! folders of this project, `results/<model>/<run>/` (no checkpoints: `summary.txt`, which
//! `--write-summaries` writes beside a checkpoint, and `metrics.csv` stand for it).

use clap::Args;
use sbfnet::checkpoint::write_atomically;
use sbfnet::train::report::{accuracy_against_macs, markdown_table, read_runs, SUMMARY_FILE};
use sbfnet::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folder whose sub-folders are runs (each with last.ckpt, or summary.txt and metrics.csv)
    pub dir: PathBuf,
    /// Write the table into this file instead of printing it
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also draw test accuracy against MAC reduction into this PNG
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write summary.txt into every run folder that has a checkpoint (what a results folder keeps)
    #[arg(long)]
    pub write_summaries: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let runs = read_runs(&args.dir)?;
    if runs.is_empty() {
        return Err(Error::file(
            &args.dir,
            "holds no run folder (a sub-folder with last.ckpt, or summary.txt and metrics.csv)",
        ));
    }
    if args.write_summaries {
        for run in &runs {
            let folder = args.dir.join(&run.folder);
            if folder.join("last.ckpt").exists() {
                write_atomically(&folder.join(SUMMARY_FILE), run.summary_text().as_bytes())?;
            }
        }
    }
    let table = markdown_table(&runs);
    match &args.out {
        Some(path) => write_atomically(path, table.as_bytes())?,
        None => print!("{table}"),
    }
    if let Some(path) = &args.plot {
        let mut bytes = Vec::new();
        accuracy_against_macs(&runs)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::file(path, format!("cannot encode the plot: {e}")))?;
        write_atomically(path, &bytes)?;
    }
    Ok(())
}
