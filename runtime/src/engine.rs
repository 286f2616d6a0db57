//! The ranking engine: a model, its pack, and a pool of llama.cpp contexts. This file is the
//! public API; the work is in the submodules:
//!
//! - `rank`: one ranking call from request to sorted result;
//! - `recommend`: the cascade (sequential retrieval, LLM re-rank, fusion);
//! - `catalog`: the pack's items plus those added on the device, snapshotted per call;
//! - `prompt`: request → catalog indices, prompt prefix rows, candidate token sequences;
//! - `prefix`: the prefix decoded into sequence 0 (extended in place for sessions);
//! - `plan`: the scoring plans (shared trie, best-first top-k, naive) behind one shape;
//! - `pool`: contexts lent per call, returned on every path;
//! - `call`: one request's cancel token, deadline and counters;
//! - `session`: [`Session`], a user's history kept decoded.

mod backend;
mod base;
mod call;
mod catalog;
mod digest;
mod embed;
mod memory;
mod plan;
mod pool;
mod prefix;
mod progress;
mod prompt;
mod range;
mod rank;
mod recommend;
mod session;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use delrec_format::Pack;

use crate::error::Result;
use crate::llm::{KvType, Model};
pub use backend::{choose_backend, devices, BackendInfo, BackendKind, DeviceInfo};
pub use base::Base;
use base::LoadedAdapter;
use call::Call;
pub use catalog::AddedInfo;
pub use digest::DigestSource;
pub use memory::MemoryBudget;
use pool::{Lease, Pool};
use prefix::PrefixState;
pub use progress::{LoadProgress, LoadStage, OnProgress, OpenOptions, RankProgress};
pub use range::FileRange;
pub use session::Session;

/// Engine settings. The defaults suit a phone-sized model on a CPU.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Threads per decode; 0 = the fast cores ([`crate::cpus::default_threads`]: big and prime
    /// cores of a phone, every available core elsewhere). Every setting has a range, checked at open
    /// (threads ≤ 512, context_size 16..=131072, batch_size 1..=8192, max_sequences 2..=256,
    /// max_contexts 1..=64); out of range is `BadRequest` naming the field.
    pub threads: usize,
    /// KV cells per context: the prompt prefix plus the trie nodes of one candidate group (or the
    /// live paths of a top-k search).
    pub context_size: u32,
    /// Rows per llama.cpp decode (a prompt prefix goes in chunks of this many).
    pub batch_size: u32,
    /// Most rows of one decode whose logits are read (1..=8192; raised to `max_sequences`,
    /// capped by `batch_size`): llama.cpp's logits buffer and the compute buffer's output
    /// projection each hold this many rows of `n_vocab` floats, most of a context's scratch for
    /// a small model with a large vocabulary; candidate rows beyond it go in further decodes.
    pub max_outputs: u32,
    /// Sequences per context (2..=256): one holds the prefix; when every candidate is scored the
    /// others hold one candidate each (a group), in a top-k search one trie path each (the rows
    /// of one search round).
    pub max_sequences: u32,
    /// Contexts kept for concurrent calls; further callers wait for a free one.
    pub max_contexts: usize,
    /// Refuse to open (`Error::Capacity`, resource `Memory`) when the engine's
    /// [`MemoryBudget`] (every context in use) could exceed this many bytes, before anything
    /// is allocated for contexts. `None`: no limit.
    pub memory_limit: Option<u64>,
    /// How long a call (or a new session) waits for a free context before `Error::Busy`
    /// (at most 1 hour; zero: fail at once). A request's own timeout and cancel token end the
    /// wait sooner.
    pub context_wait: Duration,
    /// Where the model runs: `Auto` (the default) offloads to the first GPU this build can use
    /// (a discrete one before an integrated one) and runs on the CPU when there is none; a GPU
    /// backend named here must be there (see `cpu_fallback`). [`devices`] lists what is.
    pub backend: BackendKind,
    /// A requested GPU backend that this build or device lacks: run on the CPU instead of
    /// failing with `RequestError::BackendUnavailable`. Off by default; either way
    /// [`Engine::backend`] and every [`RankStats::backend`] say what ran.
    pub cpu_fallback: bool,
    /// Layers offloaded when a GPU runs the model: -1 (the default) = all, 0 = none (the CPU).
    pub gpu_layers: i32,
    pub kv_type: KvType,
    /// llama.cpp flash attention. On by default: on CPU its kernel skips masked KV cells, so
    /// trie rows (which see the prefix and their own path only) cost less, and it scores as close
    /// to PyTorch as classic attention (README, "How ranking works"). Off together with an F32
    /// cache is the exact path the parity tests use.
    pub flash_attention: bool,
    /// On (the default), the model file must be one the pack was built for: its sha256 must be
    /// one the pack pins (every pack `delrec-convert` writes pins one), else `BadFile`
    /// `Mismatch`; a pack that pins none gets llama.cpp's tensor data checks instead. The digest
    /// is computed once per version of the file (see `digest_cache`). Off: neither, for files
    /// the app has verified itself. `model_check`'s metadata checks run either way.
    pub verify_checksum: bool,
    /// A private directory where verified digests are remembered across launches, keyed by a
    /// stamp of the file (device, inode, size, modification and change times), so a cold open
    /// hashes a model only once per version of it. `None`: remembered in this process only.
    pub digest_cache: Option<std::path::PathBuf>,
    /// On (the default), ggml repacks quantized weights into the layouts its CPU kernels read
    /// fastest (interleaved Q4_0, Q8_0, ... blocks, depending on the CPU), a second copy of those
    /// weights in anonymous memory beside the mapped file. Off: the mapped weights are used as
    /// they are, and memory stays at the file's pages (measured cost and gain: bench/README.md,
    /// "Weight repacking").
    pub repack_weights: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            // More sequences: fewer, larger search rounds against more rows decoded (measured in
            // bench/README.md); memory depends on context_size, not on this.
            context_size: 2048,
            batch_size: 512,
            max_outputs: 64,
            max_sequences: 32,
            max_contexts: 2,
            memory_limit: None,
            context_wait: Duration::from_secs(10),
            backend: BackendKind::Auto,
            cpu_fallback: false,
            gpu_layers: -1,
            kv_type: KvType::F16,
            flash_attention: true,
            verify_checksum: true,
            digest_cache: None,
            repack_weights: true,
        }
    }
}

