//! `adapter::check_adapter`: a valid adapter passes and reports what it adapts; each way an
//! adapter can be wrong for its base (or hostile to llama.cpp) is its own typed error; mutated
//! adapter bytes never panic the check; and the pack's adapter reference round-trips.

use delrec_format::adapter::{check_adapter, BaseTensors};
use delrec_format::gguf::{f32_bytes, Array, GgufFile, GgufWriter, TensorData, TensorType, Value};
use delrec_format::pack::{AdapterRef, CatalogItem, PackBuilder, PACK_VERSION_ADAPTER};
use delrec_format::{BaseIdentity, Error, Pack};
use proptest::prelude::*;

const N_EMBD: u64 = 8;
const N_FF: u64 = 12;

fn write(w: &GgufWriter, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    w.write_atomic(&p, &mut |_, _| {}).unwrap();
    p
}

/// A base "model" GGUF: just the tensor table and identity keys `check_adapter` reads.
fn base(dir: &std::path::Path) -> (BaseTensors, BaseIdentity) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("llama.embedding_length", Value::U32(N_EMBD as u32));
    w.set("tokenizer.ggml.tokens", Value::Array(Array::Str((0..16).map(|i| format!("t{i}")).collect())));
    for l in 0..2 {
        for (stem, dims) in [("attn_q", [N_EMBD, N_EMBD]), ("attn_v", [N_EMBD, 4]), ("ffn_down", [N_FF, N_EMBD])] {
            let n = (dims[0] * dims[1]) as usize;
            w.add_tensor(
                &format!("blk.{l}.{stem}.weight"),
                &dims,
                TensorType::F32,
                TensorData::Owned(f32_bytes(&vec![0.0; n])),
            )
            .unwrap();
        }
    }
    let n = (N_EMBD * 16) as usize;
    w.add_tensor("token_embd.weight", &[N_EMBD, 16], TensorType::F32, TensorData::Owned(f32_bytes(&vec![0.0; n])))
        .unwrap();
    let g = GgufFile::open(write(&w, dir, "base.gguf")).unwrap();
    (BaseTensors::of_model(&g).unwrap(), BaseIdentity::of_model(&g).unwrap())
}

/// One pair: (target, a dims, b dims, type).
struct Pair {
    target: &'static str,
    a: Vec<u64>,
    b: Vec<u64>,
    ty: TensorType,
    value: f32,
}

fn pair(target: &'static str, inp: u64, out: u64, r: u64) -> Pair {
    Pair { target, a: vec![inp, r], b: vec![r, out], ty: TensorType::F32, value: 0.25 }
}

fn good_pairs() -> Vec<Pair> {
    vec![pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2), pair("blk.1.ffn_down.weight", N_FF, N_EMBD, 3)]
}

fn adapter(pairs: &[Pair], meta: &[(&str, Value)], identity: Option<&BaseIdentity>) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("general.type", Value::Str("adapter".into()));
    w.set("adapter.type", Value::Str("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(4.0));
    if let Some(id) = identity {
        w.set("delrec.base.architecture", Value::Str(id.architecture.clone()));
        w.set("delrec.base.n_embd", Value::U32(id.n_embd));
        w.set("delrec.base.n_vocab", Value::U32(id.n_vocab));
        w.set("delrec.base.tokenizer_fingerprint", Value::Str(id.tokenizer_fingerprint.clone()));
    }
    for (k, v) in meta {
        w.set(k, v.clone());
    }
    for p in pairs {
        for (half, dims) in [("lora_a", &p.a), ("lora_b", &p.b)] {
            let n = dims.iter().product::<u64>() as usize;
            let bytes = match p.ty {
                TensorType::F16 => vec![half::f16::from_f32(p.value); n].iter().flat_map(|h| h.to_le_bytes()).collect(),
                _ => f32_bytes(&vec![p.value; n]),
            };
            w.add_tensor(&format!("{}.{half}", p.target), dims, p.ty, TensorData::Owned(bytes)).unwrap();
        }
    }
    w
}

fn check(w: &GgufWriter) -> Result<delrec_format::adapter::AdapterInfo, Error> {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, id) = base(dir.path());
    let g = GgufFile::open(write(w, dir.path(), "a.gguf"))?;
    check_adapter(&g, &tensors, &id)
}

fn identity() -> BaseIdentity {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path()).1
}

