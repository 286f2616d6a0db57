//! The one error type of the runtime. Variants are what a caller can act on: fix the input, pick
//! another file, retry with a longer deadline, and so on.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not what it claims to be: truncated, corrupt, hostile, or of another version.
    #[error("invalid file {path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    /// llama.cpp refused the model file.
    #[error("llama.cpp could not load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// The pack was built for another base model.
    #[error("pack does not belong to this model: {what} differs (pack: {pack}, model: {model})")]
    PackMismatch { what: String, pack: String, model: String },
    #[error("unknown item id {0:?}")]
    UnknownItem(String),
    #[error("unknown soft prompt {0:?}; the pack has: {1}")]
    UnknownSoftPrompt(String, String),
    #[error("the history is empty; give at least one item")]
    EmptyHistory,
    #[error("the candidate list is empty")]
    EmptyCandidates,
    #[error("candidate {0:?} appears more than once")]
    DuplicateCandidate(String),
    /// The prompt alone does not fit one context; a longer context or a shorter history is needed.
    #[error("the prompt needs {needed} tokens but the context holds {available}")]
    ContextTooSmall { needed: usize, available: usize },
    /// Any other request the engine cannot serve (bad top_k, bad config, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("llama.cpp decode failed with code {0}")]
    Decode(i32),
    #[error("llama.cpp: {0}")]
    Backend(String),
    #[error("cancelled")]
    Cancelled,
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}
