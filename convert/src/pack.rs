//! `delrec-convert pack`: catalog + template + soft prompts → a recommender pack for a base model.
//!
//! Tokenization happens here, once: the pack stores token ids, so the device never tokenizes
//! catalog text. The HF tokenizer is used when given (and must be the model's own: its GGUF
//! metadata fingerprint is compared); otherwise llama.cpp tokenizes with the model's vocabulary.
//!
//! Template text is trusted and may name control tokens (`<|im_start|>`), which become the control
//! token; catalog titles, the item prefix and the history separator are data, and a title that
//! spells a control token is tokenized as plain text (no prompt injection through titles).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use delrec_format::gguf::{GgufFile, Value};
use delrec_format::identity::{file_sha256, BaseIdentity};
pub use delrec_format::pack::VerbalizerSpec;
use delrec_format::pack::{CatalogItem, Pack, PackBuilder, ScoringMode};
use delrec_format::seq::Fusion;
use delrec_format::template::{self, Piece};
use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};
use crate::llama::LoadedModel;
use crate::st::StSet;
use crate::vocab::{tokenizer_json_path, TokenizerMeta};

/// Which BOS token the pack puts before every prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BosChoice {
    /// What the model's tokenizer does (`tokenizer.ggml.add_bos_token`).
    Auto,
    None,
    Id(i32),
}

impl std::str::FromStr for BosChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(BosChoice::Auto),
            "none" => Ok(BosChoice::None),
            _ => s
                .parse::<i32>()
                .ok()
                .filter(|&i| i >= 0)
                .map(BosChoice::Id)
                .ok_or_else(|| format!("{s:?}: expected auto, none or a token id")),
        }
    }
}

pub struct PackOptions {
    pub models: Vec<PathBuf>,
    /// HF tokenizer: a directory with tokenizer.json, or the file.
    pub tokenizer: Option<PathBuf>,
    pub catalog: PathBuf,
    pub template: String,
    /// (name, source): a PEFT prompt-tuning directory, an OpenPrompt checkpoint or a tensor
    /// file, optionally `@A..B` for some of its rows ([`crate::soft`]).
    pub soft_prompts: Vec<(String, PathBuf)>,
    pub item_prefix: String,
    pub history_separator: String,
    /// Between the candidates a `{candidates}` slot lists.
    pub candidates_separator: String,
    /// Label words and handler, with verbalizer scoring (defaults: OpenPrompt's, DELRec's words).
    pub verbalizer: Option<VerbalizerSpec>,
    pub bos: BosChoice,
    /// The prompt takes only the latest this many history items (`--max-history`).
    pub max_history: Option<u32>,
    pub scoring: ScoringMode,
    pub soft_f16: bool,
    pub name: Option<String>,
    pub out: PathBuf,
    /// A sequential model for the cascade (`--seq-model`).
    pub seq: Option<SeqOptions>,
    /// Fusion weight and retrieval size stored in the pack (runtime defaults otherwise).
    pub fusion: Option<Fusion>,
    /// A LoRA adapter GGUF (`delrec-convert adapter`) the pack is served with (`--adapter`).
    pub adapter: Option<AdapterPack>,
}

/// `pack --adapter FILE [--adapter-scale S]`: the adapter is checked against every `--model`,
/// pinned by its sha256, and copied beside the pack when it is not there already.
pub struct AdapterPack {
    pub path: PathBuf,
    pub scale: f32,
}

/// `pack --seq-model PATH [--seq-items FILE] [--seq-f16] [--seq-q8-items]`.
pub struct SeqOptions {
    pub input: SeqInput,
    /// Store the weights as F16.
    pub f16: bool,
    /// Store the item table as Q8_0 (the runtime scans it without widening).
    pub q8_items: bool,
}

/// Where the sequential model comes from.
pub enum SeqInput {
    /// A checkpoint file and, when it does not list its items, the item list.
    File { path: PathBuf, items: Option<PathBuf> },
    /// Weights already in memory (tests, other importers); `desc` names them in errors.
    Loaded { source: Box<crate::seq::SeqSource>, desc: PathBuf },
}

