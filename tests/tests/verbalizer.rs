//! Verbalizer scoring (DELRec as published: one prediction at `{mask}`, OpenPrompt's
//! `ManualVerbalizer`) on the converted llama fixture: scores against an oracle written the way
//! OpenPrompt computes them (padded label-word matrices, float32), ties reported, one pass over
//! the whole catalog, `{candidates}` listing, items added on the device, sessions, bad input.
//! (The parity against PyTorch + the OpenPrompt reference is train/tests/test_verbalizer_parity.py.)

use std::collections::BTreeMap;

use delrec_convert::pack::VerbalizerSpec;
use delrec_runtime::format::pack::{Handler, LabelRule};
use delrec_runtime::{Engine, EngineConfig, Error, KvType, PrefixRow, RankRequest, Ranking, Strategy};
use delrec_tests::{catalog_ids, fixtures, model, verbalizer_pack};

const PLAIN: &str = "Recently watched:{history}.\nNext:{mask}";
const LISTED: &str = "{soft:default}Recently watched:{history}.\nPick one of: {candidates}.\nNext:{mask}";

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn spec(handler: Handler) -> VerbalizerSpec {
    VerbalizerSpec { handler, ..Default::default() }
}

fn engine(template: &str, handler: Handler, tag: &str) -> Engine {
    let m = model("llama-tiny", "f32");
    let soft =
        if template.contains("{soft:default}") { vec![("default", fixtures().join("prompt-llama"))] } else { vec![] };
    let p = verbalizer_pack(&m, "llama-tiny", template, &soft, Some(spec(handler)), tag);
    Engine::open(&m, &p, cfg()).unwrap()
}

fn req(history: &[String], candidates: Option<Vec<String>>) -> RankRequest {
    RankRequest { history: history.to_vec(), candidates, ..Default::default() }
}

fn scores(r: &Ranking) -> BTreeMap<String, f64> {
    r.items.iter().map(|i| (i.id.clone(), i.score)).collect()
}

/// What OpenPrompt's `ManualVerbalizer.process_logits` computes, in its tensor layout and in
/// float32: label_words_ids padded to (classes, max words, max tokens), the handler over the
/// token axis with `words_ids_mask`, `-10000` on padded words, softmax over everything, log(p +
/// 1e-15), the masked mean over each class's words.
fn openprompt_oracle(logits: &[f32], words: &[Vec<Vec<i32>>], handler: Handler) -> Vec<f32> {
    let max_w = words.iter().map(Vec::len).max().unwrap();
    let max_t = words.iter().flatten().map(Vec::len).max().unwrap();
    let mut lw = vec![vec![0f32; max_w]; words.len()];
    let mut word_mask = vec![vec![0f32; max_w]; words.len()];
    for (c, ws) in words.iter().enumerate() {
        for w in 0..max_w {
            let toks: Vec<f32> = (0..max_t)
                .map(|t| ws.get(w).and_then(|x| x.get(t)).map_or(logits[0], |&id| logits[id as usize]))
                .collect();
            let mask: Vec<f32> = (0..max_t).map(|t| ws.get(w).map_or(0.0, |x| (t < x.len()) as u8 as f32)).collect();
            lw[c][w] = match handler {
                Handler::First => toks[0],
                Handler::Max => toks.iter().zip(&mask).map(|(x, m)| x - 1000.0 * (1.0 - m)).fold(f32::MIN, f32::max),
                Handler::Mean => {
                    toks.iter().zip(&mask).map(|(x, m)| x * m).sum::<f32>() / (mask.iter().sum::<f32>() + 1e-15)
                }
            };
            word_mask[c][w] = (w < ws.len()) as u8 as f32;
            lw[c][w] -= 10000.0 * (1.0 - word_mask[c][w]);
        }
    }
    let max = lw.iter().flatten().copied().fold(f32::MIN, f32::max);
    let z: f32 = lw.iter().flatten().map(|x| (x - max).exp()).sum();
    lw.iter()
        .zip(&word_mask)
        .map(|(row, m)| {
            let logp: f32 = row.iter().zip(m).map(|(x, m)| (((x - max).exp() / z) + 1e-15).ln() * m).sum();
            logp / m.iter().sum::<f32>()
        })
        .collect()
}