#[test]
fn a_valid_adapter_reports_what_it_adapts() {
    let info = check(&adapter(&good_pairs(), &[], Some(&identity()))).unwrap();
    assert_eq!(info.alpha, 4.0);
    assert_eq!(info.weights.len(), 2);
    assert_eq!(info.ranks().into_iter().collect::<Vec<_>>(), vec![(2, 1), (3, 1)]);
    assert_eq!(info.targets(), vec!["attn_q".to_string(), "ffn_down".to_string()]);
    assert_eq!(info.tensor_bytes, 4 * (8 * 2 + 2 * 8 + 12 * 3 + 3 * 8));
    // F16 and no identity keys (llama.cpp's own converter writes none) are fine too.
    let f16: Vec<Pair> = good_pairs().into_iter().map(|p| Pair { ty: TensorType::F16, ..p }).collect();
    assert!(check(&adapter(&f16, &[], None)).is_ok());
}

fn invalid(w: &GgufWriter, needle: &str) {
    match check(w) {
        Err(Error::InvalidFile { reason, .. }) => assert!(reason.contains(needle), "{reason:?} lacks {needle:?}"),
        other => panic!("expected InvalidFile containing {needle:?}, got {other:?}"),
    }
}

fn mismatch(w: &GgufWriter, needle: &str) {
    match check(w) {
        Err(Error::PackMismatch { what, .. }) => assert!(what.contains(needle), "{what:?} lacks {needle:?}"),
        other => panic!("expected PackMismatch on {needle:?}, got {other:?}"),
    }
}

#[test]
fn metadata_llama_cpp_would_abort_on_is_refused() {
    // Keys llama.cpp reads with type-asserting getters.
    invalid(&adapter(&good_pairs(), &[("general.type", Value::U32(1))], None), "general.type must be a string");
    invalid(&adapter(&good_pairs(), &[("adapter.type", Value::I32(0))], None), "adapter.type must be a string");
    invalid(&adapter(&good_pairs(), &[("adapter.lora.alpha", Value::U32(8))], None), "adapter.lora.alpha");
    invalid(&adapter(&good_pairs(), &[("adapter.lora.alpha", Value::F32(f32::NAN))], None), "adapter.lora.alpha");
    invalid(&adapter(&good_pairs(), &[("adapter.lora.alpha", Value::F32(-1.0))], None), "adapter.lora.alpha");
    invalid(&adapter(&good_pairs(), &[("general.type", Value::Str("model".into()))], None), "not an adapter");
    invalid(&adapter(&good_pairs(), &[("adapter.type", Value::Str("cvec".into()))], None), "not a LoRA");
    invalid(
        &adapter(&good_pairs(), &[("adapter.alora.invocation_tokens", Value::Array(Array::U32(vec![1])))], None),
        "activated LoRA",
    );
}

#[test]
fn an_adapter_for_another_base_is_a_mismatch() {
    mismatch(&adapter(&good_pairs(), &[("general.architecture", Value::Str("qwen2".into()))], None), "architecture");
    let mut other = identity();
    other.tokenizer_fingerprint = "0".repeat(64);
    mismatch(&adapter(&good_pairs(), &[], Some(&other)), "adapter base tokenizer fingerprint");
    // A target the base lacks; a shape the base's weight does not have.
    mismatch(&adapter(&[pair("blk.5.attn_q.weight", N_EMBD, N_EMBD, 2)], &[], None), "adapter target blk.5.attn_q");
    mismatch(&adapter(&[pair("blk.0.attn_v.weight", N_EMBD, N_EMBD, 2)], &[], None), "adapter shape");
    mismatch(&adapter(&[pair("blk.0.attn_q.weight", N_FF, N_EMBD, 2)], &[], None), "adapter shape");
}

