//! Property tests (issue #22): hostile bytes never panic the readers, whatever they hold.
//!
//! - arbitrary bytes, and valid GGUF files with bytes set, bits flipped, words overwritten and
//!   truncations, never panic `GgufFile::open` (nor the accessors of what it accepts);
//! - the same mutations of a valid pack (with a sequential model) never panic `Pack::open` or the
//!   reads of an opened pack; of a valid model, never panic `model_check::check_model`, and a
//!   model with any hyperparameter set to any value is either refused or satisfies what the
//!   check promises;
//! - metadata values round-trip through the writer and reader;
//! - template parsing never panics, accepts exactly what its rules allow, and what it accepts
//!   renders back to itself.
//!
//! Case counts are modest (the suite runs in seconds); `PROPTEST_CASES=N` raises them all.

use std::path::Path;
use std::sync::OnceLock;

use delrec_format::gguf::{f32_bytes, i32_bytes, Array, GgufFile, GgufWriter, TensorData, TensorType, Value};
use delrec_format::model_check::check_model;
use delrec_format::pack::{CatalogItem, PackBuilder};
use delrec_format::seq::{Activation, Fusion, ItemSource, LayerNorm, Linear, Sasrec, SasrecBlock};
use delrec_format::template::{self, Piece};
use delrec_format::{BaseIdentity, Pack};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
    Config { cases, ..Config::default() }
}

// ---------------------------------------------------------------------------------------------
// Seeds, built once per test binary

fn write(w: &GgufWriter, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    w.write_atomic(&p, &mut |_, _| {}).unwrap();
    std::fs::read(&p).unwrap()
}

/// A GGUF with every value type, arrays of each, and tensors of several types.
fn sample_gguf() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("test".into()));
        w.set("a.u8", Value::U8(7));
        w.set("a.i8", Value::I8(-7));
        w.set("a.u16", Value::U16(700));
        w.set("a.i16", Value::I16(-700));
        w.set("a.u32", Value::U32(70_000));
        w.set("a.i32", Value::I32(-70_000));
        w.set("a.f32", Value::F32(1.5));
        w.set("a.bool", Value::Bool(true));
        w.set("a.u64", Value::U64(1 << 40));
        w.set("a.i64", Value::I64(-(1 << 40)));
        w.set("a.f64", Value::F64(-2.25));
        w.set("a.strs", Value::Array(Array::Str(vec!["x".into(), "héllo".into(), String::new()])));
        w.set("a.u32s", Value::Array(Array::U32(vec![1, 2, 3])));
        w.set("a.i32s", Value::Array(Array::I32(vec![-1, 0, 1])));
        w.set("a.f32s", Value::Array(Array::F32(vec![0.5, -0.5])));
        w.set("a.u8s", Value::Array(Array::U8(vec![0, 255])));
        w.set("a.bools", Value::Array(Array::Bool(vec![true, false])));
        w.set("a.u64s", Value::Array(Array::U64(vec![u64::MAX])));
        w.add_tensor("t.f32", &[4, 2], TensorType::F32, TensorData::Owned(f32_bytes(&[1.0; 8]))).unwrap();
        w.add_tensor("t.i32", &[3], TensorType::I32, TensorData::Owned(i32_bytes(&[9, 8, 7]))).unwrap();
        w.add_tensor("t.f16", &[2, 2, 1], TensorType::F16, TensorData::Owned(vec![0x3c; 8])).unwrap();
        w.add_tensor("t.q8", &[32], TensorType::Q8_0, TensorData::Owned(vec![1; 34])).unwrap();
        write(&w, "sample.gguf")
    })
}

