//! The test-data builders of the Rust code: tiny HF checkpoints, byte-level BPE tokenizers and
//! PEFT adapters for this crate's tests and for `tests/` (these panic on I/O failure: test support
//! only), and the benchmark fixtures of `delrec-bench` (a generated movie-like catalog, a random
//! soft prompt, random-weight checkpoints of real model shapes with a BPE tokenizer trained on the
//! catalog), which return errors instead, since the bench calls them outside tests.
//!
//! `tests/fixtures/make_fixtures.py` stays the independent Python generator of the fixtures the
//! numpy reference reads; nothing here has to match it byte for byte.

use std::collections::BTreeMap;
use std::io::{self, Write};
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

/// (group, out, in) of a LoRA-adaptable module of `spec` (`q_proj`, ..., `down_proj`).
fn module_shape(spec: &TinySpec, m: &str) -> (&'static str, usize, usize) {
    let (h, hd, ff) = (spec.hidden, spec.head_dim(), spec.ff);
    match m {
        "q_proj" => ("self_attn", spec.heads * hd, h),
        "k_proj" | "v_proj" => ("self_attn", spec.kv_heads * hd, h),
        "o_proj" => ("self_attn", h, spec.heads * hd),
        "gate_proj" | "up_proj" => ("mlp", ff, h),
        _ => ("mlp", h, ff),
    }
}

/// A PEFT LoRA adapter on `modules` (e.g. `q_proj`, `down_proj`) of every layer of `spec`.
pub fn write_lora_adapter(dir: &Path, spec: &TinySpec, r: usize, alpha: f64, modules: &[&str], seed: u64) -> Floats {
    write_lora_adapter_with(dir, spec, &LoraCfg::new(r, alpha), modules, seed)
}

/// adapter_config.json settings of [`write_lora_adapter_with`] beyond r and alpha.
#[derive(Clone, Debug)]
pub struct LoraCfg {
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
    /// Written verbatim as `rank_pattern` / `alpha_pattern` (PEFT: key → value).
    pub rank_pattern: J,
    pub alpha_pattern: J,
    /// The rank each (layer, module) gets in the tensors, where it is not `r`: the test states
    /// what the patterns mean, so the reader's pattern matching is checked, not reused.
    pub ranks: Vec<((usize, &'static str), usize)>,
}

impl LoraCfg {
    pub fn new(r: usize, alpha: f64) -> Self {
        LoraCfg { r, alpha, rslora: false, rank_pattern: json!({}), alpha_pattern: json!({}), ranks: Vec::new() }
    }

    pub fn rank_of(&self, layer: usize, module: &str) -> usize {
        self.ranks.iter().find(|((l, m), _)| *l == layer && *m == module).map_or(self.r, |(_, r)| *r)
    }
}

/// A PEFT LoRA adapter with the settings of `cfg` on `modules` of every layer of `spec`.
pub fn write_lora_adapter_with(dir: &Path, spec: &TinySpec, cfg: &LoraCfg, modules: &[&str], seed: u64) -> Floats {
    std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder, panics on I/O by design
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "target_modules": modules,
                "use_rslora": cfg.rslora, "rank_pattern": cfg.rank_pattern, "alpha_pattern": cfg.alpha_pattern,
                "fan_in_fan_out": false, "bias": "none", "task_type": "CAUSAL_LM", "use_dora": false,
                "lora_bias": false, "layer_replication": null, "modules_to_save": null}),
    );
    let mut rng = Rng(seed);
    let mut t = Floats::new();
    for i in 0..spec.layers {
        for m in modules {
            let (group, out, inp) = module_shape(spec, m);
            let r = cfg.rank_of(i, m);
            let p = format!("base_model.model.model.layers.{i}.{group}.{m}.");
            t.insert(format!("{p}lora_A.weight"), (Dtype::F32, vec![r, inp], rng.vec(r * inp, 0.5)));
            t.insert(format!("{p}lora_B.weight"), (Dtype::F32, vec![out, r], rng.vec(out * r, 0.5)));
        }
    }
    write_floats(&dir.join("adapter_model.safetensors"), &t);
    t
}

