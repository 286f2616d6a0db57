//! Is a model GGUF safe to hand to llama.cpp? llama.cpp aborts the process (`GGML_ASSERT`,
//! SIGABRT, some SIGSEGV, C++ exceptions thrown through its C API) on many hostile model files
//! instead of returning an error: layer counts out of range, expert counts without experts,
//! unknown rope-scaling types, non-finite norm epsilons, a tensor retyped to another type of the
//! same byte size, duplicate vocabulary strings, head counts that do not divide, a T5 charsmap
//! whose trie points outside itself. [`check_model`] proves, for an allowlist of architectures
//! ([`ARCHITECTURES`]), that every hyperparameter llama.cpp reads for them is in range, that the
//! vocabulary (and for UGM tokenizers the precompiled charsmap) is well formed, and that the
//! tensors are exactly the set the architecture creates for those hyperparameters, each with the
//! shape llama.cpp expects and a type llama.cpp can use for that tensor, its bytes inside the file.
//!
//! The rules follow llama.cpp's loader (`llama-model.cpp` `load_hparams`, `models/llama.cpp`,
//! `models/qwen2.cpp`, `models/t5.cpp`, `llama-vocab.cpp`, `llama-graph.cpp`), in the version the
//! runtime links; they are stricter where llama.cpp would only warn (special token ids outside
//! the vocabulary) and where it would throw later (unused tensors, wrongly typed keys), so the
//! error is early and names the culprit.
//! What is not checked: the values of the weights (a NaN weight gives NaN scores, not a crash),
//! and a matrix retyped to another usable type of the same block size (F16 ↔ BF16, Q4_0 ↔
//! IQ4_NL): llama.cpp computes with it without crashing, and only the pack's digest pin catches it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use crate::error::{bad_file, Result};
use crate::gguf::{Array, GgufFile, TensorInfo, Value};

/// The architectures whose files [`check_model`] can prove safe.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "t5"];
/// llama.cpp's `LLAMA_MAX_LAYERS`.
pub const MAX_LAYERS: u64 = 512;
/// Tokenizer models accepted (`tokenizer.ggml.model`): BPE (`gpt2`), SentencePiece (`llama`) and
/// SentencePiece Unigram (`t5`, llama.cpp's UGM).
pub const TOKENIZER_MODELS: &[&str] = &["gpt2", "llama", "t5"];
/// T5 relative-attention bucket counts llama.cpp computes in range. Its bucket formula
/// (`llama_relative_position_bucket`, max_distance fixed at 128) divides by
/// ln(128 / (buckets / 2)) in the decoder: below 4 that is ln(128 / 0) (NaN buckets), from 256 on
/// the divisor is 0 or negative and buckets go negative; `get_rows` asserts on either.
pub const T5_BUCKETS: std::ops::RangeInclusive<u32> = 4..=255;
/// Longest UGM token accepted (bytes). llama.cpp builds its token matcher (`naive_trie`) one
/// recursive level per byte; SentencePiece pieces are at most a few dozen bytes.
pub const MAX_UGM_TOKEN_BYTES: usize = 4096;
/// Largest `tokenizer.ggml.precompiled_charsmap` accepted: proving its trie safe visits every
/// reachable node 255 times (real SentencePiece charsmaps are about 240 KB).
pub const MAX_CHARSMAP_BYTES: usize = 4 << 20;
/// `rope.scaling.type` values llama.cpp knows (`LLAMA_ROPE_SCALING_TYPES`); any other asserts.
pub const ROPE_SCALING_TYPES: &[&str] = &["none", "linear", "yarn", "longrope"];
/// BPE pre-tokenizers llama.cpp knows (`llama-vocab.cpp`); any other throws.
pub const PRE_TOKENIZERS: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "mmbert",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "kimi-k2",
    "ufakzeka",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
];
/// Special token id keys llama.cpp reads (`llama-vocab.cpp`); each must lie inside the vocabulary.
pub const SPECIAL_TOKEN_KEYS: &[&str] = &[
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.cls_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.fim_mid_token_id",
    "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id",
    "tokenizer.ggml.prefix_token_id",
    "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.middle_token_id",
];
const BOOL_KEYS: &[&str] = &[
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.remove_extra_whitespaces",
];
/// llama.cpp's `LLAMA_TOKEN_TYPE_BYTE`: such a token's text is `<0xXX>`.
const TOKEN_TYPE_BYTE: i32 = 6;

/// What the check established about a model (all in llama.cpp's terms).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFacts {
    pub architecture: String,
    /// Layers (the encoder's for an encoder-decoder; its decoder has as many, see [`Seq2SeqFacts`]).
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// Per-head width of keys (= values; = rotary dimensions for llama and qwen2).
    pub head_dim: u32,
    pub n_ctx_train: u32,
    pub n_vocab: u32,
    pub rms_eps: f32,
    pub tokenizer_model: String,
    /// No `output.weight`: the output projection is the token embedding.
    pub tied_output: bool,
    /// What only an encoder-decoder (t5) has; `None` for decoder-only models.
    pub seq2seq: Option<Seq2SeqFacts>,
}

/// The encoder-decoder part of [`ModelFacts`].
#[derive(Clone, Debug, PartialEq)]
pub struct Seq2SeqFacts {
    /// Decoder layers (equal to the encoder's: llama.cpp keeps one layer array and one KV cache
    /// sized by the encoder's count).
    pub n_dec_layer: u32,
    /// Relative-attention position buckets.
    pub n_rel_attn_bkts: u32,
    /// `decoder_start_token_id`, inside the vocabulary when present.
    pub decoder_start_token: Option<u32>,
}

/// A ggml tensor type: name, elements per block, bytes per block (`ggml.c` `type_traits`).
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        40 => ("NVFP4", 64, 36),
        41 => ("Q1_0", 128, 18),
        42 => ("Q2_0", 64, 18),
        _ => return None,
    })
}

/// Types a weight matrix (or the token embedding, read by `get_rows` and, when tied, used as the
/// output matrix) may have: what llama.cpp's quantizer and converters write for these
/// architectures and its CPU backend multiplies. Not the activation-only types (Q8_1, Q8_K),
/// integers, F64, nor the formats that need companion scale tensors or another architecture
/// (NVFP4, MXFP4, Q1_0, Q2_0).
const MATRIX_TYPES: &[u32] = &[0, 1, 30, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 34, 35];

#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Norm weights, biases, rope factors: llama.cpp adds/multiplies them as F32 (1-D tensors are
    /// never quantized); any other type of the same size (I32 for F32) aborts in the op.
    Vector,
    /// T5's relative-position bias: read by `get_rows` (F32, F16, BF16 rows become F32; llama.cpp's
    /// quantizer never quantizes it), then added to the attention scores.
    Table,
    Matrix,
}

/// The `get_rows` source types a [`Role::Table`] may have.
const TABLE_TYPES: &[u32] = &[0, 1, 30];

struct Expected {
    dims: Vec<u64>,
    role: Role,
    required: bool,
}

/// The tensors an architecture creates, by name.
type TensorSet = BTreeMap<String, Expected>;

fn expect(want: &mut TensorSet, name: String, dims: &[u64], role: Role, required: bool) {
    want.insert(name, Expected { dims: dims.to_vec(), role, required });
}

/// The hyperparameters every allowlisted architecture has (`llama_model_base::load_hparams`).
struct Hparams {
    n_layer: u32,
    n_ctx_train: u32,
    n_embd: u32,
    n_ff: u32,
    n_head: u32,
    n_head_kv: u32,
    head_k: u32,
    head_v: u32,
    n_rot: u32,
    rope_scaling: String,
    rms_eps: f32,
}

/// Checks a model GGUF as llama.cpp will read it; see the module documentation.
pub fn check_model(f: &GgufFile) -> Result<ModelFacts> {
    let bad = |reason: String| bad_file(f, reason);
    let arch = match f.get("general.architecture") {
        Some(Value::Str(s)) => s.as_str(),
        Some(v) => return Err(bad(format!("general.architecture is not a string ({})", v.summary()))),
        None => return Err(bad("general.architecture is missing".into())),
    };
    if f.get("general.type").and_then(Value::as_str) == Some("adapter") {
        return Err(bad("this is a LoRA adapter, not a model (a pack names it: `pack --adapter`)".into()));
    }
    if !ARCHITECTURES.contains(&arch) {
        return Err(bad(format!(
            "architecture {arch:?} is not supported by this runtime (supported: {})",
            ARCHITECTURES.join(", ")
        )));
    }
    let keys = Keys { f };
    let h = check_hparams(f, &keys, arch)?;
    let seq2seq = if arch == "t5" {
        Some(check_t5_hparams(f, &keys, &h)?)
    } else {
        check_rope_heads(f, arch, &h)?;
        None
    };

    // --- vocabulary (llama-vocab.cpp) ---
    let (n_vocab, tokenizer_model) = check_vocab(f, &keys)?;
    let k = |name: &str| format!("{arch}.{name}");
    if let Some(n) = keys.opt_u32(&k("vocab_size"))? {
        if n != n_vocab {
            return Err(bad(format!("{} = {n} but the vocabulary has {n_vocab} tokens", k("vocab_size"))));
        }
    }
    if let Some(Seq2SeqFacts { decoder_start_token: Some(id), .. }) = &seq2seq {
        if *id >= n_vocab {
            return Err(bad(format!(
                "{} = {id} is outside the vocabulary of {n_vocab} tokens",
                k("decoder_start_token_id")
            )));
        }
    }

    // --- tensors (models/llama.cpp, models/qwen2.cpp, models/t5.cpp load_arch_tensors) ---
    let want = match &seq2seq {
        Some(s) => t5_tensors(&h, s, n_vocab),
        None => decoder_only_tensors(arch, &h, n_vocab),
    };
    check_tensor_set(f, arch, &want)?;

    Ok(ModelFacts {
        architecture: arch.to_string(),
        n_layer: h.n_layer,
        n_embd: h.n_embd,
        n_ff: h.n_ff,
        n_head: h.n_head,
        n_head_kv: h.n_head_kv,
        head_dim: h.head_k,
        n_ctx_train: h.n_ctx_train,
        n_vocab,
        rms_eps: h.rms_eps,
        tokenizer_model,
        tied_output: f.tensor("output.weight").is_none(),
        seq2seq,
    })
}

