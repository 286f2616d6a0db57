//! The cascade (`Engine::recommend`) on a converted fixture model with a random SASRec: the
//! retrieval against a brute-force ordering, the re-rank against `rank` on the same candidates,
//! the fusion against its formula, sessions, and every bad input.
//! (The SASRec forward itself is checked against RecBole's in train/tests/test_seq_parity.py.)

use std::collections::HashMap;

use delrec_runtime::{Engine, EngineConfig, Error, KvType, RankRequest, RecommendRequest, RequestError};
use delrec_tests::{catalog_ids, model, pack, seq_pack};

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn engine() -> Engine {
    let m = model("llama-tiny", "f32");
    Engine::open(&m, seq_pack(&m, "llama-tiny", "prompt-llama"), cfg()).unwrap()
}

fn history() -> Vec<String> {
    let ids = catalog_ids();
    vec![ids[2].clone(), ids[9].clone(), ids[4].clone()]
}

fn req(n: usize) -> RecommendRequest {
    RecommendRequest { history: history(), n, ..Default::default() }
}

#[test]
fn retrieval_is_the_top_of_every_sequential_score() {
    let e = engine();
    let n_items = catalog_ids().len();
    let all = e.recommend(&RecommendRequest { llm_off: true, ..req(n_items - 3) }).unwrap();
    // Every item but the three in the history, each once, sorted by the sequential score.
    assert_eq!(all.items.len(), n_items - 3);
    let h = history();
    assert!(all.items.iter().all(|i| !h.contains(&i.id) && i.llm_score.is_none() && i.score == i.seq_score));
    assert!(all.items.windows(2).all(|w| w[0].seq_score >= w[1].seq_score));
    let spread = all.items[0].seq_score - all.items[all.items.len() - 1].seq_score;
    assert!(spread > 0.1, "random weights should spread the scores ({spread})");
    // A smaller n is the prefix of the same order.
    let top5 = e.recommend(&RecommendRequest { llm_off: true, ..req(5) }).unwrap();
    assert_eq!(top5.items, all.items[..5].to_vec());
    assert_eq!(top5.stats.retrieved, 8, "the pack's retrieve = 8");
    // include_history: the history items compete too, with the same scores for the rest.
    let incl = e.recommend(&RecommendRequest { llm_off: true, include_history: true, ..req(n_items) }).unwrap();
    assert_eq!(incl.items.len(), n_items);
    let by_id: HashMap<_, _> = incl.items.iter().map(|i| (i.id.clone(), i.seq_score)).collect();
    for i in &all.items {
        assert_eq!(by_id[&i.id], i.seq_score);
    }
}

#[test]
fn the_sequential_model_reads_the_latest_max_len_items() {
    let e = engine();
    let ids = catalog_ids();
    let long: Vec<String> = ids[10..19].to_vec(); // 9 items; the fixture's SASRec reads 6
    let r = |h: &[String]| {
        e.recommend(&RecommendRequest {
            history: h.to_vec(),
            n: 5,
            llm_off: true,
            include_history: true,
            ..Default::default()
        })
        .unwrap()
        .items
    };
    assert_eq!(r(&long), r(&long[3..]));
    assert_ne!(r(&long), r(&long[2..8]), "the latest items matter");
}

