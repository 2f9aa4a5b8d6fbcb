//! Checkpoints: named tensors plus text metadata, written atomically and
//! verified on load.
//!
//! Layout (all integers little-endian):
//! ```text
//!   magic      8 bytes  "SBFNETCK"
//!   version    u32      FORMAT_VERSION
//!   model      u32 length + UTF-8   model description, e.g. "resnet20 dense"
//!   metadata   u32 count, then per entry: u32 length + UTF-8 key, u32 length + UTF-8 value
//!   tensors    u32 count, then per tensor: u32 length + UTF-8 name, u32 rank,
//!              rank × u64 dims, prod(dims) × f32
//!   checksum   u64      FNV-1a 64 of every byte before it
//! ```
//! Writing goes to a temporary file in the same folder, is flushed to disk,
//! then renamed over the target, so a crash leaves either the old file or
//! the new one, never half of one.
//!
//! Test hook: with `SBFNET_TEST_PAUSE_MID_WRITE=<seconds>` in the environment,
//! [`write_atomically`] writes the first half of the temporary file, flushes
//! it, and sleeps that long before writing the rest, so that a test can kill
//! the process in the middle of a write (tests/cli/kill_resume.rs).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use byteorder::{ByteOrder, LittleEndian};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"SBFNETCK";
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Describes the architecture; loading into another model is refused.
    pub model: String,
    /// Free-form key/value pairs (epoch, step, RNG state, schedule, ...).
    pub metadata: Vec<(String, String)>,
    /// Named tensors (parameters, buffers, optimiser state).
    pub tensors: Vec<(String, Tensor)>,
}

