//! One (model file, pack) measured in a process of its own, so that its peak RSS and cold start are
//! its own. The parent runs `delrec-bench worker --spec S --out O`; progress goes to stdout as
//! `@len N` / `@step MESSAGE` lines, results to O as JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use delrec_runtime::llm::{Batch, Context, ContextParams};
use delrec_runtime::{Engine, EngineConfig, Plan as EnginePlan, PrefixRow, RankPlan, RankRequest, Ranking};
use serde::{Deserialize, Serialize};

use crate::plan::{self, Shape};
use crate::sys::{self, timed, Mem, Timing};
use crate::BResult;

/// The `top_k` of the pruned (branch-and-bound) measurement.
pub const TOPK: usize = 10;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub model: String,
    pub weight_type: String,
    pub model_path: PathBuf,
    pub pack_path: PathBuf,
    /// Thread counts; the first one runs the whole grid, the others the headline cell.
    pub threads: Vec<usize>,
    pub hs: Vec<usize>,
    pub ks: Vec<usize>,
    /// Extra cells (H, headline K) for each H here: the cross of the grid for secondary types.
    #[serde(default)]
    pub cross_hs: Vec<usize>,
    pub catalog: bool,
    pub reps: usize,
    pub catalog_reps: usize,
    /// Largest estimated time for the naive baseline in one cell, seconds; above it, skipped.
    pub naive_budget_s: f64,
    pub context_size: u32,
    pub batch_size: u32,
    pub max_sequences: u32,
    pub headline: (usize, usize),
    pub warm_opens: usize,
    /// Write the PyTorch baseline's job file here (same prompts, same tokens).
    pub torch_job: Option<PathBuf>,
    pub seed: u64,
}

/// Wall/CPU samples of one measured operation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Samples {
    pub wall: Vec<f64>,
    pub cpu: Vec<f64>,
    pub p50: f64,
    pub p95: f64,
    pub cpu_p50: f64,
}

