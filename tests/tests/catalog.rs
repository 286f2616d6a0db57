//! The live catalog: items retitled and removed at run time, and items given inline in one
//! request, on the converted llama fixture (title likelihood, the cascade and the verbalizer).

use std::collections::BTreeMap;

use delrec_convert::pack::VerbalizerSpec;
use delrec_runtime::format::pack::Handler;
use delrec_runtime::{
    Engine, EngineConfig, Error, InlineItem, KvType, RankRequest, Ranking, RecommendRequest, RequestError,
};
use delrec_tests::{catalog_ids, model, pack, seq_pack, verbalizer_pack};

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn engine() -> Engine {
    let m = model("llama-tiny", "f32");
    Engine::open(&m, pack(&m, "llama-tiny", "prompt-llama"), cfg()).unwrap()
}

fn scores(r: &Ranking) -> BTreeMap<String, f64> {
    r.items.iter().map(|i| (i.id.clone(), i.score)).collect()
}

fn history(ids: &[String]) -> Vec<String> {
    vec![ids[0].clone(), ids[4].clone()]
}

fn inline(id: &str, title: &str) -> InlineItem {
    InlineItem { id: id.into(), title: title.into() }
}

#[test]
fn an_inline_item_ranks_as_the_same_title_in_the_catalog_does() {
    let e = engine();
    let ids = catalog_ids();
    let (_, title3) = e.item(3).unwrap();
    let cands = vec![ids[3].clone(), ids[7].clone(), ids[9].clone()];
    let r = e
        .rank(&RankRequest {
            history: history(&ids),
            candidates: Some(cands.clone()),
            inline: vec![inline("x-copy", &title3), inline("x-new", "Harbor Lights (2031)")],
            ..Default::default()
        })
        .unwrap();
    let s = scores(&r);
    assert_eq!(s.len(), 5, "{s:?}");
    // Same tokens, same prompt: the same log-likelihood.
    assert!((s["x-copy"] - s[&ids[3]]).abs() < 1e-6, "{} vs {}", s["x-copy"], s[&ids[3]]);
    // The same as adding the item for good.
    let added = engine();
    added.add_item("x-new", "Harbor Lights (2031)").unwrap();
    let mut with_added = cands.clone();
    with_added.push("x-new".into());
    let a = added
        .rank(&RankRequest { history: history(&ids), candidates: Some(with_added), ..Default::default() })
        .unwrap();
    assert!((scores(&a)["x-new"] - s["x-new"]).abs() < 1e-6);
    // Only inline items, and the whole catalog plus them.
    let only = e
        .rank(&RankRequest {
            history: history(&ids),
            candidates: Some(vec![]),
            inline: vec![inline("x-new", "Harbor Lights (2031)")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(only.items.len(), 1);
    let all = e
        .rank(&RankRequest {
            history: history(&ids),
            inline: vec![inline("x-new", "Harbor Lights (2031)")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.items.len(), ids.len() + 1);
    // Inline items live for their request only.
    assert!(e.item_index("x-new").is_none());
    assert_eq!(e.rank(&RankRequest { history: history(&ids), ..Default::default() }).unwrap().items.len(), ids.len());
}

#[test]
fn bad_inline_items_are_typed_errors() {
    let e = engine();
    let ids = catalog_ids();
    let req = |inline: Vec<InlineItem>| RankRequest { history: history(&ids), inline, ..Default::default() };
    assert!(matches!(
        e.rank(&req(vec![inline(&ids[2], "Taken Id")])),
        Err(Error::BadRequest(RequestError::DuplicateItem { id })) if id == ids[2]
    ));
    assert!(matches!(
        e.rank(&req(vec![inline("a", "One"), inline("a", "Two")])),
        Err(Error::BadRequest(RequestError::DuplicateItem { .. }))
    ));
    assert!(matches!(e.rank(&req(vec![inline("b", "  ")])), Err(Error::BadRequest(RequestError::Invalid { .. }))));
    let many: Vec<InlineItem> = (0..5000).map(|i| inline(&format!("n{i}"), "T")).collect();
    assert!(
        matches!(e.rank(&req(many)), Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "inline")
    );
    // An inline id named again in `candidates`.
    let r = e.rank(&RankRequest {
        history: history(&ids),
        candidates: Some(vec!["c".into()]),
        inline: vec![inline("c", "Three")],
        ..Default::default()
    });
    assert!(
        matches!(&r, Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "candidates"),
        "{r:?}"
    );
    // The engine serves the next request.
    assert_eq!(e.rank(&req(vec![])).unwrap().items.len(), ids.len());
}

#[test]
fn a_removed_item_is_never_recommended_and_histories_keep_it() {
    let e = engine();
    let ids = catalog_ids();
    let before = e.rank(&RankRequest { history: history(&ids), ..Default::default() }).unwrap();
    let gone = before.items[0].id.clone();
    assert!(e.remove_item(&gone).unwrap());
    assert!(!e.remove_item(&gone).unwrap(), "removing twice changes nothing");
    assert_eq!(e.n_live_items(), ids.len() - 1);
    let after = e.rank(&RankRequest { history: history(&ids), ..Default::default() }).unwrap();
    assert_eq!(after.items.len(), ids.len() - 1);
    assert!(after.items.iter().all(|i| i.id != gone));
    // The others score as before (title likelihood does not depend on the candidate set; the
    // decodes are batched differently, hence the engine tests' 1e-4).
    let b = scores(&before);
    let worst = after.items.iter().map(|i| (i.score - b[&i.id]).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "max |Δ| {worst}");
    // Named as a candidate: refused. In a history: fine.
    let r = e.rank(&RankRequest { history: history(&ids), candidates: Some(vec![gone.clone()]), ..Default::default() });
    assert!(
        matches!(&r, Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "candidates"),
        "{r:?}"
    );
    let h = vec![gone.clone(), ids[1].clone()];
    assert!(!e
        .rank(&RankRequest { history: h.clone(), top_k: Some(3), ..Default::default() })
        .unwrap()
        .items
        .is_empty());
    let mut s = e.session(None).unwrap();
    s.push(&gone).unwrap();
    assert!(s.rank(&RankRequest { top_k: Some(3), ..Default::default() }).unwrap().items.iter().all(|i| i.id != gone));
    assert!(matches!(e.remove_item("no-such"), Err(Error::BadRequest(RequestError::UnknownItem { .. }))));
}

#[test]
fn a_removed_item_is_not_retrieved_by_the_cascade() {
    let m = model("llama-tiny", "f32");
    let e = Engine::open(&m, seq_pack(&m, "llama-tiny", "prompt-llama"), cfg()).unwrap();
    let ids = catalog_ids();
    let req = RecommendRequest { history: history(&ids), n: 5, retrieve: Some(8), llm_off: true, ..Default::default() };
    let before = e.recommend(&req).unwrap();
    let gone = before.items[0].id.clone();
    e.remove_item(&gone).unwrap();
    let after = e.recommend(&req).unwrap();
    assert!(after.items.iter().all(|i| i.id != gone), "{:?}", after.items);
    // The rest keeps its order: the next best moved up.
    assert_eq!(after.items[0].id, before.items[1].id);
}

#[test]
fn a_retitled_item_scores_as_its_new_title() {
    let e = engine();
    let ids = catalog_ids();
    let (_, title9) = e.item(9).unwrap();
    let cands = Some(vec![ids[2].clone(), ids[9].clone()]);
    let req = RankRequest { history: history(&ids), candidates: cands, ..Default::default() };
    let before = scores(&e.rank(&req).unwrap());
    let info = e.replace_item(&ids[2], &title9).unwrap();
    assert_eq!(info.index, 2);
    assert_eq!(e.item(2).unwrap().1, title9);
    let after = scores(&e.rank(&req).unwrap());
    assert!((after[&ids[2]] - before[&ids[9]]).abs() < 1e-6, "{after:?} / {before:?}");
    // An added item, retitled.
    e.add_item("x1", "First Title").unwrap();
    e.replace_item("x1", &title9).unwrap();
    let r = e
        .rank(&RankRequest { history: history(&ids), candidates: Some(vec!["x1".into()]), ..Default::default() })
        .unwrap();
    assert!((r.items[0].score - before[&ids[9]]).abs() < 1e-6);
    assert!(matches!(e.replace_item("no-such", "T"), Err(Error::BadRequest(RequestError::UnknownItem { .. }))));
    assert!(matches!(e.replace_item("x1", ""), Err(Error::BadRequest(RequestError::Invalid { .. }))));
}

#[test]
fn the_verbalizer_normalizes_over_the_live_catalog() {
    let m = model("llama-tiny", "f32");
    let spec = VerbalizerSpec { handler: Handler::Mean, ..Default::default() };
    let p = verbalizer_pack(&m, "llama-tiny", "Recently watched:{history}.\nNext:{mask}", &[], Some(spec), "live");
    let e = Engine::open(&m, &p, cfg()).unwrap();
    let ids = catalog_ids();
    let req = RankRequest { history: history(&ids), ..Default::default() };
    let before = scores(&e.rank(&req).unwrap());
    e.remove_item(&ids[5]).unwrap();
    let after = scores(&e.rank(&req).unwrap());
    assert_eq!(after.len(), ids.len() - 1);
    // One class fewer: every other class's probability grew.
    assert!(after.iter().all(|(id, s)| *s > before[id]), "{after:?}");
    // Retitled to another item's title: its label words, so its score, become that item's.
    e.replace_item(&ids[7], &e.item(8).unwrap().1).unwrap();
    let r = scores(&e.rank(&req).unwrap());
    assert!((r[&ids[7]] - r[&ids[8]]).abs() < 1e-9, "{} vs {}", r[&ids[7]], r[&ids[8]]);
}
