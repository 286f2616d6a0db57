//! PEFT LoRA and AdaLoRA adapters, reduced to one (A, B, rank, scale) per adapted weight whose
//! delta is exactly what PEFT's forward adds: `scale · B·A`. They are merged into the weights at
//! conversion time ([`crate::model`], [`crate::merge`]) or written as a llama.cpp run-time
//! adapter ([`crate::adapter`]). Adapted weights are named as in the HF checkpoint: llama/qwen2
//! (`model.layers.N.self_attn.q_proj.weight`) or T5 (`encoder.block.N.layer.0.SelfAttention.q.weight`,
//! the decoder's `layer.1.EncDecAttention.*` and `DenseReluDense.{wi_0,wi_1,wi,wo}` included); which
//! of them a given base has is checked by whoever merges or writes the adapter.
//!
//! **LoRA** (`tuners/lora/layer.py`, `update_layer`): scale = alpha / r, or alpha / √r with
//! rsLoRA. `rank_pattern` / `alpha_pattern` give a module its own r / alpha: PEFT
//! (`tuners/lora/model.py` `_create_and_replace` → `utils/other.py` `get_pattern_key`, since PEFT
//! 0.15) takes the first key, in the dict's order, with `re.match(rf"(.*\.)?({key})$", name)`,
//! `name` being the module's full name in the base model (`model.layers.0.self_attn.q_proj`).
//! JSON objects are read here without their key order, so when keys with different values match
//! one module the adapter is refused as ambiguous instead of guessed.
//!
//! **AdaLoRA** (`tuners/adalora/layer.py`, `SVDLinear.forward`): the delta is
//! `B·(A ⊙ E) · scaling / (ranknum + 1e-5)`, with `E` the `[r, 1]` singular values (folded into A
//! here, row by row) and `scaling = lora_alpha if lora_alpha > 0 else r`. The saved tensors are
//! `…q_proj.lora_A` / `lora_B` / `lora_E` (ParameterDicts: no `.weight`). `ranknum` is not saved
//! (its key has no `lora_`, and `AdaLoraModel._get_adapter_state_dict` drops it: "always set to
//! float(r)"). On load PEFT builds every module at `init_r` (`_create_and_replace` passes
//! `lora_config.init_r`; `update_layer` fills ranknum with it), then
//! `resize_modules_by_rank_pattern` shrinks each module to its `rank_pattern` True count:
//! `update_layer(rank)` sets `scaling` from the new rank, but ranknum is copied back from the
//! module's previous ranknum ("the scaling is exactly as the previous"), i.e. `init_r`: the value
//! training used, since training only masks E and never resizes. So ranknum = `init_r`, not the
//! pruned rank; a saved `ranknum` tensor (whole-model state dicts carry it) takes precedence.
//! Saved tensors are the pattern's True rows (`resize_state_dict_by_rank_pattern`); rank-0
//! modules add nothing and are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};
use crate::st::{StSet, StTensor};

/// Modules a LoRA may target (the linear layers of a llama/qwen2 block), with llama.cpp's name
/// of the weight (`blk.N.<stem>.weight`).
const MODULES: [(&str, &str, &str); 7] = [
    ("self_attn", "q_proj", "attn_q"),
    ("self_attn", "k_proj", "attn_k"),
    ("self_attn", "v_proj", "attn_v"),
    ("self_attn", "o_proj", "attn_output"),
    ("mlp", "gate_proj", "ffn_gate"),
    ("mlp", "up_proj", "ffn_up"),
    ("mlp", "down_proj", "ffn_down"),
];

/// PEFT's default `init_r` (`AdaLoraConfig`), used when the config leaves it out, as PEFT does.
const ADALORA_DEFAULT_INIT_R: usize = 12;

/// LoraConfig settings that change what the adapter computes (or which weights it touches) in
/// ways a plain `scale · B·A` per linear layer cannot express; refused when set.
const REFUSED_SETTINGS: [(&str, &str); 7] = [
    ("lora_bias", "a trained bias on lora_B (lora_bias = true) is not supported"),
    ("use_qalora", "QALoRA (use_qalora = true) pools the input first; not supported"),
    ("layer_replication", "layer_replication (layers shared between positions) is not supported"),
    (
        "alora_invocation_tokens",
        "activated LoRA (alora_invocation_tokens) applies only after its tokens; not supported",
    ),
    ("target_parameters", "LoRA on raw parameters (target_parameters) is not supported"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices) change embedding rows; not supported"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora) is not supported"),
];

/// The linear layers of a T5 block a LoRA may target: (side, sub-layer, group) → llama.cpp's
/// stem prefix. The stacks differ only in where the FFN sits (after the cross attention in the
/// decoder); the weight itself is `{enc,dec}.blk.N.<prefix><stem>.weight` (`crate::t5`).
const T5_GROUPS: [(&str, &str, &str, &str, &str); 5] = [
    ("encoder", "enc", "0", "SelfAttention", "attn_"),
    ("encoder", "enc", "1", "DenseReluDense", "ffn_"),
    ("decoder", "dec", "0", "SelfAttention", "attn_"),
    ("decoder", "dec", "1", "EncDecAttention", "cross_attn_"),
    ("decoder", "dec", "2", "DenseReluDense", "ffn_"),
];

/// T5 module → stem: q/k/v/o of an attention, wi_0/wi_1 (gated GELU) or wi (ReLU) and wo of an FFN.
const T5_MODULES: [(bool, &str, &str); 8] = [
    (false, "q", "q"),
    (false, "k", "k"),
    (false, "v", "v"),
    (false, "o", "o"),
    (true, "wi_0", "gate"),
    (true, "wi_1", "up"),
    (true, "wi", "up"),
    (true, "wo", "down"),
];

