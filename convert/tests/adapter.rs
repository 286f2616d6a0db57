//! `adapter`: a PEFT LoRA / AdaLoRA written as a llama.cpp LoRA adapter GGUF. For every pair,
//! the delta llama.cpp computes from the file (its scale, alpha / ne[0](lora_b) or 1 when alpha
//! is 0, times B·A) equals what `merge-lora` adds to the base, and equals PEFT's formula computed
//! here from the raw tensors (rsLoRA, rank/alpha patterns, AdaLoRA with pruned ranks); the llama
//! q/k permutation is the base's. Every bad input is a typed error that leaves no file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use delrec_convert::adapter::{build_adapter, AdapterInfo, AdapterOptions, AdapterOutType, AdapterReport};
use delrec_convert::dequant;
use delrec_convert::llama::{self, ftype};
use delrec_convert::lora::PeftType;
use delrec_convert::merge::{merge_lora_gguf, MergeOptions, MergeOutType};
use delrec_convert::model::{convert_model, permute_rows, ModelOptions, OutType};
use delrec_convert::st::Dtype;
use delrec_convert::testing::{
    write_adalora_adapter, write_floats, write_lora_adapter, write_lora_adapter_with, Floats, LoraCfg, TinySpec,
};
use delrec_convert::ConvertError;
use delrec_format::gguf::{GgufFile, TensorType, Value};
use delrec_format::BaseIdentity;
use serde_json::json;

const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const STEMS: [&str; 7] = ["attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up"];

/// A tiny checkpoint and its F32 GGUF.
struct Base {
    root: tempfile::TempDir,
    spec: TinySpec,
    base: PathBuf,
}

fn base(spec: TinySpec) -> Base {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let base = root.path().join("base.f32.gguf");
    let opts = ModelOptions {
        hf_dir: hf,
        out: base.clone(),
        outtype: OutType::F32,
        lora: None,
        name: None,
        verify: false,
        threads: 2,
    };
    convert_model(&opts).unwrap();
    Base { root, spec, base }
}

fn adapter(base: &Path, lora: &Path, out: &Path, outtype: AdapterOutType) -> delrec_convert::Result<AdapterReport> {
    build_adapter(&AdapterOptions {
        base: base.to_path_buf(),
        lora: lora.to_path_buf(),
        out: out.to_path_buf(),
        outtype,
    })
}

/// Every tensor of a GGUF as f32, with its ggml dims.
fn tensors_f32(path: &Path) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            let size = dequant::byte_size(t.ty, t.dims[0], t.n_elements()).unwrap() as usize;
            let bytes = &f.bytes()[t.offset as usize..t.offset as usize + size];
            (t.name.clone(), (t.dims.clone(), dequant::dequantize(t.ty, bytes).unwrap()))
        })
        .collect()
}

/// What llama.cpp adds to each adapted base tensor (row-major `[out, in]`), computed from the
/// adapter file the way `llm_graph_context::build_lora_mm` does (adapter scale 1).
fn llama_cpp_deltas(adapter: &Path) -> BTreeMap<String, Vec<f64>> {
    let f = GgufFile::open(adapter).unwrap();
    let alpha = match f.get("adapter.lora.alpha") {
        Some(Value::F32(a)) => *a,
        other => panic!("adapter.lora.alpha is {other:?}"),
    };
    let t = tensors_f32(adapter);
    let mut out = BTreeMap::new();
    for (name, (dims_b, b)) in &t {
        let Some(base) = name.strip_suffix(".lora_b") else { continue };
        let (dims_a, a) = &t[&format!("{base}.lora_a")];
        let (inp, r, rows) = (dims_a[0] as usize, dims_a[1] as usize, dims_b[1] as usize);
        assert_eq!(dims_b[0] as usize, r, "{base}: lora_b ne[0] is the rank");
        let scale = if alpha != 0.0 { alpha / r as f32 } else { 1.0 } as f64;
        out.insert(base.to_string(), low_rank(a, b, rows, r, inp, scale));
    }
    out
}