impl Samples {
    pub(crate) fn push(&mut self, t: Timing) {
        self.wall.push(t.wall);
        self.cpu.push(t.cpu);
        (self.p50, self.p95) = sys::p50_p95(&self.wall);
        self.cpu_p50 = sys::p50_p95(&self.cpu).0;
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Cell {
    pub h: usize,
    /// Candidates; `whole_catalog` when all items.
    pub k: usize,
    pub whole_catalog: bool,
    pub threads: usize,
    pub prefix_rows: usize,
    /// Rows the engine reported decoding (`RankStats::decoded_rows`).
    pub decoded_rows: usize,
    /// Rows the engine's plan counts (`Engine::plan`; a check that plan and execution agree).
    pub plan_rows: usize,
    pub output_rows: usize,
    /// Trie leaves (candidates' last tokens: scored from their parent's logits, not decoded).
    pub leaf_rows: usize,
    pub naive_rows: usize,
    pub decode_calls: usize,
    pub flops: f64,
    pub ours: Samples,
    /// llama.cpp prefill of `decoded_rows` rows in one sequence, logits for `output_rows` of them.
    pub raw: Option<Samples>,
    pub naive: Option<Samples>,
    pub naive_note: Option<String>,
    /// Largest |Δ log-likelihood| between the naive and the shared plan's scores.
    pub naive_max_abs_diff: Option<f64>,
    /// `top_k` = TOPK request (branch-and-bound pruning; the top k is exact).
    pub topk: Option<Samples>,
    pub topk_k: usize,
    pub topk_decoded_rows: usize,
    pub topk_pruned: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpenStats {
    /// Fraction of the model file in the page cache just before the cold open.
    pub cold_cached_fraction: Option<f64>,
    pub cold_evicted: bool,
    pub cold_open_s: f64,
    pub cold_first_rank_s: f64,
    pub warm_open: Samples,
    pub warm_first_rank: Samples,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemStats {
    pub before_open: MemSnap,
    pub after_open: MemSnap,
    pub after_first_rank: MemSnap,
    pub after_catalog: MemSnap,
    /// Peak RSS of ranking alone (before any baseline context exists).
    pub peak_rss: u64,
    /// KV cache bytes from the model's shape: 2 × layers × kv heads × head dim × context × 2 bytes.
    pub kv_bytes: u64,
    pub kv_cells: u64,
    /// Resident file-backed growth (mapped weights and pack pages actually touched).
    pub mapped_resident: u64,
    /// Anonymous growth minus the KV cache: compute buffers, logits, repacked weights, heap.
    pub scratch: i64,
    pub model_file_bytes: u64,
    pub pack_file_bytes: u64,
    /// `Engine::memory_budget` as configured (every context of the pool in use).
    #[serde(default)]
    pub budget: Budget,
    /// The budget of what the measured calls used: weights, overhead and one context (they run
    /// one at a time, so the pool made one).
    #[serde(default)]
    pub budget_in_use: u64,
    /// `peak_rss / budget_in_use`: at most 1 when the budget holds (pages never written stay out
    /// of the resident set, so well below 1 for calls smaller than the worst case).
    #[serde(default)]
    pub peak_over_budget: f64,
}

/// [`delrec_runtime::MemoryBudget`], in bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Budget {
    pub weights: u64,
    pub kv: u64,
    pub logits: u64,
    pub compute: u64,
    pub overhead: u64,
    pub total: u64,
    pub max_contexts: u64,
}

impl Budget {
    fn of(b: &delrec_runtime::MemoryBudget, max_contexts: usize) -> Self {
        Budget {
            weights: b.weights,
            kv: b.kv,
            logits: b.logits,
            compute: b.compute,
            overhead: b.overhead,
            total: b.total(),
            max_contexts: max_contexts as u64,
        }
    }

    /// The total with `n` of the pool's contexts in use.
    pub fn with_contexts(&self, n: u64) -> u64 {
        let per_context = (self.kv + self.logits + self.compute) / self.max_contexts.max(1);
        self.weights + self.overhead + per_context * n
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct MemSnap {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
}

impl From<Mem> for MemSnap {
    fn from(m: Mem) -> Self {
        MemSnap { rss: m.rss, hwm: m.hwm, anon: m.anon, file: m.file }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionStats {
    pub h: usize,
    pub k: usize,
    /// Session rank after one `push`.
    pub session: Samples,
    pub session_decoded_rows: usize,
    pub session_prefix_reused: usize,
    /// Fresh `Engine::rank` of the same request (history with the new item).
    pub fresh: Samples,
    pub fresh_decoded_rows: usize,
    /// `Session::prefill` right after the `push` (an eager push's decode)…
    #[serde(default)]
    pub prefill: Samples,
    /// …and the rank after it (candidate rows only).
    #[serde(default)]
    pub after_prefill: Samples,
    #[serde(default)]
    pub after_prefill_decoded_rows: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrefillStats {
    pub tokens: usize,
    pub threads: usize,
    pub samples: Samples,
    pub tokens_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerResult {
    pub model: String,
    pub weight_type: String,
    pub model_path: PathBuf,
    pub shape: Option<Shape>,
    pub n_items: usize,
    pub open: OpenStats,
    pub memory: MemStats,
    pub grid: Vec<Cell>,
    pub threads: Vec<Cell>,
    pub session: Option<SessionStats>,
    pub prefill: Vec<PrefillStats>,
    pub plan_mismatches: Vec<String>,
    pub errors: Vec<String>,
    /// llama.cpp's own account of its buffers (from its log).
    pub llama_buffers: Vec<String>,
    /// Headline request: history ids, and (candidate id, log-likelihood) in request order, so
    /// weight types can be compared with each other and with PyTorch.
    pub headline_history: Vec<String>,
    pub headline_scores: Vec<(String, f64)>,
}

pub(crate) fn progress_len(n: usize) {
    println!("@len {n}");
    let _ = std::io::stdout().flush();
}

pub(crate) fn step(msg: &str) {
    eprintln!("[delrec-bench] {msg}");
    println!("@step {msg}");
    let _ = std::io::stdout().flush();
}

/// Deterministic permutation of the catalog (splitmix64 + Fisher-Yates).
pub(crate) fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

struct Requests {
    perm: Vec<u32>,
    n_items: usize,
}

impl Requests {
    /// History of `h` items (a prefix of one fixed random order, so H=10 extends H=5).
    fn history(&self, h: usize) -> Vec<u32> {
        self.perm[..h.min(self.n_items)].to_vec()
    }

    /// `k` candidates disjoint from every history the grid uses (the same set for every H).
    fn candidates(&self, k: usize) -> Vec<u32> {
        let start = 64.min(self.n_items.saturating_sub(k));
        self.perm[start..(start + k).min(self.n_items)].to_vec()
    }
}

fn engine_cfg(spec: &Spec, threads: usize) -> EngineConfig {
    EngineConfig {
        threads,
        context_size: spec.context_size,
        batch_size: spec.batch_size,
        max_sequences: spec.max_sequences,
        // The pack pins the digest of the reference weight type only (the other types are made
        // from it), and the cold open is measured without hashing, as before the pin was the
        // default.
        verify_checksum: false,
        ..EngineConfig::default()
    }
}

fn request(engine: &Engine, history: &[u32], cands: Option<&[u32]>, plan: EnginePlan) -> RankRequest {
    let p = engine.pack();
    RankRequest {
        history: history.iter().map(|&i| p.item_id(i).unwrap_or_default().to_string()).collect(),
        candidates: cands.map(|c| c.iter().map(|&i| p.item_id(i).unwrap_or_default().to_string()).collect()),
        plan,
        ..Default::default()
    }
}

/// A llama.cpp context of our own for the raw-prefill baseline (one sequence).
struct Raw {
    ctx: Context,
    soft: Vec<Vec<f32>>,
    width: usize,
}

impl Raw {
    fn new(engine: &Engine, spec: &Spec, threads: usize) -> BResult<Raw> {
        let params = ContextParams {
            n_ctx: spec.context_size,
            n_batch: spec.batch_size.min(spec.context_size),
            n_seq_max: 1,
            // llama.cpp's own prefill of the same rows, every read row in one decode.
            n_outputs: spec.batch_size.min(spec.context_size),
            threads: threads as i32,
            // Same attention as the engine's, so the baseline runs the same kernels.
            kv_type: engine.config().kv_type,
            flash_attention: engine.config().flash_attention,
        };
        let ctx = Context::new(Arc::clone(engine.model()), &params)?;
        let pack = engine.pack();
        let soft = (0..pack.soft_prompts.len())
            .map(|i| pack.soft_prompt_values(i).map(<[f32]>::to_vec))
            .collect::<Option<Vec<_>>>()
            .ok_or("a soft prompt of the pack is missing")?;
        Ok(Raw { ctx, soft, width: engine.model().n_embd() })
    }

    /// Decodes the plan's rows in one sequence at increasing positions: the prefix, then each
    /// group's decoded trie nodes after it (the group's KV is dropped before the next group, as
    /// ours does), with logits for the same rows ours reads.
    fn run(&mut self, plan: &RankPlan) -> BResult<usize> {
        self.ctx.clear();
        let p = plan.prefix.len();
        let prefix: Vec<(PrefixRow, bool)> = plan.prefix.iter().enumerate().map(|(i, r)| (*r, i + 1 == p)).collect();
        let mut decoded = self.feed(&prefix, 0)?;
        for (gi, g) in plan.groups.iter().enumerate() {
            if gi > 0 && !self.ctx.seq_rm(0, p as i32) {
                return Err("seq_rm failed".into());
            }
            let rows: Vec<(PrefixRow, bool)> =
                g.iter().filter(|n| n.decoded).map(|n| (PrefixRow::Token(n.token), true)).collect();
            decoded += self.feed(&rows, p)?;
        }
        self.ctx.clear();
        Ok(decoded)
    }

    /// Decodes rows into sequence 0 from position `start`, in batches of one kind of at most n_batch.
    fn feed(&mut self, rows: &[(PrefixRow, bool)], start: usize) -> BResult<usize> {
        let n_batch = self.ctx.n_batch();
        let mut i = 0;
        while i < rows.len() {
            let soft = matches!(rows[i].0, PrefixRow::Soft { .. });
            let mut b = if soft { Batch::embeddings(self.width) } else { Batch::tokens() };
            while i < rows.len() && b.len() < n_batch && matches!(rows[i].0, PrefixRow::Soft { .. }) == soft {
                let (row, want) = rows[i];
                let pos = (start + i) as i32;
                match row {
                    PrefixRow::Token(t) => b.add_token(t, pos, &[0], want),
                    PrefixRow::Soft { prompt, row } => {
                        let (prompt, row) = (prompt as usize, row as usize);
                        let v = &self.soft[prompt][row * self.width..(row + 1) * self.width];
                        b.add_embedding(v, pos, &[0], want)?;
                    }
                }
                i += 1;
            }
            self.ctx.decode(&mut b)?;
        }
        Ok(rows.len())
    }

    /// Plain prefill of `n` tokens in one sequence, logits for the last row only.
    fn prefill(&mut self, n: usize) -> BResult<()> {
        let n_batch = self.ctx.n_batch();
        self.ctx.clear();
        let mut pos = 0;
        while pos < n {
            let mut b = Batch::tokens();
            while b.len() < n_batch && pos < n {
                b.add_token(((pos * 7919) % 1000 + 100) as i32, pos as i32, &[0], pos + 1 == n);
                pos += 1;
            }
            self.ctx.decode(&mut b)?;
        }
        self.ctx.clear();
        Ok(())
    }
}

struct Bench<'a> {
    spec: &'a Spec,
    reqs: Requests,
    shape: Option<Shape>,
    res: WorkerResult,
}

impl Bench<'_> {
    #[allow(clippy::too_many_arguments)]
    fn cell(
        &mut self,
        engine: &Engine,
        raw: Option<&mut Raw>,
        h: usize,
        k: Option<usize>,
        threads: usize,
        reps: usize,
        with_naive: bool,
        with_topk: bool,
        warm: Option<(Ranking, Timing)>,
    ) -> BResult<Cell> {
        let history = self.reqs.history(h);
        let cands: Vec<u32> = match k {
            Some(k) => self.reqs.candidates(k),
            None => (0..self.reqs.n_items as u32).collect(),
        };
        let req = request(engine, &history, k.map(|_| cands.as_slice()), EnginePlan::SharedPrefix);
        let plan = engine.plan(&req)?;
        // Warm-up (its time only estimates the naive plan's); also the counters.
        let mut warm_sample = None;
        let (first, t_ours) = match warm {
            Some(w) => {
                // An earlier call of the same request (not the process's first): a sample too.
                warm_sample = Some(w.1);
                w
            }
            None => {
                let (r, t) = timed(|| engine.rank(&req));
                (r?, t)
            }
        };
        let mut cell = Cell {
            h,
            k: cands.len(),
            whole_catalog: k.is_none(),
            threads,
            prefix_rows: first.stats.prefix_rows,
            decoded_rows: first.stats.decoded_rows,
            plan_rows: plan::decoded_rows(&plan),
            output_rows: plan::output_rows(&plan),
            leaf_rows: plan::leaf_rows(&plan),
            naive_rows: plan::naive_rows(&plan),
            decode_calls: first.stats.decode_calls,
            flops: self.shape.as_ref().map_or(0.0, |s| s.plan_flops(&plan)),
            ..Default::default()
        };
        if cell.plan_rows != cell.decoded_rows || plan.prefix.len() != cell.prefix_rows {
            self.res.plan_mismatches.push(format!(
                "H={h} K={}: engine decoded {} rows (prefix {}), its plan counts {} (prefix {})",
                cell.k,
                cell.decoded_rows,
                cell.prefix_rows,
                cell.plan_rows,
                plan.prefix.len()
            ));
        }
        let mut raw = raw;
        // The naive plan costs about naive_rows / (our rows per second) (its batches are smaller,
        // so a little more); run it only within the budget.
        let mut naive_reps = 0;
        let rate = cell.decoded_rows as f64 / t_ours.wall.max(1e-6);
        let est = cell.naive_rows as f64 / rate * 1.15;
        if with_naive {
            if est <= self.spec.naive_budget_s {
                naive_reps = ((self.spec.naive_budget_s / est) as usize).clamp(1, reps);
            } else if with_topk && k.is_some() && self.spec.naive_budget_s > 0.0 {
                // The headline cell always gets its naive baseline, once.
                naive_reps = 1;
            } else {
                cell.naive_note = Some(format!("skipped: estimated {est:.0} s per call > budget"));
            }
        }
        let naive_req = RankRequest { plan: EnginePlan::Naive, ..req.clone() };
        let topk_req = RankRequest { top_k: Some(TOPK), ..req.clone() };

        if reps > 1 {
            if let Some(r) = raw.as_deref_mut() {
                r.run(&plan)?; // warm-up
            }
        }
        if let Some(t) = warm_sample {
            cell.ours.push(t);
        }
        let mut naive_scores: Option<Ranking> = None;
        for rep in 0..reps {
            let (r, t) = timed(|| engine.rank(&req));
            r?;
            cell.ours.push(t);
            if let Some(rw) = raw.as_deref_mut() {
                let (r, t) = timed(|| rw.run(&plan));
                r?;
                cell.raw.get_or_insert_with(Samples::default).push(t);
            }
            if with_topk {
                let (r, t) = timed(|| engine.rank(&topk_req));
                let r = r?;
                cell.topk.get_or_insert_with(Samples::default).push(t);
                if rep == 0 {
                    cell.topk_k = TOPK;
                    cell.topk_decoded_rows = r.stats.decoded_rows;
                    cell.topk_pruned = r.stats.pruned;
                    let best: Vec<u32> = first.items.iter().take(TOPK).map(|i| i.index).collect();
                    let got: Vec<u32> = r.items.iter().map(|i| i.index).collect();
                    if best != got {
                        // How far apart: the exhaustive scores of the pruned picks against the
                        // exhaustive k-th best, and how much the two plans' scores of the same
                        // items differ (numerics of different batch layouts). A gap within that
                        // noise is a near-tie reordered, not a search that missed an item.
                        let exhaustive = |i: u32| first.items.iter().find(|x| x.index == i).map(|x| x.logprob);
                        let kth = first.items.get(TOPK - 1).map_or(f64::NAN, |x| x.logprob);
                        let worst_pick =
                            r.items.iter().filter_map(|x| exhaustive(x.index)).fold(f64::INFINITY, f64::min);
                        let noise = r
                            .items
                            .iter()
                            .filter_map(|x| exhaustive(x.index).map(|e| (e - x.logprob).abs()))
                            .fold(0.0, f64::max);
                        self.res.errors.push(format!(
                            "H={h} K={}: pruned top-{TOPK} differs from the exhaustive one (its weakest pick is {:.4} \
                             below the exhaustive {TOPK}th; the plans' scores of the same items differ by up to {noise:.4})",
                            cell.k,
                            kth - worst_pick
                        ));
                    }
                }
            }
            if rep < naive_reps {
                let (r, t) = timed(|| engine.rank(&naive_req));
                naive_scores = Some(r?);
                cell.naive.get_or_insert_with(Samples::default).push(t);
            }
        }
        if let Some(n) = naive_scores {
            // Both plans compute the same scores up to llama.cpp's numerics (batch composition picks
            // different kernels); a large difference would make the comparison meaningless.
            let worst = max_score_diff(&first, &n);
            cell.naive_max_abs_diff = Some(worst);
            if worst > 1.0 {
                self.res.errors.push(format!("H={h} K={}: naive and shared scores differ by {worst:.3}", cell.k));
            }
        }
        Ok(cell)
    }
}

fn max_score_diff(a: &Ranking, b: &Ranking) -> f64 {
    let mut worst = 0.0f64;
    for x in &a.items {
        if let Some(y) = b.items.iter().find(|y| y.index == x.index) {
            worst = worst.max((x.logprob - y.logprob).abs());
        }
    }
    worst
}

pub fn run(spec_path: &Path, out: &Path) -> BResult<()> {
    let spec: Spec = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    let res = measure(&spec)?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&res)?)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn measure(spec: &Spec) -> BResult<WorkerResult> {
    let main_threads = *spec.threads.first().ok_or("no thread count")?;
    let extra: Vec<usize> = spec.cross_hs.iter().copied().filter(|h| !spec.hs.contains(h)).collect();
    let n_cells = spec.hs.len() * spec.ks.len() + extra.len() + usize::from(spec.catalog);
    progress_len(4 + n_cells + spec.threads.len().saturating_sub(1) + 1);
    let mem0 = sys::mem();
    // Cold start: drop the files from the page cache, then open and rank once.
    let cold_evicted = sys::evict(&spec.model_path) & sys::evict(&spec.pack_path);
    let cold_cached_fraction = sys::cached_fraction(&spec.model_path);
    let (engine, t_open) = timed(|| Engine::open(&spec.model_path, &spec.pack_path, engine_cfg(spec, main_threads)));
    let engine = engine?;
    let mem_open = sys::mem();
    let n_items = engine.pack().n_items();
    let reqs = Requests { perm: permutation(n_items, spec.seed), n_items };
    let (hh, hk) = spec.headline;
    let head_req = request(&engine, &reqs.history(hh), Some(&reqs.candidates(hk)), EnginePlan::SharedPrefix);
    let (r, t_first) = timed(|| engine.rank(&head_req));
    let head = r?;
    let mem_first = sys::mem();
    step("opened (cold) and ranked once");
    let shape = Shape::read(&spec.model_path).ok();
    let mut b = Bench {
        spec,
        reqs,
        shape: shape.clone(),
        res: WorkerResult {
            model: spec.model.clone(),
            weight_type: spec.weight_type.clone(),
            model_path: spec.model_path.clone(),
            shape: shape.clone(),
            n_items,
            headline_history: head_req.history.clone(),
            headline_scores: head_req
                .candidates
                .iter()
                .flatten()
                .map(|id| (id.clone(), head.items.iter().find(|it| it.id == *id).map_or(f64::NAN, |it| it.logprob)))
                .collect(),
            ..Default::default()
        },
    };
    // Heaviest call (whole catalog) before any baseline context exists: peak RSS of ranking alone.
    let mut catalog_warm = None;
    if spec.catalog {
        let (r, t) = timed(|| engine.rank(&request(&engine, &b.reqs.history(hh), None, EnginePlan::SharedPrefix)));
        catalog_warm = Some((r?, t));
    }
    let mem_cat = sys::mem();
    let kv_cells = spec.context_size as u64;
    let kv_bytes = shape.as_ref().map_or(0, |s| s.kv_bytes(kv_cells, 2));
    let budget = Budget::of(&engine.memory_budget(), engine.config().max_contexts);
    let budget_in_use = budget.with_contexts(1);
    b.res.memory = MemStats {
        before_open: mem0.into(),
        after_open: mem_open.into(),
        after_first_rank: mem_first.into(),
        after_catalog: mem_cat.into(),
        peak_rss: mem_cat.hwm,
        kv_bytes,
        kv_cells,
        mapped_resident: mem_cat.file.saturating_sub(mem0.file),
        scratch: mem_cat.anon as i64 - mem0.anon as i64 - kv_bytes as i64,
        model_file_bytes: std::fs::metadata(&spec.model_path).map_or(0, |m| m.len()),
        pack_file_bytes: std::fs::metadata(&spec.pack_path).map_or(0, |m| m.len()),
        budget,
        budget_in_use,
        peak_over_budget: mem_cat.hwm as f64 / budget_in_use.max(1) as f64,
    };
    b.res.open.cold_evicted = cold_evicted;
    b.res.open.cold_cached_fraction = cold_cached_fraction;
    b.res.open.cold_open_s = t_open.wall;
    b.res.open.cold_first_rank_s = t_first.wall;
    step("memory");

    // Prefill throughput, and the grid with its baselines, interleaved call by call.
    let mut raw = Raw::new(&engine, spec, main_threads)?;
    for n in [128usize, 512] {
        let mut s = Samples::default();
        raw.prefill(n)?;
        for _ in 0..spec.reps.max(3) {
            let (r, t) = timed(|| raw.prefill(n));
            r?;
            s.push(t);
        }
        let tokens_per_s = n as f64 / s.p50.max(1e-9);
        b.res.prefill.push(PrefillStats { tokens: n, threads: main_threads, samples: s, tokens_per_s });
    }
    step("prefill throughput");
    for &h in &spec.hs {
        for &k in &spec.ks {
            match b.cell(
                &engine,
                Some(&mut raw),
                h,
                Some(k),
                main_threads,
                spec.reps,
                true,
                (h, k) == spec.headline,
                None,
            ) {
                Ok(c) => b.res.grid.push(c),
                Err(e) => b.res.errors.push(format!("H={h} K={k}: {e}")),
            }
            step(&format!("H={h} K={k}"));
        }
    }
    for &h in &extra {
        match b.cell(&engine, Some(&mut raw), h, Some(hk), main_threads, spec.reps, true, false, None) {
            Ok(c) => b.res.grid.push(c),
            Err(e) => b.res.errors.push(format!("H={h} K={hk}: {e}")),
        }
        step(&format!("H={h} K={hk}"));
    }
    if spec.catalog {
        match b.cell(
            &engine,
            Some(&mut raw),
            hh,
            None,
            main_threads,
            spec.catalog_reps,
            true,
            true,
            catalog_warm.take(),
        ) {
            Ok(c) => b.res.grid.push(c),
            Err(e) => b.res.errors.push(format!("whole catalog: {e}")),
        }
        step("whole catalog");
    }
    if let Some(job) = &spec.torch_job {
        if let Err(e) = write_torch_job(&engine, &b.reqs, spec, job) {
            b.res.errors.push(format!("torch job: {e}"));
        }
    }

    // Session: one new history item, then rank again; against a fresh rank of the same request.
    b.res.session = Some(session(&engine, &b.reqs, spec)?);
    step("session");
    drop(raw);

    // Thread scaling at the headline cell.
    for &t in spec.threads.iter().skip(1) {
        let e = Engine::open(&spec.model_path, &spec.pack_path, engine_cfg(spec, t))?;
        let mut raw = Raw::new(&e, spec, t)?;
        match b.cell(&e, Some(&mut raw), hh, Some(hk), t, spec.reps, true, false, None) {
            Ok(c) => b.res.threads.push(c),
            Err(e) => b.res.errors.push(format!("threads {t}: {e}")),
        }
        step(&format!("threads {t}"));
    }
    drop(engine);

    // Warm opens (page cache warm), each followed by its first ranking.
    for _ in 0..spec.warm_opens {
        let (e, t) = timed(|| Engine::open(&spec.model_path, &spec.pack_path, engine_cfg(spec, main_threads)));
        let e = e?;
        b.res.open.warm_open.push(t);
        let (r, t) = timed(|| e.rank(&head_req));
        r?;
        b.res.open.warm_first_rank.push(t);
    }
    step("warm opens");
    Ok(b.res)
}

fn session(engine: &Engine, reqs: &Requests, spec: &Spec) -> BResult<SessionStats> {
    let (h, k) = spec.headline;
    let hist = reqs.history(h + 1);
    let cands = reqs.candidates(k);
    let p = engine.pack();
    let ids: Vec<String> = hist.iter().map(|&i| p.item_id(i).unwrap_or_default().to_string()).collect();
    let req = request(engine, &hist, Some(&cands), EnginePlan::SharedPrefix);
    let mut st = SessionStats { h, k, ..Default::default() };
    let mut s = engine.session(None)?;
    for rep in 0..=spec.reps {
        s.set_history(&ids[..h])?;
        s.rank(&req)?;
        s.push(&ids[h])?;
        let (r, t) = timed(|| s.rank(&req));
        let r = r?;
        let (f, tf) = timed(|| engine.rank(&req));
        let f = f?;
        // The same step with an eager push: the new history decoded before the rank.
        s.set_history(&ids[..h])?;
        s.rank(&req)?;
        s.push(&ids[h])?;
        let (pre, tp) = timed(|| s.prefill(&req));
        pre?;
        let (a, ta) = timed(|| s.rank(&req));
        let a = a?;
        if rep == 0 {
            // warm-up round
            st.session_decoded_rows = r.stats.decoded_rows;
            st.session_prefix_reused = r.stats.prefix_reused;
            st.fresh_decoded_rows = f.stats.decoded_rows;
            st.after_prefill_decoded_rows = a.stats.decoded_rows;
            continue;
        }
        st.session.push(t);
        st.fresh.push(tf);
        st.prefill.push(tp);
        st.after_prefill.push(ta);
    }
    Ok(st)
}

/// The PyTorch baseline's input: for each cell, the prefix rows, the candidate token sequences and
/// our scores for them (so the two implementations can be checked against each other).
fn write_torch_job(engine: &Engine, reqs: &Requests, spec: &Spec, path: &Path) -> BResult<()> {
    let pack = engine.pack();
    let (hh, hk) = spec.headline;
    let mut cells: Vec<(usize, usize)> = vec![(hh, hk)];
    for &k in &spec.ks {
        cells.push((hh, k));
    }
    for &h in spec.hs.iter().chain(&spec.cross_hs) {
        cells.push((h, hk));
    }
    let mut seen = std::collections::HashSet::new();
    cells.retain(|c| seen.insert(*c));
    let mut out = vec![];
    for (h, k) in cells {
        let history = reqs.history(h);
        let cands = reqs.candidates(k);
        let req = request(engine, &history, Some(&cands), EnginePlan::SharedPrefix);
        let plan = engine.plan(&req)?;
        let r = engine.rank(&req)?;
        let scores: Vec<f64> =
            cands.iter().map(|c| r.items.iter().find(|it| it.index == *c).map_or(f64::NAN, |it| it.logprob)).collect();
        let prefix: Vec<serde_json::Value> = plan
            .prefix
            .iter()
            .map(|r| match r {
                PrefixRow::Token(t) => serde_json::json!(t),
                PrefixRow::Soft { prompt, row } => serde_json::json!(["soft", prompt, row]),
            })
            .collect();
        out.push(serde_json::json!({
            "h": h, "k": k, "prefix": prefix, "candidates": plan.sequences, "ours_logprob": scores,
            "decoded_rows": r.stats.decoded_rows,
        }));
    }
    let soft: Vec<Vec<f32>> = (0..pack.soft_prompts.len())
        .map(|i| pack.soft_prompt_values(i).map(<[f32]>::to_vec))
        .collect::<Option<_>>()
        .ok_or("a soft prompt of the pack is missing")?;
    let job = serde_json::json!({
        "n_embd": engine.model().n_embd(),
        "soft_prompts": soft,
        "cells": out,
        "weight_type": spec.weight_type,
    });
    std::fs::write(path, serde_json::to_vec(&job)?)?;
    Ok(())
}
