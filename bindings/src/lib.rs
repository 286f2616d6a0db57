//! delrec-ffi: the UniFFI layer over `delrec-runtime` for Kotlin (Android, JVM) and Swift (iOS).
//!
//! This crate only adapts: records mirror the runtime's types with signed integers (Kotlin's
//! `UInt`/`ULong` mangle method names for Java callers, so the FFI has `Int`/`Long`, checked
//! non-negative where the runtime needs it), the
//! runtime's `Error` becomes [`DelrecError`], and every exported call runs inside
//! `catch_unwind` so that nothing unwinds into the foreign runtime. All ranking logic lives in
//! `delrec-runtime`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use delrec_runtime as rt;

uniffi::setup_scaffolding!();

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Every failure of the library, grouped by what the app can do about it. Kotlin sees
/// `DelrecException` with one subclass per group, Swift `DelrecError` with one case per group;
/// each carries fields the app can read (`kind`, `needed`/`available`, which field of a pack
/// differs) and `reason`, the full human-readable message.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum DelrecError {
    /// The request or the configuration cannot be served as given: fix it.
    #[error("{reason}")]
    BadRequest {
        kind: BadRequestKind,
        /// The item id at fault (`UnknownItem`, `DuplicateCandidate`).
        item_id: Option<String>,
        /// The setting or argument at fault (`InvalidArgument`), or the soft prompt name.
        field: Option<String>,
        reason: String,
    },
    /// A model or pack file cannot be used: replace or rebuild it.
    #[error("{reason}")]
    BadFile {
        kind: BadFileKind,
        path: Option<String>,
        /// `Mismatch`: the first field of the pack's base identity that differs, and both values.
        field: Option<String>,
        pack_value: Option<String>,
        model_value: Option<String>,
        reason: String,
    },
    /// The request needs more of `resource` than the engine was configured with: configure more
    /// (e.g. `context_size`) or ask for less (a shorter history).
    #[error("{reason}")]
    Capacity { resource: Resource, needed: i64, available: i64, reason: String },
    /// The request's `CancelToken` was cancelled.
    #[error("{reason}")]
    Cancelled { reason: String },
    /// The request's timeout passed.
    #[error("{reason}")]
    DeadlineExceeded { reason: String },
    /// Every context stayed in use for `EngineConfig.contextWaitMs` (each open `Session` holds
    /// one): try again later, close a session, or configure more `maxContexts`.
    #[error("{reason}")]
    Busy { contexts: i64, waited_ms: i64, reason: String },
    /// A bug in delrec (or a caught panic); the object it happened in may be unusable.
    #[error("{reason}")]
    Internal { reason: String },
}

/// What was wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum BadRequestKind {
    UnknownItem,
    UnknownSoftPrompt,
    EmptyHistory,
    EmptyCandidates,
    DuplicateCandidate,
    /// A setting or argument out of range (`field` names it).
    InvalidArgument,
    /// `recommend` on a pack without a sequential model.
    NoSequentialModel,
    /// `add_item` with an id the catalog already has (`item_id`).
    DuplicateItem,
    /// `EngineConfig.backend` names a GPU backend this build or device lacks (`field` is
    /// `backend`); set `cpuFallback` to run on the CPU instead.
    BackendUnavailable,
}

/// What was wrong with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum BadFileKind {
    /// Missing or unreadable.
    Io,
    /// Truncated, corrupt, hostile or of another format version.
    Invalid,
    /// llama.cpp refused the model.
    ModelLoad,
    /// The pack was built for another base model.
    Mismatch,
}

/// What a `Capacity` error ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Resource {
    /// KV cells of one context (`EngineConfig.contextSize`).
    ContextCells,
    /// The engine's memory budget against `EngineConfig.memoryLimitBytes`.
    Memory,
    /// Rows of one encoder pass (encoder-decoder models; `EngineConfig.batchSize`).
    EncoderRows,
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count_usize(n: usize) -> i64 {
    count(n as u64)
}

fn small(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn small_usize(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A setting or argument given as a signed FFI integer that must fit `T` (non-negative).
fn unsigned<T: TryFrom<i64>>(field: &str, v: impl Into<i64>) -> Result<T> {
    let v = v.into();
    T::try_from(v).map_err(|_| DelrecError::BadRequest {
        kind: BadRequestKind::InvalidArgument,
        item_id: None,
        field: Some(field.into()),
        reason: format!("bad request: {field} = {v} is out of range (it must be a non-negative count)"),
    })
}

/// The one mapping from the runtime's errors to the FFI's.
impl From<rt::Error> for DelrecError {
    fn from(e: rt::Error) -> Self {
        let reason = e.to_string();
        let path = |p: &std::path::Path| Some(p.display().to_string());
        let bad_request = |kind, item_id: Option<&String>, field: Option<&String>| DelrecError::BadRequest {
            kind,
            item_id: item_id.cloned(),
            field: field.cloned(),
            reason: reason.clone(),
        };
        match &e {
            rt::Error::BadRequest(r) => match r {
                rt::RequestError::UnknownItem { id } => bad_request(BadRequestKind::UnknownItem, Some(id), None),
                rt::RequestError::UnknownSoftPrompt { name, .. } => {
                    bad_request(BadRequestKind::UnknownSoftPrompt, None, Some(name))
                }
                rt::RequestError::EmptyHistory => bad_request(BadRequestKind::EmptyHistory, None, None),
                rt::RequestError::EmptyCandidates => bad_request(BadRequestKind::EmptyCandidates, None, None),
                rt::RequestError::DuplicateCandidate { id } => {
                    bad_request(BadRequestKind::DuplicateCandidate, Some(id), None)
                }
                rt::RequestError::Invalid { field, .. } => {
                    bad_request(BadRequestKind::InvalidArgument, None, Some(field))
                }
                rt::RequestError::NoSequentialModel => bad_request(BadRequestKind::NoSequentialModel, None, None),
                rt::RequestError::DuplicateItem { id } => bad_request(BadRequestKind::DuplicateItem, Some(id), None),
                rt::RequestError::BackendUnavailable { .. } => {
                    bad_request(BadRequestKind::BackendUnavailable, None, Some(&"backend".to_string()))
                }
                _ => bad_request(BadRequestKind::InvalidArgument, None, None),
            },
            rt::Error::BadFile(f) => {
                let (kind, path, field, pack_value, model_value) = match f {
                    rt::FileError::Io { path: p, .. } => (BadFileKind::Io, path(p), None, None, None),
                    rt::FileError::Invalid { path: p, .. } => (BadFileKind::Invalid, path(p), None, None, None),
                    rt::FileError::ModelLoad { path: p, .. } => (BadFileKind::ModelLoad, path(p), None, None, None),
                    rt::FileError::Mismatch { field, pack, model } => {
                        (BadFileKind::Mismatch, None, Some(field.clone()), Some(pack.clone()), Some(model.clone()))
                    }
                    _ => (BadFileKind::Invalid, None, None, None, None),
                };
                DelrecError::BadFile { kind, path, field, pack_value, model_value, reason }
            }
            rt::Error::Capacity { resource, needed, available } => DelrecError::Capacity {
                resource: match resource {
                    rt::Resource::ContextCells => Resource::ContextCells,
                    rt::Resource::Memory => Resource::Memory,
                    rt::Resource::EncoderRows => Resource::EncoderRows,
                    _ => Resource::ContextCells,
                },
                needed: count(*needed),
                available: count(*available),
                reason,
            },
            rt::Error::Cancelled => DelrecError::Cancelled { reason },
            rt::Error::DeadlineExceeded => DelrecError::DeadlineExceeded { reason },
            rt::Error::Busy { contexts, waited_ms } => {
                DelrecError::Busy { contexts: count(*contexts), waited_ms: count(*waited_ms), reason }
            }
            _ => DelrecError::Internal { reason },
        }
    }
}

type Result<T, E = DelrecError> = std::result::Result<T, E>;

/// Runs `f`, turning a panic into `DelrecError::Internal` so that it never crosses the FFI.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(DelrecError::Internal { reason: format!("internal error in delrec: {what}") })
    })
}