#[derive(Debug)]
pub struct PackReport {
    pub out: PathBuf,
    pub n_items: usize,
    pub n_catalog_tokens: usize,
    pub soft_prompts: Vec<(String, usize)>,
    pub bos: Option<i32>,
    pub tokenizer: String,
    pub bytes: u64,
    pub seq: Option<crate::seq::SeqReport>,
    /// The adapter as the pack names it, and where it now lies beside the pack.
    pub adapter: Option<(delrec_format::pack::AdapterRef, PathBuf)>,
}

/// Parses `NAME=DIR`.
pub fn parse_soft_arg(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if template::valid_name(n) && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        Some((n, _)) if !template::valid_name(n) => Err(format!("soft prompt name {n:?}: use 1-64 of [A-Za-z0-9_.-]")),
        _ => Err(format!("{s:?}: expected NAME=PEFT_PROMPT_DIR")),
    }
}

/// Reads a catalog (`.csv` with a header naming `id`, `title` and optionally `text`, or `.jsonl`
/// with one `{"id", "title", "text"?}` object per line). Returns the items with their line numbers.
pub fn read_catalog(path: &Path) -> Result<Vec<(usize, CatalogItem)>> {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let items = match ext.as_deref() {
        Some("csv") => read_csv(path)?,
        Some("jsonl") | Some("ndjson") => read_jsonl(path)?,
        _ => return Err(ConvertError::Usage(format!("catalog {}: use a .csv or .jsonl file", path.display()))),
    };
    let cat = |line: usize, id: Option<&str>, reason: String| ConvertError::Catalog {
        path: path.to_path_buf(),
        line,
        id: id.map(str::to_string),
        reason,
    };
    if items.is_empty() {
        return Err(cat(1, None, "the catalog has no items".into()));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (line, it) in &items {
        if it.id.trim().is_empty() {
            return Err(cat(*line, None, "empty id".into()));
        }
        if it.title.trim().is_empty() {
            return Err(cat(*line, Some(&it.id), "empty title".into()));
        }
        if let Some(prev) = seen.insert(it.id.as_str(), *line) {
            return Err(cat(*line, Some(&it.id), format!("duplicate id (first on line {prev})")));
        }
    }
    Ok(items)
}

fn read_csv(path: &Path) -> Result<Vec<(usize, CatalogItem)>> {
    let cat = |line: usize, reason: String| ConvertError::Catalog { path: path.to_path_buf(), line, id: None, reason };
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_path(path).map_err(|e| {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ConvertError::io(path, io),
            other => cat(1, format!("{other:?}")),
        }
    })?;
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ConvertError::io(path, io),
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                cat(line, format!("{len} fields where the header has {expected_len}"))
            }
            csv::ErrorKind::Utf8 { .. } => cat(line, "not valid UTF-8".into()),
            other => cat(line, format!("{other:?}")),
        }
    };
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == name);
    let (Some(id_col), Some(title_col)) = (col("id"), col("title")) else {
        return Err(cat(
            1,
            format!(
                "the header must name the columns id and title (found: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    };
    let text_col = col("text");
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let field = |i: usize| rec.get(i).unwrap_or("").to_string();
        let text = text_col.map(field).filter(|t| !t.is_empty());
        out.push((line, CatalogItem { id: field(id_col), title: field(title_col), text }));
    }
    Ok(out)
}

fn read_jsonl(path: &Path) -> Result<Vec<(usize, CatalogItem)>> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let cat = |id: Option<String>, reason: String| ConvertError::Catalog {
            path: path.to_path_buf(),
            line: n,
            id,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: J = serde_json::from_str(line).map_err(|e| cat(None, format!("invalid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| cat(None, "not a JSON object".into()))?;
        let id = match obj.get("id") {
            Some(J::String(s)) => s.clone(),
            Some(J::Number(x)) if x.is_u64() || x.is_i64() => x.to_string(),
            Some(other) => return Err(cat(None, format!("id {other} is neither a string nor an integer"))),
            None => return Err(cat(None, "missing \"id\"".into())),
        };
        let title = match obj.get("title") {
            Some(J::String(s)) => s.clone(),
            Some(other) => return Err(cat(Some(id), format!("title {other} is not a string"))),
            None => return Err(cat(Some(id), "missing \"title\"".into())),
        };
        let text = match obj.get("text") {
            None | Some(J::Null) => None,
            Some(J::String(s)) => Some(s.clone()),
            Some(other) => return Err(cat(Some(id), format!("text {other} is not a string"))),
        };
        out.push((n, CatalogItem { id, title, text }));
    }
    Ok(out)
}

/// Loads a PEFT prompt-tuning adapter: (n_virtual, values row-major `n_virtual × n_embd`).
/// For PEFT's encoder-decoder task (`SEQ_2_SEQ_LM`) these are the rows PEFT puts before the
/// encoder input: a template that starts with the soft segment reproduces it.
pub fn load_soft_prompt(name: &str, dir: &Path, n_embd: usize) -> Result<(usize, Vec<f32>)> {
    let bad = |reason: String| ConvertError::SoftPrompt { path: dir.to_path_buf(), reason };
    let cfg_path = dir.join("adapter_config.json");
    if !cfg_path.is_file() {
        return Err(bad("no adapter_config.json (is this a PEFT adapter directory?)".into()));
    }
    let cfg = read_json(&cfg_path)?;
    let peft_type = cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
    if peft_type != "PROMPT_TUNING" {
        return Err(bad(format!(
            "peft_type is {peft_type:?}; only PROMPT_TUNING adapters (input soft prompts) are supported"
        )));
    }
    let n_virtual = cfg
        .get("num_virtual_tokens")
        .and_then(|v| v.as_u64())
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("num_virtual_tokens is missing or zero".into()))? as usize;
    // PEFT's SEQ_2_SEQ_LM prompt tuning (T5) sets 2 and stores 2 × num_virtual_tokens rows;
    // its forward and generate put only the first num_virtual_tokens before the encoder input
    // (the decoder's rows are never read by PROMPT_TUNING), so those are the prompt.
    let submodules = cfg.get("num_transformer_submodules").and_then(|v| v.as_u64()).unwrap_or(1);
    let task = cfg.get("task_type").and_then(|v| v.as_str()).unwrap_or("");
    let rows = match (submodules, task) {
        (1, _) => n_virtual,
        (2, "SEQ_2_SEQ_LM") => 2 * n_virtual,
        _ => {
            return Err(bad(format!(
                "num_transformer_submodules = {submodules} with task_type {task:?}: expected 1, or 2 for SEQ_2_SEQ_LM"
            )))
        }
    };
    if let Some(dim) = cfg.get("token_dim").and_then(|v| v.as_u64()) {
        if dim as usize != n_embd {
            return Err(ConvertError::SoftPromptWidth { name: name.into(), width: dim as usize, n_embd });
        }
    }
    let weights = dir.join("adapter_model.safetensors");
    if !weights.is_file() {
        return Err(bad("no adapter_model.safetensors (save the adapter with safe_serialization=True)".into()));
    }
    let set = StSet::open_file(&weights)?;
    let is_prompt = |n: &str| {
        n == "prompt_embeddings"
            || n.ends_with("prompt_encoder.default.embedding.weight")
            || n.ends_with("prompt_encoder.embedding.weight")
    };
    let mut found = None;
    for (n, t) in &set.tensors {
        if is_prompt(n) && found.is_none() {
            found = Some(t);
        } else {
            return Err(ConvertError::UnexpectedTensor {
                name: n.clone(),
                source_desc: weights.display().to_string(),
                arch: "PROMPT_TUNING adapter (prompt_embeddings)".into(),
            });
        }
    }
    let t = found.ok_or_else(|| ConvertError::MissingTensor {
        name: "prompt_embeddings".into(),
        source_desc: weights.display().to_string(),
    })?;
    t.float_dtype()?;
    if t.shape.len() != 2 {
        return Err(ConvertError::ShapeMismatch {
            name: t.name.clone(),
            expected: vec![rows, n_embd],
            found: t.shape.clone(),
        });
    }
    if t.shape[1] != n_embd {
        return Err(ConvertError::SoftPromptWidth { name: name.into(), width: t.shape[1], n_embd });
    }
    if t.shape[0] != rows {
        return Err(ConvertError::ShapeMismatch {
            name: t.name.clone(),
            expected: vec![rows, n_embd],
            found: t.shape.clone(),
        });
    }
    let mut values = t.to_f32()?;
    values.truncate(n_virtual * n_embd);
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("the prompt embeddings hold NaN or infinite values".into()));
    }
    Ok((n_virtual, values))
}

/// Pre-types for which llama.cpp adds BOS when the GGUF does not say.
const BOS_BY_DEFAULT: [&str; 10] =
    ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "tekken", "chameleon"];

