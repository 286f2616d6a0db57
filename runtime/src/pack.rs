//! The recommender pack: soft prompts, template, pre-tokenized catalog, scoring mode and the
//! identity of the base model, in one GGUF file (format in `docs/format.md`, version
//! [`PACK_VERSION`]).
//!
//! Everything is validated when the pack is opened (token ids inside the vocabulary, offsets
//! monotonic, soft prompt widths, template structure), so ranking never meets a malformed pack.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, GgufWriter, TensorData, TensorType, Value};
use crate::template::{self, Piece};

/// Version of the pack layout this build reads and writes.
pub const PACK_VERSION: u32 = 1;
pub const PACK_ARCH: &str = "delrec-pack";

/// How candidates are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringMode {
    /// Sum of token log-probabilities (the candidate's likelihood).
    Sum,
    /// Sum divided by the number of scored tokens (length-normalized).
    Mean,
}

impl ScoringMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScoringMode::Sum => "sum",
            ScoringMode::Mean => "mean",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(ScoringMode::Sum),
            "mean" => Ok(ScoringMode::Mean),
            _ => Err(Error::InvalidInput(format!("scoring mode {s:?} (expected sum or mean)"))),
        }
    }
}

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

fn bad_file(f: &GgufFile, reason: impl Into<String>) -> Error {
    Error::InvalidFile { path: f.path().to_path_buf(), reason: reason.into() }
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

/// sha256 of a whole file (hex), streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}

/// A template piece with its tokens resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(Vec<i32>),
    Soft(usize),
    History,
    Candidate,
}

/// The compiled template of a pack.
#[derive(Clone, Debug)]
pub struct Template {
    pub text: String,
    pub parts: Vec<Part>,
    pub item_prefix: String,
    pub history_separator: String,
    pub separator_tokens: Vec<i32>,
    /// Token put before everything, if any.
    pub bos: Option<i32>,
}

impl Template {
    /// Tokens after `{candidate}`, scored with every candidate.
    pub fn terminator(&self) -> Vec<i32> {
        let at = self.parts.iter().position(|p| *p == Part::Candidate).unwrap_or(self.parts.len());
        let mut out = Vec::new();
        for p in &self.parts[at..] {
            if let Part::Text(t) = p {
                out.extend_from_slice(t);
            }
        }
        out
    }
}

/// A soft prompt in the pack (a view into the mapped file).
#[derive(Clone, Debug)]
pub struct SoftPrompt {
    pub name: String,
    pub n_virtual: usize,
    pub ty: TensorType,
    tensor: String,
}

/// An open, validated pack.
pub struct Pack {
    file: GgufFile,
    pub base: BaseIdentity,
    pub model_sha256: Vec<String>,
    pub template: Template,
    pub scoring: ScoringMode,
    pub soft_prompts: Vec<SoftPrompt>,
    ids: Vec<String>,
    titles: Vec<String>,
    texts: Option<Vec<String>>,
    index: HashMap<String, u32>,
    offsets: Vec<u32>,
    tokens_offset: usize,
}

const K_VERSION: &str = "delrec.pack.version";
const K_ARCH: &str = "delrec.base.architecture";
const K_EMBD: &str = "delrec.base.n_embd";
const K_VOCAB: &str = "delrec.base.n_vocab";
const K_FP: &str = "delrec.base.tokenizer_fingerprint";
const K_SHA: &str = "delrec.base.model_sha256";
const K_TEXT: &str = "delrec.template.text";
const K_PARTS: &str = "delrec.template.parts";
const K_PREFIX: &str = "delrec.template.item_prefix";
const K_SEP: &str = "delrec.template.history_separator";
const K_SEP_TOK: &str = "delrec.template.history_separator.tokens";
const K_BOS: &str = "delrec.template.bos";
const K_SCORING: &str = "delrec.scoring.mode";
const K_SOFT: &str = "delrec.soft_prompt.names";
const K_IDS: &str = "delrec.catalog.ids";
const K_TITLES: &str = "delrec.catalog.titles";
const K_TEXTS: &str = "delrec.catalog.texts";
const T_TOKENS: &str = "catalog.tokens";
const T_OFFSETS: &str = "catalog.offsets";