/// A PEFT AdaLoRA adapter as `save_pretrained` leaves it after rank allocation: on `modules` of
/// every layer of `spec`, `rank_pattern` holding `init_r` booleans per module (key
/// `model.layers.N.GROUP.MODULE.lora_E`), and the tensors `….lora_A` `[k, in]`, `lora_B`
/// `[out, k]`, `lora_E` `[k, 1]` (no `.weight`; E random and nonzero) cut to the k kept ranks:
/// `init_r`, or `kept` for the `(layer, module, kept)` in `pruned` (0: empty tensors).
pub fn write_adalora_adapter(
    dir: &Path,
    spec: &TinySpec,
    init_r: usize,
    alpha: f64,
    modules: &[&str],
    pruned: &[(usize, &str, usize)],
    seed: u64,
) -> Floats {
    std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder, panics on I/O by design
    let mut rng = Rng(seed);
    let mut t = Floats::new();
    let mut pattern = serde_json::Map::new();
    for i in 0..spec.layers {
        for m in modules {
            let (group, out, inp) = module_shape(spec, m);
            let k = pruned.iter().find(|(l, pm, _)| *l == i && pm == m).map_or(init_r, |p| p.2.min(init_r));
            // Which of the init_r ranks survive: k of them, spread by the generator.
            let mut keep = vec![false; init_r];
            let mut left = k;
            while left > 0 {
                let j = ((rng.uniform() + 1.0) * 0.5 * init_r as f32) as usize % init_r;
                if !keep[j] {
                    keep[j] = true;
                    left -= 1;
                }
            }
            pattern.insert(format!("model.layers.{i}.{group}.{m}.lora_E"), json!(keep));
            let p = format!("base_model.model.model.layers.{i}.{group}.{m}.");
            t.insert(format!("{p}lora_A"), (Dtype::F32, vec![k, inp], rng.vec(k * inp, 0.5)));
            t.insert(format!("{p}lora_B"), (Dtype::F32, vec![out, k], rng.vec(out * k, 0.5)));
            let e: Vec<f32> = rng.vec(k, 1.0).into_iter().map(|x| if x < 0.0 { x - 0.25 } else { x + 0.25 }).collect();
            t.insert(format!("{p}lora_E"), (Dtype::F32, vec![k, 1], e));
        }
    }
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "ADALORA", "init_r": init_r, "target_r": init_r.div_ceil(2), "r": 8,
                "lora_alpha": alpha, "target_modules": modules, "rank_pattern": pattern,
                "tinit": 0, "tfinal": 0, "deltaT": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5,
                "total_step": 100, "fan_in_fan_out": false, "bias": "none", "task_type": "CAUSAL_LM",
                "use_rslora": false, "use_dora": false, "modules_to_save": null}),
    );
    write_floats(&dir.join("adapter_model.safetensors"), &t);
    t
}

// ------------------------------------------------------------------------------------------------
// Benchmark fixtures (`delrec-bench`): a movie-like catalog, a random soft prompt, random-weight
// checkpoints of real model shapes. They return errors (the bench calls them outside tests) and
// stream the weights to disk (a Qwen2.5-0.5B-shaped F16 model is ~1 GB).

/// SplitMix64, the bench fixtures' generator: small, fast and well mixed.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

/// The SplitMix64 output function (also used to derive independent streams from a seed).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// A uniformly chosen element (`None` for an empty slice).
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        xs.get(self.below(xs.len()))
    }

    /// Two independent standard normal values (Box–Muller on 24-bit uniforms; |z| < 5.8).
    pub fn normal_pair(&mut self) -> (f32, f32) {
        let a = self.next_u64();
        let scale = 1.0 / (1u32 << 24) as f32;
        let u1 = ((a >> 40) as f32 + 1.0) * scale; // (0, 1]
        let u2 = (a & 0xFF_FFFF) as f32 * scale; // [0, 1)
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }
}

/// The words of generated titles.
pub const MOVIE_WORDS: &str = "silent river night city king queen shadow dark light love war star last first lost \
blue red golden black white summer winter spring autumn storm fire ice stone iron glass paper moon sun heart mind \
dream ghost angel devil hunter runner killer stranger lady man woman boy girl child family brother sister father \
mother house road street bridge island ocean sea mountain desert forest garden valley river lake harbor station \
hotel palace prison school hospital church secret hidden broken wild lonely crazy deadly perfect great little big \
long short high low time day morning evening midnight tomorrow yesterday forever story tale legend song dance game \
party wedding funeral journey return escape revenge promise kiss touch voice letter crime justice law money gold \
diamond treasure empire kingdom republic nation army soldier captain doctor professor detective agent spy pilot \
sailor cowboy outlaw sheriff judge american french english italian german russian chinese mexican african western \
eastern northern southern space planet alien robot machine future past dead living fast furious sweet bitter cold \
hot strange curious dangerous beautiful ugly good bad happy sad";
const SEQUELS: [&str; 7] = ["II", "III", "2", "3", "Part II", "Returns", "Reloaded"];
/// Size and seed of the bench catalog (the tokenizer of random models is trained on it).
pub const CATALOG_SIZE: usize = 1682;
pub const CATALOG_SEED: u64 = 7;