/// What `load_hparams` reads for every architecture (and the norm epsilon all three need).
fn check_hparams(f: &GgufFile, keys: &Keys, arch: &str) -> Result<Hparams> {
    let bad = |reason: String| bad_file(f, reason);
    let k = |name: &str| format!("{arch}.{name}");
    let n_layer = keys.req_u32(&k("block_count"))?;
    if n_layer == 0 || n_layer as u64 > MAX_LAYERS {
        return Err(bad(format!("{} = {n_layer} is outside 1..={MAX_LAYERS}", k("block_count"))));
    }
    let n_ctx_train = keys.req_u32(&k("context_length"))?;
    if n_ctx_train == 0 {
        return Err(bad(format!("{} is 0", k("context_length"))));
    }
    let n_embd = keys.req_u32(&k("embedding_length"))?;
    if n_embd == 0 {
        return Err(bad(format!("{} is 0", k("embedding_length"))));
    }
    if let Some(out) = keys.opt_u32(&k("embedding_length_out"))? {
        if out != n_embd {
            return Err(bad(format!("{} = {out} differs from embedding_length {n_embd}", k("embedding_length_out"))));
        }
    }
    keys.opt_bool(&k("attention.causal"))?;
    for key in [k("pooling_type"), k("classifier.pooling_type")] {
        if let Some(v) = f.get(&key) {
            if !matches!(v.as_i64(), Some(-1 | 0)) {
                return Err(bad(format!("{key} = {} (pooling is not used by generative {arch} models)", v.summary())));
            }
        }
    }
    let nextn = keys.opt_u32(&k("nextn_predict_layers"))?.unwrap_or(0);
    if nextn != 0 {
        return Err(bad(format!(
            "{} = {nextn} (must be 0 for {arch}; block_count is {n_layer})",
            k("nextn_predict_layers")
        )));
    }
    for key in [k("expert_count"), k("expert_group_count"), k("expert_group_used_count"), k("expert_shared_count")] {
        if let Some(n) = keys.opt_u32(&key)? {
            if n != 0 {
                return Err(bad(format!(
                    "{key} = {n}: {arch} models here have no expert tensors (must be 0 or absent)"
                )));
            }
        }
    }
    if let Some(used) = keys.opt_layers(&k("expert_used_count"), n_layer)? {
        if let Some(&n) = used.iter().find(|&&n| n != 0) {
            return Err(bad(format!("{} = {n} without experts (must be 0 or absent)", k("expert_used_count"))));
        }
    }
    let n_ff = keys.uniform_layers(&k("feed_forward_length"), n_layer)?;
    let n_head = keys.uniform_layers(&k("attention.head_count"), n_layer)?;
    let n_head_kv = match keys.opt_layers(&k("attention.head_count_kv"), n_layer)? {
        None => n_head,
        Some(_) => keys.uniform_layers(&k("attention.head_count_kv"), n_layer)?,
    };
    if n_head_kv > n_head || !n_head.is_multiple_of(n_head_kv) {
        return Err(bad(format!(
            "{} = {n_head_kv} does not divide {} = {n_head}",
            k("attention.head_count_kv"),
            k("attention.head_count")
        )));
    }
    let key_len = keys.opt_u32(&k("attention.key_length"))?;
    let value_len = keys.opt_u32(&k("attention.value_length"))?;
    if (key_len.is_none() || value_len.is_none()) && !n_embd.is_multiple_of(n_head) {
        return Err(bad(format!("embedding_length {n_embd} is not a multiple of head_count {n_head}")));
    }
    let head_k = key_len.unwrap_or(n_embd / n_head);
    let head_v = value_len.unwrap_or(n_embd / n_head);
    let n_rot = keys.opt_u32(&k("rope.dimension_count"))?.unwrap_or(head_k);
    keys.opt_bool(&k("rope.scaling.finetuned"))?;
    if let Some(n) = keys.opt_u32(&k("rope.scaling.original_context_length"))? {
        if n == 0 {
            return Err(bad(format!("{} is 0", k("rope.scaling.original_context_length"))));
        }
    }
    keys.opt_f32(&k("rope.freq_base"), |v| v > 0.0, "finite and > 0")?;
    keys.opt_f32(&k("rope.scaling.factor"), |v| v >= 0.0, "finite and >= 0")?;
    keys.opt_f32(&k("rope.scale_linear"), |v| v >= 0.0, "finite and >= 0")?;
    keys.opt_f32(&k("rope.scaling.attn_factor"), |v| v > 0.0, "finite and > 0")?;
    keys.opt_f32(&k("rope.scaling.alpha"), |v| v >= 0.0, "finite and >= 0")?;
    // Read (and asserted known) for every architecture, rope or not.
    let rope_scaling = match f.get(&k("rope.scaling.type")) {
        None => "linear".to_string(),
        Some(Value::Str(s)) if ROPE_SCALING_TYPES.contains(&s.as_str()) => s.clone(),
        Some(v) => {
            return Err(bad(format!(
                "{} = {} is not one llama.cpp knows ({})",
                k("rope.scaling.type"),
                v.summary(),
                ROPE_SCALING_TYPES.join(", ")
            )))
        }
    };
    let rms_eps = keys
        .opt_f32(&k("attention.layer_norm_rms_epsilon"), |v| v > 0.0, "finite and > 0")?
        .ok_or_else(|| bad(format!("{} is missing", k("attention.layer_norm_rms_epsilon"))))?;
    Ok(Hparams { n_layer, n_ctx_train, n_embd, n_ff, n_head, n_head_kv, head_k, head_v, n_rot, rope_scaling, rms_eps })
}

/// llama and qwen2 rotate keys: their graphs assert n_embd_head_v == n_embd_head_k == n_rot.
fn check_rope_heads(f: &GgufFile, arch: &str, h: &Hparams) -> Result<()> {
    let (head_k, head_v, n_rot) = (h.head_k, h.head_v, h.n_rot);
    if head_k == 0 || head_k != head_v || n_rot != head_k || !head_k.is_multiple_of(2) {
        return Err(bad_file(
            f,
            format!(
                "head dimensions are inconsistent: key_length {head_k}, value_length {head_v}, rope.dimension_count \
                 {n_rot} (llama.cpp needs them equal, even and > 0)"
            ),
        ));
    }
    if arch == "qwen2" && head_k as u64 * h.n_head as u64 != h.n_embd as u64 {
        return Err(bad_file(
            f,
            format!("qwen2 needs key_length × head_count = embedding_length ({head_k} × {} ≠ {})", h.n_head, h.n_embd),
        ));
    }
    Ok(())
}

/// What `llama_model_t5::load_arch_hparams` and the t5 graphs need beyond [`check_hparams`].
/// Largest `t5.context_length` accepted (T5 checkpoints say 512).
const MAX_T5_CONTEXT: u32 = 32768;

fn check_t5_hparams(f: &GgufFile, keys: &Keys, h: &Hparams) -> Result<Seq2SeqFacts> {
    let bad = |reason: String| bad_file(f, reason);
    // Before any encode, llama.cpp reserves the decoder's graph with an encoder of
    // context_length rows (`build_inp_cross_embd`, `build_attn_inp_cross`, an int32): past 2^31
    // the cross mask's shape goes negative (GGML_ASSERT in soft_max), and long before that the
    // reserve allocates context_length × width buffers. Found by delrec-fuzz.
    if h.n_ctx_train > MAX_T5_CONTEXT {
        return Err(bad(format!(
            "t5.context_length = {} is above {MAX_T5_CONTEXT} (llama.cpp sizes the decoder's cross-attention \
             buffers by it before the first encode)",
            h.n_ctx_train
        )));
    }
    // Q is created n_embd_head_k × n_head_kv wide and reshaped to n_head heads: equal or it asserts.
    if h.n_head_kv != h.n_head {
        return Err(bad(format!(
            "t5.attention.head_count_kv = {} must equal t5.attention.head_count = {} (the t5 graph reshapes \
             queries of head_count_kv heads into head_count)",
            h.n_head_kv, h.n_head
        )));
    }
    // The graphs assert n_embd_head_v == n_embd_head_k (no rotary part).
    if h.head_k == 0 || h.head_k != h.head_v {
        return Err(bad(format!(
            "head dimensions are inconsistent: t5.attention.key_length {}, t5.attention.value_length {} (llama.cpp \
             needs them equal and > 0)",
            h.head_k, h.head_v
        )));
    }
    let buckets = keys.req_u32("t5.attention.relative_buckets_count")?;
    if !T5_BUCKETS.contains(&buckets) {
        return Err(bad(format!(
            "t5.attention.relative_buckets_count = {buckets} is outside {}..={} (llama.cpp's bucket formula \
             computes indices outside the bias table)",
            T5_BUCKETS.start(),
            T5_BUCKETS.end()
        )));
    }
    let n_dec_layer = keys.opt_u32("t5.decoder_block_count")?.unwrap_or(h.n_layer);
    if n_dec_layer != h.n_layer {
        return Err(bad(format!(
            "t5.decoder_block_count = {n_dec_layer} differs from t5.block_count = {} (llama.cpp shares one layer \
             array and sizes the decoder's KV cache by block_count)",
            h.n_layer
        )));
    }
    let decoder_start_token = keys.opt_u32("t5.decoder_start_token_id")?;
    Ok(Seq2SeqFacts { n_dec_layer, n_rel_attn_bkts: buckets, decoder_start_token })
}