/// `scale · B·A` for B `[rows, r]`, A `[r, inp]` (f64).
fn low_rank(a: &[f32], b: &[f32], rows: usize, r: usize, inp: usize, scale: f64) -> Vec<f64> {
    let mut d = vec![0f64; rows * inp];
    for o in 0..rows {
        for k in 0..r {
            let bk = b[o * r + k] as f64 * scale;
            for i in 0..inp {
                d[o * inp + i] += bk * a[k * inp + i] as f64;
            }
        }
    }
    d
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// The GGUF name and (rows, in) of a module, and the heads llama permutes its rows by.
fn gguf_of(spec: &TinySpec, layer: usize, module: &str) -> (String, usize, usize, Option<usize>) {
    let (h, hd, ff) = (spec.hidden, spec.head_dim(), spec.ff);
    let (stem, rows, inp) = match module {
        "q_proj" => ("attn_q", spec.heads * hd, h),
        "k_proj" => ("attn_k", spec.kv_heads * hd, h),
        "v_proj" => ("attn_v", spec.kv_heads * hd, h),
        "o_proj" => ("attn_output", h, spec.heads * hd),
        "gate_proj" => ("ffn_gate", ff, h),
        "up_proj" => ("ffn_up", ff, h),
        _ => ("ffn_down", h, ff),
    };
    let heads = match (spec.arch, module) {
        ("llama", "q_proj") => Some(spec.heads),
        ("llama", "k_proj") => Some(spec.kv_heads),
        _ => None,
    };
    (format!("blk.{layer}.{stem}.weight"), rows, inp, heads)
}

fn group_of(module: &str) -> &'static str {
    if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&module) {
        "self_attn"
    } else {
        "mlp"
    }
}

/// A delta in HF row order, moved to the GGUF's row order.
fn to_gguf_rows(d: Vec<f64>, inp: usize, heads: Option<usize>) -> Vec<f64> {
    let Some(heads) = heads else { return d };
    let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
    permute_rows(&bytes, heads, inp * 8).chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// PEFT's delta of a LoRA module from the raw tensors, in the GGUF's row order.
fn peft_lora_delta(spec: &TinySpec, t: &Floats, layer: usize, module: &str, scale: f64) -> (String, Vec<f64>) {
    let (name, rows, inp, heads) = gguf_of(spec, layer, module);
    let p = format!("base_model.model.model.layers.{layer}.{}.{module}.", group_of(module));
    let (a, b) = (&t[&format!("{p}lora_A.weight")], &t[&format!("{p}lora_B.weight")]);
    let r = a.1[0];
    (name, to_gguf_rows(low_rank(&a.2, &b.2, rows, r, inp, scale), inp, heads))
}

/// Checks the adapter's llama.cpp deltas against `want` (GGUF name → delta), which must cover
/// every pair.
fn assert_deltas(adapter: &Path, want: &BTreeMap<String, Vec<f64>>) {
    let got = llama_cpp_deltas(adapter);
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, d) in &got {
        let diff = max_diff(d, &want[name]);
        assert!(diff < 1e-5, "{name}: max |llama.cpp delta - expected| = {diff}");
        assert!(want[name].iter().any(|x| x.abs() > 1e-2), "{name}: the expected delta is ~0");
    }
}

