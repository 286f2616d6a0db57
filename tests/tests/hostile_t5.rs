//! T5 model files: every converted t5-tiny passes `model_check` and runs in llama.cpp; hostile
//! rewrites of it are typed errors at `Base::open` (the engine's open path), before llama.cpp
//! parses them. llama.cpp is linked into this process: a class the check let through that
//! aborts it kills the test binary, which fails the run.

use std::path::PathBuf;
use std::sync::Arc;

use delrec_runtime::format::gguf::{Array, GgufFile, TensorType, Value};
use delrec_runtime::format::model_check::check_model;
use delrec_runtime::llm::{encoder_decoder_logits, EncoderSegment, Model, ModelParams};
use delrec_runtime::{Base, EngineConfig, Error, FileError, KvType};
use delrec_tests::{model, GgufEdit};

const OUTTYPES: [&str; 4] = ["f32", "f16", "bf16", "q8_0"];

fn cfg() -> EngineConfig {
    EngineConfig {
        kv_type: KvType::F32,
        flash_attention: false,
        threads: 2,
        verify_checksum: false,
        ..Default::default()
    }
}

#[test]
fn every_converted_t5_passes_and_runs() {
    for t in OUTTYPES {
        let path = model("t5-tiny", t);
        let facts = check_model(&GgufFile::open(&path).unwrap()).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(facts.architecture, "t5");
        let s = facts.seq2seq.as_ref().expect("encoder-decoder facts");
        assert_eq!((facts.n_layer, s.n_dec_layer, s.n_rel_attn_bkts, s.decoder_start_token), (2, 2, 32, Some(0)));
        assert_eq!(facts.tokenizer_model, "t5");
        // What the check accepted, llama.cpp tokenizes (the charsmap walk), encodes and decodes.
        let m = Arc::new(Model::load(&path, ModelParams::default()).unwrap());
        let tokens = m.tokenize("Ｔhe Fuzzed Film (2024) — é🦀 \u{0}\t", false).unwrap();
        assert!(!tokens.is_empty() && tokens.iter().all(|&id| id >= 0 && (id as u32) < facts.n_vocab), "{tokens:?}");
        let start = m.decoder_start_token().expect("a decoder start token");
        let (seqs, passes) = encoder_decoder_logits(&m, None, &[EncoderSegment::Tokens(&tokens)], &[vec![start]], 2)
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(passes, 1);
        assert!(seqs[0][0].iter().all(|x| x.is_finite()), "{t}: non-finite logits");
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
}

fn fixture(outtype: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    // DELREC_KEEP_HOSTILE=DIR keeps the hostile files (to try them on other binaries).
    let dir = match std::env::var_os("DELREC_KEEP_HOSTILE") {
        Some(d) => PathBuf::from(d).join(format!("t5-{outtype}")),
        None => tmp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    Fixture { dir, _tmp: tmp, model: model("t5-tiny", outtype) }
}

impl Fixture {
    /// The model rewritten with `change` must be refused by `Base::open` as `Invalid`, with a
    /// reason mentioning every one of `needles`.
    fn refused(&self, what: &str, needles: &[&str], change: impl FnOnce(&mut GgufEdit)) {
        let mut m = GgufEdit::read(&self.model);
        change(&mut m);
        let path = self.dir.join(format!("{what}.gguf"));
        m.write(&path);
        match Base::open(&path, cfg()) {
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

fn charsmap(m: &GgufEdit) -> Vec<u8> {
    match m.get("tokenizer.ggml.precompiled_charsmap") {
        Some(Value::Array(Array::U8(b))) => b.clone(),
        other => panic!("no u8 charsmap: {other:?}"),
    }
}

fn set_charsmap(m: &mut GgufEdit, b: Vec<u8>) {
    m.set("tokenizer.ggml.precompiled_charsmap", Value::Array(Array::U8(b)));
}

fn tokens(m: &mut GgufEdit) -> &mut Vec<String> {
    match m.kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, Value::Array(Array::Str(t)))) => t,
        _ => panic!("no tokens"),
    }
}

#[test]
fn hostile_t5_hyperparameters() {
    let fx = fixture("f32");
    fx.refused("layers0", &["t5.block_count = 0"], |m| m.set("t5.block_count", Value::U32(0)));
    fx.refused("layers600", &["t5.block_count = 600"], |m| m.set("t5.block_count", Value::U32(600)));
    fx.refused("dec-layers", &["t5.decoder_block_count = 3"], |m| m.set("t5.decoder_block_count", Value::U32(3)));
    fx.refused("eps-nan", &["t5.attention.layer_norm_rms_epsilon", "NaN"], |m| {
        m.set("t5.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN))
    });
    fx.refused("buckets0", &["t5.attention.relative_buckets_count = 0"], |m| {
        m.set("t5.attention.relative_buckets_count", Value::U32(0))
    });
    fx.refused("buckets2", &["t5.attention.relative_buckets_count = 2"], |m| {
        m.set("t5.attention.relative_buckets_count", Value::U32(2));
        for side in ["enc", "dec"] {
            let t = m.tensor(&format!("{side}.blk.0.attn_rel_b.weight"));
            t.1 = vec![4, 2];
            t.3.truncate(4 * 2 * 4);
        }
    });
    fx.refused("buckets-mismatch", &["enc.blk.0.attn_rel_b.weight", "shape"], |m| {
        m.set("t5.attention.relative_buckets_count", Value::U32(16))
    });
    fx.refused("kv-heads", &["t5.attention.head_count_kv = 2", "must equal"], |m| {
        m.set("t5.attention.head_count_kv", Value::U32(2))
    });
    fx.refused("head-v", &["value_length 8"], |m| m.set("t5.attention.value_length", Value::U32(8)));
    fx.refused("dec-start", &["t5.decoder_start_token_id = 824"], |m| {
        m.set("t5.decoder_start_token_id", Value::U32(824))
    });
}

#[test]
fn hostile_t5_tensors() {
    for t in ["f32", "q8_0"] {
        let fx = fixture(t);
        for name in ["enc.blk.0.attn_rel_b.weight", "dec.blk.0.attn_rel_b.weight", "dec.blk.1.cross_attn_v.weight"] {
            fx.refused(&format!("missing-{name}"), &[name, "missing"], |m| m.tensors.retain(|x| x.0 != name));
        }
        fx.refused("shape", &["enc.blk.1.ffn_down.weight", "shape"], |m| {
            m.tensor("enc.blk.1.ffn_down.weight").1.swap(0, 1)
        });
        fx.refused("extra", &["blk.0.attn_q.weight", "not one the t5"], |m| {
            let x = m.tensor("enc.blk.0.attn_q.weight").clone();
            m.tensors.push(("blk.0.attn_q.weight".into(), x.1, x.2, x.3));
        });
        // Same byte size, another type: F32 → I32 for the norm and the bias table.
        fx.refused("i32-norm", &["dec.blk.0.cross_attn_norm.weight", "I32"], |m| {
            m.tensor("dec.blk.0.cross_attn_norm.weight").2 = TensorType::I32
        });
        fx.refused("i32-bias", &["dec.blk.0.attn_rel_b.weight", "I32"], |m| {
            m.tensor("dec.blk.0.attn_rel_b.weight").2 = TensorType::I32
        });
    }
    let fx = fixture("f16");
    // F16 → I16 keeps every byte.
    fx.refused("i16-matrix", &["dec.blk.1.cross_attn_q.weight", "I16"], |m| {
        m.tensor("dec.blk.1.cross_attn_q.weight").2 = TensorType::I16
    });
}

#[test]
fn hostile_t5_vocabulary() {
    let fx = fixture("f32");
    fx.refused("types", &["token_type", "823 entries"], |m| {
        m.set("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 823])))
    });
    fx.refused("eos", &["tokenizer.ggml.eos_token_id = 824"], |m| {
        m.set("tokenizer.ggml.eos_token_id", Value::U32(824))
    });
    fx.refused("unk", &["tokenizer.ggml.unknown_token_id = 9999"], |m| {
        m.set("tokenizer.ggml.unknown_token_id", Value::U32(9999))
    });
    fx.refused("pad", &["tokenizer.ggml.padding_token_id"], |m| {
        m.set("tokenizer.ggml.padding_token_id", Value::U32(u32::MAX))
    });
    fx.refused("bos", &["add_bos_token is true"], |m| m.set("tokenizer.ggml.add_bos_token", Value::Bool(true)));
    fx.refused("dup", &["tokenizer.ggml.tokens", "twice"], |m| {
        let t = tokens(m);
        t[100] = t[101].clone();
    });
    fx.refused("long-token", &["4097 bytes"], |m| tokens(m)[200] = "x".repeat(4097));
}

#[test]
fn hostile_t5_charsmaps() {
    let fx = fixture("f32");
    let original = charsmap(&GgufEdit::read(&fx.model));
    let blob = u32::from_le_bytes(original[..4].try_into().unwrap()) as usize;
    let n_nodes = blob / 4;
    fx.refused("cmap-truncated", &["precompiled_charsmap", "only"], |m| set_charsmap(m, original[..4 + blob].to_vec()));
    fx.refused("cmap-blob-past-end", &["precompiled_charsmap", "trie is"], |m| {
        let mut b = original.clone();
        b[..4].copy_from_slice(&(original.len() as u32).to_le_bytes());
        set_charsmap(m, b)
    });
    fx.refused("cmap-header", &["precompiled_charsmap", "4-byte header"], |m| set_charsmap(m, vec![0, 1]));
    // The root's base moved past the array: the first byte of any text reads outside it.
    fx.refused("cmap-root", &["precompiled_charsmap", "trie index"], |m| {
        let mut b = original.clone();
        let far = ((n_nodes as u32 + 512) << 10).to_le_bytes();
        b[4..8].copy_from_slice(&far);
        set_charsmap(m, b)
    });
    // Every leaf's replacement offset past the replacements: the first normalized character does it.
    fx.refused("cmap-offset", &["precompiled_charsmap", "replacement offset"], |m| {
        let mut b = original.clone();
        for i in 0..n_nodes {
            let at = 4 + 4 * i;
            let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            if v & 0x8000_0000 != 0 {
                b[at..at + 4].copy_from_slice(&(0x8000_0000u32 | 0x7fff_0000).to_le_bytes());
            }
        }
        set_charsmap(m, b)
    });
    // Only what a fullwidth "Ａ" (EF BC A1) reaches, broken: llama.cpp loads the file (its load
    // normalizes just "\n") and throws inside llama_tokenize at the first such text.
    let path = trie_path(&original, "Ａ".as_bytes());
    let (first, value) = (path[0], *path.last().unwrap());
    fx.refused("cmap-leaf-offset", &["precompiled_charsmap", "replacement offset 2147418112"], |m| {
        let mut b = original.clone();
        b[4 + 4 * value..8 + 4 * value].copy_from_slice(&(0x8000_0000u32 | 0x7fff_0000).to_le_bytes());
        set_charsmap(m, b)
    });
    fx.refused("cmap-child-out", &["precompiled_charsmap", "trie index"], |m| {
        let mut b = original.clone();
        let p = u32::from_le_bytes(b[4 + 4 * first..8 + 4 * first].try_into().unwrap());
        // Same label and leaf bit, a base that sends the next byte past the array.
        let far = (first as u32 ^ (n_nodes as u32 + 1024)) << 10 | (p & 0x1ff);
        b[4 + 4 * first..8 + 4 * first].copy_from_slice(&far.to_le_bytes());
        set_charsmap(m, b)
    });
    fx.refused("cmap-no-nul", &["precompiled_charsmap", "no NUL"], |m| {
        let mut b = original.clone();
        for x in &mut b[4 + blob..] {
            if *x == 0 {
                *x = b' ';
            }
        }
        set_charsmap(m, b)
    });
    fx.refused("cmap-type", &["precompiled_charsmap", "not a u8 or i8 array"], |m| {
        m.set("tokenizer.ggml.precompiled_charsmap", Value::Array(Array::U32(vec![1, 2, 3])))
    });
}

/// The trie nodes a walk over `text` visits in a charsmap (as llama.cpp's normalizer walks it):
/// the node matched for each byte, then the value node of the last leaf.
fn trie_path(map: &[u8], text: &[u8]) -> Vec<usize> {
    let blob = u32::from_le_bytes(map[..4].try_into().unwrap()) as usize;
    let nodes: Vec<u32> = map[4..4 + blob].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let base = |p: u32| (p >> 10) << ((p & (1 << 9)) >> 6);
    let mut state = base(nodes[0]);
    let (mut path, mut leaf) = (vec![], None);
    for &c in text {
        let index = state ^ c as u32;
        let p = nodes[index as usize];
        if p & 0x8000_00ff != c as u32 {
            break;
        }
        path.push(index as usize);
        state = index ^ base(p);
        if (p >> 8) & 1 == 1 {
            leaf = Some(state as usize);
        }
    }
    path.push(leaf.expect("the charsmap normalizes the text"));
    path
}