fn movie_words() -> Vec<&'static str> {
    MOVIE_WORDS.split_whitespace().collect()
}

fn capitalized(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// `n` distinct generated movie-like titles ("Silent River (1994)"; no MovieLens data),
/// deterministic for a seed: 1–4 capitalized words (weights 3:5:3:1), sometimes "The …" or
/// "… of the …", a sequel mark, a subtitle, and a year in 1922–1998.
pub fn movie_titles(n: usize, seed: u64) -> Vec<String> {
    let words = movie_words();
    let mut rng = SplitMix(seed);
    let word = |rng: &mut SplitMix| rng.pick(&words).map(|w| capitalized(w)).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = match rng.below(12) {
            0..=2 => 1,
            3..=7 => 2,
            8..=10 => 3,
            _ => 4,
        };
        let mut ws: Vec<String> = (0..k).map(|_| word(&mut rng)).collect();
        let r = rng.unit();
        if r < 0.12 {
            ws.insert(0, "The".into());
        } else if r < 0.16 {
            ws.extend(["of".into(), "the".into(), word(&mut rng)]);
        }
        if rng.unit() < 0.05 {
            ws.extend(rng.pick(&SEQUELS).map(|s| s.to_string()));
        }
        let mut title = ws.join(" ");
        if rng.unit() < 0.06 {
            let m = rng.range(1, 3);
            let sub: Vec<String> = (0..m).map(|_| word(&mut rng)).collect();
            title.push_str(": ");
            title.push_str(&sub.join(" "));
        }
        title.push_str(&format!(" ({})", rng.range(1922, 1998)));
        if seen.insert(title.clone()) {
            out.push(title);
        }
    }
    out
}

/// `path` with `.tmp` appended (written, then renamed onto `path`).
fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    s.into()
}

/// Runs `write` on a temp file beside `path`, then renames it into place (removed on failure).
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = tmp_path(path);
    let r = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write_json_file(path: &Path, v: &J) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    write_atomic(path, |tmp| std::fs::write(tmp, text))
}

/// A catalog CSV (`id,title`; ids `i0001`, `i0002`, …) of `titles`.
pub fn write_catalog_csv(path: &Path, titles: &[String]) -> io::Result<()> {
    write_atomic(path, |tmp| {
        let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_path(tmp)?;
        w.write_record(["id", "title"])?;
        for (i, t) in titles.iter().enumerate() {
            w.write_record([format!("i{:04}", i + 1).as_str(), t.as_str()])?;
        }
        w.flush()
    })
}

/// The bench catalog: [`movie_titles`]`(n, seed)` as a CSV.
pub fn write_movie_catalog(path: &Path, n: usize, seed: u64) -> io::Result<()> {
    write_catalog_csv(path, &movie_titles(n, seed))
}

/// One tensor of random values `mean + std · N(0, 1)`, for [`write_random_safetensors`].
#[derive(Clone, Debug)]
pub struct RandomTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub mean: f32,
    pub std: f32,
}

/// Values per independently seeded chunk: the output depends on the seed only, not on threads.
const CHUNK: usize = 1 << 20;