fn sasrec(n_items: usize) -> Sasrec {
    let mut k = 0f32;
    let mut v = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                k += 1.0;
                (k * 0.37).sin()
            })
            .collect()
    };
    let (h, inner) = (4, 8);
    let mut lin = |n_in: usize, n_out: usize| Linear { n_in, n_out, weight: v(n_in * n_out), bias: v(n_out) };
    let block = SasrecBlock {
        q: lin(h, h),
        k: lin(h, h),
        v: lin(h, h),
        out: lin(h, h),
        attn_norm: LayerNorm { weight: vec![1.0; h], bias: vec![0.1; h] },
        up: lin(h, inner),
        down: lin(inner, h),
        ffn_norm: LayerNorm { weight: vec![0.9; h], bias: vec![0.0; h] },
    };
    Sasrec {
        n_heads: 2,
        hidden: h,
        inner,
        max_len: 3,
        act: Activation::Gelu,
        eps: 1e-12,
        source: ItemSource::Id,
        items: (0..n_items * h).map(|i| i as f32 * 0.25).collect::<Vec<f32>>().into(),
        positions: (0..3 * h).map(|i| i as f32 * -0.5).collect(),
        norm: LayerNorm { weight: vec![1.1; h], bias: vec![0.2; h] },
        blocks: vec![block],
        item_proj: None,
    }
}

/// A valid pack: soft prompt, template, three items with texts, a SASRec, fusion settings.
fn sample_pack() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let base =
            BaseIdentity { architecture: "llama".into(), n_embd: 4, n_vocab: 300, tokenizer_fingerprint: "ab".into() };
        let mut b = PackBuilder::new(base, "{soft:u}Seen:{history}\nNext:{candidate}\n");
        b.add_soft_prompt("u", 2, vec![0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0], false).unwrap();
        for (id, title) in [("a", "Alpha"), ("b", "Beta (1999)"), ("c", "Gamma")] {
            b.add_item(CatalogItem { id: id.into(), title: title.into(), text: Some(format!("{title} text")) });
        }
        b.max_history = Some(5);
        b.model_sha256 = vec!["00".repeat(32)];
        b.seq = Some((sasrec(3), false));
        b.fusion = Some(Fusion { llm_weight: 0.5, retrieve: 2 });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        b.write(&p, &mut |s: &str| Ok(s.bytes().map(|x| x as i32).collect())).unwrap();
        std::fs::read(&p).unwrap()
    })
}

const N_EMBD: u64 = 32;
const N_HEAD: u64 = 4;
const N_KV: u64 = 2;
const N_FF: u64 = 64;
const N_LAYER: u64 = 2;
const N_VOCAB: u64 = 16;

/// Metadata and tensors (name, dims; F32) of a model, to edit before writing.
type ModelParts = (Vec<(String, Value)>, Vec<(String, Vec<u64>)>);

/// A tiny valid llama model, to edit before writing.
fn model_parts() -> ModelParts {
    let a = |k: &str| format!("llama.{k}");
    let head = N_EMBD / N_HEAD;
    let tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("t{i}")).collect();
    let kv = vec![
        ("general.architecture".into(), Value::Str("llama".into())),
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
    let (e, kvw) = (N_EMBD, head * N_KV);
    let mut t: Vec<(String, Vec<u64>)> =
        vec![("token_embd.weight".into(), vec![e, N_VOCAB]), ("output_norm.weight".into(), vec![e])];
    t.push(("output.weight".into(), vec![e, N_VOCAB]));
    for i in 0..N_LAYER {
        let b = |n: &str| format!("blk.{i}.{n}");
        t.push((b("attn_norm.weight"), vec![e]));
        t.push((b("attn_q.weight"), vec![e, e]));
        t.push((b("attn_k.weight"), vec![e, kvw]));
        t.push((b("attn_v.weight"), vec![e, kvw]));
        t.push((b("attn_output.weight"), vec![e, e]));
        t.push((b("ffn_norm.weight"), vec![e]));
        t.push((b("ffn_gate.weight"), vec![e, N_FF]));
        t.push((b("ffn_up.weight"), vec![e, N_FF]));
        t.push((b("ffn_down.weight"), vec![N_FF, e]));
    }
    (kv, t)
}

fn model_bytes(kv: &[(String, Value)], tensors: &[(String, Vec<u64>)]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.set(k, v.clone());
    }
    for (name, dims) in tensors {
        let n: u64 = dims.iter().product();
        let data = f32_bytes(&(0..n).map(|i| (i % 7) as f32 * 0.01).collect::<Vec<_>>());
        w.add_tensor(name, dims, TensorType::F32, TensorData::Owned(data)).unwrap();
    }
    write(&w, "model.gguf")
}

