//! The mutation classes. Each takes a seed (a valid model or pack, walked and parsed) and a
//! case's RNG and returns the mutant's bytes and a description of every change made.
//!
//! Byte-level classes work on the seed's bytes with its layout (bit flips, interesting values,
//! truncations, hostile counts and lengths); structural classes edit the parsed document
//! (hyperparameters, tensors, vocabulary, pack fields) and serialize it.

use std::path::PathBuf;

use delrec_runtime::format::gguf::{Array, Value};

use super::gguf::{tensor_size, Doc, FieldKind, Layout, Tensor};
use super::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Model,
    Pack,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Model => "model",
            Target::Pack => "pack",
        }
    }
}

/// Classes, with their weight in the round-robin schedule. Truncations weigh more: they cost
/// under a millisecond each (the reader refuses them at once) and the boundary sweep should
/// reach every structural boundary of every seed within a CI run.
pub const MODEL_CLASSES: &[(&str, usize)] = &[
    ("bitflip", 1),
    ("bytes", 1),
    ("truncate-boundary", 8),
    ("truncate-random", 2),
    ("huge-field", 2),
    ("hparam", 3),
    ("tensor-type", 2),
    ("tensor-shape", 2),
    ("tensor-set", 2),
    ("vocab", 3),
    ("metadata", 1),
    ("multi", 2),
];

pub const PACK_CLASSES: &[(&str, usize)] = &[
    ("bitflip", 1),
    ("bytes", 1),
    ("truncate-boundary", 8),
    ("truncate-random", 2),
    ("huge-field", 2),
    ("tokens", 2),
    ("offsets", 2),
    ("soft-prompt", 2),
    ("template", 2),
    ("catalog", 2),
    ("seq", 2),
    ("keys", 1),
    ("multi", 2),
];

/// A valid file the mutants start from.
pub struct Seed {
    pub name: String,
    pub target: Target,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub doc: Doc,
    pub layout: Layout,
    /// The genuine other half: the pack for a model seed, the model for a pack seed.
    pub partner: PathBuf,
    /// For model seeds: the genuine pack's document, re-pinned to a mutant's identity.
    pub partner_doc: Option<Doc>,
    /// Truncation points: the structural boundaries first (file order), then the boundaries
    /// between array elements (shuffled).
    pub cuts: Vec<usize>,
    /// How many of `cuts` are structural.
    pub primary_cuts: usize,
    pub arch: String,
    pub n_vocab: i64,
    pub n_layer: u64,
}

pub struct Mutant {
    pub bytes: Vec<u8>,
    pub desc: Vec<String>,
    /// The edited document, when the mutant is one (for the writer cross-check).
    pub doc: Option<Doc>,
}

// ---------------------------------------------------------------------------------------------
// Values

const U32S: &[u64] = &[0, 1, 2, 3, 7, 8, 255, 256, 4095, 65535, 65536, 1 << 24, 1 << 31, u32::MAX as u64];
const U64S: &[u64] = &[u64::MAX, u64::MAX / 2, 1 << 32, (1 << 32) + 1, 1 << 40, 1 << 48, 1 << 62, i64::MAX as u64];

fn f32s() -> [f32; 14] {
    [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.0,
        0.0,
        -0.0,
        1e-45,
        f32::MIN_POSITIVE,
        1e30,
        f32::MAX,
        f32::MIN,
        0.5,
        65504.0,
    ]
}

/// A hostile number near `o` or at an extreme.
fn num(rng: &mut Rng, o: u64) -> u64 {
    match rng.below(6) {
        0 => o.wrapping_add(1),
        1 => o.saturating_sub(1),
        2 => o.saturating_mul(2),
        3 => o / 2,
        4 => *rng.pick(U64S),
        _ => *rng.pick(U32S),
    }
}

fn hostile_f32(rng: &mut Rng, o: f32) -> f32 {
    match rng.below(4) {
        0 => o * 1e30,
        1 => -o,
        _ => *rng.pick(&f32s()),
    }
}

fn strings() -> Vec<String> {
    vec![
        String::new(),
        "bogus".into(),
        "yarn".into(),
        "longrope".into(),
        "none".into(),
        "linear".into(),
        "llama".into(),
        "gpt2".into(),
        "qwen2".into(),
        "bert".into(),
        "t5".into(),
        " ".into(),
        "\u{0}".into(),
        "é🦀\u{202e}".into(),
        "a".repeat(70_000),
    ]
}

/// A value of the same type as `o`, changed in a hostile way.
fn same_type(rng: &mut Rng, o: &Value, n_layer: u64) -> Value {
    let u = o.as_u64().unwrap_or(1);
    match o {
        Value::U8(_) => Value::U8(num(rng, u) as u8),
        Value::I8(_) => Value::I8(*rng.pick(&[-1i8, i8::MIN, i8::MAX, 0])),
        Value::U16(_) => Value::U16(num(rng, u) as u16),
        Value::I16(_) => Value::I16(*rng.pick(&[-1i16, i16::MIN, i16::MAX, 0])),
        Value::U32(_) => Value::U32(num(rng, u) as u32),
        Value::I32(v) => Value::I32(*rng.pick(&[-1, -2, i32::MIN, i32::MAX, 0, v.wrapping_add(1), v.wrapping_neg()])),
        Value::U64(_) => Value::U64(num(rng, u)),
        Value::I64(v) => Value::I64(*rng.pick(&[-1, i64::MIN, i64::MAX, 0, v.wrapping_add(1)])),
        Value::F32(v) => Value::F32(hostile_f32(rng, *v)),
        Value::F64(v) => Value::F64(hostile_f32(rng, *v as f32) as f64),
        Value::Bool(b) => Value::Bool(!b),
        Value::Str(s) => match rng.below(4) {
            0 => Value::Str(s.chars().take(s.chars().count() / 2).collect()),
            1 => Value::Str(format!("{s}{s}")),
            _ => Value::Str(rng.pick(&strings()).clone()),
        },
        Value::Array(a) => Value::Array(array_edit(rng, a, n_layer)),
    }
}

/// An array edited: an element changed, emptied, shortened, lengthened, retyped.
fn array_edit(rng: &mut Rng, a: &Array, n_layer: u64) -> Array {
    let mut a = a.clone();
    let n = a.len();
    macro_rules! edit {
        ($v:expr, $new:expr) => {{
            match rng.below(5) {
                0 => $v.clear(),
                1 => {
                    let keep = rng.below($v.len().max(1));
                    $v.truncate(keep)
                }
                2 if !$v.is_empty() => {
                    let x = $v[rng.below($v.len())].clone();
                    $v.push(x)
                }
                _ if !$v.is_empty() => {
                    let i = rng.below($v.len());
                    $v[i] = $new;
                }
                _ => $v.push($new),
            }
        }};
    }
    match &mut a {
        Array::U32(v) => edit!(v, num(rng, 1) as u32),
        Array::I32(v) => edit!(v, *rng.pick(&[-1, i32::MIN, i32::MAX, 7, 100, 0])),
        Array::F32(v) => edit!(v, *rng.pick(&f32s())),
        Array::Str(v) => edit!(v, rng.pick(&strings()).clone()),
        Array::U64(v) => edit!(v, num(rng, 1)),
        Array::I64(v) => edit!(v, -1),
        Array::U8(v) => edit!(v, 255),
        Array::I8(v) => edit!(v, -1),
        Array::U16(v) => edit!(v, u16::MAX),
        Array::I16(v) => edit!(v, -1),
        Array::Bool(v) => edit!(v, true),
        Array::F64(v) => edit!(v, f64::NAN),
    }
    if rng.chance(0.15) {
        // Retyped, same length.
        let len = if rng.chance(0.5) { n } else { n_layer as usize };
        a = match rng.below(4) {
            0 => Array::U32(vec![1; len]),
            1 => Array::I32(vec![-1; len]),
            2 => Array::F32(vec![f32::NAN; len]),
            _ => Array::Str(vec!["x".into(); len]),
        };
    }
    a
}

