//! `model` on T5 checkpoints: the GGUF llama.cpp loads, what is refused (typed error, no file),
//! and the tied (T5 v1.0) head written pre-scaled.

mod common;

use common::{opts, stray_files};
use delrec_convert::llama::LoadedModel;
use delrec_convert::model::{convert_model, OutType};
use delrec_convert::testing::write_t5;
use delrec_convert::ConvertError;
use delrec_format::gguf::{GgufFile, Value};
use serde_json::json;

#[test]
fn flan_t5_layout_converts_and_loads_at_every_type() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    write_t5(&hf, &json!({"decoder_start_token_id": 3}), 7);
    for t in [OutType::F32, OutType::F16, OutType::Bf16, OutType::Q8_0] {
        let out = root.path().join(format!("t5-{}.gguf", t.name()));
        let r = convert_model(&opts(&hf, &out, t)).unwrap();
        assert_eq!((r.arch, r.n_tensors), ("t5", 1 + 2 * 2 * 9 + 2 * 6 + 2 + 1), "{t:?}");
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get("t5.decoder_start_token_id"), Some(&Value::U32(3)));
        assert_eq!(f.get("tokenizer.ggml.model").and_then(Value::as_str), Some("t5"));
        let m = LoadedModel::load(&out, false).unwrap();
        assert_eq!((m.n_vocab(), m.n_embd()), (824, 32));
        // The SentencePiece pieces, the prefix space and the sentinels as control tokens.
        assert_eq!(m.tokenize("Hello world", false).unwrap(), vec![269, 53, 527, 536, 86]);
        assert_eq!(m.tokenize("a<extra_id_0>b", true).unwrap(), vec![64, 809, 80]);
    }
}

#[test]
fn variants_llama_cpp_cannot_compute_are_refused_without_output() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        ("gated-silu", json!({"feed_forward_proj": "gated-silu"})),
        ("gelu", json!({"feed_forward_proj": "gelu"})),
        ("max-distance", json!({"relative_attention_max_distance": 64})),
        ("dec-layers", json!({"num_decoder_layers": 3})),
    ];
    for (name, cfg) in cases {
        let hf = root.path().join(name);
        write_t5(&hf, &cfg, 1);
        let outdir = root.path().join(format!("out-{name}"));
        std::fs::create_dir_all(&outdir).unwrap();
        let out = outdir.join("m.gguf");
        let e = convert_model(&opts(&hf, &out, OutType::F32));
        assert!(matches!(e, Err(ConvertError::UnsupportedConfig { .. })), "{name}: {e:?}");
        assert!(!out.exists(), "{name}");
        assert!(stray_files(&outdir, &[]).is_empty(), "{name}");
    }
    // A checkpoint whose tensors do not match its config (a gated config, relu weights).
    let hf = root.path().join("mismatch");
    write_t5(&hf, &json!({"feed_forward_proj": "relu"}), 1);
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    cfg["feed_forward_proj"] = "gated-gelu".into();
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let out = root.path().join("mismatch.gguf");
    let e = convert_model(&opts(&hf, &out, OutType::F32));
    assert!(matches!(e, Err(ConvertError::MissingTensor { .. })), "{e:?}");
    assert!(!out.exists());
}

#[test]
fn tied_t5_gets_an_output_tensor_scaled_by_d_model_to_the_minus_half() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5-v1_0");
    let t = write_t5(&hf, &json!({"tie_word_embeddings": true, "feed_forward_proj": "relu"}), 3);
    let out = root.path().join("tied.gguf");
    convert_model(&opts(&hf, &out, OutType::F32)).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let shared = &t["shared.weight"].2;
    let ti = f.tensor("output.weight").unwrap();
    let bytes = f.tensor_bytes(ti).unwrap();
    let out_vals: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let s = 32f32.powf(-0.5);
    assert_eq!(out_vals.len(), shared.len());
    assert!(out_vals.iter().zip(shared).all(|(o, x)| *o == x * s));
    assert!(f.tensor("enc.blk.0.ffn_gate.weight").is_none());
}