/// A pack's LoRA adapter as the engine applies it ([`Engine::adapter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummary {
    pub path: std::path::PathBuf,
    /// The pack's scale for it (times alpha / rank per weight).
    pub scale: f32,
    /// `adapter.lora.alpha` (0: each weight's scale is 1, folded into its factors).
    pub alpha: f32,
    /// (rank, number of weights with it), by rank.
    pub ranks: Vec<(u32, usize)>,
    /// The module stems adapted (`attn_q`, `ffn_down`, ...).
    pub targets: Vec<String>,
    /// Weights adapted.
    pub weights: usize,
    pub tensor_bytes: u64,
}

/// How [`Engine::open`] vouched for the model's bytes (beyond `model_check`'s metadata checks,
/// which always run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelVerification {
    /// Its sha256 is one the pack pins; from where the digest came.
    Digest(DigestSource),
    /// The pack pins no digest: llama.cpp validated every tensor's data while loading.
    TensorChecks,
    /// `verify_checksum` was off.
    Skipped,
}

/// How candidates are evaluated. `Naive` (one full prompt per candidate) exists as a baseline
/// for benchmarks and as an oracle for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Plan {
    #[default]
    SharedPrefix,
    Naive,
}

/// Cancels a running request from another thread. Checked between decodes, inside decodes, and
/// while waiting for a free context.
#[derive(Clone, Default, Debug)]
pub struct CancelToken(pub(crate) Arc<AtomicBool>);

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
    /// Called after every decode with the rows done and planned (a progress bar for a long
    /// whole-catalog rank).
    pub progress: Option<OnProgress>,
    /// Items not in the catalog, ranked for this request only, after `candidates` (which may be
    /// `Some(vec![])` to rank only these). Tokenized as [`Engine::add_item`] does; an id the
    /// catalog has is `DuplicateItem`.
    pub inline: Vec<InlineItem>,
}

