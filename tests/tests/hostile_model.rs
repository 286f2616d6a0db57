//! Hostile model files are typed errors at `Engine::open`, never a llama.cpp abort (issue #22).
//!
//! Each test rewrites the converted llama-tiny model with one hostile change of a class that
//! aborted the process inside llama.cpp (`GGML_ASSERT` → SIGABRT) before `model_check` existed,
//! and opens it with the model's genuine pack, in this process: a missed class kills the test
//! binary, which fails the run.

use std::path::PathBuf;

use delrec_runtime::format::gguf::{Array, GgufFile, TensorType, Value};
use delrec_runtime::format::model_check::check_model;
use delrec_runtime::{Engine, EngineConfig, Error, FileError, KvType, ModelVerification, RankRequest};
use delrec_tests::{catalog_ids, model, pack, GgufEdit as Model};

fn cfg() -> EngineConfig {
    // The second line of defence is under test: no digest pin (it would refuse every rewrite first).
    EngineConfig {
        kv_type: KvType::F32,
        flash_attention: false,
        threads: 2,
        verify_checksum: false,
        ..Default::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
    pack: PathBuf,
}

fn fixture() -> Fixture {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let tmp = tempfile::tempdir().unwrap();
    // DELREC_KEEP_HOSTILE=DIR keeps the hostile files (to try them on other binaries).
    let dir = match std::env::var_os("DELREC_KEEP_HOSTILE") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    Fixture { dir, _dir: tmp, model: m, pack: p }
}

impl Fixture {
    /// The model rewritten with `change`, opened with the genuine pack: must be `Invalid` with a
    /// reason mentioning every one of `needles`.
    fn refused(&self, what: &str, needles: &[&str], change: impl FnOnce(&mut Model)) {
        let mut m = Model::read(&self.model);
        change(&mut m);
        let path = self.dir.join(format!("{what}.gguf"));
        m.write(&path);
        match Engine::open(&path, &self.pack, cfg()) {
            Err(Error::BadFile(FileError::Invalid { path: p, reason })) => {
                assert_eq!(p, path, "{what}: the error names another file");
                for n in needles {
                    assert!(reason.contains(n), "{what}: reason {reason:?} does not mention {n:?}");
                }
            }
            Err(e) => panic!("{what}: expected FileError::Invalid, got {e:?}"),
            Ok(_) => panic!("{what}: the hostile model opened"),
        }
    }
}

#[test]
fn a_faithful_rewrite_still_opens() {
    let fx = fixture();
    let path = fx.dir.join("same.gguf");
    Model::read(&fx.model).write(&path);
    check_model(&GgufFile::open(&path).unwrap()).unwrap();
    let e = Engine::open(&path, &fx.pack, cfg()).unwrap();
    let ids = catalog_ids();
    let r = e.rank(&RankRequest { history: vec![ids[0].clone(), ids[1].clone()], ..Default::default() }).unwrap();
    assert_eq!(r.items.len(), ids.len());
}

#[test]
fn layer_counts_out_of_range() {
    let fx = fixture();
    fx.refused("layers0", &["llama.block_count = 0"], |m| m.set("llama.block_count", Value::U32(0)));
    fx.refused("layers600", &["llama.block_count = 600"], |m| m.set("llama.block_count", Value::U32(600)));
    fx.refused("nextn", &["llama.nextn_predict_layers = 9"], |m| m.set("llama.nextn_predict_layers", Value::U32(9)));
}

#[test]
fn expert_counts_without_experts() {
    let fx = fixture();
    fx.refused("experts", &["llama.expert_count = 4"], |m| {
        m.set("llama.expert_count", Value::U32(4));
        m.set("llama.expert_used_count", Value::U32(2));
    });
    fx.refused("experts-used", &["llama.expert_used_count = 2"], |m| m.set("llama.expert_used_count", Value::U32(2)));
}

#[test]
fn unknown_rope_scaling_type() {
    let fx = fixture();
    fx.refused("rope", &["llama.rope.scaling.type", "bogus"], |m| {
        m.set("llama.rope.scaling.type", Value::Str("bogus".into()))
    });
    fx.refused("rope-base", &["llama.rope.freq_base"], |m| m.set("llama.rope.freq_base", Value::F32(-1.0)));
    fx.refused("n-rot", &["rope.dimension_count 8"], |m| m.set("llama.rope.dimension_count", Value::U32(8)));
}

#[test]
fn non_finite_or_negative_norm_epsilon() {
    let fx = fixture();
    for (i, eps) in [f32::NAN, -1.0, f32::INFINITY, 0.0].into_iter().enumerate() {
        fx.refused(&format!("eps{i}"), &["llama.attention.layer_norm_rms_epsilon"], |m| {
            m.set("llama.attention.layer_norm_rms_epsilon", Value::F32(eps))
        });
    }
}

#[test]
fn tensor_retyped_to_a_same_size_type() {
    let fx = fixture();
    // F32 → I32 keeps every byte count; llama.cpp's norm multiply aborts on I32.
    fx.refused("i32-norm", &["blk.0.attn_norm.weight", "I32"], |m| {
        m.tensor("blk.0.attn_norm.weight").2 = TensorType::I32
    });
    fx.refused("i32-matrix", &["blk.1.ffn_up.weight", "I32"], |m| m.tensor("blk.1.ffn_up.weight").2 = TensorType::I32);
    fx.refused("i32-embd", &["token_embd.weight", "I32"], |m| m.tensor("token_embd.weight").2 = TensorType::I32);
    // An F32 norm stored as F16 halves: BF16 → norms must be F32 whatever the size.
    fx.refused("bf16-norm", &["output_norm.weight", "BF16"], |m| {
        let t = m.tensor("output_norm.weight");
        t.2 = TensorType::BF16;
        t.3.truncate(t.3.len() / 2);
    });
}

#[test]
fn duplicate_vocabulary_strings() {
    let fx = fixture();
    // The tokenizer fingerprint changes too, but the model check runs before the pack match.
    fx.refused("dup-vocab", &["tokenizer.ggml.tokens", "twice"], |m| {
        let Some((_, Value::Array(Array::Str(tokens)))) = m.kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
        else {
            panic!("no tokens")
        };
        tokens[10] = tokens[11].clone();
    });
}

#[test]
fn a_sentencepiece_vocabulary_without_byte_tokens() {
    // llama.cpp's byte fallback looks `<0xXX>` up with `unordered_map::at`: the C++ exception
    // terminated the process at the first tokenization (found by delrec-fuzz).
    let fx = fixture();
    fx.refused("spm-no-bytes", &["byte token", "<0x00>"], |m| {
        m.set("tokenizer.ggml.model", Value::Str("llama".into()))
    });
}

#[test]
fn tensor_set_shapes_and_heads() {
    let fx = fixture();
    fx.refused("missing", &["blk.1.attn_v.weight", "missing"], |m| m.tensors.retain(|t| t.0 != "blk.1.attn_v.weight"));
    fx.refused("extra", &["blk.0.attn_qkv.weight"], |m| {
        let t = m.tensor("blk.0.attn_q.weight").clone();
        m.tensors.push(("blk.0.attn_qkv.weight".into(), t.1, t.2, t.3));
    });
    fx.refused("shape", &["blk.0.ffn_down.weight", "shape"], |m| {
        // Same element count, transposed: llama.cpp would multiply the wrong way round.
        let t = m.tensor("blk.0.ffn_down.weight");
        t.1.swap(0, 1);
    });
    fx.refused("kv-heads", &["head_count_kv = 3", "does not divide"], |m| {
        m.set("llama.attention.head_count_kv", Value::U32(3))
    });
    fx.refused("special", &["tokenizer.ggml.eos_token_id = 700"], |m| {
        m.set("tokenizer.ggml.eos_token_id", Value::U32(700))
    });
    fx.refused("arch", &["gemma3", "not supported"], |m| m.set("general.architecture", Value::Str("gemma3".into())));
}

/// `fx`'s pack rewritten without its model digest pin.
fn unpinned_pack(fx: &Fixture) -> PathBuf {
    let mut p = Model::read(&fx.pack);
    p.kv.retain(|(k, _)| k != "delrec.base.model_sha256");
    let path = fx.dir.join("unpinned.pack.gguf");
    p.write(&path);
    path
}

#[test]
fn by_default_the_pinned_digest_refuses_any_changed_model() {
    let fx = fixture();
    let defaults = EngineConfig { verify_checksum: true, ..cfg() };
    let e = Engine::open(&fx.model, &fx.pack, defaults.clone()).unwrap();
    assert!(matches!(e.model_verification(), ModelVerification::Digest(_)));
    // A NaN weight passes every metadata check; the digest refuses it before llama.cpp loads it.
    let mut m = Model::read(&fx.model);
    m.tensor("blk.0.ffn_up.weight").3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = fx.dir.join("digest-nan.gguf");
    m.write(&path);
    check_model(&GgufFile::open(&path).unwrap()).unwrap();
    match Engine::open(&path, &fx.pack, defaults) {
        Err(Error::BadFile(FileError::Mismatch { field, .. })) => assert!(field.contains("sha256"), "{field}"),
        other => panic!("expected a digest mismatch, got {:?}", other.err()),
    }
}

#[test]
fn without_a_pin_llama_cpp_checks_the_tensor_data() {
    let fx = fixture();
    let unpinned = unpinned_pack(&fx);
    let on = EngineConfig { verify_checksum: true, ..cfg() };
    let e = Engine::open(&fx.model, &unpinned, on.clone()).unwrap();
    assert_eq!(e.model_verification(), ModelVerification::TensorChecks);
    // A NaN weight: metadata and shapes are fine, so only the data check can see it.
    let mut m = Model::read(&fx.model);
    m.tensor("blk.0.ffn_up.weight").3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = fx.dir.join("nan-weight.gguf");
    m.write(&path);
    match Engine::open(&path, &unpinned, on) {
        Err(Error::BadFile(FileError::ModelLoad { reason, .. })) => {
            assert!(reason.to_lowercase().contains("nan") || reason.contains("blk.0.ffn_up"), "{reason}")
        }
        other => panic!(
            "expected llama.cpp's tensor check to refuse a NaN weight, got {:?}",
            other.err().map(|e| e.to_string())
        ),
    }
    // With verification off nothing reads the data: it opens (the app vouched for the file).
    assert!(Engine::open(&path, &unpinned, cfg()).is_ok());
}