fn part_key(i: usize) -> String {
    format!("delrec.template.part.{i}.tokens")
}

fn soft_tensor(name: &str) -> String {
    format!("soft_prompt.{name}")
}

fn read_i32s(bytes: &[u8]) -> impl Iterator<Item = i32> + '_ {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

impl Pack {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::from_file(file)
    }

    fn from_file(file: GgufFile) -> Result<Self> {
        let f = &file;
        if f.get("general.architecture").and_then(Value::as_str) != Some(PACK_ARCH) {
            return Err(bad_file(f, "not a delrec pack (general.architecture is not delrec-pack)"));
        }
        let version = f.req_u64(K_VERSION)?;
        if version != PACK_VERSION as u64 {
            return Err(bad_file(f, format!("pack version {version}; this build reads version {PACK_VERSION}")));
        }
        let u32_of = |k: &str| -> Result<u32> {
            u32::try_from(f.req_u64(k)?).map_err(|_| bad_file(f, format!("{k} overflows")))
        };
        let base = BaseIdentity {
            architecture: f.req_str(K_ARCH)?.to_string(),
            n_embd: u32_of(K_EMBD)?,
            n_vocab: u32_of(K_VOCAB)?,
            tokenizer_fingerprint: f.req_str(K_FP)?.to_string(),
        };
        let model_sha256 = match f.get(K_SHA) {
            None => vec![],
            Some(v) => v.as_str_array().ok_or_else(|| bad_file(f, format!("{K_SHA} is not a string array")))?.to_vec(),
        };
        let n_vocab = base.n_vocab as i64;
        let check_tokens = |what: &str, toks: &[i32]| -> Result<()> {
            match toks.iter().find(|&&t| t < 0 || t as i64 >= n_vocab) {
                Some(t) => Err(bad_file(f, format!("{what}: token id {t} outside the vocabulary ({n_vocab})"))),
                None => Ok(()),
            }
        };
        let tok_array = |k: &str| -> Result<Vec<i32>> {
            match f.get(k) {
                Some(Value::Array(Array::I32(v))) => {
                    check_tokens(k, v)?;
                    Ok(v.clone())
                }
                _ => Err(bad_file(f, format!("{k} is missing or not an i32 array"))),
            }
        };

        // Soft prompts.
        let names = f.req_str_array(K_SOFT)?;
        let mut soft_prompts = Vec::with_capacity(names.len());
        for name in names {
            if !template::valid_name(name) || soft_prompts.iter().any(|s: &SoftPrompt| &s.name == name) {
                return Err(bad_file(f, format!("soft prompt name {name:?} is invalid or repeated")));
            }
            let tname = soft_tensor(name);
            let t = f.tensor(&tname).ok_or_else(|| bad_file(f, format!("tensor {tname} is missing")))?;
            if !matches!(t.ty, TensorType::F32 | TensorType::F16) || t.dims.len() != 2 {
                return Err(bad_file(
                    f,
                    format!("{tname}: expected a 2-D F32/F16 tensor, found {:?} {}", t.dims, t.ty.name()),
                ));
            }
            if t.dims[0] != base.n_embd as u64 {
                return Err(bad_file(
                    f,
                    format!("{tname}: width {} but the base model's n_embd is {}", t.dims[0], base.n_embd),
                ));
            }
            let n_virtual = usize::try_from(t.dims[1]).map_err(|_| bad_file(f, "soft prompt too long"))?;
            if n_virtual == 0 {
                return Err(bad_file(f, format!("{tname} has no virtual tokens")));
            }
            soft_prompts.push(SoftPrompt { name: name.clone(), n_virtual, ty: t.ty, tensor: tname });
        }

        // Template.
        let text = f.req_str(K_TEXT)?.to_string();
        let tags = f.req_str_array(K_PARTS)?;
        let mut pieces = Vec::with_capacity(tags.len());
        let mut parts = Vec::with_capacity(tags.len());
        for (i, tag) in tags.iter().enumerate() {
            let (piece, part) = match tag.as_str() {
                "text" => (Piece::Text(String::new()), Part::Text(tok_array(&part_key(i))?)),
                "history" => (Piece::History, Part::History),
                "candidate" => (Piece::Candidate, Part::Candidate),
                other => match other.strip_prefix("soft:") {
                    Some(n) => {
                        let idx = soft_prompts.iter().position(|s| s.name == n).ok_or_else(|| {
                            bad_file(f, format!("template uses soft prompt {n:?}, which the pack lacks"))
                        })?;
                        (Piece::Soft(n.into()), Part::Soft(idx))
                    }
                    None => return Err(bad_file(f, format!("unknown template part {other:?}"))),
                },
            };
            pieces.push(piece);
            parts.push(part);
        }
        template::validate(&pieces).map_err(|e| bad_file(f, e.to_string()))?;
        let bos = match f.get(K_BOS).and_then(Value::as_i64) {
            None | Some(-1) => None,
            Some(t) if t >= 0 && t < n_vocab => Some(t as i32),
            Some(t) => return Err(bad_file(f, format!("{K_BOS}: token {t} outside the vocabulary"))),
        };
        let template = Template {
            text,
            parts,
            item_prefix: f.req_str(K_PREFIX)?.to_string(),
            history_separator: f.req_str(K_SEP)?.to_string(),
            separator_tokens: tok_array(K_SEP_TOK)?,
            bos,
        };
        let scoring = ScoringMode::parse(f.req_str(K_SCORING)?).map_err(|e| bad_file(f, e.to_string()))?;

        // Catalog.
        let ids = f.req_str_array(K_IDS)?.to_vec();
        let titles = f.req_str_array(K_TITLES)?.to_vec();
        let texts = match f.get(K_TEXTS) {
            None => None,
            Some(v) => {
                Some(v.as_str_array().ok_or_else(|| bad_file(f, format!("{K_TEXTS} is not a string array")))?.to_vec())
            }
        };
        let n = ids.len();
        if n == 0 || titles.len() != n || texts.as_ref().is_some_and(|t| t.len() != n) || n >= u32::MAX as usize {
            return Err(bad_file(
                f,
                format!("catalog arrays disagree or are empty ({n} ids, {} titles)", titles.len()),
            ));
        }
        let mut index = HashMap::with_capacity(n);
        for (i, id) in ids.iter().enumerate() {
            if id.is_empty() || index.insert(id.clone(), i as u32).is_some() {
                return Err(bad_file(f, format!("catalog id {id:?} is empty or repeated")));
            }
        }
        let t_off = f.tensor(T_OFFSETS).ok_or_else(|| bad_file(f, "catalog.offsets is missing"))?;
        let t_tok = f.tensor(T_TOKENS).ok_or_else(|| bad_file(f, "catalog.tokens is missing"))?;
        if t_off.ty != TensorType::I32
            || t_tok.ty != TensorType::I32
            || t_off.dims != [n as u64 + 1]
            || t_tok.dims.len() != 1
        {
            return Err(bad_file(f, "catalog tensors have the wrong type or shape"));
        }
        let off_bytes = f.tensor_bytes(t_off).ok_or_else(|| bad_file(f, "catalog.offsets unreadable"))?;
        let tok_bytes = f.tensor_bytes(t_tok).ok_or_else(|| bad_file(f, "catalog.tokens unreadable"))?;
        let n_tok = t_tok.dims[0];
        let mut offsets = Vec::with_capacity(n + 1);
        let mut prev = 0i64;
        for (i, o) in read_i32s(off_bytes).enumerate() {
            let o = o as i64;
            let first_ok = i > 0 || o == 0;
            if !first_ok || (i > 0 && o <= prev) || o > n_tok as i64 {
                return Err(bad_file(
                    f,
                    format!(
                        "catalog.offsets[{i}] = {o} is not increasing inside 0..={n_tok} (an item without tokens?)"
                    ),
                ));
            }
            prev = o;
            offsets.push(o as u32);
        }
        if offsets.last().copied().map(u64::from) != Some(n_tok) {
            return Err(bad_file(f, "catalog.offsets does not end at the token count"));
        }
        check_tokens(T_TOKENS, &read_i32s(tok_bytes).collect::<Vec<_>>())?;
        let tokens_offset = t_tok.offset as usize;

        Ok(Pack {
            base,
            model_sha256,
            template,
            scoring,
            soft_prompts,
            ids,
            titles,
            texts,
            index,
            offsets,
            tokens_offset,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    pub fn n_items(&self) -> usize {
        self.ids.len()
    }

    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn item_id(&self, i: u32) -> &str {
        &self.ids[i as usize]
    }

    pub fn item_title(&self, i: u32) -> &str {
        &self.titles[i as usize]
    }

    pub fn item_text(&self, i: u32) -> Option<&str> {
        self.texts.as_ref().map(|t| t[i as usize].as_str())
    }

    /// The item's pre-tokenized `item_prefix + title`.
    pub fn item_tokens(&self, i: u32) -> Vec<i32> {
        let (a, b) = (self.offsets[i as usize] as usize, self.offsets[i as usize + 1] as usize);
        let bytes = &self.file.bytes()[self.tokens_offset + 4 * a..self.tokens_offset + 4 * b];
        read_i32s(bytes).collect()
    }

    pub fn soft_prompt_index(&self, name: &str) -> Result<usize> {
        self.soft_prompts.iter().position(|s| s.name == name).ok_or_else(|| {
            Error::UnknownSoftPrompt(
                name.into(),
                self.soft_prompts.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            )
        })
    }

    /// The soft prompt's rows as f32 (`n_virtual × n_embd`, row-major).
    pub fn soft_prompt_values(&self, idx: usize) -> Result<Vec<f32>> {
        let sp = &self.soft_prompts[idx];
        let t = self.file.tensor(&sp.tensor).ok_or_else(|| bad_file(&self.file, "soft prompt vanished"))?;
        let bytes = self.file.tensor_bytes(t).ok_or_else(|| bad_file(&self.file, "soft prompt unreadable"))?;
        Ok(match sp.ty {
            TensorType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        })
    }
}

/// An item to put in a pack.
#[derive(Clone, Debug)]
pub struct CatalogItem {
    pub id: String,
    pub title: String,
    pub text: Option<String>,
}

/// Assembles and writes a pack. Tokenization is passed in, so the caller decides which tokenizer
/// (HF `tokenizers` or the model GGUF's own) produces the ids.
pub struct PackBuilder {
    pub base: BaseIdentity,
    pub model_sha256: Vec<String>,
    pub template: String,
    pub item_prefix: String,
    pub history_separator: String,
    pub bos: Option<i32>,
    pub scoring: ScoringMode,
    pub name: Option<String>,
    soft: Vec<(String, usize, Vec<f32>, bool)>,
    items: Vec<CatalogItem>,
}

impl PackBuilder {
    pub fn new(base: BaseIdentity, template: &str) -> Self {
        Self {
            base,
            model_sha256: vec![],
            template: template.to_string(),
            item_prefix: " ".into(),
            history_separator: ",".into(),
            bos: None,
            scoring: ScoringMode::Sum,
            name: None,
            soft: vec![],
            items: vec![],
        }
    }

    /// Adds a soft prompt of `n_virtual` rows (row-major `n_virtual × n_embd`), stored as f16 or f32.
    pub fn add_soft_prompt(&mut self, name: &str, n_virtual: usize, values: Vec<f32>, as_f16: bool) -> Result<()> {
        if !template::valid_name(name) {
            return Err(Error::InvalidInput(format!("soft prompt name {name:?}: use 1-64 of [A-Za-z0-9_.-]")));
        }
        if self.soft.iter().any(|s| s.0 == name) {
            return Err(Error::InvalidInput(format!("soft prompt {name:?} added twice")));
        }
        let width = self.base.n_embd as usize;
        if n_virtual == 0 || values.len() != n_virtual * width {
            return Err(Error::InvalidInput(format!(
                "soft prompt {name:?}: {} values is not {n_virtual} rows of the model width {width}",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!("soft prompt {name:?} holds NaN or infinite values")));
        }
        self.soft.push((name.to_string(), n_virtual, values, as_f16));
        Ok(())
    }

    pub fn add_item(&mut self, item: CatalogItem) {
        self.items.push(item);
    }

    /// Validates everything, tokenizes, and writes the pack atomically.
    pub fn write(&self, path: &Path, tokenize: &mut dyn FnMut(&str) -> Result<Vec<i32>>) -> Result<()> {
        let pieces = template::parse(&self.template)?;
        let n_vocab = self.base.n_vocab as i64;
        let mut tok = |what: &str, s: &str| -> Result<Vec<i32>> {
            let t = tokenize(s)?;
            if let Some(bad) = t.iter().find(|&&x| x < 0 || x as i64 >= n_vocab) {
                return Err(Error::InvalidInput(format!("{what}: token {bad} outside the vocabulary")));
            }
            Ok(t)
        };
        if self.items.is_empty() {
            return Err(Error::InvalidInput("the catalog is empty".into()));
        }
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str(PACK_ARCH.into()));
        if let Some(n) = &self.name {
            w.set("general.name", Value::Str(n.clone()));
        }
        w.set(K_VERSION, Value::U32(PACK_VERSION));
        w.set(K_ARCH, Value::Str(self.base.architecture.clone()));
        w.set(K_EMBD, Value::U32(self.base.n_embd));
        w.set(K_VOCAB, Value::U32(self.base.n_vocab));
        w.set(K_FP, Value::Str(self.base.tokenizer_fingerprint.clone()));
        w.set(K_SHA, Value::Array(Array::Str(self.model_sha256.clone())));
        w.set(K_TEXT, Value::Str(self.template.clone()));
        w.set(K_PARTS, Value::Array(Array::Str(pieces.iter().map(Piece::tag).collect())));
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Text(t) => w.set(&part_key(i), Value::Array(Array::I32(tok("template text", t)?))),
                Piece::Soft(n) if !self.soft.iter().any(|s| &s.0 == n) => {
                    return Err(Error::InvalidInput(format!(
                        "the template uses soft prompt {n:?}, which was not given"
                    )));
                }
                _ => {}
            }
        }
        w.set(K_PREFIX, Value::Str(self.item_prefix.clone()));
        w.set(K_SEP, Value::Str(self.history_separator.clone()));
        w.set(K_SEP_TOK, Value::Array(Array::I32(tok("history separator", &self.history_separator)?)));
        if let Some(b) = self.bos {
            if b < 0 || b as i64 >= n_vocab {
                return Err(Error::InvalidInput(format!("BOS token {b} outside the vocabulary")));
            }
        }
        w.set(K_BOS, Value::I32(self.bos.unwrap_or(-1)));
        w.set(K_SCORING, Value::Str(self.scoring.as_str().into()));
        w.set(K_SOFT, Value::Array(Array::Str(self.soft.iter().map(|s| s.0.clone()).collect())));
        for (name, n_virtual, values, as_f16) in &self.soft {
            let dims = [self.base.n_embd as u64, *n_virtual as u64];
            let (ty, bytes) = if *as_f16 {
                (TensorType::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect())
            } else {
                (TensorType::F32, crate::gguf::f32_bytes(values))
            };
            w.add_tensor(&soft_tensor(name), &dims, ty, TensorData::Owned(bytes))?;
        }
        let mut seen = HashMap::new();
        let mut tokens = Vec::new();
        let mut offsets = vec![0i32];
        for (i, it) in self.items.iter().enumerate() {
            let line = i + 1;
            if it.id.trim().is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {line}: empty id")));
            }
            if let Some(prev) = seen.insert(it.id.as_str(), line) {
                return Err(Error::InvalidInput(format!(
                    "catalog: duplicate id {:?} (items {prev} and {line})",
                    it.id
                )));
            }
            if it.title.trim().is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {:?}: empty title", it.id)));
            }
            let t = tok("catalog title", &format!("{}{}", self.item_prefix, it.title))?;
            if t.is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {:?}: the title tokenizes to nothing", it.id)));
            }
            tokens.extend_from_slice(&t);
            let end = i32::try_from(tokens.len()).map_err(|_| Error::InvalidInput("catalog too large".into()))?;
            offsets.push(end);
        }
        w.set(K_IDS, Value::Array(Array::Str(self.items.iter().map(|i| i.id.clone()).collect())));
        w.set(K_TITLES, Value::Array(Array::Str(self.items.iter().map(|i| i.title.clone()).collect())));
        if self.items.iter().any(|i| i.text.is_some()) {
            let texts = self.items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
            w.set(K_TEXTS, Value::Array(Array::Str(texts)));
        }
        w.add_tensor(
            T_TOKENS,
            &[tokens.len() as u64],
            TensorType::I32,
            TensorData::Owned(crate::gguf::i32_bytes(&tokens)),
        )?;
        w.add_tensor(
            T_OFFSETS,
            &[offsets.len() as u64],
            TensorType::I32,
            TensorData::Owned(crate::gguf::i32_bytes(&offsets)),
        )?;
        w.write_atomic(path, &mut |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseIdentity {
        BaseIdentity { architecture: "llama".into(), n_embd: 4, n_vocab: 300, tokenizer_fingerprint: "ab".into() }
    }

    /// A stand-in tokenizer for format tests: one token per byte.
    fn bytes_tok(s: &str) -> Result<Vec<i32>> {
        Ok(s.bytes().map(|b| b as i32).collect())
    }

    fn builder() -> PackBuilder {
        let mut b = PackBuilder::new(base(), "{soft:u}Seen:{history}\nNext:{candidate}\n");
        b.add_soft_prompt("u", 2, vec![0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0], false).unwrap();
        b.add_item(CatalogItem { id: "a".into(), title: "Alpha".into(), text: Some("x".into()) });
        b.add_item(CatalogItem { id: "b".into(), title: "Beta (1999)".into(), text: None });
        b
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        builder().write(&p, &mut bytes_tok).unwrap();
        let pack = Pack::open(&p).unwrap();
        assert_eq!(pack.base, base());
        assert_eq!(pack.n_items(), 2);
        assert_eq!(pack.item_index("b"), Some(1));
        assert_eq!(pack.item_title(1), "Beta (1999)");
        assert_eq!(pack.item_text(0), Some("x"));
        assert_eq!(pack.item_tokens(1), bytes_tok(" Beta (1999)").unwrap());
        assert_eq!(pack.soft_prompt_values(0).unwrap(), vec![0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(pack.template.parts[0], Part::Soft(0));
        assert_eq!(pack.template.parts[1], Part::Text(bytes_tok("Seen:").unwrap()));
        assert_eq!(pack.template.terminator(), bytes_tok("\n").unwrap());
        assert_eq!(pack.template.separator_tokens, bytes_tok(",").unwrap());
        assert_eq!(pack.scoring, ScoringMode::Sum);
    }

    #[test]
    fn bad_builds_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        let mut b = builder();
        b.add_item(CatalogItem { id: "a".into(), title: "Again".into(), text: None });
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(m)) if m.contains("duplicate")));
        let mut b = builder();
        b.add_item(CatalogItem { id: "c".into(), title: "  ".into(), text: None });
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(m)) if m.contains("empty title")));
        let mut b = builder();
        assert!(b.add_soft_prompt("w", 2, vec![0.0; 6], false).is_err(), "width 3 accepted for n_embd 4");
        let b = PackBuilder::new(base(), "{soft:missing}{history}{candidate}");
        assert!(b.write(&p, &mut bytes_tok).is_err());
        let mut b = builder();
        b.item_prefix = String::new();
        b.add_item(CatalogItem { id: "z".into(), title: "\u{200b}".into(), text: None });
        let mut empty_for_zw = |s: &str| Ok(if s == "\u{200b}" { vec![] } else { bytes_tok(s)? });
        assert!(matches!(b.write(&p, &mut empty_for_zw), Err(Error::InvalidInput(m)) if m.contains("nothing")));
        assert!(!p.exists(), "a failed build left a file");
    }

    #[test]
    fn every_truncation_and_byte_flip_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        builder().write(&p, &mut bytes_tok).unwrap();
        let full = std::fs::read(&p).unwrap();
        let q = dir.path().join("q.gguf");
        for cut in (0..full.len()).step_by(7) {
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(Pack::open(&q).is_err(), "cut at {cut} opened");
        }
        // Flipped bytes must never panic (they may or may not be detected).
        for i in (0..full.len()).step_by(3) {
            let mut m = full.clone();
            m[i] ^= 0xff;
            std::fs::write(&q, &m).unwrap();
            if let Ok(pack) = Pack::open(&q) {
                for j in 0..pack.n_items() as u32 {
                    let _ = pack.item_tokens(j);
                }
                for s in 0..pack.soft_prompts.len() {
                    let _ = pack.soft_prompt_values(s);
                }
            }
        }
    }
}