// ---------------------------------------------------------------------------------------------
// Records and enums
// ---------------------------------------------------------------------------------------------

/// KV cache element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum KvType {
    F16,
    F32,
}

impl From<KvType> for rt::KvType {
    fn from(k: KvType) -> Self {
        match k {
            KvType::F16 => rt::KvType::F16,
            KvType::F32 => rt::KvType::F32,
        }
    }
}

impl From<rt::KvType> for KvType {
    fn from(k: rt::KvType) -> Self {
        match k {
            rt::KvType::F16 => KvType::F16,
            rt::KvType::F32 => KvType::F32,
        }
    }
}

/// How candidates are evaluated; `Naive` (one full prompt per candidate) is a slow baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Plan {
    SharedPrefix,
    Naive,
}

impl From<Plan> for rt::Plan {
    fn from(p: Plan) -> Self {
        match p {
            Plan::SharedPrefix => rt::Plan::SharedPrefix,
            Plan::Naive => rt::Plan::Naive,
        }
    }
}

/// Which score orders the ranking (chosen by the pack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ScoringMode {
    /// Sum of the title's token log-probabilities.
    Sum,
    /// The sum divided by the number of scored tokens.
    Mean,
    /// One prediction at the template's mask, read by the pack's verbalizer (DELRec as
    /// published): the whole catalog scored in one pass; titles may tie (see `ties`).
    Verbalizer,
}

impl From<rt::ScoringMode> for ScoringMode {
    fn from(m: rt::ScoringMode) -> Self {
        match m {
            rt::ScoringMode::Sum => ScoringMode::Sum,
            rt::ScoringMode::Mean => ScoringMode::Mean,
            rt::ScoringMode::Verbalizer => ScoringMode::Verbalizer,
        }
    }
}

/// Engine settings: `EngineConfig()` is the runtime's defaults (so is `defaultEngineConfig()`);
/// name what you change.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct EngineConfig {
    /// Threads per decode; 0 = the fast cores (a phone's big and prime cores, from sysfs),
    /// every available core elsewhere.
    #[uniffi(default = 0)]
    pub threads: i32,
    /// KV cells per context: the prompt prefix plus the title tokens of one candidate group.
    #[uniffi(default = 2048)]
    pub context_size: i32,
    /// Rows per llama.cpp decode.
    #[uniffi(default = 512)]
    pub batch_size: i32,
    /// Sequences per context (2..=256).
    #[uniffi(default = 32)]
    pub max_sequences: i32,
    /// Most rows of one decode whose logits are read: the logits and output-projection scratch
    /// scale with it; more candidate rows go in further decodes.
    #[uniffi(default = 64)]
    pub max_outputs: i32,
    /// Contexts kept for concurrent calls (each open `Session` holds one).
    #[uniffi(default = 2)]
    pub max_contexts: i32,
    /// How long a call or a new session waits for a free context before `Busy` (ms, ≤ 1 hour).
    #[uniffi(default = 10000)]
    pub context_wait_ms: i64,
    /// Refuse to open (`Capacity`, resource `MEMORY`) when the engine could use more than this
    /// many bytes with every context busy; null: no limit.
    #[uniffi(default)]
    pub memory_limit_bytes: Option<i64>,
    /// Where the model runs; null = `AUTO`: a GPU when the build has one and a device is found,
    /// else the CPU. `devices()` lists what this build found. (`Engine.config()` reports the
    /// value, never null.)
    #[uniffi(default)]
    pub backend: Option<Backend>,
    /// A requested GPU backend that is missing: run on the CPU instead of `BackendUnavailable`.
    #[uniffi(default = false)]
    pub cpu_fallback: bool,
    /// Layers offloaded when a GPU runs the model: -1 (the default) = all, 0 = none.
    #[uniffi(default = -1)]
    pub gpu_layers: i32,
    /// KV cache element type; null = `F16`.
    #[uniffi(default)]
    pub kv_type: Option<KvType>,
    /// llama.cpp flash attention (on by default: faster for trie rows on CPU). Off together with
    /// an F32 KV cache is the exact path, for comparing plans.
    #[uniffi(default = true)]
    pub flash_attention: bool,
    /// On by default: the model file's sha256 must be one the pack pins (computed once per
    /// version of the file). Off only for files the app verified itself.
    #[uniffi(default = true)]
    pub verify_checksum: bool,
    /// A private directory (e.g. the app's cache dir) where verified digests are remembered
    /// across launches, so a cold start hashes the model only after it changed.
    #[uniffi(default)]
    pub digest_cache_dir: Option<String>,
    /// On by default: quantized weights get ggml's faster CPU layouts, a second copy in memory.
    /// Off: the mapped weights as they are (less memory, slower on some CPUs).
    #[uniffi(default = true)]
    pub repack_weights: bool,
}

