//! A Hugging Face SentencePiece Unigram tokenizer (`tokenizer.json` as transformers converts T5's
//! spiece.model) → llama.cpp's UGM tokenizer metadata (`tokenizer.ggml.model = "t5"`).
//!
//! llama.cpp does not run the HF normalizer or pre-tokenizer; it runs SentencePiece's own
//! algorithm: the precompiled charsmap (the normalization rules, compiled), whitespace merging,
//! a "▁" prefix, then Viterbi over the piece scores. So only the structure transformers writes
//! for SentencePiece models is accepted, and the charsmap bytes are carried verbatim.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use delrec_format::gguf::{Array, GgufWriter, Value};
use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};
use crate::vocab::{TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED};

/// llama.cpp's `LLAMA_TOKEN_TYPE_UNKNOWN`.
pub const TOKEN_UNKNOWN: i32 = 2;

/// Everything the GGUF's `tokenizer.*` keys hold for a UGM vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct UgmMeta {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub token_types: Vec<i32>,
    /// `Precompiled` normalizer's charsmap, as SentencePiece wrote it.
    pub charsmap: Vec<u8>,
    pub unk: u32,
    pub special_ids: Vec<(&'static str, u32)>,
    pub add_eos: bool,
}

fn show(v: &J) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// Standard base64 (with padding), as tokenizers serializes the charsmap.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.trim_end_matches('=').as_bytes();
    if !s.len().is_multiple_of(4) || s.len() - b.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() * 3 / 4);
    for chunk in b.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

fn kind(v: &J) -> Option<&str> {
    v.get("type").and_then(|t| t.as_str())
}

/// The normalizer transformers writes for a SentencePiece model with a charsmap:
/// `Sequence[Precompiled, (Strip right,) Replace(" {2,}", " " or "▁")]` — SentencePiece's
/// normalization with `remove_extra_whitespaces`, which llama.cpp's UGM reproduces. Returns the
/// charsmap.
fn read_normalizer(n: Option<&J>) -> std::result::Result<Vec<u8>, String> {
    let n = n.ok_or("no normalizer (SentencePiece models carry a Precompiled charsmap)")?;
    let parts: Vec<&J> = match kind(n) {
        Some("Sequence") => n
            .get("normalizers")
            .and_then(|v| v.as_array())
            .ok_or("Sequence normalizer without a list")?
            .iter()
            .collect(),
        _ => vec![n],
    };
    let Some((first, rest)) = parts.split_first() else { return Err("empty normalizer sequence".into()) };
    if kind(first) != Some("Precompiled") {
        return Err(format!("normalizer {} does not start with a Precompiled charsmap", show(n)));
    }
    let b64 = first.get("precompiled_charsmap").and_then(|v| v.as_str()).ok_or("Precompiled without a charsmap")?;
    let charsmap = base64_decode(b64).ok_or("the precompiled charsmap is not base64")?;
    let mut saw_replace = false;
    for p in rest {
        match kind(p) {
            Some("Strip") if p.get("strip_left").and_then(|v| v.as_bool()) == Some(false) => {}
            Some("Replace") => {
                let pat = p.get("pattern").and_then(|v| v.get("Regex")).and_then(|v| v.as_str());
                let content = p.get("content").and_then(|v| v.as_str());
                if pat != Some(" {2,}") || !matches!(content, Some(" " | "\u{2581}")) {
                    return Err(format!("normalizer step {} is not the whitespace merge", show(p)));
                }
                saw_replace = true;
            }
            _ => return Err(format!("normalizer step {} has no llama.cpp equivalent", show(p))),
        }
    }
    if !saw_replace {
        return Err("the normalizer keeps runs of spaces (remove_extra_whitespaces off): not supported".into());
    }
    Ok(charsmap)
}