fn random_chunk(t: &RandomTensor, seed: u64, chunk: usize, n: usize) -> Vec<u8> {
    let len = CHUNK.min(n.saturating_sub(chunk * CHUNK));
    let mut rng = SplitMix(mix64(seed ^ mix64(chunk as u64)));
    let mut v = Vec::with_capacity(len + 1);
    while v.len() < len {
        let (a, b) = rng.normal_pair();
        v.push(t.mean + t.std * a);
        v.push(t.mean + t.std * b);
    }
    v.truncate(len);
    match t.dtype {
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => {
            use half::slice::HalfFloatSliceExt;
            let mut h = vec![half::f16::ZERO; len];
            h.convert_from_f32_slice(&v);
            h.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
    }
}

fn write_random_tensor(out: &mut impl Write, t: &RandomTensor, seed: u64, threads: usize) -> io::Result<()> {
    let n: usize = t.shape.iter().product();
    let n_chunks = n.div_ceil(CHUNK);
    let mut c0 = 0;
    while c0 < n_chunks {
        let c1 = (c0 + threads.max(1)).min(n_chunks);
        let parts: Vec<Vec<u8>> = if c1 - c0 == 1 {
            vec![random_chunk(t, seed, c0, n)]
        } else {
            std::thread::scope(|s| {
                let hs: Vec<_> = (c0..c1).map(|c| s.spawn(move || random_chunk(t, seed, c, n))).collect();
                hs.into_iter()
                    .map(|h| h.join().map_err(|_| io::Error::other("a weight generator thread panicked")))
                    .collect::<io::Result<Vec<_>>>()
            })?
        };
        for p in parts {
            out.write_all(&p)?;
        }
        c0 = c1;
    }
    Ok(())
}

/// Writes random tensors to a safetensors file one chunk at a time (memory stays at a few MiB per
/// thread whatever the size), deterministic for `seed`; the file appears complete or not at all.
pub fn write_random_safetensors(path: &Path, tensors: &[RandomTensor], seed: u64) -> io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for t in tensors {
        let n = t.shape.iter().product::<usize>() * t.dtype.size();
        let entry = json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [off, off + n]});
        if t.name == "__metadata__" || header.insert(t.name.clone(), entry).is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("tensor name {:?} repeated", t.name)));
        }
        off += n;
    }
    let mut h = serde_json::to_vec(&J::Object(header))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_atomic(path, |tmp| {
        let mut f = io::BufWriter::with_capacity(1 << 22, std::fs::File::create(tmp)?);
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        for (i, t) in tensors.iter().enumerate() {
            write_random_tensor(&mut f, t, mix64(seed ^ mix64(!(i as u64))), threads)?;
        }
        f.flush()
    })
}

/// A PEFT prompt-tuning adapter: `n_virtual` × `dim` F32 embeddings drawn from N(0, std²).
pub fn write_random_prompt_adapter(dir: &Path, n_virtual: usize, dim: usize, seed: u64, std: f32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_json_file(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": n_virtual,
                "token_dim": dim, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
                "inference_mode": true, "base_model_name_or_path": null}),
    )?;
    let t = RandomTensor {
        name: "prompt_embeddings".into(),
        dtype: Dtype::F32,
        shape: vec![n_virtual, dim],
        mean: 0.0,
        std,
    };
    write_random_safetensors(&dir.join("adapter_model.safetensors"), &[t], seed)
}

/// The special tokens of the trained tokenizers (ids 0, 1, 2), as in Qwen2's tokenizer.
pub const QWEN2_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Trains a byte-level BPE tokenizer on `corpus` with the Qwen2 pre-tokenizer (digits split one
/// by one) and writes `tokenizer.json` and a Qwen2-style `tokenizer_config.json` into `dir`.
/// At most `vocab_size` tokens (specials, the 256 byte tokens, then merges); returns how many.
pub fn train_qwen2_tokenizer(dir: &Path, corpus: &[String], vocab_size: usize) -> io::Result<usize> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

    std::fs::create_dir_all(dir)?;
    let split =
        Split::new(SplitPattern::Regex(crate::vocab::QWEN2_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(io::Error::other)?;
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()])));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    let specials: Vec<AddedToken> = QWEN2_SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, corpus.iter()).map_err(io::Error::other)?;
    let text = tok.to_string(true).map_err(io::Error::other)?;
    write_atomic(&dir.join("tokenizer.json"), |tmp| std::fs::write(tmp, text))?;
    let added: serde_json::Map<String, J> = QWEN2_SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true});
            (i.to_string(), v)
        })
        .collect();
    write_json_file(
        &dir.join("tokenizer_config.json"),
        &json!({
            "add_prefix_space": false, "bos_token": null, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "unk_token": null, "clean_up_tokenization_spaces": false, "model_max_length": 32768,
            "tokenizer_class": "Qwen2Tokenizer", "errors": "replace", "split_special_tokens": false,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "added_tokens_decoder": added,
        }),
    )?;
    Ok(tok.get_vocab_size(true))
}