impl From<rt::EngineConfig> for EngineConfig {
    fn from(c: rt::EngineConfig) -> Self {
        Self {
            threads: small_usize(c.threads),
            context_size: small(c.context_size),
            batch_size: small(c.batch_size),
            max_sequences: small(c.max_sequences),
            max_outputs: small(c.max_outputs),
            max_contexts: small_usize(c.max_contexts),
            context_wait_ms: i64::try_from(c.context_wait.as_millis()).unwrap_or(i64::MAX),
            memory_limit_bytes: c.memory_limit.map(count),
            backend: Some(c.backend.into()),
            cpu_fallback: c.cpu_fallback,
            gpu_layers: c.gpu_layers,
            kv_type: Some(c.kv_type.into()),
            flash_attention: c.flash_attention,
            verify_checksum: c.verify_checksum,
            digest_cache_dir: c.digest_cache.map(|p| p.to_string_lossy().into_owned()),
            repack_weights: c.repack_weights,
        }
    }
}

impl TryFrom<EngineConfig> for rt::EngineConfig {
    type Error = DelrecError;

    // As for requests: a setting added to the runtime keeps its default until mirrored.
    #[allow(clippy::needless_update)]
    fn try_from(c: EngineConfig) -> Result<Self> {
        let d = rt::EngineConfig::default();
        Ok(Self {
            threads: unsigned("threads", c.threads)?,
            context_size: unsigned("context_size", c.context_size)?,
            batch_size: unsigned("batch_size", c.batch_size)?,
            max_sequences: unsigned("max_sequences", c.max_sequences)?,
            max_outputs: unsigned("max_outputs", c.max_outputs)?,
            max_contexts: unsigned("max_contexts", c.max_contexts)?,
            context_wait: Duration::from_millis(unsigned("context_wait_ms", c.context_wait_ms)?),
            memory_limit: c.memory_limit_bytes.map(|b| unsigned("memory_limit_bytes", b)).transpose()?,
            backend: c.backend.map_or(d.backend, Into::into),
            cpu_fallback: c.cpu_fallback,
            gpu_layers: c.gpu_layers,
            kv_type: c.kv_type.map_or(d.kv_type, Into::into),
            flash_attention: c.flash_attention,
            verify_checksum: c.verify_checksum,
            digest_cache: c.digest_cache_dir.map(Into::into),
            repack_weights: c.repack_weights,
            ..d
        })
    }
}

/// What to rank. Only `history` has no default; a `Session` ignores `history` and `soft_prompt`.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RankRequest {
    /// Item ids, most recent last. Must not be empty (except for a session's requests).
    #[uniffi(default)]
    pub history: Vec<String>,
    /// Candidate ids; null ranks the whole catalog.
    #[uniffi(default)]
    pub candidates: Option<Vec<String>>,
    /// Keep the best `k`; null keeps all.
    #[uniffi(default)]
    pub top_k: Option<i32>,
    /// Use this soft prompt in every soft slot of the template.
    #[uniffi(default)]
    pub soft_prompt: Option<String>,
    /// Leave the history's items out of whole-catalog candidates.
    #[uniffi(default = false)]
    pub exclude_history: bool,
    /// Score every candidate even when `top_k` is set (by default, under `sum` scoring, branches
    /// that provably cannot reach the top k are skipped; the top k is the same).
    #[uniffi(default = false)]
    pub exhaustive: bool,
    /// null = `Plan.SHARED_PREFIX`.
    #[uniffi(default)]
    pub plan: Option<Plan>,
    /// Cancels the request from another thread.
    #[uniffi(default)]
    pub cancel: Option<Arc<CancelToken>>,
    /// Fails with `DeadlineExceeded` after this many milliseconds.
    #[uniffi(default)]
    pub timeout_ms: Option<i64>,
    /// Told after every decode how many rows are done of those planned (a progress bar for a
    /// long whole-catalog rank), on the ranking thread: return quickly.
    #[uniffi(default)]
    pub progress: Option<Arc<dyn ProgressListener>>,
    /// Items not in the catalog, ranked for this request only, after `candidates` (an empty
    /// list there ranks only these); an id the catalog has is `DUPLICATE_ITEM`.
    #[uniffi(default)]
    pub inline: Vec<InlineItem>,
}

/// An item given in a request rather than in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct InlineItem {
    pub id: String,
    pub title: String,
}

impl std::fmt::Debug for dyn ProgressListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressListener")
    }
}

fn timeout(ms: Option<i64>) -> Result<Option<Duration>> {
    ms.map(|ms| unsigned("timeout_ms", ms).map(Duration::from_millis)).transpose()
}

impl TryFrom<RankRequest> for rt::RankRequest {
    type Error = DelrecError;

    // `..Default::default()`: a request option added to the runtime keeps its default here
    // until it is mirrored, instead of breaking the build.
    #[allow(clippy::needless_update)]
    fn try_from(r: RankRequest) -> Result<Self> {
        Ok(Self {
            history: r.history,
            candidates: r.candidates,
            top_k: r.top_k.map(|k| unsigned("top_k", k)).transpose()?,
            soft_prompt: r.soft_prompt,
            exclude_history: r.exclude_history,
            exhaustive: r.exhaustive,
            plan: r.plan.map(Into::into).unwrap_or_default(),
            cancel: r.cancel.map(|c| c.0.clone()),
            timeout: timeout(r.timeout_ms)?,
            progress: r.progress.map(|l| {
                rt::OnProgress::new(move |p| {
                    let _ = l.on_progress(RankProgress {
                        decoded_rows: count_usize(p.decoded_rows),
                        planned_rows: count_usize(p.planned_rows),
                        decode_calls: count_usize(p.decode_calls),
                    });
                })
            }),
            inline: r.inline.into_iter().map(|i| rt::InlineItem { id: i.id, title: i.title }).collect(),
            ..Default::default()
        })
    }
}

