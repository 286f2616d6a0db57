//! A llama.cpp LoRA adapter GGUF, proven loadable over one base model before llama.cpp reads it.
//!
//! llama.cpp's adapter loader (`llama_adapter_lora_init`) throws (a null return) on most bad
//! adapters, but it reads `general.type`, `general.architecture` and `adapter.type` with
//! `gguf_get_val_str` and `adapter.lora.alpha` with `gguf_get_val_f32`, which abort the process
//! on a key of another type; and what it accepts it trusts: an adapter tensor of a type or rank
//! the matmul cannot take, or with NaN/Inf, fails inside a decode. [`check_adapter`] checks all
//! of it (and more: only matrices the graph adapts, finite values, the base identity) against the
//! base's own tensor table, so llama.cpp sees only adapters it computes correctly.
//!
//! Layout (what `delrec-convert adapter` writes; llama.cpp's own converter writes the same):
//! `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (F32; a pair's scale
//! is `alpha / rank`, or 1 when alpha is 0), and for each adapted weight `T` of the base a pair
//! `T.lora_a` (ggml dims `[in, rank]`) and `T.lora_b` (`[rank, out]`).

use std::collections::{BTreeMap, HashMap};

use crate::error::{bad_file, Result};
use crate::gguf::{GgufFile, TensorType, Value};
use crate::identity::BaseIdentity;

pub const K_TYPE: &str = "general.type";
/// `general.type` of an adapter (llama.cpp refuses anything else as one).
pub const GENERAL_TYPE: &str = "adapter";
pub const K_ADAPTER_TYPE: &str = "adapter.type";
pub const K_ALPHA: &str = "adapter.lora.alpha";
pub const K_ALORA: &str = "adapter.alora.invocation_tokens";
/// The PEFT type the adapter came from (`LORA`, `ADALORA`): documentation.
pub const K_PEFT_TYPE: &str = "delrec.adapter.peft_type";
/// Whether each `lora_b` carries its pair's whole scale (alpha is then 0): documentation.
pub const K_SCALE_FOLDED: &str = "delrec.adapter.scale_folded";
/// The base identity keys, as in a pack (`docs/format.md`); optional in an adapter.
pub use crate::identity::{K_BASE_ARCH, K_BASE_EMBD, K_BASE_FP, K_BASE_VOCAB};

/// Base weights an adapter may target: the ones llama.cpp's llama/qwen2 graphs multiply through
/// `build_lora_mm` (the token embedding is applied differently and is not accepted).
const STEMS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// Ranks above this are not low-rank adapters (and would make a huge extra matmul).
pub const MAX_RANK: u64 = 4096;

/// The shapes of a base model's tensors, what an adapter is checked against (kept by an
/// engine's base after its GGUF parse is dropped).
#[derive(Clone, Debug)]
pub struct BaseTensors {
    pub architecture: String,
    dims: HashMap<String, Vec<u64>>,
}

impl BaseTensors {
    pub fn of_model(model: &GgufFile) -> Result<Self> {
        let architecture = model.req_str("general.architecture")?.to_string();
        let dims = model.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
        Ok(Self { architecture, dims })
    }

    fn dims(&self, name: &str) -> Option<&[u64]> {
        self.dims.get(name).map(Vec::as_slice)
    }
}

/// One adapted weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdaptedWeight {
    /// The base tensor (`blk.0.attn_q.weight`).
    pub target: String,
    pub rank: u32,
    pub ty: TensorType,
}

/// What [`check_adapter`] found.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub architecture: String,
    /// `adapter.lora.alpha` (0 when absent: each pair's scale is then 1).
    pub alpha: f32,
    pub peft_type: Option<String>,
    /// Sorted by target.
    pub weights: Vec<AdaptedWeight>,
    /// Bytes of the adapter's tensors.
    pub tensor_bytes: u64,
}

impl AdapterInfo {
    /// Rank → number of weights with it.
    pub fn ranks(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for w in &self.weights {
            *m.entry(w.rank).or_insert(0) += 1;
        }
        m
    }