/// The tensors `models/llama.cpp` and `models/qwen2.cpp` create.
fn decoder_only_tensors(arch: &str, h: &Hparams, n_vocab: u32) -> TensorSet {
    let (e, v, ff) = (h.n_embd as u64, n_vocab as u64, h.n_ff as u64);
    let q_width = h.head_k as u64 * h.n_head as u64;
    let kv_width = h.head_k as u64 * h.n_head_kv as u64;
    let half_rot = h.n_rot as u64 / 2;
    let mut want = TensorSet::new();
    let mut add =
        |name: String, dims: &[u64], role: Role, required: bool| expect(&mut want, name, dims, role, required);
    add("token_embd.weight".into(), &[e, v], Role::Matrix, true);
    add("output_norm.weight".into(), &[e], Role::Vector, true);
    add("output.weight".into(), &[e, v], Role::Matrix, false);
    if arch == "qwen2" {
        add("output.bias".into(), &[v], Role::Vector, false);
    } else if h.rope_scaling == "longrope" {
        add("rope_factors_long.weight".into(), &[half_rot], Role::Vector, false);
        add("rope_factors_short.weight".into(), &[half_rot], Role::Vector, false);
    } else {
        add("rope_freqs.weight".into(), &[half_rot], Role::Vector, false);
    }
    for i in 0..h.n_layer {
        let b = |t: &str| format!("blk.{i}.{t}");
        add(b("attn_norm.weight"), &[e], Role::Vector, true);
        add(b("attn_q.weight"), &[e, q_width], Role::Matrix, true);
        add(b("attn_k.weight"), &[e, kv_width], Role::Matrix, true);
        add(b("attn_v.weight"), &[e, kv_width], Role::Matrix, true);
        add(b("attn_q.bias"), &[q_width], Role::Vector, false);
        add(b("attn_k.bias"), &[kv_width], Role::Vector, false);
        add(b("attn_v.bias"), &[kv_width], Role::Vector, false);
        add(b("attn_output.weight"), &[q_width, e], Role::Matrix, true);
        add(b("ffn_norm.weight"), &[e], Role::Vector, true);
        add(b("ffn_gate.weight"), &[e, ff], Role::Matrix, true);
        add(b("ffn_up.weight"), &[e, ff], Role::Matrix, true);
        add(b("ffn_down.weight"), &[ff, e], Role::Matrix, true);
        if arch == "llama" {
            add(b("attn_output.bias"), &[e], Role::Vector, false);
            add(b("ffn_gate.bias"), &[ff], Role::Vector, false);
            add(b("ffn_up.bias"), &[ff], Role::Vector, false);
            add(b("ffn_down.bias"), &[e], Role::Vector, false);
        }
    }
    want
}

/// The tensors `llama_model_t5::load_arch_tensors` creates. Its `attn_rel_b` is optional in
/// every layer, but the graphs fall back to layer 0's without a null check (a missing one there
/// is a null dereference), so block 0 must have it; the FFN gate is optional per layer (present:
/// gated GELU, absent: ReLU).
fn t5_tensors(h: &Hparams, s: &Seq2SeqFacts, n_vocab: u32) -> TensorSet {
    let (e, v, ff) = (h.n_embd as u64, n_vocab as u64, h.n_ff as u64);
    let inner = h.head_k as u64 * h.n_head as u64;
    let bias = [h.n_head as u64, s.n_rel_attn_bkts as u64];
    let mut want = TensorSet::new();
    let mut add =
        |name: String, dims: &[u64], role: Role, required: bool| expect(&mut want, name, dims, role, required);
    add("token_embd.weight".into(), &[e, v], Role::Matrix, true);
    add("enc.output_norm.weight".into(), &[e], Role::Vector, true);
    add("dec.output_norm.weight".into(), &[e], Role::Vector, true);
    add("output.weight".into(), &[e, v], Role::Matrix, false);
    for (side, n) in [("enc", h.n_layer), ("dec", s.n_dec_layer)] {
        for i in 0..n {
            let b = |t: &str| format!("{side}.blk.{i}.{t}");
            add(b("attn_norm.weight"), &[e], Role::Vector, true);
            add(b("attn_rel_b.weight"), &bias, Role::Table, i == 0);
            add(b("attn_q.weight"), &[e, inner], Role::Matrix, true);
            add(b("attn_k.weight"), &[e, inner], Role::Matrix, true);
            add(b("attn_v.weight"), &[e, inner], Role::Matrix, true);
            add(b("attn_o.weight"), &[inner, e], Role::Matrix, true);
            if side == "dec" {
                add(b("cross_attn_norm.weight"), &[e], Role::Vector, true);
                // Created when present (never used by the graph).
                add(b("cross_attn_rel_b.weight"), &bias, Role::Table, false);
                add(b("cross_attn_q.weight"), &[e, inner], Role::Matrix, true);
                add(b("cross_attn_k.weight"), &[e, inner], Role::Matrix, true);
                add(b("cross_attn_v.weight"), &[e, inner], Role::Matrix, true);
                add(b("cross_attn_o.weight"), &[inner, e], Role::Matrix, true);
            }
            add(b("ffn_norm.weight"), &[e], Role::Vector, true);
            add(b("ffn_gate.weight"), &[e, ff], Role::Matrix, false);
            add(b("ffn_up.weight"), &[e, ff], Role::Matrix, true);
            add(b("ffn_down.weight"), &[ff, e], Role::Matrix, true);
        }
    }
    want
}

/// The file's tensors are exactly `want`'s (llama.cpp throws on extra tensors, and on missing
/// required ones), each as [`check_tensor`] requires.
fn check_tensor_set(f: &GgufFile, arch: &str, want: &TensorSet) -> Result<()> {
    for t in f.tensors() {
        let Some(exp) = want.get(&t.name) else {
            return Err(bad_file(f, format!("tensor {:?} is not one the {arch} architecture uses", t.name)));
        };
        check_tensor(f, t, exp)?;
    }
    if let Some((name, _)) = want.iter().find(|(name, exp)| exp.required && f.tensor(name).is_none()) {
        return Err(bad_file(f, format!("tensor {name:?} is missing")));
    }
    Ok(())
}

fn check_tensor(f: &GgufFile, t: &TensorInfo, exp: &Expected) -> Result<()> {
    let bad = |reason: String| bad_file(f, format!("tensor {:?}: {reason}", t.name));
    // llama.cpp compares all four ggml dimensions, the missing ones being 1.
    let padded = |d: &[u64]| {
        let mut p = d.to_vec();
        p.resize(4, 1);
        p
    };
    if t.dims.len() > 4 || padded(&t.dims) != padded(&exp.dims) {
        return Err(bad(format!("shape {:?}, expected {:?}", t.dims, exp.dims)));
    }
    let id = t.ty.id();
    let Some((name, block, bytes)) = ggml_type(id) else {
        return Err(bad(format!("unknown ggml type id {id}")));
    };
    let (allowed, what) = match exp.role {
        Role::Vector => (id == 0, "must be F32"),
        Role::Table => (TABLE_TYPES.contains(&id), "must be F32, F16 or BF16 (rows read by get_rows)"),
        Role::Matrix => (MATRIX_TYPES.contains(&id), "is not a type llama.cpp multiplies"),
    };
    if !allowed {
        return Err(bad(format!("type {name} {what}")));
    }
    if !t.dims[0].is_multiple_of(block) {
        return Err(bad(format!("row length {} is not a multiple of the {name} block ({block})", t.dims[0])));
    }
    let size = t.n_elements() / block * bytes;
    if t.size.is_some_and(|s| s != size) {
        return Err(bad(format!("size {:?} disagrees with {name} × {:?}", t.size, t.dims)));
    }
    if t.offset.checked_add(size).is_none_or(|end| end > f.len()) {
        return Err(bad(format!("data ({size} bytes at {}) ends past the end of the file", t.offset)));
    }
    Ok(())
}