/// Where an adaptable HF weight goes in llama.cpp's GGUF.
struct Site {
    /// `blk.3.attn_q.weight`, `dec.blk.1.cross_attn_q.weight`.
    gguf: String,
    /// The module's own name (`q_proj`, `q`, `wi_0`): what PEFT's `target_modules` lists.
    module: &'static str,
    /// The tensor's stem without block prefix (`attn_q`, `cross_attn_v`, `ffn_down`).
    stem: String,
}

/// A layer index written as Python writes it (no sign, no leading zero), so that one HF name
/// maps to one GGUF name.
fn layer_index(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().filter(|n| n.to_string() == s)
}

/// The site of an adaptable HF weight: llama/qwen2 `model.layers.N.GROUP.MODULE.weight`, or
/// T5 `{encoder,decoder}.block.N.layer.L.GROUP.MODULE.weight`.
fn split_hf(name: &str) -> Option<Site> {
    let tail = name.strip_suffix(".weight")?;
    if let Some(rest) = tail.strip_prefix("model.layers.") {
        let (layer, module_path) = rest.split_once('.')?;
        let layer = layer_index(layer)?;
        let (group, module) = module_path.split_once('.')?;
        let &(_, m, stem) = MODULES.iter().find(|(g, m, _)| *g == group && *m == module)?;
        return Some(Site { gguf: format!("blk.{layer}.{stem}.weight"), module: m, stem: stem.into() });
    }
    let (side, rest) = tail.split_once(".block.")?;
    let (layer, rest) = rest.split_once(".layer.")?;
    let layer = layer_index(layer)?;
    let (sub, rest) = rest.split_once('.')?;
    let (group, module) = rest.split_once('.')?;
    let &(_, gside, _, _, prefix) = T5_GROUPS.iter().find(|(s, _, l, g, _)| *s == side && *l == sub && *g == group)?;
    let ffn = prefix == "ffn_";
    let &(_, m, short) = T5_MODULES.iter().find(|(f, m, _)| *f == ffn && *m == module)?;
    let stem = format!("{prefix}{short}");
    Some(Site { gguf: format!("{gside}.blk.{layer}.{stem}.weight"), module: m, stem })
}