/// Metaspace with "▁", split, and a prefix space for the text (llama.cpp's `add_space_prefix`);
/// alone or after a `WhitespaceSplit` (older conversions).
fn check_pre_tokenizer(p: Option<&J>) -> std::result::Result<(), String> {
    let p = p.ok_or("no pre-tokenizer (expected Metaspace)")?;
    let meta = match kind(p) {
        Some("Metaspace") => p,
        Some("Sequence") => match p.get("pretokenizers").and_then(|v| v.as_array()).map(|v| v.as_slice()) {
            Some([w, m]) if kind(w) == Some("WhitespaceSplit") && kind(m) == Some("Metaspace") => m,
            _ => return Err(format!("pre-tokenizer {} is not [WhitespaceSplit, Metaspace]", show(p))),
        },
        _ => return Err(format!("pre-tokenizer {} is not Metaspace", show(p))),
    };
    if meta.get("replacement").and_then(|v| v.as_str()) != Some("\u{2581}") {
        return Err(format!("Metaspace replacement {} is not \"▁\"", show(meta)));
    }
    let prefix = match meta.get("prepend_scheme").and_then(|v| v.as_str()) {
        Some(s) => s == "always",
        None => meta.get("add_prefix_space").and_then(|v| v.as_bool()).unwrap_or(true),
    };
    if !prefix {
        return Err(format!(
            "Metaspace {} does not prepend \"▁\" to every piece of text (llama.cpp's add_space_prefix does)",
            show(meta)
        ));
    }
    Ok(())
}

impl UgmMeta {
    pub fn from_path(path: &Path, vocab_size: usize) -> Result<Self> {
        let json = read_json(path)?;
        Self::from_json(path, &json, vocab_size)
    }