fn sample_model() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let (kv, t) = model_parts();
        model_bytes(&kv, &t)
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Flip(usize, u8),
    Word(usize, u64),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let word = prop_oneof![
        Just(u64::MAX),
        Just(0u64),
        Just(1u64 << 32),
        Just(i64::MAX as u64),
        Just(u32::MAX as u64),
        Just(0x7fc0_0000u64), // f32 NaN in the low half
        any::<u64>(),
    ];
    prop::collection::vec(
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
            3 => (any::<usize>(), word).prop_map(|(i, v)| Edit::Word(i, v)),
            1 => any::<usize>().prop_map(Edit::Truncate),
        ],
        1..6,
    )
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match *e {
            Edit::Set(i, v) => b[i % n] = v,
            Edit::Flip(i, bit) => b[i % n] ^= 1 << bit,
            Edit::Word(i, v) => {
                let at = i % n;
                let end = (at + 8).min(n);
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            Edit::Truncate(i) => b.truncate(i % n),
        }
    }
    b
}

/// Writes `bytes` to a fresh file in `dir` (each case its own: no map outlives its file).
fn file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let p = dir.join(format!("case{}.gguf", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Everything a caller may read of an opened GGUF.
fn exercise_gguf(f: &GgufFile) {
    for (k, v) in f.kv() {
        let _ = (k.len(), v.summary(), v.as_u64(), v.as_i64(), v.as_f64(), v.as_str(), v.as_str_array());
    }
    for t in f.tensors() {
        let _ = (f.tensor_bytes(t), t.n_elements(), f.tensor(&t.name).is_some());
    }
    let _ = (f.req_str("general.architecture"), f.req_u64("a.u32"), f.req_str_array("a.strs"));
}

fn exercise_pack(p: &Pack) {
    for i in 0..p.n_items() as u32 + 1 {
        let _ = (p.item_id(i), p.item_title(i), p.item_text(i), p.item_tokens(i));
    }
    for s in 0..p.soft_prompts.len() + 1 {
        let _ = p.soft_prompt_values(s);
    }
    let _ = (p.template.terminator(), p.soft_prompt_names(), p.item_index("a"));
    if let Some(m) = &p.seq {
        assert_eq!(m.validate(p.n_items()), Ok(()), "an opened pack carries an invalid sequential model");
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_gguf_reader(
        body in prop::collection::vec(any::<u8>(), 0..1024),
        header in prop_oneof![Just(0usize), Just(1), Just(2)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Half the time past the magic and version, so the counts and KV entries are reached.
        let mut bytes = match header {
            0 => vec![],
            1 => b"GGUF\x03\x00\x00\x00".to_vec(),
            _ => [&b"GGUF\x03\x00\x00\x00"[..], &1u64.to_le_bytes(), &2u64.to_le_bytes()].concat(),
        };
        bytes.extend_from_slice(&body);
        if let Ok(f) = GgufFile::open(file(dir.path(), &bytes)) {
            exercise_gguf(&f);
        }
    }

    #[test]
    fn mutated_gguf_never_panics_the_reader(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = apply(sample_gguf(), &e);
        if let Ok(f) = GgufFile::open(file(dir.path(), &bytes)) {
            exercise_gguf(&f);
            // What parsed is inside the file.
            for t in f.tensors() {
                if let Some(b) = f.tensor_bytes(t) {
                    prop_assert!(t.offset as usize + b.len() <= bytes.len());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn mutated_pack_never_panics_the_reader(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = apply(sample_pack(), &e);
        if let Ok(p) = Pack::open(file(dir.path(), &bytes)) {
            exercise_pack(&p);
        }
    }

    #[test]
    fn mutated_model_never_panics_the_model_check(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = apply(sample_model(), &e);
        if let Ok(f) = GgufFile::open(file(dir.path(), &bytes)) {
            let _ = check_model(&f);
            let _ = BaseIdentity::of_model(&f);
        }
    }

    #[test]
    fn metadata_values_round_trip(v in value()) {
        let mut w = GgufWriter::new();
        w.set("k", v.clone());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.gguf");
        w.write_atomic(&p, &mut |_, _| {}).unwrap();
        let f = GgufFile::open(&p).unwrap();
        prop_assert_eq!(f.get("k"), Some(&v));
    }
}

/// Values without NaN (NaN != NaN would fail the round trip for the wrong reason).
fn value() -> impl Strategy<Value = Value> {
    let f32v = any::<f32>().prop_map(|x| if x.is_nan() { 0.0 } else { x });
    let f64v = any::<f64>().prop_map(|x| if x.is_nan() { 0.0 } else { x });
    let n = 0..20usize;
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        f32v.clone().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,40}".prop_map(Value::Str),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        f64v.prop_map(Value::F64),
        prop::collection::vec(".{0,10}", n.clone()).prop_map(|v| Value::Array(Array::Str(v))),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(|v| Value::Array(Array::I32(v))),
        prop::collection::vec(any::<u64>(), n.clone()).prop_map(|v| Value::Array(Array::U64(v))),
        prop::collection::vec(f32v, n.clone()).prop_map(|v| Value::Array(Array::F32(v))),
        prop::collection::vec(any::<bool>(), n).prop_map(|v| Value::Array(Array::Bool(v))),
    ]
}

/// Any value a hostile header could hold, for a hyperparameter.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![Just(0u32), Just(1), Just(2), Just(3), Just(8), Just(16), Just(512), Just(513), Just(u32::MAX)]
            .prop_map(Value::U32),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-1.0f32), Just(0.0), Just(1e-30), Just(1e30)]
            .prop_map(Value::F32),
        any::<f32>().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just("yarn"), Just("longrope"), Just("none"), Just("linear"), Just("bogus"), Just("")]
            .prop_map(|s| Value::Str(s.into())),
        prop::collection::vec(0u32..40, 0..4).prop_map(|v| Value::Array(Array::U32(v))),
        prop::collection::vec(any::<i32>(), 0..4).prop_map(|v| Value::Array(Array::I32(v))),
    ]
}

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
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.attn_factor",
    "rope.scaling.original_context_length",
    "expert_count",
    "expert_used_count",
    "nextn_predict_layers",
    "vocab_size",
    "pooling_type",
];