/// The BOS token llama.cpp would add for this model, if any.
pub fn model_bos(model: &GgufFile) -> Result<Option<i32>> {
    let add = match model.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool) {
        Some(b) => b,
        None => {
            let kind = model.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
            let pre = model.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("");
            kind == "llama" || BOS_BY_DEFAULT.contains(&pre)
        }
    };
    if !add {
        return Ok(None);
    }
    let id = model.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).ok_or_else(|| {
        ConvertError::Usage(format!(
            "{} adds BOS but names no tokenizer.ggml.bos_token_id; pass --bos ID or --bos none",
            model.path().display()
        ))
    })?;
    i32::try_from(id).map(Some).map_err(|_| ConvertError::Usage("bos_token_id overflows".into()))
}

/// Explains how an HF tokenizer's metadata differs from a model's.
fn explain_mismatch(meta: &TokenizerMeta, model: &GgufFile) -> String {
    let m_kind = model.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
    if m_kind != "gpt2" {
        return format!("the model's tokenizer is {m_kind:?}, the HF tokenizer is byte-level BPE (gpt2)");
    }
    let m_pre = model.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("");
    if m_pre != meta.pre {
        return format!("pre-tokenizer {:?} vs the model's {m_pre:?}", meta.pre);
    }
    let empty: &[String] = &[];
    let m_tokens = model.get("tokenizer.ggml.tokens").and_then(Value::as_str_array).unwrap_or(empty);
    if let Some(i) = (0..m_tokens.len().min(meta.tokens.len())).find(|&i| m_tokens[i] != meta.tokens[i]) {
        return format!("token {i} is {:?} vs the model's {:?}", meta.tokens[i], m_tokens[i]);
    }
    let m_merges = model.get("tokenizer.ggml.merges").and_then(Value::as_str_array).unwrap_or(empty);
    if m_merges.len() != meta.merges.len() {
        return format!("{} merges vs the model's {}", meta.merges.len(), m_merges.len());
    }
    if let Some(i) = (0..m_merges.len()).find(|&i| m_merges[i] != meta.merges[i]) {
        return format!("merge {i} is {:?} vs the model's {:?}", meta.merges[i], m_merges[i]);
    }
    "the tokenizer fingerprints differ".into()
}

