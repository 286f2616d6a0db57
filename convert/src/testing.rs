//! Builders of tiny inputs (HF checkpoints, byte-level BPE tokenizers, PEFT adapters) for this
//! crate's unit tests and for `tests/`. Test support only: helpers panic on I/O failure.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype as SDt, TensorView};
use serde_json::{json, Value as J};

use crate::st::Dtype;

/// The GPT-2 byte ↔ unicode map (printable stand-ins for every byte).
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).expect("valid char"); // ok: test fixture builder, panics on I/O by design
    }
    out
}

/// Number of tokens in [`tokenizer_json`]: 3 specials, 256 bytes, 5 merges.
pub const N_TOKENS: usize = 3 + 256 + 5;

/// A byte-level BPE `tokenizer.json`: 3 special tokens, 256 byte tokens and a few merges.
pub fn tokenizer_json(pre: J) -> J {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for (i, c) in byte_chars().iter().enumerate() {
        vocab.insert(c.to_string(), json!(3 + i));
    }
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")];
    for (i, (a, b)) in merges.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(3 + 256 + i));
    }
    let added: Vec<J> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        }
    })
}

pub fn gpt2_pre() -> J {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

pub fn qwen2_pre() -> J {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": crate::vocab::QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
}

/// One tensor to write, with raw bytes (any safetensors dtype).
pub struct RawTensor {
    pub name: String,
    pub dtype: SDt,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn float_bytes(dt: Dtype, v: &[f32]) -> (SDt, Vec<u8>) {
    match dt {
        Dtype::F32 => (SDt::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Dtype::F16 => (SDt::F16, v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
        Dtype::BF16 => (SDt::BF16, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
    }
}

pub fn write_raw(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("consistent test tensor"))) // ok: test fixture builder, panics on I/O by design
        .collect();
    let written = safetensors::serialize_to_file(views, None, path);
    written.expect("write test safetensors"); // ok: test fixture builder, panics on I/O by design
}

/// Float tensors: name → (dtype, shape, values).
pub type Floats = BTreeMap<String, (Dtype, Vec<usize>, Vec<f32>)>;

pub fn write_floats(path: &Path, tensors: &Floats) {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(n, (dt, shape, v))| {
            let (dtype, bytes) = float_bytes(*dt, v);
            RawTensor { name: n.clone(), dtype, shape: shape.clone(), bytes }
        })
        .collect();
    write_raw(path, &raw);
}

fn write_json(path: &Path, v: &J) {
    let text = serde_json::to_string_pretty(v).expect("json"); // ok: test fixture builder
    std::fs::write(path, text).expect("write test json"); // ok: test fixture builder
}

/// A small deterministic generator (uniform in [-1, 1)).
pub struct Rng(pub u64);

impl Rng {
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// A tiny llama or qwen2 checkpoint.
#[derive(Clone, Debug)]
pub struct TinySpec {
    /// "llama" or "qwen2".
    pub arch: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub ff: usize,
    /// Config vocab_size (≥ [`N_TOKENS`]; the rest is padding).
    pub vocab: usize,
    pub tie: bool,
    pub dtype: Dtype,
    /// 1: model.safetensors; more: shards with an index.
    pub shards: usize,
    pub seed: u64,
}

impl TinySpec {
    pub fn llama() -> Self {
        TinySpec {
            arch: "llama",
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            layers: 2,
            ff: 64,
            vocab: N_TOKENS + 8,
            tie: false,
            dtype: Dtype::F32,
            shards: 1,
            seed: 7,
        }
    }

    pub fn qwen2() -> Self {
        TinySpec { arch: "qwen2", tie: true, dtype: Dtype::BF16, shards: 2, seed: 11, ..Self::llama() }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn config_json(&self) -> J {
        let (archs, bias) = if self.arch == "qwen2" { ("Qwen2ForCausalLM", true) } else { ("LlamaForCausalLM", false) };
        json!({
            "architectures": [archs], "model_type": self.arch, "hidden_size": self.hidden,
            "intermediate_size": self.ff, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": self.tie,
            "hidden_act": "silu", "attention_bias": bias, "bos_token_id": 0, "eos_token_id": 0,
        })
    }

    /// The checkpoint's tensors (HF names and shapes).
    pub fn tensors(&self) -> Floats {
        let mut r = Rng(self.seed);
        let (h, hd, ff) = (self.hidden, self.head_dim(), self.ff);
        let (q, kv) = (self.heads * hd, self.kv_heads * hd);
        let dt = self.dtype;
        let mut t = Floats::new();
        let lin = |t: &mut Floats, name: String, out: usize, inp: usize, r: &mut Rng| {
            t.insert(name, (dt, vec![out, inp], r.vec(out * inp, 1.5 / (inp as f32).sqrt())));
        };
        t.insert("model.embed_tokens.weight".into(), (dt, vec![self.vocab, h], r.vec(self.vocab * h, 1.0)));
        for i in 0..self.layers {
            let p = format!("model.layers.{i}.");
            t.insert(
                format!("{p}input_layernorm.weight"),
                (dt, vec![h], r.vec(h, 0.1).iter().map(|x| 1.0 + x).collect()),
            );
            t.insert(
                format!("{p}post_attention_layernorm.weight"),
                (dt, vec![h], r.vec(h, 0.1).iter().map(|x| 1.0 + x).collect()),
            );
            lin(&mut t, format!("{p}self_attn.q_proj.weight"), q, h, &mut r);
            lin(&mut t, format!("{p}self_attn.k_proj.weight"), kv, h, &mut r);
            lin(&mut t, format!("{p}self_attn.v_proj.weight"), kv, h, &mut r);
            lin(&mut t, format!("{p}self_attn.o_proj.weight"), h, q, &mut r);
            lin(&mut t, format!("{p}mlp.gate_proj.weight"), ff, h, &mut r);
            lin(&mut t, format!("{p}mlp.up_proj.weight"), ff, h, &mut r);
            lin(&mut t, format!("{p}mlp.down_proj.weight"), h, ff, &mut r);
            if self.arch == "qwen2" {
                t.insert(format!("{p}self_attn.q_proj.bias"), (dt, vec![q], r.vec(q, 0.2)));
                t.insert(format!("{p}self_attn.k_proj.bias"), (dt, vec![kv], r.vec(kv, 0.2)));
                t.insert(format!("{p}self_attn.v_proj.bias"), (dt, vec![kv], r.vec(kv, 0.2)));
            }
        }
        t.insert("model.norm.weight".into(), (dt, vec![h], r.vec(h, 0.1).iter().map(|x| 1.0 + x).collect()));
        if !self.tie {
            lin(&mut t, "lm_head.weight".into(), self.vocab, h, &mut r);
        }
        t
    }

    /// Writes config.json, tokenizer.json, tokenizer_config.json and the weights into `dir`.
    pub fn write(&self, dir: &Path) {
        self.write_with(dir, &self.tensors());
    }

    /// Like [`write`](Self::write) with the given tensors (for corrupting a checkpoint).
    pub fn write_with(&self, dir: &Path, tensors: &Floats) {
        std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder, panics on I/O by design
        write_json(&dir.join("config.json"), &self.config_json());
        let pre = if self.arch == "qwen2" { qwen2_pre() } else { gpt2_pre() };
        write_json(&dir.join("tokenizer.json"), &tokenizer_json(pre));
        write_json(
            &dir.join("tokenizer_config.json"),
            &json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": false}),
        );
        if self.shards <= 1 {
            write_floats(&dir.join("model.safetensors"), tensors);
            return;
        }
        let names: Vec<&String> = tensors.keys().collect();
        let per = names.len().div_ceil(self.shards);
        let mut map = serde_json::Map::new();
        for (i, chunk) in names.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, self.shards);
            let part: Floats = chunk.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
            write_floats(&dir.join(&file), &part);
            for n in chunk {
                map.insert((*n).clone(), json!(file));
            }
        }
        write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {}, "weight_map": map}));
    }
}