/// Any hostile value for a key whose genuine value is `orig` (if it has one).
fn hostile_value(rng: &mut Rng, orig: Option<&Value>, n_layer: u64) -> Value {
    if let Some(o) = orig {
        if rng.chance(0.5) {
            return same_type(rng, o, n_layer);
        }
    }
    let o = orig.and_then(Value::as_u64).unwrap_or(1);
    match rng.below(10) {
        0 | 1 => Value::U32(num(rng, o) as u32),
        2 => Value::I32(*rng.pick(&[-1, i32::MIN, i32::MAX, o as i32, -(o as i32)])),
        3 => Value::U64(*rng.pick(&[u64::MAX, 1 << 32, 1 << 40, o, o + 1])),
        4 => Value::I64(*rng.pick(&[-1, i64::MIN, o as i64])),
        5 => Value::F32(*rng.pick(&f32s())),
        6 => Value::Bool(rng.chance(0.5)),
        7 => Value::Str(rng.pick(&strings()).clone()),
        8 => Value::Array(match rng.below(5) {
            0 => Array::U32(vec![o as u32; n_layer as usize]),
            1 => Array::U32(vec![o as u32; n_layer as usize + 1]),
            2 => {
                let mut v = vec![o as u32; n_layer.max(1) as usize];
                v[0] = num(rng, o) as u32;
                Array::U32(v)
            }
            3 => Array::I32(vec![]),
            _ => Array::Str(vec![]),
        }),
        _ => match rng.below(4) {
            0 => Value::U8(o as u8),
            1 => Value::I16(-1),
            2 => Value::F64(f64::NAN),
            _ => Value::U16(o as u16),
        },
    }
}

fn show(v: &Value) -> String {
    let s = v.summary();
    let ty = match v {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::F32(_) => "f32",
        Value::Bool(_) => "bool",
        Value::Str(_) => "str",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F64(_) => "f64",
        Value::Array(_) => "array",
    };
    let s: String = s.chars().take(80).collect();
    format!("{ty} {s}")
}

