//! The converter's one error type. Each variant names the file, tensor, line or setting at fault so
//! the user can fix the input without reading the source.

use std::path::{Path, PathBuf};

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A JSON file that is not valid JSON or lacks a required field.
    #[error("{path}: {reason}")]
    BadJson { path: PathBuf, reason: String },
    /// config.json holds a setting this converter does not handle (rope scaling kind, sliding
    /// window, ...), or one that contradicts another.
    #[error("{path}: unsupported or inconsistent config: {reason}")]
    UnsupportedConfig { path: PathBuf, reason: String },
    #[error(
        "unknown architecture {found:?}: this converter handles LlamaForCausalLM (model_type llama), \
         Qwen2ForCausalLM (model_type qwen2) and T5ForConditionalGeneration (model_type t5)"
    )]
    UnknownArchitecture { found: String },
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    MissingWeights { dir: PathBuf },
    #[error("tensor {name:?} is missing from {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("unexpected tensor {name:?} in {source_desc}: it is not part of the {arch} layout (is the config right?)")]
    UnexpectedTensor { name: String, source_desc: String, arch: String },
    #[error("tensor {name:?} has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name:?} has dtype {dtype}; only F32, F16 and BF16 are supported")]
    DtypeUnsupported { name: String, dtype: String },
    #[error("{path} is truncated: {reason}")]
    TruncatedSafetensors { path: PathBuf, reason: String },
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidSafetensors { path: PathBuf, reason: String },
    #[error("no tokenizer.json in {dir}: the GGUF needs the tokenizer (copy tokenizer.json, tokenizer_config.json from the model repo)")]
    MissingTokenizer { dir: PathBuf },
    #[error("unsupported tokenizer in {path}: {reason}")]
    UnsupportedTokenizer { path: PathBuf, reason: String },
    /// The HF tokenizer given to `pack` is not the one inside the model GGUF.
    #[error("the tokenizer {path} does not match the model: {reason}")]
    TokenizerMismatch { path: PathBuf, reason: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// A catalog line the pack cannot use; `line` is 1-based in the input file.
    #[error("{path}:{line}: {}{reason}", id.as_ref().map(|i| format!("item {i:?}: ")).unwrap_or_default())]
    Catalog { path: PathBuf, line: usize, id: Option<String>, reason: String },
    #[error(
        "soft prompt {name:?} is {width} wide but the model's hidden size (n_embd) is {n_embd}: \
         it was trained for another base model"
    )]
    SoftPromptWidth { name: String, width: usize, n_embd: usize },
    #[error("soft prompt {path}: {reason}")]
    SoftPrompt { path: PathBuf, reason: String },
    #[error("LoRA adapter {path}: {reason}")]
    Lora { path: PathBuf, reason: String },
    /// A LoRA pair whose lora_A rows / lora_B columns differ from the rank adapter_config.json
    /// gives it (`r`, a `rank_pattern` entry, AdaLoRA's `init_r` or its pattern's True count).
    #[error("LoRA adapter {path}: {name} has rank {found}, but adapter_config.json says r = {r}")]
    LoraRank { path: PathBuf, name: String, r: usize, found: usize },
    /// A LoRA on the token embeddings or the output head. As a llama.cpp run-time adapter it
    /// cannot work here (llama.cpp applies token_embd adapters specially; tied models have no
    /// output tensor), and merging it is not implemented either.
    #[error(
        "LoRA adapter {path}: {tensor:?} adapts {what}; only the linear layers of the blocks \
         (q/k/v/o_proj, gate/up/down_proj) can be converted, merged or as a run-time adapter"
    )]
    LoraUnsupportedModule { path: PathBuf, tensor: String, what: String },
    /// A `rank_pattern` / `alpha_pattern` entry that cannot be applied exactly as PEFT does
    /// (regex syntax outside what is read here, keys that disagree on a module, an AdaLoRA pattern
    /// that does not fit `init_r`).
    #[error("LoRA adapter {path}: {setting} key {key:?}: {reason}")]
    LoraPattern { path: PathBuf, setting: String, key: String, reason: String },
    /// The LoRA adapts a weight the base model does not have.
    #[error("LoRA adapter {path} adapts {module}, but the base model {base} has no tensor {tensor:?}")]
    LoraTarget { path: PathBuf, module: String, base: PathBuf, tensor: String },
    /// NaN or ±inf in an input tensor (a diverged training run, a corrupt file).
    #[error("tensor {name:?} in {source_desc} holds {count} NaN or infinite values")]
    NonFinite { name: String, source_desc: String, count: usize },
    /// A GGUF tensor type the converter cannot dequantize.
    #[error(
        "tensor {name:?} of {path} has ggml type {ty}, which cannot be dequantized here \
         (supported: {supported})"
    )]
    TensorTypeUnsupported { path: PathBuf, name: String, ty: String, supported: String },
    #[error("the models given to pack differ: {0}")]
    ModelMismatch(String),
    #[error("quantization failed: {0}")]
    Quantize(String),
    #[error("llama.cpp refused {path}: {reason}")]
    LlamaLoad { path: PathBuf, reason: String },
    /// A sequential model (`pack --seq-model`) the pack cannot carry: wrong layout, sizes that
    /// disagree, items that do not match the catalog.
    #[error("sequential model {path}: {reason}")]
    SeqModel { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(String),
    /// A `torch.save` file that cannot be read: not a zip archive (or the legacy pre-1.6 format),
    /// a malformed archive or pickle, a tensor outside its storage, an unsupported dtype.
    #[error("{path}: cannot read the PyTorch checkpoint: {reason}")]
    TorchCheckpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Format(#[from] delrec_format::Error),
}

impl ConvertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ConvertError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn json(path: &Path, reason: impl Into<String>) -> Self {
        ConvertError::BadJson { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ConvertError::json(path, format!("invalid JSON: {e}")))
}