/// For every pair of an adapter over a tiny base, llama.cpp's delta equals merge-lora's
/// (merged - base, F32), and the file has llama.cpp's layout and the base's identity.
fn adapter_equals_merge(spec: TinySpec, rslora: bool) {
    let b = base(spec);
    let lora = b.root.path().join("lora");
    let mut cfg = LoraCfg::new(2, 8.0);
    cfg.rslora = rslora;
    write_lora_adapter_with(&lora, &b.spec, &cfg, &ALL, 3);
    let merged = b.root.path().join("merged.f32.gguf");
    merge_lora_gguf(&MergeOptions {
        base: b.base.clone(),
        lora: lora.clone(),
        out: merged.clone(),
        outtype: MergeOutType::F32,
        verify: false,
    })
    .unwrap();
    let out = b.root.path().join("lora.adapter.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    let n = 7 * b.spec.layers;
    assert_eq!((r.arch.as_str(), r.pairs, r.pruned), (b.spec.arch, n, 0));
    assert_eq!(r.ranks, BTreeMap::from([(2, n)]));
    assert_eq!(r.targets, STEMS.map(String::from).to_vec());
    assert_eq!((r.alpha_written, r.scale_folded), if rslora { (0.0, true) } else { (8.0, false) });
    assert_eq!(r.bytes, std::fs::metadata(&out).unwrap().len());

    let (tb, tm) = (tensors_f32(&b.base), tensors_f32(&merged));
    let merge_delta: BTreeMap<String, Vec<f64>> = tb
        .iter()
        .map(|(name, (_, v))| {
            (name.clone(), tm[name].1.iter().zip(v).map(|(m, b)| (*m as f64) - (*b as f64)).collect())
        })
        .filter(|(_, d): &(String, Vec<f64>)| d.iter().any(|x| *x != 0.0))
        .collect();
    assert_eq!(merge_delta.len(), n, "merge-lora changed exactly the adapted tensors");
    assert_deltas(&out, &merge_delta);

    let f = GgufFile::open(&out).unwrap();
    let kv = |k: &str| f.get(k).cloned().unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(kv("general.architecture"), Value::Str(b.spec.arch.into()));
    assert_eq!(kv("general.type"), Value::Str("adapter".into()));
    assert_eq!(kv("adapter.type"), Value::Str("lora".into()));
    assert_eq!(kv("adapter.lora.alpha"), Value::F32(r.alpha_written));
    assert_eq!(kv("delrec.adapter.peft_type"), Value::Str("LORA".into()));
    assert_eq!(kv("delrec.adapter.scale_folded"), Value::Bool(rslora));
    assert_eq!(kv("general.name"), Value::Str("lora adapter".into()));
    let id = BaseIdentity::of_model(&GgufFile::open(&b.base).unwrap()).unwrap();
    assert_eq!(kv("delrec.base.architecture"), Value::Str(id.architecture.clone()));
    assert_eq!(kv("delrec.base.n_embd"), Value::U32(id.n_embd));
    assert_eq!(kv("delrec.base.n_vocab"), Value::U32(id.n_vocab));
    assert_eq!(kv("delrec.base.tokenizer_fingerprint"), Value::Str(id.tokenizer_fingerprint.clone()));
    assert_eq!(AdapterInfo::read(&f).base, Some(id));
    // Tensors sorted by base name, lora_a [in, r] and lora_b [r, out], all F32.
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for t in f.tensors() {
        assert_eq!(t.ty, TensorType::F32, "{}", t.name);
        let base_name = t.name.strip_suffix(".lora_a").or_else(|| t.name.strip_suffix(".lora_b")).unwrap();
        let (dims, _) = &tb[base_name];
        let want = if t.name.ends_with(".lora_a") { vec![dims[0], 2] } else { vec![2, dims[1]] };
        assert_eq!(t.dims, want, "{}", t.name);
    }
    assert_eq!(files_in(b.root.path()).iter().filter(|p| p.is_file()).count(), 3, "stray files");
}

#[test]
fn llama_adapter_equals_merge_with_permuted_q_k() {
    adapter_equals_merge(TinySpec::llama(), false);
}

#[test]
fn qwen2_adapter_equals_merge_rslora_folded() {
    // Tied embeddings, BF16 sharded checkpoint, no q/k permutation; rsLoRA's alpha / √r cannot
    // be expressed as llama.cpp's alpha / r, so the scale is folded into B.
    adapter_equals_merge(TinySpec::qwen2(), true);
}

#[test]
fn quantized_base_gives_the_same_adapter() {
    // Only the base's metadata and shapes are read: a 4-bit base gets the adapter its F32 gets.
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("lora");
    write_lora_adapter(&lora, &b.spec, 4, 16.0, &ALL, 9);
    let q4 = b.root.path().join("base.q4_0.gguf");
    llama::quantize(&b.base, &q4, ftype::MOSTLY_Q4_0, false, 2).unwrap();
    assert!(GgufFile::open(&q4).unwrap().tensors().iter().any(|t| t.ty == TensorType::Q4_0));
    let (a32, a4) = (b.root.path().join("a32.gguf"), b.root.path().join("a4.gguf"));
    adapter(&b.base, &lora, &a32, AdapterOutType::F16).unwrap();
    adapter(&q4, &lora, &a4, AdapterOutType::F16).unwrap();
    let (f32_, f4) = (GgufFile::open(&a32).unwrap(), GgufFile::open(&a4).unwrap());
    for t in f32_.tensors() {
        let u = f4.tensor(&t.name).unwrap();
        assert_eq!((t.ty, &t.dims), (u.ty, &u.dims));
        assert_eq!(f32_.tensor_bytes(t), f4.tensor_bytes(u), "{}", t.name);
    }
    assert_eq!(f32_.kv().len(), f4.kv().len());
}

#[test]
fn f16_adapter_rounds_the_f32_one() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("lora");
    write_lora_adapter(&lora, &b.spec, 2, 8.0, &["q_proj", "down_proj"], 4);
    let (o32, o16) = (b.root.path().join("a32.gguf"), b.root.path().join("a16.gguf"));
    adapter(&b.base, &lora, &o32, AdapterOutType::F32).unwrap();
    let r = adapter(&b.base, &lora, &o16, AdapterOutType::F16).unwrap();
    assert_eq!(r.f16_overflow, 0);
    let (t32, t16) = (tensors_f32(&o32), tensors_f32(&o16));
    for (name, (_, v)) in &t16 {
        for (x, y) in v.iter().zip(&t32[name].1) {
            assert_eq!(x.to_bits(), half::f16::from_f32(*y).to_f32().to_bits(), "{name}");
        }
    }
    let f = GgufFile::open(&o16).unwrap();
    assert!(f.tensors().iter().all(|t| t.ty == TensorType::F16));
    assert_eq!(f.req_u64("general.file_type").unwrap(), ftype::MOSTLY_F16 as u64);
}

