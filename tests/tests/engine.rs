//! Engine behaviour on converted fixture models: the shared-prefix plan against the naive plan,
//! sessions against fresh ranks, concurrency, cancellation, and bad input.
//! (Parity against the independent numpy reference lives in tests/parity.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use delrec_runtime::{
    CancelToken, Engine, EngineConfig, Error, FileError, KvType, ModelVerification, Plan, RankRequest, Ranking,
    RequestError, Resource,
};
use delrec_tests::{catalog_ids, model, pack};

/// The exact configuration: F32 cache, classic attention (flash attention accumulates in F16).
fn f32_cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn tiny() -> (PathBuf, PathBuf) {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    (m, p)
}

fn req(history: &[&str], candidates: Option<&[String]>) -> RankRequest {
    RankRequest {
        history: history.iter().map(|s| s.to_string()).collect(),
        candidates: candidates.map(|c| c.to_vec()),
        ..Default::default()
    }
}

/// Scores by id.
fn by_id(r: &Ranking) -> std::collections::BTreeMap<String, (f64, u32)> {
    r.items.iter().map(|i| (i.id.clone(), (i.logprob, i.n_tokens))).collect()
}

fn assert_close(a: &Ranking, b: &Ranking, tol: f64) {
    let (a, b) = (by_id(a), by_id(b));
    assert_eq!(a.len(), b.len());
    for (id, (sa, na)) in &a {
        let (sb, nb) = b[id];
        assert_eq!(*na, nb, "{id}: token counts differ");
        assert!((sa - sb).abs() < tol, "{id}: {sa} vs {sb} (|Δ| = {})", (sa - sb).abs());
    }
}

#[test]
fn shared_prefix_equals_naive_on_the_whole_catalog() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    let mut r = req(&[&ids[0], &ids[3], &ids[7]], None);
    let shared = e.rank(&r).unwrap();
    r.plan = Plan::Naive;
    let naive = e.rank(&r).unwrap();
    assert_eq!(shared.items.len(), ids.len());
    assert_close(&shared, &naive, 1e-4);
    // The trie really shares work: fewer rows than one prompt per candidate.
    assert!(shared.stats.decoded_rows < naive.stats.decoded_rows / 4, "{:?} vs {:?}", shared.stats, naive.stats);
    // Ranked best first.
    assert!(shared.items.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn small_groups_and_batches_give_the_same_scores() {
    let (m, p) = tiny();
    let ids = catalog_ids();
    let r = req(&[&ids[1], &ids[2]], None);
    let big = Engine::open(&m, &p, f32_cfg()).unwrap().rank(&r).unwrap();
    // 3 sequences (2 candidates per group), 8-row batches, a 96-cell context: many groups, many decodes.
    let cfg = EngineConfig { max_sequences: 3, batch_size: 8, context_size: 96, ..f32_cfg() };
    let small = Engine::open(&m, &p, cfg).unwrap().rank(&r).unwrap();
    assert_close(&big, &small, 1e-4);
    assert!(small.stats.decode_calls > big.stats.decode_calls);
}

#[test]
fn top_k_and_candidates() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    let cands: Vec<String> = ids[5..17].to_vec();
    let all = e.rank(&req(&[&ids[0]], Some(&cands))).unwrap();
    assert_eq!(all.items.len(), 12);
    assert!(all.items.iter().all(|i| cands.contains(&i.id)));
    let mut r = req(&[&ids[0]], Some(&cands));
    r.top_k = Some(3);
    let top = e.rank(&r).unwrap();
    let ids_of = |r: &[delrec_runtime::ScoredItem]| r.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids_of(&top.items), ids_of(&all.items[..3]));
    for (a, b) in top.items.iter().zip(&all.items) {
        assert!((a.score - b.score).abs() < 1e-4);
    }
    for i in &all.items {
        assert!((i.mean_logprob - i.logprob / i.n_tokens as f64).abs() < 1e-12);
        assert!(i.logprob < 0.0);
    }
}