#[test]
fn encoder_input_longer_than_one_ubatch_is_a_typed_error() {
    use delrec_runtime::llm::{Batch, Context, ContextParams, LlamaError, Model, ModelParams};
    use std::sync::Arc;
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    write_t5(&hf, &json!({}), 5);
    let out = root.path().join("t5.gguf");
    convert_model(&opts(&hf, &out, OutType::F32)).unwrap();
    let m = Arc::new(Model::load(&out, ModelParams::default()).unwrap());
    assert_eq!(m.decoder_start_token(), Some(0));
    let mut p = ContextParams::exact(64, 2);
    p.n_batch = 16;
    p.n_seq_max = 2;
    let mut ctx = Context::new(m, &p).unwrap();
    // Decoding before any encode is refused (the cross attention has nothing to read).
    let mut d = Batch::tokens();
    d.add_token(0, 0, &[0], true);
    assert!(matches!(ctx.decode(&mut d), Err(LlamaError::Refused(_))));
    let mut b = Batch::tokens();
    for i in 0..17 {
        b.add_token(5, i, &[0, 1], false);
    }
    match ctx.encode(&mut b) {
        Err(LlamaError::EncoderTooLong { rows: 17, limit: "n_ubatch", max: 16 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(ctx.encoder_passes(), 0);
    let mut b = Batch::tokens();
    for i in 0..16 {
        b.add_token(5, i, &[0, 1], false);
    }
    ctx.encode(&mut b).unwrap();
    assert_eq!(ctx.encoder_passes(), 1);
    ctx.decode(&mut d).unwrap();
    assert_eq!(ctx.logits(&d, 0).unwrap().len(), 824);
}

/// Extra adapter tensors: PEFT name → shape.
type Extra = [(&'static str, Vec<usize>)];
/// An edit of a saved adapter directory.
type Edit = dyn Fn(&std::path::Path);

/// A PEFT AdaLoRA on q and v of all three attentions of `write_t5`'s checkpoint (d_model 32, inner
/// 32), init_r 4, `kept` ranks each (rank_pattern: the first `kept` of init_r), E nonzero; extra
/// tensors by `extra` (PEFT name → shape; outside rank_pattern, so at init_r).
fn write_t5_adalora(dir: &std::path::Path, kept: usize, extra: &Extra) -> Vec<String> {
    use delrec_convert::st::Dtype;
    use delrec_convert::testing::{write_floats, Floats};
    std::fs::create_dir_all(dir).unwrap();
    let mut t = Floats::new();
    let mut pattern = serde_json::Map::new();
    let mut modules = Vec::new();
    let val = |n: usize, k: usize| (0..n).map(|i| ((i * 7 + k * 3) % 11) as f32 / 11.0 - 0.45).collect::<Vec<_>>();
    for (side, attn) in
        [("encoder", "0.SelfAttention"), ("decoder", "0.SelfAttention"), ("decoder", "1.EncDecAttention")]
    {
        for n in 0..2 {
            for m in ["q", "v"] {
                let module = format!("{side}.block.{n}.layer.{attn}.{m}");
                let p = format!("base_model.model.{module}.");
                let k = modules.len();
                t.insert(format!("{p}lora_A"), (Dtype::F32, vec![kept, 32], val(kept * 32, k)));
                t.insert(format!("{p}lora_B"), (Dtype::F32, vec![32, kept], val(32 * kept, k + 1)));
                t.insert(
                    format!("{p}lora_E"),
                    (Dtype::F32, vec![kept, 1], (0..kept).map(|i| 0.5 + i as f32).collect()),
                );
                pattern.insert(format!("{module}.lora_E"), json!((0..4).map(|i| i < kept).collect::<Vec<_>>()));
                modules.push(module);
            }
        }
    }
    for (name, shape) in extra {
        let n = shape.iter().product();
        t.insert(format!("base_model.model.{name}"), (Dtype::F32, shape.clone(), val(n, 5)));
    }
    let cfg = json!({"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "lora_alpha": 32.0,
                     "target_modules": ["q", "v", "wi", "wi_0"], "rank_pattern": pattern, "task_type": "SEQ_2_SEQ_LM",
                     "fan_in_fan_out": false, "bias": "none"});
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    write_floats(&dir.join("adapter_model.safetensors"), &t);
    modules
}

fn f32s(f: &GgufFile, name: &str) -> Vec<f32> {
    let b = f.tensor_bytes(f.tensor(name).unwrap()).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn adalora_on_q_v_merges_into_all_three_attentions() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    let w = write_t5(&hf, &json!({}), 9);
    let ada = root.path().join("ada");
    let modules = write_t5_adalora(&ada, 2, &[]);
    let out = root.path().join("merged.gguf");
    let mut o = opts(&hf, &out, OutType::F32);
    o.lora = Some(ada.clone());
    let r = convert_model(&o).unwrap();
    assert_eq!(r.lora_merged, 12);
    let f = GgufFile::open(&out).unwrap();
    // PEFT's delta: B·(A ⊙ E) · lora_alpha / (ranknum + 1e-5), ranknum = init_r (not saved).
    let a = |m: &str, part: &str| {
        let mut t = delrec_convert::st::StSet::open_file(&ada.join("adapter_model.safetensors")).unwrap();
        t.tensors.remove(&format!("base_model.model.{m}.{part}")).unwrap().to_f32().unwrap()
    };
    let scale = 32.0 / (4.0 + 1e-5);
    for (m, gguf) in [
        (&modules[0], "enc.blk.0.attn_q.weight"),
        (&modules[5], "dec.blk.0.attn_v.weight"),
        (&modules[11], "dec.blk.1.cross_attn_v.weight"),
    ] {
        let (la, lb, le) = (a(m, "lora_A"), a(m, "lora_B"), a(m, "lora_E"));
        let base = &w[&format!("{m}.weight")].2;
        let got = f32s(&f, gguf);
        let mut worst = 0f64;
        for o in 0..32 {
            for i in 0..32 {
                let d: f64 = (0..2).map(|k| lb[o * 2 + k] as f64 * le[k] as f64 * la[k * 32 + i] as f64).sum();
                let want = base[o * 32 + i] as f64 + scale * d;
                worst = worst.max((got[o * 32 + i] as f64 - want).abs());
            }
        }
        assert!(worst < 1e-5, "{m} → {gguf}: {worst}");
    }
    // Untouched: k, o, the FFN.
    assert_eq!(f32s(&f, "enc.blk.0.attn_k.weight"), w["encoder.block.0.layer.0.SelfAttention.k.weight"].2);
    assert_eq!(f32s(&f, "dec.blk.1.ffn_gate.weight"), w["decoder.block.1.layer.2.DenseReluDense.wi_0.weight"].2);
}

#[test]
fn adapters_for_modules_the_t5_lacks_are_refused_by_name_without_output() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    write_t5(&hf, &json!({}), 9);
    let cases: [(&str, &Extra, &str); 3] = [
        // `wi` is the ReLU FFN's; this checkpoint is gated (wi_0/wi_1).
        (
            "relu-wi",
            &[
                ("encoder.block.0.layer.1.DenseReluDense.wi.lora_A", vec![4, 32]),
                ("encoder.block.0.layer.1.DenseReluDense.wi.lora_B", vec![64, 4]),
                ("encoder.block.0.layer.1.DenseReluDense.wi.lora_E", vec![4, 1]),
            ],
            "encoder.block.0.layer.1.DenseReluDense.wi.weight",
        ),
        // a third block in a two-block model
        (
            "block-2",
            &[
                ("decoder.block.2.layer.1.EncDecAttention.q.lora_A", vec![4, 32]),
                ("decoder.block.2.layer.1.EncDecAttention.q.lora_B", vec![32, 4]),
                ("decoder.block.2.layer.1.EncDecAttention.q.lora_E", vec![4, 1]),
            ],
            "decoder.block.2.layer.1.EncDecAttention.q.weight",
        ),
        // the FFN's wi_0 with the shape of another model (d_ff 48, not 64)
        (
            "shape",
            &[
                ("decoder.block.0.layer.2.DenseReluDense.wi_0.lora_A", vec![4, 32]),
                ("decoder.block.0.layer.2.DenseReluDense.wi_0.lora_B", vec![48, 4]),
                ("decoder.block.0.layer.2.DenseReluDense.wi_0.lora_E", vec![4, 1]),
            ],
            "decoder.block.0.layer.2.DenseReluDense.wi_0.weight",
        ),
    ];
    for (name, extra, module) in cases {
        let ada = root.path().join(format!("ada-{name}"));
        write_t5_adalora(&ada, 2, extra);
        let outdir = root.path().join(format!("out-{name}"));
        std::fs::create_dir_all(&outdir).unwrap();
        let out = outdir.join("m.gguf");
        let mut o = opts(&hf, &out, OutType::F32);
        o.lora = Some(ada);
        match convert_model(&o) {
            Err(ConvertError::Lora { reason, .. }) if name != "shape" => {
                assert!(reason.contains(module), "{name}: {reason}")
            }
            Err(ConvertError::ShapeMismatch { name: n, .. }) if name == "shape" => assert!(n.contains(module), "{n}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!out.exists(), "{name}");
        assert!(stray_files(&outdir, &[]).is_empty(), "{name}");
    }
}

#[test]
fn adalora_ranks_inconsistent_with_rank_pattern_or_ranknum_are_refused_without_output() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    write_t5(&hf, &json!({}), 9);
    let edits: [(&str, &Edit); 3] = [
        // rank_pattern keeps 3 of init_r 4 for one module; its tensors hold 2 ranks
        ("flag-flipped", &|d| {
            let p = d.join("adapter_config.json");
            let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            c["rank_pattern"]["decoder.block.1.layer.1.EncDecAttention.q.lora_E"][2] = true.into();
            std::fs::write(p, c.to_string()).unwrap();
        }),
        // 3 flags for init_r 4
        ("list-too-short", &|d| {
            let p = d.join("adapter_config.json");
            let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            c["rank_pattern"]["encoder.block.0.layer.0.SelfAttention.v.lora_E"] = json!([true, true, false]);
            std::fs::write(p, c.to_string()).unwrap();
        }),
        // a saved ranknum of 0 (PEFT's scale would divide by ~1e-5)
        ("ranknum-zero", &|d| {
            use delrec_convert::st::{Dtype, StSet};
            use delrec_convert::testing::{write_floats, Floats};
            let mut t = Floats::new();
            {
                let set = StSet::open_file(&d.join("adapter_model.safetensors")).unwrap();
                for (n, x) in &set.tensors {
                    t.insert(n.clone(), (Dtype::F32, x.shape.clone(), x.to_f32().unwrap()));
                }
            }
            let k = "base_model.model.decoder.block.0.layer.0.SelfAttention.q.ranknum";
            t.insert(k.into(), (Dtype::F32, vec![1], vec![0.0]));
            write_floats(&d.join("adapter_model.safetensors"), &t);
        }),
    ];
    for (name, edit) in edits {
        let ada = root.path().join(format!("ada-{name}"));
        write_t5_adalora(&ada, 2, &[]);
        edit(&ada);
        let outdir = root.path().join(format!("out-{name}"));
        std::fs::create_dir_all(&outdir).unwrap();
        let out = outdir.join("m.gguf");
        let mut o = opts(&hf, &out, OutType::F32);
        o.lora = Some(ada);
        let e = convert_model(&o);
        let ok = match (&e, name) {
            (Err(ConvertError::LoraRank { name: n, r: 3, found: 2, .. }), "flag-flipped") => {
                n.contains("decoder.block.1.layer.1.EncDecAttention.q")
            }
            (Err(ConvertError::LoraPattern { key, .. }), "list-too-short") => key.contains("SelfAttention.v"),
            (Err(ConvertError::Lora { reason, .. }), "ranknum-zero") => reason.contains("ranknum"),
            _ => false,
        };
        assert!(ok, "{name}: {e:?}");
        assert!(!out.exists(), "{name}");
        assert!(stray_files(&outdir, &[]).is_empty(), "{name}");
    }
}

/// An AdaLoRA on T5 becomes a run-time adapter (exact plain LoRA, llama.cpp's enc./dec. names)
/// that passes the runtime's check and loads in llama.cpp over the base (both inside
/// `build_adapter`); run-time = merged is checked in tests/tests/t5.rs.
#[test]
fn run_time_adapters_for_t5_are_written_with_encoder_and_decoder_targets() {
    use delrec_convert::adapter::{build_adapter, AdapterOptions, AdapterOutType};
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("t5");
    write_t5(&hf, &json!({}), 9);
    let base = root.path().join("base.gguf");
    convert_model(&opts(&hf, &base, OutType::F32)).unwrap();
    let ada = root.path().join("ada");
    write_t5_adalora(&ada, 2, &[]);
    let outdir = root.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("adapter.gguf");
    let o = AdapterOptions { base, lora: ada, out: out.clone(), outtype: AdapterOutType::F32 };
    let r = build_adapter(&o).unwrap();
    assert_eq!(r.arch, "t5");
    assert!(r.pairs > 0 && out.exists());
    let f = delrec_format::gguf::GgufFile::open(&out).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("enc.blk.")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("dec.blk.")), "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".lora_a") || n.ends_with(".lora_b")), "{names:?}");
    assert!(stray_files(&outdir, &[out.as_path()]).is_empty());
}