/// `k` distinct indices in `0..n` (all of them when `k ≥ n`).
fn sample_indices(rng: &mut SplitMix, n: usize, k: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(k.min(n));
    while out.len() < k.min(n) {
        let i = rng.below(n);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The tokenizer corpus of random models: the bench catalog's titles and 3,000 more, in 3,000
/// bench-style prompts, one per line with a leading space, and 3,000 lines of random words.
pub fn movie_tokenizer_corpus(seed: u64) -> Vec<String> {
    let mut titles = movie_titles(CATALOG_SIZE, CATALOG_SEED);
    titles.extend(movie_titles(3000, mix64(seed)));
    let words = movie_words();
    let mut rng = SplitMix(mix64(!seed));
    let mut lines = Vec::with_capacity(3000 + titles.len() + 3000);
    for _ in 0..3000 {
        let watched: Vec<&str> =
            sample_indices(&mut rng, titles.len(), 5).into_iter().map(|i| titles[i].as_str()).collect();
        let next = rng.pick(&titles).map_or("", |s| s.as_str());
        lines.push(format!(
            "The user watched these movies in order: {}.\nRecommend the next movie: {next}\n",
            watched.join(", ")
        ));
    }
    lines.extend(titles.iter().map(|t| format!(" {t}")));
    for _ in 0..3000 {
        let k = rng.range(3, 12);
        let ws: Vec<&str> = (0..k).filter_map(|_| rng.pick(&words).copied()).collect();
        lines.push(format!("{}.", ws.join(" ")));
    }
    lines
}

/// The shape of a real model, for random-weight checkpoints ([`write_random_model`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomShape {
    pub name: &'static str,
    /// "llama" or "qwen2".
    pub arch: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ff: usize,
    /// The embedding rows (config `vocab_size`); the converter pads the tokenizer up to it.
    pub vocab: usize,
    pub tie: bool,
    pub rope_theta: f64,
}

impl RandomShape {
    /// The shapes [`named`](Self::named) knows.
    pub const NAMES: [&'static str; 3] = ["qwen2.5-0.5b", "smollm2-135m", "smollm2-360m"];

    pub fn named(name: &str) -> Option<Self> {
        let (arch, hidden, layers, heads, kv_heads, ff, vocab, rope_theta) = match name {
            "qwen2.5-0.5b" => ("qwen2", 896, 24, 14, 2, 4864, 151_936, 1_000_000.0),
            "smollm2-135m" => ("llama", 576, 30, 9, 3, 1536, 49_152, 100_000.0),
            "smollm2-360m" => ("llama", 960, 32, 15, 5, 2560, 49_152, 100_000.0),
            _ => return None,
        };
        let name = Self::NAMES.into_iter().find(|n| *n == name)?;
        Some(RandomShape { name, arch, hidden, layers, heads, kv_heads, ff, vocab, tie: true, rope_theta })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The HF `config.json` of the shape.
    pub fn config_json(&self) -> J {
        let mut cfg = json!({
            "hidden_act": "silu", "hidden_size": self.hidden, "intermediate_size": self.ff,
            "num_attention_heads": self.heads, "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads, "rms_norm_eps": 1e-6, "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie, "vocab_size": self.vocab, "max_position_embeddings": 32768,
            "torch_dtype": "float16", "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.02,
            "use_cache": true, "attention_dropout": 0.0, "rope_scaling": null, "transformers_version": "4.44.2",
        });
        let extra = if self.arch == "qwen2" {
            json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_window_layers": self.layers,
                   "sliding_window": 32768, "use_sliding_window": false})
        } else {
            json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": false,
                   "mlp_bias": false, "pretraining_tp": 1})
        };
        if let (Some(c), J::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        cfg
    }

    /// The checkpoint's tensors in file order: F16, N(0, 0.02²) weights and biases, norms
    /// 1 + N(0, 0.05²).
    pub fn tensors(&self) -> Vec<RandomTensor> {
        let (h, ff, v) = (self.hidden, self.ff, self.vocab);
        let (q, kv) = (self.heads * self.head_dim(), self.kv_heads * self.head_dim());
        let t = |name: String, shape: Vec<usize>, mean: f32, std: f32| RandomTensor {
            name,
            dtype: Dtype::F16,
            shape,
            mean,
            std,
        };
        let w = |name: String, shape: Vec<usize>| t(name, shape, 0.0, 0.02);
        let norm = |name: String| t(name, vec![h], 1.0, 0.05);
        let mut out = vec![w("model.embed_tokens.weight".into(), vec![v, h])];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}.");
            out.extend([
                norm(format!("{p}input_layernorm.weight")),
                w(format!("{p}self_attn.q_proj.weight"), vec![q, h]),
                w(format!("{p}self_attn.k_proj.weight"), vec![kv, h]),
                w(format!("{p}self_attn.v_proj.weight"), vec![kv, h]),
                w(format!("{p}self_attn.o_proj.weight"), vec![h, q]),
                norm(format!("{p}post_attention_layernorm.weight")),
                w(format!("{p}mlp.gate_proj.weight"), vec![ff, h]),
                w(format!("{p}mlp.up_proj.weight"), vec![ff, h]),
                w(format!("{p}mlp.down_proj.weight"), vec![h, ff]),
            ]);
            if self.arch == "qwen2" {
                for (x, n) in [("q", q), ("k", kv), ("v", kv)] {
                    out.push(w(format!("{p}self_attn.{x}_proj.bias"), vec![n]));
                }
            }
        }
        out.push(norm("model.norm.weight".into()));
        if !self.tie {
            out.push(w("lm_head.weight".into(), vec![v, h]));
        }
        out
    }
}