/// An item given in a request rather than in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineItem {
    pub id: String,
    pub title: String,
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
    /// Σ ln p over the scored tokens; with verbalizer scoring, the class's log-score (the mean
    /// of its label words' log-probabilities), equal to `score`.
    pub logprob: f64,
    /// Number of scored tokens (title + terminator); with verbalizer scoring, label words.
    pub n_tokens: u32,
    /// `logprob / n_tokens`.
    pub mean_logprob: f64,
    /// How many other ranked items have exactly this score (they are ordered by catalog index
    /// among themselves). A verbalizer scoring by first tokens ties every title that starts with
    /// the same token: shown here, not hidden.
    pub ties: u32,
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
    /// Encoder passes (encoder-decoder models: one per request).
    pub encoder_passes: usize,
    /// Rows those passes encoded.
    pub encoder_rows: usize,
    /// The backend that ran the model (`Cpu` or a GPU backend; never `Auto`).
    pub backend: BackendKind,
}

#[derive(Clone, Debug)]
pub struct Ranking {
    pub items: Vec<ScoredItem>,
    pub stats: RankStats,
}

/// What to recommend: the cascade of [`Engine::recommend`]. `Default` gives the pack's
/// retrieval size and fusion weight, the LLM on, and the history's items left out.
#[derive(Clone, Debug, Default)]
pub struct RecommendRequest {
    /// Item ids, most recent last. Must not be empty. The sequential model reads the latest
    /// `max_len` of them; the LLM's prompt takes them all.
    pub history: Vec<String>,
    /// Results wanted (1..= the items left to recommend).
    pub n: usize,
    /// Items the sequential model retrieves for the LLM to re-rank (`n..=` items left);
    /// `None` = the pack's `delrec.fusion.retrieve`, raised to `n` if below.
    pub retrieve: Option<usize>,
    /// Weight of the LLM in the fused score, in `[0, 1]`; `None` = the pack's.
    pub llm_weight: Option<f32>,
    /// Sequential model only: no LLM call, ordered by the sequential score.
    pub llm_off: bool,
    /// Allow items of the history among the results (left out by default).
    pub include_history: bool,
    /// As in [`RankRequest::soft_prompt`].
    pub soft_prompt: Option<String>,
    pub cancel: Option<CancelToken>,
    /// For the whole call, retrieval included.
    pub timeout: Option<Duration>,
}

/// A recommended item with the scores that placed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommended {
    pub id: String,
    pub title: String,
    pub index: u32,
    /// The sequential model's score (user vector · item vector).
    pub seq_score: f64,
    /// The LLM's score under the pack's scoring mode; `None` with `llm_off`.
    pub llm_score: Option<f64>,
    /// What the order follows: the fused score, or `seq_score` with `llm_off`.
    pub score: f64,
}

/// Counters of one `recommend` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecommendStats {
    pub retrieved: usize,
    /// Sequential forward + whole-catalog scan + top-N.
    pub retrieval_micros: u64,
    /// The LLM's re-rank (0 with `llm_off`).
    pub rerank_micros: u64,
    /// The re-rank's counters.
    pub rank: Option<RankStats>,
}

#[derive(Clone, Debug)]
pub struct Recommendation {
    pub items: Vec<Recommended>,
    pub stats: RecommendStats,
}

/// One input row of the prompt prefix: a token, or a row of a soft prompt fed as an embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixRow {
    Token(i32),
    Soft { prompt: u32, row: u32 },
}

/// How the engine serves a request (see [`Engine::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Every candidate scored: the prefix once, then each group's title trie.
    SharedTrie,
    /// Exact top `k` by best-first search over the trie of all candidates (rows depend on the
    /// scores, so they are not known in advance).
    BestFirst { k: usize },
    /// One full prompt per candidate.
    Naive,
    /// One prediction at the template's mask, read by the pack's verbalizer: the prefix once,
    /// every candidate (up to the whole catalog) scored from one row of logits.
    Verbalizer,
}

/// One trie node of a candidate group, in decode order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrieRow {
    pub token: i32,
    /// Position below the prompt prefix.
    pub depth: u32,
    /// Decoded (and its logits read); leaves are not: nothing is predicted from them.
    pub decoded: bool,
}

