//! `delrec-stress`: load and misuse stress for one engine, and a memory probe.
//!
//! ```text
//! delrec-stress [--threads 16] [--calls 1000] [--seconds N] [--seed S] [--watchdog-s 60] [--out report.json]
//! delrec-stress rss [--fixture llama-tiny] [--max-contexts 2] [--context-size 2048] [--batch-size 512] [--kv f32|f16]
//!                   [--flash-attention on|off] [--threads 1] [--out probe.json]
//! ```
//!
//! **Stress.** One `delrec_runtime::Engine` on the tiny converted fixture model and its pack with
//! a sequential model (and one engine through the FFI layer, `delrec-ffi`), both in the exact
//! configuration (F32 KV cache, classic attention, one thread per decode, 4 contexts). First the
//! serial reference of every request shape; then `--threads` threads make `--calls` calls each,
//! chosen at random (seeded): ranks and recommends, sessions (open, push, rank, drop), calls
//! cancelled from another thread, calls with tiny timeouts, engine clones dropped while others
//! run, bad requests, sessions that hold a context while their thread calls the engine (so calls
//! wait for contexts), and through the FFI: ranks, cancels, bad requests, and the last `Arc` of a
//! session or an engine dropped on another thread while a call on it runs. Every success must
//! equal the serial result of its shape: the same ids in the same order, scores within
//! [`TOL`]. Errors are allowed only where they can arise: `Cancelled` for calls with a cancelled
//! token, `DeadlineExceeded` for calls with a timeout, `Busy` for calls that wait for a context,
//! the typed `BadRequest` for bad requests. Each call runs under `catch_unwind` (a panic is a
//! failure) and under a watchdog (a call running longer than `--watchdog-s` fails the run).
//! After the mix, every context of both pools must be free again. The report (JSON, stdout and
//! `--out`) counts calls by kind and outcome; the exit status is 1 on any mismatch, panic,
//! unexpected error or hang. `--seconds` bounds the mix: no call starts after it.
//!
//! **`rss`.** Opens an engine (tiny model, the pack with a sequential model), puts every context
//! to work (sessions hold all but one, each ranks the whole catalog; then a whole-catalog rank
//! and a recommend on the last), and prints `VmHWM` (peak resident set) before opening and at
//! the end with `Engine::memory_budget` (`tests/tests/memory.rs`).

// The FFI's calls return its own (large) `DelrecError`; closures here pass it through as is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use delrec_runtime::{
    CancelToken, Engine, EngineConfig, Error, KvType, RankRequest, Ranking, RecommendRequest, Recommendation,
    RequestError,
};
use delrec_tests::{catalog_ids, model, seq_pack};
use serde_json::{json, Value};

/// Scores of a success against the serial reference (the exact configuration is deterministic
/// per shape; `tests/tests/engine.rs` holds sessions to fresh ranks at the same tolerance).
const TOL: f64 = 1e-4;
const MAX_CONTEXTS: usize = 4;

type Res<T> = std::result::Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("rss") => rss(&args[1..]),
        Some("--help" | "-h") => {
            println!(
                "usage: delrec-stress [--threads N] [--calls N] [--seconds N] [--seed S] [--watchdog-s N] [--out F]"
            );
            println!("       delrec-stress rss [--fixture F] [--max-contexts N] [--context-size N] [--batch-size N] [--kv f32|f16]");
            println!("                         [--flash-attention on|off] [--threads N] [--out F]");
            Ok(0)
        }
        _ => stress(&args),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("delrec-stress: {e}");
            std::process::exit(2)
        }
    }
}

/// `--name value` options.
struct Opts(BTreeMap<String, String>);

