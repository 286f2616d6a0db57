//! Progress reports of long work (ranking, opening) and stopping it through them; the log sink.
//! The sink is process-wide, so everything that reads it is one test.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use delrec_runtime::log::{set_log_sink, LogLevel};
use delrec_runtime::{
    CancelToken, Engine, EngineConfig, Error, LoadStage, OnProgress, OpenOptions, RankProgress, RankRequest,
};
use delrec_tests::{catalog_ids, model, pack};

fn tiny() -> (PathBuf, PathBuf) {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    (m, p)
}

/// Small decodes, so that a whole-catalog rank takes many.
fn cfg() -> EngineConfig {
    EngineConfig { threads: 2, max_outputs: 8, batch_size: 16, ..Default::default() }
}

fn whole_catalog(ids: &[String]) -> RankRequest {
    RankRequest { history: vec![ids[0].clone(), ids[3].clone()], ..Default::default() }
}

fn recorder() -> (OnProgress, Arc<Mutex<Vec<RankProgress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (OnProgress::new(move |p| s.lock().unwrap().push(p)), seen)
}

#[test]
fn a_rank_reports_every_decode_and_ends_at_its_counters() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, cfg()).unwrap();
    let ids = catalog_ids();
    for top_k in [None, Some(3)] {
        let (on, seen) = recorder();
        let r = e.rank(&RankRequest { top_k, progress: Some(on), ..whole_catalog(&ids) }).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), r.stats.decode_calls, "one report per decode ({top_k:?})");
        for (i, w) in seen.windows(2).enumerate() {
            assert!(w[1].decoded_rows > w[0].decoded_rows, "report {i}: rows must grow: {w:?}");
            assert!(w[1].planned_rows >= w[0].planned_rows, "report {i}: the plan never shrinks: {w:?}");
        }
        assert!(seen.iter().all(|p| p.decoded_rows <= p.planned_rows), "{seen:?}");
        let last = seen.last().unwrap();
        assert_eq!((last.decoded_rows, last.decode_calls), (r.stats.decoded_rows, r.stats.decode_calls));
        if top_k.is_none() {
            // Every candidate scored: the plan was exact.
            assert_eq!(last.planned_rows, last.decoded_rows, "{last:?}");
        }
    }
}

#[test]
fn a_cancel_from_the_progress_callback_stops_at_the_next_decode() {
    let (m, p) = tiny();
    let e = Engine::open(&m, &p, cfg()).unwrap();
    let ids = catalog_ids();
    let full = e.rank(&whole_catalog(&ids)).unwrap();
    assert!(full.stats.decode_calls > 4, "the rank must take several decodes: {:?}", full.stats);
    let token = CancelToken::new();
    let t = token.clone();
    let calls = Arc::new(Mutex::new(0usize));
    let c = calls.clone();
    let on = OnProgress::new(move |_| {
        *c.lock().unwrap() += 1;
        t.cancel();
    });
    let r = e.rank(&RankRequest { cancel: Some(token), progress: Some(on), ..whole_catalog(&ids) });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(*calls.lock().unwrap(), 1, "no decode after the cancel");
    // The engine serves the next request as before.
    assert_eq!(e.rank(&whole_catalog(&ids)).unwrap().items, full.items);
}

#[test]
fn an_open_reports_the_digest_and_the_load_and_can_be_cancelled() {
    let (m, p) = tiny();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let opts = OpenOptions::default().progress(move |p| s.lock().unwrap().push(p));
    // A fresh process has hashed nothing: the digest is computed (Verify) before the load.
    let e = Engine::open_with(&m, &p, cfg(), &opts).unwrap();
    let seen = seen.lock().unwrap().clone();
    let load: Vec<f32> = seen.iter().filter(|p| p.stage == LoadStage::Load).map(|p| p.fraction).collect();
    assert!(seen.iter().any(|p| p.stage == LoadStage::Verify), "{seen:?}");
    let first_load = seen.iter().position(|p| p.stage == LoadStage::Load).unwrap();
    assert!(seen[first_load..].iter().all(|p| p.stage == LoadStage::Load), "verify comes first: {seen:?}");
    assert!(load.windows(2).all(|w| w[1] >= w[0]) && load.last() == Some(&1.0), "{load:?}");
    drop(e);

    // Cancelled before it starts, and in the middle of llama.cpp's load.
    let token = CancelToken::new();
    token.cancel();
    let r = Engine::open_with(&m, &p, cfg(), &OpenOptions::default().cancel(token));
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.err());
    let token = CancelToken::new();
    let t = token.clone();
    let opts = OpenOptions::default()
        .progress(move |p| {
            if p.stage == LoadStage::Load && p.fraction > 0.0 {
                t.cancel();
            }
        })
        .cancel(token);
    let r = Engine::open_with(&m, &p, cfg(), &opts);
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.err());
    // Nothing is left half-open: the same files open again.
    Engine::open(&m, &p, cfg()).unwrap();
}

#[test]
fn the_log_sink_gets_llama_cpp_lines_and_no_error_for_a_normal_cancel() {
    let (m, p) = tiny();
    // Other tests of this binary open engines meanwhile (llama.cpp warns at context creation):
    // only this thread's lines count (the decodes of these ranks run on it).
    let me = std::thread::current().id();
    let lines = Arc::new(Mutex::new(Vec::<(LogLevel, String)>::new()));
    let l = lines.clone();
    set_log_sink(
        Some(Arc::new(move |level, line: &str| {
            if std::thread::current().id() == me {
                l.lock().unwrap().push((level, line.to_string()))
            }
        })),
        LogLevel::Debug,
    );
    let e = Engine::open(&m, &p, cfg()).unwrap();
    let opened = lines.lock().unwrap().clone();
    assert!(opened.iter().any(|(_, l)| l.contains("llama_model_load") || l.contains("print_info")), "{opened:?}");
    assert!(opened.iter().all(|(_, l)| !l.is_empty() && !l.ends_with('\n')), "whole lines, no newlines");
    // A cancel inside a decode (llama.cpp logs that the decode failed): no error reaches the app.
    let token = CancelToken::new();
    let t = token.clone();
    let before = lines.lock().unwrap().len();
    let on = OnProgress::new(move |_| t.cancel());
    let ids = catalog_ids();
    let r = e.rank(&RankRequest { cancel: Some(token.clone()), progress: Some(on), ..whole_catalog(&ids) });
    assert!(matches!(r, Err(Error::Cancelled)));
    // And one cancelled from another thread while llama.cpp decodes.
    let token = CancelToken::new();
    let t = token.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(5));
        t.cancel();
    });
    let _ = e.rank(&RankRequest { cancel: Some(token), plan: delrec_runtime::Plan::Naive, ..whole_catalog(&ids) });
    stopper.join().unwrap();
    let after: Vec<_> = lines.lock().unwrap()[before..].to_vec();
    assert!(after.iter().all(|(level, _)| *level < LogLevel::Warn), "a normal cancel logged: {after:?}");
    // A sink that panics (a foreign callback that threw) costs its lines, nothing else.
    set_log_sink(Some(Arc::new(|_, _: &str| panic!("the app's logger threw"))), LogLevel::Debug);
    let e2 = Engine::open(&m, &p, cfg()).unwrap();
    assert!(!e2.rank(&whole_catalog(&ids)).unwrap().items.is_empty());
    set_log_sink(None, LogLevel::Debug);
}
