//! `delrec-convert model` for Hugging Face `T5ForConditionalGeneration` (T5, T5 v1.1, Flan-T5) →
//! a llama.cpp GGUF of architecture `t5`.
//!
//! Only variants llama.cpp computes exactly are converted: its graph (`models/t5.cpp`) picks the
//! FFN from the tensors present (a gate: GELU (tanh form, HF's `gelu_new`) gated; none: ReLU), uses
//! relative-position buckets with `max_distance` fixed at 128, and multiplies the decoder output
//! by `output` (or, without it, the token embedding) unscaled. HF's tied T5 (v1.0) scales the
//! decoder output by d_model^-0.5 before the tied head, so the converter writes that scale into an
//! explicit `output` tensor. Anything else is a typed error before any file is written.
//!
//! `--lora` merges a PEFT LoRA or AdaLoRA ([`crate::lora`]: scales, pruned ranks, patterns) into
//! the linear layers before they are written: encoder and decoder self-attention, the decoder's
//! cross attention (`EncDecAttention`), and the FFN. DELRec's `target_modules=["q", "v"]` thus
//! adapts all three attentions, as PEFT does.

use std::collections::BTreeSet;
use std::path::Path;

use delrec_format::gguf::{GgufWriter, TensorData, TensorType, Value};
use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};
use crate::llama::{self, ftype};
use crate::lora::Lora;
use crate::model::{
    encode, out_dir, publish, summarize, tensor_type, write_staged, ModelOptions, ModelReport, OutType, Spill,
};
use crate::progress;
use crate::st::{Dtype, StSet};
use crate::ugm::UgmMeta;

/// llama.cpp's fixed relative-attention `max_distance` (`llama_relative_position_bucket`).
pub const LLAMA_REL_MAX_DISTANCE: u64 = 128;

/// The FFN variants llama.cpp's t5 graph computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T5Ffn {
    /// T5 v1.1 / Flan-T5: `wo(gelu_new(wi_0 x) * wi_1 x)`.
    GatedGelu,
    /// Original T5: `wo(relu(wi x))`.
    Relu,
}

/// `config.json` of a T5 checkpoint, reduced to what the GGUF needs.
#[derive(Clone, Debug)]
pub struct T5Config {
    pub d_model: usize,
    pub d_kv: usize,
    pub n_head: usize,
    pub d_ff: usize,
    pub n_layer: usize,
    pub n_dec_layer: usize,
    pub n_buckets: usize,
    pub eps: f64,
    pub vocab_size: usize,
    pub context_length: usize,
    pub ffn: T5Ffn,
    pub tied: bool,
    pub decoder_start: u32,
}

/// Whether config.json describes a T5 encoder-decoder (so [`convert_t5`] handles it).
pub fn is_t5(json: &J) -> bool {
    let arch = json.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|a| a.as_str());
    arch == Some("T5ForConditionalGeneration")
        || (arch.is_none() && json.get("model_type").and_then(|m| m.as_str()) == Some("t5"))
}