impl Opts {
    fn parse(args: &[String], known: &[&str]) -> Res<Self> {
        let mut m = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a.strip_prefix("--").ok_or_else(|| format!("unexpected argument {a:?}"))?;
            if !known.contains(&name) {
                return Err(format!("unknown option --{name} (known: {})", known.join(", ")));
            }
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            m.insert(name.to_string(), v.clone());
        }
        Ok(Opts(m))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn write_out(path: Option<&str>, v: &Value) -> Res<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{text}");
    if let Some(p) = path {
        std::fs::write(p, text + "\n").map_err(|e| format!("writing {p}: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Results, normalized for comparison
// ---------------------------------------------------------------------------------------------

/// A result: ids in order, with the numbers that must agree (rank: score, Σ ln p, tokens;
/// recommend: fused, sequential and LLM scores).
type Out = Vec<(String, [f64; 3])>;

fn of_ranking(r: &Ranking) -> Out {
    r.items.iter().map(|i| (i.id.clone(), [i.score, i.logprob, f64::from(i.n_tokens)])).collect()
}

fn of_recommendation(r: &Recommendation) -> Out {
    r.items.iter().map(|i| (i.id.clone(), [i.score, i.seq_score, i.llm_score.unwrap_or(f64::NAN)])).collect()
}

fn of_ffi_ranking(r: &delrec_ffi::Ranking) -> Out {
    r.items.iter().map(|i| (i.id.clone(), [i.score, i.logprob, f64::from(i.n_tokens)])).collect()
}

/// `Ok(max |Δ|)` when `got` equals `want` (same ids, same order, numbers within [`TOL`]).
fn compare(got: &Out, want: &Out) -> Res<f64> {
    if got.len() != want.len() {
        return Err(format!("{} items, the serial result has {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for (pos, ((gi, gv), (wi, wv))) in got.iter().zip(want).enumerate() {
        if gi != wi {
            return Err(format!("position {pos}: {gi}, the serial result has {wi}"));
        }
        for (g, w) in gv.iter().zip(wv) {
            if g.is_nan() && w.is_nan() {
                continue;
            }
            let d = (g - w).abs();
            if d.is_nan() || d > TOL {
                return Err(format!("{gi}: {gv:?} vs serial {wv:?}"));
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Equal to the serial result (or, for bad requests, the typed error expected).
    Ok,
    Cancelled,
    DeadlineExceeded,
    /// No context freed up in time.
    Busy,
    Mismatch,
    Unexpected,
    Panic,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Busy => "busy",
            Outcome::Mismatch => "mismatch",
            Outcome::Unexpected => "unexpected_error",
            Outcome::Panic => "panic",
        }
    }

    fn failed(self) -> bool {
        matches!(self, Outcome::Mismatch | Outcome::Unexpected | Outcome::Panic)
    }
}

/// An outcome, with what went wrong for failures.
struct Done {
    outcome: Outcome,
    detail: Option<String>,
    diff: f64,
}

impl Done {
    fn ok(diff: f64) -> Self {
        Done { outcome: Outcome::Ok, detail: None, diff }
    }

    fn allowed(outcome: Outcome) -> Self {
        Done { outcome, detail: None, diff: 0.0 }
    }

    fn fail(outcome: Outcome, detail: String) -> Self {
        Done { outcome, detail: Some(detail), diff: 0.0 }
    }
}

/// Which errors a call may end with besides its result.
#[derive(Clone, Copy)]
struct Allow {
    cancelled: bool,
    deadline: bool,
}

const STRICT: Allow = Allow { cancelled: false, deadline: false };

/// `Busy` comes with the pool's bounded wait (a newer runtime); matched by name so that this
/// binary builds against runtimes with and without it.
fn is_busy(debug: &str) -> bool {
    debug.starts_with("Busy")
}

fn error_outcome(e: &Error, allow: Allow) -> Done {
    match e {
        Error::Cancelled if allow.cancelled => Done::allowed(Outcome::Cancelled),
        Error::DeadlineExceeded if allow.deadline => Done::allowed(Outcome::DeadlineExceeded),
        e if is_busy(&format!("{e:?}")) => Done::allowed(Outcome::Busy),
        e => Done::fail(Outcome::Unexpected, format!("{e:?}")),
    }
}

fn ffi_error_outcome(e: &delrec_ffi::DelrecError, allow: Allow) -> Done {
    use delrec_ffi::DelrecError as D;
    match e {
        D::Cancelled { .. } if allow.cancelled => Done::allowed(Outcome::Cancelled),
        D::DeadlineExceeded { .. } if allow.deadline => Done::allowed(Outcome::DeadlineExceeded),
        e if is_busy(&format!("{e:?}")) => Done::allowed(Outcome::Busy),
        e => Done::fail(Outcome::Unexpected, format!("{e:?}")),
    }
}

fn check(got: std::result::Result<Out, Error>, want: &Out, allow: Allow) -> Done {
    match got {
        Ok(out) => match compare(&out, want) {
            Ok(d) => Done::ok(d),
            Err(m) => Done::fail(Outcome::Mismatch, m),
        },
        Err(e) => error_outcome(&e, allow),
    }
}

fn check_ffi(got: std::result::Result<Out, delrec_ffi::DelrecError>, want: &Out, allow: Allow) -> Done {
    match got {
        Ok(out) => match compare(&out, want) {
            Ok(d) => Done::ok(d),
            Err(m) => Done::fail(Outcome::Mismatch, m),
        },
        Err(e) => ffi_error_outcome(&e, allow),
    }
}

/// The first failure of a sequence of steps, else the last step's outcome (a call cut short by
/// its token or deadline ends the sequence).
fn steps(results: impl IntoIterator<Item = Done>) -> Done {
    let mut last = Done::ok(0.0);
    let mut diff = 0.0f64;
    for d in results {
        diff = diff.max(d.diff);
        if d.outcome != Outcome::Ok {
            return d;
        }
        last = d;
    }
    last.diff = diff;
    last
}

// ---------------------------------------------------------------------------------------------
// PRNG (splitmix64)
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn micros(&mut self, max: u64) -> Duration {
        Duration::from_micros(self.next() % max.max(1))
    }

    /// Log-uniform in `[lo, hi)` microseconds: delays from "before the call starts" to "after it
    /// ends" under any load, so both outcomes of a cancel or a deadline come up.
    fn log_micros(&mut self, lo: u64, hi: u64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let (lo, hi) = ((lo.max(1) as f64).ln(), (hi.max(2) as f64).ln());
        Duration::from_micros((lo + u * (hi - lo)).exp() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes and their serial results
// ---------------------------------------------------------------------------------------------

/// The fixed request shapes and their serial results.
struct Refs {
    ids: Vec<String>,
    ranks: Vec<(RankRequest, Out)>,
    recommends: Vec<(RecommendRequest, Out)>,
    /// A session: these pushes, a rank after each (`session_req`, whose history is ignored).
    session_pushes: Vec<String>,
    session_req: RankRequest,
    session_steps: Vec<Out>,
    /// The same session with every push first and one rank (the FFI sessions).
    session_once: Out,
}

fn rank_shapes(ids: &[String]) -> Vec<RankRequest> {
    let h = |ix: &[usize]| ix.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();
    vec![
        RankRequest { history: h(&[0, 3, 7]), candidates: Some(ids[10..22].to_vec()), ..Default::default() },
        RankRequest {
            history: h(&[1, 2]),
            candidates: Some(ids[5..17].to_vec()),
            top_k: Some(3),
            ..Default::default()
        },
        RankRequest { history: h(&[4]), top_k: Some(5), ..Default::default() },
        RankRequest { history: h(&[4]), top_k: Some(5), exhaustive: true, ..Default::default() },
        RankRequest { history: h(&[8, 9]), exclude_history: true, ..Default::default() },
    ]
}

fn recommend_shapes(ids: &[String]) -> Vec<RecommendRequest> {
    let h = vec![ids[2].clone(), ids[9].clone(), ids[4].clone()];
    vec![
        RecommendRequest { history: h.clone(), n: 5, ..Default::default() },
        RecommendRequest { history: h, n: 3, retrieve: Some(10), llm_weight: Some(0.3), ..Default::default() },
    ]
}

impl Refs {
    fn compute(engine: &Engine) -> Res<Self> {
        let ids = catalog_ids();
        if ids.len() < 30 {
            return Err(format!("the fixture catalog has {} items; the shapes need 30", ids.len()));
        }
        let err = |what: &str, e: Error| format!("serial {what}: {e:?}");
        let mut ranks = vec![];
        for r in rank_shapes(&ids) {
            let out = of_ranking(&engine.rank(&r).map_err(|e| err("rank", e))?);
            ranks.push((r, out));
        }
        let mut recommends = vec![];
        for r in recommend_shapes(&ids) {
            let out = of_recommendation(&engine.recommend(&r).map_err(|e| err("recommend", e))?);
            recommends.push((r, out));
        }
        let session_pushes = vec![ids[0].clone(), ids[4].clone()];
        let session_req = RankRequest { candidates: Some(ids[10..30].to_vec()), ..Default::default() };
        let mut s = engine.session(None).map_err(|e| err("session", e))?;
        let mut session_steps = vec![];
        for id in &session_pushes {
            s.push(id).map_err(|e| err("push", e))?;
            session_steps.push(of_ranking(&s.rank(&session_req).map_err(|e| err("session rank", e))?));
        }
        drop(s);
        let mut s = engine.session(None).map_err(|e| err("session", e))?;
        for id in &session_pushes {
            s.push(id).map_err(|e| err("push", e))?;
        }
        let session_once = of_ranking(&s.rank(&session_req).map_err(|e| err("session rank", e))?);
        Ok(Refs { ids, ranks, recommends, session_pushes, session_req, session_steps, session_once })
    }

    fn n_shapes(&self) -> usize {
        self.ranks.len() + self.recommends.len() + self.session_steps.len() + 1
    }
}

fn ffi_request(r: &RankRequest, cancel: Option<Arc<delrec_ffi::CancelToken>>) -> delrec_ffi::RankRequest {
    delrec_ffi::RankRequest {
        history: r.history.clone(),
        candidates: r.candidates.clone(),
        top_k: r.top_k.map(|k| k as i32),
        soft_prompt: r.soft_prompt.clone(),
        exclude_history: r.exclude_history,
        exhaustive: r.exhaustive,
        plan: None,
        cancel,
        timeout_ms: r.timeout.map(|t| t.as_millis() as i64),
        progress: None,
        inline: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------------------------

struct World {
    engine: Engine,
    ffi: Arc<delrec_ffi::Engine>,
    refs: Refs,
    model: PathBuf,
    pack: PathBuf,
    cfg: EngineConfig,
}

/// The kinds of call and their weights in the mix.
const KINDS: &[(&str, u32)] = &[
    ("rank", 18),
    ("recommend", 9),
    ("session", 9),
    ("session_cancel", 5),
    ("cancel", 8),
    ("timeout", 8),
    ("clone_drop", 5),
    ("bad_request", 9),
    ("hold_and_wait", 6),
    ("ffi_rank", 6),
    ("ffi_cancel", 4),
    ("ffi_bad_request", 3),
    ("ffi_session_close_busy", 5),
    ("ffi_engine_close_busy", 2),
];

fn pick_kind(rng: &mut Rng) -> &'static str {
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut x = (rng.next() % u64::from(total)) as u32;
    for &(name, w) in KINDS {
        if x < w {
            return name;
        }
        x -= w;
    }
    KINDS[0].0
}

/// Cancels `token` from another thread after `delay`; join the handle after the call.
fn cancel_later(delay: Duration, cancel: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        cancel();
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> Res<T> {
    h.join().map_err(|p| format!("a helper thread panicked: {}", panic_text(&p)))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl World {
    fn call(&self, kind: &str, rng: &mut Rng) -> Done {
        let w = self;
        match kind {
            "rank" => {
                let (r, want) = &w.refs.ranks[rng.below(w.refs.ranks.len())];
                check(w.engine.rank(r).map(|r| of_ranking(&r)), want, STRICT)
            }
            "recommend" => {
                let (r, want) = &w.refs.recommends[rng.below(w.refs.recommends.len())];
                check(w.engine.recommend(r).map(|r| of_recommendation(&r)), want, STRICT)
            }
            "session" => w.session(),
            "session_cancel" => w.session_cancel(rng),
            "cancel" => {
                let token = CancelToken::new();
                let t = token.clone();
                let helper = cancel_later(rng.log_micros(50, 500_000), move || t.cancel());
                let allow = Allow { cancelled: true, deadline: false };
                let done = if rng.below(3) == 0 {
                    let (r, want) = &w.refs.recommends[rng.below(w.refs.recommends.len())];
                    let r = RecommendRequest { cancel: Some(token), ..r.clone() };
                    check(w.engine.recommend(&r).map(|r| of_recommendation(&r)), want, allow)
                } else {
                    let (r, want) = &w.refs.ranks[rng.below(w.refs.ranks.len())];
                    let r = RankRequest { cancel: Some(token), ..r.clone() };
                    check(w.engine.rank(&r).map(|r| of_ranking(&r)), want, allow)
                };
                match join(helper) {
                    Ok(()) => done,
                    Err(e) => Done::fail(Outcome::Panic, e),
                }
            }
            "timeout" => {
                let timeout = Some(rng.log_micros(50, 1_000_000));
                let allow = Allow { cancelled: false, deadline: true };
                if rng.below(3) == 0 {
                    let (r, want) = &w.refs.recommends[rng.below(w.refs.recommends.len())];
                    let r = RecommendRequest { timeout, ..r.clone() };
                    check(w.engine.recommend(&r).map(|r| of_recommendation(&r)), want, allow)
                } else {
                    let (r, want) = &w.refs.ranks[rng.below(w.refs.ranks.len())];
                    let r = RankRequest { timeout, ..r.clone() };
                    check(w.engine.rank(&r).map(|r| of_ranking(&r)), want, allow)
                }
            }
            "clone_drop" => {
                // One clone dropped at once, one moved to another thread, used and dropped there,
                // while every other thread goes on with the original.
                drop(w.engine.clone());
                let e = w.engine.clone();
                let (r, want) = w.refs.ranks[rng.below(w.refs.ranks.len())].clone();
                let h = std::thread::spawn(move || {
                    let got = e.rank(&r).map(|r| of_ranking(&r));
                    drop(e);
                    got
                });
                match join(h) {
                    Ok(got) => check(got, &want, STRICT),
                    Err(e) => Done::fail(Outcome::Panic, e),
                }
            }
            "bad_request" => w.bad_request(rng),
            "hold_and_wait" => w.hold_and_wait(rng),
            "ffi_rank" => {
                let (r, want) = &w.refs.ranks[rng.below(w.refs.ranks.len())];
                check_ffi(w.ffi.rank(ffi_request(r, None)).map(|r| of_ffi_ranking(&r)), want, STRICT)
            }
            "ffi_cancel" => {
                let token = delrec_ffi::CancelToken::new();
                let t = Arc::clone(&token);
                let helper = cancel_later(rng.log_micros(50, 500_000), move || t.cancel());
                let (r, want) = &w.refs.ranks[rng.below(w.refs.ranks.len())];
                let got = w.ffi.rank(ffi_request(r, Some(token))).map(|r| of_ffi_ranking(&r));
                let done = check_ffi(got, want, Allow { cancelled: true, deadline: false });
                match join(helper) {
                    Ok(()) => done,
                    Err(e) => Done::fail(Outcome::Panic, e),
                }
            }
            "ffi_bad_request" => {
                let (r, _) = &w.refs.ranks[0];
                let bad = RankRequest { history: vec!["no-such-item".into()], ..r.clone() };
                match w.ffi.rank(ffi_request(&bad, None)) {
                    Err(delrec_ffi::DelrecError::BadRequest {
                        kind: delrec_ffi::BadRequestKind::UnknownItem,
                        item_id: Some(id),
                        ..
                    }) if id == "no-such-item" => Done::ok(0.0),
                    Err(e) => ffi_error_outcome(&e, STRICT),
                    Ok(_) => Done::fail(Outcome::Unexpected, "an unknown history id was ranked".into()),
                }
            }
            "ffi_session_close_busy" => w.ffi_session_close_busy(rng),
            "ffi_engine_close_busy" => w.ffi_engine_close_busy(rng),
            other => Done::fail(Outcome::Unexpected, format!("unknown kind {other}")),
        }
    }

    fn session(&self) -> Done {
        let refs = &self.refs;
        let mut s = match self.engine.session(None) {
            Ok(s) => s,
            Err(e) => return error_outcome(&e, STRICT),
        };
        let mut results = vec![];
        for (id, want) in refs.session_pushes.iter().zip(&refs.session_steps) {
            if let Err(e) = s.push(id) {
                return error_outcome(&e, STRICT);
            }
            let d = check(s.rank(&refs.session_req).map(|r| of_ranking(&r)), want, STRICT);
            let stop = d.outcome != Outcome::Ok;
            results.push(d);
            if stop {
                break;
            }
        }
        drop(s);
        steps(results)
    }

    /// A session's rank cancelled from another thread (maybe in the middle of decoding its
    /// prefix); the next push and rank must give the serial result all the same.
    fn session_cancel(&self, rng: &mut Rng) -> Done {
        let refs = &self.refs;
        let mut s = match self.engine.session(None) {
            Ok(s) => s,
            Err(e) => return error_outcome(&e, STRICT),
        };
        let (first, second) = (&refs.session_pushes[0], &refs.session_pushes[1]);
        if let Err(e) = s.push(first) {
            return error_outcome(&e, STRICT);
        }
        let token = CancelToken::new();
        let t = token.clone();
        let helper = cancel_later(rng.log_micros(50, 200_000), move || t.cancel());
        let req = RankRequest { cancel: Some(token), ..refs.session_req.clone() };
        let cut = check(
            s.rank(&req).map(|r| of_ranking(&r)),
            &refs.session_steps[0],
            Allow { cancelled: true, deadline: false },
        );
        if let Err(e) = join(helper) {
            return Done::fail(Outcome::Panic, e);
        }
        if cut.outcome.failed() {
            return cut;
        }
        if let Err(e) = s.push(second) {
            return error_outcome(&e, STRICT);
        }
        let after = check(s.rank(&refs.session_req).map(|r| of_ranking(&r)), &refs.session_steps[1], STRICT);
        if after.outcome != Outcome::Ok {
            return after;
        }
        // The outcome of the cancelled call is what this kind counts.
        Done { diff: cut.diff.max(after.diff), ..cut }
    }

    fn bad_request(&self, rng: &mut Rng) -> Done {
        let ids = &self.refs.ids;
        let base = RankRequest { history: vec![ids[0].clone()], ..Default::default() };
        let expect = |res: std::result::Result<(), Error>, want: fn(&RequestError) -> bool, what: &str| match res {
            Err(Error::BadRequest(r)) if want(&r) => Done::ok(0.0),
            Err(e) => {
                let d = error_outcome(&e, STRICT);
                if d.outcome.failed() {
                    Done::fail(Outcome::Unexpected, format!("{what}: {e:?}"))
                } else {
                    d
                }
            }
            Ok(()) => Done::fail(Outcome::Unexpected, format!("{what}: accepted")),
        };
        let rank = |r: RankRequest| self.engine.rank(&r).map(|_| ());
        match rng.below(8) {
            0 => expect(
                rank(RankRequest { history: vec!["no-such-item".into()], ..base }),
                |r| matches!(r, RequestError::UnknownItem { id } if id == "no-such-item"),
                "unknown history id",
            ),
            1 => expect(
                rank(RankRequest { candidates: Some(vec![ids[1].clone(), "zzz".into()]), ..base }),
                |r| matches!(r, RequestError::UnknownItem { id } if id == "zzz"),
                "unknown candidate",
            ),
            2 => expect(
                rank(RankRequest { candidates: Some(vec![ids[1].clone(), ids[2].clone(), ids[1].clone()]), ..base }),
                |r| matches!(r, RequestError::DuplicateCandidate { .. }),
                "duplicate candidate",
            ),
            3 => expect(
                rank(RankRequest { history: vec![], ..base }),
                |r| matches!(r, RequestError::EmptyHistory),
                "empty history",
            ),
            4 => expect(
                rank(RankRequest { top_k: Some(0), ..base }),
                |r| matches!(r, RequestError::Invalid { field, .. } if field == "top_k"),
                "top_k 0",
            ),
            5 => expect(
                rank(RankRequest { soft_prompt: Some("missing".into()), ..base }),
                |r| matches!(r, RequestError::UnknownSoftPrompt { .. }),
                "unknown soft prompt",
            ),
            6 => expect(
                self.engine
                    .recommend(&RecommendRequest { history: vec!["no-such-item".into()], n: 3, ..Default::default() })
                    .map(|_| ()),
                |r| matches!(r, RequestError::UnknownItem { .. }),
                "recommend, unknown history id",
            ),
            _ => match self.engine.session(None) {
                Ok(mut s) => expect(
                    s.push("no-such-item"),
                    |r| matches!(r, RequestError::UnknownItem { .. }),
                    "session push of an unknown id",
                ),
                Err(e) => error_outcome(&e, STRICT),
            },
        }
    }

    /// A session holds a context while its thread ranks on the engine with a timeout: the rank
    /// may have to wait for a context (all held), and gives up at its deadline.
    fn hold_and_wait(&self, rng: &mut Rng) -> Done {
        let s = match self.engine.session(None) {
            Ok(s) => s,
            Err(e) => return error_outcome(&e, STRICT),
        };
        let (r, want) = &self.refs.ranks[rng.below(self.refs.ranks.len())];
        let r = RankRequest { timeout: Some(rng.log_micros(5_000, 1_000_000)), ..r.clone() };
        let d = check(self.engine.rank(&r).map(|r| of_ranking(&r)), want, Allow { cancelled: false, deadline: true });
        std::thread::sleep(rng.micros(10_000));
        drop(s);
        d
    }

    /// The app drops its last reference to a session on one thread while another thread's call on
    /// it runs: the call completes, and the session (and its context) goes when it returns.
    fn ffi_session_close_busy(&self, rng: &mut Rng) -> Done {
        let refs = &self.refs;
        let s = match self.ffi.session(None) {
            Ok(s) => s,
            Err(e) => return ffi_error_outcome(&e, STRICT),
        };
        for id in &refs.session_pushes {
            if let Err(e) = s.push(id.clone()) {
                return ffi_error_outcome(&e, STRICT);
            }
        }
        let worker = {
            let s = Arc::clone(&s);
            let req = ffi_request(&refs.session_req, None);
            std::thread::spawn(move || s.rank(req).map(|r| of_ffi_ranking(&r)))
        };
        std::thread::sleep(rng.micros(2000));
        drop(s);
        match join(worker) {
            Ok(got) => check_ffi(got, &refs.session_once, STRICT),
            Err(e) => Done::fail(Outcome::Panic, e),
        }
    }

    /// A fresh FFI engine: a rank on another thread while this thread drops the last app
    /// reference; a session that outlives its engine's handle.
    fn ffi_engine_close_busy(&self, rng: &mut Rng) -> Done {
        let cfg = delrec_ffi::EngineConfig::from(self.cfg.clone());
        let open = || {
            delrec_ffi::Engine::open(
                self.model.to_string_lossy().into_owned(),
                self.pack.to_string_lossy().into_owned(),
                cfg.clone(),
            )
        };
        let e = match open() {
            Ok(e) => e,
            Err(e) => return ffi_error_outcome(&e, STRICT),
        };
        let (r, want) = self.refs.ranks[rng.below(self.refs.ranks.len())].clone();
        let worker = {
            let e = Arc::clone(&e);
            std::thread::spawn(move || e.rank(ffi_request(&r, None)).map(|r| of_ffi_ranking(&r)))
        };
        std::thread::sleep(rng.micros(2000));
        drop(e);
        let first = match join(worker) {
            Ok(got) => check_ffi(got, &want, STRICT),
            Err(e) => return Done::fail(Outcome::Panic, e),
        };
        if first.outcome != Outcome::Ok {
            return first;
        }
        let e = match open() {
            Ok(e) => e,
            Err(e) => return ffi_error_outcome(&e, STRICT),
        };
        let s = match e.session(None) {
            Ok(s) => s,
            Err(e) => return ffi_error_outcome(&e, STRICT),
        };
        drop(e);
        for id in &self.refs.session_pushes {
            if let Err(e) = s.push(id.clone()) {
                return ffi_error_outcome(&e, STRICT);
            }
        }
        let second = check_ffi(
            s.rank(ffi_request(&self.refs.session_req, None)).map(|r| of_ffi_ranking(&r)),
            &self.refs.session_once,
            STRICT,
        );
        steps([first, second])
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn exact_cfg() -> EngineConfig {
    EngineConfig {
        threads: 1,
        max_contexts: MAX_CONTEXTS,
        kv_type: KvType::F32,
        flash_attention: false,
        ..Default::default()
    }
}

/// What each worker is doing now, for the watchdog.
type Slots = Vec<Mutex<Option<(Instant, &'static str)>>>;

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    failures: Vec<String>,
    max_diff: f64,
}

fn stress(args: &[String]) -> Res<i32> {
    let o = Opts::parse(args, &["threads", "calls", "seconds", "seed", "watchdog-s", "out", "perturb-reference"])?;
    let threads: usize = o.num("threads", 16)?;
    let calls: usize = o.num("calls", 1000)?;
    let seconds: f64 = o.num("seconds", 0.0)?;
    let seed: u64 = o.num("seed", 0x5eed)?;
    let watchdog_s: f64 = o.num("watchdog-s", 60.0)?;
    let out = o.str("out").map(str::to_string);
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }

    let model_path = model("llama-tiny", "f32");
    let pack_path = seq_pack(&model_path, "llama-tiny", "prompt-llama");
    let cfg = exact_cfg();
    let t_open = Instant::now();
    let engine = Engine::open(&model_path, &pack_path, cfg.clone()).map_err(|e| format!("open: {e:?}"))?;
    let ffi = delrec_ffi::Engine::open(
        model_path.to_string_lossy().into_owned(),
        pack_path.to_string_lossy().into_owned(),
        delrec_ffi::EngineConfig::from(cfg.clone()),
    )
    .map_err(|e| format!("FFI open: {e:?}"))?;
    let mut refs = Refs::compute(&engine)?;
    let serial_s = t_open.elapsed().as_secs_f64();
    // The FFI engine agrees with the runtime's serially too.
    for (r, want) in &refs.ranks {
        let got = ffi.rank(ffi_request(r, None)).map_err(|e| format!("serial FFI rank: {e:?}"))?;
        compare(&of_ffi_ranking(&got), want).map_err(|m| format!("serial FFI rank differs: {m}"))?;
    }
    // For testing the checker: `--perturb-reference X` moves the first score of every rank shape's
    // serial result by X, so every rank that reaches it must be reported as a mismatch.
    let perturb: f64 = o.num("perturb-reference", 0.0)?;
    if perturb != 0.0 {
        for (_, want) in &mut refs.ranks {
            if let Some((_, v)) = want.first_mut() {
                v[0] += perturb;
            }
        }
    }
    let world = Arc::new(World { engine, ffi, refs, model: model_path, pack: pack_path, cfg });

    let slots: Arc<Slots> = Arc::new((0..threads + 1).map(|_| Mutex::new(None)).collect());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = (seconds > 0.0).then(|| started + Duration::from_secs_f64(seconds));
    let done_calls = Arc::new(AtomicUsize::new(0));

    let meta = json!({
        "threads": threads,
        "calls_per_thread": calls,
        "seconds_limit": seconds,
        "seed": seed,
        "max_contexts": MAX_CONTEXTS,
        "serial_shapes": world.refs.n_shapes(),
        "serial_s": serial_s,
        "tolerance": TOL,
    });

    // The watchdog: a call running past its limit fails the run (the report says which).
    let watchdog = {
        let (slots, tally, finished, done_calls, out, meta) =
            (slots.clone(), tally.clone(), finished.clone(), done_calls.clone(), out.clone(), meta.clone());
        let limit = Duration::from_secs_f64(watchdog_s);
        std::thread::spawn(move || {
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
                let hung: Vec<String> = slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let s = s.lock().unwrap_or_else(|e| e.into_inner());
                        s.filter(|(t, _)| t.elapsed() > limit)
                            .map(|(t, k)| format!("thread {i}: {k} running for {:.1} s", t.elapsed().as_secs_f64()))
                    })
                    .collect();
                if !hung.is_empty() {
                    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    let wall = started.elapsed().as_secs_f64();
                    let v = report(&meta, &t, &hung, wall, done_calls.load(Ordering::Relaxed), false);
                    let _ = write_out(out.as_deref(), &v);
                    eprintln!("delrec-stress: hung calls: {}", hung.join("; "));
                    std::process::exit(1);
                }
            }
        })
    };

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (world, slots, tally, stop, done_calls) =
                (world.clone(), slots.clone(), tally.clone(), stop.clone(), done_calls.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
                for _ in 0..calls {
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let kind = pick_kind(&mut rng);
                    *slots[t].lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), kind));
                    let t0 = Instant::now();
                    let done = catch_unwind(AssertUnwindSafe(|| world.call(kind, &mut rng)))
                        .unwrap_or_else(|p| Done::fail(Outcome::Panic, panic_text(&*p)));
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    *slots[t].lock().unwrap_or_else(|e| e.into_inner()) = None;
                    done_calls.fetch_add(1, Ordering::Relaxed);
                    let mut tl = tally.lock().unwrap_or_else(|e| e.into_inner());
                    *tl.by_kind.entry(kind).or_default().entry(done.outcome.name()).or_default() += 1;
                    tl.max_diff = tl.max_diff.max(done.diff);
                    if done.outcome.failed() && tl.failures.len() < 50 {
                        let detail = done.detail.unwrap_or_default();
                        tl.failures.push(format!("thread {t} {kind} ({ms:.0} ms): {}: {detail}", done.outcome.name()));
                    }
                }
            })
        })
        .collect();
    let mut worker_panics = 0;
    for w in workers {
        if w.join().is_err() {
            worker_panics += 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();

    // Every context back in both pools: all of them can be held at once, and both engines still
    // give the serial results. (A leaked lease would hang here: the watchdog's last slot.)
    *slots[threads].lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), "final pool check"));
    let final_check = catch_unwind(AssertUnwindSafe(|| -> Res<()> {
        let held: Vec<_> = (0..MAX_CONTEXTS)
            .map(|_| world.engine.session(None).map_err(|e| format!("session: {e:?}")))
            .collect::<Res<_>>()?;
        drop(held);
        let held: Vec<_> = (0..MAX_CONTEXTS)
            .map(|_| world.ffi.session(None).map_err(|e| format!("FFI session: {e:?}")))
            .collect::<Res<_>>()?;
        drop(held);
        for (r, want) in &world.refs.ranks {
            compare(&of_ranking(&world.engine.rank(r).map_err(|e| format!("{e:?}"))?), want)?;
        }
        Ok(())
    }))
    .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))));
    *slots[threads].lock().unwrap_or_else(|e| e.into_inner()) = None;
    finished.store(true, Ordering::Release);
    let _ = watchdog.join();

    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    if worker_panics > 0 {
        t.failures.push(format!("{worker_panics} worker threads panicked outside a call"));
    }
    let mut v = report(&meta, &t, &[], wall, done_calls.load(Ordering::Relaxed), stop.load(Ordering::Relaxed));
    v["final_check"] = json!(final_check.as_ref().err());
    let ok = v["ok"].as_bool().unwrap_or(false) && final_check.is_ok() && worker_panics == 0;
    v["ok"] = json!(ok);
    write_out(out.as_deref(), &v)?;
    Ok(if ok { 0 } else { 1 })
}