#[test]
fn pruned_top_k_is_exact_and_cheaper() {
    let (m, p) = tiny();
    let ids = catalog_ids();
    for cfg in [f32_cfg(), EngineConfig { max_sequences: 5, batch_size: 8, ..f32_cfg() }] {
        let e = Engine::open(&m, &p, cfg).unwrap();
        for (hist, k) in [(vec![&ids[0], &ids[5]], 1), (vec![&ids[3]], 3), (vec![&ids[7], &ids[8], &ids[9]], 10)] {
            let hist: Vec<&str> = hist.iter().map(|s| s.as_str()).collect();
            let mut r = req(&hist, None);
            r.top_k = Some(k);
            let pruned = e.rank(&r).unwrap();
            r.exhaustive = true;
            let full = e.rank(&r).unwrap();
            assert_eq!(pruned.items.len(), k);
            for (a, b) in pruned.items.iter().zip(&full.items) {
                assert_eq!(a.id, b.id, "top-{k} differs");
                assert!((a.logprob - b.logprob).abs() < 1e-4);
                assert_eq!(a.n_tokens, b.n_tokens);
            }
            assert_eq!(full.stats.pruned, 0);
            assert!(pruned.stats.pruned > 0, "nothing pruned for top-{k}: {:?}", pruned.stats);
            assert!(pruned.stats.decoded_rows < full.stats.decoded_rows, "{:?} vs {:?}", pruned.stats, full.stats);
        }
    }
}

#[test]
fn session_incremental_equals_fresh_rank() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    let cands: Vec<String> = ids[10..30].to_vec();
    let mut s = e.session(None).unwrap();
    let mut hist: Vec<&str> = vec![];
    for (step, h) in [&ids[0], &ids[4], &ids[9], &ids[2]].into_iter().enumerate() {
        s.push(h).unwrap();
        hist.push(h);
        let inc = s.rank(&req(&[], Some(&cands))).unwrap();
        let fresh = e.rank(&req(&hist, Some(&cands))).unwrap();
        assert_close(&inc, &fresh, 1e-4);
        if step > 0 {
            // Only the new item and the tail of the template were decoded for the prefix.
            // (8 soft rows, the template's head and the earlier items stay in the cache.)
            assert!(inc.stats.prefix_reused > 8, "step {step}: {:?}", inc.stats);
            assert!(inc.stats.prefix_reused >= fresh.stats.prefix_rows / 2, "step {step}: {:?}", inc.stats);
        }
    }
    // Ranking again without changes decodes no prefix row at all.
    let again = s.rank(&req(&[], Some(&cands))).unwrap();
    assert_eq!(again.stats.prefix_reused, again.stats.prefix_rows);
    assert!(matches!(s.push("no-such-item"), Err(Error::BadRequest(RequestError::UnknownItem { .. }))));
}

#[test]
fn a_prefilled_session_ranks_with_candidate_rows_only() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    let cands: Vec<String> = ids[10..30].to_vec();
    let mut s = e.session(None).unwrap();
    s.set_history(&ids[..3]).unwrap();
    s.rank(&req(&[], Some(&cands))).unwrap();
    s.push(&ids[5]).unwrap();
    let pre = s.prefill(&req(&[], Some(&cands))).unwrap();
    // Only the changed tail of the prompt, nothing of the candidates.
    assert!(pre.decoded_rows > 0 && pre.decoded_rows < pre.prefix_rows, "{pre:?}");
    assert!(pre.prefix_reused > 0 && pre.candidates == 0, "{pre:?}");
    let after = s.rank(&req(&[], Some(&cands))).unwrap();
    assert_eq!(after.stats.prefix_reused, after.stats.prefix_rows, "{:?}", after.stats);
    let fresh = e.rank(&req(&[&ids[0], &ids[1], &ids[2], &ids[5]], Some(&cands))).unwrap();
    assert_close(&after, &fresh, 1e-4);
    assert_eq!(after.stats.decoded_rows + pre.decoded_rows + pre.prefix_reused, fresh.stats.decoded_rows);
    // Cancelled: an error, and the session still ranks right.
    s.push(&ids[6]).unwrap();
    let token = CancelToken::new();
    token.cancel();
    let r = s.prefill(&RankRequest { cancel: Some(token), ..req(&[], Some(&cands)) });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let fresh = e.rank(&req(&[&ids[0], &ids[1], &ids[2], &ids[5], &ids[6]], Some(&cands))).unwrap();
    assert_close(&s.rank(&req(&[], Some(&cands))).unwrap(), &fresh, 1e-4);
}