/// AdaLoRA's tensors of a module: (A [k, in], B [rows, k], E [k]).
fn ada_tensors<'t>(t: &'t Floats, layer: usize, group: &str, module: &str) -> (&'t [f32], &'t [f32], &'t [f32], usize) {
    let p = format!("base_model.model.model.layers.{layer}.{group}.{module}.");
    let (a, b, e) = (&t[&format!("{p}lora_A")], &t[&format!("{p}lora_B")], &t[&format!("{p}lora_E")]);
    (&a.2, &b.2, &e.2, a.1[0])
}

/// PEFT's AdaLoRA delta from the raw tensors: B·(A ⊙ E) · scaling / (ranknum + 1e-5), in the
/// GGUF's row order; None for a rank-0 module.
fn peft_adalora_delta(
    spec: &TinySpec,
    t: &Floats,
    layer: usize,
    module: &str,
    scaling: impl Fn(usize) -> f64,
    ranknum: f64,
) -> Option<(String, Vec<f64>)> {
    let (name, rows, inp, heads) = gguf_of(spec, layer, module);
    let (a, b, e, k) = ada_tensors(t, layer, group_of(module), module);
    if k == 0 {
        return None;
    }
    let ae: Vec<f32> = a.iter().enumerate().map(|(i, x)| x * e[i / inp]).collect();
    let d = low_rank(&ae, b, rows, k, inp, scaling(k) / (ranknum + 1e-5));
    Some((name, to_gguf_rows(d, inp, heads)))
}

const PRUNED: [(usize, &str, usize); 4] = [(0, "q_proj", 2), (1, "k_proj", 1), (0, "down_proj", 0), (1, "up_proj", 3)];

#[test]
fn adalora_folds_e_and_its_scale_pruned_ranks_included() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("ada");
    let init_r = 4;
    let t = write_adalora_adapter(&lora, &b.spec, init_r, 16.0, &ALL, &PRUNED, 5);
    let out = b.root.path().join("ada.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    assert_eq!((r.peft_type, r.pairs, r.pruned), (PeftType::AdaLora, 13, 1));
    assert_eq!(r.ranks, BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 10)]));
    assert_eq!((r.alpha_written, r.scale_folded), (0.0, true));
    // ranknum is init_r (PEFT copies the pre-resize ranknum back), scaling lora_alpha.
    let want: BTreeMap<String, Vec<f64>> = (0..2)
        .flat_map(|l| ALL.map(|m| (l, m)))
        .filter_map(|(l, m)| peft_adalora_delta(&b.spec, &t, l, m, |_| 16.0, init_r as f64))
        .collect();
    assert_eq!(want.len(), 13);
    assert!(!want.contains_key("blk.0.ffn_down.weight"));
    assert_deltas(&out, &want);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get("delrec.adapter.peft_type"), Some(&Value::Str("ADALORA".into())));

    // merge-lora folds AdaLoRA the same way.
    let merged = b.root.path().join("merged.gguf");
    let opts = MergeOptions {
        base: b.base.clone(),
        lora: lora.clone(),
        out: merged.clone(),
        outtype: MergeOutType::F32,
        verify: false,
    };
    assert_eq!(merge_lora_gguf(&opts).unwrap().lora_merged, 13);
    let (tb, tm) = (tensors_f32(&b.base), tensors_f32(&merged));
    for (name, d) in &want {
        let md: Vec<f64> = tm[name].1.iter().zip(&tb[name].1).map(|(m, b)| (*m as f64) - (*b as f64)).collect();
        assert!(max_diff(&md, d) < 1e-5, "{name}");
    }
    assert_eq!(tm["blk.0.ffn_down.weight"].1, tb["blk.0.ffn_down.weight"].1);
}