/// How far a rank has come: rows sent to llama.cpp and the most it will need (an upper bound
/// that may grow; a top-k search usually stops well short of it).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RankProgress {
    pub decoded_rows: i64,
    pub planned_rows: i64,
    pub decode_calls: i64,
}

/// What an app's callback (a listener, a log sink) threw; the call it reported on goes on.
/// Callbacks declare it so that an exception thrown in one is a value here, not a panic.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum CallbackError {
    #[error("{reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        CallbackError::Failed { reason: e.reason }
    }
}

/// Receives a rank's progress (`RankRequest.progress`), on the ranking thread. What it throws
/// is ignored.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, progress: RankProgress) -> Result<(), CallbackError>;
}

/// Receives an open's progress (`Engine.openWithProgress`): `fraction` 0..1 of `stage`. What it
/// throws is ignored.
#[uniffi::export(with_foreign)]
pub trait LoadListener: Send + Sync {
    fn on_load_progress(&self, stage: LoadStage, fraction: f32) -> Result<(), CallbackError>;
}

/// Which part of an open is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum LoadStage {
    /// Hashing the model file against the pack's pinned digest (skipped when this version of
    /// the file was verified before).
    Verify,
    /// llama.cpp loading the weights.
    Load,
}

fn open_options(progress: Option<Arc<dyn LoadListener>>, cancel: Option<Arc<CancelToken>>) -> rt::OpenOptions {
    rt::OpenOptions {
        progress: progress.map(|l| {
            Arc::new(move |p: rt::LoadProgress| {
                let stage = match p.stage {
                    rt::LoadStage::Verify => LoadStage::Verify,
                    rt::LoadStage::Load => LoadStage::Load,
                };
                let _ = l.on_load_progress(stage, p.fraction);
            }) as Arc<dyn Fn(rt::LoadProgress) + Send + Sync>
        }),
        cancel: cancel.map(|c| c.0.clone()),
    }
}

/// A ranked candidate.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ScoredItem {
    pub id: String,
    pub title: String,
    /// Catalog index of the item.
    pub index: i32,
    /// The ranking score under the pack's scoring mode.
    pub score: f64,
    /// Σ ln p over the scored tokens.
    pub logprob: f64,
    /// Number of scored tokens (title + terminator).
    pub n_tokens: i32,
    /// `logprob / n_tokens`.
    pub mean_logprob: f64,
    /// How many other ranked items have exactly this score.
    pub ties: i32,
}

impl From<rt::ScoredItem> for ScoredItem {
    fn from(s: rt::ScoredItem) -> Self {
        Self {
            id: s.id,
            title: s.title,
            index: small(s.index),
            score: s.score,
            logprob: s.logprob,
            n_tokens: small(s.n_tokens),
            mean_logprob: s.mean_logprob,
            ties: small(s.ties),
        }
    }
}

/// Counters of one ranking call.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RankStats {
    pub prefix_rows: i64,
    /// Prefix rows found already decoded (sessions).
    pub prefix_reused: i64,
    /// Rows sent to llama.cpp in total.
    pub decoded_rows: i64,
    pub decode_calls: i64,
    pub candidates: i64,
    /// Candidates left unscored because they provably could not reach the top k.
    pub pruned: i64,
    /// Encoder passes (encoder-decoder models: one per request).
    pub encoder_passes: i64,
    /// Rows those passes encoded.
    pub encoder_rows: i64,
    /// The backend that ran the model (`CPU` or a GPU backend; never `AUTO`).
    pub backend: Backend,
}

impl From<rt::RankStats> for RankStats {
    fn from(s: rt::RankStats) -> Self {
        Self {
            prefix_rows: count_usize(s.prefix_rows),
            prefix_reused: count_usize(s.prefix_reused),
            decoded_rows: count_usize(s.decoded_rows),
            decode_calls: count_usize(s.decode_calls),
            candidates: count_usize(s.candidates),
            pruned: count_usize(s.pruned),
            encoder_passes: count_usize(s.encoder_passes),
            encoder_rows: count_usize(s.encoder_rows),
            backend: s.backend.into(),
        }
    }
}

/// The result of a ranking call: best first.
#[derive(Clone, Debug, uniffi::Record)]
pub struct Ranking {
    pub items: Vec<ScoredItem>,
    pub stats: RankStats,
}

impl From<rt::Ranking> for Ranking {
    fn from(r: rt::Ranking) -> Self {
        Self { items: r.items.into_iter().map(Into::into).collect(), stats: r.stats.into() }
    }
}

/// What to recommend (the cascade). Only `history` and `n` matter by default; a `Session`
/// ignores `history` and `soft_prompt`.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RecommendRequest {
    /// Item ids, most recent last.
    #[uniffi(default)]
    pub history: Vec<String>,
    /// Results wanted.
    #[uniffi(default = 10)]
    pub n: i32,
    /// Items the sequential model hands the LLM; null = the pack's default (at least `n`).
    #[uniffi(default)]
    pub retrieve: Option<i32>,
    /// The LLM's weight in the fused score, 0..1; null = the pack's.
    #[uniffi(default)]
    pub llm_weight: Option<f32>,
    /// Sequential model only (no LLM call).
    #[uniffi(default = false)]
    pub llm_off: bool,
    /// Allow the history's items among the results.
    #[uniffi(default = false)]
    pub include_history: bool,
    #[uniffi(default)]
    pub soft_prompt: Option<String>,
    #[uniffi(default)]
    pub cancel: Option<Arc<CancelToken>>,
    #[uniffi(default)]
    pub timeout_ms: Option<i64>,
}

impl TryFrom<RecommendRequest> for rt::RecommendRequest {
    type Error = DelrecError;

