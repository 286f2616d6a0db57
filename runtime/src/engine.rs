//! The ranking engine: a model, its pack, and a pool of llama.cpp contexts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::llm::{Batch, Context, ContextParams, KvType, Model, ModelParams};
use crate::pack::{file_sha256, BaseIdentity, Pack, Part, ScoringMode};
use crate::scorer::{common_prefix, group, log_sum_exp, TopK, Trie};
use crate::search::{Search, SeqOp};

/// Engine settings. The defaults suit a phone-sized model on a CPU.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Threads per decode; 0 = all available cores.
    pub threads: usize,
    /// KV cells per context: the prompt prefix plus the trie nodes of one candidate group (or the
    /// live paths of a top-k search).
    pub context_size: u32,
    /// Rows per llama.cpp decode. Logits memory is `batch_size × n_vocab × 4` bytes per context.
    pub batch_size: u32,
    /// Sequences per context (2..=256): one holds the prefix; when every candidate is scored the
    /// others hold one candidate each (a group), in a top-k search one trie path each (the rows
    /// of one search round).
    pub max_sequences: u32,
    /// Contexts kept for concurrent calls; further callers wait for a free one.
    pub max_contexts: usize,
    /// Layers offloaded to a GPU backend when the build has one.
    pub gpu_layers: i32,
    pub kv_type: KvType,
    /// llama.cpp flash attention. On by default: on CPU its kernel skips masked KV cells, so
    /// trie rows (which see the prefix and their own path only) cost less; measured on SmolLM2-135M
    /// at H = 10, K = 20: ~20 % faster, and as close to PyTorch as without it (see llm.rs).
    pub flash_attention: bool,
    /// Hash the whole model file and require it to be one the pack was built for.
    pub verify_checksum: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            // SmolLM2-135M Q4_0, whole catalog (1,682 items), top-10, AVX-512 build: 16 / 32 / 48 /
            // 64 sequences took 3.8 / 3.0 / 2.9 / 2.9 s (fewer, larger search rounds against more
            // rows decoded); memory does not depend on it, only on context_size.
            context_size: 2048,
            batch_size: 512,
            max_sequences: 32,
            max_contexts: 2,
            gpu_layers: 0,
            kv_type: KvType::F16,
            flash_attention: true,
            verify_checksum: false,
        }
    }
}

/// How candidates are evaluated. `Naive` (one full prompt per candidate) exists as a baseline
/// for benchmarks and as an oracle for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Plan {
    #[default]
    SharedPrefix,
    Naive,
}

/// Cancels a running request from another thread. Checked between decodes and inside decodes.
#[derive(Clone, Default, Debug)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What to rank.
#[derive(Clone, Debug, Default)]
pub struct RankRequest {
    /// Item ids, most recent last. Must not be empty.
    pub history: Vec<String>,
    /// Candidate ids; `None` ranks the whole catalog.
    pub candidates: Option<Vec<String>>,
    /// Keep the best `k`; `None` keeps all.
    pub top_k: Option<usize>,
    /// Use this soft prompt in every `{soft:…}` slot of the template instead of the named ones.
    pub soft_prompt: Option<String>,
    /// Leave the catalog's history items out of whole-catalog candidates (default false).
    pub exclude_history: bool,
    /// Score every candidate even when `top_k` is set. By default a top-k request under `sum`
    /// scoring skips branches that provably cannot reach the top k (the top k is the same).
    pub exhaustive: bool,
    pub plan: Plan,
    pub cancel: Option<CancelToken>,
    pub timeout: Option<Duration>,
}

/// A ranked candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredItem {
    pub id: String,
    pub title: String,
    /// Catalog index of the item.
    pub index: u32,
    /// The ranking score under the pack's scoring mode.
    pub score: f64,
    /// Σ ln p over the scored tokens.
    pub logprob: f64,
    /// Number of scored tokens (title + terminator).
    pub n_tokens: u32,
    /// `logprob / n_tokens`.
    pub mean_logprob: f64,
}

/// Counters of one ranking call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RankStats {
    pub prefix_rows: usize,
    /// Prefix rows found already in the KV cache (sessions).
    pub prefix_reused: usize,
    /// Rows sent to llama.cpp in total.
    pub decoded_rows: usize,
    pub decode_calls: usize,
    pub candidates: usize,
    /// Candidates left unscored because they provably could not reach the top k.
    pub pruned: usize,
}

