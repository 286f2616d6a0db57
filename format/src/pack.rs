//! The recommender pack: soft prompts, template, pre-tokenized catalog, scoring mode and the
//! identity of the base model, in one GGUF file (format in `docs/format.md`, version
//! [`PACK_VERSION`]).
//!
//! Everything is validated when the pack is opened (token ids inside the vocabulary, offsets
//! monotonic, soft prompt widths, template structure), so ranking never meets a malformed pack.

use std::path::{Path, PathBuf};

use half::f16;

use crate::error::{bad_file, Error, Result};
use crate::gguf::{Array, GgufFile, TensorType, Value};
pub use crate::identity::BaseIdentity;
use crate::seq::{self as seqm, Fusion, Sasrec};
use crate::template::{self, Piece};
pub use crate::verbalizer::{Handler, LabelRule, Verbalizer};

/// Version of the pack layout this build writes for a pack without an adapter; it reads it and
/// [`PACK_VERSION_ADAPTER`].
pub const PACK_VERSION: u32 = 1;
/// The version of a pack that names a LoRA adapter: a version-1 reader would ignore the adapter
/// and rank without the fine-tune, so it must refuse such a pack.
pub const PACK_VERSION_ADAPTER: u32 = 2;
pub const PACK_ARCH: &str = "delrec-pack";

/// How candidates are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringMode {
    /// Sum of token log-probabilities (the candidate's likelihood).
    Sum,
    /// Sum divided by the number of scored tokens (length-normalized).
    Mean,
    /// One prediction at the template's `{mask}`, read by the pack's verbalizer (OpenPrompt's
    /// `ManualVerbalizer`, DELRec as published): the whole catalog scored in one pass.
    Verbalizer,
}

impl ScoringMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScoringMode::Sum => "sum",
            ScoringMode::Mean => "mean",
            ScoringMode::Verbalizer => "verbalizer",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(ScoringMode::Sum),
            "mean" => Ok(ScoringMode::Mean),
            "verbalizer" => Ok(ScoringMode::Verbalizer),
            _ => Err(Error::InvalidInput(format!("scoring mode {s:?} (expected sum, mean or verbalizer)"))),
        }
    }
}

/// The LoRA adapter a pack is served with: a llama.cpp adapter GGUF beside the pack (or at a
/// path the app gives), applied at run time over the base model.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterRef {
    /// File name, looked up in the pack's directory by default: a bare name, no separators.
    pub file: String,
    /// sha256 (hex, lowercase) of the adapter file: any other file is refused.
    pub sha256: String,
    /// The adapter's scale (multiplies llama.cpp's alpha / rank), finite and in `(0, 16]`.
    pub scale: f32,
}

/// A template piece with its tokens resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(Vec<i32>),
    Soft(usize),
    History,
    Candidate,
    Candidates,
    Mask,
}

/// The compiled template of a pack.
#[derive(Clone, Debug)]
pub struct Template {
    pub text: String,
    pub parts: Vec<Part>,
    pub item_prefix: String,
    pub history_separator: String,
    pub separator_tokens: Vec<i32>,
    /// Between the candidates `{candidates}` lists (mask templates that have it).
    pub candidates_separator: String,
    pub candidates_separator_tokens: Vec<i32>,
    /// Title or mask template.
    pub kind: template::Kind,
    /// Encoder-decoder packs: the token at `{mask}` in the encoder and after the decoder's start
    /// token (T5's `<extra_id_0>`, as OpenPrompt's T5 wrapper feeds it).
    pub mask_token: Option<i32>,
    /// Token put before everything, if any.
    pub bos: Option<i32>,
    /// The prompt takes only the latest this many history items (what the LLM was trained
    /// with); `None` takes them all.
    pub max_history: Option<usize>,
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
    /// How the file stores it (F32 or F16).
    pub ty: TensorType,
    /// The rows as f32 (`n_virtual × n_embd`, row-major), checked finite.
    values: Vec<f32>,
}

/// An open, validated pack. Everything it holds is copied out of the file at open and the map is
/// released: a pack file truncated or rewritten while an engine uses it can never fault (SIGBUS)
/// a later call.
pub struct Pack {
    path: PathBuf,
    /// The file's size at open.
    file_len: u64,
    pub base: BaseIdentity,
    pub model_sha256: Vec<String>,
    pub template: Template,
    pub scoring: ScoringMode,
    pub soft_prompts: Vec<SoftPrompt>,
    ids: Vec<String>,
    titles: Vec<String>,
    texts: Option<Vec<String>>,
    /// Catalog indices in id order.
    index: Vec<u32>,
    offsets: Vec<u32>,
    /// The catalog's tokens, copied out of the map: read at every rank, so they must not live in
    /// pages a file truncated under us would turn into SIGBUS.
    tokens: Vec<i32>,
    /// The sequential recommender, when the pack carries one (the cascade's retriever).
    pub seq: Option<Sasrec>,
    /// How the cascade fuses its scores (defaults when the pack does not say).
    pub fusion: Fusion,
    /// The LoRA adapter the pack's fine-tune ships as, if it is not merged into the model.
    pub adapter: Option<AdapterRef>,
    /// The label words of every item (packs with verbalizer scoring, and only they).
    pub verbalizer: Option<Verbalizer>,
}