#[test]
fn concurrent_ranks_equal_serial_results() {
    let (m, p) = tiny();
    // 8 threads share 4 contexts: under emulation (qemu-aarch64, 10-50x slower) a thread can wait
    // longer than the 10 s default for one; this test is about the results, not the wait.
    let cfg = EngineConfig { max_contexts: 4, threads: 1, context_wait: Duration::from_secs(600), ..f32_cfg() };
    let e = Arc::new(Engine::open(&m, &p, cfg).unwrap());
    let ids = catalog_ids();
    let requests: Vec<RankRequest> = (0..8)
        .map(|t| {
            let mut r = req(&[&ids[t], &ids[(t * 7 + 3) % ids.len()]], Some(&ids[(t + 10)..(t + 18)]));
            r.top_k = Some(5);
            r
        })
        .collect();
    let serial: Vec<Ranking> = requests.iter().map(|r| e.rank(r).unwrap()).collect();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (e, r, want) = (e.clone(), requests[t].clone(), serial[t].clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let got = e.rank(&r).unwrap();
                    assert_close(&got, &want, 1e-5);
                    assert_eq!(
                        got.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
                        want.items.iter().map(|i| &i.id).collect::<Vec<_>>()
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a ranking thread panicked");
    }
}

#[test]
fn cancellation_and_deadline_return_promptly() {
    let m = model("llama-wide", "f16");
    let p = pack(&m, "llama-wide", "prompt-llama-wide");
    let e = Arc::new(Engine::open(&m, &p, EngineConfig { threads: 2, batch_size: 16, ..Default::default() }).unwrap());
    let ids = catalog_ids();
    // Cancelled before it starts.
    let token = CancelToken::new();
    token.cancel();
    let mut r = req(&[&ids[0]], None);
    r.cancel = Some(token);
    assert!(matches!(e.rank(&r), Err(Error::Cancelled)));
    // Cancelled while running, from another thread.
    let token = CancelToken::new();
    let mut r = req(&[&ids[0], &ids[1]], None);
    r.plan = Plan::Naive;
    r.cancel = Some(token.clone());
    let t0 = Instant::now();
    let worker = {
        let e = e.clone();
        std::thread::spawn(move || e.rank(&r))
    };
    std::thread::sleep(Duration::from_millis(30));
    token.cancel();
    let res = worker.join().expect("no panic");
    assert!(matches!(res, Err(Error::Cancelled)), "{res:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "cancellation took {:?}", t0.elapsed());
    // A deadline.
    let mut r = req(&[&ids[0]], None);
    r.plan = Plan::Naive;
    r.timeout = Some(Duration::from_millis(1));
    assert!(matches!(e.rank(&r), Err(Error::DeadlineExceeded)));
    // The engine still works afterwards.
    let ok = e.rank(&req(&[&ids[0]], Some(&ids[1..4]))).unwrap();
    assert_eq!(ok.items.len(), 3);
}

#[test]
fn bad_requests_are_typed_errors() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    assert!(matches!(e.rank(&req(&[], None)), Err(Error::BadRequest(RequestError::EmptyHistory))));
    assert!(
        matches!(e.rank(&req(&["nope"], None)), Err(Error::BadRequest(RequestError::UnknownItem { id })) if id == "nope")
    );
    assert!(matches!(e.rank(&req(&[&ids[0]], Some(&[]))), Err(Error::BadRequest(RequestError::EmptyCandidates))));
    let dup = vec![ids[1].clone(), ids[2].clone(), ids[1].clone()];
    assert!(
        matches!(e.rank(&req(&[&ids[0]], Some(&dup))), Err(Error::BadRequest(RequestError::DuplicateCandidate { id })) if id == ids[1])
    );
    let unknown = vec![ids[1].clone(), "zzz".into()];
    assert!(matches!(
        e.rank(&req(&[&ids[0]], Some(&unknown))),
        Err(Error::BadRequest(RequestError::UnknownItem { .. }))
    ));
    let mut r = req(&[&ids[0]], None);
    r.top_k = Some(0);
    assert!(matches!(e.rank(&r), Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "top_k"));
    let mut r = req(&[&ids[0]], None);
    r.soft_prompt = Some("missing".into());
    assert!(matches!(e.rank(&r), Err(Error::BadRequest(RequestError::UnknownSoftPrompt { .. }))));
    // A history longer than the context: a typed error, not an abort.
    let small = Engine::open(&m, &p, EngineConfig { context_size: 32, batch_size: 16, ..f32_cfg() }).unwrap();
    let long: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    assert!(
        matches!(small.rank(&req(&long, None)), Err(Error::Capacity { resource: Resource::ContextCells, needed, available }) if needed > available)
    );
    // Still usable after errors.
    assert_eq!(e.rank(&req(&[&ids[0]], Some(&ids[1..3]))).unwrap().items.len(), 2);
}

#[test]
fn wrong_or_broken_files_are_typed_errors() {
    let (m, p) = tiny();
    let q = model("qwen2-tiny", "f32");
    let qp = pack(&q, "qwen2-tiny", "prompt-qwen2");
    // A pack for another model.
    assert!(matches!(Engine::open(&m, &qp, f32_cfg()), Err(Error::BadFile(FileError::Mismatch { .. }))));
    assert!(matches!(Engine::open(&q, &p, f32_cfg()), Err(Error::BadFile(FileError::Mismatch { .. }))));
    // The digest pin, on by default: the pack records the F32 file it was built from.
    let opened = Engine::open(&m, &p, f32_cfg()).unwrap();
    assert!(matches!(opened.model_verification(), ModelVerification::Digest(_)));
    let m8 = model("llama-tiny", "q8_0");
    let e = Engine::open(&m8, &p, f32_cfg());
    assert!(
        matches!(e, Err(Error::BadFile(FileError::Mismatch { ref field, .. })) if field.contains("sha256")),
        "{:?}",
        e.err()
    );
    // Without verification the same pack works with the quantized model (same tokenizer/width).
    let unverified = Engine::open(&m8, &p, EngineConfig { verify_checksum: false, ..f32_cfg() }).unwrap();
    assert_eq!(unverified.model_verification(), ModelVerification::Skipped);
    // Truncated and non-GGUF files.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&m).unwrap();
    let cut = dir.path().join("cut.gguf");
    for at in [0, 3, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        assert!(
            matches!(Engine::open(&cut, &p, f32_cfg()), Err(Error::BadFile(FileError::Invalid { .. }))),
            "model cut at {at}"
        );
    }
    let pbytes = std::fs::read(&p).unwrap();
    for at in [0, 10, pbytes.len() / 2, pbytes.len() - 1] {
        std::fs::write(&cut, &pbytes[..at]).unwrap();
        assert!(
            matches!(Engine::open(&m, &cut, f32_cfg()), Err(Error::BadFile(FileError::Invalid { .. }))),
            "pack cut at {at}"
        );
    }
    let txt = dir.path().join("x.gguf");
    std::fs::write(&txt, b"hello, not a model").unwrap();
    assert!(matches!(Engine::open(&txt, &p, f32_cfg()), Err(Error::BadFile(FileError::Invalid { .. }))));
    assert!(
        matches!(Engine::open(&m, &m, f32_cfg()), Err(Error::BadFile(FileError::Invalid { .. }))),
        "a model is not a pack"
    );
    assert!(matches!(
        Engine::open(dir.path().join("absent.gguf"), &p, f32_cfg()),
        Err(Error::BadFile(FileError::Io { .. }))
    ));
}

#[test]
fn kv_f16_stays_close_to_f32() {
    let (m, p) = tiny();
    let ids = catalog_ids();
    let r = req(&[&ids[0], &ids[1]], Some(&ids[2..22]));
    let a = Engine::open(&m, &p, f32_cfg()).unwrap().rank(&r).unwrap();
    let b = Engine::open(&m, &p, EngineConfig { kv_type: KvType::F16, ..f32_cfg() }).unwrap().rank(&r).unwrap();
    assert_close(&a, &b, 0.05);
}

#[test]
fn default_flash_attention_stays_close_to_exact_and_keeps_top_k_exact() {
    let (m, p) = tiny();
    let ids = catalog_ids();
    let r = req(&[&ids[0], &ids[1]], Some(&ids[2..22]));
    assert!(EngineConfig::default().flash_attention);
    let exact = Engine::open(&m, &p, f32_cfg()).unwrap().rank(&r).unwrap();
    let engine = Engine::open(&m, &p, EngineConfig { threads: 2, ..Default::default() }).unwrap();
    let all = engine.rank(&r).unwrap();
    assert_close(&exact, &all, 0.05);
    // Pruned top-k over the whole catalog under flash attention: the top 5 of scoring everything,
    // up to the kernel's rounding (batches differ between the two plans, so near-ties may swap).
    let r = req(&[&ids[0], &ids[1]], None);
    let all = engine.rank(&r).unwrap();
    let top = engine.rank(&RankRequest { top_k: Some(5), ..r.clone() }).unwrap();
    assert_eq!(top.items.len(), 5);
    assert!(top.stats.pruned > 0, "{:?}", top.stats);
    let full = by_id(&all);
    let fifth = all.items[4].logprob;
    for it in &top.items {
        let (s, _) = full[&it.id];
        assert!((s - it.logprob).abs() < 1e-2, "{}: {s} vs {}", it.id, it.logprob);
        assert!(s > fifth - 1e-2, "{} ({s}) is not in the top 5 (5th: {fifth})", it.id);
    }
}

#[test]
fn waiting_for_a_context_honours_deadline_and_cancel() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, EngineConfig { max_contexts: 1, ..f32_cfg() }).unwrap();
    let ids = catalog_ids();
    // The session holds the only context: a rank must wait, and gives up when told to.
    let session = e.session(None).unwrap();
    let mut r = req(&[&ids[0]], Some(&ids[1..4]));
    r.timeout = Some(Duration::from_millis(50));
    let t0 = Instant::now();
    assert!(matches!(e.rank(&r), Err(Error::DeadlineExceeded)));
    assert!(t0.elapsed() < Duration::from_secs(5), "waited {:?}", t0.elapsed());
    let token = CancelToken::new();
    let mut r = req(&[&ids[0]], Some(&ids[1..4]));
    r.cancel = Some(token.clone());
    let worker = {
        let e = e.clone();
        std::thread::spawn(move || e.rank(&r))
    };
    std::thread::sleep(Duration::from_millis(30));
    token.cancel();
    assert!(matches!(worker.join().expect("no panic"), Err(Error::Cancelled)));
    // Closing the session gives the context back.
    drop(session);
    assert_eq!(e.rank(&req(&[&ids[0]], Some(&ids[1..4]))).unwrap().items.len(), 3);
}

