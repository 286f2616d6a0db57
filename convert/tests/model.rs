//! `model` and `quantize`: tiny checkpoints built in code, converted, loaded and evaluated by
//! llama.cpp; every bad input gives its specific error and leaves no file behind.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{convert_tiny, opts, reference_logits, stored, stray_files};
use delrec_convert::llama::LoadedModel;
use delrec_convert::model::{convert_model, OutType};
use delrec_convert::quant::{quantize_file, QuantType};
use delrec_convert::st::Dtype;
use delrec_convert::testing::{float_bytes, write_lora_adapter, write_raw, RawTensor, TinySpec, N_TOKENS};
use delrec_convert::vocab::TokenizerMeta;
use delrec_convert::ConvertError;
use delrec_format::gguf::{GgufFile, TensorType, Value};

fn max_diff(a: &[Vec<f32>], b: &[Vec<f64>]) -> (f64, f64) {
    let mut d: f64 = 0.0;
    let mut m: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            d = d.max((*p as f64 - q).abs());
            m = m.max(q.abs());
        }
    }
    (d, m)
}

const TOKENS: [i32; 8] = [5, 100, 200, 263, 7, 9, 11, 150];

#[test]
fn llama_f32_matches_the_reference_forward_pass() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let out = convert_tiny(root.path(), "llama", &spec, OutType::F32);
    let m = LoadedModel::load(&out, false).unwrap();
    assert_eq!((m.n_vocab(), m.n_embd()), (spec.vocab, spec.hidden));
    let got = m.eval_logits(&TOKENS).unwrap();
    let want = reference_logits(&spec, &spec.tensors(), &TOKENS);
    let (d, scale) = max_diff(&got, &want);
    // A wrong q/k permutation gives errors of the order of `scale`.
    assert!(d < 1e-3, "max |llama.cpp - reference| = {d} (logit scale {scale})");
}

#[test]
fn qwen2_sharded_bf16_tied_with_biases_matches_the_reference() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::qwen2();
    let out = convert_tiny(root.path(), "qwen2", &spec, OutType::F32);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.req_str("general.architecture").unwrap(), "qwen2");
    assert!(f.tensor("output.weight").is_none(), "tied embeddings must not get an output tensor");
    assert!(f.tensor("blk.0.attn_q.bias").is_some());
    assert_eq!(f.req_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    let m = LoadedModel::load(&out, false).unwrap();
    let got = m.eval_logits(&TOKENS).unwrap();
    let want = reference_logits(&spec, &spec.tensors(), &TOKENS);
    let (d, scale) = max_diff(&got, &want);
    assert!(d < 1e-3, "max diff {d} (scale {scale})");
}

#[test]
fn every_outtype_loads_and_reports_real_tensor_types() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    spec.write(&hf);
    for (ty, want) in [
        (OutType::F32, "F32"),
        (OutType::F16, "F16"),
        (OutType::Bf16, "BF16"),
        (OutType::Q8_0, "Q8_0"),
        (OutType::Q4_0, "Q4_0"),
        (OutType::Q4KM, "Q8_0"), // rows of 32 are not K-quantizable: llama.cpp falls back
    ] {
        let out = root.path().join(format!("m-{}.gguf", ty.name()));
        let r = convert_model(&opts(&hf, &out, ty)).unwrap();
        assert!(r.types.contains_key(want), "{ty:?}: {:?}", r.types);
        let f = GgufFile::open(&out).unwrap();
        // Norms stay F32 whatever the output type.
        assert_eq!(f.tensor("blk.0.attn_norm.weight").unwrap().ty, TensorType::F32);
        assert_eq!(f.tensors().len(), r.n_tensors);
        drop(LoadedModel::load(&out, false).unwrap());
    }
    assert!(stray_files(root.path(), &[])
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "gguf")
            && !p.file_name().unwrap().to_string_lossy().starts_with('.')));
}