/// The tokenizer the pack is built with.
enum Tok {
    Hf(Box<tokenizers::Tokenizer>),
    Gguf(LoadedModel),
}

impl Tok {
    fn encode(&mut self, s: &str, parse_special: bool) -> Result<Vec<i32>> {
        match self {
            Tok::Hf(t) => {
                t.set_encode_special_tokens(!parse_special);
                let enc = t.encode(s, false).map_err(|e| ConvertError::Tokenize(format!("{s:?}: {e}")))?;
                enc.get_ids()
                    .iter()
                    .map(|&id| {
                        i32::try_from(id).map_err(|_| ConvertError::Tokenize(format!("token id {id} overflows")))
                    })
                    .collect()
            }
            Tok::Gguf(m) => m.tokenize(s, parse_special),
        }
    }
}

/// T5's mask (first sentinel) token.
pub const T5_MASK: &str = "<extra_id_0>";

pub fn build_pack(opts: &PackOptions) -> Result<PackReport> {
    let first = opts.models.first().ok_or_else(|| ConvertError::Usage("give at least one --model".into()))?;
    let model = GgufFile::open(first)?;
    if model.get("general.architecture").and_then(Value::as_str) == Some(delrec_format::pack::PACK_ARCH) {
        return Err(ConvertError::Usage(format!("{} is a pack, not a model", first.display())));
    }
    let base = BaseIdentity::of_model(&model)?;
    let mut shas = vec![file_sha256(first)?];
    for other in &opts.models[1..] {
        let f = GgufFile::open(other)?;
        BaseIdentity::of_model(&f)?
            .check_matches(&base)
            .map_err(|e| ConvertError::ModelMismatch(format!("{} vs {}: {e}", other.display(), first.display())))?;
        shas.push(file_sha256(other)?);
    }
    let adapter = match &opts.adapter {
        None => None,
        Some(a) => Some(check_pack_adapter(a, &opts.models, &model, &base)?),
    };
    let pieces = template::parse(&opts.template)?;
    let template_texts: HashSet<String> =
        pieces.iter().filter_map(|p| if let Piece::Text(t) = p { Some(t.clone()) } else { None }).collect();

    // Validate every input before tokenizing anything.
    let items = read_catalog(&opts.catalog)?;
    let mut soft = Vec::new();
    for (name, dir) in &opts.soft_prompts {
        if soft.iter().any(|(n, _, _): &(String, usize, Vec<f32>)| n == name) {
            return Err(ConvertError::Usage(format!("soft prompt {name:?} given twice")));
        }
        // A path that exists is taken as it is; otherwise a trailing `@A..B` selects rows.
        let src = match dir.to_str() {
            Some(s) if !dir.exists() => crate::soft::SoftSource::parse(s).map_err(ConvertError::Usage)?,
            _ => crate::soft::SoftSource { path: dir.clone(), rows: None },
        };
        let r = crate::soft::load(name, &src, base.n_embd as usize)?;
        soft.push((name.clone(), r.n_virtual, r.values));
    }
    let n_embd = base.n_embd as usize;
    let seq = match &opts.seq {
        Some(so) => {
            let ids: Vec<String> = items.iter().map(|(_, it)| it.id.clone()).collect();
            let imported = match &so.input {
                SeqInput::File { path, items } => {
                    crate::seq::for_catalog(&crate::seq::load(path, items.as_deref())?, &ids, n_embd, path)?
                }
                SeqInput::Loaded { source, desc } => crate::seq::for_catalog(source, &ids, n_embd, desc)?,
            };
            let mut imported = imported;
            if so.q8_items {
                let desc = match &so.input {
                    SeqInput::File { path, .. } => path.as_path(),
                    SeqInput::Loaded { desc, .. } => desc.as_path(),
                };
                crate::seq::quantize_items(&mut imported.0, desc)?;
            }
            Some((imported, so.f16))
        }
        None => None,
    };
    let bos = match opts.bos {
        BosChoice::Auto => model_bos(&model)?,
        BosChoice::None => None,
        BosChoice::Id(i) => Some(i),
    };

    let (mut tok, tok_desc) = match &opts.tokenizer {
        Some(p) => {
            let tj = tokenizer_json_path(p)?;
            if model.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("t5") {
                // A SentencePiece Unigram vocabulary (T5): the same tokens, or refused.
                let meta = crate::ugm::UgmMeta::from_path(&tj, base.n_vocab as usize)?;
                if meta.fingerprint() != base.tokenizer_fingerprint {
                    return Err(ConvertError::TokenizerMismatch {
                        path: tj.clone(),
                        reason: "its Unigram vocabulary is not the model's (tokens differ)".into(),
                    });
                }
            } else {
                let meta = TokenizerMeta::from_path(&tj, Some(base.n_vocab as usize), None)?;
                if meta.fingerprint() != base.tokenizer_fingerprint {
                    return Err(ConvertError::TokenizerMismatch {
                        path: tj.clone(),
                        reason: explain_mismatch(&meta, &model),
                    });
                }
            }
            let t = tokenizers::Tokenizer::from_file(&tj).map_err(|e| ConvertError::UnsupportedTokenizer {
                path: tj.clone(),
                reason: format!("the tokenizers library cannot load it: {e}"),
            })?;
            (Tok::Hf(Box::new(t)), format!("HF {}", tj.display()))
        }
        None => {
            let m = LoadedModel::load(first, true)?;
            if m.n_vocab() != base.n_vocab as usize {
                return Err(ConvertError::LlamaLoad {
                    path: first.clone(),
                    reason: format!("llama.cpp sees {} tokens, the metadata {}", m.n_vocab(), base.n_vocab),
                });
            }
            (Tok::Gguf(m), format!("llama.cpp vocabulary of {}", first.display()))
        }
    };

    // An encoder-decoder model reads its answer after the mask: T5's first sentinel, as
    // OpenPrompt's T5 wrapper puts it in the encoder and after the decoder's start token.
    let mask_token = if delrec_format::pack::is_encoder_decoder(&base.architecture) {
        match tok.encode(T5_MASK, true)?.as_slice() {
            [t] => Some(*t),
            other => {
                return Err(ConvertError::Usage(format!(
                    "the tokenizer has no single {T5_MASK} token (it gives {other:?}): an encoder-decoder pack needs it"
                )))
            }
        }
    } else {
        None
    };
    let mut b = PackBuilder::new(base, &opts.template);
    b.mask_token = mask_token;
    b.model_sha256 = shas;
    b.item_prefix = opts.item_prefix.clone();
    b.history_separator = opts.history_separator.clone();
    b.candidates_separator = opts.candidates_separator.clone();
    b.verbalizer = match (opts.scoring, &opts.verbalizer) {
        (ScoringMode::Verbalizer, v) => Some(v.clone().unwrap_or_default()),
        (_, None) => None,
        (_, Some(_)) => {
            return Err(ConvertError::Usage("verbalizer options need --scoring verbalizer".into()));
        }
    };
    b.bos = bos;
    b.max_history = opts.max_history;
    b.scoring = opts.scoring;
    b.name = opts.name.clone();
    b.fusion = opts.fusion;
    b.adapter = adapter.clone();
    let seq_report = seq.as_ref().map(|((_, r), _)| r.clone());
    b.seq = seq.map(|((m, _), f16)| (m, f16));
    let mut soft_report = Vec::new();
    for (name, n, v) in soft {
        b.add_soft_prompt(&name, n, v, opts.soft_f16)?;
        soft_report.push((name, n));
    }
    let catalog_path = opts.catalog.clone();
    let mut title_line: HashMap<String, usize> = HashMap::new();
    for (line, it) in items {
        title_line.entry(format!("{}{}", opts.item_prefix, it.title)).or_insert(line);
        b.add_item(it);
    }
    let mut n_catalog_tokens = 0usize;
    let mut failure: Option<ConvertError> = None;
    let mut tokenize = |s: &str| -> delrec_format::Result<Vec<i32>> {
        let special = template_texts.contains(s);
        match tok.encode(s, special) {
            Ok(t) => {
                if title_line.contains_key(s) {
                    n_catalog_tokens += t.len();
                }
                Ok(t)
            }
            Err(e) => {
                let msg = e.to_string();
                failure = Some(match title_line.get(s) {
                    Some(&line) => {
                        ConvertError::Catalog { path: catalog_path.clone(), line, id: None, reason: msg.clone() }
                    }
                    None => e,
                });
                Err(delrec_format::Error::InvalidInput(msg))
            }
        }
    };
    let r = b.write(&opts.out, &mut tokenize);
    if let Err(e) = r {
        return Err(failure.take().unwrap_or(ConvertError::Format(e)));
    }
    crate::model::make_readable(&opts.out)?;
    // The adapter goes beside the pack (the runtime looks for it there).
    let adapter_report = match (&opts.adapter, adapter) {
        (Some(a), Some(r)) => match place_adapter(&a.path, &r, &opts.out) {
            Ok(p) => Some((r, p)),
            Err(e) => {
                let _ = std::fs::remove_file(&opts.out);
                return Err(e);
            }
        },
        _ => None,
    };
    // Read it back: the runtime's own validation is the final check.
    let pack = Pack::open(&opts.out)?;
    Ok(PackReport {
        out: opts.out.clone(),
        n_items: pack.n_items(),
        n_catalog_tokens,
        soft_prompts: soft_report,
        bos,
        tokenizer: tok_desc,
        bytes: pack.file_len(),
        seq: seq_report,
        adapter: adapter_report,
    })
}