#[test]
fn held_contexts_make_calls_busy_not_wedged() {
    let (m, p) = tiny();
    let wait = Duration::from_millis(150);
    let e = Engine::open(&m, &p, EngineConfig { max_contexts: 2, context_wait: wait, ..f32_cfg() }).unwrap();
    let ids = catalog_ids();
    // Two open sessions hold both contexts; calls without a timeout of their own, and a third
    // session, end as Busy after the configured wait instead of blocking forever.
    let held = [e.session(None).unwrap(), e.session(None).unwrap()];
    let t0 = Instant::now();
    match e.rank(&req(&[&ids[0]], Some(&ids[1..4]))) {
        Err(Error::Busy { contexts: 2, waited_ms }) => assert!(waited_ms >= 150, "{waited_ms}"),
        other => panic!("expected Busy, got {:?}", other.map(|r| r.items.len())),
    }
    assert!(t0.elapsed() >= wait && t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(matches!(e.session(None), Err(Error::Busy { .. })));
    // A request deadline sooner than the wait is the request's own error.
    let mut r = req(&[&ids[0]], Some(&ids[1..4]));
    r.timeout = Some(Duration::from_millis(20));
    assert!(matches!(e.rank(&r), Err(Error::DeadlineExceeded)));
    // A context freed while a caller waits is taken at once.
    let [a, b] = held;
    let waiter = {
        let e = e.clone();
        let r = req(&[&ids[0]], Some(&ids[1..4]));
        std::thread::spawn(move || e.rank(&r).map(|r| r.items.len()))
    };
    std::thread::sleep(Duration::from_millis(30));
    drop(a);
    assert_eq!(waiter.join().expect("no panic").unwrap(), 3);
    drop(b);
    // Zero wait: Busy at once when nothing is free; the limit itself is checked.
    let none =
        Engine::open(&m, &p, EngineConfig { max_contexts: 1, context_wait: Duration::ZERO, ..f32_cfg() }).unwrap();
    let _s = none.session(None).unwrap();
    assert!(matches!(none.rank(&req(&[&ids[0]], Some(&ids[1..4]))), Err(Error::Busy { waited_ms: 0, .. })));
    let too_long = EngineConfig { context_wait: Duration::from_secs(7200), ..f32_cfg() };
    assert!(
        matches!(Engine::open(&m, &p, too_long), Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "context_wait")
    );
}

#[test]
fn a_session_owns_what_it_needs() {
    let (m, p) = tiny();
    let ids = catalog_ids();
    let cands: Vec<String> = ids[5..12].to_vec();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let want = e.rank(&req(&[&ids[0], &ids[1]], Some(&cands))).unwrap();
    let mut s = e.session(None).unwrap();
    drop(e);
    // The session keeps the engine alive and can move to another thread.
    let got = std::thread::spawn(move || {
        s.push(&ids[0]).unwrap();
        s.push(&ids[1]).unwrap();
        s.rank(&req(&[], Some(&cands))).unwrap()
    })
    .join()
    .expect("no panic");
    assert_close(&got, &want, 1e-4);
}

#[test]
fn the_engine_plan_is_what_it_decodes() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let ids = catalog_ids();
    for cands in [Some(&ids[3..23]), None] {
        let r = req(&[&ids[0], &ids[2]], cands);
        let plan = e.plan(&r).unwrap();
        assert_eq!(plan.strategy, delrec_runtime::Strategy::SharedTrie);
        let ranking = e.rank(&r).unwrap();
        let trie_rows = plan.groups.iter().flatten().filter(|n| n.decoded).count();
        assert_eq!(plan.prefix.len(), ranking.stats.prefix_rows);
        assert_eq!(plan.prefix.len() + trie_rows, ranking.stats.decoded_rows, "{:?}", ranking.stats);
        assert_eq!(plan.sequences.len(), ranking.items.len());
        // Every candidate's scored tokens: title tokens plus the terminator.
        for item in &ranking.items {
            let at = plan.candidates.iter().position(|&c| c == item.index).unwrap();
            assert_eq!(plan.sequences[at].len(), item.n_tokens as usize);
        }
    }
    let mut r = req(&[&ids[0]], None);
    r.top_k = Some(3);
    assert!(matches!(e.plan(&r).unwrap().strategy, delrec_runtime::Strategy::BestFirst { k: 3 }));
    r.top_k = Some(0);
    assert!(matches!(e.plan(&r), Err(Error::BadRequest(RequestError::Invalid { .. }))));
}

