//! `sbfnet download`: fetch the official CIFAR-10 binary archive, verify its MD5, unpack it.

use clap::Args;
use sbfnet::data::download::{self, CIFAR10_MD5, CIFAR10_URL};
use std::path::PathBuf;

#[derive(Args)]
pub struct DownloadArgs {
    /// Data folder: the batches go to DIR/cifar-10-batches-bin.
    #[arg(long, value_name = "DIR", default_value = "data")]
    dir: PathBuf,
    /// Where to fetch the archive from (a mirror serving the same file).
    #[arg(long, default_value = CIFAR10_URL)]
    url: String,
    /// The archive's expected MD5 (32 hex digits).
    #[arg(long, default_value = CIFAR10_MD5)]
    md5: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: DownloadArgs) -> sbfnet::Result<()> {
    let already_there = download::cifar10_folder(&args.dir).exists();
    let folder = download::download_cifar10(&args.url, &args.md5, &args.dir, !args.quiet)?;
    let records = download::check_folder(&folder)?;
    if already_there {
        println!(
            "CIFAR-10 is already in {} ({records} records per batch file); nothing downloaded",
            folder.display()
        );
    } else {
        println!(
            "CIFAR-10 is in {} ({records} records per batch file, MD5 {} verified)",
            folder.display(),
            args.md5.to_ascii_lowercase()
        );
    }
    Ok(())
}