pub(crate) const K_VERSION: &str = "delrec.pack.version";
pub(crate) use crate::identity::{
    K_BASE_ARCH as K_ARCH, K_BASE_EMBD as K_EMBD, K_BASE_FP as K_FP, K_BASE_VOCAB as K_VOCAB,
};
pub(crate) const K_SHA: &str = "delrec.base.model_sha256";
pub(crate) const K_TEXT: &str = "delrec.template.text";
pub(crate) const K_PARTS: &str = "delrec.template.parts";
pub(crate) const K_PREFIX: &str = "delrec.template.item_prefix";
pub(crate) const K_SEP: &str = "delrec.template.history_separator";
pub(crate) const K_SEP_TOK: &str = "delrec.template.history_separator.tokens";
pub(crate) const K_BOS: &str = "delrec.template.bos";
pub(crate) const K_MAX_HISTORY: &str = "delrec.template.max_history";
pub(crate) const K_SCORING: &str = "delrec.scoring.mode";
pub(crate) const K_MASK_TOK: &str = "delrec.template.mask_token";
pub(crate) const K_CANDS_SEP: &str = "delrec.template.candidates_separator";
pub(crate) const K_CANDS_SEP_TOK: &str = "delrec.template.candidates_separator.tokens";
pub(crate) const K_SOFT: &str = "delrec.soft_prompt.names";
pub(crate) const K_IDS: &str = "delrec.catalog.ids";
pub(crate) const K_TITLES: &str = "delrec.catalog.titles";
pub(crate) const K_TEXTS: &str = "delrec.catalog.texts";
pub(crate) const K_ADAPTER_FILE: &str = "delrec.adapter.file";
pub(crate) const K_ADAPTER_SHA: &str = "delrec.adapter.sha256";
pub(crate) const K_ADAPTER_SCALE: &str = "delrec.adapter.scale";
pub(crate) const T_TOKENS: &str = "catalog.tokens";
pub(crate) const T_OFFSETS: &str = "catalog.offsets";

pub(crate) fn part_key(i: usize) -> String {
    format!("delrec.template.part.{i}.tokens")
}

pub(crate) fn soft_tensor(name: &str) -> String {
    format!("soft_prompt.{name}")
}

/// A valid adapter file name: what `Path::join` keeps inside the pack's directory.
pub fn valid_adapter_file(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn read_adapter(f: &GgufFile) -> Result<Option<AdapterRef>> {
    let Some(file) = f.get(K_ADAPTER_FILE) else {
        if f.get(K_ADAPTER_SHA).is_some() || f.get(K_ADAPTER_SCALE).is_some() {
            return Err(bad_file(f, format!("adapter keys without {K_ADAPTER_FILE}")));
        }
        return Ok(None);
    };
    let file = file
        .as_str()
        .filter(|s| valid_adapter_file(s))
        .ok_or_else(|| bad_file(f, format!("{K_ADAPTER_FILE} must be a bare file name")))?;
    let sha256 = f.req_str(K_ADAPTER_SHA)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad_file(f, format!("{K_ADAPTER_SHA} is not a lowercase hex sha256")));
    }
    let scale = match f.get(K_ADAPTER_SCALE) {
        None => 1.0,
        Some(Value::F32(s)) if valid_adapter_scale(*s) => *s,
        Some(v) => {
            return Err(bad_file(f, format!("{K_ADAPTER_SCALE} must be an F32 in (0, 16], found {}", v.summary())))
        }
    };
    Ok(Some(AdapterRef { file: file.to_string(), sha256: sha256.to_string(), scale }))
}

/// An adapter scale a pack may hold.
pub fn valid_adapter_scale(s: f32) -> bool {
    s.is_finite() && s > 0.0 && s <= 16.0
}

/// Architectures whose encoder sees the whole input (a mask may sit mid-template there).
pub fn is_encoder_decoder(arch: &str) -> bool {
    arch == "t5"
}