#[test]
fn metadata_and_tokenizer_are_complete() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let out = convert_tiny(root.path(), "llama", &spec, OutType::F16);
    let f = GgufFile::open(&out).unwrap();
    for (k, v) in [
        ("llama.context_length", 128),
        ("llama.embedding_length", 32),
        ("llama.block_count", 2),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 8),
        ("llama.vocab_size", spec.vocab as u64),
        ("general.file_type", 1),
    ] {
        assert_eq!(f.req_u64(k).unwrap(), v, "{k}");
    }
    let tokens = f.req_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), spec.vocab);
    assert_eq!(tokens[N_TOKENS], format!("[PAD{N_TOKENS}]"));
    match f.get("tokenizer.ggml.token_type") {
        Some(Value::Array(delrec_format::gguf::Array::I32(t))) => {
            assert_eq!((t[0], t[3], t[spec.vocab - 1]), (3, 1, 5));
        }
        other => panic!("token_type: {other:?}"),
    }
    assert_eq!(f.req_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.req_str("tokenizer.ggml.pre").unwrap(), "gpt-2");
    assert_eq!(f.req_str_array("tokenizer.ggml.merges").unwrap()[0], "Ġ t");
    assert_eq!(f.get("tokenizer.ggml.add_bos_token"), Some(&Value::Bool(false)));
    assert_eq!(f.req_u64("tokenizer.ggml.bos_token_id").unwrap(), 0);
    // The converter's fingerprint is the runtime's.
    let meta = TokenizerMeta::from_path(&root.path().join("llama"), Some(spec.vocab), None).unwrap();
    assert_eq!(meta.fingerprint(), delrec_format::identity::tokenizer_fingerprint(&f).unwrap());
}

#[test]
fn lora_is_merged_before_the_permutation() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let lora_dir = root.path().join("lora");
    let (r, alpha) = (2, 8.0);
    let lora = write_lora_adapter(&lora_dir, &spec, r, alpha, &["q_proj", "v_proj", "down_proj"], 3);
    let out = root.path().join("merged.gguf");
    let mut o = opts(&hf, &out, OutType::F32);
    o.lora = Some(lora_dir);
    let rep = convert_model(&o).unwrap();
    assert_eq!(rep.lora_merged, 6);
    // Merge by hand and compare the model's logits with the reference on merged weights.
    let mut t = spec.tensors();
    for (name, (_, shape, _)) in t.clone() {
        let stem = name.trim_end_matches(".weight");
        let a_name = format!("base_model.model.{stem}.lora_A.weight");
        let Some((_, _, a)) = lora.get(&a_name) else { continue };
        let b = &lora[&format!("base_model.model.{stem}.lora_B.weight")].2;
        let (out_f, in_f) = (shape[0], shape[1]);
        let w = &mut t.get_mut(&name).unwrap().2;
        for o in 0..out_f {
            for i in 0..in_f {
                let d: f32 = (0..r).map(|k| b[o * r + k] * a[k * in_f + i]).sum();
                w[o * in_f + i] += (alpha / r as f64) as f32 * d;
            }
        }
    }
    let m = LoadedModel::load(&out, false).unwrap();
    let got = m.eval_logits(&TOKENS).unwrap();
    let want = reference_logits(&spec, &t, &TOKENS);
    let (d, scale) = max_diff(&got, &want);
    assert!(d < 1e-3, "max diff {d} (scale {scale})");
    let unmerged = reference_logits(&spec, &spec.tensors(), &TOKENS);
    assert!(max_diff(&got, &unmerged).0 > 0.1, "the adapter changed nothing");
}

#[test]
fn quantize_command_and_requantize_guard() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec { hidden: 64, ff: 256, ..TinySpec::llama() };
    let f16 = convert_tiny(root.path(), "m", &spec, OutType::F16);
    let dir = f16.parent().unwrap();
    let q41 = dir.join("m.q4_1.gguf");
    let r = quantize_file(&f16, &q41, QuantType::Q4_1, false, 2).unwrap();
    assert!(r.types.contains_key("Q4_1"), "{:?}", r.types);
    let q40 = dir.join("m.q4_0.gguf");
    let e = quantize_file(&q41, &q40, QuantType::Q4_0, false, 2);
    assert!(matches!(e, Err(ConvertError::Quantize(ref m)) if m.contains("requantiz")), "{e:?}");
    assert!(!q40.exists());
    assert_eq!(stray_files(dir, &[&f16, &q41]), Vec::<std::path::PathBuf>::new());
    quantize_file(&q41, &q40, QuantType::Q4_0, true, 2).unwrap();
    drop(LoadedModel::load(&q40, false).unwrap());
}