/// What a request costs the engine, planned without running it: the prompt prefix, each
/// candidate's scored tokens, and the groups the shared-trie plan decodes. Benchmarks feed the
/// same rows to their baselines.
#[derive(Clone, Debug)]
pub struct RankPlan {
    pub strategy: Strategy,
    /// Encoder-decoder models: the encoder's input (empty for decoder-only models).
    pub encoder: Vec<PrefixRow>,
    /// The rows decoded once before the candidates (encoder-decoder: the decoder's start and
    /// mask tokens).
    pub prefix: Vec<PrefixRow>,
    /// Catalog indices of the candidates, in request order.
    pub candidates: Vec<u32>,
    /// Title + terminator tokens of each candidate, in request order.
    pub sequences: Vec<Vec<i32>>,
    /// Trie rows of each group of the shared-trie plan (what `SharedTrie` decodes; a
    /// `BestFirst` search decodes a subset of the same nodes).
    pub groups: Vec<Vec<TrieRow>>,
}

/// A model + pack, ready to rank. A cheap handle (`Clone`, `Send + Sync`): clones share one
/// model, pack and context pool.
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
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The base the engine was opened over (its model, pool and adapters).
    base: Base,
    model: Arc<Model>,
    pack: Pack,
    soft: Vec<Vec<f32>>,
    /// The pack's adapter, set on every context this engine's calls use.
    adapter: Option<LoadedAdapter>,
    cfg: EngineConfig,
    /// The base's pool, shared with every engine over it.
    pool: Arc<Pool>,
    /// Items added on the device (`add_item`), after the pack's.
    added: RwLock<Arc<catalog::Added>>,
    /// What the contexts really have (llama.cpp may round what was asked for).
    n_ctx: usize,
    n_seq_max: usize,
    verification: ModelVerification,
}

impl Engine {
    /// Opens a model and one pack over it (with the pack's adapter, from beside the pack, when
    /// it names one). For several packs over one model, open a [`Base`] once and its packs.
    pub fn open(model: impl AsRef<Path>, pack: impl AsRef<Path>, cfg: EngineConfig) -> Result<Self> {
        Self::open_with(model, pack, cfg, &OpenOptions::default())
    }

    /// [`Engine::open`] with progress reports and a cancel token ([`OpenOptions`]).
    pub fn open_with(
        model: impl AsRef<Path>,
        pack: impl AsRef<Path>,
        cfg: EngineConfig,
        opts: &OpenOptions,
    ) -> Result<Self> {
        let pack = Pack::open(pack.as_ref())?;
        let base = Base::open_for(model.as_ref(), cfg, Some(&pack), opts)?;
        let adapter = base::adapter_beside(&pack);
        base.engine(pack, adapter.as_deref())
    }