#[test]
fn adalora_alpha_zero_and_a_saved_ranknum() {
    let b = base(TinySpec::qwen2());
    let lora = b.root.path().join("ada");
    let mut t = write_adalora_adapter(&lora, &b.spec, 4, 0.0, &["q_proj", "v_proj"], &PRUNED, 6);
    // A whole-model state dict keeps ranknum; it wins over init_r.
    t.insert("base_model.model.model.layers.1.self_attn.v_proj.ranknum".into(), (Dtype::F32, vec![1], vec![3.0]));
    write_floats(&lora.join("adapter_model.safetensors"), &t);
    let out = b.root.path().join("ada.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    assert_eq!(r.ranks, BTreeMap::from([(2, 1), (4, 3)]));
    // lora_alpha 0: scaling is the module's (loaded) rank.
    let want: BTreeMap<String, Vec<f64>> = (0..2)
        .flat_map(|l| ["q_proj", "v_proj"].map(|m| (l, m)))
        .filter_map(|(l, m)| {
            let ranknum = if (l, m) == (1, "v_proj") { 3.0 } else { 4.0 };
            peft_adalora_delta(&b.spec, &t, l, m, |k| k as f64, ranknum)
        })
        .collect();
    assert_deltas(&out, &want);
}

#[test]
fn rank_and_alpha_patterns() {
    let b = base(TinySpec::llama());
    let modules = ["q_proj", "v_proj", "down_proj"];
    // rank_pattern: layer 1's down_proj has rank 4 (a full name), layer 0's q and v rank 3 (a
    // regex); alpha_pattern: every down_proj has alpha 16 (a bare module name).
    let mut cfg = LoraCfg::new(2, 8.0);
    cfg.rank_pattern = json!({"model.layers.1.mlp.down_proj": 4, r"layers\.0\.self_attn\.(q|v)_proj": 3});
    cfg.ranks = vec![((1, "down_proj"), 4), ((0, "q_proj"), 3), ((0, "v_proj"), 3)];
    let ranks = cfg.clone();
    let peft_scale = |alpha_pattern: bool, l: usize, m: &str| {
        let alpha = if alpha_pattern && m == "down_proj" { 16.0 } else { 8.0 };
        alpha / ranks.rank_of(l, m) as f64
    };
    let expected = |t: &Floats, alpha_pattern: bool| -> BTreeMap<String, Vec<f64>> {
        (0..2)
            .flat_map(|l| modules.map(|m| (l, m)))
            .map(|(l, m)| peft_lora_delta(&b.spec, t, l, m, peft_scale(alpha_pattern, l, m)))
            .collect()
    };
    // Ranks alone: llama.cpp's alpha / (the pair's rank) is PEFT's scale, so alpha is written.
    let lora = b.root.path().join("ranks");
    let t = write_lora_adapter_with(&lora, &b.spec, &cfg, &modules, 7);
    let out = b.root.path().join("ranks.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    assert_eq!((r.alpha_written, r.scale_folded), (8.0, false));
    assert_eq!(r.ranks, BTreeMap::from([(2, 3), (3, 2), (4, 1)]));
    assert_deltas(&out, &expected(&t, false));
    // With an alpha_pattern, one alpha no longer fits: folded.
    cfg.alpha_pattern = json!({"down_proj": 16});
    let lora = b.root.path().join("alphas");
    let t = write_lora_adapter_with(&lora, &b.spec, &cfg, &modules, 8);
    let out = b.root.path().join("alphas.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    assert_eq!((r.alpha_written, r.scale_folded), (0.0, true));
    assert_deltas(&out, &expected(&t, true));
    // rsLoRA: alpha / √r, folded.
    let mut rs = LoraCfg::new(4, 8.0);
    rs.rslora = true;
    let lora = b.root.path().join("rslora");
    let t = write_lora_adapter_with(&lora, &b.spec, &rs, &modules, 9);
    let out = b.root.path().join("rslora.gguf");
    let r = adapter(&b.base, &lora, &out, AdapterOutType::F32).unwrap();
    assert_eq!((r.alpha_written, r.scale_folded), (0.0, true));
    let want =
        (0..2).flat_map(|l| modules.map(|m| (l, m))).map(|(l, m)| peft_lora_delta(&b.spec, &t, l, m, 4.0)).collect();
    assert_deltas(&out, &want);
}

// ---- bad inputs: a typed error, and no file left in the output folder -------------------------

fn adapter_err(base: &Path, lora: &Path, root: &Path) -> ConvertError {
    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let e = adapter(base, lora, &out_dir.join("a.gguf"), AdapterOutType::F16).expect_err("adapter should fail");
    assert_eq!(files_in(&out_dir), Vec::<PathBuf>::new(), "a failed adapter left files ({e})");
    e
}

fn edit_config(lora: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = lora.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&p, c.to_string()).unwrap();
}

#[test]
fn adapter_for_another_base() {
    let b = base(TinySpec::llama());
    let wide = b.root.path().join("wide");
    write_lora_adapter(&wide, &TinySpec { hidden: 64, ..TinySpec::llama() }, 2, 8.0, &["up_proj"], 1);
    match adapter_err(&b.base, &wide, b.root.path()) {
        ConvertError::ShapeMismatch { name, .. } => assert!(name.contains("blk.0.ffn_up.weight"), "{name}"),
        other => panic!("{other}"),
    }
    let deeper = b.root.path().join("deeper");
    write_lora_adapter(&deeper, &TinySpec { layers: 3, ..TinySpec::llama() }, 2, 8.0, &["v_proj"], 1);
    match adapter_err(&b.base, &deeper, b.root.path()) {
        ConvertError::LoraTarget { tensor, .. } => assert_eq!(tensor, "blk.2.attn_v.weight"),
        other => panic!("{other}"),
    }
    // An adapter is not a base.
    let ok = b.root.path().join("ok");
    write_lora_adapter(&ok, &b.spec, 2, 8.0, &["v_proj"], 1);
    let a = b.root.path().join("a.gguf");
    adapter(&b.base, &ok, &a, AdapterOutType::F16).unwrap();
    let e = adapter_err(&a, &ok, b.root.path());
    assert!(matches!(e, ConvertError::Usage(ref m) if m.contains("is a LoRA adapter")), "{e}");
}

#[test]
fn ranks_that_disagree_with_the_config() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("r");
    write_lora_adapter(&lora, &b.spec, 2, 8.0, &["q_proj"], 1);
    edit_config(&lora, |c| c["r"] = json!(3));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraRank { r: 3, found: 2, .. }), "{e}");
    edit_config(&lora, |c| {
        c["r"] = json!(2);
        c["rank_pattern"] = json!({"layers.1.self_attn.q_proj": 5});
    });
    match adapter_err(&b.base, &lora, b.root.path()) {
        ConvertError::LoraRank { r: 5, found: 2, name, .. } => {
            assert!(name.contains("layers.1.self_attn.q_proj"), "{name}")
        }
        other => panic!("{other}"),
    }
    // Two keys giving one module different ranks: PEFT's answer depends on the key order.
    edit_config(&lora, |c| c["rank_pattern"] = json!({"q_proj": 2, "layers.1.self_attn.q_proj": 3}));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraPattern { ref reason, .. } if reason.contains("disjoint")), "{e}");
    // A key outside the regex syntax read here.
    edit_config(&lora, |c| c["rank_pattern"] = json!({r"(?P<m>q)_proj": 2}));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraPattern { ref key, .. } if key == "(?P<m>q)_proj"), "{e}");
    // Keys agreeing on a value are fine.
    edit_config(&lora, |c| c["rank_pattern"] = json!({"q_proj": 2, "layers.1.self_attn.q_proj": 2}));
    adapter(&b.base, &lora, &b.root.path().join("ok.gguf"), AdapterOutType::F16).unwrap();
}

