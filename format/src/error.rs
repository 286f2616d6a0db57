//! Errors of reading and writing the formats. Callers (the runtime, the converter) map them into
//! their own public errors; the variants say whose fault it is: the file's, or the writer's input.

use std::path::{Path, PathBuf};

use crate::gguf::GgufFile;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not what it claims to be: truncated, corrupt, hostile, or of another version.
    #[error("invalid file {path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    /// The pack was built for another base model: `what` names the first field that differs.
    #[error("pack does not belong to this model: {what} differs (pack: {pack}, model: {model})")]
    PackMismatch { what: String, pack: String, model: String },
    /// What a writer was asked to write is not valid (templates, catalogs, tensor sizes).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}

pub(crate) fn bad_file(f: &GgufFile, reason: impl Into<String>) -> Error {
    Error::InvalidFile { path: f.path().to_path_buf(), reason: reason.into() }
}
