//! `delrec-convert merge-lora`: a PEFT LoRA merged into a GGUF base model (one that exists only as
//! a GGUF, e.g. a quantized download), giving a GGUF llama.cpp loads and the quantizer can take.
//!
//! Every tensor of the base is dequantized ([`crate::dequant`]); the adapted weights get
//! `scale · B·A` (each pair's scale as PEFT computes it: [`crate::lora`]) with B's rows permuted into
//! llama.cpp's rope order for llama q/k, exactly as the HF → GGUF conversion permutes the weights
//! ([`crate::model::permute_rows`]; qwen2 and t5 are stored unpermuted). A t5 base takes T5 module
//! names (`encoder.block.N.layer.0.SelfAttention.q`, ...: [`crate::lora`]). Matrices are written at the
//! output type (F16, BF16 or F32), vectors as F32; all metadata, the tokenizer included, is
//! copied, so packs built for the base still match it (same tokenizer fingerprint).
//!
//! Everything is checked before the first byte is written: architecture, head counts, every
//! tensor's type, every adapted weight's presence and shape, and the adapter itself (rank,
//! NaN/Inf). The result goes to a temp file beside the output, which llama.cpp must load before
//! it is renamed into place; on any error nothing is left behind.

use std::collections::BTreeMap;
use std::path::PathBuf;

use delrec_format::gguf::{GgufFile, GgufWriter, TensorData, TensorInfo, TensorType, Value};

use crate::dequant;
use crate::error::{ConvertError, Result};
use crate::llama::{self, ftype};
use crate::lora::{add_low_rank, gguf_tensor_name, module_name, Lora};
use crate::model::{encode, out_dir, permute_rows, publish, summarize, type_name, write_staged, Spill};
use crate::progress;
use crate::st::{decode_f32, Dtype};

/// Output type of the matrices of `merge-lora` (vectors are always F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeOutType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "bf16")]
    Bf16,
}

impl MergeOutType {
    pub fn name(self) -> &'static str {
        match self {
            MergeOutType::F32 => "f32",
            MergeOutType::F16 => "f16",
            MergeOutType::Bf16 => "bf16",
        }
    }

    fn tensor_type(self) -> TensorType {
        match self {
            MergeOutType::F32 => TensorType::F32,
            MergeOutType::F16 => TensorType::F16,
            MergeOutType::Bf16 => TensorType::BF16,
        }
    }

    fn file_type(self) -> u32 {
        match self {
            MergeOutType::F32 => ftype::ALL_F32,
            MergeOutType::F16 => ftype::MOSTLY_F16,
            MergeOutType::Bf16 => ftype::MOSTLY_BF16,
        }
    }
}

pub struct MergeOptions {
    /// The base model GGUF (llama, qwen2 or t5, any type [`dequant`] reads).
    pub base: PathBuf,
    /// The PEFT LoRA directory (adapter_config.json + adapter_model.safetensors).
    pub lora: PathBuf,
    pub out: PathBuf,
    pub outtype: MergeOutType,
    /// Load the result in llama.cpp before publishing it.
    pub verify: bool,
}

/// What was written.
#[derive(Debug)]
pub struct MergeReport {
    pub arch: String,
    pub out: PathBuf,
    pub n_tensors: usize,
    /// Tensor count by ggml type name in the base.
    pub base_types: BTreeMap<String, usize>,
    /// Tensor count by ggml type name, as read back from the output.
    pub types: BTreeMap<String, usize>,
    pub bytes: u64,
    /// Base weights the LoRA was added to.
    pub lora_merged: usize,
    /// Values that overflowed to ±inf when narrowed to F16.
    pub f16_overflow: u64,
}

/// Rows dequantized at a time for tensors the LoRA does not touch (bounds memory on big models).
const CHUNK_ELEMENTS: usize = 1 << 22;

/// One adapted weight: its factors, with B's rows already in the GGUF's row order (shared with
/// [`crate::adapter`], which writes them instead of adding them).
pub(crate) struct Adapted {
    /// The HF weight name (`model.layers.0.self_attn.q_proj.weight`).
    pub(crate) hf: String,
    /// `[r, in]`, AdaLoRA's E folded in.
    pub(crate) a: Vec<f32>,
    /// `[out, r]`, rows in the GGUF's order.
    pub(crate) b: Vec<f32>,
    pub(crate) r: usize,
    pub(crate) scale: f32,
}