/// The llama.cpp GGUF name of an adaptable HF weight:
/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`,
/// `decoder.block.1.layer.1.EncDecAttention.v.weight` → `dec.blk.1.cross_attn_v.weight`.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    split_hf(hf).map(|s| s.gguf)
}

/// The module of an adaptable HF weight (`q_proj`, `down_proj`, `q`, `wi_0`, ...).
pub fn module_name(hf: &str) -> Option<&'static str> {
    split_hf(hf).map(|s| s.module)
}

/// llama.cpp's stem of an adaptable HF weight (`attn_q`, `ffn_down`, `cross_attn_o`, ...).
pub fn gguf_stem(hf: &str) -> Option<String> {
    split_hf(hf).map(|s| s.stem)
}

/// The PEFT method an adapter was trained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    AdaLora,
}

impl PeftType {
    /// PEFT's name (`peft_type` in adapter_config.json).
    pub fn name(self) -> &'static str {
        match self {
            PeftType::Lora => "LORA",
            PeftType::AdaLora => "ADALORA",
        }
    }
}

/// One adapted weight's factors and scale.
pub struct LoraPair {
    /// `[r, in]`
    pub a: StTensor,
    /// `[out, r]`
    pub b: StTensor,
    /// AdaLoRA's singular values `[r, 1]`, folded into A by [`factors`](Self::factors).
    pub e: Option<StTensor>,
    pub r: usize,
    /// The pair adds `scale · B·A` (A with E folded in), as PEFT's forward does.
    pub scale: f32,
}

/// A loaded adapter: its pairs keyed by the base weight they adapt.
pub struct Lora {
    pub path: PathBuf,
    pub peft_type: PeftType,
    /// `lora_alpha` of adapter_config.json.
    pub lora_alpha: f64,
    /// An alpha with which llama.cpp's own run-time scale, alpha / (the pair's rank), is every
    /// pair's scale: plain LoRA without rsLoRA, no alpha_pattern value other than lora_alpha, and
    /// lora_alpha > 0 (llama.cpp reads alpha 0 as "scale 1"; the runtime's adapter check takes
    /// no negative alpha).
    pub uniform_alpha: Option<f32>,
    /// Keyed by the base weight's HF name (`model.layers.0.self_attn.q_proj.weight`).
    pub pairs: BTreeMap<String, LoraPair>,
    /// AdaLoRA modules pruned to rank 0 (HF weight names): they add nothing.
    pub pruned: Vec<String>,
}

impl LoraPair {
    /// (A `[r, in]` with AdaLoRA's E folded in row by row, B `[out, r]`) as f32.
    pub fn factors(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut a = self.a.to_f32()?;
        if let Some(e) = &self.e {
            let e = e.to_f32()?;
            let inp = self.a.shape.get(1).copied().unwrap_or(0);
            if inp > 0 {
                for (row, s) in a.chunks_exact_mut(inp).zip(&e) {
                    row.iter_mut().for_each(|x| *x *= s);
                }
            }
        }
        Ok((a, self.b.to_f32()?))
    }
}

/// `w += scale · B·A` on rows of a row-major weight: `w` is `[rows, inp]`, `b` the matching
/// `[rows, r]` rows of B, `a` is `[r, inp]`. Callers check the lengths; a mismatch adds nothing
/// past the shortest input (no panic).
pub fn add_low_rank(w: &mut [f32], inp: usize, a: &[f32], b: &[f32], r: usize, scale: f32) {
    if inp == 0 || r == 0 {
        return;
    }
    for (row, brow) in w.chunks_exact_mut(inp).zip(b.chunks_exact(r)) {
        for (&bk, ak) in brow.iter().zip(a.chunks_exact(inp)) {
            let coef = scale * bk;
            if coef == 0.0 {
                continue;
            }
            for (x, a) in row.iter_mut().zip(ak) {
                *x += coef * a;
            }
        }
    }
}

/// Which tensor of a pair a file tensor is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    A,
    B,
    E,
    Ranknum,
}

#[derive(Default)]
struct Slot {
    a: Option<StTensor>,
    b: Option<StTensor>,
    e: Option<StTensor>,
    ranknum: Option<StTensor>,
}

/// A `rank_pattern` / `alpha_pattern` of a LoRA: (key, compiled key, value) in no known order.
type Patterns<T> = Vec<(String, pattern::Pattern, T)>;

/// The ranks and scales a config gives each module.
enum Shape {
    Lora {
        r: usize,
        rslora: bool,
        ranks: Patterns<usize>,
        alphas: Patterns<f64>,
    },
    /// AdaLoRA: `init_r`, and the `rank_pattern` True counts by HF weight name.
    AdaLora {
        init_r: usize,
        kept: Option<BTreeMap<String, usize>>,
    },
}

/// Whether a setting is switched on (present and not null/false/empty/0).
fn truthy(v: &J) -> bool {
    match v {
        J::Null => false,
        J::Bool(b) => *b,
        J::Array(a) => !a.is_empty(),
        J::Object(o) => !o.is_empty(),
        J::String(s) => !s.is_empty(),
        J::Number(n) => n.as_f64() != Some(0.0),
    }
}

fn parse_patterns<T>(
    dir: &Path,
    cfg: &J,
    setting: &str,
    value: impl Fn(&J) -> Option<T>,
    want: &str,
) -> Result<Patterns<T>> {
    let err = |key: &str, reason: String| ConvertError::LoraPattern {
        path: dir.to_path_buf(),
        setting: setting.into(),
        key: key.into(),
        reason,
    };
    let obj = match cfg.get(setting) {
        None | Some(J::Null) => return Ok(Vec::new()),
        Some(J::Object(o)) => o,
        Some(other) => return Err(err("", format!("{other} is not a dict"))),
    };
    obj.iter()
        .map(|(k, v)| {
            let value = value(v).ok_or_else(|| err(k, format!("value {v} is not {want}")))?;
            let pat = pattern::Pattern::parse(k)
                .map_err(|e| err(k, format!("{e} (this converter reads a subset of Python regex syntax)")))?;
            Ok((k.clone(), pat, value))
        })
        .collect()
}

/// The value PEFT's `get_pattern_key` gives `module`, with the key that gave it.
fn lookup<'p, T: Copy + PartialEq + std::fmt::Display>(
    dir: &Path,
    setting: &str,
    patterns: &'p Patterns<T>,
    module: &str,
) -> Result<Option<(&'p str, T)>> {
    let mut hits = patterns.iter().filter(|(_, p, _)| p.matches_module(module));
    let Some((key, _, v)) = hits.next() else { return Ok(None) };
    if let Some((other, _, w)) = hits.find(|(_, _, w)| w != v) {
        return Err(ConvertError::LoraPattern {
            path: dir.to_path_buf(),
            setting: setting.into(),
            key: key.clone(),
            reason: format!(
                "it gives {module} {v}, and key {other:?} gives it {w}; PEFT takes the first key in the file's order, \
                 which this reader does not keep: make the keys disjoint"
            ),
        });
    }
    Ok(Some((key.as_str(), *v)))
}

/// AdaLoRA's `rank_pattern`: for each module (key `<module>.lora_E`, possibly followed by the
/// adapter name), `init_r` booleans; the True count is the rank its tensors were saved at.
fn adalora_kept(dir: &Path, cfg: &J, init_r: usize) -> Result<Option<BTreeMap<String, usize>>> {
    let err = |key: &str, reason: String| ConvertError::LoraPattern {
        path: dir.to_path_buf(),
        setting: "rank_pattern".into(),
        key: key.into(),
        reason,
    };
    let obj = match cfg.get("rank_pattern") {
        None | Some(J::Null) => return Ok(None),
        Some(J::Object(o)) => o,
        Some(other) => return Err(err("", format!("{other} is not a dict of lists"))),
    };
    let mut kept = BTreeMap::new();
    for (key, v) in obj {
        let module = key
            .strip_suffix(".lora_E")
            .or_else(|| key.rsplit_once('.').and_then(|(head, _)| head.strip_suffix(".lora_E")))
            .map(|m| format!("{m}.weight"))
            .filter(|w| split_hf(w).is_some())
            .ok_or_else(|| err(key, "names no adaptable module (MODULE.lora_E expected)".into()))?;
        let flags: Vec<bool> = v
            .as_array()
            .and_then(|a| a.iter().map(J::as_bool).collect())
            .ok_or_else(|| err(key, "is not a list of booleans".into()))?;
        if flags.len() != init_r {
            return Err(err(key, format!("has {} entries, but init_r is {init_r}", flags.len())));
        }
        if kept.insert(module.clone(), flags.iter().filter(|&&f| f).count()).is_some() {
            return Err(err(key, format!("{module} is listed twice")));
        }
    }
    Ok(Some(kept))
}

/// A LoRA on the embeddings or the output head: the part of the model it adapts.
fn embedding_or_head(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("base_model.model.")?;
    if !rest.contains(".lora_") {
        return None;
    }
    if rest.starts_with("model.embed_tokens.") {
        Some("the token embeddings (embed_tokens)")
    } else if ["shared.", "encoder.embed_tokens.", "decoder.embed_tokens."].iter().any(|p| rest.starts_with(p)) {
        Some("T5's shared token embeddings (shared)")
    } else if rest.starts_with("lm_head.") {
        Some("the output head (lm_head)")
    } else {
        None
    }
}

fn non_finite(t: &StTensor, desc: &str) -> Result<()> {
    let count = t.to_f32()?.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(ConvertError::NonFinite { name: t.name.clone(), source_desc: desc.to_string(), count });
    }
    Ok(())
}

/// What checking one pair needs besides its tensors.
struct Ctx<'a> {
    dir: &'a Path,
    desc: &'a str,
    lora_alpha: f64,
}

impl Shape {
    /// One module's pair, checked (rank against the config, shapes, finite values), rank 0
    /// included; and whether its alpha is lora_alpha.
    fn pair(&self, cx: &Ctx, base: &str, slot: Slot) -> Result<(LoraPair, bool)> {
        let missing = |what: &str| ConvertError::MissingTensor {
            name: format!("{what} for {base}"),
            source_desc: cx.desc.into(),
        };
        let a = slot.a.ok_or_else(|| missing("lora_A"))?;
        let b = slot.b.ok_or_else(|| missing("lora_B"))?;
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(ConvertError::ShapeMismatch {
                name: format!("{base} lora_A/lora_B (2-D each)"),
                expected: vec![2, 2],
                found: [a.shape.clone(), b.shape.clone()].concat(),
            });
        }
        let module = base.strip_suffix(".weight").unwrap_or(base);
        // The rank the config gives this module, and where it says so.
        let (r, said) = match self {
            Shape::Lora { r, ranks, .. } => match lookup(cx.dir, "rank_pattern", ranks, module)? {
                Some((key, pr)) => (pr, format!(" (rank_pattern key {key:?})")),
                None => (*r, String::new()),
            },
            Shape::AdaLora { init_r, kept } => match kept.as_ref().and_then(|k| k.get(base)) {
                Some(&k) => (k, format!(" (rank_pattern keeps {k} of init_r {init_r})")),
                None => (*init_r, " (init_r)".into()),
            },
        };
        for (half, found) in [("lora_A", a.shape[0]), ("lora_B", b.shape[1])] {
            if found != r {
                let name = format!("{half} of {base}{said}");
                return Err(ConvertError::LoraRank { path: cx.dir.to_path_buf(), name, r, found });
            }
        }
        non_finite(&a, cx.desc)?;
        non_finite(&b, cx.desc)?;
        let (e, scale, default_alpha) = match self {
            Shape::Lora { rslora, alphas, .. } => {
                let alpha = lookup(cx.dir, "alpha_pattern", alphas, module)?.map_or(cx.lora_alpha, |(_, a)| a);
                let denom = if *rslora { (r as f64).sqrt() } else { r as f64 };
                (None, (alpha / denom) as f32, alpha == cx.lora_alpha)
            }
            Shape::AdaLora { init_r, .. } => {
                let e = slot.e.ok_or_else(|| missing("lora_E"))?;
                if e.shape != [r, 1] {
                    return Err(ConvertError::ShapeMismatch {
                        name: e.name.clone(),
                        expected: vec![r, 1],
                        found: e.shape.clone(),
                    });
                }
                non_finite(&e, cx.desc)?;
                let ranknum = match &slot.ranknum {
                    None => *init_r as f64,
                    Some(t) => match t.to_f32()?[..] {
                        [x] if x.is_finite() && x > 0.0 => x as f64,
                        [x] => {
                            return Err(ConvertError::Lora {
                                path: cx.dir.to_path_buf(),
                                reason: format!("{} is {x}; ranknum must be a positive number", t.name),
                            })
                        }
                        _ => {
                            return Err(ConvertError::ShapeMismatch {
                                name: t.name.clone(),
                                expected: vec![1],
                                found: t.shape.clone(),
                            })
                        }
                    },
                };
                let scaling = if cx.lora_alpha > 0.0 { cx.lora_alpha } else { r as f64 };
                (Some(e), (scaling / (ranknum + 1e-5)) as f32, false)
            }
        };
        Ok((LoraPair { a, b, e, r, scale }, default_alpha))
    }
}

impl Lora {
    /// Reads and checks the PEFT directory `dir` (adapter_config.json, adapter_model.safetensors)
    /// completely before anything is written; see the module docs.
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |reason: String| ConvertError::Lora { path: dir.to_path_buf(), reason };
        let cfg_path = dir.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(bad("no adapter_config.json (is this a PEFT adapter directory?)".into()));
        }
        let cfg = read_json(&cfg_path)?;
        let peft_type = match cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("") {
            "LORA" => PeftType::Lora,
            "ADALORA" => PeftType::AdaLora,
            other => return Err(bad(format!("peft_type is {other:?}; --lora takes a LORA or ADALORA adapter"))),
        };
        let lora_alpha =
            cfg.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| bad("lora_alpha is missing".into()))?;
        let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        if flag("fan_in_fan_out") {
            return Err(bad(
                "fan_in_fan_out = true (Conv1D layers) does not apply to llama/qwen2/T5 linear layers".into()
            ));
        }
        if flag("use_dora") {
            return Err(bad("DoRA adapters (use_dora = true) are not supported".into()));
        }
        if cfg.get("bias").and_then(|v| v.as_str()).is_some_and(|b| b != "none") {
            return Err(bad("trained biases (bias != \"none\") are not supported".into()));
        }
        if cfg.get("modules_to_save").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(bad("modules_to_save (fully trained extra modules) is not supported".into()));
        }
        if let Some((_, reason)) = REFUSED_SETTINGS.iter().find(|(k, _)| cfg.get(*k).is_some_and(truthy)) {
            return Err(bad((*reason).into()));
        }
        let targets: Option<Vec<String>> = match cfg.get("target_modules") {
            Some(J::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            Some(J::String(_)) | None | Some(J::Null) => None,
            Some(other) => return Err(bad(format!("target_modules {other} is neither a list nor a regex"))),
        };
        let positive = |k: &str| cfg.get(k).map(|v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize));
        let shape = match peft_type {
            PeftType::Lora => Shape::Lora {
                r: positive("r").flatten().ok_or_else(|| bad("r is missing or not a positive integer".into()))?,
                rslora: flag("use_rslora"),
                ranks: parse_patterns(
                    dir,
                    &cfg,
                    "rank_pattern",
                    |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize),
                    "a positive integer",
                )?,
                alphas: parse_patterns(dir, &cfg, "alpha_pattern", J::as_f64, "a number")?,
            },
            PeftType::AdaLora => {
                let init_r = match positive("init_r") {
                    None => ADALORA_DEFAULT_INIT_R,
                    Some(r) => r.ok_or_else(|| bad("init_r is not a positive integer".into()))?,
                };
                Shape::AdaLora { init_r, kept: adalora_kept(dir, &cfg, init_r)? }
            }
        };

        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            let reason = if dir.join("adapter_model.bin").is_file() {
                "only adapter_model.bin (pickle) is there; save the adapter with safe_serialization=True"
            } else {
                "no adapter_model.safetensors"
            };
            return Err(bad(reason.into()));
        }
        let desc = weights.display().to_string();
        let set = StSet::open_file(&weights)?;
        let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
        for (name, t) in &set.tensors {
            if let Some(what) = embedding_or_head(name) {
                return Err(ConvertError::LoraUnsupportedModule {
                    path: dir.to_path_buf(),
                    tensor: name.clone(),
                    what: what.into(),
                });
            }
            let (base, part) = parse_name(name, peft_type).ok_or_else(|| ConvertError::UnexpectedTensor {
                name: name.clone(),
                source_desc: desc.clone(),
                arch: match peft_type {
                    PeftType::Lora => {
                        "LoRA (base_model.model.model.layers.N.{self_attn,mlp}.MODULE.lora_{A,B}.weight, or T5's \
                         base_model.model.{encoder,decoder}.block.N.layer.L.GROUP.MODULE.lora_{A,B}.weight)"
                    }
                    PeftType::AdaLora => {
                        "AdaLoRA (base_model.model.model.layers.N.{self_attn,mlp}.MODULE.lora_{A,B,E}, or T5's \
                         base_model.model.{encoder,decoder}.block.N.layer.L.GROUP.MODULE.lora_{A,B,E})"
                    }
                }
                .into(),
            })?;
            if let Some(targets) = &targets {
                // PEFT's list match: the module's name, or a dotted tail of its path.
                let module = module_name(&base).unwrap_or("");
                let path = base.strip_suffix(".weight").unwrap_or(&base);
                if !targets.iter().any(|t| t == module || path == t || path.ends_with(&format!(".{t}"))) {
                    return Err(bad(format!("{name} targets {module}, which is not in target_modules {targets:?}")));
                }
            }
            t.float_dtype()?;
            let slot = slots.entry(base).or_default();
            let dst = match part {
                Part::A => &mut slot.a,
                Part::B => &mut slot.b,
                Part::E => &mut slot.e,
                Part::Ranknum => &mut slot.ranknum,
            };
            *dst = Some(t.clone());
        }

        let mut pairs = BTreeMap::new();
        let mut pruned = Vec::new();
        let mut uniform = matches!(shape, Shape::Lora { rslora: false, .. }) && lora_alpha > 0.0;
        if let Shape::AdaLora { kept: Some(kept), .. } = &shape {
            for (module, &k) in kept.iter().filter(|(m, _)| !slots.contains_key(*m)) {
                if k > 0 {
                    return Err(ConvertError::MissingTensor {
                        name: format!("lora_A/lora_B/lora_E for {module} (rank_pattern keeps {k})"),
                        source_desc: desc.clone(),
                    });
                }
                pruned.push(module.clone());
            }
        }
        let cx = Ctx { dir, desc: &desc, lora_alpha };
        for (base, slot) in slots {
            let (pair, default_alpha) = shape.pair(&cx, &base, slot)?;
            uniform &= default_alpha;
            if pair.r == 0 {
                pruned.push(base);
            } else {
                pairs.insert(base, pair);
            }
        }
        if pairs.is_empty() {
            let reason = if pruned.is_empty() {
                "the adapter holds no LoRA tensors"
            } else {
                "every module was pruned to rank 0"
            };
            return Err(bad(reason.into()));
        }
        pruned.sort();
        let uniform_alpha = uniform.then_some(lora_alpha as f32);
        Ok(Lora { path: dir.to_path_buf(), peft_type, lora_alpha, uniform_alpha, pairs, pruned })
    }

    /// Adds scale · B·A to `w` (`[out, in]`, row-major) after checking the shapes against it.
    pub fn merge_into(&self, base: &str, w: &mut [f32], out: usize, inp: usize) -> Result<()> {
        let Some(p) = self.pairs.get(base) else { return Ok(()) };
        if p.a.shape[1] != inp || p.b.shape[0] != out {
            return Err(ConvertError::ShapeMismatch {
                name: format!("LoRA for {base}"),
                expected: vec![out, p.r, inp],
                found: vec![p.b.shape[0], p.r, p.a.shape[1]],
            });
        }
        if w.len() != out * inp {
            return Err(ConvertError::ShapeMismatch {
                name: base.to_string(),
                expected: vec![out, inp],
                found: vec![w.len()],
            });
        }
        let (a, b) = p.factors()?;
        add_low_rank(w, inp, &a, &b, p.r, p.scale);
        Ok(())
    }
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` →
/// (`model.layers.3.self_attn.q_proj.weight`, A); AdaLoRA's tensors are Parameters, saved
/// without `.weight` (`….q_proj.lora_E`), and whole-model state dicts add `….q_proj.ranknum`.
fn parse_name(name: &str, ty: PeftType) -> Option<(String, Part)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let suffixes: &[(&str, Part)] = match ty {
        PeftType::Lora => &[(".lora_A.weight", Part::A), (".lora_B.weight", Part::B)],
        PeftType::AdaLora => {
            &[(".lora_A", Part::A), (".lora_B", Part::B), (".lora_E", Part::E), (".ranknum", Part::Ranknum)]
        }
    };
    let (stem, part) = suffixes.iter().find_map(|&(s, p)| rest.strip_suffix(s).map(|stem| (stem, p)))?;
    let weight = format!("{stem}.weight");
    split_hf(&weight)?;
    Some((weight, part))
}

