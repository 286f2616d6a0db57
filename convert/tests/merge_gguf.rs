//! `merge-lora`: a PEFT LoRA merged into a GGUF base. The merge into a GGUF converted from the
//! tiny HF checkpoint equals the HF-base merge (`model --hf --lora`) tensor for tensor; every ggml
//! type the merge reads is dequantized exactly as llama.cpp dequantizes it (llama.cpp's own
//! requantization to F32 is the reference); llama.cpp loads the results; every bad input is a
//! typed error that leaves no file behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use delrec_convert::dequant;
use delrec_convert::llama::{self, ftype, LoadedModel};
use delrec_convert::merge::{merge_lora_gguf, MergeOptions, MergeOutType};
use delrec_convert::model::{convert_model, ModelOptions, OutType};
use delrec_convert::st::Dtype;
use delrec_convert::testing::{write_floats, write_lora_adapter, Floats, TinySpec};
use delrec_convert::ConvertError;
use delrec_format::gguf::{GgufFile, GgufWriter, TensorData, TensorType, Value};
use delrec_format::identity::tokenizer_fingerprint;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const TOKENS: [i32; 8] = [5, 100, 200, 263, 7, 9, 11, 150];

/// llama.cpp ftypes beyond those `delrec_convert::llama::ftype` names (`llama_ftype` in llama.h).
const MOSTLY_Q5_0: u32 = 8;
const MOSTLY_Q5_1: u32 = 9;
const MOSTLY_Q4_K_S: u32 = 14;
const MOSTLY_Q5_K_S: u32 = 16;
const MOSTLY_Q6_K: u32 = 18;

fn hf_opts(hf: &Path, out: &Path, outtype: OutType, lora: Option<&Path>) -> ModelOptions {
    ModelOptions {
        hf_dir: hf.to_path_buf(),
        out: out.to_path_buf(),
        outtype,
        lora: lora.map(Path::to_path_buf),
        name: None,
        verify: true,
        threads: 2,
    }
}

fn merge_opts(base: &Path, lora: &Path, out: &Path, outtype: MergeOutType) -> MergeOptions {
    MergeOptions { base: base.to_path_buf(), lora: lora.to_path_buf(), out: out.to_path_buf(), outtype, verify: true }
}

/// Every tensor of a GGUF as f32 (through the merge's own dequantizer).
fn tensors_f32(path: &Path) -> BTreeMap<String, (Vec<u64>, TensorType, Vec<f32>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let ne0 = t.dims[0];
            let size = dequant::byte_size(t.ty, ne0, t.n_elements()).unwrap() as usize;
            let bytes = &f.bytes()[t.offset as usize..t.offset as usize + size];
            (t.name.clone(), (t.dims.clone(), t.ty, dequant::dequantize(t.ty, bytes).unwrap()))
        })
        .collect()
}

/// max |a - b| over all tensors; both files must hold the same tensors with the same dims.
fn max_tensor_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (tensors_f32(a), tensors_f32(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (name, (dims, _, va)) in &ta {
        let (dims_b, _, vb) = &tb[name];
        assert_eq!(dims, dims_b, "{name}");
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs();
            assert!(!d.is_nan(), "{name}: NaN");
            worst = worst.max(d);
        }
    }
    worst
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// A tiny checkpoint, its F32 GGUF (no LoRA), a LoRA on all seven modules, and the HF-base merge
/// of that LoRA at F32 (the reference).
struct Fixture {
    root: tempfile::TempDir,
    spec: TinySpec,
    base: PathBuf,
    lora: PathBuf,
    hf_merged: PathBuf,
}

fn fixture(spec: TinySpec, rslora: bool) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let lora = root.path().join("lora");
    write_lora_adapter(&lora, &spec, 2, 8.0, &ALL, 3);
    if rslora {
        let p = lora.join("adapter_config.json");
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c["use_rslora"] = serde_json::json!(true);
        std::fs::write(&p, c.to_string()).unwrap();
    }
    let base = root.path().join("base.f32.gguf");
    convert_model(&hf_opts(&hf, &base, OutType::F32, None)).unwrap();
    let hf_merged = root.path().join("hf-merged.f32.gguf");
    let r = convert_model(&hf_opts(&hf, &hf_merged, OutType::F32, Some(&lora))).unwrap();
    assert_eq!(r.lora_merged, 7 * spec.layers);
    Fixture { root, spec, base, lora, hf_merged }
}