impl T5Config {
    pub fn from_json(path: &Path, json: &J) -> Result<Self> {
        let bad = |reason: String| ConvertError::UnsupportedConfig { path: path.to_path_buf(), reason };
        let get = |k: &str| json.get(k).filter(|v| !v.is_null());
        let req = |k: &str| -> Result<usize> {
            let v = get(k).ok_or_else(|| ConvertError::json(path, format!("missing {k:?}")))?;
            v.as_u64()
                .filter(|&v| v > 0)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| ConvertError::json(path, format!("{k:?} is not a positive integer")))
        };
        let opt = |k: &str, d: usize| -> Result<usize> {
            if get(k).is_some() {
                req(k)
            } else {
                Ok(d)
            }
        };
        let arch = json.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first());
        if arch.is_some_and(|a| a.as_str() != Some("T5ForConditionalGeneration")) {
            return Err(ConvertError::UnknownArchitecture { found: show(arch.unwrap_or(&J::Null)) });
        }
        if get("is_encoder_decoder").and_then(|v| v.as_bool()) == Some(false) {
            return Err(bad("is_encoder_decoder = false: only the full encoder-decoder is converted".into()));
        }
        let proj = get("feed_forward_proj").and_then(|v| v.as_str()).unwrap_or("relu");
        let ffn = match proj {
            "gated-gelu" => T5Ffn::GatedGelu,
            "relu" => T5Ffn::Relu,
            other => {
                return Err(bad(format!(
                    "feed_forward_proj {other:?}: llama.cpp's t5 graph computes only \"gated-gelu\" (gelu_new) and \"relu\""
                )))
            }
        };
        // transformers derives dense_act_fn from feed_forward_proj; a config that says otherwise
        // was edited and the activation would not be what llama.cpp computes.
        let want_act = if ffn == T5Ffn::GatedGelu { "gelu_new" } else { "relu" };
        if let Some(act) = get("dense_act_fn").and_then(|v| v.as_str()) {
            if act != want_act {
                return Err(bad(format!(
                    "dense_act_fn {act:?} with feed_forward_proj {proj:?} (llama.cpp: {want_act})"
                )));
            }
        }
        let max_dist = get("relative_attention_max_distance").and_then(|v| v.as_u64()).unwrap_or(128);
        if max_dist != LLAMA_REL_MAX_DISTANCE {
            return Err(bad(format!(
                "relative_attention_max_distance {max_dist}: llama.cpp fixes it at {LLAMA_REL_MAX_DISTANCE}"
            )));
        }
        let n_buckets = opt("relative_attention_num_buckets", 32)?;
        // model_check refuses the bucket counts llama.cpp's formula indexes out of its table with.
        let range = delrec_format::model_check::T5_BUCKETS;
        if u32::try_from(n_buckets).map_or(true, |n| !range.contains(&n)) {
            return Err(bad(format!(
                "relative_attention_num_buckets {n_buckets} is outside {}..={} (llama.cpp's bucket formula)",
                range.start(),
                range.end()
            )));
        }
        let n_layer = req("num_layers")?;
        let n_dec_layer = opt("num_decoder_layers", n_layer)?;
        if n_dec_layer != n_layer {
            return Err(bad(format!(
                "num_decoder_layers {n_dec_layer} differs from num_layers {n_layer}: llama.cpp sizes the \
                 decoder's KV cache by the encoder's layer count"
            )));
        }
        let eps = match get("layer_norm_epsilon") {
            None => 1e-6,
            Some(v) => v
                .as_f64()
                .filter(|e| e.is_finite() && *e > 0.0)
                .ok_or_else(|| ConvertError::json(path, "\"layer_norm_epsilon\" is not a positive number"))?,
        };
        let tied = match get("tie_word_embeddings") {
            None => true, // T5Config's default
            Some(v) => {
                v.as_bool().ok_or_else(|| ConvertError::json(path, "\"tie_word_embeddings\" is not a boolean"))?
            }
        };
        let decoder_start = match get("decoder_start_token_id") {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| ConvertError::json(path, "\"decoder_start_token_id\" is not a token id"))?,
        };
        let vocab_size = req("vocab_size")?;
        if decoder_start as usize >= vocab_size {
            return Err(bad(format!("decoder_start_token_id {decoder_start} is outside vocab_size {vocab_size}")));
        }
        Ok(T5Config {
            d_model: req("d_model")?,
            d_kv: req("d_kv")?,
            n_head: req("num_heads")?,
            d_ff: req("d_ff")?,
            n_layer,
            n_dec_layer,
            n_buckets,
            eps,
            vocab_size,
            context_length: opt("n_positions", 512)?,
            ffn,
            tied,
            decoder_start,
        })
    }
}

fn show(v: &J) -> String {
    v.to_string()
}

/// One tensor: HF name, GGUF name, HF shape.
struct Entry {
    hf: String,
    gguf: String,
    shape: Vec<usize>,
}

fn layout(c: &T5Config) -> Vec<Entry> {
    let (d, inner, ff) = (c.d_model, c.d_kv * c.n_head, c.d_ff);
    let mut v = Vec::new();
    let mut e = |hf: String, gguf: String, shape: Vec<usize>| v.push(Entry { hf, gguf, shape });
    e("shared.weight".into(), "token_embd.weight".into(), vec![c.vocab_size, d]);
    for (side, n, hf_side) in [("enc", c.n_layer, "encoder"), ("dec", c.n_dec_layer, "decoder")] {
        for i in 0..n {
            let p = format!("{hf_side}.block.{i}.layer.");
            let b = format!("{side}.blk.{i}.");
            for (m, g) in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")] {
                e(format!("{p}0.SelfAttention.{m}.weight"), format!("{b}{g}.weight"), vec![inner, d]);
            }
            e(format!("{p}0.SelfAttention.o.weight"), format!("{b}attn_o.weight"), vec![d, inner]);
            if i == 0 {
                e(
                    format!("{p}0.SelfAttention.relative_attention_bias.weight"),
                    format!("{b}attn_rel_b.weight"),
                    vec![c.n_buckets, c.n_head],
                );
            }
            e(format!("{p}0.layer_norm.weight"), format!("{b}attn_norm.weight"), vec![d]);
            let ffn_layer = if side == "dec" {
                for (m, g) in [("q", "cross_attn_q"), ("k", "cross_attn_k"), ("v", "cross_attn_v")] {
                    e(format!("{p}1.EncDecAttention.{m}.weight"), format!("{b}{g}.weight"), vec![inner, d]);
                }
                e(format!("{p}1.EncDecAttention.o.weight"), format!("{b}cross_attn_o.weight"), vec![d, inner]);
                e(format!("{p}1.layer_norm.weight"), format!("{b}cross_attn_norm.weight"), vec![d]);
                2
            } else {
                1
            };
            let f = format!("{p}{ffn_layer}.DenseReluDense.");
            match c.ffn {
                T5Ffn::GatedGelu => {
                    e(format!("{f}wi_0.weight"), format!("{b}ffn_gate.weight"), vec![ff, d]);
                    e(format!("{f}wi_1.weight"), format!("{b}ffn_up.weight"), vec![ff, d]);
                }
                T5Ffn::Relu => e(format!("{f}wi.weight"), format!("{b}ffn_up.weight"), vec![ff, d]),
            }
            e(format!("{f}wo.weight"), format!("{b}ffn_down.weight"), vec![d, ff]);
            e(format!("{p}{ffn_layer}.layer_norm.weight"), format!("{b}ffn_norm.weight"), vec![d]);
        }
        e(format!("{hf_side}.final_layer_norm.weight"), format!("{side}.output_norm.weight"), vec![d]);
    }
    if !c.tied {
        e("lm_head.weight".into(), "output.weight".into(), vec![c.vocab_size, d]);
    }
    v
}

