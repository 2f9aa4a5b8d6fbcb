//! Downloading CIFAR-10: `sbfnet download`, and `sbfnet train` when it finds no data folder.
//!
//! The official archive (the one torchvision's `download=True` fetches) is streamed to disk while its
//! MD5 is computed, compared with the published sum, unpacked, and every batch file is parsed with
//! [`crate::data::cifar`]. All of it happens in a temporary folder beside the target:
//!
//! ```text
//!   <dest>/.cifar-10-batches-bin.download-<pid>-<n>/cifar-10-binary.tar.gz   the archive, streamed
//!   <dest>/.cifar-10-batches-bin.download-<pid>-<n>/cifar-10-batches-bin/    unpacked, then checked
//!   <dest>/cifar-10-batches-bin/                                             renamed here when complete
//! ```
//!
//! A run that fails removes its temporary folder, so it never leaves a half-written data folder, and a
//! complete `cifar-10-batches-bin` that is already there is never touched (nothing is downloaded).
//! A run that is killed leaves its hidden temporary folder; the next run removes it.

use crate::data::cifar::{self, RECORD_BYTES, TEST_FILE, TRAINING_FILES};
use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The official binary archive (163 MB), as fetched by torchvision's `CIFAR10(download=True)`.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5 (the sum torchvision checks).
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The folder the archive holds: data_batch_1..5.bin, test_batch.bin, batches.meta.txt, readme.html.
pub const FOLDER_NAME: &str = "cifar-10-batches-bin";
const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
const TEMPORARY_PREFIX: &str = ".cifar-10-batches-bin.download-";

/// Where [`download_cifar10`] puts the batches for a data folder `dest_dir`.
pub fn cifar10_folder(dest_dir: &Path) -> PathBuf {
    dest_dir.join(FOLDER_NAME)
}

/// Downloads `url`, checks its MD5 against `md5_hex`, unpacks it and returns
/// `dest_dir/cifar-10-batches-bin`. If that folder already holds all six batch files with
/// consistent sizes it is returned as it is, without any download. `progress` draws a progress bar
/// on stderr (hidden when stderr is not a terminal).
///
/// For the official archive: `download_cifar10(CIFAR10_URL, CIFAR10_MD5, Path::new("data"), true)`.
pub fn download_cifar10(url: &str, md5_hex: &str, dest_dir: &Path, progress: bool) -> Result<PathBuf> {
    let target = cifar10_folder(dest_dir);
    if target.exists() {
        check_folder(&target).map_err(|e| {
            Error::msg(format!(
                "{e} (the folder {} already exists but is not a complete CIFAR-10 copy: \
                 move it away and run again)",
                target.display()
            ))
        })?;
        return Ok(target);
    }
    let created = !dest_dir.exists();
    std::fs::create_dir_all(dest_dir).map_err(|e| Error::io(dest_dir, "cannot create the data folder", e))?;
    remove_stale_temporaries(dest_dir);
    let result = download_into(url, md5_hex, dest_dir, &target, progress);
    if result.is_err() && created {
        // Leave the file system as it was: remove the data folder this run made (if still empty).
        let _ = std::fs::remove_dir(dest_dir);
    }
    result
}

fn download_into(
    url: &str,
    md5_hex: &str,
    dest_dir: &Path,
    target: &Path,
    progress: bool,
) -> Result<PathBuf> {
    // <pid>-<n>: unique among processes and among downloads within this process.
    static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{TEMPORARY_PREFIX}{}-{}",
        std::process::id(),
        DOWNLOADS.fetch_add(1, Ordering::Relaxed)
    );
    let work = TemporaryFolder::create(dest_dir.join(name))?;
    let archive = work.path.join(ARCHIVE_NAME);
    let received_md5 = fetch(url, &archive, progress)?;
    if !received_md5.eq_ignore_ascii_case(md5_hex) {
        return Err(Error::msg(format!(
            "{url}: MD5 of the downloaded archive is {received_md5}, expected {md5_hex} \
             (corrupted transfer or not the CIFAR-10 binary archive)"
        )));
    }
    // Errors about files in the temporary folder (deleted on return) name them inside the archive.
    let in_archive = |e: Error| match e.path.as_deref().and_then(|p| p.strip_prefix(&work.path).ok()) {
        Some(inside) => Error::msg(format!("{url}: {}: {}", inside.display(), e.message)),
        None => e,
    };
    unpack(&archive, &work.path).map_err(in_archive)?;
    let unpacked = work.path.join(FOLDER_NAME);
    check_records(&unpacked).map_err(in_archive)?;
    // A directory rename never replaces a non-empty directory, so a copy that appeared meanwhile
    // (another run) is left as it is, and used if it is complete.
    if let Err(e) = std::fs::rename(&unpacked, target) {
        if check_folder(target).is_err() {
            return Err(Error::io(
                target,
                "cannot move the verified download into place",
                e,
            ));
        }
    }
    drop(work);
    Ok(target.to_path_buf())
}

/// Checks that `dir` holds the five training batches and the test batch, each a non-empty whole
/// number of 3073-byte records, all the same number (10 000 in the official set). Reads only sizes.
/// Returns the number of records per file.
pub fn check_folder(dir: &Path) -> Result<usize> {
    let mut records_per_file = None;
    for name in TRAINING_FILES.iter().chain(std::iter::once(&TEST_FILE)) {
        let path = dir.join(name);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, "missing CIFAR-10 file", e))?
            .len();
        if size == 0 || size % RECORD_BYTES as u64 != 0 {
            return Err(Error::file(
                &path,
                format!("size {size} bytes is not a whole, non-zero number of 3073-byte records"),
            ));
        }
        let records = (size / RECORD_BYTES as u64) as usize;
        check_same_count(&path, records, &mut records_per_file)?;
    }
    Ok(records_per_file.unwrap_or(0))
}