/// Each catalog item's label words as the converter tokenizes them (`" " + word`, HF tokenizer).
fn label_words(e: &Engine) -> Vec<Vec<Vec<i32>>> {
    let v = e.pack().verbalizer.as_ref().unwrap();
    (0..e.pack().n_items() as u32).map(|i| v.words(i).unwrap().map(<[i32]>::to_vec).collect()).collect()
}

/// The logits at the mask, computed apart from the engine: the plan's prefix tokens in one
/// sequence (`sequence_logits`, a fresh context).
fn logits_at_mask(e: &Engine, r: &RankRequest) -> Vec<f32> {
    let plan = e.plan(r).unwrap();
    assert_eq!(plan.strategy, Strategy::Verbalizer);
    let tokens: Vec<i32> = plan
        .prefix
        .iter()
        .map(|row| match row {
            PrefixRow::Token(t) => *t,
            PrefixRow::Soft { .. } => panic!("the oracle template has no soft prompt"),
        })
        .collect();
    delrec_runtime::llm::sequence_logits(e.model(), None, &tokens, 2).unwrap().pop().unwrap()
}

#[test]
fn scores_equal_openprompt_over_the_whole_catalog_in_one_pass() {
    let ids = catalog_ids();
    let history = vec![ids[0].clone(), ids[5].clone(), ids[11].clone()];
    for (handler, tag) in [(Handler::First, "first"), (Handler::Mean, "mean"), (Handler::Max, "max")] {
        let e = engine(PLAIN, handler, tag);
        let r = req(&history, None);
        let got = e.rank(&r).unwrap();
        // One pass: the prompt's rows decoded once, every item scored from the last one.
        assert_eq!(got.items.len(), ids.len());
        assert_eq!(got.stats.decoded_rows, got.stats.prefix_rows, "{tag}");
        assert_eq!(got.stats.candidates, ids.len());
        let want = openprompt_oracle(&logits_at_mask(&e, &r), &label_words(&e), handler);
        let got = scores(&got);
        let mut worst = 0f64;
        for (i, id) in ids.iter().enumerate() {
            worst = worst.max((got[id] - want[i] as f64).abs());
        }
        assert!(worst < 1e-4, "{tag}: max |Δ| {worst} against the OpenPrompt-style oracle");
        // Probabilities over the catalog's label words: each class's mean log-p is below 0.
        assert!(got.values().all(|&s| s < 0.0 && s.is_finite()));
    }
}

#[test]
fn first_token_ties_are_reported() {
    let ids = catalog_ids();
    let e = engine(PLAIN, Handler::First, "ties-first");
    let r = e.rank(&req(&ids[..2], None)).unwrap();
    // "Star Wars …" and "Star Trek …" share the first token " Star": one score, reported.
    let star: Vec<_> = r.items.iter().filter(|i| i.title.starts_with("Star ")).collect();
    assert!(star.len() >= 4);
    assert!(star.iter().all(|i| i.score == star[0].score), "first-token classes must tie exactly");
    assert!(star.iter().all(|i| i.ties as usize >= star.len() - 1));
    // Tied items keep catalog order among themselves.
    let idx: Vec<u32> = star.iter().map(|i| i.index).collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    // The mean handler reads every token: no tie among them.
    let m = engine(PLAIN, Handler::Mean, "ties-mean");
    let r = m.rank(&req(&ids[..2], None)).unwrap();
    let star: Vec<f64> = r.items.iter().filter(|i| i.title.starts_with("Star ")).map(|i| i.score).collect();
    for (a, x) in star.iter().enumerate() {
        assert!(star[a + 1..].iter().all(|y| y != x), "mean-handler scores tie: {star:?}");
    }
    assert!(r.items.iter().all(|i| i.ties == 0 || i.title.matches(' ').count() == 0 || i.ties > 0));
}

