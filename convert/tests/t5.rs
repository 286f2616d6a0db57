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