#[derive(Clone, Debug)]
pub struct Ranking {
    pub items: Vec<ScoredItem>,
    pub stats: RankStats,
}

/// One input row of the prompt prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Tok(i32),
    Soft { prompt: u32, row: u32 },
}

/// What a context's sequence 0 holds, so a session can extend it instead of starting over.
#[derive(Default)]
struct PrefixState {
    rows: Vec<Row>,
    /// Logits of the last row and their log-sum-exp.
    last: Option<(Vec<f32>, f64)>,
}

/// A model + pack, ready to rank. `Send + Sync`: share it behind an `Arc`.
///
/// ```no_run
/// use delrec_runtime::{Engine, EngineConfig, RankRequest};
/// let engine = Engine::open("model.gguf", "pack.gguf", EngineConfig::default())?;
/// let ranking = engine.rank(&RankRequest {
///     history: vec!["m001".into(), "m002".into()],
///     candidates: Some(vec!["m010".into(), "m011".into(), "m012".into()]),
///     top_k: Some(2),
///     ..Default::default()
/// })?;
/// for item in &ranking.items {
///     println!("{} {:.3}", item.title, item.score);
/// }
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
pub struct Engine {
    model: Arc<Model>,
    pack: Pack,
    soft: Vec<Vec<f32>>,
    cfg: EngineConfig,
    ctx_params: ContextParams,
    pool: Mutex<(Vec<Context>, usize)>,
    freed: Condvar,
}

impl Engine {
    pub fn open(model: impl AsRef<Path>, pack: impl AsRef<Path>, cfg: EngineConfig) -> Result<Self> {
        let (model, pack) = (model.as_ref(), pack.as_ref());
        if cfg.max_contexts == 0 || cfg.max_sequences < 2 || cfg.max_sequences > 256 || cfg.batch_size == 0 {
            return Err(Error::InvalidInput(format!("engine config out of range: {cfg:?}")));
        }
        if cfg.context_size < 16 {
            return Err(Error::InvalidInput("context_size must be at least 16".into()));
        }
        // Our own parse first: typed errors for non-GGUF or tokenizer-less files before llama.cpp.
        let identity = BaseIdentity::of_model(&GgufFile::open(model)?)?;
        let pack = Pack::open(pack)?;
        pack.base.check_matches(&identity)?;
        if cfg.verify_checksum {
            let sum = file_sha256(model)?;
            if !pack.model_sha256.contains(&sum) {
                return Err(Error::PackMismatch {
                    what: "model file sha256".into(),
                    pack: if pack.model_sha256.is_empty() {
                        "(none recorded)".into()
                    } else {
                        pack.model_sha256.join(" | ")
                    },
                    model: sum,
                });
            }
        }
        let m = Model::load(model, ModelParams { gpu_layers: cfg.gpu_layers })?;
        if m.n_embd() != identity.n_embd as usize || m.n_vocab() != identity.n_vocab as usize {
            return Err(Error::PackMismatch {
                what: "llama.cpp's view of n_embd/vocabulary".into(),
                pack: format!("{}/{}", identity.n_embd, identity.n_vocab),
                model: format!("{}/{}", m.n_embd(), m.n_vocab()),
            });
        }
        let soft = (0..pack.soft_prompts.len()).map(|i| pack.soft_prompt_values(i)).collect::<Result<Vec<_>>>()?;
        let threads =
            if cfg.threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { cfg.threads };
        let ctx_params = ContextParams {
            n_ctx: cfg.context_size,
            n_batch: cfg.batch_size.min(cfg.context_size),
            n_seq_max: cfg.max_sequences,
            threads: threads as i32,
            kv_type: cfg.kv_type,
            flash_attention: cfg.flash_attention,
        };
        let engine = Engine {
            model: Arc::new(m),
            pack,
            soft,
            cfg,
            ctx_params,
            pool: Mutex::new((vec![], 0)),
            freed: Condvar::new(),
        };
        // Create one context now: configuration errors surface at open, not at the first rank.
        let ctx = Context::new(engine.model.clone(), &engine.ctx_params)?;
        engine.release(ctx, true);
        Ok(engine)
    }

    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    fn acquire(&self) -> Result<Context> {
        let mut g = self.pool.lock().map_err(|_| Error::Backend("context pool poisoned".into()))?;
        loop {
            if let Some(c) = g.0.pop() {
                return Ok(c);
            }
            if g.1 < self.cfg.max_contexts {
                g.1 += 1;
                drop(g);
                return Context::new(self.model.clone(), &self.ctx_params).inspect_err(|_| {
                    if let Ok(mut g) = self.pool.lock() {
                        g.1 -= 1;
                    }
                });
            }
            g = self.freed.wait(g).map_err(|_| Error::Backend("context pool poisoned".into()))?;
        }
    }