/// The tokenizer as llama.cpp's `llama_vocab::impl::load` reads it; returns (n_vocab, model).
fn check_vocab(f: &GgufFile, keys: &Keys) -> Result<(u32, String)> {
    let bad = |reason: String| bad_file(f, reason);
    let model = match f.get("tokenizer.ggml.model") {
        Some(Value::Str(s)) if TOKENIZER_MODELS.contains(&s.as_str()) => s.clone(),
        Some(v) => {
            return Err(bad(format!(
                "tokenizer.ggml.model = {} is not supported (supported: {})",
                v.summary(),
                TOKENIZER_MODELS.join(", ")
            )))
        }
        None => return Err(bad("tokenizer.ggml.model is missing".into())),
    };
    let tokens = match f.get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::Str(t))) => t,
        Some(_) => return Err(bad("tokenizer.ggml.tokens is not a string array".into())),
        None => return Err(bad("the model has no tokenizer metadata (tokenizer.ggml.tokens)".into())),
    };
    if tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens is empty".into()));
    }
    let n_vocab = u32::try_from(tokens.len())
        .ok()
        .filter(|&n| n <= i32::MAX as u32)
        .ok_or_else(|| bad(format!("{} tokens is more than llama.cpp's token ids hold", tokens.len())))?;
    // llama.cpp reads each token as a C string (cut at its first NUL), renames empty ones to
    // "[EMPTY_i]", and then asserts every string is unique.
    let mut seen = HashSet::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let t = t.split('\0').next().unwrap_or_default();
        let text: Cow<str> = if t.is_empty() { Cow::Owned(format!("[EMPTY_{i}]")) } else { Cow::Borrowed(t) };
        if !seen.insert(text.clone()) {
            return Err(bad(format!("tokenizer.ggml.tokens: token {i} {text:?} appears twice in the vocabulary")));
        }
    }
    if model == "llama" {
        // SentencePiece falls back to byte tokens for text outside the vocabulary, and llama.cpp
        // looks each one up with `unordered_map::at` (`byte_to_token`): a missing one throws
        // through the C API and terminates the process at the first such text.
        for b in 0..=255u8 {
            let named = format!("<0x{b:02X}>");
            let plain = (b < 0x80).then(|| (b as char).to_string());
            if !seen.contains(named.as_str()) && !plain.is_some_and(|p| seen.contains(p.as_str())) {
                return Err(bad(format!(
                    "tokenizer.ggml.tokens: a SentencePiece (llama) vocabulary needs every byte token; {named} is missing"
                )));
            }
        }
    }
    drop(seen);
    if let Some(v) = f.get("tokenizer.ggml.scores") {
        let (n, nan) = match v {
            Value::Array(Array::F32(s)) => (s.len(), s.iter().position(|x| x.is_nan())),
            Value::Array(Array::I32(s)) => (s.len(), None),
            _ => return Err(bad("tokenizer.ggml.scores is not an f32 or i32 array".into())),
        };
        if n != tokens.len() {
            return Err(bad(format!("tokenizer.ggml.scores has {n} entries for {} tokens", tokens.len())));
        }
        if let Some(i) = nan {
            return Err(bad(format!("tokenizer.ggml.scores: score {i} is NaN")));
        }
    }
    if let Some(v) = f.get("tokenizer.ggml.token_type") {
        let Value::Array(Array::I32(types)) = v else {
            return Err(bad("tokenizer.ggml.token_type is not an i32 array".into()));
        };
        if types.len() != tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        for (i, (&ty, t)) in types.iter().zip(tokens).enumerate() {
            let b = t.as_bytes();
            let byte_ok = b.len() == 6
                && t.starts_with("<0x")
                && b[5] == b'>'
                && b[3].is_ascii_hexdigit()
                && b[4].is_ascii_hexdigit();
            if ty == TOKEN_TYPE_BYTE && !byte_ok {
                return Err(bad(format!("tokenizer.ggml.token_type: token {i} {t:?} is typed BYTE but is not <0xXX>")));
            }
        }
    }
    keys.opt_u32("tokenizer.ggml.token_type_count")?;
    for key in BOOL_KEYS {
        keys.opt_bool(key)?;
    }
    for key in SPECIAL_TOKEN_KEYS {
        if let Some(id) = keys.opt_u32(key)? {
            if id >= n_vocab {
                return Err(bad(format!("{key} = {id} is outside the vocabulary of {n_vocab} tokens")));
            }
        }
    }
    if model == "t5" {
        check_ugm(f, keys, tokens, n_vocab)?;
    }
    if let Some(v) = f.get("tokenizer.ggml.suppress_tokens") {
        if !matches!(v, Value::Array(Array::I32(_))) {
            return Err(bad("tokenizer.ggml.suppress_tokens is not an i32 array".into()));
        }
    }
    if model == "gpt2" {
        let pre = match f.get("tokenizer.ggml.pre") {
            Some(Value::Str(s)) => s,
            Some(_) => return Err(bad("tokenizer.ggml.pre is not a string".into())),
            None => return Err(bad("tokenizer.ggml.pre (the BPE pre-tokenizer) is missing".into())),
        };
        if !PRE_TOKENIZERS.contains(&pre.as_str()) {
            return Err(bad(format!("tokenizer.ggml.pre = {pre:?} is not a pre-tokenizer llama.cpp knows")));
        }
        let merges = match f.get("tokenizer.ggml.merges") {
            Some(Value::Array(Array::Str(m))) => m,
            Some(_) => return Err(bad("tokenizer.ggml.merges is not a string array".into())),
            None => return Err(bad("tokenizer.ggml.merges is missing (a gpt2 tokenizer needs them)".into())),
        };
        if merges.len() > i32::MAX as usize {
            return Err(bad("tokenizer.ggml.merges has too many entries".into()));
        }
        for (i, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; both sides non-empty.
            let b = m.as_bytes();
            let ok = b.iter().skip(1).position(|&c| c == b' ').is_some_and(|p| p + 2 < b.len());
            if !ok {
                return Err(bad(format!("tokenizer.ggml.merges: merge {i} {m:?} is not \"LEFT RIGHT\"")));
            }
        }
    } else if let Some(v) = f.get("tokenizer.ggml.pre") {
        if v.as_str().is_none() {
            return Err(bad("tokenizer.ggml.pre is not a string".into()));
        }
    }
    Ok((n_vocab, model))
}

/// The UGM (`tokenizer.ggml.model = "t5"`) tokenizer beyond [`check_vocab`]'s generic rules:
/// what `llm_tokenizer_ugm` and its sessions read. Their failures are C++ exceptions or asserts
/// inside `llama_tokenize`, which lets them through the C API: the process terminates at the
/// first text that reaches them, long after the model loaded.
fn check_ugm(f: &GgufFile, keys: &Keys, tokens: &[String], n_vocab: u32) -> Result<()> {
    let bad = |reason: String| bad_file(f, reason);
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| t.len() > MAX_UGM_TOKEN_BYTES) {
        return Err(bad(format!(
            "tokenizer.ggml.tokens: token {i} is {} bytes long (at most {MAX_UGM_TOKEN_BYTES} for a UGM vocabulary)",
            t.len()
        )));
    }
    // The id llama.cpp ends up with: the key (range-checked by check_vocab), else UGM's default
    // when that lies inside the vocabulary, else none (LLAMA_TOKEN_NULL).
    let resolved = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
        Ok(keys.opt_u32(key)?.or(default.filter(|&d| d < n_vocab)))
    };
    // Every unknown stretch of text becomes this id: without one, -1 lands among the tokens.
    if resolved("tokenizer.ggml.unknown_token_id", Some(2))?.is_none() {
        return Err(bad(format!(
            "tokenizer.ggml.unknown_token_id is missing and UGM's default (2) is outside the vocabulary of {n_vocab} \
             tokens"
        )));
    }
    // With add_special, UGM sessions assert these ids exist when they are to be added.
    for (flag, flag_default, key, default) in [
        ("tokenizer.ggml.add_eos_token", true, "tokenizer.ggml.eos_token_id", Some(1)),
        ("tokenizer.ggml.add_bos_token", false, "tokenizer.ggml.bos_token_id", None),
    ] {
        if keys.opt_bool(flag)?.unwrap_or(flag_default) && resolved(key, default)?.is_none() {
            return Err(bad(format!("{flag} is true but {key} names no token of the vocabulary of {n_vocab}")));
        }
    }
    match f.get("tokenizer.ggml.precompiled_charsmap") {
        None => Ok(()),
        Some(Value::Array(Array::U8(b))) => check_charsmap(b),
        Some(Value::Array(Array::I8(b))) => check_charsmap(&b.iter().map(|&x| x as u8).collect::<Vec<u8>>()),
        Some(v) => Err(format!("is {}, not a u8 or i8 array", v.summary())),
    }
    .map_err(|reason| bad(format!("tokenizer.ggml.precompiled_charsmap {reason}")))
}

/// SentencePiece's precompiled charsmap as llama.cpp's UGM normalizer walks it: a u32 byte
/// count, that many bytes of XOR-compressed double array (u32 nodes), then NUL-terminated
/// replacement strings. Normalizing text walks the trie from the root with `index = base ^ byte`
/// for any input byte 1..=255 and reads the node at every index it reaches (a throw outside the
/// array); at a leaf, the node at `index ^ base` holds an offset into the replacements, which
/// must lie inside them with a NUL after it. Since the input is anyone's text, every state
/// reachable from the root is proven for every byte.
fn check_charsmap(b: &[u8]) -> std::result::Result<(), String> {
    if b.len() > MAX_CHARSMAP_BYTES {
        return Err(format!("is {} bytes (at most {MAX_CHARSMAP_BYTES})", b.len()));
    }
    let Some(&[b0, b1, b2, b3]) = b.get(..4) else {
        return Err(format!("is {} bytes, shorter than its 4-byte header", b.len()));
    };
    let blob = u32::from_le_bytes([b0, b1, b2, b3]) as usize;
    // llama.cpp's loader throws unless blob_size + 4 < size.
    if blob + 4 >= b.len() {
        return Err(format!("header says its trie is {blob} bytes, but only {} follow it", b.len() - 4));
    }
    if !blob.is_multiple_of(4) {
        return Err(format!("trie size {blob} is not a whole number of 4-byte nodes"));
    }
    let nodes: Vec<u32> =
        b[4..4 + blob].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let replacements = &b[4 + blob..];
    let Some(&root) = nodes.first() else { return Ok(()) };
    // xcda_array_view: BASE in bits 10..31 (shifted by 8 when bit 9 is set), LCHECK = bit 31 and
    // bits 0..8 (a node with bit 31 set never matches a byte), LEAF bit 8, VALUE bits 0..31.
    let base = |p: u32| (p >> 10) << ((p & (1 << 9)) >> 6);
    let node = |i: u32| {
        nodes.get(i as usize).copied().ok_or_else(|| format!("trie index {i} is past its {} nodes", nodes.len()))
    };
    let last_nul = replacements.iter().rposition(|&c| c == 0);
    // A state at or past len + 256 reaches only indices past the end (XOR changes the low byte).
    let mut seen = vec![false; nodes.len() + 256];
    let mut stack = vec![base(root)];
    while let Some(state) = stack.pop() {
        match seen.get_mut(state as usize) {
            Some(s) if !*s => *s = true,
            Some(_) => continue,
            None => return Err(format!("trie index {} is past its {} nodes", state ^ 1, nodes.len())),
        }
        for c in 1..=255u32 {
            let index = state ^ c;
            let p = node(index)?;
            if p & 0x8000_00ff != c {
                continue;
            }
            let next = index ^ base(p);
            if (p >> 8) & 1 == 1 {
                let offset = (node(next)? & 0x7fff_ffff) as usize;
                if offset >= replacements.len() {
                    return Err(format!(
                        "replacement offset {offset} (trie node {next}) is past its {} bytes of replacements",
                        replacements.len()
                    ));
                }
                if last_nul.is_none_or(|n| n < offset) {
                    return Err(format!("replacement at offset {offset} has no NUL terminator"));
                }
            }
            stack.push(next);
        }
    }
    Ok(())
}