/// Which scoring a template allows. Decoder-only: a title template scores with `sum`/`mean`, a
/// mask template with the verbalizer. Encoder-decoder: the template is the encoder's input and
/// must have a `{mask}`; the decoder starts at the mask and either the verbalizer reads its first
/// prediction or `sum`/`mean` score each title there.
pub fn check_scoring(scoring: ScoringMode, kind: template::Kind, encoder_decoder: bool) -> Result<()> {
    match (scoring, kind) {
        (_, template::Kind::Title) if encoder_decoder => Err(Error::InvalidInput(
            "an encoder-decoder model reads the whole template: mark where the answer goes with {mask} instead of {candidate}".into(),
        )),
        (ScoringMode::Verbalizer, template::Kind::Title) => {
            Err(Error::InvalidInput("verbalizer scoring needs a template with {mask}".into()))
        }
        (ScoringMode::Sum | ScoringMode::Mean, template::Kind::Mask) if !encoder_decoder => Err(Error::InvalidInput(
            "on a decoder-only model a template with {mask} scores with the verbalizer (scoring mode verbalizer)".into(),
        )),
        _ => Ok(()),
    }
}

fn read_i32s(bytes: &[u8]) -> impl Iterator<Item = i32> + '_ {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn read_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

impl Pack {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::from_file(file)
    }

    /// A pack stored as `len` bytes at `offset` of an open file (an uncompressed APK asset);
    /// `name` stands for its path in errors and reports.
    pub fn open_range(file: &std::fs::File, name: &Path, offset: u64, len: u64) -> Result<Self> {
        Self::from_file(GgufFile::from_file_range(file, name, offset, len)?)
    }

    fn from_file(mut file: GgufFile) -> Result<Self> {
        // The catalog's arrays are moved out of the parsed file, not copied: parsing a pack costs
        // a small multiple of its size (docs/format.md, "Limits").
        let ids = file.take_str_array(K_IDS)?.ok_or_else(|| file.missing(K_IDS, "a string array"))?;
        let titles = file.take_str_array(K_TITLES)?.ok_or_else(|| file.missing(K_TITLES, "a string array"))?;
        let texts = file.take_str_array(K_TEXTS)?;
        let f = &file;
        if f.get("general.architecture").and_then(Value::as_str) != Some(PACK_ARCH) {
            return Err(bad_file(f, "not a delrec pack (general.architecture is not delrec-pack)"));
        }
        let version = f.req_u64(K_VERSION)?;
        if version != PACK_VERSION as u64 && version != PACK_VERSION_ADAPTER as u64 {
            return Err(bad_file(
                f,
                format!("pack version {version}; this build reads versions {PACK_VERSION} and {PACK_VERSION_ADAPTER}"),
            ));
        }
        let adapter = read_adapter(f)?;
        if adapter.is_some() != (version == PACK_VERSION_ADAPTER as u64) {
            return Err(bad_file(
                f,
                format!("a version-{PACK_VERSION_ADAPTER} pack names an adapter ({K_ADAPTER_FILE}), and only it does"),
            ));
        }
        let base = BaseIdentity::read_keys(f)?;
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
            let bytes = f.tensor_bytes(t).ok_or_else(|| bad_file(f, format!("{tname} is unreadable")))?;
            let values: Vec<f32> = match t.ty {
                TensorType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                _ => read_f32s(bytes).collect(),
            };
            // Non-finite values would turn every score into NaN.
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad_file(f, format!("soft prompt {name:?}: value {i} is {}", values[i])));
            }
            soft_prompts.push(SoftPrompt { name: name.clone(), n_virtual, ty: t.ty, values });
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
                "candidates" => (Piece::Candidates, Part::Candidates),
                "mask" => (Piece::Mask, Part::Mask),
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
        let kind = template::validate(&pieces).map_err(|e| bad_file(f, e.to_string()))?;
        if !is_encoder_decoder(&base.architecture) {
            template::check_for_decoder_only(&pieces).map_err(|e| bad_file(f, e.to_string()))?;
        }
        let (candidates_separator, candidates_separator_tokens) = if pieces.contains(&Piece::Candidates) {
            (f.req_str(K_CANDS_SEP)?.to_string(), tok_array(K_CANDS_SEP_TOK)?)
        } else {
            (String::new(), vec![])
        };
        let bos = match f.get(K_BOS).and_then(Value::as_i64) {
            None | Some(-1) => None,
            Some(t) if t >= 0 && t < n_vocab => Some(t as i32),
            Some(t) => return Err(bad_file(f, format!("{K_BOS}: token {t} outside the vocabulary"))),
        };
        let mut template = Template {
            text,
            parts,
            item_prefix: f.req_str(K_PREFIX)?.to_string(),
            history_separator: f.req_str(K_SEP)?.to_string(),
            separator_tokens: tok_array(K_SEP_TOK)?,
            candidates_separator,
            candidates_separator_tokens,
            kind,
            mask_token: None,
            bos,
            max_history: match f.get(K_MAX_HISTORY) {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad_file(f, format!("{K_MAX_HISTORY} must be a positive integer")))?,
                ),
            },
        };
        let scoring = ScoringMode::parse(f.req_str(K_SCORING)?).map_err(|e| bad_file(f, e.to_string()))?;
        let enc_dec = is_encoder_decoder(&base.architecture);
        check_scoring(scoring, kind, enc_dec).map_err(|e| bad_file(f, e.to_string()))?;
        // The encoder-decoder's mask token (T5: `<extra_id_0>`), in the encoder at `{mask}` and
        // after the decoder's start token.
        let mask_token = match f.get(K_MASK_TOK).map(|v| v.as_i64()) {
            None if enc_dec => return Err(bad_file(f, format!("{K_MASK_TOK} is missing (an encoder-decoder pack)"))),
            None => None,
            Some(Some(t)) if enc_dec && t >= 0 && t < n_vocab => Some(t as i32),
            Some(_) => {
                return Err(bad_file(f, format!("{K_MASK_TOK} must be a token id, in encoder-decoder packs only")))
            }
        };
        template.mask_token = mask_token;

        // Catalog.
        let n = ids.len();
        if n == 0 || titles.len() != n || texts.as_ref().is_some_and(|t| t.len() != n) || n >= u32::MAX as usize {
            return Err(bad_file(
                f,
                format!("catalog arrays disagree or are empty ({n} ids, {} titles)", titles.len()),
            ));
        }
        // Catalog indices sorted by id: 4 bytes per item, looked up by binary search.
        if let Some(i) = ids.iter().position(String::is_empty) {
            return Err(bad_file(f, format!("catalog id {i} is empty")));
        }
        let mut index: Vec<u32> = (0..n as u32).collect();
        index.sort_unstable_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
        if let Some(w) = index.windows(2).find(|w| ids[w[0] as usize] == ids[w[1] as usize]) {
            return Err(bad_file(f, format!("catalog id {:?} is repeated", ids[w[0] as usize])));
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
        let tokens: Vec<i32> = read_i32s(tok_bytes).collect();
        check_tokens(T_TOKENS, &tokens)?;
        let seq = seqm::read_sasrec(f, n, base.n_embd as usize)?;
        let fusion = seqm::read_fusion(f, n)?;
        let verbalizer = match scoring {
            ScoringMode::Verbalizer => Some(Verbalizer::read(f, n, n_vocab)?),
            _ => None,
        };

        Ok(Pack {
            verbalizer,
            seq,
            fusion,
            adapter,
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
            tokens,
            path: file.path().to_path_buf(),
            file_len: file.bytes().len() as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn n_items(&self) -> usize {
        self.ids.len()
    }

    pub fn item_index(&self, id: &str) -> Option<u32> {
        let at = self.index.binary_search_by(|&i| self.ids[i as usize].as_str().cmp(id)).ok()?;
        Some(self.index[at])
    }

    /// The item's id; `None` outside `0..n_items()`.
    pub fn item_id(&self, i: u32) -> Option<&str> {
        self.ids.get(i as usize).map(String::as_str)
    }

    pub fn item_title(&self, i: u32) -> Option<&str> {
        self.titles.get(i as usize).map(String::as_str)
    }

    /// The item's text, when the pack carries texts.
    pub fn item_text(&self, i: u32) -> Option<&str> {
        self.texts.as_ref().and_then(|t| t.get(i as usize)).map(String::as_str)
    }

    /// The item's pre-tokenized `item_prefix + title`.
    pub fn item_tokens(&self, i: u32) -> Option<&[i32]> {
        let a = *self.offsets.get(i as usize)? as usize;
        let b = *self.offsets.get(i as usize + 1)? as usize;
        self.tokens.get(a..b)
    }

    /// Position of a soft prompt by name.
    pub fn soft_prompt_index(&self, name: &str) -> Option<usize> {
        self.soft_prompts.iter().position(|s| s.name == name)
    }

    /// Names of the soft prompts, in pack order.
    pub fn soft_prompt_names(&self) -> Vec<String> {
        self.soft_prompts.iter().map(|s| s.name.clone()).collect()
    }

    /// The soft prompt's rows as f32 (`n_virtual × n_embd`, row-major), finite; `None` outside
    /// `0..soft_prompts.len()`.
    pub fn soft_prompt_values(&self, idx: usize) -> Option<&[f32]> {
        self.soft_prompts.get(idx).map(|s| s.values.as_slice())
    }
}

#[cfg(feature = "build")]
mod build;
#[cfg(feature = "build")]
pub use build::{CatalogItem, PackBuilder, VerbalizerSpec};