    fn release(&self, ctx: Context, new: bool) {
        if let Ok(mut g) = self.pool.lock() {
            if new {
                g.1 += 1;
            }
            g.0.push(ctx);
        }
        self.freed.notify_one();
    }

    /// Ranks candidates for one history. Starts from an empty KV cache, so results do not depend
    /// on earlier calls; use a [`Session`] to reuse a user's prefix.
    pub fn rank(&self, req: &RankRequest) -> Result<Ranking> {
        let mut ctx = self.acquire()?;
        ctx.clear();
        let mut state = PrefixState::default();
        let r = self.rank_in(&mut ctx, &mut state, req);
        ctx.clear();
        self.release(ctx, false);
        r
    }

    /// Opens a session that keeps this user's prompt prefix in a context of its own (taken from the
    /// pool until the session is dropped).
    pub fn session(&self, soft_prompt: Option<String>) -> Result<Session<'_>> {
        if let Some(s) = &soft_prompt {
            self.pack.soft_prompt_index(s)?;
        }
        let mut ctx = self.acquire()?;
        ctx.clear();
        Ok(Session { engine: self, ctx: Some(ctx), history: vec![], soft_prompt, state: PrefixState::default() })
    }

    fn resolve(&self, id: &str) -> Result<u32> {
        self.pack.item_index(id).ok_or_else(|| Error::UnknownItem(id.to_string()))
    }

    /// The prompt prefix rows for a history.
    fn prefix_rows(&self, history: &[u32], soft_override: Option<usize>) -> Vec<Row> {
        let t = &self.pack.template;
        let mut rows: Vec<Row> = t.bos.map(Row::Tok).into_iter().collect();
        for part in &t.parts {
            match part {
                Part::Text(toks) => rows.extend(toks.iter().map(|&x| Row::Tok(x))),
                Part::Soft(idx) => {
                    let p = soft_override.unwrap_or(*idx);
                    rows.extend(
                        (0..self.pack.soft_prompts[p].n_virtual as u32).map(|row| Row::Soft { prompt: p as u32, row }),
                    );
                }
                Part::History => {
                    for (i, &h) in history.iter().enumerate() {
                        if i > 0 {
                            rows.extend(t.separator_tokens.iter().map(|&x| Row::Tok(x)));
                        }
                        rows.extend(self.pack.item_tokens(h).into_iter().map(Row::Tok));
                    }
                }
                Part::Candidate => break,
            }
        }
        rows
    }

    /// Decodes `rows` at positions `start..` into sequence 0, in batches of one kind (tokens or
    /// embeddings) of at most `n_batch` rows; `want(i)` marks rows whose logits go to `on_logits`.
    fn decode_rows(
        &self,
        ctx: &mut Context,
        rows: &[Row],
        start: usize,
        want: &dyn Fn(usize) -> bool,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        call: &mut Call,
    ) -> Result<()> {
        let n_batch = ctx.n_batch();
        let width = self.model.n_embd();
        let mut i = 0;
        while i < rows.len() {
            call.check()?;
            let is_soft = matches!(rows[i], Row::Soft { .. });
            let mut b = if is_soft { Batch::embeddings(width) } else { Batch::tokens() };
            let first = i;
            while i < rows.len() && b.len() < n_batch && matches!(rows[i], Row::Soft { .. }) == is_soft {
                let pos = i32::try_from(start + i).map_err(|_| Error::InvalidInput("position overflow".into()))?;
                match rows[i] {
                    Row::Tok(t) => b.add_token(t, pos, &[0], want(i)),
                    Row::Soft { prompt, row } => {
                        let (p, r) = (prompt as usize, row as usize);
                        b.add_embedding(&self.soft[p][r * width..(r + 1) * width], pos, &[0], want(i))?;
                    }
                }
                i += 1;
            }
            ctx.decode(&mut b)?;
            call.stats.decode_calls += 1;
            call.stats.decoded_rows += b.len();
            for j in 0..b.len() {
                if want(first + j) {
                    on_logits(first + j, ctx.logits(&b, j)?);
                }
            }
        }
        Ok(())
    }

    /// Brings sequence 0 of `ctx` to hold `rows`, reusing the longest common prefix already there,
    /// and returns the last row's logits.
    fn ensure_prefix(&self, ctx: &mut Context, state: &mut PrefixState, rows: &[Row], call: &mut Call) -> Result<()> {
        if rows.is_empty() {
            return Err(Error::InvalidInput("the template produces an empty prompt prefix".into()));
        }
        if rows.len() >= ctx.n_ctx() {
            return Err(Error::ContextTooSmall { needed: rows.len() + 1, available: ctx.n_ctx() });
        }
        let lcp = common_prefix(&state.rows, rows);
        if lcp == rows.len() && lcp == state.rows.len() && state.last.is_some() {
            call.stats.prefix_reused = lcp;
            return Ok(());
        }
        // Re-decode at least the last row: its logits are needed.
        let keep = lcp.min(rows.len() - 1);
        if !ctx.seq_rm(0, keep as i32) {
            ctx.clear();
            state.rows.clear();
            return self.ensure_prefix(ctx, state, rows, call);
        }
        state.rows.truncate(keep);
        state.last = None;
        call.stats.prefix_reused = keep;
        let mut last = None;
        let tail = &rows[keep..];
        let last_i = tail.len() - 1;
        let r = self.decode_rows(ctx, tail, keep, &|i| i == last_i, &mut |_, l| last = Some(l.to_vec()), call);
        if let Err(e) = r {
            // Part of the tail may be in the cache: forget it all.
            ctx.clear();
            state.rows.clear();
            return Err(e);
        }
        let last = last.ok_or_else(|| Error::Backend("no logits for the prefix".into()))?;
        let lse = log_sum_exp(&last);
        state.rows = rows.to_vec();
        state.last = Some((last, lse));
        Ok(())
    }

    fn rank_in(&self, ctx: &mut Context, state: &mut PrefixState, req: &RankRequest) -> Result<Ranking> {
        let mut call = Call::new(ctx, req);
        let r = self.rank_inner(ctx, state, req, &mut call);
        ctx.abort.cancel = None;
        ctx.abort.deadline = None;
        r
    }

    fn rank_inner(
        &self,
        ctx: &mut Context,
        state: &mut PrefixState,
        req: &RankRequest,
        call: &mut Call,
    ) -> Result<Ranking> {
        if req.history.is_empty() {
            return Err(Error::EmptyHistory);
        }
        if req.top_k == Some(0) {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        let history = req.history.iter().map(|h| self.resolve(h)).collect::<Result<Vec<_>>>()?;
        let soft_override = req.soft_prompt.as_deref().map(|s| self.pack.soft_prompt_index(s)).transpose()?;
        let cands: Vec<u32> = match &req.candidates {
            Some(c) if c.is_empty() => return Err(Error::EmptyCandidates),
            Some(c) => {
                let mut seen = std::collections::HashSet::with_capacity(c.len());
                let mut out = Vec::with_capacity(c.len());
                for id in c {
                    let i = self.resolve(id)?;
                    if !seen.insert(i) {
                        return Err(Error::DuplicateCandidate(id.clone()));
                    }
                    out.push(i);
                }
                out
            }
            None => (0..self.pack.n_items() as u32).filter(|i| !(req.exclude_history && history.contains(i))).collect(),
        };
        if cands.is_empty() {
            return Err(Error::EmptyCandidates);
        }
        call.stats.candidates = cands.len();
        let rows = self.prefix_rows(&history, soft_override);
        call.stats.prefix_rows = rows.len();
        let terminator = self.pack.template.terminator();
        let seqs: Vec<Vec<i32>> = cands
            .iter()
            .map(|&c| {
                let mut s = self.pack.item_tokens(c);
                s.extend_from_slice(&terminator);
                s
            })
            .collect();
        let scores = match req.plan {
            Plan::SharedPrefix => {
                self.ensure_prefix(ctx, state, &rows, call)?;
                let (last, lse) = state.last.as_ref().ok_or_else(|| Error::Backend("prefix not decoded".into()))?;
                let prefix = (last.as_slice(), *lse);
                // Pruning needs sum scoring (a partial sum bounds a candidate, a partial mean does
                // not), and pays only beyond one group: a group's trie goes in one or two calls,
                // while a search needs one call per depth (SmolLM2, K = 20, top 10: 450 ms scoring
                // all, 530 ms searching).
                let search = seqs.len() >= ctx.n_seq_max() && self.pack.scoring == ScoringMode::Sum;
                match req.top_k {
                    Some(k) if search && !req.exhaustive => {
                        self.score_best_first(ctx, prefix, rows.len(), &seqs, k, call)?
                    }
                    _ => self.score_shared(ctx, prefix, rows.len(), &seqs, call)?.into_iter().map(Some).collect(),
                }
            }
            Plan::Naive => self.score_naive(ctx, state, &rows, &seqs, call)?.into_iter().map(Some).collect(),
        };
        let mode = self.pack.scoring;
        let mut items: Vec<ScoredItem> = cands
            .iter()
            .zip(scores)
            .filter_map(|(&c, s)| s.map(|s| (c, s)))
            .map(|(c, (logprob, n))| {
                let mean = logprob / n as f64;
                ScoredItem {
                    id: self.pack.item_id(c).to_string(),
                    title: self.pack.item_title(c).to_string(),
                    index: c,
                    score: if mode == ScoringMode::Mean { mean } else { logprob },
                    logprob,
                    n_tokens: n,
                    mean_logprob: mean,
                }
            })
            .collect();
        // Best first; ties keep catalog order so results are deterministic.
        items.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        if let Some(k) = req.top_k {
            items.truncate(k);
        }
        Ok(Ranking { items, stats: std::mem::take(&mut call.stats) })
    }

    /// Shared-prefix plan, every candidate scored: sequence 0 holds the prefix; each group of
    /// candidates gets sequences 1..=g sharing it, and its trie is decoded in batches of `n_batch`.
    fn score_shared(
        &self,
        ctx: &mut Context,
        (last, lse): (&[f32], f64),
        prefix_len: usize,
        seqs: &[Vec<i32>],
        call: &mut Call,
    ) -> Result<Vec<(f64, u32)>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by(|&a, &b| seqs[a].cmp(&seqs[b]));
        let sorted: Vec<&[i32]> = order.iter().map(|&i| seqs[i].as_slice()).collect();
        let budget = ctx.n_ctx() - prefix_len;
        let groups = group(&sorted, ctx.n_seq_max() - 1, budget)
            .map_err(|len| Error::ContextTooSmall { needed: prefix_len + len, available: ctx.n_ctx() })?;
        let mut out = vec![(0.0, 0); seqs.len()];
        for g in groups {
            let members = &sorted[g.clone()];
            let mut trie = Trie::build(members);
            for s in 1..=members.len() as i32 {
                ctx.seq_cp(0, s)?;
            }
            for r in trie.roots.clone() {
                trie.set_logp(r as usize, last[trie.nodes[r as usize].token as usize] as f64 - lse);
            }
            let result = self.decode_trie(ctx, &mut trie, prefix_len, call);
            for s in 1..=members.len() as i32 {
                ctx.seq_rm(s, 0);
            }
            result?;
            for (slot, &orig) in order[g].iter().enumerate() {
                out[orig] = trie.score(slot);
            }
        }
        Ok(out)
    }

    /// Exact top-k by best-first search over the trie of every candidate (see `search`): each
    /// round decodes the most promising nodes of the whole trie whose bound clears the k-th best
    /// complete score so far. Pruned candidates come back as `None`.
    fn score_best_first(
        &self,
        ctx: &mut Context,
        (last, lse): (&[f32], f64),
        prefix_len: usize,
        seqs: &[Vec<i32>],
        k: usize,
        call: &mut Call,
    ) -> Result<Vec<Option<(f64, u32)>>> {
        let refs: Vec<&[i32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let mut trie = Trie::build(&refs);
        let mut top = TopK::new(k);
        for r in trie.roots.clone() {
            let r = r as usize;
            trie.set_logp(r, last[trie.nodes[r].token as usize] as f64 - lse);
            for _ in 0..trie.nodes[r].ends {
                top.push(trie.nodes[r].partial);
            }
        }
        let mut search = Search::new(&trie, ctx.n_seq_max());
        let result = self.run_search(ctx, &mut trie, &mut search, &mut top, prefix_len, call);
        for s in search.live_seqs() {
            ctx.seq_rm(s, 0);
        }
        result?;
        let out: Vec<_> = (0..seqs.len()).map(|slot| trie.complete(slot).then(|| trie.score(slot))).collect();
        call.stats.pruned += out.iter().filter(|s| s.is_none()).count();
        Ok(out)
    }

    fn run_search(
        &self,
        ctx: &mut Context,
        trie: &mut Trie,
        search: &mut Search,
        top: &mut TopK,
        prefix_len: usize,
        call: &mut Call,
    ) -> Result<()> {
        let max_cells = ctx.n_ctx() - prefix_len;
        while !search.is_done() {
            call.check()?;
            let round = search.plan(trie, top.threshold(), ctx.n_batch(), max_cells);
            for op in &round.ops {
                match *op {
                    SeqOp::Share { src, dst, len } => ctx.seq_share(src, dst, (prefix_len + len) as i32)?,
                    SeqOp::Truncate { seq, len } => {
                        ctx.seq_rm(seq, (prefix_len + len) as i32);
                    }
                    SeqOp::Drop { seq } => {
                        ctx.seq_rm(seq, 0);
                    }
                }
            }
            if round.rows.is_empty() {
                if search.is_done() {
                    break;
                }
                // Every sequence or cell is taken by paths still needed: the context is too small.
                return Err(Error::ContextTooSmall {
                    needed: prefix_len + search.live_cells + 1,
                    available: ctx.n_ctx(),
                });
            }
            let mut b = Batch::tokens();
            for &(id, seq) in &round.rows {
                let node = &trie.nodes[id];
                b.add_token(node.token, (prefix_len + node.depth as usize) as i32, &[seq], true);
            }
            ctx.decode(&mut b)?;
            call.stats.decode_calls += 1;
            call.stats.decoded_rows += b.len();
            for (j, &(id, seq)) in round.rows.iter().enumerate() {
                let logits = ctx.logits(&b, j)?;
                let lse = log_sum_exp(logits);
                trie.nodes[id].decoded = true;
                for c in trie.nodes[id].children.clone() {
                    let c = c as usize;
                    trie.set_logp(c, logits[trie.nodes[c].token as usize] as f64 - lse);
                    for _ in 0..trie.nodes[c].ends {
                        top.push(trie.nodes[c].partial);
                    }
                }
                search.decoded(trie, id, seq);
            }
        }
        Ok(())
    }

    /// Decodes `nodes` (each with its parent already decoded or in the same batch, in order) and
    /// sets the log-probs of their children; returns the children that became known.
    fn decode_nodes(
        &self,
        ctx: &mut Context,
        trie: &mut Trie,
        nodes: &[usize],
        prefix_len: usize,
        call: &mut Call,
    ) -> Result<Vec<usize>> {
        call.check()?;
        let mut b = Batch::tokens();
        for &id in nodes {
            let node = &trie.nodes[id];
            let seq_ids: Vec<i32> = node.cands.iter().map(|&c| c as i32 + 1).collect();
            let pos = (prefix_len + node.depth as usize) as i32;
            b.add_token(node.token, pos, &seq_ids, !node.children.is_empty());
        }
        ctx.decode(&mut b)?;
        call.stats.decode_calls += 1;
        call.stats.decoded_rows += b.len();
        let mut known = Vec::new();
        for (j, &id) in nodes.iter().enumerate() {
            trie.nodes[id].decoded = true;
            if trie.nodes[id].children.is_empty() {
                continue;
            }
            let logits = ctx.logits(&b, j)?;
            let lse = log_sum_exp(logits);
            for k in 0..trie.nodes[id].children.len() {
                let ch = trie.nodes[id].children[k] as usize;
                trie.set_logp(ch, logits[trie.nodes[ch].token as usize] as f64 - lse);
                known.push(ch);
            }
        }
        Ok(known)
    }

    /// Every node, in depth-first order, `n_batch` at a time.
    fn decode_trie(&self, ctx: &mut Context, trie: &mut Trie, prefix_len: usize, call: &mut Call) -> Result<()> {
        let all: Vec<usize> = (0..trie.nodes.len()).filter(|&i| !trie.nodes[i].children.is_empty()).collect();
        // Leaves need no decode: nothing is predicted from them.
        for chunk in all.chunks(ctx.n_batch()) {
            self.decode_nodes(ctx, trie, chunk, prefix_len, call)?;
        }
        Ok(())
    }

    /// Naive plan: every candidate decodes the whole prompt again in sequence 0.
    fn score_naive(
        &self,
        ctx: &mut Context,
        state: &mut PrefixState,
        rows: &[Row],
        seqs: &[Vec<i32>],
        call: &mut Call,
    ) -> Result<Vec<(f64, u32)>> {
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            ctx.clear();
            state.rows.clear();
            state.last = None;
            let mut full = rows.to_vec();
            full.extend(seq.iter().map(|&t| Row::Tok(t)));
            if full.len() > ctx.n_ctx() {
                return Err(Error::ContextTooSmall { needed: full.len(), available: ctx.n_ctx() });
            }
            let p = rows.len();
            let mut sum = 0.0;
            let r = self.decode_rows(
                ctx,
                &full,
                0,
                &|i| i + 1 >= p && i + 1 < full.len(),
                &mut |i, logits| sum += logits[seq[i + 1 - p] as usize] as f64 - log_sum_exp(logits),
                call,
            );
            ctx.clear();
            r?;
            out.push((sum, seq.len() as u32));
        }
        Ok(out)
    }
}