#[test]
fn adalora_pattern_that_does_not_fit_the_tensors() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("ada");
    write_adalora_adapter(&lora, &b.spec, 4, 8.0, &["q_proj", "down_proj"], &PRUNED, 2);
    let key = "model.layers.0.self_attn.q_proj.lora_E";
    // The tensors hold 2 ranks; a pattern keeping 3 does not describe them.
    edit_config(&lora, |c| c["rank_pattern"][key] = json!([true, true, true, false]));
    match adapter_err(&b.base, &lora, b.root.path()) {
        ConvertError::LoraRank { r: 3, found: 2, name, .. } => assert!(name.contains("rank_pattern"), "{name}"),
        other => panic!("{other}"),
    }
    edit_config(&lora, |c| c["rank_pattern"][key] = json!([true, true, false]));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraPattern { ref reason, .. } if reason.contains("init_r is 4")), "{e}");
    edit_config(&lora, |c| c["rank_pattern"][key] = json!([1, 1, 0, 0]));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraPattern { ref reason, .. } if reason.contains("booleans")), "{e}");
    // No pattern: every module must be at init_r (layer 0's down_proj was saved at rank 0).
    edit_config(&lora, |c| c["rank_pattern"] = json!(null));
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::LoraRank { r: 4, found: 0, .. }), "{e}");
    // A module the pattern keeps ranks of, without tensors.
    edit_config(&lora, |c| {
        let pattern = json!({"model.layers.0.self_attn.q_proj.lora_E": [true, true, false, false],
                             "model.layers.0.mlp.down_proj.lora_E": [false, false, false, false],
                             "model.layers.0.self_attn.v_proj.lora_E": [true, false, false, false]});
        c["rank_pattern"] = pattern;
    });
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::MissingTensor { ref name, .. } if name.contains("v_proj")), "{e}");
}