impl Checkpoint {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Serialises to bytes (checksum included).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        push_u32(&mut out, FORMAT_VERSION);
        push_str(&mut out, &self.model);
        push_u32(&mut out, self.metadata.len() as u32);
        for (k, v) in &self.metadata {
            push_str(&mut out, k);
            push_str(&mut out, v);
        }
        push_u32(&mut out, self.tensors.len() as u32);
        for (name, t) in &self.tensors {
            push_str(&mut out, name);
            push_u32(&mut out, t.shape.len() as u32);
            for &d in &t.shape {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            for &v in &t.data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`]. `path` names the file in errors.
    /// Never allocates more than the input's size: every length is checked against
    /// the bytes that remain before anything is reserved.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |msg: String| Error::file(path, msg);
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an sbfnet checkpoint (bad magic bytes)".into()));
        }
        if bytes.len() < MAGIC.len() + 4 + 8 {
            return Err(bad(format!("truncated checkpoint ({} bytes)", bytes.len())));
        }
        let version = LittleEndian::read_u32(&bytes[8..12]);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "checkpoint format version {version}, but this sbfnet reads version {FORMAT_VERSION}"
            )));
        }
        let (body, stored) = bytes.split_at(bytes.len() - 8);
        if fnv1a64(body) != LittleEndian::read_u64(stored) {
            return Err(bad(
                "checksum mismatch: the checkpoint is truncated or corrupted".into()
            ));
        }
        let mut reader = Reader { bytes: body, at: 12 };
        let result = (|| -> std::result::Result<Checkpoint, String> {
            let model = reader.string("model description")?;
            let mut metadata = Vec::new();
            for _ in 0..reader.count("metadata count", 8)? {
                metadata.push((reader.string("metadata key")?, reader.string("metadata value")?));
            }
            let mut tensors = Vec::new();
            for _ in 0..reader.count("tensor count", 8)? {
                let name = reader.string("tensor name")?;
                // The name comes from the file: quoted and shortened, so errors stay one line.
                let tensor = format!("tensor {}", quoted(&name));
                let rank = reader.count("tensor rank", 8)?;
                let mut shape = Vec::with_capacity(rank);
                let mut elements: u64 = 1;
                for _ in 0..rank {
                    let d = reader.u64(&tensor)?;
                    let overflow = || format!("{tensor}: shape overflows");
                    elements = elements.checked_mul(d).ok_or_else(overflow)?;
                    shape.push(usize::try_from(d).map_err(|_| overflow())?);
                }
                let raw = reader.take(elements.saturating_mul(4), &tensor)?;
                let data = raw.chunks_exact(4).map(LittleEndian::read_f32).collect();
                tensors.push((name, Tensor { shape, data }));
            }
            if reader.at != body.len() {
                return Err(format!(
                    "{} unexpected bytes after the last tensor",
                    body.len() - reader.at
                ));
            }
            Ok(Checkpoint {
                model,
                metadata,
                tensors,
            })
        })();
        result.map_err(|m| bad(format!("malformed checkpoint: {m}")))
    }

    /// Writes atomically: temporary file, flush to disk, rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes())
    }

    /// Reads and verifies a checkpoint.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read checkpoint", e))?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// Refuses a checkpoint of another model.
    pub fn expect_model(&self, expected: &str, path: &Path) -> Result<()> {
        if self.model != expected {
            return Err(Error::file(
                path,
                format!(
                    "checkpoint is of model \"{}\", but this run uses \"{expected}\"",
                    self.model
                ),
            ));
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = temporary_path(path, std::process::id())?;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        match pause_mid_write() {
            Some(pause) => {
                let (first_half, rest) = bytes.split_at(bytes.len() / 2);
                file.write_all(first_half)?;
                file.sync_all()?;
                std::thread::sleep(pause);
                file.write_all(rest)?;
            }
            None => file.write_all(bytes)?,
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        Error::io(path, "cannot write", e)
    })
}

/// The temporary file process `pid` writes `path` through: `.<name>.tmp<pid>` in the same folder.
pub fn temporary_path(path: &Path, pid: u32) -> Result<PathBuf> {
    Ok(path.with_file_name(format!("{}{pid}", temporary_prefix(path)?)))
}

/// `.<name>.tmp`: the name of `path`'s temporary files without the process id.
fn temporary_prefix(path: &Path) -> Result<String> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy();
    Ok(format!(".{file_name}.tmp"))
}

/// Removes the temporary files of `path` left by processes that no longer run
/// (a run killed in the middle of a write). Returns the files removed. On
/// systems without /proc nothing can be known about other processes, and
/// nothing is removed.
pub fn remove_stale_temporaries(path: &Path) -> Result<Vec<PathBuf>> {
    let Some(folder) = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    }) else {
        return Ok(Vec::new());
    };
    if !Path::new("/proc/self").exists() || !folder.is_dir() {
        return Ok(Vec::new());
    }
    let prefix = temporary_prefix(path)?;
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(folder).map_err(|e| Error::io(folder, "cannot list", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let stale = entry.path();
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, "cannot remove", e))?;
            removed.push(stale);
        }
    }
    Ok(removed)
}

/// The pause of the `SBFNET_TEST_PAUSE_MID_WRITE` test hook (see the module documentation).
fn pause_mid_write() -> Option<std::time::Duration> {
    let seconds: f64 = std::env::var("SBFNET_TEST_PAUSE_MID_WRITE").ok()?.parse().ok()?;
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

/// FNV-1a, 64 bit: a small, dependency-free checksum that catches truncation and bit flips.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A name read from a file as it appears in an error message: quoted, with control characters
/// escaped (so the message stays on one line), and cut after 40 characters.
fn quoted(name: &str) -> String {
    let short: String = name.chars().take(40).collect();
    let cut = if short.len() < name.len() { "…" } else { "" };
    format!("{short:?}{cut}")
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor that refuses to read (or reserve) past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(format!("{what}: needs {n} bytes but only {left} remain"));
        }
        let slice = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(LittleEndian::read_u32(self.take(4, what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(LittleEndian::read_u64(self.take(8, what)?))
    }

    /// A count of items each at least `min_item_bytes` long (bounded by what remains).
    fn count(&mut self, what: &str, min_item_bytes: u64) -> std::result::Result<usize, String> {
        let n = self.u32(what)? as u64;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_item_bytes) > left {
            return Err(format!("{what} {n} does not fit in the {left} bytes that remain"));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u32(what)? as u64;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            model: "resnet20 dense".into(),
            metadata: vec![("epoch".into(), "3".into())],
            tensors: vec![
                (
                    "conv.weight".into(),
                    Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE]),
                ),
                ("empty".into(), Tensor::zeros(&[0])),
            ],
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let c = sample();
        assert_eq!(Checkpoint::from_bytes(&c.to_bytes(), Path::new("c")).unwrap(), c);
    }

    #[test]
    fn truncated_corrupted_wrong_version_and_wrong_model_are_refused() {
        let bytes = sample().to_bytes();
        let p = Path::new("run/last.ckpt");
        let err = |b: &[u8]| Checkpoint::from_bytes(b, p).unwrap_err().to_string();
        assert!(err(&bytes[..bytes.len() - 5]).contains("checksum mismatch"));
        assert!(err(&bytes[..10]).contains("truncated"));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(err(&flipped).contains("checksum mismatch"));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(err(&version).contains("version 9"));
        assert!(err(b"PK\x03\x04 not a checkpoint").contains("bad magic"));
        let wrong = sample().expect_model("vgg16 dense", p).unwrap_err().to_string();
        assert!(
            wrong.starts_with("run/last.ckpt: checkpoint is of model \"resnet20 dense\""),
            "{wrong}"
        );
    }

    /// Found by tests/train/fuzz_parsers.rs: a tensor name holding a newline made a two-line error.
    #[test]
    fn errors_quote_tensor_names_from_the_file_on_one_line() {
        let checkpoint = Checkpoint {
            model: "m".into(),
            metadata: vec![],
            tensors: vec![("line\nbreak".repeat(10), Tensor::zeros(&[2, 3]))],
        };
        let mut bytes = checkpoint.to_bytes();
        // The first dimension (after magic, version, model, counts, name, rank) set to u64::MAX.
        let first_dim = 12 + 4 + 1 + 4 + 4 + 4 + 100 + 4;
        bytes[first_dim..first_dim + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = fnv1a64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        let err = Checkpoint::from_bytes(&bytes, Path::new("x.ckpt"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "x.ckpt: malformed checkpoint: tensor \"line\\nbreakline\\nbreakline\\nbreakline\\nbreak\"…: \
             shape overflows"
        );
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("sbfnet-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("last.ckpt");
        // A pid above the kernel's limit (2^22) never runs.
        let dead = temporary_path(&path, 4_999_999).unwrap();
        let alive = temporary_path(&path, std::process::id()).unwrap();
        let other_file = temporary_path(&dir.join("best.ckpt"), 4_999_999).unwrap();
        for file in [&dead, &alive, &other_file, &path] {
            std::fs::write(file, b"x").unwrap();
        }
        assert_eq!(
            dead.file_name().unwrap().to_str().unwrap(),
            ".last.ckpt.tmp4999999"
        );
        let removed = remove_stale_temporaries(&path).unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![dead.clone()]);
            assert!(!dead.exists());
        }
        assert!(alive.exists() && other_file.exists() && path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_save_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("sbfnet-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.ckpt");
        sample().save(&path).unwrap();
        let mut second = sample();
        second.metadata[0].1 = "4".into();
        second.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap().get("epoch"), Some("4"));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