    #[allow(clippy::needless_update)]
    fn try_from(r: RecommendRequest) -> Result<Self> {
        Ok(Self {
            history: r.history,
            n: unsigned("n", r.n)?,
            retrieve: r.retrieve.map(|k| unsigned("retrieve", k)).transpose()?,
            llm_weight: r.llm_weight,
            llm_off: r.llm_off,
            include_history: r.include_history,
            soft_prompt: r.soft_prompt,
            cancel: r.cancel.map(|c| c.0.clone()),
            timeout: timeout(r.timeout_ms)?,
            ..Default::default()
        })
    }
}

/// A recommended item with the scores that placed it.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Recommended {
    pub id: String,
    pub title: String,
    pub index: i32,
    /// The sequential model's score.
    pub seq_score: f64,
    /// The LLM's score; null with `llm_off`.
    pub llm_score: Option<f64>,
    /// What the order follows: the fused score (`seq_score` with `llm_off`).
    pub score: f64,
}

/// Counters of one `recommend` call.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RecommendStats {
    pub retrieved: i64,
    pub retrieval_micros: i64,
    pub rerank_micros: i64,
    /// The LLM re-rank's counters; null with `llm_off`.
    pub rank: Option<RankStats>,
}

#[derive(Clone, Debug, uniffi::Record)]
pub struct Recommendation {
    pub items: Vec<Recommended>,
    pub stats: RecommendStats,
}

impl From<rt::Recommendation> for Recommendation {
    fn from(r: rt::Recommendation) -> Self {
        Self {
            items: r
                .items
                .into_iter()
                .map(|i| Recommended {
                    id: i.id,
                    title: i.title,
                    index: small(i.index),
                    seq_score: i.seq_score,
                    llm_score: i.llm_score,
                    score: i.score,
                })
                .collect(),
            stats: RecommendStats {
                retrieved: count_usize(r.stats.retrieved),
                retrieval_micros: count(r.stats.retrieval_micros),
                rerank_micros: count(r.stats.rerank_micros),
                rank: r.stats.rank.map(Into::into),
            },
        }
    }
}

/// What `add_item` made of an item.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AddedItem {
    /// Its catalog index (after the pack's items).
    pub index: i32,
    pub n_tokens: i32,
    /// Whether `recommend` can retrieve it (the pack's sequential model embeds new items).
    pub retrievable: bool,
}

/// A catalog entry of the pack.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CatalogItem {
    pub id: String,
    pub title: String,
    pub index: i32,
    /// Optional longer text stored with the item.
    pub text: Option<String>,
}

/// Where a model runs (`EngineConfig.backend`, `RankStats.backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Backend {
    Auto,
    Cpu,
    Vulkan,
    OpenCl,
    Metal,
    Cuda,
}

impl From<rt::BackendKind> for Backend {
    fn from(b: rt::BackendKind) -> Self {
        match b {
            rt::BackendKind::Cpu => Backend::Cpu,
            rt::BackendKind::Vulkan => Backend::Vulkan,
            rt::BackendKind::OpenCl => Backend::OpenCl,
            rt::BackendKind::Metal => Backend::Metal,
            rt::BackendKind::Cuda => Backend::Cuda,
            _ => Backend::Auto,
        }
    }
}

impl From<Backend> for rt::BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Auto => rt::BackendKind::Auto,
            Backend::Cpu => rt::BackendKind::Cpu,
            Backend::Vulkan => rt::BackendKind::Vulkan,
            Backend::OpenCl => rt::BackendKind::OpenCl,
            Backend::Metal => rt::BackendKind::Metal,
            Backend::Cuda => rt::BackendKind::Cuda,
        }
    }
}

/// One compute device this build found (`devices()`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    /// The backend as `EngineConfig.backend` names it; null for ones it cannot select (BLAS).
    pub backend: Option<Backend>,
    /// ggml's backend name (`CPU`, `Vulkan`, `OpenCL`, `MTL`, ...).
    pub backend_name: String,
    /// ggml's device name (`CPU`, `Vulkan0`, ...).
    pub name: String,
    /// What the driver calls it.
    pub description: String,
    /// Layers can be offloaded to it (a GPU).
    pub offloads: bool,
    pub memory_free_bytes: i64,
    pub memory_total_bytes: i64,
}

impl From<rt::DeviceInfo> for DeviceInfo {
    fn from(d: rt::DeviceInfo) -> Self {
        Self {
            backend: d.backend.map(Into::into),
            offloads: d.offloads(),
            backend_name: d.backend_name,
            name: d.name,
            description: d.description,
            memory_free_bytes: count(d.memory_free),
            memory_total_bytes: count(d.memory_total),
        }
    }
}

/// What an engine's model runs on (`Engine.backend()`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct BackendInfo {
    /// What ran: `CPU` or a GPU backend, never `AUTO`.
    pub kind: Backend,
    pub requested: Backend,
    /// The device layers were offloaded to, if any.
    pub device: Option<DeviceInfo>,
    /// Layers offloaded (0 on the CPU).
    pub gpu_layers: i32,
    /// The requested GPU backend was missing and `cpuFallback` allowed the CPU.
    pub fell_back: bool,
}

impl From<rt::BackendInfo> for BackendInfo {
    fn from(b: rt::BackendInfo) -> Self {
        Self {
            kind: b.kind.into(),
            requested: b.requested.into(),
            device: b.device.map(Into::into),
            gpu_layers: b.gpu_layers,
            fell_back: b.fell_back,
        }
    }
}

/// The CPU and GPU devices this build's backends found.
#[uniffi::export]
pub fn devices() -> Vec<DeviceInfo> {
    guard(|| Ok(rt::devices().into_iter().map(Into::into).collect())).unwrap_or_default()
}

/// How much a log line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl From<LogLevel> for rt::log::LogLevel {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Debug => rt::log::LogLevel::Debug,
            LogLevel::Info => rt::log::LogLevel::Info,
            LogLevel::Warn => rt::log::LogLevel::Warn,
            LogLevel::Error => rt::log::LogLevel::Error,
        }
    }
}