/// A random-weight HF checkpoint of `shape` in `dir`: `tokenizer.json` / `tokenizer_config.json`
/// ([`train_qwen2_tokenizer`] on [`movie_tokenizer_corpus`], at most `tokenizer_vocab` tokens),
/// `config.json`, and last `model.safetensors` (F16, streamed), so a directory whose
/// `model.safetensors` exists is complete. Deterministic for `seed`; returns the tokenizer's size.
pub fn write_random_model(dir: &Path, shape: &RandomShape, seed: u64, tokenizer_vocab: usize) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let n_tok = train_qwen2_tokenizer(dir, &movie_tokenizer_corpus(seed), tokenizer_vocab)?;
    if n_tok > shape.vocab {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the tokenizer has {n_tok} tokens, more than the vocabulary {}", shape.vocab),
        ));
    }
    let mut cfg = shape.config_json();
    if let Some(c) = cfg.as_object_mut() {
        c.insert(
            "delrec_bench".into(),
            json!({"shape": shape.name, "random_weights": true, "seed": seed, "tokenizer_tokens": n_tok}),
        );
    }
    write_json_file(&dir.join("config.json"), &cfg)?;
    write_random_safetensors(&dir.join("model.safetensors"), &shape.tensors(), seed)?;
    Ok(n_tok)
}

/// A random SASRec in RecBole's state-dict names (what `delrec-convert pack --seq-model` reads),
/// for `item_tokens` (row 0 is padding). Norm weights are away from 1 and biases non-zero, so a
/// mix-up of tensors shows in the scores.
pub fn random_sasrec(
    item_tokens: Vec<String>,
    hidden: usize,
    n_layers: usize,
    n_heads: usize,
    max_len: usize,
    seed: u64,
) -> crate::seq::SeqSource {
    let mut rng = Rng(seed);
    let mut tensors = std::collections::HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, rng: &mut Rng, scale: f32, center: f32| {
        let n = shape.iter().product();
        let v = rng.vec(n, scale).into_iter().map(|x| x + center).collect();
        tensors.insert(name, (shape, v));
    };
    let inner = 2 * hidden;
    put("item_embedding.weight".into(), vec![item_tokens.len(), hidden], &mut rng, 0.5, 0.0);
    put("position_embedding.weight".into(), vec![max_len, hidden], &mut rng, 0.5, 0.0);
    put("LayerNorm.weight".into(), vec![hidden], &mut rng, 0.2, 1.0);
    put("LayerNorm.bias".into(), vec![hidden], &mut rng, 0.1, 0.0);
    for i in 0..n_layers {
        let a = format!("trm_encoder.layer.{i}.multi_head_attention");
        let f = format!("trm_encoder.layer.{i}.feed_forward");
        for p in ["query", "key", "value", "dense"] {
            put(format!("{a}.{p}.weight"), vec![hidden, hidden], &mut rng, 0.4, 0.0);
            put(format!("{a}.{p}.bias"), vec![hidden], &mut rng, 0.1, 0.0);
        }
        put(format!("{f}.dense_1.weight"), vec![inner, hidden], &mut rng, 0.4, 0.0);
        put(format!("{f}.dense_1.bias"), vec![inner], &mut rng, 0.1, 0.0);
        put(format!("{f}.dense_2.weight"), vec![hidden, inner], &mut rng, 0.4, 0.0);
        put(format!("{f}.dense_2.bias"), vec![hidden], &mut rng, 0.1, 0.0);
        for p in [format!("{a}.LayerNorm"), format!("{f}.LayerNorm")] {
            put(format!("{p}.weight"), vec![hidden], &mut rng, 0.2, 1.0);
            put(format!("{p}.bias"), vec![hidden], &mut rng, 0.1, 0.0);
        }
    }
    crate::seq::SeqSource {
        tensors,
        config: crate::seq::SasrecConfig { n_layers, n_heads, hidden_act: "gelu".into(), layer_norm_eps: 1e-12 },
        item_tokens,
        item_source: None,
        item_pooling: None,
    }
}

