use std::path::PathBuf;

/// A failure in the llama.cpp layer, with what llama.cpp logged about it.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// `llama_model_load_from_file` returned no model.
    #[error("llama.cpp could not load {path}: {log}")]
    Load { path: PathBuf, log: String },
    /// A path llama.cpp cannot take (a NUL byte, or not UTF-8 where a C string is needed).
    #[error("path {0:?} cannot be passed to llama.cpp")]
    Path(PathBuf),
    #[error("llama.cpp could not create a context (out of memory?): {log}")]
    NoContext { log: String },
    /// Parameters, ids or rows we refused before llama.cpp saw them (it would have aborted).
    #[error("{0}")]
    Refused(String),
    /// The batch did not fit the KV cache (`llama_decode` returned 1).
    #[error("no KV cells left for {rows} rows (context of {n_ctx})")]
    KvFull { rows: usize, n_ctx: usize },
    /// The abort callback stopped a decode because the request was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The abort callback stopped a decode because the request's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("llama_decode failed with code {code}: {log}")]
    Decode { code: i32, log: String },
    /// An encoder input larger than llama.cpp takes in one `llama_encode` (the whole input must
    /// be one ubatch; llama.cpp would abort the process).
    #[error("encoder input of {rows} rows exceeds the context's {limit} = {max}")]
    EncoderTooLong { rows: usize, limit: &'static str, max: usize },
    #[error("no logits for row {0}")]
    NoLogits(usize),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("quantization failed: {log}")]
    Quantize { log: String },
}

pub type Result<T, E = LlamaError> = std::result::Result<T, E>;
