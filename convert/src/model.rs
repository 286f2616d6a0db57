//! `delrec-convert model`: a Hugging Face llama/qwen2 checkpoint → a llama.cpp GGUF (T5
//! encoder-decoders go to [`crate::t5`]).
//!
//! Everything is validated before the first byte is written (config, tokenizer, every tensor's
//! presence, shape and dtype, the LoRA adapter), then tensors are converted one at a time: those
//! that need no change are copied straight from the safetensors file, the others are converted
//! into a scratch file beside the output, so memory stays at about one tensor. The result goes to
//! a temp file that llama.cpp must load (and, for quantized types, quantize) before it is renamed
//! into place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use delrec_format::gguf::{GgufFile, GgufWriter, TensorData, TensorType, Value};
use half::{bf16, f16};

use crate::error::{ConvertError, Result};
use crate::hf::{Arch, HfConfig, RopeScaling};
use crate::llama::{self, ftype};
use crate::lora::Lora;
use crate::progress;
use crate::st::{decode_f32, Dtype, StSet, StTensor};
use crate::vocab::TokenizerMeta;

/// Output weight types of `model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "bf16")]
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k_m")]
    Q4KM,
}

impl OutType {
    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4KM => "q4_k_m",
        }
    }

    /// The llama.cpp ftype to quantize to, for quantized outputs.
    pub(crate) fn quant_ftype(self) -> Option<u32> {
        match self {
            OutType::Q8_0 => Some(ftype::MOSTLY_Q8_0),
            OutType::Q4_0 => Some(ftype::MOSTLY_Q4_0),
            OutType::Q4KM => Some(ftype::MOSTLY_Q4_K_M),
            _ => None,
        }
    }
}

pub struct ModelOptions {
    pub hf_dir: PathBuf,
    pub out: PathBuf,
    pub outtype: OutType,
    pub lora: Option<PathBuf>,
    /// `general.name`; defaults to the directory name.
    pub name: Option<String>,
    /// Load the result in llama.cpp before publishing it.
    pub verify: bool,
    /// Quantizer threads (0: all cores).
    pub threads: usize,
}

/// What was written.
#[derive(Debug)]
pub struct ModelReport {
    pub arch: &'static str,
    pub out: PathBuf,
    pub n_tensors: usize,
    /// Tensor count by ggml type name, as read back from the output.
    pub types: BTreeMap<String, usize>,
    pub bytes: u64,
    pub lora_merged: usize,
    /// Values that overflowed to ±inf when narrowed to F16.
    pub f16_overflow: u64,
    pub tokenizer_pre: String,
}

/// One tensor of the layout: HF name, GGUF name, HF shape (`[out, in]` or `[n]`), and the head
/// count for llama's q/k row permutation.
struct Entry {
    hf: String,
    gguf: String,
    shape: Vec<usize>,
    permute_heads: Option<usize>,
}