#[test]
fn top_k_search_works_with_the_fewest_sequences() {
    // max_sequences = 2 (the prefix and one path) once made every search stall: a node deferred
    // in a round stayed deferred after pruning freed its path.
    let (m, p) = tiny();
    let ids = catalog_ids();
    let mut r = req(&[&ids[0]], None);
    r.top_k = Some(3);
    let want = Engine::open(&m, &p, f32_cfg()).unwrap().rank(&RankRequest { exhaustive: true, ..r.clone() }).unwrap();
    for n in [2u32, 3, 4] {
        let e = Engine::open(&m, &p, EngineConfig { max_sequences: n, ..f32_cfg() }).unwrap();
        let got = e.rank(&r).unwrap();
        assert!(got.stats.pruned > 0, "max_sequences {n}: {:?}", got.stats);
        assert_eq!(
            got.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
            want.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
            "max_sequences {n}"
        );
        assert_close(&got, &want, 1e-4);
    }
}

#[test]
fn a_pack_truncated_under_an_open_engine_does_not_crash_it() {
    // The catalog is read at every rank; it must not live in mapped pages of a file that can be
    // cut under us (SIGBUS). Model updates must be atomic renames (llama.cpp maps the weights).
    let (m, p) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("p.gguf");
    std::fs::copy(&p, &q).unwrap();
    let e = Engine::open(&m, &q, f32_cfg()).unwrap();
    let ids = catalog_ids();
    let want = e.rank(&req(&[&ids[0], &ids[1]], None)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&q).unwrap().set_len(0).unwrap();
    let got = e.rank(&req(&[&ids[0], &ids[1]], None)).unwrap();
    assert_close(&got, &want, 1e-6);
    assert_eq!(e.pack().n_items(), ids.len());
    assert_eq!(e.pack().item_title(3), want.items.iter().find(|i| i.index == 3).map(|i| i.title.as_str()));
}

