//! `delrec-convert adapter`: a PEFT LoRA or AdaLoRA → a llama.cpp LoRA adapter GGUF, applied at
//! run time over the base GGUF (`llama_adapter_lora_init`), so a 4-bit base keeps the fine-tune at
//! F16 instead of having it merged and quantized away.
//!
//! The layout is what llama.cpp's loader (`llama_adapter_lora_init_impl`, llama-adapter.cpp)
//! reads: `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture` = the
//! base's, `adapter.lora.alpha` (F32), and for each adapted base tensor `T` (sorted by name)
//! `T.lora_a` with ggml dims `[in, r]` (the bytes of A `[r, in]`, row-major) and `T.lora_b` with
//! dims `[r, out]` (B `[out, r]`). llama.cpp adds `scale · B·(A·x)` with scale = alpha / r (r =
//! ne[0] of lora_b) when alpha ≠ 0, else 1 (times the caller's adapter scale).
//!
//! When every pair's PEFT scale is lora_alpha / r (plain LoRA, per-module ranks included), the
//! file carries lora_alpha and B as trained. Otherwise (rsLoRA's alpha / √r, an alpha_pattern,
//! AdaLoRA's scaling / (ranknum + 1e-5), lora_alpha ≤ 0) alpha is written as 0 and each B is
//! multiplied by its pair's full scale (`delrec.adapter.scale_folded = true`). Either way
//! llama.cpp computes PEFT's delta. B's rows are permuted for llama q/k exactly as the base's
//! weights were (the plan shared with [`crate::merge`], which also checks every adapted weight's
//! presence and shape in the base); AdaLoRA's E is folded into A ([`crate::lora`]).
//!
//! `delrec.base.*` records the base's [`BaseIdentity`], so a runtime can refuse the adapter over
//! another model before llama.cpp sees it. LoRAs on the embeddings or the output head are refused
//! when the adapter is read. The output is atomic: on any error nothing is left behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use delrec_format::adapter::BaseTensors;
use delrec_format::gguf::{GgufFile, GgufWriter, TensorData, TensorType, Value};
use delrec_format::BaseIdentity;

use crate::error::{ConvertError, Result};
use crate::llama::ftype;
use crate::lora::{gguf_stem, Lora, PeftType};
use crate::merge::plan;
use crate::model::{encode, out_dir, publish, type_name, write_staged};

/// The adapter's keys, as the runtime's check reads them (`delrec_format::adapter`).
pub use delrec_format::adapter::{
    GENERAL_TYPE, K_BASE_ARCH as KEY_BASE_ARCH, K_BASE_EMBD as KEY_BASE_N_EMBD, K_BASE_FP as KEY_BASE_TOKENIZER,
    K_BASE_VOCAB as KEY_BASE_N_VOCAB, K_PEFT_TYPE as KEY_PEFT_TYPE, K_SCALE_FOLDED as KEY_SCALE_FOLDED,
};

/// Type of the adapter's tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AdapterOutType {
    #[default]
    #[value(name = "f16")]
    F16,
    #[value(name = "f32")]
    F32,
}

impl AdapterOutType {
    pub fn name(self) -> &'static str {
        match self {
            AdapterOutType::F16 => "f16",
            AdapterOutType::F32 => "f32",
        }
    }

    fn tensor_type(self) -> TensorType {
        match self {
            AdapterOutType::F16 => TensorType::F16,
            AdapterOutType::F32 => TensorType::F32,
        }
    }

    fn file_type(self) -> u32 {
        match self {
            AdapterOutType::F16 => ftype::MOSTLY_F16,
            AdapterOutType::F32 => ftype::ALL_F32,
        }
    }
}

pub struct AdapterOptions {
    /// The base model GGUF the adapter will run over (llama, qwen2 or t5, any quantization: only
    /// its metadata and tensor shapes are read).
    pub base: PathBuf,
    /// The PEFT directory (adapter_config.json + adapter_model.safetensors), LORA or ADALORA.
    pub lora: PathBuf,
    pub out: PathBuf,
    pub outtype: AdapterOutType,
}