/// The report: `meta` (the run's settings) plus the counts.
fn report(meta: &Value, tally: &Tally, hung: &[String], wall: f64, calls_done: usize, stopped: bool) -> Value {
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for m in tally.by_kind.values() {
        for (o, n) in m {
            *outcomes.entry(o).or_default() += n;
        }
    }
    let count = |o: Outcome| outcomes.get(o.name()).copied().unwrap_or(0);
    let bad = count(Outcome::Mismatch) + count(Outcome::Unexpected) + count(Outcome::Panic);
    let mut v = meta.clone();
    let counts = json!({
        "calls": calls_done,
        "wall_s": wall,
        "calls_per_s": calls_done as f64 / wall.max(1e-9),
        "stopped_by_seconds": stopped,
        "by_kind": tally.by_kind,
        "outcomes": outcomes,
        "mismatches": count(Outcome::Mismatch),
        "unexpected_errors": count(Outcome::Unexpected),
        "panics": count(Outcome::Panic),
        "hung": hung,
        "max_abs_diff": tally.max_diff,
        "failures": tally.failures,
        "ok": bad == 0 && hung.is_empty(),
    });
    if let (Some(v), Value::Object(c)) = (v.as_object_mut(), counts) {
        v.extend(c);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// rss
// ---------------------------------------------------------------------------------------------

/// `VmHWM` and `VmRSS` of this process, bytes (0 where /proc is missing).
fn vm() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn rss(args: &[String]) -> Res<i32> {
    let o = Opts::parse(
        args,
        &["fixture", "max-contexts", "context-size", "batch-size", "kv", "flash-attention", "threads", "out"],
    )?;
    let (hwm_start, _) = vm();
    let (fixture, weights, prompt) = match o.str("fixture").unwrap_or("llama-tiny") {
        "llama-tiny" => ("llama-tiny", "f32", "prompt-llama"),
        "llama-tiny-q8_0" => ("llama-tiny", "q8_0", "prompt-llama"),
        "llama-wide" => ("llama-wide", "f16", "prompt-llama-wide"),
        "qwen2-tiny" => ("qwen2-tiny", "f32", "prompt-qwen2"),
        other => {
            return Err(format!("--fixture: llama-tiny, llama-tiny-q8_0, llama-wide or qwen2-tiny, not {other:?}"))
        }
    };
    let m = model(fixture, weights);
    // The pack is built against the F32 file (its digest pinned): the Q8_0 file opens unverified.
    let p = seq_pack(&model(fixture, if weights == "q8_0" { "f32" } else { weights }), fixture, prompt);
    let cfg = EngineConfig {
        threads: o.num("threads", 1)?,
        max_contexts: o.num("max-contexts", 2)?,
        context_size: o.num("context-size", 2048)?,
        batch_size: o.num("batch-size", 512)?,
        kv_type: match o.str("kv").unwrap_or("f32") {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            other => return Err(format!("--kv: f32 or f16, not {other:?}")),
        },
        flash_attention: match o.str("flash-attention").unwrap_or("off") {
            "on" => true,
            "off" => false,
            other => return Err(format!("--flash-attention: on or off, not {other:?}")),
        },
        verify_checksum: weights != "q8_0",
        ..Default::default()
    };
    // The fixtures are built (in this process, when missing) before the baseline is read.
    let (hwm_before, rss_before) = vm();
    let engine = Engine::open(&m, &p, cfg.clone()).map_err(|e| format!("open: {e:?}"))?;
    let (hwm_open, _) = vm();
    let ids = catalog_ids();
    let history = vec![ids[2].clone(), ids[9].clone(), ids[4].clone()];
    let whole = RankRequest { history: history.clone(), ..Default::default() };
    // Every context at work: sessions hold all but one, each ranking the whole catalog.
    let mut sessions = vec![];
    for _ in 1..cfg.max_contexts {
        let mut s = engine.session(None).map_err(|e| format!("session: {e:?}"))?;
        s.set_history(&history).map_err(|e| format!("set_history: {e:?}"))?;
        s.rank(&RankRequest::default()).map_err(|e| format!("session rank: {e:?}"))?;
        sessions.push(s);
    }
    let ranked = engine.rank(&whole).map_err(|e| format!("rank: {e:?}"))?;
    let recommended = engine
        .recommend(&RecommendRequest { history, n: 5, ..Default::default() })
        .map_err(|e| format!("recommend: {e:?}"))?;
    let (hwm_end, rss_end) = vm();
    drop(sessions);
    let b = engine.memory_budget();
    let v = json!({
        "config": {
            "fixture": fixture,
            "weights": weights,
            "max_contexts": cfg.max_contexts,
            "context_size": cfg.context_size,
            "batch_size": cfg.batch_size,
            "kv_type": format!("{:?}", cfg.kv_type),
            "flash_attention": cfg.flash_attention,
            "threads": cfg.threads,
        },
        "n_items": engine.n_items(),
        "ranked": ranked.items.len(),
        "recommended": recommended.items.len(),
        "hwm_start": hwm_start,
        "hwm_before_open": hwm_before,
        "rss_before_open": rss_before,
        "hwm_after_open": hwm_open,
        "hwm": hwm_end,
        "rss": rss_end,
        "budget": {
            "weights": b.weights,
            "kv": b.kv,
            "logits": b.logits,
            "compute": b.compute,
            "overhead": b.overhead,
            "total": b.total(),
        },
        "model_file_bytes": std::fs::metadata(&m).map_or(0, |x| x.len()),
        "pack_file_bytes": std::fs::metadata(&p).map_or(0, |x| x.len()),
    });
    write_out(o.str("out"), &v)?;
    Ok(0)
}