/// Like [`check_folder`], but parses every record (labels 0..=9) with the CIFAR-10 reader.
fn check_records(dir: &Path) -> Result<usize> {
    let mut records_per_file = None;
    for name in TRAINING_FILES.iter().chain(std::iter::once(&TEST_FILE)) {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::file(&path, "the archive holds no such CIFAR-10 file"));
        }
        let set = cifar::load_file(&path)?;
        check_same_count(&path, set.len(), &mut records_per_file)?;
    }
    Ok(records_per_file.unwrap_or(0))
}

fn check_same_count(path: &Path, records: usize, first: &mut Option<usize>) -> Result<()> {
    match *first {
        None => *first = Some(records),
        Some(expected) if expected != records => {
            return Err(Error::file(
                path,
                format!("holds {records} records, but data_batch_1.bin holds {expected}"),
            ))
        }
        Some(_) => {}
    }
    Ok(())
}

/// Streams `url` into the file `to`, returning the MD5 (lowercase hex) of what was received.
/// Fails on an HTTP error status, a connection problem, or a body shorter than its Content-Length.
fn fetch(url: &str, to: &Path, progress: bool) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => Error::msg(format!("{url}: the server answered HTTP {code}")),
        other => Error::msg(format!("{url}: cannot download: {other}")),
    })?;
    let expected_bytes = response.body().content_length();
    let mut body = response.into_body().into_reader();

    let bar = progress_bar(progress, expected_bytes);
    let mut file =
        BufWriter::new(File::create(to).map_err(|e| Error::io(to, "cannot create the download file", e))?);
    let mut md5 = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    let of_total = |received: u64| match expected_bytes {
        Some(total) => format!("{received} of {total} bytes"),
        None => format!("{received} bytes"),
    };
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(Error::msg(format!(
                    "{url}: transfer cut off after {}: {e}",
                    of_total(received)
                )));
            }
        };
        md5.update(&buffer[..n]);
        file.write_all(&buffer[..n])
            .map_err(|e| Error::io(to, "cannot write the download", e))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(total) = expected_bytes {
        if received != total {
            return Err(Error::msg(format!(
                "{url}: transfer cut off after {}",
                of_total(received)
            )));
        }
    }
    let file = file
        .into_inner()
        .map_err(|e| Error::io(to, "cannot write the download", e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io(to, "cannot write the download", e))?;
    Ok(hex(&md5.finalize()))
}

fn progress_bar(visible: bool, total: Option<u64>) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "downloading CIFAR-10 [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("downloading CIFAR-10 {spinner} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Unpacks the archive into `into`. Only regular files and folders under `cifar-10-batches-bin/`
/// are accepted; anything else (links, absolute paths, `..`) is an error, not written.
fn unpack(archive: &Path, into: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|e| Error::io(archive, "cannot open the download", e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let corrupt = |e: std::io::Error| Error::io(archive, "cannot unpack (corrupt .tar.gz)", e);
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let raw_path = entry.path().map_err(corrupt)?.into_owned();
        let relative: PathBuf = raw_path
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        let inside = relative.components().all(|c| matches!(c, Component::Normal(_)))
            && relative.starts_with(FOLDER_NAME);
        if !inside || !(kind.is_file() || kind.is_dir()) {
            return Err(Error::file(
                archive,
                format!(
                    "unexpected entry {:?} in the archive (expected only files under {FOLDER_NAME}/)",
                    raw_path
                ),
            ));
        }
        let destination = into.join(&relative);
        if kind.is_dir() {
            std::fs::create_dir_all(&destination)
                .map_err(|e| Error::io(&destination, "cannot create folder", e))?;
        } else {
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create folder", e))?;
            }
            entry.unpack(&destination).map_err(corrupt)?;
        }
    }
    Ok(())
}

/// Removes temporary folders left by runs that were killed (their process is gone).
/// Only on systems with /proc; elsewhere they stay (they are hidden and harmless).
fn remove_stale_temporaries(dest_dir: &Path) {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dest_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPORARY_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A folder removed with everything in it when dropped (on success after the rename, and on error).
struct TemporaryFolder {
    path: PathBuf,
}

impl TemporaryFolder {
    fn create(path: PathBuf) -> Result<TemporaryFolder> {
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, "cannot clear", e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, "cannot create temporary folder", e))?;
        Ok(TemporaryFolder { path })
    }
}

impl Drop for TemporaryFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The MD5 of `bytes` as 32 lowercase hex digits (RFC 1321).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test suite of RFC 1321, appendix A.5.
    /// The templates are parsed at run time; the download tests run without a bar.
    #[test]
    fn progress_bar_templates_parse() {
        for total in [Some(1000), None] {
            let bar = progress_bar(true, total);
            bar.set_position(500);
            bar.finish_and_clear();
        }
    }

    #[test]
    fn md5_matches_rfc_1321_test_vectors() {
        let vectors = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, expected) in vectors {
            assert_eq!(md5_hex(input.as_bytes()), expected, "MD5({input:?})");
        }
    }
}