/// What was written.
#[derive(Debug)]
pub struct AdapterReport {
    pub arch: String,
    pub out: PathBuf,
    pub peft_type: PeftType,
    /// lora_a/lora_b pairs written.
    pub pairs: usize,
    /// Pair count by rank.
    pub ranks: BTreeMap<usize, usize>,
    /// llama.cpp module stems adapted (`attn_q`, `ffn_down`, ...), sorted.
    pub targets: Vec<String>,
    /// AdaLoRA modules pruned to rank 0, left out.
    pub pruned: usize,
    /// `adapter.lora.alpha`: PEFT's lora_alpha, or 0 when the scales are folded into B.
    pub alpha_written: f32,
    pub scale_folded: bool,
    pub bytes: u64,
    /// Values that overflowed to ±inf when narrowed to F16.
    pub f16_overflow: u64,
}

/// Writes the adapter; see the module docs.
pub fn build_adapter(opts: &AdapterOptions) -> Result<AdapterReport> {
    let base = GgufFile::open(&opts.base)?;
    if base.get("general.type").and_then(Value::as_str) == Some(GENERAL_TYPE) {
        return Err(ConvertError::Usage(format!(
            "{} is a LoRA adapter; --base takes the base model GGUF",
            opts.base.display()
        )));
    }
    let arch = base.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
    if !["llama", "qwen2", "t5"].contains(&arch.as_str()) {
        return Err(ConvertError::UnknownArchitecture {
            found: format!("{arch:?} (general.architecture of {})", opts.base.display()),
        });
    }
    let identity = BaseIdentity::of_model(&base)?;
    let lora = Lora::load(&opts.lora)?;
    let adapted = plan(&base, &lora, &arch)?;
    let (alpha, folded) = match lora.uniform_alpha {
        Some(a) => (a, false),
        None => (0.0, true),
    };

    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str(arch.clone()));
    w.set("general.type", Value::Str(GENERAL_TYPE.into()));
    let name = std::fs::canonicalize(&opts.lora)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "LoRA".into());
    w.set("general.name", Value::Str(format!("{name} adapter")));
    w.set("general.file_type", Value::U32(opts.outtype.file_type()));
    w.set("adapter.type", Value::Str("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(alpha));
    w.set(KEY_PEFT_TYPE, Value::Str(lora.peft_type.name().into()));
    w.set(KEY_SCALE_FOLDED, Value::Bool(folded));
    w.set(KEY_BASE_ARCH, Value::Str(identity.architecture.clone()));
    w.set(KEY_BASE_N_EMBD, Value::U32(identity.n_embd));
    w.set(KEY_BASE_N_VOCAB, Value::U32(identity.n_vocab));
    w.set(KEY_BASE_TOKENIZER, Value::Str(identity.tokenizer_fingerprint.clone()));

    let ty = opts.outtype.tensor_type();
    let mut overflow = 0u64;
    let mut ranks = BTreeMap::new();
    let mut targets = BTreeSet::new();
    for (tensor, m) in &adapted {
        // plan checked A [r, in] and B [out, r] against the base; r ≥ 1 (rank 0 is never a pair).
        let (inp, out) = (m.a.len() / m.r.max(1), m.b.len() / m.r.max(1));
        let b: Cow<[f32]> = if folded { m.b.iter().map(|x| x * m.scale).collect() } else { Cow::Borrowed(&m.b) };
        let dims_a = [inp as u64, m.r as u64];
        let dims_b = [m.r as u64, out as u64];
        w.add_tensor(&format!("{tensor}.lora_a"), &dims_a, ty, TensorData::Owned(encode(&m.a, ty, &mut overflow)))?;
        w.add_tensor(&format!("{tensor}.lora_b"), &dims_b, ty, TensorData::Owned(encode(&b, ty, &mut overflow)))?;
        *ranks.entry(m.r).or_insert(0) += 1;
        targets.insert(gguf_stem(&m.hf).unwrap_or_else(|| "?".into()));
    }
    drop(base);

    // The staged file must pass the runtime's own adapter check and load in llama.cpp over the
    // base before it is published (as merge-lora's output must load).
    let stage = write_staged(&w, &out_dir(&opts.out))?;
    {
        let staged = GgufFile::open(stage.path())?;
        let base = GgufFile::open(&opts.base)?;
        delrec_format::adapter::check_adapter(&staged, &BaseTensors::of_model(&base)?, &identity)?;
    }
    crate::llama::check_adapter_loads(&opts.base, stage.path())?;
    publish(stage, &opts.out)?;
    let bytes = std::fs::metadata(&opts.out).map_err(|e| ConvertError::io(&opts.out, e))?.len();
    Ok(AdapterReport {
        arch,
        out: opts.out.clone(),
        peft_type: lora.peft_type,
        pairs: adapted.len(),
        ranks,
        targets: targets.into_iter().collect(),
        pruned: lora.pruned.len(),
        alpha_written: alpha,
        scale_folded: folded,
        bytes,
        f16_overflow: overflow,
    })
}

/// Whether a GGUF is an adapter (`general.type = "adapter"`), not a model or a pack.
pub fn is_adapter(f: &GgufFile) -> bool {
    f.get("general.type").and_then(Value::as_str) == Some(GENERAL_TYPE)
}

/// What an adapter GGUF holds, for `inspect`; also reads adapters from other tools (llama.cpp's
/// convert_lora_to_gguf.py), which lack the `delrec.*` keys.
#[derive(Debug)]
pub struct AdapterInfo {
    pub arch: String,
    /// `adapter.lora.alpha` (llama.cpp reads a missing key as 0).
    pub alpha: f32,
    pub peft_type: Option<String>,
    pub scale_folded: Option<bool>,
    /// Base tensors with both lora_a and lora_b.
    pub pairs: usize,
    /// Pair count by rank (ne[0] of lora_b).
    pub ranks: BTreeMap<u64, usize>,
    /// Module stems (`attn_q`), or whole base tensor names outside the blocks.
    pub targets: Vec<String>,
    /// lora_a / lora_b tensors without their other half (llama.cpp refuses those).
    pub unpaired: Vec<String>,
    /// Tensor count by ggml type name.
    pub types: BTreeMap<String, usize>,
    pub bytes: u64,
    /// The `delrec.base.*` keys, when all four are there.
    pub base: Option<BaseIdentity>,
}

impl AdapterInfo {
    pub fn read(f: &GgufFile) -> AdapterInfo {
        let str_of = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
        let u32_of = |k: &str| f.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
        let mut halves: BTreeMap<&str, (Option<u64>, bool)> = BTreeMap::new();
        let mut types = BTreeMap::new();
        for t in f.tensors() {
            *types.entry(type_name(t.ty)).or_insert(0) += 1;
            if let Some(base) = t.name.strip_suffix(".lora_b") {
                halves.entry(base).or_default().0 = Some(t.dims.first().copied().unwrap_or(0));
            } else if let Some(base) = t.name.strip_suffix(".lora_a") {
                halves.entry(base).or_default().1 = true;
            }
        }
        let (mut ranks, mut targets, mut unpaired) = (BTreeMap::new(), BTreeSet::new(), Vec::new());
        for (base, half) in &halves {
            match half {
                (Some(r), true) => {
                    *ranks.entry(*r).or_insert(0) += 1;
                    let stem = base
                        .strip_prefix("blk.")
                        .and_then(|s| s.split_once('.'))
                        .and_then(|(_, s)| s.strip_suffix(".weight"))
                        .unwrap_or(base);
                    targets.insert(stem.to_string());
                }
                _ => unpaired.push(base.to_string()),
            }
        }
        let base = match (
            str_of(KEY_BASE_ARCH),
            u32_of(KEY_BASE_N_EMBD),
            u32_of(KEY_BASE_N_VOCAB),
            str_of(KEY_BASE_TOKENIZER),
        ) {
            (Some(architecture), Some(n_embd), Some(n_vocab), Some(tokenizer_fingerprint)) => {
                Some(BaseIdentity { architecture, n_embd, n_vocab, tokenizer_fingerprint })
            }
            _ => None,
        };
        AdapterInfo {
            arch: str_of("general.architecture").unwrap_or_default(),
            alpha: match f.get("adapter.lora.alpha") {
                Some(Value::F32(a)) => *a,
                _ => 0.0,
            },
            peft_type: str_of(KEY_PEFT_TYPE),
            scale_folded: f.get(KEY_SCALE_FOLDED).and_then(Value::as_bool),
            pairs: ranks.values().sum(),
            ranks,
            targets: targets.into_iter().collect(),
            unpaired,
            types,
            bytes: f.len(),
            base,
        }
    }
}
