//! Errors in two levels, as an app sees them and as we debug them.
//!
//! Inside, failures carry their full context: [`delrec_format::Error`] for files,
//! [`LlamaError`] with what llama.cpp logged. What callers get is [`Error`], a small set grouped
//! by what an app can do about it (fix the request, replace a file, ask for less or configure
//! more, try again later, report a bug), each with fields an app can read rather than parse.
//! The conversions from the inner errors are here and nowhere else.

use std::fmt;
use std::path::PathBuf;

use crate::llm::LlamaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, grouped by what the caller can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request or the configuration cannot be served as given: fix it; retrying as is fails
    /// again.
    #[error("bad request: {0}")]
    BadRequest(#[from] RequestError),
    /// A model or pack file cannot be used: missing, unreadable, corrupt, hostile, of another
    /// version, or the two do not belong together. Replace or rebuild the file.
    #[error("{0}")]
    BadFile(#[from] FileError),
    /// The request needs more of a resource than this engine was configured with: configure
    /// more (`EngineConfig`) or ask for less (a shorter history, fewer candidates).
    #[error("{resource} too small: {needed} needed, {available} available")]
    Capacity { resource: Resource, needed: u64, available: u64 },
    /// The request's cancel token was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The request's timeout passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Every context stayed in use for `EngineConfig::context_wait` (open sessions hold one
    /// each): try again later, close a session, or configure more `max_contexts`.
    #[error("busy: all {contexts} contexts stayed in use for {waited_ms} ms")]
    Busy { contexts: u64, waited_ms: u64 },
    /// A bug in delrec or an unexpected llama.cpp failure. The message is for a bug report; the
    /// engine stays usable.
    #[error("internal error: {message}")]
    Internal { message: String },
}

/// A request (or configuration) the engine refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("unknown item id {id:?}")]
    UnknownItem { id: String },
    #[error("unknown soft prompt {name:?}; the pack has: {}", available.join(", "))]
    UnknownSoftPrompt { name: String, available: Vec<String> },
    #[error("the history is empty; give at least one item")]
    EmptyHistory,
    #[error("the candidate list is empty")]
    EmptyCandidates,
    #[error("candidate {id:?} appears more than once")]
    DuplicateCandidate { id: String },
    /// `add_item` with an id the catalog already has.
    #[error("item id {id:?} is already in the catalog")]
    DuplicateItem { id: String },
    /// `recommend` on a pack without a sequential model (build the pack with `--seq-model`).
    #[error("the pack has no sequential model; recommend needs one (rank works without)")]
    NoSequentialModel,
    /// `EngineConfig::backend` names a GPU backend this build was compiled without
    /// (`compiled: false`) or that found no device here; `available` lists the devices that
    /// could offload. Set `cpu_fallback` to run on the CPU instead.
    #[error("backend {requested} is unavailable ({}); devices that can offload: {}",
        if *compiled { "compiled in, no device found" } else { "not compiled into this build" },
        if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    BackendUnavailable { requested: String, compiled: bool, available: Vec<String> },
    /// A setting or argument out of range; `field` names it (`top_k`, `max_sequences`, ...).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// A file the engine cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Missing or unreadable.
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Not what it claims to be: truncated, corrupt, hostile, or of another format version.
    #[error("invalid file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// Passed our checks, but llama.cpp refused it; `reason` is what llama.cpp logged.
    #[error("llama.cpp could not load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// The pack was built for another base model: `field` is the first that differs.
    #[error("pack does not belong to this model: {field} differs (pack: {pack}, model: {model})")]
    Mismatch { field: String, pack: String, model: String },
}

/// What a [`Error::Capacity`] ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// KV cells of one context (`EngineConfig::context_size`).
    ContextCells,
    /// The engine's memory budget against `EngineConfig::memory_limit` (bytes).
    Memory,
    /// Rows of one encoder pass (encoder-decoder models): the whole input goes through the
    /// encoder in one batch of at most `EngineConfig::batch_size` rows.
    EncoderRows,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::ContextCells => "context (KV cells)",
            Resource::Memory => "memory limit (bytes)",
            Resource::EncoderRows => "encoder input rows (batch_size: one encoder pass)",
        })
    }
}

impl Error {
    /// A setting or argument out of range.
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        RequestError::Invalid { field: field.into(), reason: reason.into() }.into()
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into() }
    }

    pub(crate) fn context_cells(needed: usize, available: usize) -> Self {
        Error::Capacity { resource: Resource::ContextCells, needed: needed as u64, available: available as u64 }
    }
}

impl From<delrec_format::Error> for Error {
    fn from(e: delrec_format::Error) -> Self {
        use delrec_format::Error as F;
        match e {
            F::Io { path, source } => FileError::Io { path, source }.into(),
            F::InvalidFile { path, reason } => FileError::Invalid { path, reason }.into(),
            F::PackMismatch { what, pack, model } => FileError::Mismatch { field: what, pack, model }.into(),
            // The runtime writes nothing: a writer's input error here is our bug.
            F::InvalidInput(m) => Error::internal(m),
        }
    }
}

impl From<LlamaError> for Error {
    fn from(e: LlamaError) -> Self {
        match e {
            LlamaError::Load { path, log } => FileError::ModelLoad { path, reason: log }.into(),
            LlamaError::Cancelled => Error::Cancelled,
            LlamaError::DeadlineExceeded => Error::DeadlineExceeded,
            LlamaError::KvFull { rows, n_ctx } => Error::context_cells(rows, n_ctx),
            // The encoder input must fit one ubatch (n_batch) and the context.
            LlamaError::EncoderTooLong { rows, max, limit } => Error::Capacity {
                resource: if limit == "n_ctx" { Resource::ContextCells } else { Resource::EncoderRows },
                needed: rows as u64,
                available: max as u64,
            },
            LlamaError::Path(p) => Error::invalid("path", format!("{} cannot be passed to llama.cpp", p.display())),
            // Everything else is a check we failed to make earlier, or llama.cpp failing.
            other => Error::internal(other.to_string()),
        }
    }
}
