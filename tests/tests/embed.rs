//! `Engine::embed*` on converted fixture models: the three entry points agree, results do not
//! depend on batching, and bad input is a typed error. (Parity against the numpy reference is
//! tests/parity/test_embed_parity.py.)

use std::path::PathBuf;

use delrec_runtime::{Engine, EngineConfig, Error, KvType, Pooling, RankRequest, RequestError, Resource};
use delrec_tests::{model, pack};

fn f32_cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn tiny() -> (PathBuf, PathBuf) {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    (m, p)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn texts() -> Vec<String> {
    [
        "Star Wars (1977)",
        "A",
        "Toy Story",
        "千と千尋の神隠し (2001) 🎬",
        "It's 3.14159, they'LL say! And more words here.",
    ]
    .map(String::from)
    .to_vec()
}

fn invalid_field(e: Error) -> String {
    match e {
        Error::BadRequest(RequestError::Invalid { field, .. }) => field,
        other => panic!("expected BadRequest(Invalid), got {other:?}"),
    }
}

#[test]
fn texts_tokens_and_items_agree() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let n_embd = e.model().n_embd();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let t = texts();
        let by_text = e.embed(&t, pooling).unwrap();
        assert_eq!(by_text.len(), t.len());
        assert!(by_text.iter().all(|v| v.len() == n_embd && v.iter().all(|x| x.is_finite())));
        let toks: Vec<Vec<i32>> = t.iter().map(|s| e.model().tokenize(s, false).unwrap()).collect();
        assert!(max_diff(&by_text, &e.embed_tokens(&toks, pooling).unwrap()) <= 1e-6);

        let items: Vec<u32> = (0..e.pack().n_items() as u32).collect();
        let by_item = e.embed_items(&items, pooling).unwrap();
        let item_toks: Vec<Vec<i32>> = items.iter().map(|&i| e.pack().item_tokens(i).unwrap().to_vec()).collect();
        assert!(max_diff(&by_item, &e.embed_tokens(&item_toks, pooling).unwrap()) <= 1e-6);
        // Different items, different embeddings.
        assert!(max_diff(&by_item[..1], &by_item[1..2]) > 1e-3);
    }
    // Mean and last differ (except for one-token inputs, where they are the same state).
    let mean = e.embed(&texts(), Pooling::Mean).unwrap();
    let last = e.embed(&texts(), Pooling::Last).unwrap();
    assert!(max_diff(&mean[..1], &last[..1]) > 1e-3);
    assert!(max_diff(&mean[1..2], &last[1..2]) <= 1e-6, "a one-token text: mean == last");
}

#[test]
fn batching_does_not_change_embeddings() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let items: Vec<u32> = (0..e.pack().n_items() as u32).collect();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let all = e.embed_items(&items, pooling).unwrap();
        let alone: Vec<Vec<f32>> = items.iter().flat_map(|&i| e.embed_items(&[i], pooling).unwrap()).collect();
        assert!(max_diff(&all, &alone) <= 1e-5, "{pooling:?}: {}", max_diff(&all, &alone));
        // Two and three sequences per decode, 40-row decodes (the longest item has 36 tokens):
        // many decodes, odd sizes.
        for max_sequences in [2, 3] {
            let cfg = EngineConfig { max_sequences, batch_size: 40, context_size: 64, ..f32_cfg() };
            let small = Engine::open(&m, &p, cfg).unwrap().embed_items(&items, pooling).unwrap();
            assert!(max_diff(&all, &small) <= 1e-5, "{pooling:?}/{max_sequences}: {}", max_diff(&all, &small));
        }
    }
}

#[test]
fn default_config_is_close_to_the_exact_path() {
    let (m, p) = tiny();
    let exact = Engine::open(&m, &p, f32_cfg()).unwrap().embed(&texts(), Pooling::Mean).unwrap();
    let fast = Engine::open(&m, &p, EngineConfig { threads: 2, ..Default::default() }).unwrap();
    let d = max_diff(&exact, &fast.embed(&texts(), Pooling::Mean).unwrap());
    eprintln!("F16 cache + flash attention vs exact: max |Δ| = {d:.3e}");
    assert!(d < 5e-2, "{d}");
}

#[test]
fn bad_input_is_a_typed_error_and_the_engine_stays_usable() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    assert_eq!(invalid_field(e.embed(&[], Pooling::Mean).unwrap_err()), "texts");
    assert_eq!(invalid_field(e.embed(&["x".into(), String::new()], Pooling::Mean).unwrap_err()), "texts[1]");
    assert_eq!(invalid_field(e.embed_tokens(&[], Pooling::Last).unwrap_err()), "seqs");
    assert_eq!(invalid_field(e.embed_tokens(&[vec![1], vec![]], Pooling::Last).unwrap_err()), "seqs[1]");
    let n_vocab = e.model().n_vocab() as i32;
    assert_eq!(invalid_field(e.embed_tokens(&[vec![1, n_vocab]], Pooling::Mean).unwrap_err()), "seqs[0]");
    assert_eq!(invalid_field(e.embed_tokens(&[vec![-1]], Pooling::Mean).unwrap_err()), "seqs[0]");
    assert_eq!(invalid_field(e.embed_items(&[], Pooling::Mean).unwrap_err()), "indices");
    let n = e.pack().n_items() as u32;
    assert_eq!(invalid_field(e.embed_items(&[0, n], Pooling::Mean).unwrap_err()), "indices[1]");
    let many = vec!["x".to_string(); Engine::MAX_EMBED_INPUTS + 1];
    assert_eq!(invalid_field(e.embed(&many, Pooling::Mean).unwrap_err()), "texts");
    let huge = "a".repeat(Engine::MAX_EMBED_TEXT_BYTES + 1);
    assert_eq!(invalid_field(e.embed(&[huge], Pooling::Mean).unwrap_err()), "texts[0]");

    // Longer than one decode: Capacity, with the numbers.
    let small = Engine::open(&m, &p, EngineConfig { batch_size: 16, ..f32_cfg() }).unwrap();
    let long = vec![1; 17];
    match small.embed_tokens(&[vec![1, 2], long], Pooling::Mean).unwrap_err() {
        Error::Capacity { resource: Resource::ContextCells, needed: 17, available: 16 } => {}
        other => panic!("expected Capacity, got {other:?}"),
    }
    assert_eq!(small.embed_tokens(&[vec![1; 16]], Pooling::Mean).unwrap().len(), 1);

    // Still usable: embedding and ranking.
    assert_eq!(e.embed(&texts(), Pooling::Last).unwrap().len(), texts().len());
    let ids: Vec<String> = (0..3).map(|i| e.pack().item_id(i).unwrap().to_string()).collect();
    let r = e.rank(&RankRequest {
        history: vec![ids[0].clone()],
        candidates: Some(ids[1..].to_vec()),
        ..Default::default()
    });
    assert_eq!(r.unwrap().items.len(), 2);
}

#[test]
fn concurrent_calls() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, f32_cfg()).unwrap();
    let want = e.embed(&texts(), Pooling::Mean).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || e.embed(&texts(), Pooling::Mean).unwrap())
        })
        .collect();
    for h in handles {
        assert!(max_diff(&want, &h.join().unwrap()) <= 1e-6);
    }
}