#[test]
fn bad_adalora_tensors() {
    let b = base(TinySpec::llama());
    let write = |tag: &str, edit: &dyn Fn(&mut Floats)| {
        let lora = b.root.path().join(tag);
        let mut t = write_adalora_adapter(&lora, &b.spec, 4, 8.0, &["q_proj", "down_proj"], &PRUNED, 3);
        edit(&mut t);
        write_floats(&lora.join("adapter_model.safetensors"), &t);
        lora
    };
    let p = "base_model.model.model.layers.1.self_attn.q_proj.";
    let e_name = format!("{p}lora_E");
    let lora = write("e-shape", &|t| {
        let e = t.get_mut(&e_name).unwrap();
        e.1 = vec![4];
    });
    match adapter_err(&b.base, &lora, b.root.path()) {
        ConvertError::ShapeMismatch { name, expected, found } => {
            assert_eq!((name.as_str(), expected, found), (e_name.as_str(), vec![4, 1], vec![4]))
        }
        other => panic!("{other}"),
    }
    let lora = write("no-e", &|t| {
        t.remove(&e_name);
    });
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::MissingTensor { ref name, .. } if name.contains("lora_E")), "{e}");
    let b_name = format!("{p}lora_B");
    let lora = write("nan", &|t| t.get_mut(&b_name).unwrap().2[3] = f32::NAN);
    let e = adapter_err(&b.base, &lora, b.root.path());
    assert!(matches!(e, ConvertError::NonFinite { ref name, count: 1, .. } if *name == b_name), "{e}");
    for (tag, v) in [("zero", 0.0), ("negative", -4.0), ("nan-ranknum", f32::NAN)] {
        let lora = write(tag, &|t| {
            t.insert(format!("{p}ranknum"), (Dtype::F32, vec![1], vec![v]));
        });
        let e = adapter_err(&b.base, &lora, b.root.path());
        assert!(matches!(e, ConvertError::Lora { ref reason, .. } if reason.contains("ranknum")), "{tag}: {e}");
    }
}