/// Copies of `shared.weight` that some checkpoints store (transformers ties them).
fn ignorable(name: &str, tied: bool) -> bool {
    matches!(name, "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight") || (tied && name == "lm_head.weight")
}

fn check_tensors(c: &T5Config, set: &StSet, entries: &[Entry]) -> Result<()> {
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
    for (name, t) in &set.tensors {
        if wanted.contains(name.as_str()) {
            continue;
        }
        if ignorable(name, c.tied) && t.shape == [c.vocab_size, c.d_model] {
            continue;
        }
        return Err(ConvertError::UnexpectedTensor {
            name: name.clone(),
            source_desc: set.desc.clone(),
            arch: "t5".into(),
        });
    }
    Ok(())
}

/// Every weight a LoRA adapts must be one of this checkpoint's linear layers (an FFN's `wi` in
/// a gated-GELU model, or a block past the last, is refused by name), with B·A of its shape.
/// T5's q/k are stored as trained (no rope permutation), so B needs no reordering.
fn check_lora(l: &Lora, entries: &[Entry]) -> Result<()> {
    for (base, p) in &l.pairs {
        let Some(e) = entries.iter().find(|e| &e.hf == base) else {
            return Err(ConvertError::Lora {
                path: l.path.clone(),
                reason: format!("it adapts {base}, which the T5 model does not have"),
            });
        };
        if e.shape.len() != 2 || p.a.shape[1] != e.shape[1] || p.b.shape[0] != e.shape[0] {
            return Err(ConvertError::ShapeMismatch {
                name: format!("LoRA for {base} (B·A)"),
                expected: e.shape.clone(),
                found: vec![p.b.shape[0], p.a.shape[1]],
            });
        }
    }
    Ok(())
}

