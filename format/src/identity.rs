//! Which base model a pack belongs to: architecture, width, vocabulary and a tokenizer
//! fingerprint read from the model GGUF, and the model file's digest.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{bad_file, Error, Result};
use crate::gguf::{GgufFile, Value};

pub const K_BASE_ARCH: &str = "delrec.base.architecture";
pub const K_BASE_EMBD: &str = "delrec.base.n_embd";
pub const K_BASE_VOCAB: &str = "delrec.base.n_vocab";
pub const K_BASE_FP: &str = "delrec.base.tokenizer_fingerprint";

/// What identifies the base model a pack was built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseIdentity {
    pub architecture: String,
    pub n_embd: u32,
    pub n_vocab: u32,
    /// sha256 over the tokenizer's model type, pre-tokenizer, tokens and merges.
    pub tokenizer_fingerprint: String,
}

impl BaseIdentity {
    /// Reads the identity from a model GGUF's metadata.
    pub fn of_model(model: &GgufFile) -> Result<Self> {
        let architecture = model.req_str("general.architecture")?.to_string();
        let n_embd = model.req_u64(&format!("{architecture}.embedding_length"))?;
        let tokens = model.req_str_array("tokenizer.ggml.tokens").map_err(|_| Error::InvalidFile {
            path: model.path().to_path_buf(),
            reason: "the model has no tokenizer metadata (tokenizer.ggml.tokens)".into(),
        })?;
        let n_embd = u32::try_from(n_embd).map_err(|_| bad_file(model, "embedding_length overflows"))?;
        let n_vocab = u32::try_from(tokens.len()).map_err(|_| bad_file(model, "vocabulary too large"))?;
        Ok(Self { architecture, n_embd, n_vocab, tokenizer_fingerprint: tokenizer_fingerprint(model)? })
    }

    /// The identity recorded in a pack or an adapter (`delrec.base.*` keys, `docs/format.md`).
    pub fn read_keys(f: &GgufFile) -> Result<Self> {
        let u32_of = |k: &str| -> Result<u32> {
            u32::try_from(f.req_u64(k)?).map_err(|_| bad_file(f, format!("{k} overflows")))
        };
        Ok(Self {
            architecture: f.req_str(K_BASE_ARCH)?.to_string(),
            n_embd: u32_of(K_BASE_EMBD)?,
            n_vocab: u32_of(K_BASE_VOCAB)?,
            tokenizer_fingerprint: f.req_str(K_BASE_FP)?.to_string(),
        })
    }

    /// The first field that differs, as an error.
    pub fn check_matches(&self, model: &BaseIdentity) -> Result<()> {
        let fields = [
            ("architecture", self.architecture.clone(), model.architecture.clone()),
            ("n_embd", self.n_embd.to_string(), model.n_embd.to_string()),
            ("vocabulary size", self.n_vocab.to_string(), model.n_vocab.to_string()),
            ("tokenizer fingerprint", self.tokenizer_fingerprint.clone(), model.tokenizer_fingerprint.clone()),
        ];
        for (what, pack, model) in fields {
            if pack != model {
                return Err(Error::PackMismatch { what: what.into(), pack, model });
            }
        }
        Ok(())
    }
}

/// sha256 (hex) over `tokenizer.ggml.model`, `tokenizer.ggml.pre`, every token and every merge,
/// each followed by a 0 byte, with a 1 byte between the sections.
pub fn tokenizer_fingerprint(model: &GgufFile) -> Result<String> {
    let mut h = Sha256::new();
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre"] {
        h.update(model.get(key).and_then(Value::as_str).unwrap_or("").as_bytes());
        h.update([0u8]);
    }
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        h.update([1u8]);
        for s in model.get(key).and_then(Value::as_str_array).unwrap_or(&[]) {
            h.update(s.as_bytes());
            h.update([0u8]);
        }
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 (hex) of bytes in memory, e.g. a mapped file.
pub fn bytes_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a whole file (hex), streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}
