//! The engine on an encoder-decoder model (the t5-tiny fixture, converted): one encoder pass per
//! request and none when a session's input is unchanged, the shared-prefix plans against one
//! full prompt per candidate, soft rows mixed into the encoder input, and the encoder's one-ubatch
//! limit as a typed error with the engine usable after it. (Parity against transformers + the
//! OpenPrompt reference: train/tests/test_t5_rank_parity.py.)

use delrec_convert::pack::VerbalizerSpec;
use delrec_runtime::{Engine, EngineConfig, Error, KvType, Plan, PrefixRow, RankRequest, Resource};
use delrec_tests::{catalog_ids, fixtures, model, verbalizer_pack};

const TEMPLATE: &str = "Pattern:{soft:default}. History:{history}. Next:{mask} (a title).";
const NO_SOFT: &str = "History:{history}. Next:{mask}.";

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn engine(template: &str, verbalizer: bool, tag: &str, cfg: EngineConfig) -> Engine {
    let m = model("t5-tiny", "f32");
    let soft = if template.contains("{soft:") { vec![("default", fixtures().join("prompt-llama"))] } else { vec![] };
    let spec = verbalizer.then(VerbalizerSpec::default);
    let p = verbalizer_pack(&m, "t5-tiny", template, &soft, spec, tag);
    Engine::open(&m, &p, cfg).unwrap()
}

fn req(h: &[String], c: Option<&[String]>) -> RankRequest {
    RankRequest { history: h.to_vec(), candidates: c.map(<[String]>::to_vec), ..Default::default() }
}

#[test]
fn one_encoder_pass_per_request_and_none_when_a_session_reuses_it() {
    let ids = catalog_ids();
    let e = engine(TEMPLATE, true, "t5-verb", cfg());
    let r = e.rank(&req(&ids[..3], None)).unwrap();
    assert_eq!(r.items.len(), ids.len());
    assert_eq!(r.stats.encoder_passes, 1);
    assert_eq!((r.stats.prefix_rows, r.stats.decoded_rows), (2, 2), "the decoder reads <pad> <extra_id_0>");
    let plan = e.plan(&req(&ids[..3], None)).unwrap();
    assert!(plan.encoder.iter().any(|r| matches!(r, PrefixRow::Soft { .. })), "soft rows in the encoder");
    assert_eq!(r.stats.encoder_rows, plan.encoder.len());
    let mut s = e.session(None).unwrap();
    for id in &ids[..3] {
        s.push(id).unwrap();
    }
    let a = s.rank(&RankRequest::default()).unwrap();
    let b = s.rank(&RankRequest::default()).unwrap();
    assert_eq!((a.stats.encoder_passes, b.stats.encoder_passes), (1, 0));
    let same = |x: &delrec_runtime::Ranking, y: &delrec_runtime::Ranking| {
        x.items.iter().zip(&y.items).all(|(p, q)| p.id == q.id && (p.score - q.score).abs() < 1e-5)
    };
    assert!(same(&a, &b) && same(&a, &r), "a session ranks as a fresh request does");
    s.push(&ids[7]).unwrap();
    assert_eq!(s.rank(&RankRequest::default()).unwrap().stats.encoder_passes, 1, "a new history is encoded again");
}

#[test]
fn title_likelihood_shared_plans_equal_one_prompt_per_candidate() {
    let ids = catalog_ids();
    for (template, tag) in [(TEMPLATE, "t5-title-soft"), (NO_SOFT, "t5-title")] {
        let e = engine(template, false, tag, cfg());
        let mut r = req(&ids[..2], Some(&ids[5..17]));
        let shared = e.rank(&r).unwrap();
        assert_eq!(shared.stats.encoder_passes, 1);
        r.plan = Plan::Naive;
        let naive = e.rank(&r).unwrap();
        assert_eq!(naive.stats.encoder_passes, 12, "{tag}: the baseline encodes each full prompt");
        for it in &shared.items {
            let n = naive.items.iter().find(|x| x.id == it.id).unwrap();
            // llama.cpp's CPU GELU reads an F16 table: a value at an F16 rounding boundary goes
            // one way or the other with the batch's summation order, so two plans of the same
            // sums differ by ~1e-4 here (SiLU models agree within 1e-5).
            assert!((it.logprob - n.logprob).abs() < 5e-4, "{tag} {}: {} vs {}", it.id, it.logprob, n.logprob);
            assert_eq!(it.n_tokens, n.n_tokens);
        }
        // Best-first top 3 over the whole catalog equals the exhaustive order.
        let all = e.rank(&req(&ids[..2], None)).unwrap();
        let top = e.rank(&RankRequest { top_k: Some(3), ..req(&ids[..2], None) }).unwrap();
        let want: Vec<&str> = all.items.iter().take(3).map(|i| i.id.as_str()).collect();
        let got: Vec<&str> = top.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(got, want, "{tag}");
    }
}