/// The adapter checked against every model the pack is for (llama.cpp's view of them is the
/// same tensor table); → what the pack will name.
fn check_pack_adapter(
    a: &AdapterPack,
    models: &[PathBuf],
    first: &GgufFile,
    base: &BaseIdentity,
) -> Result<delrec_format::pack::AdapterRef> {
    use delrec_format::adapter::{check_adapter, BaseTensors};
    let file = a
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| delrec_format::pack::valid_adapter_file(n))
        .ok_or_else(|| {
            ConvertError::Usage(format!("--adapter {}: not a file name the pack can name", a.path.display()))
        })?
        .to_string();
    if !delrec_format::pack::valid_adapter_scale(a.scale) {
        return Err(ConvertError::Usage(format!("--adapter-scale {}: must be in (0, 16]", a.scale)));
    }
    let g = GgufFile::open(&a.path)?;
    check_adapter(&g, &BaseTensors::of_model(first)?, base)?;
    for other in models.iter().skip(1) {
        let m = GgufFile::open(other)?;
        check_adapter(&g, &BaseTensors::of_model(&m)?, base)?;
    }
    Ok(delrec_format::pack::AdapterRef {
        file,
        sha256: delrec_format::identity::bytes_sha256(g.bytes()),
        scale: a.scale,
    })
}