fn logits(path: &Path) -> Vec<Vec<f32>> {
    LoadedModel::load(path, false).unwrap().eval_logits(&TOKENS).unwrap()
}

fn max_logit_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The merge into the GGUF base equals the HF-base merge, keeps the metadata and the tokenizer,
/// and llama.cpp loads it and computes the same logits.
fn gguf_merge_equals_hf_merge(spec: TinySpec, rslora: bool) {
    let fx = fixture(spec, rslora);
    let out = fx.root.path().join("merged.f32.gguf");
    let r = merge_lora_gguf(&merge_opts(&fx.base, &fx.lora, &out, MergeOutType::F32)).unwrap();
    assert_eq!(r.lora_merged, 7 * fx.spec.layers);
    assert_eq!(r.arch, fx.spec.arch);
    let d = max_tensor_diff(&out, &fx.hf_merged);
    assert!(d < 1e-5, "max |GGUF-base merge - HF-base merge| = {d}");
    // The adapter really moved the weights (so the comparison above says something).
    assert!(max_tensor_diff(&out, &fx.base) > 0.05);
    llama::check_loads(&out).unwrap();
    let dl = max_logit_diff(&logits(&out), &logits(&fx.hf_merged));
    assert!(dl < 1e-4, "logits differ by {dl}");
    // Metadata: everything copied, only the file type says what the tensors are now.
    let (fb, fo) = (GgufFile::open(&fx.base).unwrap(), GgufFile::open(&out).unwrap());
    for (k, v) in fb.kv() {
        if k != "general.file_type" {
            assert_eq!(fo.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(fo.kv().len(), fb.kv().len());
    assert_eq!(fo.req_u64("general.file_type").unwrap(), ftype::ALL_F32 as u64);
    assert_eq!(tokenizer_fingerprint(&fo).unwrap(), tokenizer_fingerprint(&fb).unwrap());
    assert_eq!(files_in(fx.root.path()).iter().filter(|p| p.is_file()).count(), 3, "stray files");
}

#[test]
fn llama_merge_into_gguf_equals_hf_merge_with_permuted_q_k() {
    gguf_merge_equals_hf_merge(TinySpec::llama(), false);
}

#[test]
fn qwen2_merge_into_gguf_equals_hf_merge_unpermuted_rslora() {
    // BF16 sharded checkpoint, tied embeddings, q/k/v biases; rsLoRA scale alpha / sqrt(r).
    gguf_merge_equals_hf_merge(TinySpec::qwen2(), true);
}

#[test]
fn llama_q_k_rows_are_permuted_not_added_in_hf_order() {
    // Guard for the test above: merging the delta in HF row order gives a different q.
    let fx = fixture(TinySpec::llama(), false);
    let out = fx.root.path().join("m.gguf");
    merge_lora_gguf(&merge_opts(&fx.base, &fx.lora, &out, MergeOutType::F32)).unwrap();
    let (base, merged) = (tensors_f32(&fx.base), tensors_f32(&out));
    let lora: Floats = read_adapter(&fx.lora);
    let a = &lora["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].2;
    let b = &lora["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].2;
    let (rows, inp, r) = (32, 32, 2);
    let q0 = &base["blk.0.attn_q.weight"].2;
    let got = &merged["blk.0.attn_q.weight"].2;
    let mut unpermuted = q0.clone();
    for o in 0..rows {
        for i in 0..inp {
            unpermuted[o * inp + i] += 4.0 * (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum::<f32>();
        }
    }
    let d = got.iter().zip(&unpermuted).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(d > 0.1, "the q delta was not permuted (max diff {d})");
    // v is not permuted: there the HF-order update is exactly what was merged.
    let a = &lora["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"].2;
    let b = &lora["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].2;
    let (v0, got) = (&base["blk.0.attn_v.weight"].2, &merged["blk.0.attn_v.weight"].2);
    for o in 0..16 {
        for i in 0..inp {
            let want = v0[o * inp + i] + 4.0 * (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum::<f32>();
            assert!((got[o * inp + i] - want).abs() < 1e-5);
        }
    }
}

/// The adapter's tensors as the test wrote them.
fn read_adapter(dir: &Path) -> Floats {
    let set = delrec_convert::st::StSet::open_file(&dir.join("adapter_model.safetensors")).unwrap();
    set.tensors.iter().map(|(n, t)| (n.clone(), (Dtype::F32, t.shape.clone(), t.to_f32().unwrap()))).collect()
}

#[test]
fn f16_output_rounds_the_f32_merge_and_keeps_vectors_f32() {
    let fx = fixture(TinySpec::llama(), false);
    let (o32, o16) = (fx.root.path().join("m32.gguf"), fx.root.path().join("m16.gguf"));
    merge_lora_gguf(&merge_opts(&fx.base, &fx.lora, &o32, MergeOutType::F32)).unwrap();
    let r = merge_lora_gguf(&merge_opts(&fx.base, &fx.lora, &o16, MergeOutType::F16)).unwrap();
    assert_eq!(r.types.keys().cloned().collect::<Vec<_>>(), vec!["F16".to_string(), "F32".to_string()]);
    let (t32, t16) = (tensors_f32(&o32), tensors_f32(&o16));
    for (name, (dims, ty, v)) in &t16 {
        assert_eq!(*ty, if dims.len() == 1 { TensorType::F32 } else { TensorType::F16 }, "{name}");
        for (x, y) in v.iter().zip(&t32[name].2) {
            let want = if dims.len() == 1 { *y } else { half::f16::from_f32(*y).to_f32() };
            assert_eq!(x.to_bits(), want.to_bits(), "{name}");
        }
    }
    let f = GgufFile::open(&o16).unwrap();
    assert_eq!(f.req_u64("general.file_type").unwrap(), ftype::MOSTLY_F16 as u64);
    let dl = max_logit_diff(&logits(&o16), &logits(&o32));
    assert!(dl < 0.05, "F16 logits moved by {dl}");
}

/// Quantizes `src` with llama.cpp to `ftype`, and dequantizes that back to F32 with llama.cpp
/// (its requantizer converts every tensor with ggml's `to_float`): (quantized, llama.cpp F32).
fn quantized_and_llama_dequantized(src: &Path, dir: &Path, tag: &str, ft: u32) -> (PathBuf, PathBuf) {
    let q = dir.join(format!("base.{tag}.gguf"));
    llama::quantize(src, &q, ft, false, 2).unwrap();
    let deq = dir.join(format!("base.{tag}.llama-f32.gguf"));
    llama::quantize(&q, &deq, ftype::ALL_F32, true, 2).unwrap();
    (q, deq)
}

/// For each base type: our dequantization equals llama.cpp's, and merging into the quantized base
/// equals merging into llama.cpp's dequantization of it.
fn dequantization_matches_llama_cpp(spec: TinySpec, cases: &[(&str, u32, &str)]) {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let lora = root.path().join("lora");
    write_lora_adapter(&lora, &spec, 4, 8.0, &ALL, 5);
    let f32 = root.path().join("base.f32.gguf");
    convert_model(&hf_opts(&hf, &f32, OutType::F32, None)).unwrap();
    for &(tag, ft, want_type) in cases {
        let src = match ft {
            ftype::MOSTLY_F16 | ftype::MOSTLY_BF16 => {
                let p = root.path().join(format!("base.{tag}.gguf"));
                let ty = if ft == ftype::MOSTLY_F16 { OutType::F16 } else { OutType::Bf16 };
                convert_model(&hf_opts(&hf, &p, ty, None)).unwrap();
                let deq = root.path().join(format!("base.{tag}.llama-f32.gguf"));
                llama::quantize(&p, &deq, ftype::ALL_F32, true, 2).unwrap();
                (p, deq)
            }
            _ => quantized_and_llama_dequantized(&f32, root.path(), tag, ft),
        };
        let (q, deq) = src;
        let ours = tensors_f32(&q);
        assert!(ours.values().any(|(_, ty, _)| type_id_name(*ty) == want_type), "{tag}");
        let theirs = tensors_f32(&deq);
        assert_eq!(ours.len(), theirs.len());
        for (name, (dims, ty, v)) in &ours {
            let (dims_l, ty_l, vl) = &theirs[name];
            assert_eq!(dims, dims_l);
            if dims.len() >= 2 {
                assert_eq!(*ty_l, TensorType::F32, "{tag} {name}: llama.cpp left it {ty_l:?}");
            }
            let bad = v.iter().zip(vl).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(bad, 0, "{tag} {name} ({}): {bad} of {} values differ from llama.cpp's", ty.name(), v.len());
        }
        // The merge dequantizes the same way.
        let (m_q, m_deq) = (root.path().join(format!("m.{tag}.gguf")), root.path().join(format!("m.{tag}.ref.gguf")));
        let r = merge_lora_gguf(&merge_opts(&q, &lora, &m_q, MergeOutType::F32)).unwrap();
        assert!(r.base_types.contains_key(want_type), "{tag}: {:?}", r.base_types);
        merge_lora_gguf(&merge_opts(&deq, &lora, &m_deq, MergeOutType::F32)).unwrap();
        assert_eq!(max_tensor_diff(&m_q, &m_deq), 0.0, "{tag}");
    }
}

/// ggml names of the types the reader only knows by id.
fn type_id_name(ty: TensorType) -> String {
    delrec_convert::model::type_name(ty)
}

#[test]
fn dequantizes_f16_bf16_q8_0_q4_0_q4_1_q5_0_q5_1_like_llama_cpp() {
    dequantization_matches_llama_cpp(
        TinySpec::llama(),
        &[
            ("f16", ftype::MOSTLY_F16, "F16"),
            ("bf16", ftype::MOSTLY_BF16, "BF16"),
            ("q8_0", ftype::MOSTLY_Q8_0, "Q8_0"),
            ("q4_0", ftype::MOSTLY_Q4_0, "Q4_0"),
            ("q4_1", ftype::MOSTLY_Q4_1, "Q4_1"),
            ("q5_0", MOSTLY_Q5_0, "Q5_0"),
            ("q5_1", MOSTLY_Q5_1, "Q5_1"),
        ],
    );
}

#[test]
fn dequantizes_k_quants_like_llama_cpp() {
    // K-quants need rows that are a multiple of 256.
    let spec = TinySpec { hidden: 256, ff: 512, heads: 4, kv_heads: 2, layers: 1, ..TinySpec::llama() };
    dequantization_matches_llama_cpp(
        spec,
        &[("q4_k", MOSTLY_Q4_K_S, "Q4_K"), ("q5_k", MOSTLY_Q5_K_S, "Q5_K"), ("q6_k", MOSTLY_Q6_K, "Q6_K")],
    );
}

// ---- bad inputs: a typed error, and no file left in the output folder -------------------------

/// Runs a merge into `root/out/m.gguf` that must fail; asserts `out/` stays empty.
fn merge_err(base: &Path, lora: &Path, root: &Path) -> ConvertError {
    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");
    let e = merge_lora_gguf(&merge_opts(base, lora, &out, MergeOutType::F16)).expect_err("merge should fail");
    assert_eq!(files_in(&out_dir), Vec::<PathBuf>::new(), "a failed merge left files ({e})");
    e
}

/// A copy of a GGUF with edited metadata and/or one tensor relabelled to another type of the same
/// byte size.
fn rewrite_gguf(src: &Path, dst: &Path, kv: &[(&str, Value)], retype: Option<(&str, TensorType)>) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.kv() {
        w.set(k, v.clone());
    }
    for (k, v) in kv {
        w.set(k, v.clone());
    }
    for t in f.tensors() {
        let ty = match retype {
            Some((name, ty)) if name == t.name => ty,
            _ => t.ty,
        };
        let bytes = f.tensor_bytes(t).unwrap().to_vec();
        w.add_tensor(&t.name, &t.dims, ty, TensorData::Owned(bytes)).unwrap();
    }
    w.write_atomic(dst, &mut |_, _| {}).unwrap();
}

#[test]
fn adapter_for_a_module_the_base_lacks() {
    let fx = fixture(TinySpec::llama(), false);
    let deeper = TinySpec { layers: 3, ..TinySpec::llama() };
    let lora = fx.root.path().join("deeper");
    write_lora_adapter(&lora, &deeper, 2, 8.0, &["v_proj"], 1);
    match merge_err(&fx.base, &lora, fx.root.path()) {
        ConvertError::LoraTarget { module, tensor, .. } => {
            assert_eq!(
                (module.as_str(), tensor.as_str()),
                ("model.layers.2.self_attn.v_proj.weight", "blk.2.attn_v.weight")
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn adapter_for_another_width_is_a_shape_mismatch() {
    let fx = fixture(TinySpec::llama(), false);
    let lora = fx.root.path().join("wide");
    write_lora_adapter(&lora, &TinySpec { hidden: 64, ..TinySpec::llama() }, 2, 8.0, &["up_proj"], 1);
    match merge_err(&fx.base, &lora, fx.root.path()) {
        ConvertError::ShapeMismatch { name, expected, found } => {
            assert!(name.contains("up_proj") && name.contains("blk.0.ffn_up.weight"), "{name}");
            assert_eq!((expected, found), (vec![64, 32], vec![64, 64]));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn adapter_rank_differs_from_its_config() {
    let fx = fixture(TinySpec::llama(), false);
    let lora = fx.root.path().join("rank");
    write_lora_adapter(&lora, &fx.spec, 2, 8.0, &["q_proj"], 1);
    let p = lora.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["r"] = serde_json::json!(3);
    std::fs::write(&p, c.to_string()).unwrap();
    let e = merge_err(&fx.base, &lora, fx.root.path());
    assert!(matches!(e, ConvertError::LoraRank { r: 3, found: 2, .. }), "{e}");
}

#[test]
fn nan_or_inf_in_the_adapter() {
    let fx = fixture(TinySpec::llama(), false);
    for (tag, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let lora = fx.root.path().join(tag);
        let mut t = write_lora_adapter(&lora, &fx.spec, 2, 8.0, &["k_proj"], 1);
        let name = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight";
        t.get_mut(name).unwrap().2[5] = bad;
        write_floats(&lora.join("adapter_model.safetensors"), &t);
        match merge_err(&fx.base, &lora, fx.root.path()) {
            ConvertError::NonFinite { name: n, count, .. } => assert_eq!((n.as_str(), count), (name, 1)),
            other => panic!("{tag}: {other}"),
        }
    }
}

#[test]
fn base_tensor_type_without_a_dequantizer() {
    let fx = fixture(TinySpec::llama(), false);
    let base = fx.root.path().join("i32.gguf");
    rewrite_gguf(&fx.base, &base, &[], Some(("blk.1.ffn_norm.weight", TensorType::I32)));
    match merge_err(&base, &fx.lora, fx.root.path()) {
        ConvertError::TensorTypeUnsupported { name, ty, .. } => {
            assert_eq!((name.as_str(), ty.as_str()), ("blk.1.ffn_norm.weight", "I32"))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn base_that_is_not_llama_or_qwen2() {
    let fx = fixture(TinySpec::llama(), false);
    let base = fx.root.path().join("gemma.gguf");
    rewrite_gguf(&fx.base, &base, &[("general.architecture", Value::Str("gemma".into()))], None);
    let e = merge_err(&base, &fx.lora, fx.root.path());
    assert!(matches!(e, ConvertError::UnknownArchitecture { ref found } if found.contains("gemma")), "{e}");
    // A pack is not a model either.
    let pack = fx.root.path().join("pack.gguf");
    rewrite_gguf(&fx.base, &pack, &[("general.architecture", Value::Str("delrec-pack".into()))], None);
    let e = merge_err(&pack, &fx.lora, fx.root.path());
    assert!(matches!(e, ConvertError::UnknownArchitecture { .. }), "{e}");
}

#[test]
fn head_counts_that_do_not_split_q_rows() {
    let fx = fixture(TinySpec::llama(), false);
    let base = fx.root.path().join("heads.gguf");
    rewrite_gguf(&fx.base, &base, &[("llama.attention.head_count", Value::U32(3))], None);
    let e = merge_err(&base, &fx.lora, fx.root.path());
    assert!(matches!(e, ConvertError::UnsupportedConfig { ref reason, .. } if reason.contains("3 heads")), "{e}");
}

#[test]
fn not_a_lora_or_missing_files() {
    let fx = fixture(TinySpec::llama(), false);
    let e = merge_err(&fx.base, &fx.root.path().join("nope"), fx.root.path());
    assert!(matches!(e, ConvertError::Lora { .. }), "{e}");
    let prompt = fx.root.path().join("prompt");
    delrec_convert::testing::write_prompt_adapter(&prompt, 4, 32, 1);
    let e = merge_err(&fx.base, &prompt, fx.root.path());
    assert!(matches!(e, ConvertError::Lora { .. }), "{e}");
    let e = merge_err(&fx.root.path().join("missing.gguf"), &fx.lora, fx.root.path());
    assert!(matches!(e, ConvertError::Format(_)), "{e}");
    // A truncated base.
    let cut = fx.root.path().join("cut.gguf");
    let b = std::fs::read(&fx.base).unwrap();
    std::fs::write(&cut, &b[..b.len() - 64]).unwrap();
    let e = merge_err(&cut, &fx.lora, fx.root.path());
    assert!(matches!(e, ConvertError::Format(_)), "{e}");
}

#[test]
fn cli_merge_lora() {
    let fx = fixture(TinySpec::llama(), false);
    let out = fx.root.path().join("cli.f16.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_delrec-convert"))
        .args(["merge-lora", "--base", &s(&fx.base), "--lora", &s(&fx.lora), "--out", &s(&out), "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("LoRA merged into 14 tensors"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["lora_merged"].as_u64(), v["outtype"].as_str()), (Some(14), Some("f16")));
    assert_eq!(GgufFile::open(&out).unwrap().req_u64("general.file_type").unwrap(), 1);
    // Errors: status 1 and the cause; usage errors: status 2.
    let deeper = fx.root.path().join("deeper");
    write_lora_adapter(&deeper, &TinySpec { layers: 3, ..TinySpec::llama() }, 2, 8.0, &["v_proj"], 1);
    let bad = fx.root.path().join("bad.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_delrec-convert"))
        .args(["merge-lora", "--base", &s(&fx.base), "--lora", &s(&deeper), "--out", &s(&bad)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("blk.2.attn_v.weight"));
    assert!(!bad.exists());
    let o = Command::new(env!("CARGO_BIN_EXE_delrec-convert"))
        .args(["merge-lora", "--base", &s(&fx.base), "--lora", &s(&fx.lora), "--out", &s(&bad), "--outtype", "q8_0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