#[test]
fn rerank_scores_are_rank_scores_and_the_order_is_the_fusion() {
    let e = engine();
    let r = e.recommend(&RecommendRequest { retrieve: Some(10), ..req(10) }).unwrap();
    assert_eq!(r.items.len(), 10);
    // The LLM scores are what `rank` gives on the retrieved candidates.
    let ids: Vec<String> = r.items.iter().map(|i| i.id.clone()).collect();
    let ranked = e.rank(&RankRequest { history: history(), candidates: Some(ids), ..Default::default() }).unwrap();
    let llm: HashMap<_, _> = ranked.items.iter().map(|i| (i.id.clone(), i.score)).collect();
    for i in &r.items {
        assert!((i.llm_score.unwrap() - llm[&i.id]).abs() < 1e-9, "{}", i.id);
    }
    // fused = 0.5 z(seq) + 0.5 z(llm), standardized over the retrieved ten.
    let z = |xs: Vec<f64>| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        xs.into_iter().map(move |x| (x - m) / sd).collect::<Vec<_>>()
    };
    let zs = z(r.items.iter().map(|i| i.seq_score).collect());
    let zl = z(r.items.iter().map(|i| i.llm_score.unwrap()).collect());
    for ((i, a), b) in r.items.iter().zip(zs).zip(zl) {
        assert!((i.score - (0.5 * a + 0.5 * b)).abs() < 1e-9, "{}: {} vs {}", i.id, i.score, 0.5 * a + 0.5 * b);
    }
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));
    // Weight 0: the sequential order; weight 1: the LLM's order.
    let seq_only = e.recommend(&RecommendRequest { retrieve: Some(10), llm_weight: Some(0.0), ..req(10) }).unwrap();
    let plain = e.recommend(&RecommendRequest { llm_off: true, ..req(10) }).unwrap();
    let names = |r: &delrec_runtime::Recommendation| r.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(names(&seq_only), names(&plain));
    let llm_only = e.recommend(&RecommendRequest { retrieve: Some(10), llm_weight: Some(1.0), ..req(10) }).unwrap();
    assert_eq!(names(&llm_only), ranked.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
    assert_ne!(names(&seq_only), names(&llm_only), "the fixture should make the two orders differ");
    // The re-rank's counters come back.
    assert_eq!(r.stats.rank.as_ref().map(|s| s.candidates), Some(10));
}

#[test]
fn a_session_recommends_like_a_fresh_call() {
    let e = engine();
    let mut s = e.session(None).unwrap();
    let fresh = e.recommend(&req(5)).unwrap();
    s.set_history(&history()).unwrap();
    let a = s.recommend(&req(5)).unwrap();
    let b = s.recommend(&req(5)).unwrap();
    for (x, y) in fresh.items.iter().zip(&a.items).chain(a.items.iter().zip(&b.items)) {
        assert_eq!(x.id, y.id);
        assert!((x.score - y.score).abs() < 1e-6);
    }
    assert!(b.stats.rank.unwrap().prefix_reused > 0, "the second call reuses the decoded prefix");
}

#[test]
fn bad_requests_are_typed_errors() {
    let e = engine();
    let n_items = catalog_ids().len();
    let invalid = |r: RecommendRequest, field: &str| match e.recommend(&r) {
        Err(Error::BadRequest(RequestError::Invalid { field: f, .. })) if f == field => {}
        other => panic!("{field}: {other:?}"),
    };
    invalid(req(0), "n");
    invalid(req(n_items - 2), "n"); // three are in the history
    invalid(RecommendRequest { retrieve: Some(3), ..req(5) }, "retrieve");
    invalid(RecommendRequest { retrieve: Some(n_items), ..req(5) }, "retrieve");
    invalid(RecommendRequest { llm_weight: Some(1.5), ..req(5) }, "llm_weight");
    invalid(RecommendRequest { llm_weight: Some(f32::NAN), ..req(5) }, "llm_weight");
    let mut r = req(5);
    r.history.push("no-such-item".into());
    assert!(
        matches!(e.recommend(&r), Err(Error::BadRequest(RequestError::UnknownItem { id })) if id == "no-such-item")
    );
    assert!(matches!(
        e.recommend(&RecommendRequest { history: vec![], ..req(5) }),
        Err(Error::BadRequest(RequestError::EmptyHistory))
    ));
    // "not-in-catalog" is a model item the import dropped: unknown here.
    let r = RecommendRequest { history: vec!["not-in-catalog".into()], ..req(5) };
    assert!(matches!(e.recommend(&r), Err(Error::BadRequest(RequestError::UnknownItem { .. }))));
    // A pack without a sequential model.
    let m = model("llama-tiny", "f32");
    let plain = Engine::open(&m, pack(&m, "llama-tiny", "prompt-llama"), cfg()).unwrap();
    assert!(matches!(plain.recommend(&req(5)), Err(Error::BadRequest(RequestError::NoSequentialModel))));
    // The engine still works after all that.
    assert_eq!(e.recommend(&req(3)).unwrap().items.len(), 3);
}

fn tslrec_engine() -> Engine {
    let m = model("llama-tiny", "f32");
    Engine::open(&m, delrec_tests::tslrec_pack(&m, "llama-tiny", "prompt-llama"), cfg()).unwrap()
}

