//! The converter's llama.cpp calls, over the runtime's one llama.cpp layer
//! (`delrec_runtime::llm`): quantize, load-check, vocabulary-only tokenization, and the logits of
//! a sequence for checking conversions.

use std::path::Path;
use std::sync::Arc;

use delrec_runtime::llm::{self, LlamaError, Model, ModelParams};

use crate::error::{ConvertError, Result};

pub use llm::ftype;

fn convert_err(path: &Path, e: LlamaError) -> ConvertError {
    match e {
        LlamaError::Load { log, .. } => ConvertError::LlamaLoad { path: path.to_path_buf(), reason: log },
        LlamaError::Quantize { log } => ConvertError::Quantize(log),
        LlamaError::Path(p) => ConvertError::Usage(format!("path {} cannot be passed to llama.cpp", p.display())),
        LlamaError::Tokenize(m) => ConvertError::Tokenize(m),
        other => ConvertError::LlamaLoad { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// Runs llama.cpp's quantizer from `input` to `output` (written in place: callers pass a temp path).
pub fn quantize(input: &Path, output: &Path, ftype: u32, allow_requantize: bool, threads: usize) -> Result<()> {
    llm::quantize(input, output, ftype, allow_requantize, threads).map_err(|e| convert_err(input, e))
}

/// A model loaded by llama.cpp on the CPU, without repacked weight layouts (checks need no speed).
pub struct LoadedModel {
    model: Arc<Model>,
    path: std::path::PathBuf,
}

impl LoadedModel {
    /// Loads a model; `vocab_only` skips the weights.
    pub fn load(path: &Path, vocab_only: bool) -> Result<Self> {
        if !path.is_file() {
            return Err(ConvertError::LlamaLoad { path: path.to_path_buf(), reason: "no such file".into() });
        }
        let params = ModelParams { vocab_only, repack: false, ..ModelParams::default() };
        let model = Model::load(path, params).map_err(|e| convert_err(path, e))?;
        Ok(LoadedModel { model: Arc::new(model), path: path.to_path_buf() })
    }

    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab()
    }

    pub fn n_embd(&self) -> usize {
        self.model.n_embd()
    }

    /// Tokenizes without adding BOS/EOS; `parse_special` lets control-token text become the token.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<i32>> {
        self.model.tokenize(text, parse_special).map_err(|e| convert_err(&self.path, e))
    }

    /// The logits at every position of one sequence (exact path: F32 cache, classic attention).
    pub fn eval_logits(&self, tokens: &[i32]) -> Result<Vec<Vec<f32>>> {
        let n_vocab = self.n_vocab();
        if tokens.is_empty() || tokens.iter().any(|&t| t < 0 || t as usize >= n_vocab) {
            return Err(ConvertError::Tokenize(format!("token ids must be in 0..{n_vocab} and non-empty")));
        }
        llm::sequence_logits(&self.model, None, tokens, 2).map_err(|e| convert_err(&self.path, e))
    }
}

/// Checks that llama.cpp loads a LoRA adapter over a base model (both freed after).
pub fn check_adapter_loads(base: &Path, adapter: &Path) -> Result<()> {
    let m = LoadedModel::load(base, false)?;
    let f = std::fs::File::open(adapter).map_err(|e| ConvertError::io(adapter, e))?;
    llm::Adapter::load_file(&m.model, &f, adapter).map(drop).map_err(|e| convert_err(adapter, e))
}

/// Checks that llama.cpp accepts a model file (all tensors, shapes and metadata), then frees it.
pub fn check_loads(path: &Path) -> Result<()> {
    LoadedModel::load(path, false).map(drop)
}