#[test]
fn malformed_pairs_are_refused() {
    // Halves whose ranks disagree (llama.cpp's "not transposed"), a rank of 0, and one too big.
    let mut p = pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2);
    p.b = vec![3, N_EMBD];
    invalid(&adapter(&[p], &[], None), "ranks of lora_a (2) and lora_b (3)");
    invalid(&adapter(&[pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 0)], &[], None), "must agree");
    invalid(&adapter(&[pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 9)], &[], None), "must agree");
    // A 3-D half.
    let mut p = pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2);
    p.a = vec![N_EMBD, 2, 2];
    invalid(&adapter(&[p], &[], None), "must be matrices");
    // Types the matmul is not given.
    let q = Pair { ty: TensorType::I32, ..pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2) };
    invalid(&adapter(&[q], &[], None), "F32, F16 or BF16");
    // Non-finite values, F32 and F16.
    invalid(
        &adapter(&[Pair { value: f32::INFINITY, ..pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2) }], &[], None),
        "NaN or infinite",
    );
    let h = Pair { ty: TensorType::F16, value: f32::NAN, ..pair("blk.0.attn_q.weight", N_EMBD, N_EMBD, 2) };
    invalid(&adapter(&[h], &[], None), "NaN or infinite");
    // Targets merging handles but run-time adapters do not; tensors that are no half.
    invalid(&adapter(&[pair("token_embd.weight", N_EMBD, 16, 2)], &[], None), "not a weight adapters may target");
    let mut w = adapter(&good_pairs(), &[], None);
    w.add_tensor("blk.0.attn_q.weight.lora_x", &[2], TensorType::F32, TensorData::Owned(f32_bytes(&[0.0; 2]))).unwrap();
    invalid(&w, "neither a .lora_a nor a .lora_b");
    let mut w = adapter(&[], &[], None);
    w.add_tensor("blk.0.attn_q.weight.lora_a", &[N_EMBD, 2], TensorType::F32, TensorData::Owned(f32_bytes(&[0.0; 16])))
        .unwrap();
    invalid(&w, "one of lora_a / lora_b is missing");
    invalid(&adapter(&[], &[], None), "no LoRA tensors");
}

#[test]
fn packs_name_their_adapter_in_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity();
    let build = |adapter: Option<AdapterRef>, name: &str| {
        let mut b = PackBuilder::new(id.clone(), "{history}{candidate}");
        b.add_item(CatalogItem { id: "a".into(), title: "A".into(), text: None });
        b.adapter = adapter;
        let p = dir.path().join(name);
        b.write(&p, &mut |s| Ok(s.bytes().map(|c| (c % 16) as i32).collect())).map(|_| p)
    };
    let r = AdapterRef { file: "movies.lora.gguf".into(), sha256: "ab".repeat(32), scale: 0.5 };
    let p = build(Some(r.clone()), "with.pack.gguf").unwrap();
    let pack = Pack::open(&p).unwrap();
    assert_eq!(pack.adapter.as_ref(), Some(&r));
    assert_eq!(GgufFile::open(&p).unwrap().get("delrec.pack.version"), Some(&Value::U32(PACK_VERSION_ADAPTER)));
    let plain = Pack::open(build(None, "plain.pack.gguf").unwrap()).unwrap();
    assert_eq!(plain.adapter, None);
    // Names that would leave the pack's directory, bad digests and scales are refused.
    for bad in [
        AdapterRef { file: "../x.gguf".into(), ..r.clone() },
        AdapterRef { file: "..".into(), ..r.clone() },
        AdapterRef { file: String::new(), ..r.clone() },
        AdapterRef { sha256: "xyz".into(), ..r.clone() },
        AdapterRef { scale: 0.0, ..r.clone() },
        AdapterRef { scale: f32::NAN, ..r.clone() },
    ] {
        assert!(matches!(build(Some(bad.clone()), "bad.pack.gguf"), Err(Error::InvalidInput(_))), "{bad:?}");
    }
    // A reader refuses a version-1 pack naming an adapter (an old writer would not), and the
    // reverse, by rewriting the version key.
    let g = GgufFile::open(&p).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.kv() {
        w.set(k, v.clone());
    }
    for t in g.tensors() {
        let bytes = g.tensor_bytes(t).unwrap().to_vec();
        w.add_tensor(&t.name, &t.dims, t.ty, TensorData::Owned(bytes)).unwrap();
    }
    w.set("delrec.pack.version", Value::U32(1));
    let v1 = write(&w, dir.path(), "v1.pack.gguf");
    assert!(matches!(Pack::open(&v1), Err(Error::InvalidFile { .. })));
    w.set("delrec.adapter.file", Value::Str("a/b".into()));
    w.set("delrec.pack.version", Value::U32(2));
    assert!(matches!(Pack::open(write(&w, dir.path(), "slash.pack.gguf")), Err(Error::InvalidFile { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Mutated adapter bytes are an error or a checked adapter, never a panic.
    #[test]
    fn mutated_adapters_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let (tensors, id) = base(dir.path());
        let p = write(&adapter(&good_pairs(), &[], Some(&id)), dir.path(), "a.gguf");
        let mut bytes = std::fs::read(&p).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(g) = GgufFile::open(&p) {
            if let Ok(info) = check_adapter(&g, &tensors, &id) {
                prop_assert!(!info.weights.is_empty());
                prop_assert!(info.alpha.is_finite());
            }
        }
    }
}