/// Converts a corrupted checkpoint and returns the error; asserts nothing was written.
fn convert_err(spec: &TinySpec, corrupt: impl FnOnce(&Path)) -> ConvertError {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    spec.write(&hf);
    corrupt(&hf);
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");
    let e = convert_model(&opts(&hf, &out, OutType::Q8_0)).expect_err("conversion should fail");
    assert_eq!(stray_files(&out_dir, &[]), Vec::<std::path::PathBuf>::new(), "a failed conversion left files");
    e
}

fn rewrite(spec: &TinySpec, hf: &Path, edit: impl FnOnce(&mut delrec_convert::testing::Floats)) {
    let mut t = spec.tensors();
    edit(&mut t);
    std::fs::remove_file(hf.join("model.safetensors")).ok();
    spec.write_with(hf, &t);
}

#[test]
fn missing_tensor() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| rewrite(&spec, hf, |t| drop(t.remove("model.layers.1.mlp.up_proj.weight"))));
    assert!(
        matches!(e, ConvertError::MissingTensor { ref name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn missing_lm_head_when_untied() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| rewrite(&spec, hf, |t| drop(t.remove("lm_head.weight"))));
    assert!(matches!(e, ConvertError::MissingTensor { ref name, .. } if name == "lm_head.weight"), "{e}");
}

#[test]
fn extra_tensor() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        rewrite(&spec, hf, |t| {
            t.insert("model.layers.2.input_layernorm.weight".into(), (Dtype::F32, vec![32], vec![1.0; 32]));
        })
    });
    assert!(
        matches!(e, ConvertError::UnexpectedTensor { ref name, .. } if name == "model.layers.2.input_layernorm.weight"),
        "{e}"
    );
}

#[test]
fn rotary_inv_freq_buffers_are_ignored() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    let mut t = spec.tensors();
    t.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), (Dtype::F32, vec![4], vec![1.0; 4]));
    spec.write_with(&hf, &t);
    convert_model(&opts(&hf, &root.path().join("m.gguf"), OutType::F32)).unwrap();
}

#[test]
fn shape_mismatch() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        rewrite(&spec, hf, |t| {
            t.insert("model.layers.0.self_attn.k_proj.weight".into(), (Dtype::F32, vec![32, 32], vec![0.0; 1024]));
        })
    });
    match e {
        ConvertError::ShapeMismatch { name, expected, found } => {
            assert_eq!(
                (name.as_str(), expected, found),
                ("model.layers.0.self_attn.k_proj.weight", vec![16, 32], vec![32, 32])
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn dtype_unsupported() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        let t = spec.tensors();
        let mut raw: Vec<RawTensor> = t
            .iter()
            .filter(|(n, _)| *n != "model.norm.weight")
            .map(|(n, (dt, shape, v))| {
                let (dtype, bytes) = float_bytes(*dt, v);
                RawTensor { name: n.clone(), dtype, shape: shape.clone(), bytes }
            })
            .collect();
        raw.push(RawTensor {
            name: "model.norm.weight".into(),
            dtype: safetensors::Dtype::I32,
            shape: vec![32],
            bytes: vec![0; 128],
        });
        write_raw(&hf.join("model.safetensors"), &raw);
    });
    assert!(
        matches!(e, ConvertError::DtypeUnsupported { ref name, ref dtype } if name == "model.norm.weight" && dtype == "I32"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        let mut c = spec.config_json();
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["model_type"] = serde_json::json!("mistral");
        std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
    });
    assert!(
        matches!(e, ConvertError::UnknownArchitecture { ref found } if found.contains("MistralForCausalLM")),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| std::fs::remove_file(hf.join("tokenizer.json")).unwrap());
    assert!(matches!(e, ConvertError::MissingTokenizer { .. }), "{e}");
}

#[test]
fn unsupported_tokenizer() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        let p = hf.join("tokenizer.json");
        let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        std::fs::write(&p, j.to_string()).unwrap();
    });
    assert!(matches!(e, ConvertError::UnsupportedTokenizer { ref reason, .. } if reason.contains("Whitespace")), "{e}");
}

#[test]
fn truncated_safetensors() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        let p = hf.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    });
    assert!(matches!(e, ConvertError::TruncatedSafetensors { .. }), "{e}");
    // Cut inside the header too.
    let e = convert_err(&spec, |hf| {
        let p = hf.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..50]).unwrap();
    });
    assert!(matches!(e, ConvertError::TruncatedSafetensors { .. }), "{e}");
}