    /// `vocab_size` (the model's embedding rows) pads the list with unused `[PAD{i}]` tokens.
    pub fn from_json(path: &Path, tj: &J, vocab_size: usize) -> Result<Self> {
        let unsupported = |reason: String| ConvertError::UnsupportedTokenizer { path: path.to_path_buf(), reason };
        let model = tj.get("model").ok_or_else(|| ConvertError::json(path, "no \"model\" section"))?;
        if kind(model) != Some("Unigram") {
            return Err(unsupported(format!(
                "model type {}: a T5 tokenizer is a SentencePiece Unigram model",
                show(model.get("type").unwrap_or(&J::Null))
            )));
        }
        if model.get("byte_fallback").and_then(|v| v.as_bool()) == Some(true) {
            return Err(unsupported("Unigram with byte_fallback: llama.cpp's UGM tokenizer has none".into()));
        }
        let charsmap = read_normalizer(tj.get("normalizer")).map_err(unsupported)?;
        check_pre_tokenizer(tj.get("pre_tokenizer")).map_err(unsupported)?;
        let unk = model
            .get("unk_id")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| unsupported("Unigram without an unk_id".into()))?;
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_array())
            .ok_or_else(|| ConvertError::json(path, "model.vocab is not a list"))?;
        let mut by_id: BTreeMap<u32, (String, f32, i32)> = BTreeMap::new();
        for (i, e) in vocab.iter().enumerate() {
            let (Some(piece), Some(score)) = (e.get(0).and_then(|v| v.as_str()), e.get(1).and_then(|v| v.as_f64()))
            else {
                return Err(ConvertError::json(path, format!("vocab entry {i} {} is not [piece, score]", show(e))));
            };
            let ty = if i as u32 == unk { TOKEN_UNKNOWN } else { TOKEN_NORMAL };
            by_id.insert(i as u32, (piece.to_string(), score as f32, ty));
        }
        let mut added_content: HashMap<String, u32> = HashMap::new();
        for a in tj.get("added_tokens").and_then(|v| v.as_array()).map(|v| v.as_slice()).unwrap_or(&[]) {
            let id = a.get("id").and_then(|v| v.as_u64()).and_then(|i| u32::try_from(i).ok());
            let content = a.get("content").and_then(|v| v.as_str());
            let (Some(id), Some(content)) = (id, content) else {
                return Err(ConvertError::json(path, format!("added token {} lacks id or content", show(a))));
            };
            let special = a.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
            if let Some((prev, _, _)) = by_id.get(&id) {
                if prev != content {
                    return Err(ConvertError::json(
                        path,
                        format!("added token {content:?} reuses id {id} of {prev:?}"),
                    ));
                }
            }
            // SentencePiece's own control pieces (<pad>, </s>) keep score 0; <unk> stays UNKNOWN.
            let ty = match () {
                _ if id == unk => TOKEN_UNKNOWN,
                _ if special => TOKEN_CONTROL,
                _ => TOKEN_USER_DEFINED,
            };
            let score = by_id.get(&id).map(|e| e.1).unwrap_or(0.0);
            by_id.insert(id, (content.to_string(), score, ty));
            added_content.insert(content.to_string(), id);
        }
        let n_have = by_id.keys().next_back().map(|&m| m as usize + 1).unwrap_or(0);
        if vocab_size < n_have {
            return Err(ConvertError::TokenizerMismatch {
                path: path.to_path_buf(),
                reason: format!(
                    "the tokenizer uses ids up to {} but the model's vocabulary has {vocab_size} entries",
                    n_have - 1
                ),
            });
        }
        if unk as usize >= n_have {
            return Err(unsupported(format!("unk_id {unk} is not a token")));
        }
        let (mut tokens, mut scores, mut token_types) = (vec![], vec![], vec![]);
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(vocab_size);
        for i in 0..vocab_size {
            let (t, s, ty) = by_id.remove(&(i as u32)).unwrap_or_else(|| (format!("[PAD{i}]"), 0.0, TOKEN_UNUSED));
            if !s.is_finite() {
                return Err(unsupported(format!("token {i} {t:?} has score {s}")));
            }
            // llama.cpp maps text → id and asserts the strings are unique.
            if let Some(prev) = seen.insert(t.clone(), i) {
                return Err(unsupported(format!("token {t:?} appears twice (ids {prev} and {i})")));
            }
            tokens.push(t);
            scores.push(s);
            token_types.push(ty);
        }
        let mut special_ids = vec![("unknown_token_id", unk)];
        for (name, key) in [("</s>", "eos_token_id"), ("<pad>", "padding_token_id")] {
            if let Some(&id) = added_content.get(name) {
                special_ids.push((key, id));
            }
        }
        let eos = special_ids.iter().find(|(k, _)| *k == "eos_token_id").map(|&(_, id)| id);
        let add_eos = match (tj.get("post_processor"), eos) {
            (Some(pp), Some(eos)) if kind(pp) == Some("TemplateProcessing") => {
                let single = pp.get("single").and_then(|s| s.as_array()).map(|v| v.as_slice()).unwrap_or(&[]);
                let eos_text = &tokens[eos as usize];
                match single {
                    [seq, last] if seq.get("Sequence").is_some() => {
                        last.get("SpecialToken").and_then(|s| s.get("id")).and_then(|v| v.as_str()) == Some(eos_text)
                    }
                    [seq] if seq.get("Sequence").is_some() => false,
                    _ => return Err(unsupported(format!("post-processor {} is not \"$A </s>\"", show(pp)))),
                }
            }
            (None | Some(J::Null), _) => false,
            (Some(pp), _) => return Err(unsupported(format!("post-processor {} is not supported", show(pp)))),
        };
        Ok(UgmMeta { tokens, scores, token_types, charsmap, unk, special_ids, add_eos })
    }

    pub fn special_id(&self, key: &str) -> Option<u32> {
        self.special_ids.iter().find(|(k, _)| *k == key).map(|&(_, id)| id)
    }

    /// Writes the `tokenizer.*` keys.
    /// The base-identity fingerprint a model written with this vocabulary has (`docs/format.md`,
    /// "Tokenizer fingerprint": model type `t5`, no pre-tokenizer, the tokens, no merges).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"t5\0\0");
        h.update([1u8]);
        for s in &self.tokens {
            h.update(s.as_bytes());
            h.update([0u8]);
        }
        h.update([1u8]);
        delrec_format::identity::hex(&h.finalize())
    }

    pub fn write(&self, w: &mut GgufWriter) {
        w.set("tokenizer.ggml.model", Value::Str("t5".into()));
        w.set("tokenizer.ggml.tokens", Value::Array(Array::Str(self.tokens.clone())));
        w.set("tokenizer.ggml.scores", Value::Array(Array::F32(self.scores.clone())));
        w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(self.token_types.clone())));
        w.set("tokenizer.ggml.precompiled_charsmap", Value::Array(Array::U8(self.charsmap.clone())));
        for (key, id) in &self.special_ids {
            w.set(&format!("tokenizer.ggml.{key}"), Value::U32(*id));
        }
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        w.set("tokenizer.ggml.add_eos_token", Value::Bool(self.add_eos));
        w.set("tokenizer.ggml.add_space_prefix", Value::Bool(true));
        w.set("tokenizer.ggml.remove_extra_whitespaces", Value::Bool(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("TQ=").is_none());
        assert!(base64_decode("T!==").is_none());
    }
}