#[test]
fn an_item_added_on_the_device_is_recommended() {
    let e = tslrec_engine();
    let n_pack = e.pack().n_items();
    // The sequential model's favourite for this history.
    let top = e.recommend(&RecommendRequest { llm_off: true, ..req(3) }).unwrap().items;
    let best = &top[0];
    // A new item with the same title gets the same vector as the trained table holds for `best`
    // (the table is proj(LLM embedding), the way TSLRec builds it), so the two share the top
    // (their order is float rounding: the projection is summed in another order here).
    let copy = e.add_item("added-copy", &best.title).unwrap();
    assert_eq!((copy.index as usize, copy.retrievable), (n_pack, true));
    let novel = e.add_item("added-novel", "Midnight Harbor Lights (2031)").unwrap();
    assert_eq!(novel.index as usize, n_pack + 1);
    assert_eq!(e.n_items(), n_pack + 2);
    let r = e.recommend(&RecommendRequest { llm_off: true, ..req(3) }).unwrap().items;
    let mut top2 = [r[0].id.as_str(), r[1].id.as_str()];
    top2.sort();
    assert_eq!(top2, ["added-copy", best.id.as_str()], "{:?}", &r[..3]);
    let copy_score = r.iter().find(|i| i.id == "added-copy").map_or(f64::NAN, |i| i.seq_score);
    assert!((copy_score - best.seq_score).abs() < 1e-4, "{copy_score} vs {}", best.seq_score);
    assert!(r[2].seq_score < best.seq_score - 1e-3, "a clear third: {:?}", r[2]);
    // Both added items are scored over the whole catalog, with finite scores.
    let all = e.recommend(&RecommendRequest { llm_off: true, ..req(n_pack + 2 - 3) }).unwrap().items;
    let novel_score = all.iter().find(|i| i.id == "added-novel").map(|i| i.seq_score);
    assert!(novel_score.is_some_and(f64::is_finite), "{novel_score:?}");
    // The LLM re-rank scores the added copy exactly like the original (same tokens).
    let fused = e.recommend(&RecommendRequest { retrieve: Some(6), ..req(6) }).unwrap().items;
    let llm = |id: &str| fused.iter().find(|i| i.id == id).and_then(|i| i.llm_score);
    assert!(llm("added-copy").is_some() && llm("added-copy") == llm(&best.id), "{fused:?}");
    // An added item can be in the history, and `rank` sees added items too.
    let mut h = history();
    h.push("added-novel".into());
    let with =
        e.recommend(&RecommendRequest { history: h.clone(), n: 3, llm_off: true, ..Default::default() }).unwrap();
    assert!(with.items.iter().all(|i| i.id != "added-novel"));
    let ranked = e.rank(&RankRequest { history: h, ..Default::default() }).unwrap();
    assert_eq!(ranked.items.len(), n_pack + 2);
    // Sessions accept added ids.
    let mut s = e.session(None).unwrap();
    s.push("added-copy").unwrap();
}

#[test]
fn adding_bad_items_is_a_typed_error() {
    let e = tslrec_engine();
    let ids = catalog_ids();
    let dup = |r: delrec_runtime::Result<delrec_runtime::AddedInfo>, want: &str| match r {
        Err(Error::BadRequest(RequestError::DuplicateItem { id })) => assert_eq!(id, want),
        other => panic!("{want}: {other:?}"),
    };
    dup(e.add_item(&ids[0], "Whatever"), &ids[0]);
    e.add_item("x1", "A New Film").unwrap();
    dup(e.add_item("x1", "Another"), "x1");
    for (id, title, field) in [("", "T", "id"), ("  ", "T", "id"), ("x2", "", "title"), ("x2", " \t", "title")] {
        match e.add_item(id, title) {
            Err(Error::BadRequest(RequestError::Invalid { field: f, .. })) => assert_eq!(f, field),
            other => panic!("{id:?}/{title:?}: {other:?}"),
        }
    }
    let long = "a".repeat(5000);
    assert!(matches!(e.add_item("x3", &long), Err(Error::BadRequest(RequestError::Invalid { .. }))));
    assert_eq!(e.n_items(), ids.len() + 1);
    // Without an item projection an added item is ranked but not retrieved.
    let plain = engine();
    let a = plain.add_item("x4", "Some Title (1999)").unwrap();
    assert!(!a.retrievable);
    let all = plain.recommend(&RecommendRequest { llm_off: true, ..req(ids.len() - 3) }).unwrap();
    assert!(all.items.iter().all(|i| i.id != "x4"));
    let r = plain.rank(&RankRequest { history: history(), candidates: Some(vec!["x4".into()]), ..Default::default() });
    assert_eq!(r.unwrap().items[0].id, "x4");
}