/// The bytes of a tensor whose type [`dequant`] handles, bounds-checked against the file (the
/// reader sizes only the types it knows; Q5_0/Q5_1 are sized here).
fn tensor_bytes<'a>(base: &'a GgufFile, t: &TensorInfo) -> Result<&'a [u8]> {
    let unsupported = || ConvertError::TensorTypeUnsupported {
        path: base.path().to_path_buf(),
        name: t.name.clone(),
        ty: type_name(t.ty),
        supported: dequant::SUPPORTED.into(),
    };
    let ne0 = t.dims.first().copied().unwrap_or(0);
    let size = dequant::byte_size(t.ty, ne0, t.n_elements()).ok_or_else(unsupported)?;
    let bad = || {
        ConvertError::Format(delrec_format::Error::InvalidFile {
            path: base.path().to_path_buf(),
            reason: format!("tensor {:?} ends past the end of the file (truncated?)", t.name),
        })
    };
    let start = usize::try_from(t.offset).map_err(|_| bad())?;
    let end = usize::try_from(size).ok().and_then(|s| start.checked_add(s)).ok_or_else(bad)?;
    base.bytes().get(start..end).ok_or_else(bad)
}

/// An integer head count from the metadata.
fn head_count(base: &GgufFile, key: &str) -> Result<Option<usize>> {
    match base.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n > 0) {
            Some(n) => Ok(Some(n)),
            None => Err(ConvertError::UnsupportedConfig {
                path: base.path().to_path_buf(),
                reason: format!(
                    "{key} is {} (a positive integer expected; per-layer arrays are not supported)",
                    v.summary()
                ),
            }),
        },
    }
}

/// B's rows permuted like the base's q/k rows: `heads` heads of an even number of rows each.
fn permute_b(base: &GgufFile, tensor: &str, b: &[f32], rows: usize, r: usize, heads: usize) -> Result<Vec<f32>> {
    if !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(ConvertError::UnsupportedConfig {
            path: base.path().to_path_buf(),
            reason: format!("{tensor} has {rows} rows, which do not split into {heads} heads of an even size"),
        });
    }
    let bytes: Vec<u8> = b.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(decode_f32(&permute_rows(&bytes, heads, r * 4), Dtype::F32))
}

/// Checks the base and the adapter against each other; → the adapted weights by GGUF name.
pub(crate) fn plan(base: &GgufFile, lora: &Lora, arch: &str) -> Result<BTreeMap<String, Adapted>> {
    let n_head = head_count(base, &format!("{arch}.attention.head_count"))?.ok_or_else(|| {
        ConvertError::Format(delrec_format::Error::InvalidFile {
            path: base.path().to_path_buf(),
            reason: format!("metadata key \"{arch}.attention.head_count\" is missing"),
        })
    })?;
    let n_head_kv = head_count(base, &format!("{arch}.attention.head_count_kv"))?.unwrap_or(n_head);
    let mut out = BTreeMap::new();
    for (hf, pair) in &lora.pairs {
        let (Some(name), Some(module)) = (gguf_tensor_name(hf), module_name(hf)) else {
            // Lora::load only accepts names it can map; keep the error typed anyway.
            return Err(ConvertError::Lora {
                path: lora.path.clone(),
                reason: format!("cannot map {hf} to a GGUF name"),
            });
        };
        let Some(t) = base.tensor(&name) else {
            return Err(ConvertError::LoraTarget {
                path: lora.path.clone(),
                module: hf.clone(),
                base: base.path().to_path_buf(),
                tensor: name,
            });
        };
        let (inp, rows) = match t.dims[..] {
            [inp, rows] => (inp as usize, rows as usize),
            _ => (0, 0),
        };
        let (a_in, b_out) = (pair.a.shape[1], pair.b.shape[0]);
        if t.dims.len() != 2 || a_in != inp || b_out != rows {
            return Err(ConvertError::ShapeMismatch {
                name: format!("LoRA B·A for {hf} vs {name} of the base"),
                expected: t.dims.iter().rev().map(|&d| d as usize).collect(),
                found: vec![b_out, a_in],
            });
        }
        let (a, b) = pair.factors()?;
        let heads = match (arch, module) {
            ("llama", "q_proj") => Some(n_head),
            ("llama", "k_proj") => Some(n_head_kv),
            _ => None,
        };
        let b = match heads {
            Some(h) => permute_b(base, &name, &b, rows, pair.r, h)?,
            None => b,
        };
        out.insert(name, Adapted { hf: hf.clone(), a, b, r: pair.r, scale: pair.scale });
    }
    Ok(out)
}