/// A PEFT prompt-tuning adapter with `n` virtual tokens of width `dim`.
pub fn write_prompt_adapter(dir: &Path, n: usize, dim: usize, seed: u64) -> Vec<f32> {
    std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder, panics on I/O by design
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": n, "token_dim": dim, "num_transformer_submodules": 1}),
    );
    let v = Rng(seed).vec(n * dim, 1.0);
    let mut t = Floats::new();
    t.insert("prompt_embeddings".into(), (Dtype::F32, vec![n, dim], v.clone()));
    write_floats(&dir.join("adapter_model.safetensors"), &t);
    v
}

/// A PEFT LoRA adapter on `modules` (e.g. `q_proj`, `down_proj`) of every layer of `spec`.
pub fn write_lora_adapter(dir: &Path, spec: &TinySpec, r: usize, alpha: f64, modules: &[&str], seed: u64) -> Floats {
    std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder, panics on I/O by design
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": modules, "use_rslora": false,
                "fan_in_fan_out": false, "bias": "none", "task_type": "CAUSAL_LM"}),
    );
    let (h, hd, ff) = (spec.hidden, spec.head_dim(), spec.ff);
    let mut rng = Rng(seed);
    let mut t = Floats::new();
    for i in 0..spec.layers {
        for m in modules {
            let (group, out, inp) = match *m {
                "q_proj" => ("self_attn", spec.heads * hd, h),
                "k_proj" | "v_proj" => ("self_attn", spec.kv_heads * hd, h),
                "o_proj" => ("self_attn", h, spec.heads * hd),
                "gate_proj" | "up_proj" => ("mlp", ff, h),
                _ => ("mlp", h, ff),
            };
            let p = format!("base_model.model.model.layers.{i}.{group}.{m}.");
            t.insert(format!("{p}lora_A.weight"), (Dtype::F32, vec![r, inp], rng.vec(r * inp, 0.5)));
            t.insert(format!("{p}lora_B.weight"), (Dtype::F32, vec![out, r], rng.vec(out * r, 0.5)));
        }
    }
    write_floats(&dir.join("adapter_model.safetensors"), &t);
    t
}