/// Typed key access with llama.cpp's own type rules (`GGUFMeta::GKV`: a u32 key must be stored
/// as UINT32, a float as FLOAT32, per-layer arrays as (U)INT32 or BOOL arrays).
struct Keys<'a> {
    f: &'a GgufFile,
}

impl Keys<'_> {
    fn bad(&self, reason: String) -> crate::Error {
        bad_file(self.f, reason)
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(Value::U32(v)) => Ok(Some(*v)),
            Some(v) => Err(self.bad(format!("{key} = {} is not a u32", v.summary()))),
        }
    }

    fn req_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.bad(format!("{key} is missing")))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(format!("{key} = {} is not a bool", v.summary()))),
        }
    }

    fn opt_f32(&self, key: &str, ok: impl Fn(f32) -> bool, want: &str) -> Result<Option<f32>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) if v.is_finite() && ok(*v) => Ok(Some(*v)),
            Some(Value::F32(v)) => Err(self.bad(format!("{key} = {v} (must be {want})"))),
            Some(v) => Err(self.bad(format!("{key} = {} is not an f32", v.summary()))),
        }
    }

    /// A per-layer key (`get_key_or_arr`): a u32, or an array of one value per layer.
    fn opt_layers(&self, key: &str, n_layer: u32) -> Result<Option<Vec<u32>>> {
        let v: Vec<u32> = match self.f.get(key) {
            None => return Ok(None),
            Some(Value::U32(v)) => vec![*v; n_layer as usize],
            Some(Value::Array(Array::U32(a))) => a.clone(),
            Some(Value::Array(Array::I32(a))) => a
                .iter()
                .map(|&x| u32::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| self.bad(format!("{key} holds a negative value")))?,
            Some(Value::Array(Array::Bool(a))) => a.iter().map(|&b| b as u32).collect(),
            Some(v) => return Err(self.bad(format!("{key} = {} is not a u32 or a u32 array", v.summary()))),
        };
        if v.len() != n_layer as usize {
            return Err(self.bad(format!("{key} has {} entries for {n_layer} layers", v.len())));
        }
        Ok(Some(v))
    }

    /// A required per-layer key that these architectures need equal in every layer and > 0
    /// (their tensors are created with layer 0's value).
    fn uniform_layers(&self, key: &str, n_layer: u32) -> Result<u32> {
        let v = self.opt_layers(key, n_layer)?.ok_or_else(|| self.bad(format!("{key} is missing")))?;
        let first = v[0];
        if first == 0 {
            return Err(self.bad(format!("{key} is 0")));
        }
        if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| x != first) {
            return Err(self.bad(format!("{key} differs between layers (layer 0: {first}, layer {i}: {x})")));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::gguf::{f32_bytes, GgufWriter, TensorData, TensorType};
    use crate::Error;

    const N_EMBD: u64 = 32;
    const N_HEAD: u64 = 4;
    const N_KV: u64 = 2;
    const N_FF: u64 = 64;
    const N_LAYER: u64 = 2;
    const N_VOCAB: u64 = 16;

    /// A tiny valid model of `arch` as (metadata, tensors) to mutate before writing.
    struct Spec {
        kv: Vec<(String, Value)>,
        tensors: Vec<(String, Vec<u64>, TensorType, Vec<u8>)>,
    }

    impl Spec {
        fn new(arch: &str) -> Self {
            let a = |k: &str| format!("{arch}.{k}");
            let head = N_EMBD / N_HEAD;
            let tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
            let kv = vec![
                ("general.architecture".into(), Value::Str(arch.into())),
                (a("block_count"), Value::U32(N_LAYER as u32)),
                (a("context_length"), Value::U32(256)),
                (a("embedding_length"), Value::U32(N_EMBD as u32)),
                (a("feed_forward_length"), Value::U32(N_FF as u32)),
                (a("attention.head_count"), Value::U32(N_HEAD as u32)),
                (a("attention.head_count_kv"), Value::U32(N_KV as u32)),
                (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
                (a("rope.dimension_count"), Value::U32(head as u32)),
                (a("rope.freq_base"), Value::F32(10000.0)),
                (a("vocab_size"), Value::U32(N_VOCAB as u32)),
                ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
                ("tokenizer.ggml.pre".into(), Value::Str("gpt-2".into())),
                ("tokenizer.ggml.tokens".into(), Value::Array(Array::Str(tokens))),
                ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(vec![1; N_VOCAB as usize]))),
                ("tokenizer.ggml.merges".into(), Value::Array(Array::Str(vec!["t 1".into(), "t1 0".into()]))),
                ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
                ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
                ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ];
            let mut s = Spec { kv, tensors: vec![] };
            let (e, kvw) = (N_EMBD, head * N_KV);
            s.tensor("token_embd.weight", &[e, N_VOCAB]);
            s.tensor("output_norm.weight", &[e]);
            if arch == "llama" {
                s.tensor("output.weight", &[e, N_VOCAB]);
            }
            for i in 0..N_LAYER {
                s.tensor(&format!("blk.{i}.attn_norm.weight"), &[e]);
                s.tensor(&format!("blk.{i}.attn_q.weight"), &[e, e]);
                s.tensor(&format!("blk.{i}.attn_k.weight"), &[e, kvw]);
                s.tensor(&format!("blk.{i}.attn_v.weight"), &[e, kvw]);
                if arch == "qwen2" {
                    s.tensor(&format!("blk.{i}.attn_q.bias"), &[e]);
                    s.tensor(&format!("blk.{i}.attn_k.bias"), &[kvw]);
                    s.tensor(&format!("blk.{i}.attn_v.bias"), &[kvw]);
                }
                s.tensor(&format!("blk.{i}.attn_output.weight"), &[e, e]);
                s.tensor(&format!("blk.{i}.ffn_norm.weight"), &[e]);
                s.tensor(&format!("blk.{i}.ffn_gate.weight"), &[e, N_FF]);
                s.tensor(&format!("blk.{i}.ffn_up.weight"), &[e, N_FF]);
                s.tensor(&format!("blk.{i}.ffn_down.weight"), &[N_FF, e]);
            }
            s
        }

        fn tensor(&mut self, name: &str, dims: &[u64]) {
            let n: u64 = dims.iter().product();
            let data = f32_bytes(&(0..n).map(|i| (i % 7) as f32 * 0.01).collect::<Vec<_>>());
            self.tensors.retain(|t| t.0 != name);
            self.tensors.push((name.into(), dims.to_vec(), TensorType::F32, data));
        }

        fn set(&mut self, key: &str, v: Value) {
            match self.kv.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => self.kv.push((key.into(), v)),
            }
        }

        fn unset(&mut self, key: &str) {
            self.kv.retain(|(k, _)| k != key);
        }

        fn retype(&mut self, name: &str, ty: TensorType) {
            let t = self.tensors.iter_mut().find(|t| t.0 == name).expect("tensor exists");
            t.2 = ty;
        }

        fn write(&self, dir: &Path, name: &str) -> PathBuf {
            let mut w = GgufWriter::new();
            for (k, v) in &self.kv {
                w.set(k, v.clone());
            }
            for (name, dims, ty, data) in &self.tensors {
                w.add_tensor(name, dims, *ty, TensorData::Owned(data.clone())).unwrap();
            }
            let p = dir.join(format!("{name}.gguf"));
            w.write_atomic(&p, &mut |_, _| {}).unwrap();
            p
        }

        fn check(&self, dir: &Path, name: &str) -> Result<ModelFacts> {
            check_model(&GgufFile::open(self.write(dir, name)).unwrap())
        }
    }

    /// The check fails with `InvalidFile` whose reason contains every one of `needles`.
    fn refused(r: Result<ModelFacts>, needles: &[&str]) {
        match r {
            Err(Error::InvalidFile { reason, .. }) => {
                for n in needles {
                    assert!(reason.contains(n), "reason {reason:?} does not mention {n:?}");
                }
            }
            other => panic!("expected InvalidFile mentioning {needles:?}, got {other:?}"),
        }
    }

    #[test]
    fn valid_llama_and_qwen2_pass() {
        let dir = tempfile::tempdir().unwrap();
        let facts = Spec::new("llama").check(dir.path(), "llama").unwrap();
        assert_eq!((facts.n_layer, facts.n_embd, facts.n_head, facts.n_head_kv), (2, 32, 4, 2));
        assert_eq!((facts.head_dim, facts.n_vocab, facts.n_ff), (8, 16, 64));
        assert!(!facts.tied_output);
        let facts = Spec::new("qwen2").check(dir.path(), "qwen2").unwrap();
        assert!(facts.tied_output);
        assert_eq!(facts.architecture, "qwen2");
        // Optional tensors and keys llama.cpp accepts.
        let mut s = Spec::new("llama");
        s.tensor("rope_freqs.weight", &[4]);
        s.tensor("blk.0.attn_q.bias", &[32]);
        s.set("llama.feed_forward_length", Value::Array(Array::I32(vec![64, 64])));
        s.set("llama.rope.scaling.type", Value::Str("linear".into()));
        s.set("llama.expert_count", Value::U32(0));
        s.check(dir.path(), "optional").unwrap();
    }

    #[test]
    fn layer_counts_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 600] {
            let mut s = Spec::new("llama");
            s.set("llama.block_count", Value::U32(n));
            refused(s.check(dir.path(), "layers"), &["llama.block_count", &n.to_string()]);
        }
        let mut s = Spec::new("llama");
        s.set("llama.nextn_predict_layers", Value::U32(3));
        refused(s.check(dir.path(), "nextn"), &["nextn_predict_layers", "3"]);
        let mut s = Spec::new("llama");
        s.set("llama.block_count", Value::I32(2));
        refused(s.check(dir.path(), "i32"), &["llama.block_count", "not a u32"]);
    }

    #[test]
    fn experts_without_expert_tensors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spec::new("llama");
        s.set("llama.expert_count", Value::U32(4));
        refused(s.check(dir.path(), "experts"), &["llama.expert_count", "4"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.expert_used_count", Value::U32(2));
        refused(s.check(dir.path(), "used"), &["qwen2.expert_used_count", "2"]);
    }

    #[test]
    fn unknown_rope_scaling_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spec::new("llama");
        s.set("llama.rope.scaling.type", Value::Str("bogus".into()));
        refused(s.check(dir.path(), "rope"), &["rope.scaling.type", "bogus"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.rope.freq_base", Value::F32(f32::NAN));
        refused(s.check(dir.path(), "base"), &["rope.freq_base", "NaN"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.rope.dimension_count", Value::U32(4));
        refused(s.check(dir.path(), "n_rot"), &["rope.dimension_count 4"]);
    }

    #[test]
    fn bad_norm_epsilons_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (eps, shown) in [(f32::NAN, "NaN"), (-1.0, "-1"), (f32::INFINITY, "inf"), (0.0, "= 0")] {
            let mut s = Spec::new("llama");
            s.set("llama.attention.layer_norm_rms_epsilon", Value::F32(eps));
            refused(s.check(dir.path(), "eps"), &["layer_norm_rms_epsilon", shown]);
        }
        let mut s = Spec::new("qwen2");
        s.unset("qwen2.attention.layer_norm_rms_epsilon");
        refused(s.check(dir.path(), "no-eps"), &["layer_norm_rms_epsilon", "missing"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.attention.layer_norm_rms_epsilon", Value::F64(1e-6));
        refused(s.check(dir.path(), "f64"), &["layer_norm_rms_epsilon", "not an f32"]);
    }

    #[test]
    fn tensor_retyped_to_a_same_size_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // F32 → I32: same bytes, same shape; llama.cpp's norm op aborts on it.
        let mut s = Spec::new("llama");
        s.retype("blk.1.ffn_norm.weight", TensorType::I32);
        refused(s.check(dir.path(), "i32-norm"), &["blk.1.ffn_norm.weight", "I32", "must be F32"]);
        // A matrix retyped F32 → I32.
        let mut s = Spec::new("qwen2");
        s.retype("blk.0.attn_k.weight", TensorType::I32);
        refused(s.check(dir.path(), "i32-matrix"), &["blk.0.attn_k.weight", "I32"]);
        // A bias F32 → I32 in qwen2.
        let mut s = Spec::new("qwen2");
        s.retype("blk.0.attn_q.bias", TensorType::I32);
        refused(s.check(dir.path(), "i32-bias"), &["blk.0.attn_q.bias", "must be F32"]);
        // An F16 norm retyped BF16 (both 2 bytes): norms must be F32.
        let mut s = Spec::new("llama");
        let name = "output_norm.weight";
        s.tensors.retain(|t| t.0 != name);
        s.tensors.push((name.into(), vec![N_EMBD], TensorType::BF16, vec![0; N_EMBD as usize * 2]));
        refused(s.check(dir.path(), "bf16-norm"), &[name, "BF16"]);
    }

    #[test]
    fn vocabulary_defects_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
        tokens[9] = "t3".into();
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(tokens)));
        refused(s.check(dir.path(), "dup"), &["token 9", "\"t3\"", "twice"]);
        // An empty token becomes "[EMPTY_i]" in llama.cpp, which may collide too.
        let mut tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
        tokens[2] = String::new();
        tokens[5] = "[EMPTY_2]".into();
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(tokens)));
        refused(s.check(dir.path(), "empty"), &["[EMPTY_2]", "twice"]);
        // llama.cpp cuts a token at its first NUL (found by delrec-fuzz on T5: a zeroed length
        // word inside a token string), so "t3\0\0" is "t3" there; "\0x" is empty.
        for (i, text, expect) in [(9, "t3\0\0", "\"t3\""), (4, "\0x", "[EMPTY_4]")] {
            let mut tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
            tokens[i] = text.into();
            if i == 4 {
                tokens[6] = "[EMPTY_4]".into();
            }
            let mut s = Spec::new("llama");
            s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(tokens)));
            refused(s.check(dir.path(), "nul"), &[expect, "twice"]);
        }

        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.eos_token_id", Value::U32(N_VOCAB as u32));
        refused(s.check(dir.path(), "special"), &["tokenizer.ggml.eos_token_id", "16"]);
        let mut s = Spec::new("qwen2");
        s.set("tokenizer.ggml.padding_token_id", Value::U32(1 << 30));
        refused(s.check(dir.path(), "pad"), &["padding_token_id"]);

        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 3])));
        refused(s.check(dir.path(), "types"), &["token_type", "3 entries"]);
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0; 5])));
        refused(s.check(dir.path(), "scores"), &["scores", "5 entries"]);
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.merges", Value::Array(Array::Str(vec!["t 1".into(), "nospace".into()])));
        refused(s.check(dir.path(), "merges"), &["merge 1", "nospace"]);
        let mut s = Spec::new("llama");
        s.unset("tokenizer.ggml.merges");
        refused(s.check(dir.path(), "no-merges"), &["merges", "missing"]);
        let mut s = Spec::new("llama");
        s.unset("tokenizer.ggml.pre");
        refused(s.check(dir.path(), "no-pre"), &["tokenizer.ggml.pre", "missing"]);
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.pre", Value::Str("martian".into()));
        refused(s.check(dir.path(), "pre"), &["martian"]);
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.model", Value::Str("bert".into()));
        refused(s.check(dir.path(), "tok-model"), &["tokenizer.ggml.model", "bert"]);
        // A SentencePiece vocabulary without byte tokens: llama.cpp's byte fallback throws
        // `std::out_of_range` through the C API (found by delrec-fuzz).
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.model", Value::Str("llama".into()));
        refused(s.check(dir.path(), "spm-no-bytes"), &["byte token", "<0x00>"]);
        let mut s = Spec::new("llama");
        s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(vec![])));
        refused(s.check(dir.path(), "no-tokens"), &["tokenizer.ggml.tokens", "empty"]);
        let mut s = Spec::new("llama");
        s.set("llama.vocab_size", Value::U32(17));
        refused(s.check(dir.path(), "vocab-size"), &["llama.vocab_size", "17"]);
    }

    #[test]
    fn tensor_set_and_shapes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spec::new("llama");
        s.tensors.retain(|t| t.0 != "blk.1.ffn_down.weight");
        refused(s.check(dir.path(), "missing"), &["blk.1.ffn_down.weight", "missing"]);
        let mut s = Spec::new("llama");
        s.tensor("blk.2.attn_norm.weight", &[N_EMBD]);
        refused(s.check(dir.path(), "extra"), &["blk.2.attn_norm.weight", "not one"]);
        let mut s = Spec::new("llama");
        s.tensor("soft_prompt.weight", &[N_EMBD, 4]);
        refused(s.check(dir.path(), "extra2"), &["soft_prompt.weight"]);
        // A fused QKV is not what these files hold.
        let mut s = Spec::new("qwen2");
        s.tensor("blk.0.attn_qkv.weight", &[N_EMBD, 64]);
        refused(s.check(dir.path(), "qkv"), &["blk.0.attn_qkv.weight"]);
        let mut s = Spec::new("llama");
        s.tensor("blk.0.attn_k.weight", &[N_EMBD, 8]);
        refused(s.check(dir.path(), "shape"), &["blk.0.attn_k.weight", "[32, 8]", "[32, 16]"]);
        let mut s = Spec::new("qwen2");
        s.tensor("token_embd.weight", &[N_EMBD, N_VOCAB - 1]);
        refused(s.check(dir.path(), "embd"), &["token_embd.weight", "shape"]);
        // Trailing 1-dimensions are what llama.cpp ignores.
        let mut s = Spec::new("llama");
        s.tensor("output_norm.weight", &[N_EMBD, 1]);
        s.check(dir.path(), "padded").unwrap();
    }

    #[test]
    fn head_counts_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spec::new("llama");
        s.set("llama.attention.head_count_kv", Value::U32(3));
        refused(s.check(dir.path(), "kv"), &["head_count_kv = 3", "does not divide"]);
        let mut s = Spec::new("llama");
        s.set("llama.attention.head_count_kv", Value::U32(0));
        refused(s.check(dir.path(), "kv0"), &["head_count_kv"]);
        let mut s = Spec::new("llama");
        s.set("llama.attention.head_count", Value::U32(0));
        refused(s.check(dir.path(), "h0"), &["head_count is 0"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.attention.head_count", Value::Array(Array::U32(vec![4, 8])));
        refused(s.check(dir.path(), "varying"), &["differs between layers"]);
        let mut s = Spec::new("qwen2");
        s.set("qwen2.feed_forward_length", Value::Array(Array::U32(vec![64])));
        refused(s.check(dir.path(), "short"), &["feed_forward_length", "1 entries for 2 layers"]);
        let mut s = Spec::new("llama");
        s.set("llama.attention.key_length", Value::U32(16));
        refused(s.check(dir.path(), "key-len"), &["key_length 16"]);
    }

    /// A synthetic charsmap: a root whose child for byte `a` is a leaf replacing it with `b`.
    /// 512 nodes (two 256-blocks), so every `state ^ byte` from the root's state (256) is inside.
    fn charsmap(nodes: &[(usize, u32)], replacements: &[u8]) -> Vec<u8> {
        let mut n = vec![0u32; 512];
        n[0] = 256 << 10;
        n[0x100 ^ 0x61] = (0x61 << 10) | (1 << 8) | 0x61;
        n[0x100] = 0x8000_0000;
        for &(i, v) in nodes {
            n[i] = v;
        }
        let mut b = ((n.len() * 4) as u32).to_le_bytes().to_vec();
        b.extend(n.iter().flat_map(|v| v.to_le_bytes()));
        b.extend_from_slice(replacements);
        b
    }

    impl Spec {
        /// A tiny valid t5 (gated FFN, untied output) with a UGM vocabulary and a charsmap.
        fn t5() -> Self {
            let head = N_EMBD / N_HEAD;
            let tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
            let mut types = vec![1; N_VOCAB as usize];
            types[..3].copy_from_slice(&[3, 3, 2]);
            let kv = vec![
                ("general.architecture".into(), Value::Str("t5".into())),
                ("t5.block_count".into(), Value::U32(N_LAYER as u32)),
                ("t5.decoder_block_count".into(), Value::U32(N_LAYER as u32)),
                ("t5.context_length".into(), Value::U32(512)),
                ("t5.embedding_length".into(), Value::U32(N_EMBD as u32)),
                ("t5.feed_forward_length".into(), Value::U32(N_FF as u32)),
                ("t5.attention.head_count".into(), Value::U32(N_HEAD as u32)),
                ("t5.attention.head_count_kv".into(), Value::U32(N_HEAD as u32)),
                ("t5.attention.key_length".into(), Value::U32(head as u32)),
                ("t5.attention.value_length".into(), Value::U32(head as u32)),
                ("t5.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-6)),
                ("t5.attention.relative_buckets_count".into(), Value::U32(32)),
                ("t5.decoder_start_token_id".into(), Value::U32(0)),
                ("t5.vocab_size".into(), Value::U32(N_VOCAB as u32)),
                ("tokenizer.ggml.model".into(), Value::Str("t5".into())),
                ("tokenizer.ggml.tokens".into(), Value::Array(Array::Str(tokens))),
                ("tokenizer.ggml.scores".into(), Value::Array(Array::F32(vec![-1.0; N_VOCAB as usize]))),
                ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types))),
                ("tokenizer.ggml.precompiled_charsmap".into(), Value::Array(Array::U8(charsmap(&[], b"b\0")))),
                ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
                ("tokenizer.ggml.unknown_token_id".into(), Value::U32(2)),
                ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
                ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
                ("tokenizer.ggml.add_eos_token".into(), Value::Bool(true)),
            ];
            let mut s = Spec { kv, tensors: vec![] };
            let e = N_EMBD;
            s.tensor("token_embd.weight", &[e, N_VOCAB]);
            s.tensor("output.weight", &[e, N_VOCAB]);
            s.tensor("enc.output_norm.weight", &[e]);
            s.tensor("dec.output_norm.weight", &[e]);
            for side in ["enc", "dec"] {
                for i in 0..N_LAYER {
                    let b = |t: &str| format!("{side}.blk.{i}.{t}");
                    s.tensor(&b("attn_norm.weight"), &[e]);
                    if i == 0 {
                        s.tensor(&b("attn_rel_b.weight"), &[N_HEAD, 32]);
                    }
                    for t in ["attn_q", "attn_k", "attn_v", "attn_o"] {
                        s.tensor(&b(&format!("{t}.weight")), &[e, e]);
                    }
                    if side == "dec" {
                        s.tensor(&b("cross_attn_norm.weight"), &[e]);
                        for t in ["cross_attn_q", "cross_attn_k", "cross_attn_v", "cross_attn_o"] {
                            s.tensor(&b(&format!("{t}.weight")), &[e, e]);
                        }
                    }
                    s.tensor(&b("ffn_norm.weight"), &[e]);
                    s.tensor(&b("ffn_gate.weight"), &[e, N_FF]);
                    s.tensor(&b("ffn_up.weight"), &[e, N_FF]);
                    s.tensor(&b("ffn_down.weight"), &[N_FF, e]);
                }
            }
            s
        }
    }

    #[test]
    fn valid_t5_passes() {
        let dir = tempfile::tempdir().unwrap();
        let facts = Spec::t5().check(dir.path(), "t5").unwrap();
        assert_eq!((facts.architecture.as_str(), facts.n_layer, facts.n_head_kv, facts.head_dim), ("t5", 2, 4, 8));
        assert_eq!(
            facts.seq2seq,
            Some(Seq2SeqFacts { n_dec_layer: 2, n_rel_attn_bkts: 32, decoder_start_token: Some(0) })
        );
        assert!(!facts.tied_output);
        // What llama.cpp accepts too: ReLU FFNs (no gate), tied output, per-layer and cross
        // biases, no charsmap, UGM's default special ids, a bucket count at the edges.
        let mut s = Spec::t5();
        s.tensors.retain(|t| !t.0.ends_with("ffn_gate.weight") && t.0 != "output.weight");
        s.tensor("enc.blk.1.attn_rel_b.weight", &[N_HEAD, 32]);
        s.tensor("dec.blk.1.cross_attn_rel_b.weight", &[N_HEAD, 32]);
        s.unset("tokenizer.ggml.precompiled_charsmap");
        s.unset("tokenizer.ggml.unknown_token_id");
        s.unset("tokenizer.ggml.eos_token_id");
        s.unset("t5.decoder_block_count");
        s.unset("t5.decoder_start_token_id");
        let facts = s.check(dir.path(), "t5-variant").unwrap();
        assert!(facts.tied_output);
        for n in [4, 255] {
            let mut s = Spec::t5();
            s.set("t5.attention.relative_buckets_count", Value::U32(n));
            s.tensor("enc.blk.0.attn_rel_b.weight", &[N_HEAD, n as u64]);
            s.tensor("dec.blk.0.attn_rel_b.weight", &[N_HEAD, n as u64]);
            s.check(dir.path(), "t5-buckets").unwrap();
        }
    }

    #[test]
    fn t5_hyperparameters_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let case = |key: &str, v: Value, needles: &[&str]| {
            let mut s = Spec::t5();
            s.set(key, v);
            refused(s.check(dir.path(), "t5-hparam"), needles);
        };
        case("t5.block_count", Value::U32(0), &["t5.block_count = 0"]);
        // delrec-fuzz: u32::MAX aborted llama.cpp in the decoder's reserve graph, 2^24 failed
        // to allocate.
        for n in [u32::MAX, 1 << 24, MAX_T5_CONTEXT + 1] {
            case("t5.context_length", Value::U32(n), &["t5.context_length", "above"]);
        }
        case("t5.block_count", Value::U32(513), &["t5.block_count = 513", "1..=512"]);
        case("t5.decoder_block_count", Value::U32(3), &["t5.decoder_block_count = 3", "block_count = 2"]);
        case("t5.decoder_block_count", Value::U32(1), &["t5.decoder_block_count = 1"]);
        case("t5.decoder_block_count", Value::I32(2), &["t5.decoder_block_count", "not a u32"]);
        case("t5.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN), &["layer_norm_rms_epsilon", "NaN"]);
        case("t5.attention.layer_norm_rms_epsilon", Value::F32(0.0), &["layer_norm_rms_epsilon"]);
        case("t5.attention.head_count_kv", Value::U32(2), &["head_count_kv = 2", "must equal"]);
        case("t5.attention.value_length", Value::U32(4), &["value_length 4"]);
        case("t5.attention.key_length", Value::U32(0), &["key_length 0"]);
        case("t5.feed_forward_length", Value::U32(0), &["t5.feed_forward_length is 0"]);
        case("t5.attention.head_count", Value::U32(0), &["head_count is 0"]);
        case("t5.decoder_start_token_id", Value::U32(16), &["t5.decoder_start_token_id = 16", "outside"]);
        case("t5.rope.scaling.type", Value::Str("bogus".into()), &["rope.scaling.type", "bogus"]);
        for n in [0, 2, 3, 256, 4096] {
            let mut s = Spec::t5();
            s.set("t5.attention.relative_buckets_count", Value::U32(n));
            s.tensor("enc.blk.0.attn_rel_b.weight", &[N_HEAD, n as u64]);
            s.tensor("dec.blk.0.attn_rel_b.weight", &[N_HEAD, n as u64]);
            refused(s.check(dir.path(), "t5-buckets"), &["relative_buckets_count", &format!("= {n} ")]);
        }
        let mut s = Spec::t5();
        s.unset("t5.attention.relative_buckets_count");
        refused(s.check(dir.path(), "t5-no-buckets"), &["relative_buckets_count is missing"]);
    }

    #[test]
    fn t5_tensor_set_shapes_and_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        // The bias table disagreeing with relative_buckets_count.
        let mut s = Spec::t5();
        s.set("t5.attention.relative_buckets_count", Value::U32(16));
        refused(s.check(dir.path(), "bkts"), &["attn_rel_b.weight", "[4, 32]", "[4, 16]"]);
        for name in ["enc.blk.0.attn_rel_b.weight", "dec.blk.0.attn_rel_b.weight", "dec.blk.1.cross_attn_q.weight"] {
            let mut s = Spec::t5();
            s.tensors.retain(|t| t.0 != name);
            refused(s.check(dir.path(), "missing"), &[name, "missing"]);
        }
        for name in ["enc.output_norm.weight", "enc.blk.1.ffn_up.weight", "dec.blk.0.attn_o.weight"] {
            let mut s = Spec::t5();
            s.tensors.retain(|t| t.0 != name);
            refused(s.check(dir.path(), "missing"), &[name]);
        }
        let mut s = Spec::t5();
        s.tensor("dec.blk.1.cross_attn_k.weight", &[N_EMBD, 16]);
        refused(s.check(dir.path(), "shape"), &["dec.blk.1.cross_attn_k.weight", "[32, 16]", "[32, 32]"]);
        let mut s = Spec::t5();
        s.tensor("enc.blk.0.attn_rel_b.weight", &[32, N_HEAD]);
        refused(s.check(dir.path(), "transposed"), &["enc.blk.0.attn_rel_b.weight", "shape"]);
        // Tensors t5 does not create: a third layer, the decoder-only names, a KV cross norm.
        for name in ["enc.blk.2.attn_norm.weight", "blk.0.attn_norm.weight", "dec.blk.0.cross_attn_norm_kv.weight"] {
            let mut s = Spec::t5();
            s.tensor(name, &[N_EMBD]);
            refused(s.check(dir.path(), "extra"), &[name, "not one the t5 architecture uses"]);
        }
        let mut s = Spec::t5();
        s.retype("enc.blk.0.attn_rel_b.weight", TensorType::I32);
        refused(s.check(dir.path(), "i32-bias"), &["enc.blk.0.attn_rel_b.weight", "I32", "get_rows"]);
        let mut s = Spec::t5();
        s.retype("dec.blk.1.cross_attn_norm.weight", TensorType::I32);
        refused(s.check(dir.path(), "i32-norm"), &["dec.blk.1.cross_attn_norm.weight", "must be F32"]);
        let mut s = Spec::t5();
        s.retype("enc.blk.1.ffn_gate.weight", TensorType::I32);
        refused(s.check(dir.path(), "i32-matrix"), &["enc.blk.1.ffn_gate.weight", "I32"]);
    }

    #[test]
    fn t5_vocabulary_defects_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let case = |what: &str, change: &dyn Fn(&mut Spec), needles: &[&str]| {
            let mut s = Spec::t5();
            change(&mut s);
            refused(s.check(dir.path(), what), needles);
        };
        case(
            "types",
            &|s| s.set("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 15]))),
            &["token_type", "15 entries"],
        );
        case(
            "scores",
            &|s| s.set("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0; 17]))),
            &["scores", "17 entries"],
        );
        case(
            "eos",
            &|s| s.set("tokenizer.ggml.eos_token_id", Value::U32(16)),
            &["tokenizer.ggml.eos_token_id = 16", "outside"],
        );
        case(
            "unk",
            &|s| s.set("tokenizer.ggml.unknown_token_id", Value::U32(99)),
            &["tokenizer.ggml.unknown_token_id = 99"],
        );
        case("pad", &|s| s.set("tokenizer.ggml.padding_token_id", Value::U32(1 << 31)), &["padding_token_id"]);
        case(
            "bos",
            &|s| s.set("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            &["add_bos_token is true", "bos_token_id"],
        );
        let tiny: Vec<String> = vec!["<pad>".into(), "</s>".into()];
        case(
            "no-unk",
            &|s| {
                s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(tiny.clone())));
                s.unset("tokenizer.ggml.scores");
                s.unset("tokenizer.ggml.token_type");
                s.unset("tokenizer.ggml.unknown_token_id");
                s.unset("t5.vocab_size");
            },
            &["unknown_token_id is missing", "default (2)"],
        );
        case(
            "dup",
            &|s| {
                let mut t: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
                t[7] = "t4".into();
                s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(t)));
            },
            &["token 7", "\"t4\"", "twice"],
        );
        case(
            "long",
            &|s| {
                let mut t: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
                t[5] = "x".repeat(MAX_UGM_TOKEN_BYTES + 1);
                s.set("tokenizer.ggml.tokens", Value::Array(Array::Str(t)));
            },
            &["token 5", "4097 bytes"],
        );
        case(
            "byte-typed",
            &|s| {
                let mut types = vec![1; N_VOCAB as usize];
                types[4] = TOKEN_TYPE_BYTE;
                s.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
            },
            &["token 4", "BYTE"],
        );
    }

    #[test]
    fn hostile_charsmaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |what: &str, map: Value, needles: &[&str]| {
            let mut s = Spec::t5();
            s.set("tokenizer.ggml.precompiled_charsmap", map);
            let r = s.check(dir.path(), what);
            refused(r, &[&["tokenizer.ggml.precompiled_charsmap"], needles].concat());
        };
        let good = charsmap(&[], b"b\0");
        let u8s = |b: Vec<u8>| Value::Array(Array::U8(b));
        with("short", u8s(vec![1, 0]), &["2 bytes", "4-byte header"]);
        with("empty", u8s(vec![]), &["0 bytes"]);
        // Cut right after the trie: llama.cpp needs blob_size + 4 < size.
        with("truncated", u8s(good[..good.len() - 2].to_vec()), &["trie is 2048 bytes", "only 2048 follow"]);
        let mut past = good.clone();
        past[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        with("blob-past-end", u8s(past), &["trie is 4294967295 bytes"]);
        let mut odd = good.clone();
        odd[..4].copy_from_slice(&2046u32.to_le_bytes());
        with("blob-odd", u8s(odd), &["2046", "4-byte nodes"]);
        // The root's base points past the array: the first byte of any text reads outside it.
        with("root-out", u8s(charsmap(&[(0, 1024 << 10)], b"b\0")), &["trie index", "past its 512 nodes"]);
        // A child (byte 'a') whose state reaches past the array for the next byte.
        let child = 0x100 ^ 0x62;
        with(
            "child-out",
            u8s(charsmap(&[(child, (0x3f0 << 10) | 0x62)], b"b\0")),
            &["trie index", "past its 512 nodes"],
        );
        // A leaf whose value node lies outside the array.
        with(
            "value-node-out",
            u8s(charsmap(&[(child, ((child as u32 ^ 700) << 10) | (1 << 8) | 0x62)], b"b\0")),
            &["past its 512 nodes"],
        );
        with(
            "offset-out",
            u8s(charsmap(&[(0x100, 0x8000_0000 | 2)], b"b\0")),
            &["replacement offset 2", "2 bytes of replacements"],
        );
        with("no-nul", u8s(charsmap(&[], b"bb")), &["offset 0", "no NUL"]);
        with("late-offset", u8s(charsmap(&[(0x100, 0x8000_0000 | 2)], b"b\0cd")), &["offset 2", "no NUL"]);
        with("typed", Value::Array(Array::U32(vec![0; 8])), &["not a u8 or i8 array"]);
        with("huge", u8s(vec![0; MAX_CHARSMAP_BYTES + 1]), &["at most"]);
        // Signed bytes are the same bytes to llama.cpp.
        let mut s = Spec::t5();
        let signed = Value::Array(Array::I8(good.iter().map(|&b| b as i8).collect()));
        s.set("tokenizer.ggml.precompiled_charsmap", signed);
        s.check(dir.path(), "i8").unwrap();
        // A trie with a cycle (the leaf's value node doubles as the root's state) terminates.
        assert_eq!(check_charsmap(&good), Ok(()));
    }

    #[test]
    fn unknown_architecture_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spec::new("llama");
        s.set("general.architecture", Value::Str("gemma3".into()));
        refused(s.check(dir.path(), "arch"), &["gemma3", "not supported"]);
        let mut s = Spec::new("llama");
        s.unset("general.architecture");
        refused(s.check(dir.path(), "no-arch"), &["general.architecture"]);
    }

    /// Every model GGUF under the workspace's `target/` (converted fixtures, the real SmolLM2
    /// and its requantizations, bench models) passes: the check refuses no legitimate model.
    #[test]
    fn every_model_under_target_passes() {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else { return };
            for entry in rd.flatten() {
                let p = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                // Build outputs, the Python venv, in-progress temp files and the fuzzer's saved
                // hostile cases are not legitimate models.
                if name.starts_with('.')
                    || ["release", "debug", "train-venv", "fuzz-crashes", "fuzz"].contains(&name.as_str())
                {
                    continue;
                }
                match entry.file_type() {
                    Ok(t) if t.is_dir() && depth < 8 => walk(&p, depth + 1, out),
                    Ok(t) if t.is_file() && name.ends_with(".gguf") => out.push(p),
                    _ => {}
                }
            }
        }
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let mut files = Vec::new();
        walk(&target, 0, &mut files);
        files.sort();
        let mut checked = 0;
        for p in &files {
            let f = GgufFile::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if f.get("general.architecture").and_then(Value::as_str) == Some("delrec-pack") {
                continue;
            }
            if f.get("general.type").and_then(Value::as_str) == Some("adapter") {
                assert!(check_model(&f).is_err(), "{}: an adapter passed as a model", p.display());
                continue;
            }
            match check_model(&f) {
                Ok(m) => eprintln!(
                    "accepted {}: {} {} layers, n_embd {}, vocab {}",
                    p.display(),
                    m.architecture,
                    m.n_layer,
                    m.n_embd,
                    m.n_vocab
                ),
                Err(e) => panic!("{}: a legitimate model was refused: {e}", p.display()),
            }
            checked += 1;
        }
        eprintln!("{checked} model files checked under {}", target.display());
    }
}