/// Receives log lines (llama.cpp's load and decode messages among them): route them to
/// logcat, `os_log` or the app's logger. Called on the thread that logged; a sink that throws
/// loses that line, nothing else.
#[uniffi::export(with_foreign)]
pub trait LogSink: Send + Sync {
    fn log(&self, level: LogLevel, message: String) -> Result<(), CallbackError>;
}

/// Sends every following log line at `min_level` or above to `sink` (null: none, the default;
/// nothing is ever printed to stderr).
#[uniffi::export]
pub fn set_log_sink(sink: Option<Arc<dyn LogSink>>, min_level: LogLevel) {
    let sink = sink.map(|s| {
        Arc::new(move |level: rt::log::LogLevel, line: &str| {
            let level = match level {
                rt::log::LogLevel::Debug => LogLevel::Debug,
                rt::log::LogLevel::Info => LogLevel::Info,
                rt::log::LogLevel::Warn => LogLevel::Warn,
                rt::log::LogLevel::Error => LogLevel::Error,
            };
            let _ = s.log(level, line.to_string());
        }) as rt::log::LogSink
    });
    rt::log::set_log_sink(sink, min_level.into());
}

/// The runtime's default engine settings.
#[uniffi::export]
pub fn default_engine_config() -> EngineConfig {
    // The two enums are null here, as in `EngineConfig()` (UniFFI has no enum defaults).
    EngineConfig { backend: None, kv_type: None, ..rt::EngineConfig::default().into() }
}