/// Merges; see the module docs.
pub fn merge_lora_gguf(opts: &MergeOptions) -> Result<MergeReport> {
    let base = GgufFile::open(&opts.base)?;
    let arch = base.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
    if !["llama", "qwen2", "t5"].contains(&arch.as_str()) {
        return Err(ConvertError::UnknownArchitecture {
            found: format!("{arch:?} (general.architecture of {})", opts.base.display()),
        });
    }
    let mut base_types = BTreeMap::new();
    for t in base.tensors() {
        tensor_bytes(&base, t)?;
        *base_types.entry(type_name(t.ty)).or_insert(0) += 1;
    }
    let lora = Lora::load(&opts.lora)?;
    let adapted = plan(&base, &lora, &arch)?;

    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str(arch.clone()));
    for (k, v) in base.kv() {
        if k != "general.architecture" {
            w.set(k, v.clone());
        }
    }
    w.set("general.file_type", Value::U32(opts.outtype.file_type()));

    let out_dir = out_dir(&opts.out);
    let mut spill = Spill::new(&out_dir)?;
    let mut overflow = 0u64;
    let pb = progress::bar(base.tensors().len() as u64, "merging");
    for t in base.tensors() {
        let src = tensor_bytes(&base, t)?;
        // t5's relative-position bias stays F32, as the converter writes it (llama.cpp adds it
        // to F32 attention scores).
        let dst = if t.dims.len() >= 2 && !t.name.ends_with("attn_rel_b.weight") {
            opts.outtype.tensor_type()
        } else {
            TensorType::F32
        };
        let merge = adapted.get(&t.name);
        let data = if merge.is_none() && t.ty == dst {
            TensorData::FileRange { path: opts.base.clone(), offset: t.offset, len: src.len() as u64 }
        } else {
            let ne0 = t.dims.first().copied().unwrap_or(1).max(1) as usize;
            let (_, block_bytes) = dequant::block(t.ty).unwrap_or((1, 1));
            let row_bytes = src.len() / (t.n_elements() as usize / ne0).max(1);
            let rows_per_chunk = (CHUNK_ELEMENTS / ne0).max(1);
            let start = spill.pos();
            for (i, chunk) in src.chunks((rows_per_chunk * row_bytes).max(block_bytes)).enumerate() {
                let mut vals = dequant::dequantize(t.ty, chunk).ok_or_else(|| ConvertError::TensorTypeUnsupported {
                    path: opts.base.clone(),
                    name: t.name.clone(),
                    ty: type_name(t.ty),
                    supported: dequant::SUPPORTED.into(),
                })?;
                if let Some(m) = merge {
                    let r = m.r;
                    let row0 = i * rows_per_chunk;
                    let rows = vals.len() / ne0;
                    let b = m.b.get(row0 * r..(row0 + rows) * r).unwrap_or(&[]);
                    add_low_rank(&mut vals, ne0, &m.a, b, r, m.scale);
                }
                spill.write(&encode(&vals, dst, &mut overflow))?;
            }
            spill.range_from(start)
        };
        w.add_tensor(&t.name, &t.dims, dst, data)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    spill.finish()?;

    // A temp file beside the output; only a file llama.cpp accepted is renamed into place.
    let stage = write_staged(&w, &out_dir)?;
    drop(spill);
    drop(base);
    if opts.verify {
        llama::check_loads(stage.path())?;
    }
    publish(stage, &opts.out)?;
    let (types, n_tensors, bytes) = summarize(&opts.out)?;
    Ok(MergeReport {
        arch,
        out: opts.out.clone(),
        n_tensors,
        base_types,
        types,
        bytes,
        lora_merged: adapted.len(),
        f16_overflow: overflow,
    })
}