#[test]
fn nan_in_lora_b() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("nan");
    let mut t = write_lora_adapter(&lora, &b.spec, 2, 8.0, &["k_proj"], 1);
    let name = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight";
    t.get_mut(name).unwrap().2[5] = f32::NAN;
    write_floats(&lora.join("adapter_model.safetensors"), &t);
    match adapter_err(&b.base, &lora, b.root.path()) {
        ConvertError::NonFinite { name: n, count, .. } => assert_eq!((n.as_str(), count), (name, 1)),
        other => panic!("{other}"),
    }
}

#[test]
fn embedding_and_lm_head_lora_are_refused() {
    let b = base(TinySpec::llama());
    let (v, h) = (b.spec.vocab, b.spec.hidden);
    for (tag, name, shape) in [
        ("embed", "base_model.model.model.embed_tokens.lora_embedding_A", vec![2, v]),
        ("head", "base_model.model.lm_head.lora_A.weight", vec![2, h]),
    ] {
        let lora = b.root.path().join(tag);
        let mut t = write_lora_adapter(&lora, &b.spec, 2, 8.0, &["q_proj"], 1);
        let n = shape.iter().product();
        t.insert(name.into(), (Dtype::F32, shape, vec![0.1; n]));
        write_floats(&lora.join("adapter_model.safetensors"), &t);
        match adapter_err(&b.base, &lora, b.root.path()) {
            ConvertError::LoraUnsupportedModule { tensor, .. } => assert_eq!(tensor, name),
            other => panic!("{tag}: {other}"),
        }
    }
}

#[test]
fn settings_that_change_the_forward_are_refused() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("l");
    write_lora_adapter(&lora, &b.spec, 2, 8.0, &["q_proj"], 1);
    for (k, v) in [("use_dora", json!(true)), ("lora_bias", json!(true)), ("alora_invocation_tokens", json!([5, 6]))] {
        edit_config(&lora, |c| c[k] = v.clone());
        let e = adapter_err(&b.base, &lora, b.root.path());
        assert!(matches!(e, ConvertError::Lora { .. }), "{k}: {e}");
        edit_config(&lora, |c| c[k] = json!(null));
    }
    adapter(&b.base, &lora, &b.root.path().join("ok.gguf"), AdapterOutType::F16).unwrap();
}

#[test]
fn cli_adapter_and_inspect() {
    let b = base(TinySpec::llama());
    let lora = b.root.path().join("ada");
    write_adalora_adapter(&lora, &b.spec, 4, 8.0, &ALL, &PRUNED, 5);
    let out = b.root.path().join("cli.adapter.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_delrec-convert")).args(args).output().unwrap();
    let o = run(&["adapter", "--base", &s(&b.base), "--lora", &s(&lora), "--out", &s(&out), "--json"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("13 pairs") && stderr.contains("ADALORA") && stderr.contains("folded"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["pairs"].as_u64(), v["outtype"].as_str(), v["ranks"]["4"].as_u64()),
        (Some(13), Some("f16"), Some(10))
    );
    assert_eq!(v["scale_folded"], json!(true));
    let o = run(&["inspect", &s(&out)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("LoRA adapter")
            && text.contains("13 pairs")
            && text.contains("folded into lora_b")
            && text.contains("built for base model: llama n_embd=32"),
        "{text}"
    );
    let o = run(&["inspect", "--json", &s(&out)]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["adapter"]["pairs"], 13);
    assert_eq!(j["adapter"]["ranks"]["1"], 1);
    assert_eq!(j["adapter"]["tensor_types"]["F16"], 26);
    assert_eq!(j["adapter"]["base"]["n_embd"], 32);
    assert_eq!(j["adapter"]["targets"].as_array().map(Vec::len), Some(7));
    // Errors: status 1 and the cause; usage errors: status 2.
    let bad = b.root.path().join("bad.gguf");
    let o = run(&["adapter", "--base", &s(&b.base), "--lora", &s(&b.root.path().join("none")), "--out", &s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!bad.exists());
    let o = run(&["adapter", "--base", &s(&b.base), "--lora", &s(&lora), "--out", &s(&bad), "--outtype", "q8_0"]);
    assert_eq!(o.status.code(), Some(2));
}