/// Copies the adapter into the pack's directory unless it is there; an existing file of that
/// name with other bytes is an error (other packs may pin it).
fn place_adapter(src: &Path, r: &delrec_format::pack::AdapterRef, pack_out: &Path) -> Result<PathBuf> {
    let dir = pack_out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dst = dir.join(&r.file);
    if dst.exists() {
        let sum = file_sha256(&dst)?;
        if sum == r.sha256 {
            return Ok(dst);
        }
        return Err(ConvertError::Usage(format!(
            "{} exists with other bytes (sha256 {sum}); the pack pins {} — remove it or rename the adapter",
            dst.display(),
            r.sha256
        )));
    }
    let io = |e: std::io::Error| ConvertError::Format(delrec_format::Error::Io { path: dst.clone(), source: e });
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::fs::copy(src, tmp.path()).map_err(io)?;
    tmp.persist(&dst).map_err(|e| io(e.error))?;
    crate::model::make_readable(&dst)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_csv_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.csv", "id,title,text\nm1,\"Good, the Bad (1966)\",Western\nm2,Alien (1979),\n");
        let items = read_catalog(&p).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].1.title, "Good, the Bad (1966)");
        assert_eq!(items[0].1.text.as_deref(), Some("Western"));
        assert_eq!((items[1].0, items[1].1.text.clone()), (3, None));
        let p = write(
            d.path(),
            "c.jsonl",
            "{\"id\": 7, \"title\": \"Heat\"}\n\n{\"id\": \"x\", \"title\": \"Up\", \"text\": null}\n",
        );
        let items = read_catalog(&p).unwrap();
        assert_eq!((items[0].1.id.as_str(), items[1].0), ("7", 3));
    }

    #[test]
    fn bad_catalogs_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("dup.csv", "id,title\na,A\nb,B\na,C\n", 4, "duplicate"),
            ("empty.csv", "id,title\na,A\nb,  \n", 3, "empty title"),
            ("noid.csv", "id,title\n,A\n", 2, "empty id"),
            ("cols.csv", "name,title\na,A\n", 1, "id and title"),
            ("ragged.csv", "id,title\na,A,extra\n", 2, "fields"),
            ("dup.jsonl", "{\"id\":\"a\",\"title\":\"A\"}\n{\"id\":\"a\",\"title\":\"B\"}\n", 2, "duplicate"),
            ("bad.jsonl", "{\"id\":\"a\",\"title\":\"A\"}\nnot json\n", 2, "invalid JSON"),
            ("notitle.jsonl", "{\"id\":\"a\"}\n", 1, "title"),
            ("emptytitle.jsonl", "{\"id\":\"a\",\"title\":\"\"}\n", 1, "empty title"),
        ];
        for (name, body, want_line, want) in cases {
            let p = write(d.path(), name, body);
            match read_catalog(&p) {
                Err(ConvertError::Catalog { line, reason, .. }) => {
                    assert_eq!(line, want_line, "{name}: {reason}");
                    assert!(reason.contains(want), "{name}: {reason}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn parses_flags() {
        assert_eq!("auto".parse::<BosChoice>(), Ok(BosChoice::Auto));
        assert_eq!("5".parse::<BosChoice>(), Ok(BosChoice::Id(5)));
        assert!("-1".parse::<BosChoice>().is_err());
        assert_eq!(parse_soft_arg("user=/a/b").unwrap().0, "user");
        assert!(parse_soft_arg("bad name=/a").is_err());
        assert!(parse_soft_arg("noequals").is_err());
    }
}