    /// The module stems adapted (`attn_q`, `ffn_down`, ...; T5's with their side: `enc.attn_q`,
    /// `dec.cross_attn_v`), sorted, each once.
    pub fn targets(&self) -> Vec<String> {
        let stem = |name: &str| -> Option<String> {
            match name.split_once(".blk.") {
                Some((side @ ("enc" | "dec"), rest)) => rest.split('.').nth(1).map(|s| format!("{side}.{s}")),
                _ => name.split('.').nth(2).map(str::to_string),
            }
        };
        let mut t: Vec<String> = self.weights.iter().filter_map(|w| stem(&w.target)).collect();
        t.sort();
        t.dedup();
        t
    }
}

fn string_key<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a str>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(v) => Err(bad_file(f, format!("{key} must be a string, found {}", v.summary()))),
    }
}

/// T5's encoder and decoder matrices as llama.cpp names them (`enc.blk.N.…`, `dec.blk.N.…`);
/// its t5 graphs route each through `build_lora_mm`, so an adapter applies to all of them.
const T5_ENC_STEMS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down"];
const T5_DEC_STEMS: [&str; 11] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "cross_attn_q",
    "cross_attn_k",
    "cross_attn_v",
    "cross_attn_o",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// `blk.N.STEM.weight` (decoder-only) or `enc.blk.N.STEM.weight` / `dec.blk.N.STEM.weight`
/// (T5) with an adaptable stem.
fn adaptable(name: &str) -> bool {
    let (stems, rest): (&[&str], &str) = if let Some(r) = name.strip_prefix("enc.") {
        (&T5_ENC_STEMS, r)
    } else if let Some(r) = name.strip_prefix("dec.") {
        (&T5_DEC_STEMS, r)
    } else {
        (&STEMS, name)
    };
    let mut parts = rest.split('.');
    matches!(
        (parts.next(), parts.next().map(|n| n.parse::<u32>().is_ok()), parts.next(), parts.next(), parts.next()),
        (Some("blk"), Some(true), Some(stem), Some("weight"), None) if stems.contains(&stem)
    )
}

/// Checks an adapter file against a base (its tensor table and identity); see the module docs.
pub fn check_adapter(f: &GgufFile, base: &BaseTensors, identity: &BaseIdentity) -> Result<AdapterInfo> {
    if string_key(f, K_TYPE)? != Some(GENERAL_TYPE) {
        return Err(bad_file(f, "not an adapter (general.type is not \"adapter\")"));
    }
    if string_key(f, K_ADAPTER_TYPE)? != Some("lora") {
        return Err(bad_file(f, "not a LoRA adapter (adapter.type is not \"lora\")"));
    }
    let arch = string_key(f, "general.architecture")?.unwrap_or("");
    if arch != base.architecture {
        return Err(crate::Error::PackMismatch {
            what: "adapter architecture".into(),
            pack: arch.into(),
            model: base.architecture.clone(),
        });
    }
    let alpha = match f.get(K_ALPHA) {
        None => 0.0,
        Some(Value::F32(a)) if a.is_finite() && *a >= 0.0 => *a,
        Some(v) => return Err(bad_file(f, format!("{K_ALPHA} must be a finite F32 ≥ 0, found {}", v.summary()))),
    };
    if f.get(K_ALORA).is_some() {
        return Err(bad_file(f, "activated LoRA (adapter.alora.invocation_tokens) is not supported"));
    }
    let peft_type = string_key(f, K_PEFT_TYPE)?.map(str::to_string);
    if f.get(K_BASE_ARCH).is_some() {
        BaseIdentity::read_keys(f)?.check_matches(identity).map_err(|e| match e {
            crate::Error::PackMismatch { what, pack, model } => {
                crate::Error::PackMismatch { what: format!("adapter base {what}"), pack, model }
            }
            other => other,
        })?;
    }

    let mut pairs: BTreeMap<&str, [Option<&crate::gguf::TensorInfo>; 2]> = BTreeMap::new();
    for t in f.tensors() {
        let (target, half) = if let Some(s) = t.name.strip_suffix(".lora_a") {
            (s, 0)
        } else if let Some(s) = t.name.strip_suffix(".lora_b") {
            (s, 1)
        } else {
            return Err(bad_file(f, format!("tensor {:?} is neither a .lora_a nor a .lora_b", t.name)));
        };
        pairs.entry(target).or_default()[half] = Some(t);
    }
    if pairs.is_empty() {
        return Err(bad_file(f, "the adapter holds no LoRA tensors"));
    }
    let mut weights = Vec::with_capacity(pairs.len());
    let mut tensor_bytes = 0u64;
    for (target, [a, b]) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad_file(f, format!("{target}: one of lora_a / lora_b is missing")));
        };
        if !adaptable(target) {
            return Err(bad_file(
                f,
                format!("{target} is not a weight adapters may target here (attention and feed-forward matrices; merge others)"),
            ));
        }
        let Some(w) = base.dims(target) else {
            return Err(crate::Error::PackMismatch {
                what: format!("adapter target {target}"),
                pack: "present".into(),
                model: "absent".into(),
            });
        };
        let two = |t: &crate::gguf::TensorInfo| match t.dims[..] {
            [x, y] => Some((x, y)),
            [x] => Some((x, 1)),
            _ => None,
        };
        let (Some((a_in, a_r)), Some((b_r, b_out)), [w_in, w_out]) = (two(a), two(b), w) else {
            return Err(bad_file(f, format!("{target}: lora_a, lora_b and the base weight must be matrices")));
        };
        if a_in != *w_in || b_out != *w_out {
            return Err(crate::Error::PackMismatch {
                what: format!("adapter shape for {target} (in × out)"),
                pack: format!("{a_in} × {b_out}"),
                model: format!("{w_in} × {w_out}"),
            });
        }
        if a_r != b_r || a_r == 0 || a_r > MAX_RANK.min(a_in) {
            return Err(bad_file(
                f,
                format!(
                    "{target}: ranks of lora_a ({a_r}) and lora_b ({b_r}) must agree and be 1..=min(in, {MAX_RANK})"
                ),
            ));
        }
        if a.ty != b.ty || !matches!(a.ty, TensorType::F32 | TensorType::F16 | TensorType::BF16) {
            return Err(bad_file(
                f,
                format!(
                    "{target}: adapter tensors must be F32, F16 or BF16, both alike (found {} and {})",
                    a.ty.name(),
                    b.ty.name()
                ),
            ));
        }
        for t in [a, b] {
            let bytes = f.tensor_bytes(t).ok_or_else(|| bad_file(f, format!("{}: data out of bounds", t.name)))?;
            tensor_bytes += bytes.len() as u64;
            if let Some(i) = first_non_finite(t.ty, bytes) {
                return Err(bad_file(f, format!("{}: value {i} is NaN or infinite", t.name)));
            }
        }
        weights.push(AdaptedWeight { target: target.to_string(), rank: a_r as u32, ty: a.ty });
    }
    Ok(AdapterInfo { architecture: arch.to_string(), alpha, peft_type, weights, tensor_bytes })
}

