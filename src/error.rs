//! The crate's error: one line that names the file (when there is one) and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Error {
    /// The file or folder the error is about.
    pub path: Option<PathBuf>,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error about `path`.
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Error {
        Error {
            path: Some(path.as_ref().to_path_buf()),
            message: message.into(),
        }
    }

    /// An I/O failure on `path`, e.g. "reading: No such file or directory".
    pub fn io(path: impl AsRef<Path>, action: &str, source: std::io::Error) -> Error {
        Error::file(path, format!("{action}: {source}"))
    }

    /// An error not tied to a file (e.g. an impossible setting).
    pub fn msg(message: impl Into<String>) -> Error {
        Error {
            path: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for Error {}