/// Converts a T5 checkpoint, merging `opts.lora` (PEFT LoRA or AdaLoRA) into its linear layers
/// when given; see the module docs. Called by [`crate::model::convert_model`].
pub fn convert_t5(opts: &ModelOptions, cfg_path: &Path) -> Result<ModelReport> {
    let dir = &opts.hf_dir;
    let json = read_json(cfg_path)?;
    let cfg = T5Config::from_json(cfg_path, &json)?;
    let tok_json = dir.join("tokenizer.json");
    if !tok_json.is_file() {
        return Err(ConvertError::MissingTokenizer { dir: dir.clone() });
    }
    let vocab = UgmMeta::from_path(&tok_json, cfg.vocab_size)?;
    let set = StSet::open_dir(dir)?;
    let entries = layout(&cfg);
    check_tensors(&cfg, &set, &entries)?;
    let lora = opts.lora.as_deref().map(Lora::load).transpose()?;
    if let Some(l) = &lora {
        check_lora(l, &entries)?;
    }

    let arch = "t5";
    let out_dir = out_dir(&opts.out);
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
    w.set(&k("embedding_length"), u(cfg.d_model));
    w.set(&k("feed_forward_length"), u(cfg.d_ff));
    w.set(&k("block_count"), u(cfg.n_layer));
    w.set(&k("decoder_block_count"), u(cfg.n_dec_layer));
    w.set(&k("attention.head_count"), u(cfg.n_head));
    w.set(&k("attention.head_count_kv"), u(cfg.n_head));
    w.set(&k("attention.key_length"), u(cfg.d_kv));
    w.set(&k("attention.value_length"), u(cfg.d_kv));
    w.set(&k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.eps as f32));
    w.set(&k("attention.relative_buckets_count"), u(cfg.n_buckets));
    w.set(&k("decoder_start_token_id"), Value::U32(cfg.decoder_start));
    vocab.write(&mut w);

    let mut spill = Spill::new(&out_dir)?;
    let mut overflow = 0u64;
    let mut lora_merged = 0usize;
    let pb = progress::bar(entries.len() as u64 + cfg.tied as u64, "converting");
    let dst_of = |src: Dtype, shape: &[usize]| {
        if shape.len() == 1 || opts.outtype == OutType::F32 {
            TensorType::F32
        } else {
            match opts.outtype {
                OutType::F16 => TensorType::F16,
                OutType::Bf16 => TensorType::BF16,
                // The quantizer's input keeps the checkpoint's precision.
                _ => tensor_type(src),
            }
        }
    };
    for e in &entries {
        let t = &set.tensors[&e.hf];
        let src_dt = t.float_dtype()?;
        let merge = lora.as_ref().filter(|l| l.pairs.contains_key(&e.hf));
        // Merged weights are F32 sums; the quantizer takes them at that precision.
        let src_dt = if merge.is_some() { Dtype::F32 } else { src_dt };
        // llama.cpp's ggml_add of the position bias is F32; its rows are read per head.
        let dst = if e.gguf.ends_with("attn_rel_b.weight") { TensorType::F32 } else { dst_of(src_dt, &e.shape) };
        let dims: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        let data = if let Some(l) = merge {
            let mut vals = t.to_f32()?;
            l.merge_into(&e.hf, &mut vals, e.shape[0], e.shape[1])?;
            lora_merged += 1;
            spill.convert(&encode(&vals, TensorType::F32, &mut overflow), Dtype::F32, dst, &mut overflow)?
        } else if tensor_type(src_dt) == dst {
            TensorData::FileRange { path: t.path().to_path_buf(), offset: t.offset, len: t.len }
        } else {
            spill.convert(t.bytes(), src_dt, dst, &mut overflow)?
        };
        w.add_tensor(&e.gguf, &dims, dst, data)?;
        pb.inc(1);
    }
    if cfg.tied {
        // HF: lm_logits = lm_head(decoder_output * d_model^-0.5) with lm_head = shared.
        let t = &set.tensors["shared.weight"];
        let scale = (cfg.d_model as f32).powf(-0.5);
        let vals: Vec<f32> = t.to_f32()?.into_iter().map(|v| v * scale).collect();
        let shape = [cfg.vocab_size, cfg.d_model];
        let dst = dst_of(Dtype::F32, &shape);
        let start = spill.pos();
        spill.write(&encode(&vals, dst, &mut overflow))?;
        let dims = [cfg.d_model as u64, cfg.vocab_size as u64];
        w.add_tensor("output.weight", &dims, dst, spill.range_from(start))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    spill.finish()?;

    let stage = write_staged(&w, &out_dir)?;
    drop(spill);
    let final_tmp = match opts.outtype.quant_ftype() {
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
        tokenizer_pre: "t5 (unigram)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> J {
        serde_json::json!({
            "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 64, "d_kv": 16,
            "num_heads": 4, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": 100,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0
        })
    }

    fn with(k: &str, v: J) -> J {
        let mut j = base();
        j[k] = v;
        j
    }

    #[test]
    fn reads_flan_t5_and_refuses_what_llama_cpp_cannot_compute() {
        let p = Path::new("config.json");
        let c = T5Config::from_json(p, &base()).unwrap();
        assert_eq!((c.ffn, c.tied, c.n_buckets, c.context_length), (T5Ffn::GatedGelu, false, 32, 512));
        let c = T5Config::from_json(p, &with("feed_forward_proj", "relu".into())).unwrap();
        assert_eq!(c.ffn, T5Ffn::Relu);
        // T5Config ties by default.
        let mut j = base();
        j.as_object_mut().unwrap().remove("tie_word_embeddings");
        assert!(T5Config::from_json(p, &j).unwrap().tied);
        for (k, v) in [
            ("feed_forward_proj", J::from("gated-silu")),
            ("feed_forward_proj", J::from("gelu")),
            ("relative_attention_max_distance", J::from(256)),
            ("num_decoder_layers", J::from(3)),
            ("decoder_start_token_id", J::from(100)),
            ("relative_attention_num_buckets", J::from(2)),
            ("relative_attention_num_buckets", J::from(256)),
            ("dense_act_fn", J::from("gelu")),
        ] {
            let e = T5Config::from_json(p, &with(k, v.clone()));
            assert!(matches!(e, Err(ConvertError::UnsupportedConfig { .. })), "{k} = {v}: {e:?}");
        }
        let e = T5Config::from_json(p, &with("d_model", "x".into()));
        assert!(matches!(e, Err(ConvertError::BadJson { .. })));
    }
}