    /// Opens a model and a pack each stored in part of an open file ([`FileRange`]): the
    /// uncompressed assets of an Android APK, read through their `AssetFileDescriptor`s without
    /// copying them out. The model is mapped where its offset allows (see
    /// [`crate::llm::EMBEDDED_MMAP_ALIGN`]), else read into memory. A pack that names an adapter
    /// file is opened by path ([`Engine::open`] or [`Base::open_pack_with_adapter`]).
    ///
    /// ```no_run
    /// use delrec_runtime::{Engine, EngineConfig, FileRange, OpenOptions};
    /// let apk = std::fs::File::open("app.apk")?;
    /// let model = FileRange::new(apk.try_clone()?, 4096, 140_000_000, "apk:model.gguf");
    /// let pack = FileRange::new(apk, 140_004_096, 300_000, "apk:pack.gguf");
    /// let engine = Engine::open_ranges(&model, &pack, EngineConfig::default(), &OpenOptions::default())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_ranges(model: &FileRange, pack: &FileRange, cfg: EngineConfig, opts: &OpenOptions) -> Result<Self> {
        let pack = pack.open_pack()?;
        if pack.adapter.is_some() {
            return Err(crate::error::Error::invalid(
                "pack",
                "this pack names an adapter file beside it: open it by path (or Base::open_pack_with_adapter)",
            ));
        }
        let base = Base::open_source(model, cfg, Some(&pack), opts)?;
        base.engine(pack, None)
    }

    /// A context for one call (or a session) from the base's pool, with this pack's adapter set
    /// (which clears what another adapter left in its KV cache).
    fn lease(&self, call: Option<&Call>) -> Result<Lease> {
        let mut lease = self.inner.pool.acquire(call)?;
        let adapter = self.inner.adapter.as_ref().map(|a| (&a.adapter, a.scale));
        lease.ctx().set_adapter(adapter)?;
        Ok(lease)
    }

    /// What the model runs on: decided at open from `EngineConfig::backend` and the devices
    /// found, the same for every pack over one base.
    pub fn backend(&self) -> &BackendInfo {
        self.inner.base.backend()
    }

    /// The pack's adapter, when it has one: what it adapts and where it was loaded from.
    pub fn adapter(&self) -> Option<AdapterSummary> {
        self.inner.adapter.as_ref().map(|a| AdapterSummary {
            path: a.path.clone(),
            scale: a.scale,
            alpha: a.info.alpha,
            ranks: a.info.ranks().into_iter().collect(),
            targets: a.info.targets(),
            weights: a.info.weights.len(),
            tensor_bytes: a.info.tensor_bytes,
        })
    }

    /// The base this engine runs over (open more packs over it with [`Base::open_pack`]).
    pub fn base(&self) -> &Base {
        &self.inner.base
    }

    pub fn pack(&self) -> &Pack {
        &self.inner.pack
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// How the model file was vouched for at open.
    pub fn model_verification(&self) -> ModelVerification {
        self.inner.verification
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    /// Ranks candidates for one history. Starts from an empty KV cache, so results do not depend
    /// on earlier calls; use a [`Session`] to reuse a user's prefix.
    pub fn rank(&self, req: &RankRequest) -> Result<Ranking> {
        let mut lease = self.lease(Some(&Call::new(req)))?;
        self.rank_in(lease.ctx(), &mut PrefixState::default(), req)
    }

    /// The cascade: the pack's sequential model retrieves the best `retrieve` items of the whole
    /// catalog, the LLM re-ranks them, and the fused score orders the result (see
    /// [`RecommendRequest`]). Needs a pack with a sequential model.
    ///
    /// ```no_run
    /// use delrec_runtime::{Engine, EngineConfig, RecommendRequest};
    /// let engine = Engine::open("model.gguf", "pack.gguf", EngineConfig::default())?;
    /// let recs = engine.recommend(&RecommendRequest {
    ///     history: vec!["m001".into(), "m002".into()],
    ///     n: 10,
    ///     retrieve: Some(50),
    ///     ..Default::default()
    /// })?;
    /// for r in &recs.items {
    ///     println!("{} fused {:.2} (sequential {:.2}, LLM {:?})", r.title, r.score, r.seq_score, r.llm_score);
    /// }
    /// # Ok::<(), delrec_runtime::Error>(())
    /// ```
    pub fn recommend(&self, req: &RecommendRequest) -> Result<Recommendation> {
        self.recommend_in(None, req)
    }

    /// Opens a session that keeps a user's prompt prefix in a context of its own (taken from the
    /// pool until the session is dropped).
    pub fn session(&self, soft_prompt: Option<String>) -> Result<Session> {
        if let Some(s) = &soft_prompt {
            prompt::soft_prompt(&self.inner.pack, s)?;
        }
        let lease = self.lease(None)?;
        Ok(Session::new(self.clone(), lease, soft_prompt))
    }

    /// How this engine would serve `req`, without decoding anything (validated like a rank).
    pub fn plan(&self, req: &RankRequest) -> Result<RankPlan> {
        let inner = &*self.inner;
        let cat = self.catalog_with(&req.inline)?;
        let r = prompt::resolve(&cat, req)?;
        let (encoder, prefix) = self.rows(&cat, &r)?;
        let strategy = plan::choose(req, r.candidates.len(), inner.n_seq_max, inner.pack.scoring);
        if strategy == Strategy::Verbalizer {
            return Ok(RankPlan {
                strategy,
                encoder: encoder.unwrap_or_default(),
                prefix,
                candidates: r.candidates,
                sequences: vec![],
                groups: vec![],
            });
        }
        let sequences = prompt::candidate_sequences(&cat, &r.candidates, self.decoder_eos())?;
        let groups = plan::shared::groups(&sequences, inner.n_seq_max, inner.n_ctx, prefix.len())?;
        Ok(RankPlan {
            strategy,
            encoder: encoder.unwrap_or_default(),
            groups: groups.iter().map(plan::shared::rows).collect(),
            prefix,
            candidates: r.candidates,
            sequences,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_and_session_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Engine>();
        fn send<T: Send>() {}
        send::<super::Session>();
    }
}