#[test]
fn an_encoder_input_past_one_ubatch_is_a_typed_error_and_the_engine_stays_usable() {
    let ids = catalog_ids();
    let e = engine(NO_SOFT, true, "t5-small-batch", EngineConfig { batch_size: 32, ..cfg() });
    let long = e.rank(&req(&ids[..12], None)).unwrap_err();
    match &long {
        Error::Capacity { resource: Resource::EncoderRows, needed, available } => {
            assert!(*needed > 32 && *available == 32, "{long}");
        }
        other => panic!("expected Capacity(EncoderRows), got {other:?}"),
    }
    let short = e.rank(&req(&ids[..1], None)).unwrap();
    assert_eq!(short.stats.encoder_passes, 1);
}

#[test]
fn more_sequences_than_batch_rows_is_refused_at_open_not_an_abort() {
    // llama.cpp caps an encoder model's outputs at n_batch and asserts on n_seq_max above it.
    let m = model("t5-tiny", "f32");
    let p = verbalizer_pack(&m, "t5-tiny", NO_SOFT, &[], Some(VerbalizerSpec::default()), "t5-seqs");
    let e = Engine::open(&m, &p, EngineConfig { batch_size: 8, max_sequences: 32, ..cfg() }).err().unwrap();
    assert!(matches!(&e, Error::BadRequest(_)), "{e:?}");
    assert!(e.to_string().contains("max_sequences"), "{e}");
    assert!(Engine::open(&m, &p, EngineConfig { batch_size: 8, max_sequences: 8, ..cfg() }).is_ok());
}

#[test]
fn the_memory_budget_counts_the_copied_token_table() {
    let e = engine(NO_SOFT, true, "t5-budget", cfg());
    let b = e.memory_budget();
    let m = e.model();
    // The encoder input's text rows are looked up in a copy of token_embd.weight (F32 here).
    let table = (m.n_vocab() * m.n_embd() * 4) as u64;
    let soft_free = delrec_runtime::MemoryBudget::OVERHEAD_FIXED
        + m.n_vocab() as u64 * delrec_runtime::MemoryBudget::PER_TOKEN
        + 2 * e.pack().file_len()
        + e.pack().n_items() as u64 * delrec_runtime::MemoryBudget::PER_ITEM;
    assert_eq!(b.overhead, soft_free + table, "{b:?}");
}

/// The MiB values llama.cpp logged on lines holding `what`, as `… {what} = X MiB`.
fn logged_mib(lines: &[String], what: &str) -> Vec<f64> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l[l.find(what)? + what.len()..].trim_start().strip_prefix('=')?.trim_start();
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .collect()
}