#[test]
fn truncated_shard() {
    let spec = TinySpec::qwen2();
    let e = convert_err(&spec, |hf| {
        let p = hf.join("model-00002-of-00002.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    assert!(
        matches!(e, ConvertError::TruncatedSafetensors { ref path, .. } if path.ends_with("model-00002-of-00002.safetensors")),
        "{e}"
    );
}

#[test]
fn vocab_larger_than_embeddings_is_a_mismatch() {
    let spec = TinySpec::llama();
    let e = convert_err(&spec, |hf| {
        let small = TinySpec { vocab: N_TOKENS - 10, ..TinySpec::llama() };
        let mut c = small.config_json();
        c["tie_word_embeddings"] = serde_json::json!(false);
        std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
        std::fs::remove_file(hf.join("model.safetensors")).unwrap();
        small.write_with(hf, &small.tensors());
        // write_with rewrote the tokenizer; the model has fewer rows than it has ids.
    });
    assert!(matches!(e, ConvertError::TokenizerMismatch { .. }), "{e}");
}

#[test]
fn bad_lora_inputs() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let out = root.path().join("out.gguf");
    let run = |dir: &Path| {
        let mut o = opts(&hf, &out, OutType::F16);
        o.lora = Some(dir.to_path_buf());
        convert_model(&o).expect_err("bad LoRA accepted")
    };
    // Wrong shape: an adapter for a wider model.
    let wide = TinySpec { hidden: 64, ..TinySpec::llama() };
    let d = root.path().join("wide");
    write_lora_adapter(&d, &wide, 2, 4.0, &["q_proj"], 1);
    assert!(matches!(run(&d), ConvertError::ShapeMismatch { .. }));
    // An unknown module.
    let d = root.path().join("unknown");
    let mut t = write_lora_adapter(&d, &spec, 2, 4.0, &["q_proj"], 1);
    t.insert(
        "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight".into(),
        (Dtype::F32, vec![2, 32], vec![0.0; 64]),
    );
    delrec_convert::testing::write_floats(&d.join("adapter_model.safetensors"), &t);
    assert!(matches!(run(&d), ConvertError::UnexpectedTensor { .. }));
    // Not a LoRA at all.
    let d = root.path().join("prompt");
    delrec_convert::testing::write_prompt_adapter(&d, 4, 32, 1);
    assert!(matches!(run(&d), ConvertError::Lora { .. }));
    // A lone lora_A.
    let d = root.path().join("half");
    let t: BTreeMap<_, _> = write_lora_adapter(&d, &spec, 2, 4.0, &["v_proj"], 1)
        .into_iter()
        .filter(|(n, _)| !n.contains("layers.1.self_attn.v_proj.lora_B"))
        .collect();
    delrec_convert::testing::write_floats(&d.join("adapter_model.safetensors"), &t);
    assert!(matches!(run(&d), ConvertError::MissingTensor { .. }));
    assert!(!out.exists());
}

#[test]
fn reference_reads_what_was_written() {
    // Guard for the test helpers themselves: BF16 storage rounds like the converter reads.
    let spec = TinySpec::qwen2();
    let t = spec.tensors();
    let v = stored(&t, "model.norm.weight");
    assert!(v.iter().all(|x| (*x as f32) == half::bf16::from_f32(*x as f32).to_f32()));
}

#[test]
fn rope_scaling_is_carried_over() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    spec.write(&hf);
    let mut c = spec.config_json();
    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
    let out = root.path().join("l3.gguf");
    convert_model(&opts(&hf, &out, OutType::F32)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let t = f.tensor("rope_freqs.weight").expect("llama3 rope scaling becomes rope_freqs");
    assert_eq!(t.dims, vec![spec.head_dim() as u64 / 2]);
    let factors: Vec<f32> =
        f.tensor_bytes(t).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    // High frequencies are kept, the lowest is divided by the full factor.
    assert_eq!((factors[0], *factors.last().unwrap()), (1.0, 8.0));
    c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
    convert_model(&opts(&hf, &out, OutType::F32)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.req_str("llama.rope.scaling.type").unwrap(), "linear");
    assert!(f.tensor("rope_freqs.weight").is_none());
}