proptest! {
    #![proptest_config(config(128))]

    /// Any hyperparameter set to any value: refused, or the facts the check returns are the ones
    /// it promises llama.cpp will not assert on.
    #[test]
    fn hostile_hyperparameters_are_refused_or_safe(
        edits in prop::collection::vec((0..HPARAMS.len(), hostile_value(), any::<bool>()), 1..4),
    ) {
        let (mut kv, tensors) = model_parts();
        for (k, v, remove) in edits {
            let key = format!("llama.{}", HPARAMS[k]);
            kv.retain(|(name, _)| *name != key);
            if !remove {
                kv.push((key, v));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(file(dir.path(), &model_bytes(&kv, &tensors))).unwrap();
        if let Ok(m) = check_model(&f) {
            prop_assert!((1..=512).contains(&m.n_layer));
            prop_assert!(m.n_embd > 0 && m.n_head > 0 && m.n_head_kv > 0 && m.n_ctx_train > 0);
            prop_assert!(m.n_head % m.n_head_kv == 0);
            prop_assert!(m.head_dim > 0 && m.head_dim % 2 == 0);
            prop_assert!(m.rms_eps.is_finite() && m.rms_eps > 0.0);
            prop_assert_eq!(m.n_vocab as u64, N_VOCAB);
            // The tensors were written for the genuine shapes: accepted means the same shapes.
            prop_assert_eq!((m.n_layer as u64, m.n_embd as u64, m.n_ff as u64), (N_LAYER, N_EMBD, N_FF));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

/// Template text from fragments that matter to the parser.
fn template_text() -> impl Strategy<Value = String> {
    let frag = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{history}".to_string()),
        Just("{candidate}".to_string()),
        Just("{candidates}".to_string()),
        Just("{mask}".to_string()),
        Just("{soft:".to_string()),
        Just("{soft:}".to_string()),
        "[A-Za-z0-9_. -]{0,5}".prop_map(|s| format!("{{soft:{s}}}")),
        "[a-z]{0,6}".prop_map(|s| format!("{{{s}}}")),
        "\\PC{0,6}",
        Just("é\n".to_string()),
    ];
    prop::collection::vec(frag, 0..10).prop_map(|v| v.concat())
}

fn render(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.replace('{', "{{").replace('}', "}}"),
            Piece::Soft(n) => format!("{{soft:{n}}}"),
            Piece::History => "{history}".into(),
            Piece::Candidate => "{candidate}".into(),
            Piece::Candidates => "{candidates}".into(),
            Piece::Mask => "{mask}".into(),
        })
        .collect()
}

fn check_accepted(text: &str) -> Result<(), TestCaseError> {
    if let Ok(pieces) = template::parse(text) {
        let kind = template::validate(&pieces);
        prop_assert!(kind.is_ok());
        let count = |want: Piece| pieces.iter().filter(|p| **p == want).count();
        prop_assert_eq!(count(Piece::History), 1);
        match kind.ok() {
            Some(template::Kind::Title) => {
                prop_assert_eq!(count(Piece::Candidate), 1);
                prop_assert_eq!(count(Piece::Mask) + count(Piece::Candidates), 0);
            }
            _ => {
                prop_assert_eq!(count(Piece::Mask), 1);
                prop_assert_eq!(count(Piece::Candidate), 0);
                prop_assert!(count(Piece::Candidates) <= 1);
            }
        }
        for w in pieces.windows(2) {
            prop_assert!(!matches!(w, [Piece::Text(_), Piece::Text(_)]), "adjacent text pieces");
        }
        for p in &pieces {
            match p {
                Piece::Text(t) => prop_assert!(!t.is_empty()),
                Piece::Soft(n) => prop_assert!(template::valid_name(n)),
                _ => {}
            }
        }
        prop_assert_eq!(template::parse(&render(&pieces)).ok(), Some(pieces));
    }
    Ok(())
}

/// Valid templates built from pieces: text, soft prompts, `{history}`, more, `{candidate}`, text.
fn valid_pieces() -> impl Strategy<Value = Vec<Piece>> {
    let text = "\\PC{1,8}".prop_map(Piece::Text);
    let before = prop::collection::vec(prop_oneof![text.clone(), "[A-Za-z0-9_.-]{1,8}".prop_map(Piece::Soft)], 0..4);
    (before.clone(), before, prop::option::of(text)).prop_map(|(a, b, tail)| {
        let mut v = a;
        v.push(Piece::History);
        v.extend(b);
        v.push(Piece::Candidate);
        v.extend(tail);
        // Adjacent texts merge when parsed: merge them here too.
        let mut out: Vec<Piece> = Vec::new();
        for p in v {
            match (out.last_mut(), p) {
                (Some(Piece::Text(prev)), Piece::Text(t)) => prev.push_str(&t),
                (_, p) => out.push(p),
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_strings_never_panic_the_template_parser(s in any::<String>()) {
        check_accepted(&s)?;
    }

    #[test]
    fn template_fragments_never_panic_and_round_trip(s in template_text()) {
        check_accepted(&s)?;
    }

    #[test]
    fn every_valid_template_parses_to_its_pieces(pieces in valid_pieces()) {
        prop_assert_eq!(template::parse(&render(&pieces)).ok(), Some(pieces));
    }
}

/// The properties above are not vacuous: their seeds are valid, so mutants start from files the
/// readers accept.
#[test]
fn the_seeds_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(file(dir.path(), sample_gguf())).unwrap();
    assert_eq!(f.tensors().len(), 4);
    let p = Pack::open(file(dir.path(), sample_pack())).unwrap();
    assert_eq!(p.n_items(), 3);
    assert!(p.seq.is_some());
    let m = GgufFile::open(file(dir.path(), sample_model())).unwrap();
    let facts = check_model(&m).unwrap();
    assert_eq!(facts.n_layer as u64, N_LAYER);
}