/// The committed T5 tokenizer files (a real SentencePiece Unigram model, `tests/fixtures/t5-tokenizer`).
pub fn t5_tokenizer_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/t5-tokenizer")
}

/// A tiny T5 v1.1 checkpoint in HF's layout (810 tokens, 824 rows); `config` entries override
/// the defaults (e.g. `feed_forward_proj`, `tie_word_embeddings`). Returns its tensors.
pub fn write_t5(dir: &Path, config: &J, seed: u64) -> Floats {
    std::fs::create_dir_all(dir).expect("mkdir"); // ok: test fixture builder
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(t5_tokenizer_dir().join(f), dir.join(f)).expect("copy t5 tokenizer");
        // ok: test fixture builder
    }
    let mut cfg = json!({
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 32, "d_kv": 8,
        "num_heads": 4, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": 824,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0,
        "layer_norm_epsilon": 1e-6, "eos_token_id": 1, "pad_token_id": 0
    });
    for (k, v) in config.as_object().into_iter().flatten() {
        cfg[k] = v.clone();
    }
    write_json(&dir.join("config.json"), &cfg);
    let u = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
    let (d, inner, ff, v, nb, nh) = (
        u("d_model"),
        u("d_kv") * u("num_heads"),
        u("d_ff"),
        u("vocab_size"),
        u("relative_attention_num_buckets"),
        u("num_heads"),
    );
    let gated = cfg["feed_forward_proj"].as_str() != Some("relu");
    // Matrix values shrink with the width (√(32/d)), so that wide random shapes (benchmarks)
    // keep finite activations; the 32-wide fixtures are unchanged.
    let w = (32.0 / d.max(1) as f32).sqrt().min(1.0);
    let mut rng = Rng(seed);
    let mut t: Floats = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let scale = if shape.len() == 2 && scale < 1.0 { scale * w } else { scale };
        t.insert(name, (Dtype::F32, shape, rng.vec(n, scale)));
    };
    put("shared.weight".into(), vec![v, d], 1.0);
    for side in ["encoder", "decoder"] {
        for i in 0..u("num_layers") {
            let p = format!("{side}.block.{i}.layer.");
            let attns: &[(&str, bool)] = if side == "decoder" {
                &[("0.SelfAttention", i == 0), ("1.EncDecAttention", false)]
            } else {
                &[("0.SelfAttention", i == 0)]
            };
            for &(a, rel) in attns {
                for m in ["q", "k", "v"] {
                    put(format!("{p}{a}.{m}.weight"), vec![inner, d], 0.3);
                }
                put(format!("{p}{a}.o.weight"), vec![d, inner], 0.3);
                if rel {
                    put(format!("{p}{a}.relative_attention_bias.weight"), vec![nb, nh], 1.0);
                }
            }
            let f = attns.len();
            for l in 0..=f {
                put(format!("{p}{l}.layer_norm.weight"), vec![d], 1.0);
            }
            let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
            for w in wi {
                put(format!("{p}{f}.DenseReluDense.{w}.weight"), vec![ff, d], 0.3);
            }
            put(format!("{p}{f}.DenseReluDense.wo.weight"), vec![d, ff], 0.3);
        }
        put(format!("{side}.final_layer_norm.weight"), vec![d], 1.0);
    }
    if cfg["tie_word_embeddings"].as_bool() != Some(true) {
        put("lm_head.weight".into(), vec![v, d], 0.3);
    }
    write_floats(&dir.join("model.safetensors"), &t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{convert_model, ModelOptions, OutType};
    use crate::pack::{build_pack, BosChoice, PackOptions};

    #[test]
    fn movie_titles_are_distinct_and_deterministic() {
        let a = movie_titles(500, 7);
        assert_eq!(a.len(), 500);
        assert_eq!(a, movie_titles(500, 7));
        assert_ne!(a, movie_titles(500, 8));
        assert_eq!(a.iter().collect::<std::collections::HashSet<_>>().len(), 500);
        for t in &a {
            let year: usize = t[t.len() - 5..t.len() - 1].parse().unwrap();
            assert!((1922..=1998).contains(&year) && t.ends_with(')'), "{t}");
            assert!(t.starts_with(|c: char| c.is_ascii_uppercase()), "{t}");
        }
    }

    #[test]
    fn random_tensors_are_normal_and_independent_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let t = RandomTensor { name: "w".into(), dtype: Dtype::F32, shape: vec![3, CHUNK], mean: 1.0, std: 0.5 };
        let p = dir.path().join("a.safetensors");
        write_random_safetensors(&p, std::slice::from_ref(&t), 5).unwrap();
        let mut one = vec![];
        write_random_tensor(&mut one, &t, mix64(5 ^ mix64(!0)), 1).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.ends_with(&one), "the file holds what one thread generates");
        let v = crate::st::StSet::open_file(&p).unwrap().tensors["w"].to_f32().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 1e-3 && (var.sqrt() - 0.5).abs() < 1e-3, "mean {mean} std {}", var.sqrt());
        assert!(!dir.path().join("a.safetensors.tmp").exists());
    }

    /// A bench-style random checkpoint (a miniature shape) trains its tokenizer, converts, loads
    /// in llama.cpp and packs the generated catalog with a random soft prompt.
    #[test]
    fn random_model_converts_and_packs() {
        let dir = tempfile::tempdir().unwrap();
        for arch in ["qwen2", "llama"] {
            let shape = RandomShape {
                name: "mini",
                arch,
                hidden: 64,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                ff: 96,
                vocab: 3000,
                tie: arch == "qwen2",
                rope_theta: 1e6,
            };
            let hf = dir.path().join(arch);
            let n_tok = write_random_model(&hf, &shape, 13, 1500).unwrap();
            assert!((1000..=1500).contains(&n_tok), "{n_tok} tokens");
            let tok = tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
            let ids = tok.encode(" Silent River (1994)", false).unwrap();
            let toks = ids.get_tokens();
            assert!(toks.ends_with(&["1", "9", "9", "4", ")"].map(String::from)), "{toks:?}");
            assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
            if arch == "qwen2" {
                let again = dir.path().join("again");
                write_random_model(&again, &shape, 13, 1500).unwrap();
                for f in ["model.safetensors", "tokenizer.json", "config.json"] {
                    assert_eq!(std::fs::read(hf.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f}");
                }
            }
            let gguf = dir.path().join(format!("{arch}.f16.gguf"));
            let r = convert_model(&ModelOptions {
                hf_dir: hf.clone(),
                out: gguf.clone(),
                outtype: OutType::F16,
                lora: None,
                name: None,
                verify: true,
                threads: 0,
            })
            .unwrap();
            assert_eq!(r.tokenizer_pre, "qwen2");
            let catalog = dir.path().join("catalog.csv");
            write_movie_catalog(&catalog, 40, CATALOG_SEED).unwrap();
            let soft = dir.path().join(format!("soft-{arch}"));
            write_random_prompt_adapter(&soft, 8, shape.hidden, 11, 0.05).unwrap();
            let p = build_pack(&PackOptions {
                models: vec![gguf],
                tokenizer: Some(hf.join("tokenizer.json")),
                catalog,
                template: "{soft:default} Watched:{history}.\nNext:{candidate}\n".into(),
                soft_prompts: vec![("default".into(), soft)],
                item_prefix: " ".into(),
                history_separator: ",".into(),
                candidates_separator: ", ".into(),
                verbalizer: None,
                bos: BosChoice::Auto,
                max_history: None,
                scoring: delrec_format::pack::ScoringMode::Sum,
                soft_f16: false,
                name: None,
                out: dir.path().join(format!("{arch}.pack.gguf")),
                seq: None,
                fusion: None,
                adapter: None,
            })
            .unwrap();
            assert_eq!(p.n_items, 40);
            assert_eq!(p.soft_prompts, vec![("default".to_string(), 8)]);
        }
    }

    #[test]
    fn named_shapes() {
        for n in RandomShape::NAMES {
            let s = RandomShape::named(n).unwrap();
            assert_eq!(s.hidden % s.heads, 0);
            assert_eq!(s.config_json()["hidden_size"], s.hidden);
        }
        let q = RandomShape::named("qwen2.5-0.5b").unwrap();
        let params: usize = q.tensors().iter().map(|t| t.shape.iter().product::<usize>()).sum();
        assert_eq!(params, 494_032_768, "Qwen2.5-0.5B has 494M parameters (tied)");
        assert!(RandomShape::named("gpt2").is_none());
    }
}
