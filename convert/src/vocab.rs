//! Hugging Face byte-level BPE tokenizer (`tokenizer.json`) → llama.cpp tokenizer metadata.
//!
//! llama.cpp does not run the HF pre-tokenizer; it picks a built-in regex by the name in
//! `tokenizer.ggml.pre`. So the pre-tokenizer is matched structurally against the few we know
//! llama.cpp reproduces exactly, and anything else is refused rather than silently tokenized
//! differently at run time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use delrec_format::gguf::{Array, GgufWriter, Value};
use serde_json::Value as J;
use sha2::{Digest, Sha256};

use crate::error::{read_json, ConvertError, Result};

/// The split regex of Qwen2 tokenizers (llama.cpp pre-type `qwen2`).
pub const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of Llama 3 tokenizers (llama.cpp pre-type `llama-bpe`).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types (`llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// Everything the GGUF's `tokenizer.*` keys hold.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerMeta {
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    /// (GGUF key suffix, id): `bos_token_id`, `eos_token_id`, ...
    pub special_ids: Vec<(&'static str, u32)>,
    pub add_bos: bool,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

/// Special token kinds, as gguf-py's `SpecialVocab` reads them: (HF name, GGUF key suffix).
const SPECIAL_KINDS: [(&str, &str); 7] = [
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

/// Compact JSON of a value for error messages.
fn show(v: &J) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// Same names llama.cpp's converter treats as control tokens even when not flagged special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Where a tokenizer lives: a model directory or a `tokenizer.json` file.
pub fn tokenizer_json_path(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let p = path.join("tokenizer.json");
        if !p.is_file() {
            return Err(ConvertError::MissingTokenizer { dir: path.to_path_buf() });
        }
        Ok(p)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ConvertError::MissingTokenizer { dir: path.to_path_buf() })
    }
}

/// Reads `tokenizer_config.json` next to `tokenizer.json`, if any.
fn read_tokenizer_config(tok_json: &Path) -> Result<Option<J>> {
    let p = tok_json.with_file_name("tokenizer_config.json");
    if p.is_file() {
        Ok(Some(read_json(&p)?))
    } else {
        Ok(None)
    }
}

impl TokenizerMeta {
    /// Builds the metadata from `tokenizer.json` (and `tokenizer_config.json` beside it).
    /// `vocab_size` pads the list with `[PAD{i}]` up to the model's embedding rows;
    /// `config` supplies fallback special token ids (`bos_token_id` ...).
    pub fn from_path(path: &Path, vocab_size: Option<usize>, config: Option<&J>) -> Result<Self> {
        let tj = tokenizer_json_path(path)?;
        let json = read_json(&tj)?;
        let tcfg = read_tokenizer_config(&tj)?;
        Self::from_json(&tj, &json, tcfg.as_ref(), vocab_size, config)
    }

    pub fn from_json(
        path: &Path,
        tj: &J,
        tcfg: Option<&J>,
        vocab_size: Option<usize>,
        config: Option<&J>,
    ) -> Result<Self> {
        let unsupported = |reason: String| ConvertError::UnsupportedTokenizer { path: path.to_path_buf(), reason };
        let model = tj.get("model").ok_or_else(|| ConvertError::json(path, "no \"model\" section"))?;
        let mtype = model.get("type").and_then(|v| v.as_str()).unwrap_or("BPE");
        if mtype != "BPE" {
            return Err(unsupported(format!("model type {mtype:?}; only byte-level BPE is supported")));
        }
        if model.get("byte_fallback").and_then(|v| v.as_bool()) == Some(true) {
            return Err(unsupported(
                "BPE with byte_fallback (a SentencePiece-style vocabulary) is not supported".into(),
            ));
        }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(k).and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty()) {
                return Err(unsupported(format!("BPE {k} {} is not supported", show(&model[k]))));
            }
        }
        if model.get("dropout").and_then(|v| v.as_f64()).is_some_and(|d| d > 0.0) {
            return Err(unsupported("BPE dropout is set".into()));
        }
        match tj.get("decoder") {
            Some(d) if d.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") => {}
            other => {
                return Err(unsupported(format!(
                    "decoder {} is not ByteLevel: not a byte-level BPE tokenizer",
                    other.map(show).unwrap_or_else(|| "(none)".into())
                )))
            }
        }
        let pre = pre_type(tj.get("pre_tokenizer").unwrap_or(&J::Null)).map_err(unsupported)?;
        // llama.cpp runs no normalizer for byte-level BPE. NFC is tolerated for qwen2 because
        // llama.cpp's own converter does the same (Qwen2 tokenizers declare NFC); text that is not
        // already NFC may then tokenize differently here and in HF.
        match tj.get("normalizer") {
            None | Some(J::Null) => {}
            Some(n) if n.get("type").and_then(|t| t.as_str()) == Some("NFC") && pre == "qwen2" => {}
            Some(n) => return Err(unsupported(format!("normalizer {} (llama.cpp applies none)", show(n)))),
        }
        let ignore_merges = model.get("ignore_merges").and_then(|v| v.as_bool()).unwrap_or(false);
        if ignore_merges && pre != "llama-bpe" {
            return Err(unsupported(format!(
                "BPE ignore_merges = true with pre-tokenizer {pre:?}: llama.cpp only ignores merges for llama-bpe"
            )));
        }

        // id → (text, type)
        let mut by_id: BTreeMap<u32, (String, i32)> = BTreeMap::new();
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| ConvertError::json(path, "model.vocab is not an object"))?;
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| ConvertError::json(path, format!("vocab id of {tok:?} is not an integer")))?;
            if let Some((prev, _)) = by_id.insert(id, (tok.clone(), TOKEN_NORMAL)) {
                return Err(ConvertError::json(path, format!("tokens {prev:?} and {tok:?} share id {id}")));
            }
        }
        let mut added_content: HashMap<String, u32> = HashMap::new();
        for a in tj.get("added_tokens").and_then(|v| v.as_array()).map(|v| v.as_slice()).unwrap_or(&[]) {
            let id = a.get("id").and_then(|v| v.as_u64()).and_then(|i| u32::try_from(i).ok());
            let content = a.get("content").and_then(|v| v.as_str());
            let (Some(id), Some(content)) = (id, content) else {
                return Err(ConvertError::json(path, format!("added token {} lacks id or content", show(a))));
            };
            let special = a.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
            let ty = if special || looks_special(content) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
            match by_id.get(&id) {
                Some((prev, _)) if prev != content => {
                    return Err(ConvertError::json(
                        path,
                        format!("added token {content:?} reuses id {id} of {prev:?}"),
                    ));
                }
                _ => {}
            }
            by_id.insert(id, (content.to_string(), ty));
            added_content.entry(content.to_string()).or_insert(id);
        }
        let n_have = by_id.keys().next_back().map(|&m| m as usize + 1).unwrap_or(0);
        let n = match vocab_size {
            Some(v) if v < n_have => {
                return Err(ConvertError::TokenizerMismatch {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the tokenizer uses ids up to {} but the model's vocabulary has {v} entries",
                        n_have - 1
                    ),
                })
            }
            Some(v) => v,
            None => n_have,
        };
        let mut tokens = Vec::with_capacity(n);
        let mut token_types = Vec::with_capacity(n);
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n);
        let pads: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        for (i, pad) in pads.iter().enumerate() {
            let (t, ty) = match by_id.get(&(i as u32)) {
                Some((t, ty)) => (t.as_str(), *ty),
                None => (pad.as_str(), TOKEN_UNUSED),
            };
            // llama.cpp maps text → id and aborts on duplicates; refuse them here instead.
            if let Some(prev) = seen.insert(t, i) {
                return Err(unsupported(format!("token {t:?} appears twice (ids {prev} and {i})")));
            }
            tokens.push(t.to_string());
            token_types.push(ty);
        }
        let merges = read_merges(path, model)?;

        // Special ids: tokenizer_config.json names (looked up among added tokens), then config.json ids.
        let mut special_ids: Vec<(&'static str, u32)> = Vec::new();
        for (kind, key) in SPECIAL_KINDS {
            let from_tcfg = tcfg.and_then(|c| c.get(format!("{kind}_token"))).and_then(|e| match e {
                J::String(s) => Some(s.as_str()),
                J::Object(o) => o.get("content").and_then(|c| c.as_str()),
                _ => None,
            });
            let id = from_tcfg.and_then(|c| added_content.get(c).copied()).or_else(|| {
                config
                    .and_then(|c| c.get(format!("{kind}_token_id")))
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u32::try_from(v).ok())
            });
            if let Some(id) = id.filter(|&id| (id as usize) < n) {
                special_ids.push((key, id));
            }
        }
        let bos_content =
            special_ids.iter().find(|(k, _)| *k == "bos_token_id").map(|&(_, id)| tokens[id as usize].clone());
        let add_bos = match tcfg.and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => post_processor_adds(tj.get("post_processor"), bos_content.as_deref()),
        };
        let add_eos = tcfg.and_then(|c| c.get("add_eos_token")).and_then(|v| v.as_bool());
        let chat_template = tcfg.and_then(|c| c.get("chat_template")).and_then(|v| v.as_str()).map(str::to_string);
        Ok(TokenizerMeta { pre, tokens, token_types, merges, special_ids, add_bos, add_eos, chat_template })
    }

    pub fn special_id(&self, key: &str) -> Option<u32> {
        self.special_ids.iter().find(|(k, _)| *k == key).map(|&(_, id)| id)
    }

    /// Writes the `tokenizer.*` keys.
    pub fn write(&self, w: &mut GgufWriter) {
        w.set("tokenizer.ggml.model", Value::Str("gpt2".into()));
        w.set("tokenizer.ggml.pre", Value::Str(self.pre.clone()));
        w.set("tokenizer.ggml.tokens", Value::Array(Array::Str(self.tokens.clone())));
        w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(self.token_types.clone())));
        w.set("tokenizer.ggml.merges", Value::Array(Array::Str(self.merges.clone())));
        for (key, id) in &self.special_ids {
            w.set(&format!("tokenizer.ggml.{key}"), Value::U32(*id));
        }
        // Always written: llama.cpp's default differs by pre-type (llama-bpe defaults to true).
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos));
        if let Some(e) = self.add_eos {
            w.set("tokenizer.ggml.add_eos_token", Value::Bool(e));
        }
        if let Some(t) = &self.chat_template {
            w.set("tokenizer.chat_template", Value::Str(t.clone()));
        }
    }

    /// The fingerprint `delrec_format::identity::tokenizer_fingerprint` computes from a GGUF holding
    /// this metadata (a test keeps the two in step).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for s in ["gpt2", self.pre.as_str()] {
            h.update(s.as_bytes());
            h.update([0u8]);
        }
        for list in [&self.tokens, &self.merges] {
            h.update([1u8]);
            for s in list {
                h.update(s.as_bytes());
                h.update([0u8]);
            }
        }
        delrec_format::identity::hex(&h.finalize())
    }
}

/// Merges as llama.cpp wants them: "left right". Pair-form merges (transformers ≥ 4.45) may hold
/// spaces inside a part; like llama.cpp's converter, those become U+0120 (the byte-level space).
fn read_merges(path: &Path, model: &J) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(|v| v.as_array()) else {
        return Err(ConvertError::json(path, "model.merges is missing: llama.cpp needs BPE merges"));
    };
    list.iter()
        .map(|m| match m {
            J::String(s) => Ok(s.clone()),
            J::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{} {}", a.replace(' ', "\u{120}"), b.replace(' ', "\u{120}"))),
                _ => Err(ConvertError::json(path, format!("merge {} is not two strings", show(m)))),
            },
            _ => Err(ConvertError::json(path, format!("merge {} is neither \"a b\" nor [a, b]", show(m)))),
        })
        .collect()
}

/// Whether a `TemplateProcessing` post-processor puts `bos` first in single sequences (how Llama 3
/// tokenizers add BOS without saying `add_bos_token`).
fn post_processor_adds(pp: Option<&J>, bos: Option<&str>) -> bool {
    let (Some(pp), Some(bos)) = (pp, bos) else { return false };
    match pp.get("type").and_then(|t| t.as_str()) {
        Some("TemplateProcessing") => {
            pp.get("single")
                .and_then(|s| s.as_array())
                .and_then(|s| s.first())
                .and_then(|f| f.get("SpecialToken"))
                .and_then(|st| st.get("id"))
                .and_then(|id| id.as_str())
                == Some(bos)
        }
        Some("Sequence") => pp
            .get("processors")
            .and_then(|p| p.as_array())
            .is_some_and(|ps| ps.iter().any(|p| post_processor_adds(Some(p), Some(bos)))),
        _ => false,
    }
}

fn is_type(v: &J, t: &str) -> bool {
    v.get("type").and_then(|x| x.as_str()) == Some(t)
}

/// A ByteLevel pre-tokenizer with the given `use_regex` and no prefix space.
fn is_byte_level(v: &J, use_regex: bool) -> bool {
    is_type(v, "ByteLevel")
        && v.get("use_regex").and_then(|x| x.as_bool()).unwrap_or(true) == use_regex
        && !v.get("add_prefix_space").and_then(|x| x.as_bool()).unwrap_or(false)
}

/// `tokenizer.ggml.pre` for a `pre_tokenizer`, or a description of what was found.
pub fn pre_type(pt: &J) -> std::result::Result<String, String> {
    let found = || {
        format!(
            "pre-tokenizer {} has no llama.cpp equivalent (supported: GPT-2 ByteLevel, Qwen2, Llama 3, SmolLM)",
            show(pt)
        )
    };
    if is_byte_level(pt, true) {
        return Ok("gpt-2".into());
    }
    if is_type(pt, "ByteLevel") && pt.get("add_prefix_space").and_then(|x| x.as_bool()) == Some(true) {
        return Err(format!("ByteLevel with add_prefix_space = true: llama.cpp adds no prefix space ({})", show(pt)));
    }
    let seq = match pt.get("pretokenizers").and_then(|p| p.as_array()) {
        Some(s) if is_type(pt, "Sequence") => s,
        _ => return Err(found()),
    };
    match seq.as_slice() {
        [split, bl] if is_type(split, "Split") && is_byte_level(bl, false) => {
            let regex = split.get("pattern").and_then(|p| p.get("Regex")).and_then(|r| r.as_str());
            let isolated = split.get("behavior").and_then(|b| b.as_str()) == Some("Isolated");
            let inverted = split.get("invert").and_then(|b| b.as_bool()).unwrap_or(false);
            match regex {
                Some(QWEN2_PATTERN) if isolated && !inverted => Ok("qwen2".into()),
                Some(LLAMA3_PATTERN) if isolated && !inverted => Ok("llama-bpe".into()),
                _ => Err(found()),
            }
        }
        // SmolLM: digits split one by one, then GPT-2's regex. llama.cpp's `smollm` pre-type runs
        // `\p{N}` then the GPT-2 regex, which is the same split.
        [digits, bl]
            if is_type(digits, "Digits")
                && digits.get("individual_digits").and_then(|x| x.as_bool()) == Some(true)
                && is_byte_level(bl, true) =>
        {
            Ok("smollm".into())
        }
        _ => Err(found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use serde_json::json;

    #[test]
    fn maps_known_pre_tokenizers() {
        assert_eq!(pre_type(&gpt2_pre()).unwrap(), "gpt-2");
        assert_eq!(pre_type(&qwen2_pre()).unwrap(), "qwen2");
        let mut l3 = qwen2_pre();
        l3["pretokenizers"][0]["pattern"]["Regex"] = json!(LLAMA3_PATTERN);
        assert_eq!(pre_type(&l3).unwrap(), "llama-bpe");
        let smol = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        assert_eq!(pre_type(&smol).unwrap(), "smollm");
        let ws = json!({"type": "Whitespace"});
        assert!(pre_type(&ws).unwrap_err().contains("Whitespace"));
        let mut other = qwen2_pre();
        other["pretokenizers"][0]["pattern"]["Regex"] = json!("\\s+");
        assert!(pre_type(&other).is_err());
        assert!(pre_type(&json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true})).is_err());
    }

    #[test]
    fn builds_tokens_types_merges_and_specials() {
        let tj = tokenizer_json(gpt2_pre());
        let tcfg = json!({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": true});
        let m = TokenizerMeta::from_json(Path::new("t.json"), &tj, Some(&tcfg), Some(N_TOKENS + 2), None).unwrap();
        assert_eq!(m.pre, "gpt-2");
        assert_eq!(m.tokens.len(), N_TOKENS + 2);
        assert_eq!(m.tokens[0], "<|endoftext|>");
        assert_eq!(m.token_types[0], TOKEN_CONTROL);
        assert_eq!(m.token_types[3], TOKEN_NORMAL);
        assert_eq!(m.tokens[N_TOKENS], format!("[PAD{N_TOKENS}]"));
        assert_eq!(m.token_types[N_TOKENS + 1], TOKEN_UNUSED);
        assert_eq!(m.merges[0], "Ġ t");
        assert_eq!(m.special_id("bos_token_id"), Some(0));
        assert_eq!(m.special_id("eos_token_id"), Some(2));
        assert!(m.add_bos);
        // Config ids fill in what tokenizer_config.json does not name.
        let m =
            TokenizerMeta::from_json(Path::new("t.json"), &tj, None, None, Some(&json!({"pad_token_id": 1}))).unwrap();
        assert_eq!(m.special_id("padding_token_id"), Some(1));
        assert!(!m.add_bos);
        // A model with fewer rows than the tokenizer's ids is a mismatch.
        let e = TokenizerMeta::from_json(Path::new("t.json"), &tj, None, Some(10), None);
        assert!(matches!(e, Err(ConvertError::TokenizerMismatch { .. })));
    }

    #[test]
    fn refuses_what_llama_cpp_cannot_reproduce() {
        let p = Path::new("t.json");
        let mut tj = tokenizer_json(gpt2_pre());
        tj["normalizer"] = json!({"type": "Lowercase"});
        assert!(matches!(
            TokenizerMeta::from_json(p, &tj, None, None, None),
            Err(ConvertError::UnsupportedTokenizer { .. })
        ));
        let mut tj = tokenizer_json(qwen2_pre());
        tj["normalizer"] = json!({"type": "NFC"});
        assert!(TokenizerMeta::from_json(p, &tj, None, None, None).is_ok());
        let mut tj = tokenizer_json(gpt2_pre());
        tj["model"]["type"] = json!("Unigram");
        assert!(matches!(
            TokenizerMeta::from_json(p, &tj, None, None, None),
            Err(ConvertError::UnsupportedTokenizer { .. })
        ));
        let mut tj = tokenizer_json(gpt2_pre());
        tj["model"]["merges"] = json!(["a b", "Ġ t"]);
        assert_eq!(TokenizerMeta::from_json(p, &tj, None, None, None).unwrap().merges, vec!["a b", "Ġ t"]);
        let mut tj = tokenizer_json(gpt2_pre());
        tj["model"]["merges"] = json!([["a b", "c"]]);
        assert_eq!(TokenizerMeta::from_json(p, &tj, None, None, None).unwrap().merges, vec!["a\u{120}b c"]);
    }
}
