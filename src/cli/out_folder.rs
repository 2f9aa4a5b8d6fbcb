//! The output folder of a run: the default name, claiming a fresh one, and the checks that a
//! fresh run overwrites nothing.

use sbfnet::{Error, Result};
use std::path::{Path, PathBuf};

/// "runs/<model>-<YYYYmmdd-HHMMSS>" in UTC.
pub fn default_out_folder(model: &str) -> PathBuf {
    let [year, month, day, hour, minute, second] = utc_now();
    PathBuf::from("runs").join(format!(
        "{model}-{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}"
    ))
}

/// The current UTC time as [year, month, day, hour, minute, second].
pub fn utc_now() -> [i64; 6] {
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
    [year, month, day, time / 3600, time / 60 % 60, time % 60]
}

/// Appends to `<out>/command.txt` how this session of the run was started: the command line, the
/// UTC date, the git commit the binary was built from, the CPU and the thread count. A resumed
/// run adds a block of its own.
pub fn record_command(out: &Path, threads: usize) -> Result<()> {
    let quote = |arg: String| {
        let plain = arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,=:/+".contains(c));
        if plain && !arg.is_empty() {
            arg
        } else {
            format!("'{}'", arg.replace('\'', "'\\''"))
        }
    };
    let mut args = std::env::args().map(quote);
    let program = args.next().map_or("sbfnet".into(), |p| {
        Path::new(&p)
            .file_name()
            .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
    });
    let command = std::iter::once(program).chain(args).collect::<Vec<_>>().join(" ");
    let [year, month, day, hour, minute, second] = utc_now();
    // The commit the binary was built from (build.rs); where git named none then (sources
    // outside a checkout, no git), the working directory's, said to be so.
    let commit = match env!("SBFNET_BUILD_COMMIT") {
        "" => checkout_commit().map_or(
            "unknown (git named no commit when the binary was built)".into(),
            |commit| format!("{commit} (the working directory's; the binary's build is unknown)"),
        ),
        built => built.to_string(),
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let path = out.join("command.txt");
    // The partial write of a session killed while it wrote this file.
    sbfnet::checkpoint::remove_stale_temporaries(&path)?;
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() {
        text.push('\n');
    }
    text += &format!(
        "command {command}\ndate    {year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC\n\
         commit  {commit}\nmachine {cpu}, {cores} logical CPUs, {threads} threads\nversion sbfnet {}\n",
        env!("CARGO_PKG_VERSION")
    );
    sbfnet::checkpoint::write_atomically(&path, text.as_bytes())
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

/// The git commit of the working directory, "<hash> with uncommitted changes" where it differs.
fn checkout_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let dirty = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|status| status.code() == Some(1));
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Some(if dirty {
        format!("{hash} with uncommitted changes")
    } else {
        hash
    })
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