#[test]
fn a_candidate_scores_the_same_in_a_short_list_and_in_the_whole_catalog() {
    let ids = catalog_ids();
    let e = engine(PLAIN, Handler::Mean, "subset");
    let history = vec![ids[3].clone(), ids[9].clone()];
    let all = scores(&e.rank(&req(&history, None)).unwrap());
    let some: Vec<String> = ids[10..15].to_vec();
    let r = e.rank(&RankRequest { top_k: Some(3), ..req(&history, Some(some.clone())) }).unwrap();
    assert_eq!(r.items.len(), 3);
    for it in &r.items {
        assert_eq!(it.score, all[&it.id], "{}: the class set is the catalog, whatever is asked", it.id);
    }
}

#[test]
fn the_candidates_slot_lists_the_request_and_needs_one() {
    let ids = catalog_ids();
    let e = engine(LISTED, Handler::First, "listed");
    let history = vec![ids[0].clone(), ids[1].clone()];
    let e1 = e.rank(&req(&history, None)).unwrap_err();
    assert!(matches!(e1, Error::BadRequest(_)), "{e1:?}");
    assert!(e1.to_string().contains("candidates"), "{e1}");
    let few = e.rank(&req(&history, Some(ids[4..6].to_vec()))).unwrap();
    let more = e.rank(&req(&history, Some(ids[4..9].to_vec()))).unwrap();
    // The listed titles are prompt rows: more candidates, a longer prompt, other scores.
    assert!(more.stats.prefix_rows > few.stats.prefix_rows);
    let p = e.plan(&req(&history, Some(ids[4..6].to_vec()))).unwrap();
    let soft_rows = p.prefix.iter().filter(|r| matches!(r, PrefixRow::Soft { .. })).count();
    assert!(soft_rows > 0, "the soft prompt sits in the prompt");
    let (a, b) = (scores(&few), scores(&more));
    assert_ne!(a[&ids[4]], b[&ids[4]]);
}

#[test]
fn an_item_added_on_the_device_gets_label_words_and_is_ranked() {
    let ids = catalog_ids();
    let e = engine(PLAIN, Handler::Mean, "added");
    let history = vec![ids[2].clone(), ids[6].clone()];
    let before = scores(&e.rank(&req(&history, None)).unwrap());
    let info = e.add_item("new-1", "Brand New Film (2031)").unwrap();
    let r = req(&history, None);
    let after = e.rank(&r).unwrap();
    assert_eq!(after.items.len(), ids.len() + 1);
    let got = scores(&after)["new-1"];
    // Its label words: " Brand New Film (2031)" and " Brand New Film", tokenized on the device
    // as the converter tokenizes (checked against the pack's own words for a pack title).
    let mut words = label_words(&e);
    let tok = |s: &str| e.model().tokenize(s, false).unwrap();
    assert_eq!(tok(" Star Wars (1977)"), words[0][0]);
    words
        .push(LabelRule::TitleAndNoYear.words("Brand New Film (2031)").iter().map(|w| tok(&format!(" {w}"))).collect());
    let want = openprompt_oracle(&logits_at_mask(&e, &r), &words, Handler::Mean);
    assert!((got - want[info.index as usize] as f64).abs() < 1e-4, "{got} vs {}", want[info.index as usize]);
    // The class set grew: every other item's probability mass shrank a little.
    assert!(ids.iter().all(|id| scores(&after)[id] < before[id]));
}

#[test]
fn a_session_reuses_the_prediction() {
    let ids = catalog_ids();
    let e = engine(PLAIN, Handler::First, "session");
    let mut s = e.session(None).unwrap();
    s.push(&ids[0]).unwrap();
    s.push(&ids[7]).unwrap();
    let r = RankRequest { history: vec![], ..Default::default() };
    let a = s.rank(&r).unwrap();
    let b = s.rank(&r).unwrap();
    assert_eq!(b.stats.decoded_rows, 0, "nothing to decode the second time");
    let fresh = e.rank(&req(&[ids[0].clone(), ids[7].clone()], None)).unwrap();
    let (fa, fb) = (scores(&fresh), scores(&b));
    for (id, x) in &fa {
        assert!((x - fb[id]).abs() < 1e-4, "{id}");
    }
    assert_eq!(scores(&a), fb);
}