#[test]
fn settings_out_of_range_are_bad_requests_naming_the_field() {
    let (m, p) = tiny();
    let bad = [
        ("threads", EngineConfig { threads: 3000, ..f32_cfg() }),
        ("context_size", EngineConfig { context_size: 8, ..f32_cfg() }),
        ("context_size", EngineConfig { context_size: u32::MAX, ..f32_cfg() }),
        ("batch_size", EngineConfig { batch_size: 0, ..f32_cfg() }),
        ("batch_size", EngineConfig { batch_size: 1 << 20, ..f32_cfg() }),
        ("max_sequences", EngineConfig { max_sequences: 1, ..f32_cfg() }),
        ("max_sequences", EngineConfig { max_sequences: 257, ..f32_cfg() }),
        ("max_contexts", EngineConfig { max_contexts: 0, ..f32_cfg() }),
        ("max_contexts", EngineConfig { max_contexts: 1000, ..f32_cfg() }),
    ];
    for (name, cfg) in bad {
        match Engine::open(&m, &p, cfg.clone()) {
            Err(Error::BadRequest(RequestError::Invalid { field, .. })) => assert_eq!(field, name, "{cfg:?}"),
            other => panic!("{name}: {:?}", other.map(|_| "opened")),
        }
    }
    // A memory limit refuses what would not fit before allocating it (a 128k-cell context here).
    let big = EngineConfig { context_size: 1 << 17, memory_limit: Some(256 << 20), ..f32_cfg() };
    match Engine::open(&m, &p, big) {
        Err(Error::Capacity { resource: Resource::Memory, needed, available }) => {
            assert!(needed > available && available == 256 << 20, "{needed} vs {available}")
        }
        other => panic!("expected Capacity(Memory), got {:?}", other.map(|_| "opened")),
    }
    let fits = Engine::open(&m, &p, f32_cfg()).unwrap().memory_budget().total();
    assert!(Engine::open(&m, &p, EngineConfig { memory_limit: Some(fits), ..f32_cfg() }).is_ok());
    let short = EngineConfig { memory_limit: Some(fits / 2), ..f32_cfg() };
    assert!(matches!(Engine::open(&m, &p, short), Err(Error::Capacity { resource: Resource::Memory, .. })));
    // The bounds themselves are accepted, and serve every plan: with 2 sequences (the prefix and
    // one path) the top-k search still finds the exhaustive top k.
    let edge = EngineConfig { max_sequences: 2, max_contexts: 1, batch_size: 1, ..f32_cfg() };
    let e = Engine::open(&m, &p, edge).unwrap();
    let ids = catalog_ids();
    let mut r = req(&[&ids[0], &ids[1]], None);
    r.top_k = Some(3);
    let pruned = e.rank(&r).unwrap();
    r.exhaustive = true;
    let full = e.rank(&r).unwrap();
    assert_eq!(
        pruned.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        full.items.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
}

#[test]
fn a_model_is_loaded_from_the_descriptor_that_was_checked() {
    // What llama.cpp loads is what our checks read through the same open file, even if another
    // file is renamed over the path in between.
    use delrec_runtime::llm::{Model, ModelParams};
    let tiny = model("llama-tiny", "f32");
    let wide = model("llama-wide", "f16");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::copy(&tiny, &path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let staged = dir.path().join("staged.gguf");
    std::fs::copy(&wide, &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let from_fd = Model::load_file(&file, &path, ModelParams::default()).unwrap();
    let from_path = Model::load(&path, ModelParams::default()).unwrap();
    assert_ne!(from_fd.n_embd(), from_path.n_embd(), "the two fixtures must differ in width");
    let want = Model::load(&tiny, ModelParams::default()).unwrap();
    assert_eq!((from_fd.n_embd(), from_fd.n_vocab()), (want.n_embd(), want.n_vocab()));
}