/// Installs a new model or pack (e.g. a finished download) at `destination` by an atomic
/// rename: engines with the old file open keep working, a file that is not GGUF never replaces
/// a good one. Never overwrite a model in place: llama.cpp maps it, and a file changed under a
/// mapping crashes the process.
#[uniffi::export]
pub fn install_file(source: String, destination: String) -> Result<()> {
    guard(|| Ok(rt::install_file(source, destination)?))
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// Cancels a running request from another thread.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelToken(rt::CancelToken);

#[uniffi::export]
impl CancelToken {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.0.cancel()
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A base model opened once, for many recommender packs over it (movies, music, one per
/// market): each pack's engine has its own soft prompts, adapter and catalog, and all share the
/// model's memory and one pool of `max_contexts` contexts. Thread-safe.
#[derive(uniffi::Object)]
pub struct Base {
    inner: rt::Base,
}

#[uniffi::export]
impl Base {
    /// Opens a model GGUF; `config` sizes the shared context pool. With `verify_checksum` on,
    /// every pack opened over it must pin this file's sha256.
    #[uniffi::constructor]
    pub fn open(model_path: String, config: EngineConfig) -> Result<Arc<Self>> {
        guard(|| Ok(Arc::new(Self { inner: rt::Base::open(&model_path, config.try_into()?)? })))
    }

    /// `open` reporting progress to `progress` and stopped by `cancel` (then `Cancelled`).
    #[uniffi::constructor]
    pub fn open_with_progress(
        model_path: String,
        config: EngineConfig,
        progress: Option<Arc<dyn LoadListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Arc<Self>> {
        guard(|| {
            let opts = open_options(progress, cancel);
            Ok(Arc::new(Self { inner: rt::Base::open_with(&model_path, config.try_into()?, &opts)? }))
        })
    }

    /// Opens a pack over this model, with the pack's adapter from beside it when it names one.
    pub fn open_pack(&self, pack_path: String) -> Result<Arc<Engine>> {
        guard(|| Ok(Arc::new(Engine { inner: self.inner.open_pack(&pack_path)? })))
    }

    /// Opens a pack whose adapter file is at `adapter_path` (it must be the file the pack pins).
    pub fn open_pack_with_adapter(&self, pack_path: String, adapter_path: String) -> Result<Arc<Engine>> {
        guard(|| Ok(Arc::new(Engine { inner: self.inner.open_pack_with_adapter(&pack_path, &adapter_path)? })))
    }

    /// Adapter files loaded over the model and in use by an open pack.
    pub fn adapters_loaded(&self) -> i32 {
        small_usize(self.inner.adapters_loaded())
    }
}

/// A pack's LoRA adapter as the engine applies it.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct AdapterInfo {
    pub path: String,
    pub scale: f32,
    pub alpha: f32,
    /// The largest rank of its weights.
    pub max_rank: i32,
    /// Module stems adapted (`attn_q`, `ffn_down`, ...).
    pub targets: Vec<String>,
    pub weights: i32,
    pub tensor_bytes: i64,
}

/// A model and its recommender pack, ready to rank. Thread-safe: share one per process.
#[derive(uniffi::Object)]
pub struct Engine {
    inner: rt::Engine,
}

#[uniffi::export]
impl Engine {
    /// Opens a model GGUF and a pack built for it.
    #[uniffi::constructor]
    pub fn open(model_path: String, pack_path: String, config: EngineConfig) -> Result<Arc<Self>> {
        guard(|| {
            let inner = rt::Engine::open(&model_path, &pack_path, config.try_into()?)?;
            Ok(Arc::new(Self { inner }))
        })
    }

    /// `open` reporting progress to `progress` (the digest check, then llama.cpp's load) and
    /// stopped by `cancel` (then `Cancelled`). Blocks; call it off the UI thread.
    #[uniffi::constructor]
    pub fn open_with_progress(
        model_path: String,
        pack_path: String,
        config: EngineConfig,
        progress: Option<Arc<dyn LoadListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Arc<Self>> {
        guard(|| {
            let opts = open_options(progress, cancel);
            let inner = rt::Engine::open_with(&model_path, &pack_path, config.try_into()?, &opts)?;
            Ok(Arc::new(Self { inner }))
        })
    }

    /// Opens a model and a pack stored in part of open files: on Android, uncompressed APK
    /// assets through their `AssetFileDescriptor`s (`parcelFileDescriptor.fd`, `startOffset`,
    /// `length`), read in place instead of copied out. The descriptors are duplicated (close
    /// yours whenever you like). The model is mapped when its offset is a multiple of 64, else
    /// read into memory. A pack that names an adapter file must be opened by path. Blocks.
    #[uniffi::constructor]
    #[allow(clippy::too_many_arguments)]
    pub fn open_fd(
        model_fd: i32,
        model_offset: i64,
        model_length: i64,
        pack_fd: i32,
        pack_offset: i64,
        pack_length: i64,
        config: EngineConfig,
        progress: Option<Arc<dyn LoadListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Arc<Self>> {
        guard(|| {
            let range = |fd: i32, offset: i64, length: i64, what: &str| -> Result<rt::FileRange> {
                let offset = unsigned(&format!("{what}_offset"), offset)?;
                let length = unsigned(&format!("{what}_length"), length)?;
                #[cfg(unix)]
                {
                    Ok(rt::FileRange::from_fd(fd, offset, length, format!("{what} (descriptor {fd})"))?)
                }
                #[cfg(not(unix))]
                {
                    let _ = (fd, offset, length);
                    Err(DelrecError::BadRequest {
                        kind: BadRequestKind::InvalidArgument,
                        item_id: None,
                        field: Some(format!("{what}_fd")),
                        reason: "opening from a file descriptor needs a Unix platform".into(),
                    })
                }
            };
            let model = range(model_fd, model_offset, model_length, "model")?;
            let pack = range(pack_fd, pack_offset, pack_length, "pack")?;
            let opts = open_options(progress, cancel);
            let inner = rt::Engine::open_ranges(&model, &pack, config.try_into()?, &opts)?;
            Ok(Arc::new(Self { inner }))
        })
    }

    /// Ranks candidates (or the whole catalog) for `request.history`. Blocks; call it off the UI
    /// thread.
    pub fn rank(&self, request: RankRequest) -> Result<Ranking> {
        guard(|| Ok(self.inner.rank(&request.try_into()?)?.into()))
    }

    /// The cascade: the pack's sequential model retrieves from the whole catalog, the LLM
    /// re-ranks, the fused score orders. Blocks; call it off the UI thread.
    pub fn recommend(&self, request: RecommendRequest) -> Result<Recommendation> {
        guard(|| Ok(self.inner.recommend(&request.try_into()?)?.into()))
    }

    /// What the model runs on (decided at open from `EngineConfig.backend`).
    pub fn backend(&self) -> BackendInfo {
        self.inner.backend().clone().into()
    }

    /// The pack's LoRA adapter, when it is served with one.
    pub fn adapter(&self) -> Option<AdapterInfo> {
        self.inner.adapter().map(|a| AdapterInfo {
            path: a.path.display().to_string(),
            scale: a.scale,
            alpha: a.alpha,
            max_rank: small(a.ranks.iter().map(|&(r, _)| r).max().unwrap_or(0)),
            targets: a.targets,
            weights: small_usize(a.weights),
            tensor_bytes: count(a.tensor_bytes),
        })
    }

    /// Whether the pack carries a sequential model (`recommend` needs one).
    pub fn has_sequential_model(&self) -> bool {
        self.inner.pack().seq.is_some()
    }

    /// Opens a session that keeps one user's decoded history (it holds one of the engine's
    /// `max_contexts` contexts until it is closed/destroyed).
    pub fn session(&self, soft_prompt: Option<String>) -> Result<Arc<Session>> {
        guard(|| {
            let session = self.inner.session(soft_prompt)?;
            Ok(Arc::new(Session { inner: Mutex::new(session) }))
        })
    }

    /// Number of items in the catalog: the pack's plus those added with `add_item`.
    pub fn catalog_size(&self) -> i64 {
        count_usize(self.inner.n_items())
    }

    /// Adds an item the pack does not have (kept while the engine lives): ranked like any
    /// other, and retrieved by `recommend` when the pack's sequential model can embed new items
    /// (`AddedItem.retrievable`).
    pub fn add_item(&self, id: String, title: String) -> Result<AddedItem> {
        guard(|| {
            let a = self.inner.add_item(&id, &title)?;
            Ok(AddedItem { index: small(a.index), n_tokens: small_usize(a.n_tokens), retrievable: a.retrievable })
        })
    }

    /// Gives an item (the pack's or an added one) a new title; a pack item keeps its
    /// sequential-model vector, an added one gets a new one.
    pub fn replace_item(&self, id: String, title: String) -> Result<AddedItem> {
        guard(|| {
            let a = self.inner.replace_item(&id, &title)?;
            Ok(AddedItem { index: small(a.index), n_tokens: small_usize(a.n_tokens), retrievable: a.retrievable })
        })
    }

    /// Takes an item out of recommendation (no later rank or recommend returns it; histories
    /// holding it still work). Returns whether it was in recommendation before.
    pub fn remove_item(&self, id: String) -> Result<bool> {
        guard(|| Ok(self.inner.remove_item(&id)?))
    }

    /// Items that can be recommended: `catalog_size()` less the removed ones.
    pub fn live_catalog_size(&self) -> i64 {
        count_usize(self.inner.n_live_items())
    }

    /// The catalog entry with this id.
    pub fn item(&self, id: String) -> Result<CatalogItem> {
        guard(|| {
            let index = self.inner.item_index(&id).ok_or(rt::Error::from(rt::RequestError::UnknownItem { id }))?;
            self.catalog_item(index)
        })
    }

    /// The title of the item with this id.
    pub fn item_title(&self, id: String) -> Result<String> {
        self.item(id).map(|i| i.title)
    }

    /// The catalog entry at `index` (0..catalog_size).
    pub fn item_at(&self, index: i32) -> Result<CatalogItem> {
        guard(|| {
            let n = self.inner.n_items();
            if index < 0 || index as usize >= n {
                return Err(DelrecError::BadRequest {
                    kind: BadRequestKind::InvalidArgument,
                    item_id: None,
                    field: Some("index".into()),
                    reason: format!("catalog index {index} out of range (the catalog has {n} items)"),
                });
            }
            self.catalog_item(index as u32)
        })
    }

    /// Names of the pack's soft prompts.
    pub fn soft_prompts(&self) -> Vec<String> {
        self.inner.pack().soft_prompts.iter().map(|s| s.name.clone()).collect()
    }

    /// The score that orders rankings.
    pub fn scoring_mode(&self) -> ScoringMode {
        self.inner.pack().scoring.into()
    }

    /// The settings the engine was opened with.
    pub fn config(&self) -> EngineConfig {
        self.inner.config().clone().into()
    }
}

impl Engine {
    fn catalog_item(&self, index: u32) -> Result<CatalogItem> {
        let (id, title) = self
            .inner
            .item(index)
            .ok_or_else(|| DelrecError::Internal { reason: format!("catalog index {index} out of range") })?;
        Ok(CatalogItem { id, title, index: small(index), text: self.inner.pack().item_text(index).map(str::to_string) })
    }
}

/// One user's running history, kept decoded: after `push`, a rank decodes only what changed.
/// Calls on one session are serialized.
#[derive(uniffi::Object)]
pub struct Session {
    inner: Mutex<rt::Session>,
}

impl Session {
    fn with<T>(&self, f: impl FnOnce(&mut rt::Session) -> rt::Result<T>) -> Result<T> {
        guard(|| {
            let mut session = self.inner.lock().map_err(|_| DelrecError::Internal {
                reason: "this session failed with an internal error earlier; open a new one".into(),
            })?;
            Ok(f(&mut session)?)
        })
    }
}

#[uniffi::export]
impl Session {
    /// Appends an item to the history (most recent last).
    pub fn push(&self, id: String) -> Result<()> {
        self.with(|s| s.push(&id))
    }

    /// Replaces the history.
    pub fn set_history(&self, ids: Vec<String>) -> Result<()> {
        self.with(|s| s.set_history(&ids))
    }

    /// The history, oldest first.
    pub fn history(&self) -> Result<Vec<String>> {
        self.with(|s| Ok(s.history().to_vec()))
    }

    /// Decodes the prompt prefix for the session's history now (call it right after `push`,
    /// off the UI thread): the next `rank` with a request of this shape decodes only candidate
    /// rows. Only what shapes the prompt counts in `request`, plus `cancel` and `timeoutMs`; a
    /// cancelled prefill leaves the session valid.
    pub fn prefill(&self, request: RankRequest) -> Result<RankStats> {
        let request = guard(|| request.try_into())?;
        self.with(|s| s.prefill(&request)).map(Into::into)
    }

    /// Ranks with the session's history; `request.history` and `request.soft_prompt` are ignored.
    pub fn rank(&self, request: RankRequest) -> Result<Ranking> {
        let request = guard(|| request.try_into())?;
        self.with(|s| s.rank(&request)).map(Into::into)
    }

    /// The cascade with the session's history; `request.history` and `request.soft_prompt` are
    /// ignored.
    pub fn recommend(&self, request: RecommendRequest) -> Result<Recommendation> {
        let request = guard(|| request.try_into())?;
        self.with(|s| s.recommend(&request)).map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
        check::<Session>();
        check::<CancelToken>();
    }

    #[test]
    fn config_round_trips() {
        let c = default_engine_config();
        let back = rt::EngineConfig::try_from(c).unwrap();
        let resolved = EngineConfig::from(back);
        assert_eq!(resolved, EngineConfig::from(rt::EngineConfig::default()));
        assert_eq!(EngineConfig::from(rt::EngineConfig::try_from(resolved.clone()).unwrap()), resolved);
    }

    #[test]
    fn negative_counts_are_invalid_arguments() {
        let c = EngineConfig { max_contexts: -1, ..default_engine_config() };
        let e = rt::EngineConfig::try_from(c).unwrap_err();
        assert!(
            matches!(&e, DelrecError::BadRequest { kind: BadRequestKind::InvalidArgument, field: Some(f), .. } if f == "max_contexts"),
            "{e:?}"
        );
        let r = RankRequest {
            history: vec!["m1".into()],
            candidates: None,
            top_k: Some(-3),
            soft_prompt: None,
            exclude_history: false,
            exhaustive: false,
            plan: None,
            cancel: None,
            timeout_ms: None,
            progress: None,
            inline: vec![],
        };
        assert!(
            matches!(rt::RankRequest::try_from(r.clone()), Err(DelrecError::BadRequest { field: Some(f), .. }) if f == "top_k")
        );
        let r = RankRequest { top_k: None, timeout_ms: Some(-1), ..r };
        assert!(
            matches!(rt::RankRequest::try_from(r), Err(DelrecError::BadRequest { field: Some(f), .. }) if f == "timeout_ms")
        );
    }

    #[test]
    fn errors_keep_the_runtime_message_and_fields() {
        let e = DelrecError::from(rt::Error::from(rt::RequestError::UnknownItem { id: "m999".into() }));
        assert!(
            matches!(&e, DelrecError::BadRequest { kind: BadRequestKind::UnknownItem, item_id: Some(i), .. } if i == "m999"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "bad request: unknown item id \"m999\"");
        let e = DelrecError::from(rt::Error::from(rt::RequestError::EmptyHistory));
        assert!(matches!(e, DelrecError::BadRequest { kind: BadRequestKind::EmptyHistory, .. }));
        let e =
            DelrecError::from(rt::Error::Capacity { resource: rt::Resource::ContextCells, needed: 40, available: 32 });
        assert!(matches!(e, DelrecError::Capacity { needed: 40, available: 32, .. }), "{e:?}");
        let e = DelrecError::from(rt::Error::from(rt::FileError::Mismatch {
            field: "n_embd".into(),
            pack: "64".into(),
            model: "32".into(),
        }));
        assert!(
            matches!(&e, DelrecError::BadFile { kind: BadFileKind::Mismatch, field: Some(f), pack_value: Some(p), .. }
                if f == "n_embd" && p == "64"),
            "{e:?}"
        );
    }

    #[test]
    fn panics_become_internal_errors() {
        let r: Result<()> = guard(|| panic!("boom"));
        match r {
            Err(DelrecError::Internal { reason }) => assert!(reason.contains("boom")),
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    #[test]
    fn missing_files_are_io_errors() {
        let r = Engine::open("/nonexistent/m.gguf".into(), "/nonexistent/p.gguf".into(), default_engine_config());
        assert!(matches!(r, Err(DelrecError::BadFile { kind: BadFileKind::Io, .. })), "{:?}", r.err());
    }
}