/// PEFT's `rank_pattern` / `alpha_pattern` keys. `peft.utils.other.get_pattern_key` takes the
/// first key for which `re.match(rf"(.*\.)?({key})$", module)` succeeds, `module` being the full
/// name (`model.layers.0.self_attn.q_proj`). The keys are Python regexes; this is the part of
/// Python's syntax such keys use (literals, `.`, classes, `\d \w \s`, groups, `|`, `* + ? {m,n}`,
/// `^ $`), evaluated by backtracking on the short module names. Anything else is refused, never
/// guessed. `\d` and `\w` follow Python on ASCII names (module names are Python identifiers).
mod pattern {
    enum Atom {
        Char(char),
        Any,
        Class { negated: bool, items: Vec<Item> },
        Group(Vec<Vec<Piece>>),
        Start,
        End,
    }

    #[derive(Clone, Copy)]
    enum Item {
        Range(char, char),
        /// `\d` (`\D` when negated), `\w`, `\s`.
        Digit(bool),
        Word(bool),
        Space(bool),
    }

    impl Item {
        fn contains(self, c: char) -> bool {
            match self {
                Item::Range(lo, hi) => lo <= c && c <= hi,
                Item::Digit(neg) => neg != (c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())),
                Item::Word(neg) => neg != (c.is_alphanumeric() || c == '_'),
                Item::Space(neg) => neg != c.is_whitespace(),
            }
        }
    }

    struct Piece {
        atom: Atom,
        min: usize,
        max: Option<usize>,
    }

    /// A compiled key.
    pub(super) struct Pattern {
        alt: Vec<Vec<Piece>>,
    }

    type Cont<'k> = &'k mut dyn FnMut(usize) -> bool;

    impl Pattern {
        pub(super) fn parse(key: &str) -> Result<Self, String> {
            let chars: Vec<char> = key.chars().collect();
            let mut p = Parser { s: &chars, i: 0 };
            let alt = p.alt()?;
            if p.i < chars.len() {
                return Err("unbalanced parenthesis".into());
            }
            Ok(Pattern { alt })
        }

        /// Whether PEFT applies this key to `module`: the key matches the whole name, or the part
        /// after one of its dots.
        pub(super) fn matches_module(&self, module: &str) -> bool {
            let s: Vec<char> = module.chars().collect();
            let m = Matcher { s: &s };
            (0..=s.len()).filter(|&i| i == 0 || s[i - 1] == '.').any(|i| m.alt(&self.alt, i, &mut |e| e == s.len()))
        }
    }

    struct Matcher<'a> {
        s: &'a [char],
    }

    impl Matcher<'_> {
        fn alt(&self, alt: &[Vec<Piece>], i: usize, k: Cont) -> bool {
            alt.iter().any(|seq| self.seq(seq, i, k))
        }

        fn seq(&self, seq: &[Piece], i: usize, k: Cont) -> bool {
            match seq.split_first() {
                None => k(i),
                Some((p, rest)) => self.rep(p, 0, i, &mut |j| self.seq(rest, j, k)),
            }
        }

        /// `p` matched `n` times so far, up to `i`; greedy, and a repetition that consumes nothing
        /// once the minimum is met ends the loop.
        fn rep(&self, p: &Piece, n: usize, i: usize, k: Cont) -> bool {
            if p.max.is_none_or(|m| n < m)
                && self.atom(&p.atom, i, &mut |j| (j != i || n < p.min) && self.rep(p, n + 1, j, k))
            {
                return true;
            }
            n >= p.min && k(i)
        }

        fn atom(&self, a: &Atom, i: usize, k: Cont) -> bool {
            match a {
                Atom::Start => i == 0 && k(i),
                Atom::End => i == self.s.len() && k(i),
                Atom::Group(alt) => self.alt(alt, i, k),
                Atom::Char(c) => self.s.get(i) == Some(c) && k(i + 1),
                Atom::Any => self.s.get(i).is_some_and(|&c| c != '\n') && k(i + 1),
                Atom::Class { negated, items } => {
                    self.s.get(i).is_some_and(|&c| *negated != items.iter().any(|it| it.contains(c))) && k(i + 1)
                }
            }
        }
    }

    enum Esc {
        Char(char),
        Item(Item),
    }

    struct Parser<'a> {
        s: &'a [char],
        i: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<char> {
            self.s.get(self.i).copied()
        }

        fn alt(&mut self) -> Result<Vec<Vec<Piece>>, String> {
            let mut alt = vec![self.seq()?];
            while self.peek() == Some('|') {
                self.i += 1;
                alt.push(self.seq()?);
            }
            Ok(alt)
        }

        fn seq(&mut self) -> Result<Vec<Piece>, String> {
            let mut seq = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                let atom = self.atom()?;
                let (min, max) = match self.quantifier()? {
                    Some(_) if matches!(atom, Atom::Start | Atom::End) => return Err("nothing to repeat".into()),
                    Some(q) => q,
                    None => (1, Some(1)),
                };
                seq.push(Piece { atom, min, max });
            }
            Ok(seq)
        }

        /// `{m}`, `{m,}`, `{,n}`, `{m,n}` at the cursor: (chars it takes, min, max). Anything
        /// else is a literal `{` in Python.
        fn braces(&self) -> Option<(usize, usize, Option<usize>)> {
            let rest = self.s.get(self.i..)?;
            if rest.first() != Some(&'{') {
                return None;
            }
            let close = rest.iter().position(|&c| c == '}')?;
            let body: String = rest[1..close].iter().collect();
            let num = |s: &str| match s {
                "" => Some(None),
                s if s.chars().all(|c| c.is_ascii_digit()) => s.parse::<usize>().ok().map(Some),
                _ => None,
            };
            let (lo, hi) = match body.split_once(',') {
                Some((lo, hi)) => (num(lo)?, num(hi)?),
                None => {
                    let n = num(&body)??;
                    (Some(n), Some(n))
                }
            };
            Some((close + 1, lo.unwrap_or(0), hi))
        }

        fn quantifier(&mut self) -> Result<Option<(usize, Option<usize>)>, String> {
            let q = match self.peek() {
                Some('*') => (1, 0, None),
                Some('+') => (1, 1, None),
                Some('?') => (1, 0, Some(1)),
                _ => match self.braces() {
                    Some(q) => q,
                    None => return Ok(None),
                },
            };
            self.i += q.0;
            if q.2.is_some_and(|hi| hi < q.1) {
                return Err("min repeat greater than max repeat".into());
            }
            // Lazy or greedy: the same yes/no answer.
            if self.peek() == Some('?') {
                self.i += 1;
            }
            if matches!(self.peek(), Some('*' | '+' | '?')) || self.braces().is_some() {
                return Err("multiple repeat (or a possessive quantifier)".into());
            }
            Ok(Some((q.1, q.2)))
        }

        fn atom(&mut self) -> Result<Atom, String> {
            let Some(c) = self.peek() else { return Err("unexpected end".into()) };
            if matches!(c, '*' | '+' | '?') || self.braces().is_some() {
                return Err("nothing to repeat".into());
            }
            self.i += 1;
            Ok(match c {
                '.' => Atom::Any,
                '^' => Atom::Start,
                '$' => Atom::End,
                '(' => {
                    if self.peek() == Some('?') {
                        if self.s.get(self.i + 1) != Some(&':') {
                            return Err("group syntax (?...) other than (?:...)".into());
                        }
                        self.i += 2;
                    }
                    let alt = self.alt()?;
                    if self.peek() != Some(')') {
                        return Err("missing ), unterminated subpattern".into());
                    }
                    self.i += 1;
                    Atom::Group(alt)
                }
                '[' => self.class()?,
                '\\' => match self.escape()? {
                    Esc::Char(c) => Atom::Char(c),
                    Esc::Item(it) => Atom::Class { negated: false, items: vec![it] },
                },
                c => Atom::Char(c),
            })
        }

        /// After a backslash.
        fn escape(&mut self) -> Result<Esc, String> {
            let Some(e) = self.peek() else { return Err("trailing backslash".into()) };
            self.i += 1;
            Ok(match e {
                'd' | 'D' => Esc::Item(Item::Digit(e == 'D')),
                'w' | 'W' => Esc::Item(Item::Word(e == 'W')),
                's' | 'S' => Esc::Item(Item::Space(e == 'S')),
                'n' => Esc::Char('\n'),
                't' => Esc::Char('\t'),
                'r' => Esc::Char('\r'),
                e if !e.is_ascii_alphanumeric() => Esc::Char(e),
                e => return Err(format!("escape \\{e} is not supported")),
            })
        }

        /// After `[`.
        fn class(&mut self) -> Result<Atom, String> {
            let negated = self.peek() == Some('^');
            if negated {
                self.i += 1;
            }
            let mut items = Vec::new();
            let mut first = true;
            loop {
                let Some(c) = self.peek() else { return Err("unterminated character set".into()) };
                self.i += 1;
                if c == ']' && !first {
                    break;
                }
                first = false;
                let lo = if c == '\\' {
                    match self.escape()? {
                        Esc::Char(c) => c,
                        Esc::Item(it) => {
                            items.push(it);
                            continue;
                        }
                    }
                } else {
                    c
                };
                if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&n| n != ']') {
                    self.i += 1;
                    let Some(h) = self.peek() else { return Err("unterminated character set".into()) };
                    self.i += 1;
                    let hi = match h {
                        '\\' => match self.escape()? {
                            Esc::Char(c) => c,
                            Esc::Item(_) => return Err("bad character range".into()),
                        },
                        h => h,
                    };
                    if hi < lo {
                        return Err("bad character range".into());
                    }
                    items.push(Item::Range(lo, hi));
                } else {
                    items.push(Item::Range(lo, lo));
                }
            }
            Ok(Atom::Class { negated, items })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Pattern;

        fn m(key: &str, module: &str) -> bool {
            Pattern::parse(key).unwrap().matches_module(module)
        }

        /// Expected answers from Python: `re.match(rf"(.*\.)?({key})$", module) is not None`.
        #[test]
        fn matches_like_peft() {
            let q0 = "model.layers.0.self_attn.q_proj";
            assert!(m("q_proj", q0));
            assert!(m(q0, q0));
            assert!(m("layers.0.self_attn.q_proj", q0));
            assert!(!m("proj", q0), "a key matches whole dot-separated parts");
            assert!(!m("layers.0.self_attn.q_proj", "model.layers.10.self_attn.q_proj"));
            assert!(!m("q_proj", "model.layers.0.self_attn.xq_proj"));
            assert!(m(".*_proj", q0));
            assert!(m("self_attn.(q|k)_proj", "model.layers.3.self_attn.k_proj"));
            assert!(!m("self_attn.(q|k)_proj", "model.layers.3.self_attn.v_proj"));
            assert!(m("q_proj|v_proj", "model.layers.3.self_attn.v_proj"));
            assert!(m(r"layers\.[0-9]+\.mlp\..*", "model.layers.12.mlp.down_proj"));
            assert!(!m(r"layers\.[0-9]+\.mlp\..*", "model.layers.12.self_attn.q_proj"));
            assert!(m(r"layers\.\d{1,2}\.mlp\.(?:up|down)_proj", "model.layers.12.mlp.up_proj"));
            assert!(!m(r"layers\.\d{3}\.mlp\.up_proj", "model.layers.12.mlp.up_proj"));
            assert!(m(r"layers\.[^0]\.mlp\.up_proj", "model.layers.1.mlp.up_proj"));
            assert!(!m(r"layers\.[^0]\.mlp\.up_proj", "model.layers.0.mlp.up_proj"));
            assert!(m("^model.layers.0.mlp.up_proj", "model.layers.0.mlp.up_proj"));
            assert!(!m("^layers.0.mlp.up_proj", "model.layers.0.mlp.up_proj"));
            assert!(m("layers.1.*", "model.layers.1.mlp.up_proj"));
            assert!(m("(a*)*b_proj", "model.layers.1.mlp.b_proj"), "an empty loop ends");
            assert!(m("x{,2}q_proj", "model.xxq_proj"));
            assert!(m("a{b", "model.a{b"), "a brace that is not a repeat is literal");
        }

        #[test]
        fn refuses_what_it_cannot_evaluate() {
            for key in ["(?P<x>q)", r"\bq", "q**", "(q", "q)", "*q", "[q", r"q\1", "(?i)q", "q{3,1}", "q*+"] {
                assert!(Pattern::parse(key).is_err(), "{key}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_names() {
        let lora = |n: &str| parse_name(n, PeftType::Lora).map(|(w, p)| (w, p == Part::A));
        assert_eq!(
            lora("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.3.self_attn.q_proj.weight".into(), true))
        );
        assert_eq!(lora("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight").map(|x| x.1), Some(false));
        assert_eq!(lora("base_model.model.model.embed_tokens.lora_A.weight"), None);
        assert_eq!(lora("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"), None);
        assert_eq!(lora("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"), None);
        assert_eq!(lora("base_model.model.model.layers.0.self_attn.q_proj.lora_E"), None);
        let ada = |n: &str| parse_name(n, PeftType::AdaLora).map(|(_, p)| p);
        assert!(ada("base_model.model.model.layers.0.self_attn.q_proj.lora_E") == Some(Part::E));
        assert!(ada("base_model.model.model.layers.0.self_attn.q_proj.ranknum") == Some(Part::Ranknum));
        assert!(ada("base_model.model.model.layers.0.self_attn.q_proj.lora_A") == Some(Part::A));
        assert!(ada("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").is_none());
        assert_eq!(
            embedding_or_head("base_model.model.model.embed_tokens.lora_embedding_A"),
            Some("the token embeddings (embed_tokens)")
        );
        assert_eq!(embedding_or_head("base_model.model.lm_head.lora_B.weight"), Some("the output head (lm_head)"));
        assert_eq!(embedding_or_head("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), None);
    }

    #[test]
    fn maps_hf_names_to_llama_cpp_names() {
        assert_eq!(gguf_tensor_name("model.layers.3.self_attn.q_proj.weight").as_deref(), Some("blk.3.attn_q.weight"));
        assert_eq!(
            gguf_tensor_name("model.layers.0.self_attn.o_proj.weight").as_deref(),
            Some("blk.0.attn_output.weight")
        );
        assert_eq!(gguf_tensor_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_tensor_name("model.layers.1.mlp.q_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.embed_tokens.weight"), None);
        assert_eq!(module_name("model.layers.1.self_attn.k_proj.weight"), Some("k_proj"));
        assert_eq!(gguf_stem("model.layers.1.mlp.gate_proj.weight").as_deref(), Some("ffn_gate"));
        assert_eq!(gguf_tensor_name("model.layers.01.mlp.gate_proj.weight"), None, "one HF name per layer");
    }

    #[test]
    fn maps_t5_names_to_llama_cpp_names() {
        let g = |n: &str| gguf_tensor_name(n);
        let cases = [
            ("encoder.block.0.layer.0.SelfAttention.q.weight", "enc.blk.0.attn_q.weight"),
            ("encoder.block.3.layer.0.SelfAttention.o.weight", "enc.blk.3.attn_o.weight"),
            ("encoder.block.1.layer.1.DenseReluDense.wi_0.weight", "enc.blk.1.ffn_gate.weight"),
            ("encoder.block.1.layer.1.DenseReluDense.wi_1.weight", "enc.blk.1.ffn_up.weight"),
            ("encoder.block.1.layer.1.DenseReluDense.wi.weight", "enc.blk.1.ffn_up.weight"),
            ("encoder.block.1.layer.1.DenseReluDense.wo.weight", "enc.blk.1.ffn_down.weight"),
            ("decoder.block.2.layer.0.SelfAttention.v.weight", "dec.blk.2.attn_v.weight"),
            ("decoder.block.2.layer.1.EncDecAttention.q.weight", "dec.blk.2.cross_attn_q.weight"),
            ("decoder.block.2.layer.1.EncDecAttention.o.weight", "dec.blk.2.cross_attn_o.weight"),
            ("decoder.block.0.layer.2.DenseReluDense.wo.weight", "dec.blk.0.ffn_down.weight"),
        ];
        for (hf, want) in cases {
            assert_eq!(g(hf).as_deref(), Some(want), "{hf}");
        }
        for hf in [
            "encoder.block.0.layer.1.EncDecAttention.q.weight",
            "encoder.block.0.layer.1.SelfAttention.q.weight",
            "decoder.block.0.layer.1.DenseReluDense.wo.weight",
            "encoder.block.0.layer.0.SelfAttention.wi_0.weight",
            "encoder.block.0.layer.1.DenseReluDense.q.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.x.layer.0.SelfAttention.q.weight",
            "middle.block.0.layer.0.SelfAttention.q.weight",
        ] {
            assert_eq!(g(hf), None, "{hf}");
        }
        assert_eq!(module_name("decoder.block.0.layer.1.EncDecAttention.v.weight"), Some("v"));
    }

    #[test]
    fn low_rank_update_matches_the_definition() {
        // w [2, 3], r = 2
        let a = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let b = [2.0, 1.0, 0.0, -4.0];
        let mut w = vec![0.0; 6];
        add_low_rank(&mut w, 3, &a, &b, 2, 0.5);
        // row 0: 0.5·(2·a0 + 1·a1) = [0.5, 2.25, 3]; row 1: 0.5·(-4·a1) = [2, -1, 0]
        assert_eq!(w, vec![0.5, 2.25, 3.0, 2.0, -1.0, 0.0]);
    }

    #[test]
    fn settings_that_are_off() {
        for v in [J::Null, J::Bool(false), serde_json::json!([]), serde_json::json!({}), serde_json::json!(0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [J::Bool(true), serde_json::json!([[0, 4]]), serde_json::json!([5, 6])] {
            assert!(truthy(&v), "{v}");
        }
    }
}