/// Sets, removes or duplicates `key` (mostly sets).
fn key_edit(rng: &mut Rng, doc: &mut Doc, key: &str, n_layer: u64, desc: &mut Vec<String>) {
    let orig = doc.get(key).cloned();
    match rng.below(20) {
        0..=2 if orig.is_some() => {
            doc.remove(key);
            desc.push(format!("remove {key}"));
        }
        3 if orig.is_some() => {
            let v = orig.clone().expect("checked");
            doc.kv.push((key.to_string(), v));
            desc.push(format!("duplicate key {key}"));
        }
        _ => {
            let v = hostile_value(rng, orig.as_ref(), n_layer);
            desc.push(format!("{key} := {}", show(&v)));
            doc.set(key, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Byte-level classes

/// A position: mostly inside the metadata, sometimes anywhere (tensor data).
fn position(rng: &mut Rng, layout: &Layout, target: Target) -> usize {
    let meta_share = match target {
        Target::Model => 0.8,
        Target::Pack => 0.5,
    };
    if rng.chance(meta_share) && layout.meta_end > 0 && layout.meta_end <= layout.len {
        rng.below(layout.meta_end)
    } else {
        rng.below(layout.len)
    }
}

fn bitflip(rng: &mut Rng, layout: &Layout, target: Target, b: &mut [u8], desc: &mut Vec<String>) {
    let n = *rng.pick(&[1usize, 1, 1, 2, 4, 8, 32]);
    for _ in 0..n {
        let at = position(rng, layout, target);
        let bit = rng.below(8);
        b[at] ^= 1 << bit;
        desc.push(format!("flip bit {bit} of byte {at}"));
    }
}

fn interesting(rng: &mut Rng) -> (Vec<u8>, String) {
    let v: (Vec<u8>, &str) = match rng.below(14) {
        0 => (vec![0], "0x00"),
        1 => (vec![0xff], "0xff"),
        2 => (vec![0x7f], "0x7f"),
        3 => (vec![0x80], "0x80"),
        4 => (i32::MAX.to_le_bytes().to_vec(), "i32::MAX"),
        5 => (i32::MIN.to_le_bytes().to_vec(), "i32::MIN"),
        6 => (u32::MAX.to_le_bytes().to_vec(), "u32::MAX"),
        7 => (u64::MAX.to_le_bytes().to_vec(), "u64::MAX"),
        8 => (i64::MAX.to_le_bytes().to_vec(), "i64::MAX"),
        9 => (0u32.to_le_bytes().to_vec(), "0u32"),
        10 => (0u64.to_le_bytes().to_vec(), "0u64"),
        11 => (f32::NAN.to_le_bytes().to_vec(), "f32 NaN"),
        12 => (f32::INFINITY.to_le_bytes().to_vec(), "f32 inf"),
        _ => (0x8000u16.to_le_bytes().to_vec(), "0x8000u16"),
    };
    (v.0, v.1.to_string())
}

fn bytes_class(rng: &mut Rng, layout: &Layout, target: Target, b: &mut [u8], desc: &mut Vec<String>) {
    let n = *rng.pick(&[1usize, 1, 2, 3]);
    for _ in 0..n {
        let (v, name) = interesting(rng);
        let at = if rng.chance(0.5) && !layout.fields.is_empty() {
            rng.pick(&layout.fields).at
        } else {
            position(rng, layout, target)
        };
        let end = (at + v.len()).min(b.len());
        b[at..end].copy_from_slice(&v[..end - at]);
        desc.push(format!("write {name} at byte {at}"));
    }
}

fn huge_field(rng: &mut Rng, layout: &Layout, b: &mut [u8], desc: &mut Vec<String>) {
    let fields: Vec<_> = layout.fields.iter().filter(|f| f.kind.is_count()).collect();
    if fields.is_empty() {
        return;
    }
    // Header counts and tensor dims more often than the many string lengths of the vocabulary.
    let f = if rng.chance(0.5) {
        let rare: Vec<_> =
            fields.iter().filter(|f| !matches!(f.kind, FieldKind::StrLen | FieldKind::KeyLen)).copied().collect();
        if rare.is_empty() {
            *rng.pick(&fields)
        } else {
            *rng.pick(&rare)
        }
    } else {
        *rng.pick(&fields)
    };
    let old = match f.width {
        4 => u32::from_le_bytes(b[f.at..f.at + 4].try_into().expect("4")) as u64,
        _ => u64::from_le_bytes(b[f.at..f.at + 8].try_into().expect("8")),
    };
    let new = match f.kind {
        FieldKind::ValueType | FieldKind::ArrayType | FieldKind::TensorType => {
            *rng.pick(&[0, 1, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 30, 31, 39, 40, 100, u32::MAX as u64])
        }
        FieldKind::NDims => *rng.pick(&[0, 1, 2, 3, 4, 5, 8, u32::MAX as u64]),
        FieldKind::Version => *rng.pick(&[0, 1, 2, 4, u32::MAX as u64]),
        FieldKind::TensorOffset => *rng.pick(&[old + 32, old + 1, old.wrapping_sub(32), u64::MAX - 31, 1 << 40, 0]),
        _ => num(rng, old),
    };
    match f.width {
        4 => b[f.at..f.at + 4].copy_from_slice(&(new as u32).to_le_bytes()),
        _ => b[f.at..f.at + 8].copy_from_slice(&new.to_le_bytes()),
    }
    desc.push(format!("{:?} at byte {}: {old} -> {new}", f.kind, f.at));
}

// ---------------------------------------------------------------------------------------------
// Model classes

const HPARAMS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "embedding_length_out",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon",
    "attention.causal",
    "attention.sliding_window",
    "attention.clamp_kqv",
    "attention.max_alibi_bias",
    "attention.scale",
    "rope.dimension_count",
    "rope.dimension_sections",
    "rope.freq_base",
    "rope.scale_linear",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.attn_factor",
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
    "rope.scaling.alpha",
    "rope.scaling.yarn_log_multiplier",
    "rope.scaling.yarn_ext_factor",
    "rope.scaling.yarn_attn_factor",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "expert_count",
    "expert_used_count",
    "expert_shared_count",
    "expert_group_count",
    "expert_group_used_count",
    "expert_weights_scale",
    "expert_weights_norm",
    "expert_gating_func",
    "nextn_predict_layers",
    "pooling_type",
    "classifier.pooling_type",
    "vocab_size",
    "logit_scale",
    "use_parallel_residual",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "swin_norm",
    "embedding_scale",
    "residual_scale",
    "decoder_start_token_id",
    "leading_dense_block_count",
    "interleave_moe_layer_step",
];

fn hparam(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let arch = seed.arch.clone();
    let k = |n: &str| format!("{arch}.{n}");
    let nl = seed.n_layer;
    // Present keys more often than absent ones.
    let present: Vec<&str> = HPARAMS.iter().copied().filter(|n| doc.get(&k(n)).is_some()).collect();
    let name = if rng.chance(0.6) && !present.is_empty() { *rng.pick(&present) } else { *rng.pick(HPARAMS) };
    if rng.chance(0.25) {
        // Meaningful combinations: plausible files that must still be safe.
        let get = |d: &Doc, n: &str| d.get(&k(n)).and_then(Value::as_u64).unwrap_or(0);
        match rng.below(8) {
            0 => {
                let ty = *rng.pick(&["yarn", "longrope", "none", "linear"]);
                doc.set(&k("rope.scaling.type"), Value::Str(ty.into()));
                doc.set(&k("rope.scaling.factor"), Value::F32(*rng.pick(&[0.0, 0.5, 4.0, 1e30, 1e-30])));
                doc.set(&k("rope.scaling.original_context_length"), Value::U32(*rng.pick(&[1, 64, 512, u32::MAX])));
                desc.push(format!("rope scaling {ty} with factor and original context"));
            }
            1 => {
                let h = get(doc, "attention.head_count").max(1);
                let kv = *rng.pick(&[1, h, h / 2, h + 1, h * 2]);
                doc.set(&k("attention.head_count_kv"), Value::U32(kv as u32));
                desc.push(format!("head_count_kv := {kv} (head_count {h})"));
            }
            2 => {
                let h = get(doc, "attention.head_count") as u32;
                let mut v = vec![h; nl as usize];
                if rng.chance(0.5) && !v.is_empty() {
                    let i = rng.below(v.len());
                    v[i] = h.wrapping_mul(2);
                }
                doc.set(&k("attention.head_count"), Value::Array(Array::U32(v.clone())));
                desc.push(format!("head_count per layer {v:?}"));
            }
            3 => {
                let ff = get(doc, "feed_forward_length") as i32;
                let v = vec![ff; nl as usize + rng.below(2)];
                doc.set(&k("feed_forward_length"), Value::Array(Array::I32(v.clone())));
                desc.push(format!("feed_forward_length per layer {v:?}"));
            }
            4 => {
                let e = get(doc, "embedding_length");
                let h = *rng.pick(&[1u64, 2, 8, 16]);
                let hd = e / h;
                doc.set(&k("attention.head_count"), Value::U32(h as u32));
                doc.set(&k("attention.head_count_kv"), Value::U32(h as u32));
                doc.set(&k("rope.dimension_count"), Value::U32(hd as u32));
                desc.push(format!("heads re-split: {h} heads of {hd}"));
            }
            5 => {
                let n = *rng.pick(&[1u32, 16, 255, 256, 257, u32::MAX]);
                doc.set(&k("context_length"), Value::U32(n));
                desc.push(format!("context_length := {n}"));
            }
            6 => {
                let hd = get(doc, "rope.dimension_count").max(2);
                let v = *rng.pick(&[hd, hd * 2, hd / 2, 0]);
                let w = *rng.pick(&[hd, v]);
                doc.set(&k("attention.key_length"), Value::U32(v as u32));
                doc.set(&k("attention.value_length"), Value::U32(w as u32));
                desc.push(format!("key_length {v}, value_length {w}"));
            }
            _ => {
                doc.set(&k("block_count"), Value::U32((nl as u32).saturating_sub(1).max(1)));
                desc.push("block_count one less (a layer's tensors left over)".into());
            }
        }
        return;
    }
    key_edit(rng, doc, &k(name), nl, desc);
}

/// ggml type ids to retype tensors to: the known ones, and ids ggml lacks.
const TYPE_IDS: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    19,
    20,
    23,
    24,
    25,
    26,
    27,
    28,
    29,
    30,
    34,
    39,
    40,
    41,
    255,
    u32::MAX,
];

fn pick_tensor(rng: &mut Rng, doc: &Doc) -> Option<usize> {
    (!doc.tensors.is_empty()).then(|| rng.below(doc.tensors.len()))
}

fn tensor_type(rng: &mut Rng, doc: &mut Doc, desc: &mut Vec<String>) {
    let Some(i) = pick_tensor(rng, doc) else { return };
    let t = &mut doc.tensors[i];
    let old = t.ty;
    // Same byte size first (F32 <-> I32, F16 <-> BF16/I16): only the type check can catch it.
    let same_size: Vec<u32> = TYPE_IDS
        .iter()
        .copied()
        .filter(|&ty| ty != old && tensor_size(ty, &t.dims) == Some(t.data.len() as u64))
        .collect();
    let ty = if rng.chance(0.4) && !same_size.is_empty() { *rng.pick(&same_size) } else { *rng.pick(TYPE_IDS) };
    t.ty = ty;
    let resized = match tensor_size(ty, &t.dims) {
        Some(n) if n != t.data.len() as u64 && rng.chance(0.6) && n < 64 << 20 => {
            t.data.resize(n as usize, 0x3c);
            true
        }
        _ => false,
    };
    desc.push(format!("tensor {} type {old} -> {ty}{}", t.name, if resized { " (bytes resized)" } else { "" }));
}

fn tensor_shape(rng: &mut Rng, doc: &mut Doc, desc: &mut Vec<String>) {
    let Some(i) = pick_tensor(rng, doc) else { return };
    let other = doc.tensors[rng.below(doc.tensors.len())].dims.clone();
    let t = &mut doc.tensors[i];
    if t.dims.is_empty() {
        t.dims.push(1);
    }
    let old = t.dims.clone();
    match rng.below(7) {
        0 if t.dims.len() >= 2 => t.dims.swap(0, 1),
        1 => {
            let d = rng.below(t.dims.len());
            t.dims[d] = num(rng, t.dims[d]);
        }
        2 => t.dims.push(*rng.pick(&[1, 2, 0])),
        3 if t.dims.len() >= 2 => {
            let n = t.dims.iter().product();
            t.dims = vec![n];
        }
        4 => t.dims = other,
        5 => {
            t.dims = match rng.below(3) {
                0 => vec![],
                1 => vec![1; 5],
                _ => vec![1; 9],
            }
        }
        _ => {
            let d = rng.below(t.dims.len());
            t.dims[d] = *rng.pick(&[0, 1, u64::MAX, 1 << 32, 1 << 62]);
        }
    }
    // Keep the bytes consistent with the new shape half the time (the shape check, not the
    // size check, must refuse it).
    let resized = match tensor_size(t.ty, &t.dims) {
        Some(n) if n != t.data.len() as u64 && n < 64 << 20 && rng.chance(0.5) => {
            t.data.resize(n as usize, 0);
            true
        }
        _ => false,
    };
    desc.push(format!(
        "tensor {} dims {old:?} -> {:?}{}",
        t.name,
        t.dims,
        if resized { " (bytes resized)" } else { "" }
    ));
}

/// `n` copies of `v` (at most 4 Mi of them: a hostile shape must not exhaust the parent).
fn f32_data(n: u64, v: f32) -> Vec<u8> {
    std::iter::repeat_n(v.to_le_bytes(), n.min(1 << 22) as usize).flatten().collect()
}

fn tensor_set(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let Some(i) = pick_tensor(rng, doc) else { return };
    let e = doc.get(&format!("{}.embedding_length", seed.arch)).and_then(Value::as_u64).unwrap_or(64);
    let hd = doc.get(&format!("{}.rope.dimension_count", seed.arch)).and_then(Value::as_u64).unwrap_or(16);
    let name = doc.tensors[i].name.clone();
    match rng.below(9) {
        0 | 1 => {
            doc.tensors.remove(i);
            desc.push(format!("remove tensor {name}"));
        }
        2 => {
            let t = doc.tensors[i].clone();
            doc.tensors.push(t);
            desc.push(format!("duplicate tensor {name} (same name)"));
        }
        3 => {
            let mut t = doc.tensors[i].clone();
            let new = match rng.below(5) {
                0 => name.replacen("blk.0.", &format!("blk.{}.", seed.n_layer), 1),
                1 => name.replace("attn_q", "attn_qkv"),
                2 => "output.weight".to_string(),
                3 => format!("{name}.extra"),
                _ => name.replacen("blk.", "blk.9999999999.", 1),
            };
            t.name = new.clone();
            doc.tensors.push(t);
            desc.push(format!("copy tensor {name} as {new}"));
        }
        4 => {
            let new = match rng.below(4) {
                0 => name.replacen("blk.1.", "blk.0.", 1),
                1 => String::new(),
                2 => format!("{name}\u{0}"),
                _ => name.to_uppercase(),
            };
            doc.tensors[i].name = new.clone();
            desc.push(format!("rename tensor {name} -> {new:?}"));
        }
        5 => {
            rng.shuffle(&mut doc.tensors);
            desc.push("tensors reordered".into());
        }
        6 => {
            // An optional tensor llama.cpp reads, with the expected shape and hostile values.
            let v = *rng.pick(&f32s());
            let (n, dims) = match rng.below(4) {
                0 => ("rope_freqs.weight".to_string(), vec![hd / 2]),
                1 => ("blk.0.attn_q.bias".to_string(), vec![e]),
                2 => ("output.bias".to_string(), vec![seed.n_vocab as u64]),
                _ => ("blk.1.attn_output.bias".to_string(), vec![e]),
            };
            let len = dims.iter().fold(1u64, |a, &d| a.saturating_mul(d));
            doc.tensors.retain(|t| t.name != n);
            doc.tensors.push(Tensor { name: n.clone(), dims: dims.clone(), ty: 0, data: f32_data(len, v) });
            desc.push(format!("add optional tensor {n} {dims:?} filled with {v}"));
        }
        7 => {
            // Rope factors for longrope, with the type that selects them.
            doc.set(&format!("{}.rope.scaling.type", seed.arch), Value::Str("longrope".into()));
            let len = *rng.pick(&[hd / 2, hd, 1]);
            for n in ["rope_factors_long.weight", "rope_factors_short.weight"] {
                doc.tensors.push(Tensor { name: n.into(), dims: vec![len], ty: 0, data: f32_data(len, 1.0) });
            }
            desc.push(format!("longrope with rope factor tensors of {len}"));
        }
        _ => {
            let t = &mut doc.tensors[i];
            let n = t.data.len();
            let v = *rng.pick(&f32s());
            if t.ty == 0 {
                t.data = f32_data(n as u64 / 4, v);
            } else {
                t.data.iter_mut().for_each(|b| *b = 0xff);
            }
            desc.push(format!("tensor {name} filled with {v} (or 0xff)"));
        }
    }
}

const SPECIAL_KEYS: &[&str] = &[
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

const PRE: &[&str] = &[
    "default",
    "llama3",
    "llama-bpe",
    "qwen2",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "refact",
    "command-r",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "superbpe",
    "trillion",
    "bailingmoe",
    "seed-coder",
    "hunyuan",
    "kimi-k2",
    "grok-2",
    "whitespace",
    "bogus",
];

fn vocab(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let nv = seed.n_vocab;
    match rng.below(12) {
        0..=2 => {
            let Some(Value::Array(Array::Str(tokens))) = doc.get_mut("tokenizer.ggml.tokens") else { return };
            let n = tokens.len();
            if n == 0 {
                return;
            }
            let (i, j) = (rng.below(n), rng.below(n));
            let what = match rng.below(9) {
                0 => {
                    tokens[i] = tokens[j].clone();
                    format!("token {i} := token {j} ({:?})", tokens[j])
                }
                1 => {
                    tokens[i] = String::new();
                    format!("token {i} := \"\"")
                }
                2 => {
                    tokens.pop();
                    "last token removed".into()
                }
                3 => {
                    tokens.push("zz-extra".into());
                    "a token appended".into()
                }
                4 => {
                    tokens[i] = "x".repeat(*rng.pick(&[300, 5000, 70_000]));
                    format!("token {i} made very long")
                }
                5 => {
                    tokens[i] = format!("<0x{:02X}>", rng.below(256));
                    format!("token {i} := {:?}", tokens[i])
                }
                6 => {
                    tokens[i] = "\u{0}".into();
                    format!("token {i} := NUL")
                }
                7 => {
                    tokens[i] = rng.pick(&["Ġ", " ", "\u{fffd}", "é", "<|endoftext|>", "<s>", "</s>"]).to_string();
                    format!("token {i} := {:?}", tokens[i])
                }
                _ => {
                    tokens.truncate(rng.below(n.min(8)));
                    format!("vocabulary cut to {} tokens", tokens.len())
                }
            };
            desc.push(what);
        }
        3 => {
            let Some(Value::Array(Array::I32(types))) = doc.get_mut("tokenizer.ggml.token_type") else { return };
            if types.is_empty() {
                return;
            }
            let i = rng.below(types.len());
            let v = *rng.pick(&[-1, 0, 2, 3, 4, 5, 6, 7, 8, 100, i32::MAX, i32::MIN]);
            if rng.chance(0.3) {
                types.iter_mut().for_each(|t| *t = v);
                desc.push(format!("every token type := {v}"));
            } else {
                types[i] = v;
                desc.push(format!("token_type[{i}] := {v}"));
            }
        }
        4 => {
            let Some(Value::Array(Array::Str(merges))) = doc.get_mut("tokenizer.ggml.merges") else {
                key_edit(rng, doc, "tokenizer.ggml.merges", seed.n_layer, desc);
                return;
            };
            if merges.is_empty() {
                return;
            }
            let i = rng.below(merges.len());
            let m = match rng.below(9) {
                0 => merges[i].replace(' ', ""),
                1 => format!(" {}", merges[i]),
                2 => format!("{} ", merges[i]),
                3 => format!("{} x", merges[i]),
                4 => "zzz qqq".into(),
                5 => String::new(),
                6 => " ".into(),
                7 => merges[rng.below(merges.len())].clone(),
                _ => {
                    merges.clear();
                    desc.push("merges emptied".into());
                    return;
                }
            };
            desc.push(format!("merge {i} {:?} -> {m:?}", merges[i]));
            merges[i] = m;
        }
        5 | 6 => {
            let key = *rng.pick(SPECIAL_KEYS);
            let v = match rng.below(8) {
                0 => Value::U32(nv as u32),
                1 => Value::U32(nv as u32 - 1),
                2 => Value::I32(-1),
                3 => Value::U32(u32::MAX),
                4 => Value::I64(i64::MIN),
                5 => Value::Str("0".into()),
                6 => Value::U32(rng.below(nv as usize) as u32),
                _ => Value::U64(1 << 40),
            };
            desc.push(format!("{key} := {}", show(&v)));
            doc.set(key, v);
        }
        7 => {
            let v = match rng.below(4) {
                0 => Value::Str("llama".into()),
                1 => Value::Str(rng.pick(&["bert", "t5", "rwkv", "plamo2", "none", "", "ugm"]).to_string()),
                2 => Value::U32(1),
                _ => {
                    doc.remove("tokenizer.ggml.model");
                    desc.push("remove tokenizer.ggml.model".into());
                    return;
                }
            };
            desc.push(format!("tokenizer.ggml.model := {}", show(&v)));
            doc.set("tokenizer.ggml.model", v);
        }
        8 => {
            let pre = *rng.pick(PRE);
            doc.set("tokenizer.ggml.pre", Value::Str(pre.into()));
            desc.push(format!("tokenizer.ggml.pre := {pre}"));
        }
        9 => {
            let v = match rng.below(4) {
                0 => Array::F32(vec![f32::NAN; nv as usize]),
                1 => Array::F32(vec![0.0; nv as usize + 1]),
                2 => Array::I32(vec![1; nv as usize]),
                _ => Array::F32((0..nv).map(|i| -(i as f32)).collect()),
            };
            desc.push(format!("tokenizer.ggml.scores := {} entries", v.len()));
            doc.set("tokenizer.ggml.scores", Value::Array(v));
        }
        10 => {
            let key = *rng.pick(&[
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token",
                "tokenizer.ggml.add_sep_token",
                "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.remove_extra_whitespaces",
                "tokenizer.ggml.token_type_count",
                "tokenizer.ggml.suppress_tokens",
                "tokenizer.chat_template",
                "tokenizer.ggml.precompiled_charsmap",
            ]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
        _ => {
            let key = *rng.pick(&["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
    }
}

fn metadata(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    match rng.below(6) {
        0 => {
            // The other architecture, keys renamed with it.
            let to = if seed.arch == "llama" { "qwen2" } else { "llama" };
            let from = format!("{}.", seed.arch);
            for (k, _) in doc.kv.iter_mut() {
                if let Some(rest) = k.strip_prefix(&from) {
                    *k = format!("{to}.{rest}");
                }
            }
            doc.set("general.architecture", Value::Str(to.into()));
            desc.push(format!("architecture {} -> {to}, keys renamed", seed.arch));
        }
        1 => {
            let v = match rng.below(3) {
                0 => Value::Str(rng.pick(&["gemma3", "gpt2", "bert", "", "LLAMA", "llama\u{0}"]).to_string()),
                1 => Value::U32(0),
                _ => {
                    doc.remove("general.architecture");
                    desc.push("remove general.architecture".into());
                    return;
                }
            };
            desc.push(format!("general.architecture := {}", show(&v)));
            doc.set("general.architecture", v);
        }
        2 => {
            let v = match rng.below(6) {
                0 => Value::U32(*rng.pick(&[1, 2, 8, 16, 64, 4096, 1 << 20])),
                1 => Value::U32(*rng.pick(&[0, 3, 48, 1 << 21, u32::MAX])),
                2 => Value::U64(1 << 40),
                3 => Value::I32(-32),
                4 => Value::Str("32".into()),
                _ => Value::U8(64),
            };
            desc.push(format!("general.alignment := {}", show(&v)));
            doc.set("general.alignment", v);
        }
        3 => {
            let key = *rng.pick(&["general.name", "general.file_type", "general.quantization_version", "general.type"]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
        4 => {
            doc.version = *rng.pick(&[1, 2, 4, 0]);
            desc.push(format!("version := {}", doc.version));
        }
        _ => {
            let n = *rng.pick(&[1usize, 100, 10_000]);
            for i in 0..n {
                doc.kv.push((format!("fuzz.extra.{i}"), Value::U32(i as u32)));
            }
            desc.push(format!("{n} unknown keys added"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pack classes

const K_TOKENS: &str = "catalog.tokens";
const K_OFFSETS: &str = "catalog.offsets";

fn i32s(t: &Tensor) -> Vec<i32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn set_i32s(t: &mut Tensor, v: &[i32]) {
    t.data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
}

fn hostile_token(rng: &mut Rng, nv: i64) -> i32 {
    *rng.pick(&[-1, -2, nv as i32, nv as i32 + 1, i32::MAX, i32::MIN, nv as i32 - 1, 0, 1 << 24])
}

fn tokens(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let nv = seed.n_vocab;
    let arrays: Vec<String> = doc
        .kv
        .iter()
        .filter(|(k, _)| k.ends_with(".tokens") && k.starts_with("delrec.template."))
        .map(|(k, _)| k.clone())
        .collect();
    match rng.below(6) {
        0 | 1 => {
            let Some(t) = doc.tensor_mut(K_TOKENS) else { return };
            let mut v = i32s(t);
            if v.is_empty() {
                return;
            }
            let i = rng.below(v.len());
            v[i] = hostile_token(rng, nv);
            set_i32s(t, &v);
            desc.push(format!("catalog.tokens[{i}] := {}", v[i]));
        }
        2 | 3 if !arrays.is_empty() => {
            let key = rng.pick(&arrays).clone();
            let Some(Value::Array(Array::I32(v))) = doc.get_mut(&key) else { return };
            match rng.below(4) {
                0 => {
                    v.clear();
                    desc.push(format!("{key} emptied"));
                }
                1 => {
                    let n = *rng.pick(&[200usize, 300, 5000]);
                    v.extend(std::iter::repeat_n(5, n));
                    desc.push(format!("{key}: {n} tokens appended (longer than the context)"));
                }
                _ if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = hostile_token(rng, nv);
                    desc.push(format!("{key}[{i}] := {}", v[i]));
                }
                _ => {
                    v.push(hostile_token(rng, nv));
                    desc.push(format!("{key}: a hostile token appended"));
                }
            }
        }
        4 => {
            let v = match rng.below(5) {
                0 => Value::I32(hostile_token(rng, nv)),
                1 => Value::I64(i64::MIN),
                2 => Value::U32(nv as u32),
                3 => Value::I32(0),
                _ => Value::Str("1".into()),
            };
            desc.push(format!("delrec.template.bos := {}", show(&v)));
            doc.set("delrec.template.bos", v);
        }
        _ => {
            let key = if arrays.is_empty() {
                "delrec.template.history_separator.tokens".to_string()
            } else {
                rng.pick(&arrays).clone()
            };
            let v = match rng.below(3) {
                0 => Value::Array(Array::U32(vec![1, 2])),
                1 => Value::Array(Array::I64(vec![1])),
                _ => Value::I32(3),
            };
            desc.push(format!("{key} := {}", show(&v)));
            doc.set(&key, v);
        }
    }
}

fn offsets(rng: &mut Rng, doc: &mut Doc, desc: &mut Vec<String>) {
    let n_tok = doc.tensor(K_TOKENS).map_or(0, |t| t.dims.first().copied().unwrap_or(0)) as i32;
    let Some(t) = doc.tensor_mut(K_OFFSETS) else { return };
    let mut v = i32s(t);
    let n = v.len();
    if n < 3 {
        return;
    }
    let i = rng.below(n);
    let what = match rng.below(9) {
        0 => {
            let j = rng.range(1, n - 1);
            v.swap(j - 1, j);
            format!("offsets {} and {j} swapped", j - 1)
        }
        1 => {
            let j = rng.range(1, n - 1);
            v[j] = v[j - 1];
            format!("offsets[{j}] := offsets[{}] (an empty item)", j - 1)
        }
        2 => {
            v[0] = *rng.pick(&[1, -1, n_tok]);
            format!("offsets[0] := {}", v[0])
        }
        3 => {
            v[n - 1] = *rng.pick(&[n_tok - 1, n_tok + 1, i32::MAX, 0]);
            format!("last offset := {}", v[n - 1])
        }
        4 => {
            v[i] = *rng.pick(&[-1, i32::MIN, i32::MAX, n_tok + 1000]);
            format!("offsets[{i}] := {}", v[i])
        }
        5 => {
            v.pop();
            t.dims = vec![v.len() as u64];
            "the last offset dropped".into()
        }
        6 => {
            v.push(n_tok);
            t.dims = vec![v.len() as u64];
            "an offset appended".into()
        }
        7 => {
            t.ty = *rng.pick(&[0, 1, 24, 25]);
            let ty = t.ty;
            set_i32s(t, &v);
            if let Some(s) = tensor_size(ty, &t.dims) {
                t.data.resize(s as usize, 0);
            }
            desc.push(format!("catalog.offsets retyped to {ty}"));
            return;
        }
        _ => {
            v.reverse();
            "offsets reversed".into()
        }
    };
    set_i32s(t, &v);
    desc.push(what);
}

fn soft_prompt(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let names: Vec<String> =
        doc.tensors.iter().filter(|t| t.name.starts_with("soft_prompt.")).map(|t| t.name.clone()).collect();
    let Some(name) = (!names.is_empty()).then(|| rng.pick(&names).clone()) else { return };
    let e = doc.get("delrec.base.n_embd").and_then(Value::as_u64).unwrap_or(64);
    match rng.below(7) {
        0 | 1 => {
            let t = doc.tensor_mut(&name).expect("listed");
            let n = t.data.len() / 4;
            let v = *rng.pick(&f32s());
            let every = rng.chance(0.2);
            for i in 0..n {
                if every || i == n / 2 || rng.chance(1.0 / n as f64) {
                    t.data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            desc.push(format!("{name}: {} values := {v}", if every { "all" } else { "some" }));
        }
        2 => {
            let t = doc.tensor_mut(&name).expect("listed");
            let nv = *rng.pick(&[0u64, 1, 255, 300, 1 << 20]);
            t.dims = vec![e, nv];
            if nv <= 300 && rng.chance(0.7) {
                t.data = f32_data(e.saturating_mul(nv), 0.01);
            }
            desc.push(format!("{name}: {nv} virtual tokens"));
        }
        3 => {
            let t = doc.tensor_mut(&name).expect("listed");
            let w = *rng.pick(&[e.saturating_sub(1), e.saturating_add(1), 1, 0, e.saturating_mul(2)]);
            let rows = t.dims.get(1).copied().unwrap_or(1);
            t.dims = vec![w, rows];
            if rng.chance(0.5) {
                t.data = f32_data(w.saturating_mul(rows), 0.01);
            }
            desc.push(format!("{name}: width {w}"));
        }
        4 => {
            let t = doc.tensor_mut(&name).expect("listed");
            let ty = *rng.pick(&[1u32, 30, 26, 8, 2, 24, 99]);
            let old = t.ty;
            t.ty = ty;
            if let Some(s) = tensor_size(ty, &t.dims).filter(|_| rng.chance(0.6)) {
                t.data.resize(s as usize, 0x7f);
            }
            desc.push(format!("{name}: type {old} -> {ty}"));
        }
        5 => {
            let t = doc.tensor_mut(&name).expect("listed");
            t.dims = match rng.below(3) {
                0 => vec![e, 1, t.dims.get(1).copied().unwrap_or(1)],
                1 => vec![e * t.dims.get(1).copied().unwrap_or(1)],
                _ => vec![t.dims.get(1).copied().unwrap_or(1), e],
            };
            desc.push(format!("{name}: dims {:?}", t.dims));
        }
        _ => {
            let v = match rng.below(5) {
                0 => Array::Str(vec![]),
                1 => Array::Str(vec!["default".into(), "default".into()]),
                2 => Array::Str(vec!["default".into(), "missing".into()]),
                3 => Array::Str(vec!["bad name".into()]),
                _ => Array::Str(vec!["x".repeat(65)]),
            };
            desc.push(format!("delrec.soft_prompt.names := {}", show(&Value::Array(v.clone()))));
            doc.set("delrec.soft_prompt.names", Value::Array(v));
        }
    }
    let _ = seed;
}

fn template(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let parts_key = "delrec.template.parts";
    match rng.below(8) {
        0..=2 => {
            let Some(Value::Array(Array::Str(parts))) = doc.get_mut(parts_key) else { return };
            if parts.is_empty() {
                return;
            }
            let i = rng.below(parts.len());
            let what = match rng.below(7) {
                0 => {
                    rng.shuffle(parts);
                    "parts shuffled".to_string()
                }
                1 => {
                    let p = parts[i].clone();
                    parts.push(p.clone());
                    format!("part {p} repeated at the end")
                }
                2 => {
                    let p = parts.remove(i);
                    format!("part {i} ({p}) removed")
                }
                3 => {
                    parts[i] = rng
                        .pick(&["bogus", "soft:", "soft:missing", "soft:default", "text", "", "history"])
                        .to_string();
                    format!("part {i} := {}", parts[i])
                }
                4 => {
                    parts.insert(i, "text".into());
                    format!("a text part inserted at {i} (its tokens are another part's)")
                }
                5 => {
                    let last = parts.len() - 1;
                    parts.swap(0, last);
                    "first and last part swapped".into()
                }
                _ => {
                    parts.push("candidate".into());
                    "a second candidate".into()
                }
            };
            desc.push(what);
        }
        3 => {
            let key = *rng.pick(&[
                "delrec.template.part.1.tokens",
                "delrec.template.part.3.tokens",
                "delrec.template.part.5.tokens",
            ]);
            doc.remove(key);
            desc.push(format!("remove {key}"));
        }
        4 => {
            let v = match rng.below(6) {
                0 => Value::U32(0),
                1 => Value::U64(u64::MAX),
                2 => Value::I32(-1),
                3 => Value::U32(1),
                4 => Value::F32(2.0),
                _ => Value::U32(1_000_000),
            };
            desc.push(format!("delrec.template.max_history := {}", show(&v)));
            doc.set("delrec.template.max_history", v);
        }
        5 => {
            let v = Value::Str(rng.pick(&["mean", "bogus", "", "SUM", "sum\u{0}"]).to_string());
            desc.push(format!("delrec.scoring.mode := {}", show(&v)));
            doc.set("delrec.scoring.mode", v);
        }
        _ => {
            let key = *rng.pick(&[
                "delrec.template.text",
                "delrec.template.item_prefix",
                "delrec.template.history_separator",
                "delrec.template.parts",
            ]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
    }
}

fn catalog(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    match rng.below(8) {
        0..=2 => {
            let key = *rng.pick(&["delrec.catalog.ids", "delrec.catalog.titles", "delrec.catalog.texts"]);
            let Some(Value::Array(Array::Str(v))) = doc.get_mut(key) else { return };
            if v.len() < 2 {
                return;
            }
            let i = rng.below(v.len());
            let what = match rng.below(6) {
                0 => {
                    v[i] = v[(i + 1) % v.len()].clone();
                    format!("{key}[{i}] := {key}[{}]", (i + 1) % v.len())
                }
                1 => {
                    v[i] = String::new();
                    format!("{key}[{i}] := \"\"")
                }
                2 => {
                    v.pop();
                    format!("{key}: the last entry removed")
                }
                3 => {
                    v.push("extra".into());
                    format!("{key}: an entry appended")
                }
                4 => {
                    v[i] = "t".repeat(*rng.pick(&[5000, 1 << 20]));
                    format!("{key}[{i}] made very long")
                }
                _ => {
                    v[i] = rng.pick(&["\u{0}", " ", "é🦀", "\n", "m001"]).to_string();
                    format!("{key}[{i}] := {:?}", v[i])
                }
            };
            desc.push(what);
        }
        3 | 4 => {
            let key = *rng.pick(&[
                "delrec.base.architecture",
                "delrec.base.n_embd",
                "delrec.base.n_vocab",
                "delrec.base.tokenizer_fingerprint",
                "delrec.base.model_sha256",
                "delrec.pack.version",
            ]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
        5 => {
            // Fewer items: the catalog consistent with itself but not with the seq model.
            let n = doc.get("delrec.catalog.ids").and_then(Value::as_str_array).map_or(0, <[String]>::len);
            if n < 3 {
                return;
            }
            let keep = rng.range(1, n - 1);
            for key in ["delrec.catalog.ids", "delrec.catalog.titles", "delrec.catalog.texts"] {
                if let Some(Value::Array(Array::Str(v))) = doc.get_mut(key) {
                    v.truncate(keep);
                }
            }
            if let Some(t) = doc.tensor_mut(K_OFFSETS) {
                let mut v = i32s(t);
                v.truncate(keep + 1);
                let end = *v.last().unwrap_or(&0);
                t.dims = vec![v.len() as u64];
                set_i32s(t, &v);
                if let Some(tok) = doc.tensor_mut(K_TOKENS) {
                    let mut tv = i32s(tok);
                    tv.truncate(end.max(0) as usize);
                    tok.dims = vec![tv.len() as u64];
                    set_i32s(tok, &tv);
                }
            }
            desc.push(format!("catalog cut to {keep} consistent items"));
        }
        6 => {
            let v = match rng.below(3) {
                0 => Value::Str("llama".into()),
                1 => Value::Str("delrec-pack\u{0}".into()),
                _ => Value::U32(1),
            };
            desc.push(format!("general.architecture := {}", show(&v)));
            doc.set("general.architecture", v);
        }
        _ => {
            let v = match rng.below(3) {
                0 => Value::Array(Array::Str(vec![])),
                1 => Value::Array(Array::Str(vec!["zz".into(); 3])),
                _ => Value::Str("abc".into()),
            };
            desc.push(format!("delrec.base.model_sha256 := {}", show(&v)));
            doc.set("delrec.base.model_sha256", v);
        }
    }
}

fn seq(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    let names: Vec<String> =
        doc.tensors.iter().filter(|t| t.name.starts_with("seq.")).map(|t| t.name.clone()).collect();
    if names.is_empty() {
        // A pack without a sequential model that claims one.
        doc.set("delrec.seq.kind", Value::Str("sasrec".into()));
        if rng.chance(0.5) {
            doc.set("delrec.seq.n_layers", Value::U32(1));
            doc.set("delrec.seq.n_heads", Value::U32(1));
            doc.set("delrec.seq.hidden_act", Value::Str("gelu".into()));
            doc.set("delrec.seq.layer_norm_eps", Value::F32(1e-12));
        }
        desc.push("delrec.seq.kind = sasrec without seq tensors".into());
        return;
    }
    match rng.below(8) {
        0 | 1 => {
            let name = rng.pick(&names).clone();
            let t = doc.tensor_mut(&name).expect("listed");
            let v = *rng.pick(&f32s());
            let n = t.data.len() / 4;
            if n > 0 && t.ty == 0 {
                let i = rng.below(n);
                t.data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
                desc.push(format!("{name}[{i}] := {v}"));
            }
        }
        2 => {
            let name = rng.pick(&names).clone();
            let t = doc.tensor_mut(&name).expect("listed");
            if t.dims.is_empty() {
                t.dims.push(1);
            }
            let old = t.dims.clone();
            match rng.below(3) {
                0 if t.dims.len() == 2 => t.dims.swap(0, 1),
                1 => {
                    let d = rng.below(t.dims.len());
                    t.dims[d] = num(rng, t.dims[d]);
                }
                _ => t.dims.push(1),
            }
            if let Some(s) = tensor_size(t.ty, &t.dims).filter(|&s| s < 16 << 20 && rng.chance(0.5)) {
                t.data.resize(s as usize, 0);
            }
            desc.push(format!("{name}: dims {old:?} -> {:?}", t.dims));
        }
        3 => {
            let name = rng.pick(&names).clone();
            let t = doc.tensor_mut(&name).expect("listed");
            let ty = *rng.pick(&[1u32, 30, 26, 8]);
            t.ty = ty;
            if let Some(s) = tensor_size(ty, &t.dims).filter(|_| rng.chance(0.6)) {
                t.data.resize(s as usize, 0x3c);
            }
            desc.push(format!("{name}: type -> {ty}"));
        }
        4 => {
            let name = rng.pick(&names).clone();
            doc.tensors.retain(|t| t.name != name);
            desc.push(format!("remove tensor {name}"));
        }
        _ => {
            let key = *rng.pick(&[
                "delrec.seq.kind",
                "delrec.seq.n_layers",
                "delrec.seq.n_heads",
                "delrec.seq.hidden_act",
                "delrec.seq.layer_norm_eps",
                "delrec.seq.item_source",
                "delrec.seq.item_pooling",
                "delrec.fusion.llm_weight",
                "delrec.fusion.retrieve",
            ]);
            key_edit(rng, doc, key, seed.n_layer, desc);
        }
    }
}

fn keys(rng: &mut Rng, seed: &Seed, doc: &mut Doc, desc: &mut Vec<String>) {
    if doc.kv.is_empty() {
        return;
    }
    let key = doc.kv[rng.below(doc.kv.len())].0.clone();
    key_edit(rng, doc, &key, seed.n_layer, desc);
}

// ---------------------------------------------------------------------------------------------

fn structural(target: Target, class: &str) -> bool {
    match target {
        Target::Model => {
            matches!(class, "hparam" | "tensor-type" | "tensor-shape" | "tensor-set" | "vocab" | "metadata")
        }
        Target::Pack => matches!(class, "tokens" | "offsets" | "soft-prompt" | "template" | "catalog" | "seq" | "keys"),
    }
}

fn edit_doc(rng: &mut Rng, seed: &Seed, class: &str, doc: &mut Doc, desc: &mut Vec<String>) {
    match class {
        "hparam" => hparam(rng, seed, doc, desc),
        "tensor-type" => tensor_type(rng, doc, desc),
        "tensor-shape" => tensor_shape(rng, doc, desc),
        "tensor-set" => tensor_set(rng, seed, doc, desc),
        "vocab" => vocab(rng, seed, doc, desc),
        "metadata" => metadata(rng, seed, doc, desc),
        "tokens" => tokens(rng, seed, doc, desc),
        "offsets" => offsets(rng, doc, desc),
        "soft-prompt" => soft_prompt(rng, seed, doc, desc),
        "template" => template(rng, seed, doc, desc),
        "catalog" => catalog(rng, seed, doc, desc),
        "seq" => seq(rng, seed, doc, desc),
        "keys" => keys(rng, seed, doc, desc),
        other => unreachable!("{other} is not a structural class"),
    }
}

fn edit_bytes(
    rng: &mut Rng,
    seed: &Seed,
    layout: &Layout,
    class: &str,
    b: &mut Vec<u8>,
    nth: u64,
    desc: &mut Vec<String>,
) {
    if b.is_empty() || layout.len != b.len() {
        return;
    }
    match class {
        "bitflip" => bitflip(rng, layout, seed.target, b, desc),
        "bytes" => bytes_class(rng, layout, seed.target, b, desc),
        "huge-field" => huge_field(rng, layout, b, desc),
        "truncate-boundary" => {
            // Every cut in turn: the structural boundaries exactly, then one byte in, then one
            // byte short; then the same for the array-element boundaries.
            let n = seed.cuts.len() as u64;
            let (i, pass) = ((nth % n) as usize, (nth / n) % 3);
            let at = match pass {
                0 => seed.cuts[i],
                1 => seed.cuts[i] + 1,
                _ => seed.cuts[i].saturating_sub(1),
            };
            b.truncate(at);
            desc.push(format!("truncate at byte {at} (boundary {i}, pass {pass})"));
        }
        "truncate-random" => {
            let at = if rng.chance(0.5) { rng.below(layout.meta_end + 64) } else { rng.below(b.len()) };
            b.truncate(at);
            desc.push(format!("truncate at byte {at}"));
        }
        other => unreachable!("{other} is not a byte class"),
    }
}

/// The mutant of `seed` for `class`; `nth` counts the cases of this (seed, class) so far
/// (the truncation sweep's position).
pub fn generate(rng: &mut Rng, seed: &Seed, class: &str, nth: u64) -> Mutant {
    let mut desc = Vec::new();
    if class == "multi" {
        let classes: Vec<&str> = match seed.target {
            Target::Model => MODEL_CLASSES,
            Target::Pack => PACK_CLASSES,
        }
        .iter()
        .map(|c| c.0)
        .filter(|&c| c != "multi" && !c.starts_with("truncate"))
        .collect();
        let n = rng.range(2, 4);
        let picks: Vec<&str> = (0..n).map(|_| *rng.pick(&classes)).collect();
        let mut doc = seed.doc.clone();
        for c in picks.iter().filter(|c| structural(seed.target, c)) {
            edit_doc(rng, seed, c, &mut doc, &mut desc);
        }
        let mut b = doc.serialize();
        // The byte edits need the layout of the edited file: walked again (a mutant the walker
        // cannot follow gets its byte edits anywhere).
        let layout = super::gguf::parse(&b).map(|(_, l)| l).unwrap_or(Layout { len: b.len(), ..Layout::default() });
        for c in picks.iter().filter(|c| !structural(seed.target, c)) {
            let nth = rng.next_u64();
            edit_bytes(rng, seed, &layout, c, &mut b, nth, &mut desc);
        }
        if rng.chance(0.1) {
            let at = rng.below(b.len().max(1));
            b.truncate(at);
            desc.push(format!("then truncate at byte {at}"));
        }
        return Mutant { bytes: b, desc, doc: None };
    }
    if structural(seed.target, class) {
        let mut doc = seed.doc.clone();
        edit_doc(rng, seed, class, &mut doc, &mut desc);
        if desc.is_empty() {
            desc.push("(no applicable edit: the seed unchanged)".into());
        }
        return Mutant { bytes: doc.serialize(), desc, doc: Some(doc) };
    }
    let mut b = seed.bytes.clone();
    edit_bytes(rng, seed, &seed.layout, class, &mut b, nth, &mut desc);
    Mutant { bytes: b, desc, doc: None }
}