/// One request in flight: its cancellation and deadline (also handed to llama.cpp's abort
/// callback) and its counters.
struct Call {
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
    stats: RankStats,
}

impl Call {
    fn new(ctx: &mut Context, req: &RankRequest) -> Self {
        let deadline = req.timeout.map(|t| Instant::now() + t);
        ctx.abort.cancel = req.cancel.as_ref().map(|c| c.0.clone());
        ctx.abort.deadline = deadline;
        Call { cancel: req.cancel.clone(), deadline, stats: RankStats::default() }
    }

    fn check(&self) -> Result<()> {
        if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::DeadlineExceeded);
        }
        Ok(())
    }
}

/// A user's running history, kept decoded: adding an item decodes only what changed.
pub struct Session<'e> {
    engine: &'e Engine,
    ctx: Option<Context>,
    history: Vec<String>,
    soft_prompt: Option<String>,
    state: PrefixState,
}

impl Session<'_> {
    /// Appends an item (most recent last). Unknown ids are rejected here, not at the next rank.
    pub fn push(&mut self, id: &str) -> Result<()> {
        self.engine.resolve(id)?;
        self.history.push(id.to_string());
        Ok(())
    }

    /// Replaces the history.
    pub fn set_history(&mut self, ids: &[String]) -> Result<()> {
        for id in ids {
            self.engine.resolve(id)?;
        }
        self.history = ids.to_vec();
        Ok(())
    }

    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Ranks with the session's history; `req.history` and `req.soft_prompt` are ignored.
    pub fn rank(&mut self, req: &RankRequest) -> Result<Ranking> {
        let ctx = self.ctx.as_mut().ok_or_else(|| Error::Backend("session has no context".into()))?;
        let req = RankRequest { history: self.history.clone(), soft_prompt: self.soft_prompt.clone(), ..req.clone() };
        self.engine.rank_in(ctx, &mut self.state, &req)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            ctx.clear();
            self.engine.release(ctx, false);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Engine>();
        fn send<T: Send>() {}
        send::<super::Session<'static>>();
    }
}