/// Index of the first NaN/Inf value of F32/F16/BF16 bytes.
fn first_non_finite(ty: TensorType, bytes: &[u8]) -> Option<usize> {
    match ty {
        TensorType::F32 => {
            bytes.chunks_exact(4).position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
        }
        // F16: exponent bits all ones (0x7c00); BF16: 0x7f80.
        TensorType::F16 => bytes.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        TensorType::BF16 => bytes.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptable_names() {
        assert!(adaptable("blk.0.attn_q.weight"));
        assert!(adaptable("blk.31.ffn_down.weight"));
        assert!(!adaptable("token_embd.weight"));
        assert!(!adaptable("output.weight"));
        assert!(!adaptable("blk.0.attn_norm.weight"));
        assert!(!adaptable("blk.x.attn_q.weight"));
        assert!(!adaptable("blk.0.attn_q.weight.extra"));
        assert!(adaptable("enc.blk.1.attn_o.weight") && adaptable("dec.blk.0.cross_attn_v.weight"));
        assert!(!adaptable("enc.blk.0.cross_attn_q.weight"), "the encoder has no cross-attention");
        assert!(!adaptable("dec.blk.0.attn_output.weight") && !adaptable("enc.blk.0.attn_rel_b.weight"));
    }

    #[test]
    fn non_finite_halves() {
        let f16 = |v: u16| v.to_le_bytes();
        assert_eq!(first_non_finite(TensorType::F16, &[f16(0x3c00), f16(0x7c00)].concat()), Some(1));
        assert_eq!(first_non_finite(TensorType::F16, &[f16(0x3c00), f16(0xfbff)].concat()), None);
        assert_eq!(first_non_finite(TensorType::BF16, &[f16(0x3f80), f16(0xff81)].concat()), Some(1));
        assert_eq!(first_non_finite(TensorType::F32, &f32::NAN.to_le_bytes()), Some(0));
    }
}