#[test]
fn the_memory_budget_covers_the_encoder_and_the_cross_attention() {
    use std::sync::{Arc, Mutex};

    use delrec_runtime::log::{set_log_sink, LogLevel};
    // Only this thread's lines: the open and the decodes of these ranks run on it.
    let me = std::thread::current().id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    set_log_sink(
        Some(Arc::new(move |_, line: &str| {
            if std::thread::current().id() == me {
                l.lock().unwrap_or_else(|e| e.into_inner()).push(line.to_string())
            }
        })),
        LogLevel::Debug,
    );
    let ids = catalog_ids();
    for (flash, kv) in [(false, KvType::F32), (true, KvType::F16)] {
        let c = EngineConfig { kv_type: kv, flash_attention: flash, max_contexts: 1, ..cfg() };
        let e = engine(TEMPLATE, false, "t5-title-soft", c);
        let b = e.memory_budget();
        // The longest encoder input this engine takes (one ubatch), and decodes against it.
        e.rank(&req(&ids[..6], None)).unwrap();
        e.rank(&req(&ids[..1], Some(&ids[2..30]))).unwrap();
        drop(e);
        let got = std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()));
        let reserved = logged_mib(&got, "CPU compute buffer size");
        assert!(!reserved.is_empty(), "no compute buffer logged (flash {flash})");
        // llama.cpp reserves the decoder graph with the cross-attention over its training
        // context (n_ctx_train positions) and checks at teardown that no graph outgrew it.
        assert!(got.iter().all(|l| !l.contains("does not match expectation")), "a compute buffer grew: {got:?}");
        let most = reserved.iter().copied().fold(0.0, f64::max);
        let est = b.compute as f64 / (1 << 20) as f64;
        eprintln!("flash {flash}: compute estimated {est:.2} MiB, llama.cpp reserved {most} MiB");
        assert!(est >= most, "flash {flash}: compute estimated {est:.2} MiB, llama.cpp reserved {most} MiB");
        assert!(est <= 2.0 * most + 4.0, "flash {flash}: estimate {est:.2} MiB far above {most} MiB");
    }
    set_log_sink(None, LogLevel::Debug);
}

#[test]
fn a_lora_adapter_at_run_time_equals_the_merged_lora_on_encoder_and_decoder() {
    use delrec_tests::{adapter, merged_into, verbalizer_adapter_pack};
    // q and v of every attention (encoder, decoder, cross) and the FFN's wo, as DELRec's stage 2
    // targets them; merged at F32 by the converter for the reference.
    let base = model("t5-tiny", "f32");
    let a = adapter(&base, "lora-t5", "f32");
    let merged = merged_into(&base, "lora-t5");
    let soft = vec![("default", fixtures().join("prompt-llama"))];
    let ids = catalog_ids();
    for (verbalizer, tag) in [(true, "verb"), (false, "title")] {
        let spec = verbalizer.then(VerbalizerSpec::default);
        let with = Engine::open(
            &base,
            verbalizer_adapter_pack(&base, "t5-tiny", TEMPLATE, &soft, spec.clone(), &format!("lora-{tag}"), Some(&a)),
            cfg(),
        )
        .unwrap();
        let want = Engine::open(
            &merged,
            verbalizer_pack(&merged, "t5-tiny", TEMPLATE, &soft, spec.clone(), &format!("merged-{tag}")),
            cfg(),
        )
        .unwrap();
        let plain = Engine::open(
            &base,
            verbalizer_pack(&base, "t5-tiny", TEMPLATE, &soft, spec, &format!("plain-{tag}")),
            cfg(),
        )
        .unwrap();
        let summary = with.adapter().unwrap();
        // Encoder: 2 layers × (q, v, wo); decoder: 2 × (q, v, cross q, cross v, wo).
        assert_eq!(summary.weights, 2 * 3 + 2 * 5, "{tag}");
        assert_eq!(
            summary.targets,
            [
                "dec.attn_q",
                "dec.attn_v",
                "dec.cross_attn_q",
                "dec.cross_attn_v",
                "dec.ffn_down",
                "enc.attn_q",
                "enc.attn_v",
                "enc.ffn_down"
            ],
            "{tag}"
        );
        let r = if verbalizer { req(&ids[..3], None) } else { req(&ids[..3], Some(&ids[4..16])) };
        let score = |e: &Engine| -> std::collections::BTreeMap<String, f64> {
            e.rank(&r).unwrap().items.into_iter().map(|i| (i.id, i.logprob)).collect()
        };
        let (got, want, plain) = (score(&with), score(&want), score(&plain));
        let diff =
            |x: &std::collections::BTreeMap<String, f64>| got.iter().map(|(k, v)| (v - x[k]).abs()).fold(0.0, f64::max);
        let (d, moved) = (diff(&want), diff(&plain));
        eprintln!("{tag}: adapter vs merged max |Δ| {d:.2e}, the LoRA moves scores by {moved:.3}");
        // ggml's F16-table GELU rounds the two computations' sums apart by ~1e-4 here.
        assert!(d < 1e-3, "{tag}: adapter at run time vs merged: {d}");
        assert!(moved > 0.05, "{tag}: the LoRA changes scores by only {moved}");
    }
}
