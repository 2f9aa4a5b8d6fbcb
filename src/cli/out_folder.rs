//! The output folder of a run: the default name, claiming a fresh one, and the checks that a
//! fresh run overwrites nothing.

use sbfnet::{Error, Result};
use std::path::{Path, PathBuf};

/// "runs/<model>-<YYYYmmdd-HHMMSS>" in UTC.
pub fn default_out_folder(model: &str) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{model}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        time / 3600,
        time / 60 % 60,
        time % 60
    ))
}

/// Creates `base`, or `base-2`, `base-3`, … when it exists already (another run started in
/// the same second), and returns the folder it made.
pub fn claim_new_folder(base: &Path) -> Result<PathBuf> {
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create the runs folder", e))?;
    }
    for attempt in 1.. {
        let folder = match attempt {
            1 => base.to_path_buf(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        };
        match std::fs::create_dir(&folder) {
            Ok(()) => return Ok(folder),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&folder, "cannot create the output folder", e)),
        }
    }
    unreachable!("the attempts above never end without returning")
}

/// Checks that the output folder can be made (a folder given with --out must
/// have an existing parent) and that a fresh run would not overwrite an earlier run.
pub fn check_out_folder(out: &Path, given: bool, resuming: bool) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if given && !parent.is_dir() {
        return Err(Error::file(
            out,
            format!("the output folder's parent {} does not exist", parent.display()),
        ));
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::file(out, "the output path exists and is not a folder"));
    }
    if !resuming && out.join("last.ckpt").exists() {
        return Err(Error::file(
            out,
            "already holds a run (last.ckpt): pass --resume <folder>/last.ckpt to continue it, or another --out",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::claim_new_folder;

    #[test]
    fn runs_started_in_the_same_second_get_folders_of_their_own() {
        let root = std::env::temp_dir().join(format!("sbfnet-claim-{}", std::process::id()));
        let base = root.join("runs").join("resnet20-20261206-120000");
        let first = claim_new_folder(&base).unwrap();
        let second = claim_new_folder(&base).unwrap();
        assert_eq!(first, base);
        assert_eq!(second, root.join("runs").join("resnet20-20261206-120000-2"));
        assert!(first.is_dir() && second.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