fn layout(cfg: &HfConfig, has_lm_head: bool) -> Vec<Entry> {
    let (h, ff, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.n_head * hd, cfg.n_head_kv * hd);
    let llama = cfg.arch == Arch::Llama;
    let e = |hf: String, gguf: String, shape: Vec<usize>, permute_heads: Option<usize>| Entry {
        hf,
        gguf,
        shape,
        permute_heads,
    };
    let mut v = vec![e("model.embed_tokens.weight".into(), "token_embd.weight".into(), vec![cfg.vocab_size, h], None)];
    for i in 0..cfg.n_layer {
        let (p, b) = (format!("model.layers.{i}."), format!("blk.{i}."));
        let (qp, kp) = if llama { (Some(cfg.n_head), Some(cfg.n_head_kv)) } else { (None, None) };
        v.push(e(format!("{p}input_layernorm.weight"), format!("{b}attn_norm.weight"), vec![h], None));
        v.push(e(format!("{p}self_attn.q_proj.weight"), format!("{b}attn_q.weight"), vec![q, h], qp));
        v.push(e(format!("{p}self_attn.k_proj.weight"), format!("{b}attn_k.weight"), vec![kv, h], kp));
        v.push(e(format!("{p}self_attn.v_proj.weight"), format!("{b}attn_v.weight"), vec![kv, h], None));
        if cfg.attention_bias {
            v.push(e(format!("{p}self_attn.q_proj.bias"), format!("{b}attn_q.bias"), vec![q], qp));
            v.push(e(format!("{p}self_attn.k_proj.bias"), format!("{b}attn_k.bias"), vec![kv], kp));
            v.push(e(format!("{p}self_attn.v_proj.bias"), format!("{b}attn_v.bias"), vec![kv], None));
        }
        v.push(e(format!("{p}self_attn.o_proj.weight"), format!("{b}attn_output.weight"), vec![h, q], None));
        if cfg.attention_bias && llama {
            v.push(e(format!("{p}self_attn.o_proj.bias"), format!("{b}attn_output.bias"), vec![h], None));
        }
        v.push(e(format!("{p}post_attention_layernorm.weight"), format!("{b}ffn_norm.weight"), vec![h], None));
        v.push(e(format!("{p}mlp.gate_proj.weight"), format!("{b}ffn_gate.weight"), vec![ff, h], None));
        v.push(e(format!("{p}mlp.up_proj.weight"), format!("{b}ffn_up.weight"), vec![ff, h], None));
        v.push(e(format!("{p}mlp.down_proj.weight"), format!("{b}ffn_down.weight"), vec![h, ff], None));
        if cfg.mlp_bias {
            v.push(e(format!("{p}mlp.gate_proj.bias"), format!("{b}ffn_gate.bias"), vec![ff], None));
            v.push(e(format!("{p}mlp.up_proj.bias"), format!("{b}ffn_up.bias"), vec![ff], None));
            v.push(e(format!("{p}mlp.down_proj.bias"), format!("{b}ffn_down.bias"), vec![h], None));
        }
    }
    v.push(e("model.norm.weight".into(), "output_norm.weight".into(), vec![h], None));
    // Tied models may still ship lm_head (a copy); llama.cpp uses `output` when present.
    if has_lm_head || !cfg.tie_word_embeddings {
        v.push(e("lm_head.weight".into(), "output.weight".into(), vec![cfg.vocab_size, h], None));
    }
    v
}

