//! LoRA adapters at run time (issue #20): an adapter applied by llama.cpp over the base equals the
//! same LoRA merged into the weights (and the numpy reference of the PEFT forward, in
//! tests/parity); many packs over one base share its model and contexts without one pack's KV
//! ever being read under another's adapter; and each way an adapter can be wrong is a typed error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use delrec_runtime::llm::{sequence_logits, Adapter, Model, ModelParams};
use delrec_runtime::{Base, Engine, EngineConfig, Error, FileError, KvType, RankRequest, Ranking};
use delrec_tests::{adapter, adapter_pack, catalog_ids, merged_into, merged_model, model, pack};

fn f32_cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn probe() -> Vec<i32> {
    vec![1, 17, 42, 5, 99, 3, 250, 7, 64, 128, 11, 2]
}

fn req(history: &[&str]) -> RankRequest {
    RankRequest { history: history.iter().map(|s| s.to_string()).collect(), candidates: None, ..Default::default() }
}

fn scores(r: &Ranking) -> std::collections::BTreeMap<String, f64> {
    r.items.iter().map(|i| (i.id.clone(), i.logprob)).collect()
}

fn assert_close(a: &Ranking, b: &Ranking, tol: f64) -> f64 {
    let (a, b) = (scores(a), scores(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let worst = a.iter().map(|(k, v)| (v - b[k]).abs()).fold(0.0, f64::max);
    assert!(worst < tol, "scores differ by {worst} (tolerance {tol})");
    worst
}

/// The llama-tiny base, the lora-llama fixture as an adapter over it, and the same LoRA merged.
fn tiny(outtype: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = model("llama-tiny", "f32");
    let a = adapter(&base, "lora-llama", outtype);
    let merged = merged_model("llama-tiny", "f32", "lora-llama");
    (base, a, merged)
}

fn load_adapter(m: &Arc<Model>, path: &Path) -> Arc<Adapter> {
    let f = std::fs::File::open(path).unwrap();
    Arc::new(Adapter::load_file(m, &f, path).unwrap())
}

#[test]
fn adapter_at_run_time_equals_the_merged_lora() {
    let (base, a32, merged) = tiny("f32");
    let m = Arc::new(Model::load(&base, ModelParams::default()).unwrap());
    let mm = Arc::new(Model::load(&merged, ModelParams::default()).unwrap());
    let plain = sequence_logits(&m, None, &probe(), 2).unwrap();
    let want = sequence_logits(&mm, None, &probe(), 2).unwrap();
    let ad = load_adapter(&m, &a32);
    let got = sequence_logits(&m, Some((&ad, 1.0)), &probe(), 2).unwrap();
    let d = max_diff(&got, &want);
    assert!(d < 1e-3, "adapter at run time vs merged: max |Δ| {d}");
    // The fixture's LoRA really moves the logits (else the comparison proves nothing).
    let moved = max_diff(&plain, &want);
    assert!(moved > 0.05, "the LoRA changes the logits by only {moved}");
    // Scale 0.5 is half the update: not the merged model, and between it and the base.
    let half = sequence_logits(&m, Some((&ad, 0.5)), &probe(), 2).unwrap();
    assert!(max_diff(&half, &want) > moved * 0.2 && max_diff(&half, &plain) > moved * 0.2);
    // F16 adapter tensors: close to the F32 ones.
    let a16 = load_adapter(&m, &adapter(&base, "lora-llama", "f16"));
    let got16 = sequence_logits(&m, Some((&a16, 1.0)), &probe(), 2).unwrap();
    let d16 = max_diff(&got16, &want);
    assert!(d16 < 2e-2, "F16 adapter vs merged: max |Δ| {d16}");
}

/// Setting another adapter (or another scale, or none) on a context clears its KV cache; setting
/// the same one again keeps it.
#[test]
fn switching_the_adapter_clears_the_kv_cache() {
    use delrec_runtime::llm::{Batch, Context, ContextParams};
    let (base, a32, _) = tiny("f32");
    let m = Arc::new(Model::load(&base, ModelParams::default()).unwrap());
    let ad = load_adapter(&m, &a32);
    let mut ctx = Context::new(m.clone(), &ContextParams::exact(64, 2)).unwrap();
    let fill = |ctx: &mut Context| {
        let mut b = Batch::tokens();
        for (i, &t) in probe().iter().enumerate() {
            b.add_token(t, i as i32, &[0], i + 1 == probe().len());
        }
        ctx.decode(&mut b).unwrap();
        assert_eq!(ctx.seq_pos_max(0), probe().len() as i32 - 1);
    };
    fill(&mut ctx);
    assert!(!ctx.set_adapter(None).unwrap(), "no adapter → no adapter is no change");
    assert_eq!(ctx.seq_pos_max(0), probe().len() as i32 - 1, "an unchanged adapter keeps the cache");
    for (next, what) in
        [(Some((&ad, 1.0)), "adapter set"), (Some((&ad, 0.5)), "scale changed"), (None, "adapter removed")]
    {
        assert!(ctx.set_adapter(next).unwrap(), "{what}: a change");
        assert_eq!(ctx.seq_pos_max(0), -1, "{what}: the KV cache must be empty");
        fill(&mut ctx);
    }
    assert!(!ctx.set_adapter(None).unwrap());
    assert_eq!(ctx.seq_pos_max(0), probe().len() as i32 - 1);
    // An adapter loaded over another model is refused before llama.cpp sees it.
    let other = Arc::new(Model::load(&base, ModelParams::default()).unwrap());
    let foreign = load_adapter(&other, &a32);
    assert!(ctx.set_adapter(Some((&foreign, 1.0))).is_err());
}

#[test]
fn an_adapter_pack_ranks_like_a_pack_over_the_merged_model() {
    let (base, a32, merged) = tiny("f32");
    let with = adapter_pack(&base, "llama-tiny", "prompt-llama", &a32, 1.0);
    let over_merged = pack(&merged, "llama-tiny", "prompt-llama");
    let e = Engine::open(&base, &with, f32_cfg()).unwrap();
    let s = e.adapter().expect("the pack's adapter is applied");
    assert_eq!((s.scale, s.weights), (1.0, 4), "{s:?}");
    assert!(s.targets.contains(&"attn_q".to_string()), "{s:?}");
    let m = Engine::open(&merged, &over_merged, f32_cfg()).unwrap();
    let r = req(&["m001", "m002", "m003"]);
    assert_close(&e.rank(&r).unwrap(), &m.rank(&r).unwrap(), 1e-3);
    // Top-k search and sessions run under the adapter too.
    let k = RankRequest { top_k: Some(3), ..r.clone() };
    let (a, b) = (e.rank(&k).unwrap(), m.rank(&k).unwrap());
    assert_eq!(a.items.iter().map(|i| &i.id).collect::<Vec<_>>(), b.items.iter().map(|i| &i.id).collect::<Vec<_>>());
    let mut sa = e.session(None).unwrap();
    let mut sb = m.session(None).unwrap();
    for h in ["m004", "m005"] {
        sa.push(h).unwrap();
        sb.push(h).unwrap();
    }
    let c = RankRequest { candidates: Some(catalog_ids()[6..12].to_vec()), ..Default::default() };
    assert_close(&sa.rank(&c).unwrap(), &sb.rank(&c).unwrap(), 1e-3);
}

/// Two packs over one base with one context between them: every call switches the adapter on
/// the shared context, and each result equals a fresh engine's with its pack alone.
#[test]
fn packs_over_one_base_share_it_and_never_read_each_others_kv() {
    let (base, a32, _) = tiny("f32");
    let with = adapter_pack(&base, "llama-tiny", "prompt-llama", &a32, 1.0);
    let half = adapter_pack(&base, "llama-tiny", "prompt-llama", &a32, 0.5);
    let without = pack(&base, "llama-tiny", "prompt-llama");
    let cfg = EngineConfig { max_contexts: 1, ..f32_cfg() };
    let b = Base::open(&base, cfg.clone()).unwrap();
    let (ea, eh, en) = (b.open_pack(&with).unwrap(), b.open_pack(&half).unwrap(), b.open_pack(&without).unwrap());
    assert!(Arc::ptr_eq(ea.model(), en.model()), "one model under every pack");
    assert_eq!(b.adapters_loaded(), 1, "two packs naming one adapter file load it once");
    assert!(en.adapter().is_none());
    let r = req(&["m001", "m002", "m003"]);
    let want_a = Engine::open(&base, &with, f32_cfg()).unwrap().rank(&r).unwrap();
    let want_h = Engine::open(&base, &half, f32_cfg()).unwrap().rank(&r).unwrap();
    let want_n = Engine::open(&base, &without, f32_cfg()).unwrap().rank(&r).unwrap();
    assert!(assert_close(&want_a, &want_a, 1e-9) == 0.0);
    let apart = scores(&want_a).iter().map(|(k, v)| (v - scores(&want_n)[k]).abs()).fold(0.0, f64::max);
    assert!(apart > 0.05, "the adapter must change the scores for this test to mean anything ({apart})");
    for _ in 0..2 {
        assert_close(&ea.rank(&r).unwrap(), &want_a, 1e-4);
        assert_close(&en.rank(&r).unwrap(), &want_n, 1e-4);
        assert_close(&eh.rank(&r).unwrap(), &want_h, 1e-4);
    }
    // A session holds the context (and its adapter) until dropped; the others wait (Busy with no
    // wait) rather than run under its adapter.
    let mut s = ea.session(None).unwrap();
    s.push("m001").unwrap();
    let quick = Base::open(&base, EngineConfig { context_wait: std::time::Duration::ZERO, ..cfg }).unwrap();
    let qn = quick.open_pack(&without).unwrap();
    let qa = quick.open_pack(&with).unwrap();
    let _held = qa.session(None).unwrap();
    assert!(matches!(qn.rank(&r), Err(Error::Busy { .. })));
    drop(s);
    assert_close(&en.rank(&r).unwrap(), &want_n, 1e-4);
}

/// Over a Q4_0 base the adapter computes the fine-tune on the 4-bit weights exactly: its scores
/// equal those of the LoRA merged into the dequantized Q4_0 weights at F32 (up to the Q4_0 matmul
/// kernels' own rounding), which merging and re-quantizing to Q4_0 does not give.
#[test]
fn a_q4_base_with_the_adapter_keeps_the_fine_tune() {
    let q4 = model("llama-tiny", "q4_0");
    let a = adapter(&q4, "lora-llama", "f32");
    let exact = merged_into(&q4, "lora-llama");
    let merged_q4 = merged_model("llama-tiny", "q4_0", "lora-llama");
    let reference = Engine::open(&exact, pack(&exact, "llama-tiny", "prompt-llama"), f32_cfg()).unwrap();
    let with = Engine::open(&q4, adapter_pack(&q4, "llama-tiny", "prompt-llama", &a, 1.0), f32_cfg()).unwrap();
    let plain = Engine::open(&q4, pack(&q4, "llama-tiny", "prompt-llama"), f32_cfg()).unwrap();
    let mq4 = Engine::open(&merged_q4, pack(&merged_q4, "llama-tiny", "prompt-llama"), f32_cfg()).unwrap();
    let r = req(&["m001", "m002", "m003"]);
    let want = scores(&reference.rank(&r).unwrap());
    let dist = |e: &Engine| {
        let got = scores(&e.rank(&r).unwrap());
        want.iter().map(|(k, v)| (v - got[k]).abs()).sum::<f64>() / want.len() as f64
    };
    let (d_adapter, d_plain, d_merged) = (dist(&with), dist(&plain), dist(&mq4));
    // The Q4_0 kernels' own rounding (activations quantized to 8 bits per block): the plain Q4_0
    // base against its weights dequantized to F32 (the LoRA with alpha 0 merged: no update).
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero-lora");
    std::fs::create_dir_all(&zero).unwrap();
    let src = delrec_tests::fixtures().join("lora-llama");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["lora_alpha"] = 0.0.into();
    std::fs::write(zero.join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), zero.join("adapter_model.safetensors")).unwrap();
    let dequant = dir.path().join("q4_0-as-f32.gguf");
    delrec_convert::merge::merge_lora_gguf(&delrec_convert::merge::MergeOptions {
        base: q4.clone(),
        lora: zero,
        out: dequant.clone(),
        outtype: delrec_convert::merge::MergeOutType::F32,
        verify: true,
    })
    .unwrap();
    let dq = Engine::open(&dequant, pack_in(dir.path(), &dequant), f32_cfg()).unwrap();
    let (a, b) = (scores(&plain.rank(&r).unwrap()), scores(&dq.rank(&r).unwrap()));
    let floor = a.iter().map(|(k, v)| (v - b[k]).abs()).sum::<f64>() / a.len() as f64;
    eprintln!(
        "mean |Δscore| vs the fine-tune on the Q4_0 weights at F32: adapter {d_adapter:.4} (Q4_0 kernel floor \
         {floor:.4}), merged + re-quantized {d_merged:.4}, no adapter {d_plain:.4}"
    );
    assert!(floor > 0.0 && d_adapter < 2.0 * floor + 1e-3, "adapter over Q4_0: {d_adapter}, kernel floor {floor}");
    assert!(d_adapter * 5.0 < d_merged, "adapter {d_adapter} vs merged Q4_0 {d_merged}");
    assert!(d_adapter * 5.0 < d_plain, "adapter {d_adapter} vs no adapter {d_plain}");
}

/// A pack for a model outside the test artifacts (built in `dir`).
fn pack_in(dir: &Path, model: &Path) -> PathBuf {
    let fx = delrec_tests::fixtures();
    let out = dir.join("p.pack.gguf");
    let opts = delrec_convert::pack::PackOptions {
        models: vec![model.to_path_buf()],
        tokenizer: Some(fx.join("llama-tiny/tokenizer.json")),
        catalog: fx.join("catalog.csv"),
        template: delrec_tests::TEMPLATE.into(),
        soft_prompts: vec![("default".into(), fx.join("prompt-llama"))],
        item_prefix: " ".into(),
        history_separator: ",".into(),
        candidates_separator: ", ".into(),
        verbalizer: None,
        bos: delrec_convert::pack::BosChoice::Auto,
        max_history: None,
        scoring: delrec_runtime::ScoringMode::Sum,
        soft_f16: false,
        name: None,
        out: out.clone(),
        seq: None,
        fusion: None,
        adapter: None,
    };
    delrec_convert::pack::build_pack(&opts).unwrap();
    out
}

fn copy_to(dir: &Path, src: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    dst
}

fn bad_file(r: Result<Engine, Error>) -> FileError {
    match r {
        Err(Error::BadFile(e)) => e,
        Err(other) => panic!("expected BadFile, got {other:?}"),
        Ok(_) => panic!("expected BadFile, the pack opened"),
    }
}

#[test]
fn bad_adapters_are_typed_errors() {
    let (base, a32, _) = tiny("f32");
    let dir = tempfile::tempdir().unwrap();
    let p = copy_to(dir.path(), &adapter_pack(&base, "llama-tiny", "prompt-llama", &a32, 1.0));
    let a = copy_to(dir.path(), &a32);
    Engine::open(&base, &p, f32_cfg()).expect("the copies open");

    // Missing beside the pack.
    std::fs::remove_file(&a).unwrap();
    assert!(matches!(bad_file(Engine::open(&base, &p, f32_cfg())), FileError::Io { .. }));
    // Another file under its name (changed bytes): the pinned digest refuses it, even with the
    // model's digest check off (the adapter is the pack's, not the model's).
    let mut bytes = std::fs::read(&a32).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&a, &bytes).unwrap();
    let off = EngineConfig { verify_checksum: false, ..f32_cfg() };
    match bad_file(Engine::open(&base, &p, off)) {
        FileError::Mismatch { field, .. } => assert_eq!(field, "adapter file sha256"),
        other => panic!("{other:?}"),
    }
    // Given elsewhere: still the pinned digest.
    let b = Base::open(&base, f32_cfg()).unwrap();
    assert!(matches!(b.open_pack_with_adapter(&p, &a), Err(Error::BadFile(FileError::Mismatch { .. }))));
    std::fs::copy(&a32, &a).unwrap();
    let moved = dir.path().join("elsewhere.gguf");
    std::fs::rename(&a, &moved).unwrap();
    assert!(b.open_pack_with_adapter(&p, &moved).is_ok());
    // A pack without an adapter cannot be given one.
    let plain = pack(&base, "llama-tiny", "prompt-llama");
    assert!(matches!(b.open_pack_with_adapter(&plain, &moved), Err(Error::BadRequest(_))));

    // An adapter for another base: built over qwen2-tiny, pinned by a pack for llama-tiny would
    // be refused at build time, so it is handed over in place of the right one.
    let qwen = model("qwen2-tiny", "f32");
    let q = delrec_runtime::format::gguf::GgufFile::open(&qwen).unwrap();
    let qt = delrec_runtime::format::adapter::BaseTensors::of_model(&q).unwrap();
    let a_gguf = delrec_runtime::format::gguf::GgufFile::open(&a32).unwrap();
    let qid = delrec_runtime::format::BaseIdentity::of_model(&q).unwrap();
    assert!(matches!(
        delrec_runtime::format::adapter::check_adapter(&a_gguf, &qt, &qid),
        Err(delrec_runtime::format::Error::PackMismatch { .. })
    ));
}

#[test]
fn a_shared_base_verifies_by_digest() {
    let (base, _, merged) = tiny("f32");
    // A pack for another file of the same base shape (the merged model) is refused over this
    // base: its pin is the merged file's digest.
    let b = Base::open(&base, f32_cfg()).unwrap();
    match b.open_pack(pack(&merged, "llama-tiny", "prompt-llama")) {
        Err(Error::BadFile(FileError::Mismatch { field, .. })) => assert_eq!(field, "model file sha256"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(b.open_pack(pack(&base, "llama-tiny", "prompt-llama")).is_ok());
}