/// Buffers that HF keeps in some checkpoints and llama.cpp recomputes.
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Reorders the rows of each head from HF's rotate-half layout to llama.cpp's interleaved pairs,
/// as `LlamaModel.permute` in llama.cpp's converter does: within a head of `hd` rows, new row
/// `2i + j` is old row `j·hd/2 + i`.
pub fn permute_rows(bytes: &[u8], n_heads: usize, row_bytes: usize) -> Vec<u8> {
    let rows = bytes.len() / row_bytes;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + j * half + i;
                let dst = h * hd + 2 * i + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Llama 3.1 rope frequency factors, as llama.cpp's converter computes them.
fn llama3_rope_factors(cfg: &HfConfig, factor: f64, low: f64, high: f64, old_ctx: f64) -> Vec<f32> {
    let dim = cfg.head_dim;
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / (cfg.rope_theta as f32).powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

pub(crate) fn tensor_type(dt: Dtype) -> TensorType {
    match dt {
        Dtype::F32 => TensorType::F32,
        Dtype::F16 => TensorType::F16,
        Dtype::BF16 => TensorType::BF16,
    }
}

/// f32 values → little-endian bytes of `ty` (F32, F16 or BF16); counts F16 overflows.
pub(crate) fn encode(values: &[f32], ty: TensorType, overflow: &mut u64) -> Vec<u8> {
    match ty {
        TensorType::F16 => {
            let mut out = Vec::with_capacity(values.len() * 2);
            for &v in values {
                let h = f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    *overflow += 1;
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            out
        }
        TensorType::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A scratch file for converted tensors, removed when dropped (also used by [`crate::merge`]).
pub(crate) struct Spill {
    tmp: tempfile::NamedTempFile,
    w: BufWriter<File>,
    pos: u64,
}

impl Spill {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(".delrec-convert-")
            .suffix(".scratch")
            .tempfile_in(dir)
            .map_err(|e| ConvertError::io(dir, e))?;
        let f = tmp.as_file().try_clone().map_err(|e| ConvertError::io(tmp.path(), e))?;
        Ok(Spill { w: BufWriter::with_capacity(1 << 20, f), tmp, pos: 0 })
    }

    pub(crate) fn write(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| ConvertError::io(self.tmp.path(), e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Where the next write starts (pass it to [`range_from`](Self::range_from) afterwards).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn range_from(&self, start: u64) -> TensorData {
        TensorData::FileRange { path: self.tmp.path().to_path_buf(), offset: start, len: self.pos - start }
    }

    /// Converts `src` (elements of `dt`) to `ty` in chunks, appending to the scratch file.
    pub(crate) fn convert(&mut self, src: &[u8], dt: Dtype, ty: TensorType, overflow: &mut u64) -> Result<TensorData> {
        let start = self.pos;
        if tensor_type(dt) == ty {
            self.write(src)?;
        } else {
            for chunk in src.chunks((1 << 20) * dt.size()) {
                let b = encode(&decode_f32(chunk, dt), ty, overflow);
                self.write(&b)?;
            }
        }
        Ok(self.range_from(start))
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| ConvertError::io(self.tmp.path(), e))
    }
}

/// The parent directory of an output path (for temp files that must rename onto it).
pub(crate) fn out_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `w` to a temp file in `out_dir` (with a progress bar), to be checked and then
/// published by rename: nothing half-written ever appears at the output path.
pub(crate) fn write_staged(w: &GgufWriter, out_dir: &Path) -> Result<tempfile::NamedTempFile> {
    let stage = tempfile::Builder::new()
        .prefix(".delrec-convert-")
        .suffix(".gguf")
        .tempfile_in(out_dir)
        .map_err(|e| ConvertError::io(out_dir, e))?;
    let wb = progress::bytes_bar(0, "writing");
    w.write_atomic(stage.path(), &mut |done, total| {
        wb.set_length(total);
        wb.set_position(done);
    })?;
    wb.finish_and_clear();
    Ok(stage)
}

/// Gives a finished output the usual rw-r--r-- mode (temp files are created owner-only), then
/// renames it into place.
pub(crate) fn publish(tmp: tempfile::NamedTempFile, out: &Path) -> Result<()> {
    make_readable(tmp.path())?;
    tmp.persist(out).map_err(|e| ConvertError::io(out, e.error))?;
    Ok(())
}

pub(crate) fn make_readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ConvertError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Checks every tensor against the layout: presence, no extras, dtype, shape.
fn check_tensors(cfg: &HfConfig, set: &StSet, entries: &[Entry]) -> Result<()> {
    let wanted: BTreeSet<&str> = entries.iter().map(|e| e.hf.as_str()).collect();
    for e in entries {
        let t = set
            .tensors
            .get(&e.hf)
            .ok_or_else(|| ConvertError::MissingTensor { name: e.hf.clone(), source_desc: set.desc.clone() })?;
        t.float_dtype()?;
        if t.shape != e.shape {
            return Err(ConvertError::ShapeMismatch {
                name: e.hf.clone(),
                expected: e.shape.clone(),
                found: t.shape.clone(),
            });
        }
    }
    if let Some(extra) = set.tensors.keys().find(|n| !wanted.contains(n.as_str()) && !ignorable(n)) {
        return Err(ConvertError::UnexpectedTensor {
            name: extra.clone(),
            source_desc: set.desc.clone(),
            arch: cfg.arch.gguf_name().into(),
        });
    }
    Ok(())
}

/// Converts a checkpoint; see the module docs.
pub fn convert_model(opts: &ModelOptions) -> Result<ModelReport> {
    let dir = &opts.hf_dir;
    let cfg_path = dir.join("config.json");
    if cfg_path.is_file() && crate::t5::is_t5(&crate::error::read_json(&cfg_path)?) {
        return crate::t5::convert_t5(opts, &cfg_path);
    }
    let cfg = HfConfig::load(dir)?;
    let tok_json = dir.join("tokenizer.json");
    if !tok_json.is_file() {
        return Err(ConvertError::MissingTokenizer { dir: dir.clone() });
    }
    let vocab = TokenizerMeta::from_path(&tok_json, Some(cfg.vocab_size), Some(&cfg.json))?;
    let set = StSet::open_dir(dir)?;
    let entries = layout(&cfg, set.tensors.contains_key("lm_head.weight"));
    check_tensors(&cfg, &set, &entries)?;
    let lora = opts.lora.as_deref().map(Lora::load).transpose()?;
    if let Some(l) = &lora {
        for (base, p) in &l.pairs {
            let Some(e) = entries.iter().find(|e| &e.hf == base) else {
                return Err(ConvertError::Lora {
                    path: l.path.clone(),
                    reason: format!("it adapts {base}, which the model does not have"),
                });
            };
            if p.a.shape[1] != e.shape[1] || p.b.shape[0] != e.shape[0] {
                return Err(ConvertError::ShapeMismatch {
                    name: format!("LoRA for {base} (B·A)"),
                    expected: e.shape.clone(),
                    found: vec![p.b.shape[0], p.a.shape[1]],
                });
            }
        }
    }

    let arch = cfg.arch.gguf_name();
    let out_dir = out_dir(&opts.out);
    let quant = opts.outtype.quant_ftype();
    let mut w = GgufWriter::new();
    let name = opts.name.clone().unwrap_or_else(|| {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    w.set("general.architecture", Value::Str(arch.into()));
    w.set("general.name", Value::Str(name));
    let file_type = match opts.outtype {
        OutType::F32 => ftype::ALL_F32,
        OutType::Bf16 => ftype::MOSTLY_BF16,
        _ => ftype::MOSTLY_F16,
    };
    w.set("general.file_type", Value::U32(file_type));
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    w.set(&k("vocab_size"), u(cfg.vocab_size));
    w.set(&k("context_length"), u(cfg.context_length));
    w.set(&k("embedding_length"), u(cfg.hidden_size));
    w.set(&k("block_count"), u(cfg.n_layer));
    w.set(&k("feed_forward_length"), u(cfg.intermediate_size));
    w.set(&k("attention.head_count"), u(cfg.n_head));
    w.set(&k("attention.head_count_kv"), u(cfg.n_head_kv));
    w.set(&k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32));
    w.set(&k("rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    w.set(&k("rope.dimension_count"), u(cfg.head_dim));
    if cfg.head_dim * cfg.n_head != cfg.hidden_size {
        w.set(&k("attention.key_length"), u(cfg.head_dim));
        w.set(&k("attention.value_length"), u(cfg.head_dim));
    }
    if let RopeScaling::Linear { factor } = cfg.rope_scaling {
        w.set(&k("rope.scaling.type"), Value::Str("linear".into()));
        w.set(&k("rope.scaling.factor"), Value::F32(factor as f32));
    }
    vocab.write(&mut w);

    let mut spill = Spill::new(&out_dir)?;
    let mut overflow = 0u64;
    let mut lora_merged = 0usize;
    let pb = progress::bar(entries.len() as u64, "converting");
    for e in &entries {
        let t: &StTensor = &set.tensors[&e.hf];
        let src_dt = t.float_dtype()?;
        let merge = lora.as_ref().filter(|l| l.pairs.contains_key(&e.hf));
        let dst = if e.shape.len() == 1 {
            TensorType::F32
        } else {
            match opts.outtype {
                OutType::F32 => TensorType::F32,
                OutType::F16 => TensorType::F16,
                OutType::Bf16 => TensorType::BF16,
                // The quantizer's input keeps the checkpoint's precision (merged weights: F32).
                _ if merge.is_some() => TensorType::F32,
                _ => tensor_type(src_dt),
            }
        };
        let dims: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        let data = if let Some(l) = merge {
            let mut vals = t.to_f32()?;
            l.merge_into(&e.hf, &mut vals, e.shape[0], e.shape[1])?;
            lora_merged += 1;
            let mut bytes = encode(&vals, TensorType::F32, &mut overflow);
            if let Some(heads) = e.permute_heads {
                bytes = permute_rows(&bytes, heads, e.shape.get(1).copied().unwrap_or(1) * 4);
            }
            spill.convert(&bytes, Dtype::F32, dst, &mut overflow)?
        } else if let Some(heads) = e.permute_heads {
            let row_bytes = e.shape.get(1).copied().unwrap_or(1) * src_dt.size();
            let bytes = permute_rows(t.bytes(), heads, row_bytes);
            spill.convert(&bytes, src_dt, dst, &mut overflow)?
        } else if tensor_type(src_dt) == dst {
            TensorData::FileRange { path: t.path().to_path_buf(), offset: t.offset, len: t.len }
        } else {
            spill.convert(t.bytes(), src_dt, dst, &mut overflow)?
        };
        w.add_tensor(&e.gguf, &dims, dst, data)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } = cfg.rope_scaling {
        let f = llama3_rope_factors(&cfg, factor, low_freq_factor, high_freq_factor, original_context);
        let bytes = encode(&f, TensorType::F32, &mut overflow);
        w.add_tensor("rope_freqs.weight", &[f.len() as u64], TensorType::F32, TensorData::Owned(bytes))?;
    }
    spill.finish()?;

    // Write to a temp file beside the output; only a file llama.cpp accepted is renamed into place.
    let stage = write_staged(&w, &out_dir)?;
    drop(spill);
    let final_tmp = match quant {
        Some(ft) => {
            let q = tempfile::Builder::new()
                .prefix(".delrec-convert-")
                .suffix(".gguf")
                .tempfile_in(&out_dir)
                .map_err(|e| ConvertError::io(&out_dir, e))?;
            let sp = progress::spinner("quantizing");
            let r = llama::quantize(stage.path(), q.path(), ft, false, opts.threads);
            sp.finish_and_clear();
            r?;
            drop(stage);
            q
        }
        None => stage,
    };
    if opts.verify {
        llama::check_loads(final_tmp.path())?;
    }
    publish(final_tmp, &opts.out)?;
    let (types, n_tensors, bytes) = summarize(&opts.out)?;
    Ok(ModelReport {
        arch,
        out: opts.out.clone(),
        n_tensors,
        types,
        bytes,
        lora_merged,
        f16_overflow: overflow,
        tokenizer_pre: vocab.pre.clone(),
    })
}

/// Tensor counts by type, tensor count and size of a GGUF file.
pub fn summarize(path: &Path) -> Result<(BTreeMap<String, usize>, usize, u64)> {
    let f = GgufFile::open(path)?;
    let mut types = BTreeMap::new();
    for t in f.tensors() {
        *types.entry(type_name(t.ty)).or_insert(0) += 1;
    }
    Ok((types, f.tensors().len(), f.len()))
}

/// ggml's name for a tensor type, including those the runtime reader only knows by id (the
/// quantizer's fallbacks, e.g. Q5_0 for rows that are not a multiple of 256 in Q4_K_M).
pub fn type_name(ty: TensorType) -> String {
    match ty {
        TensorType::Other(id) => match id {
            6 => "Q5_0".into(),
            7 => "Q5_1".into(),
            9 => "Q8_1".into(),
            10 => "Q2_K".into(),
            11 => "Q3_K".into(),
            15 => "Q8_K".into(),
            16 => "IQ2_XXS".into(),
            17 => "IQ2_XS".into(),
            18 => "IQ3_XXS".into(),
            19 => "IQ1_S".into(),
            20 => "IQ4_NL".into(),
            21 => "IQ3_S".into(),
            22 => "IQ2_S".into(),
            23 => "IQ4_XS".into(),
            27 => "I64".into(),
            28 => "F64".into(),
            29 => "IQ1_M".into(),
            _ => ty.name(),
        },
        _ => ty.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_llama_cpp_converter() {
        // 2 heads of 4 rows, 1 byte per row: within each head rows [a0 a1 b0 b1] → [a0 b0 a1 b1].
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 2, 1), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // head_dim 6: [0 1 2 | 3 4 5] → [0 3 1 4 2 5]
        let rows: Vec<u8> = (0..6).collect();
        assert_eq!(permute_rows(&rows, 1, 1), vec![0, 3, 1, 4, 2, 5]);
        // Rows move whole.
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 1, 2), vec![0, 1, 4, 5, 2, 3, 6, 7]);
    }

    #[test]
    fn encodes_and_counts_overflow() {
        let mut o = 0;
        let b = encode(&[1.0, 1e6, -2.5], TensorType::F16, &mut o);
        assert_eq!(o, 1);
        assert_eq!(decode_f32(&b, Dtype::F16)[2], -2.5);
        let b = encode(&[1.5, -3.0], TensorType::BF16, &mut o);
        assert_eq!(decode_f32(&b, Dtype::BF16), vec![1.5, -3.0]);
    }
}
