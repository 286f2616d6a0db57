//! delrec-ffi: the UniFFI layer over `delrec-runtime` for Kotlin (Android, JVM) and Swift (iOS).
//!
//! This crate only adapts: records mirror the runtime's types with FFI-friendly integers, the
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

/// Every failure of the library. Kotlin sees `DelrecException` with one subclass per variant,
/// Swift `DelrecError` with one case per variant; each carries the runtime's message.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum DelrecError {
    /// A file could not be read (missing, unreadable).
    #[error("{message}")]
    Io { message: String },
    /// The file is not a valid model or pack: truncated, corrupt, or of another version.
    #[error("{message}")]
    InvalidFile { message: String },
    /// llama.cpp refused the model file.
    #[error("{message}")]
    ModelLoad { message: String },
    /// The pack was built for another base model.
    #[error("{message}")]
    PackMismatch { message: String },
    /// An item id that is not in the pack's catalog.
    #[error("{message}")]
    UnknownItem { message: String },
    /// A soft prompt name that is not in the pack.
    #[error("{message}")]
    UnknownSoftPrompt { message: String },
    #[error("{message}")]
    EmptyHistory { message: String },
    #[error("{message}")]
    EmptyCandidates { message: String },
    #[error("{message}")]
    DuplicateCandidate { message: String },
    /// The prompt does not fit one context: raise `context_size` or shorten the history.
    #[error("{message}")]
    ContextTooSmall { message: String },
    /// Any other request or configuration the engine cannot serve.
    #[error("{message}")]
    InvalidInput { message: String },
    /// llama.cpp failed to decode a batch.
    #[error("{message}")]
    Decode { message: String },
    /// Another llama.cpp failure.
    #[error("{message}")]
    Backend { message: String },
    /// The request's `CancelToken` was cancelled.
    #[error("{message}")]
    Cancelled { message: String },
    /// The request's timeout passed.
    #[error("{message}")]
    DeadlineExceeded { message: String },
    /// A bug in delrec (a caught panic); the object it happened in may be unusable.
    #[error("{message}")]
    Internal { message: String },
}

impl From<rt::Error> for DelrecError {
    fn from(e: rt::Error) -> Self {
        let message = e.to_string();
        // Exhaustive on purpose: a new runtime error must be given its own variant here.
        match e {
            rt::Error::Io { .. } => Self::Io { message },
            rt::Error::InvalidFile { .. } => Self::InvalidFile { message },
            rt::Error::ModelLoad { .. } => Self::ModelLoad { message },
            rt::Error::PackMismatch { .. } => Self::PackMismatch { message },
            rt::Error::UnknownItem(_) => Self::UnknownItem { message },
            rt::Error::UnknownSoftPrompt(..) => Self::UnknownSoftPrompt { message },
            rt::Error::EmptyHistory => Self::EmptyHistory { message },
            rt::Error::EmptyCandidates => Self::EmptyCandidates { message },
            rt::Error::DuplicateCandidate(_) => Self::DuplicateCandidate { message },
            rt::Error::ContextTooSmall { .. } => Self::ContextTooSmall { message },
            rt::Error::InvalidInput(_) => Self::InvalidInput { message },
            rt::Error::Decode(_) => Self::Decode { message },
            rt::Error::Backend(_) => Self::Backend { message },
            rt::Error::Cancelled => Self::Cancelled { message },
            rt::Error::DeadlineExceeded => Self::DeadlineExceeded { message },
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
        Err(DelrecError::Internal { message: format!("internal error in delrec: {what}") })
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
}

impl From<rt::ScoringMode> for ScoringMode {
    fn from(m: rt::ScoringMode) -> Self {
        match m {
            rt::ScoringMode::Sum => ScoringMode::Sum,
            rt::ScoringMode::Mean => ScoringMode::Mean,
        }
    }
}

/// Engine settings; start from `defaultEngineConfig()` and change what you need.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct EngineConfig {
    /// Threads per decode; 0 = all available cores.
    pub threads: u32,
    /// KV cells per context: the prompt prefix plus the title tokens of one candidate group.
    pub context_size: u32,
    /// Rows per llama.cpp decode.
    pub batch_size: u32,
    /// Sequences per context (2..=256).
    pub max_sequences: u32,
    /// Contexts kept for concurrent calls (each open `Session` holds one).
    pub max_contexts: u32,
    /// Layers offloaded to a GPU backend when the build has one.
    pub gpu_layers: i32,
    pub kv_type: KvType,
    /// llama.cpp flash attention (on by default: faster for trie rows on CPU). Off together with
    /// an F32 KV cache is the exact path, for comparing plans.
    pub flash_attention: bool,
    /// Hash the whole model file and require it to be one the pack was built for.
    pub verify_checksum: bool,
}

impl From<rt::EngineConfig> for EngineConfig {
    fn from(c: rt::EngineConfig) -> Self {
        Self {
            threads: saturate(c.threads),
            context_size: c.context_size,
            batch_size: c.batch_size,
            max_sequences: c.max_sequences,
            max_contexts: saturate(c.max_contexts),
            gpu_layers: c.gpu_layers,
            kv_type: c.kv_type.into(),
            flash_attention: c.flash_attention,
            verify_checksum: c.verify_checksum,
        }
    }
}

impl From<EngineConfig> for rt::EngineConfig {
    // As for requests: a setting added to the runtime keeps its default until mirrored.
    #[allow(clippy::needless_update)]
    fn from(c: EngineConfig) -> Self {
        Self {
            threads: c.threads as usize,
            context_size: c.context_size,
            batch_size: c.batch_size,
            max_sequences: c.max_sequences,
            max_contexts: c.max_contexts as usize,
            gpu_layers: c.gpu_layers,
            kv_type: c.kv_type.into(),
            flash_attention: c.flash_attention,
            verify_checksum: c.verify_checksum,
            ..Default::default()
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
    pub top_k: Option<u32>,
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
    pub timeout_ms: Option<u64>,
}

impl From<RankRequest> for rt::RankRequest {
    // `..Default::default()`: a request option added to the runtime keeps its default here
    // until it is mirrored, instead of breaking the build.
    #[allow(clippy::needless_update)]
    fn from(r: RankRequest) -> Self {
        Self {
            history: r.history,
            candidates: r.candidates,
            top_k: r.top_k.map(|k| k as usize),
            soft_prompt: r.soft_prompt,
            exclude_history: r.exclude_history,
            exhaustive: r.exhaustive,
            plan: r.plan.map(Into::into).unwrap_or_default(),
            cancel: r.cancel.map(|c| c.0.clone()),
            timeout: r.timeout_ms.map(Duration::from_millis),
            ..Default::default()
        }
    }
}

/// A ranked candidate.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
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

impl From<rt::ScoredItem> for ScoredItem {
    fn from(s: rt::ScoredItem) -> Self {
        Self {
            id: s.id,
            title: s.title,
            index: s.index,
            score: s.score,
            logprob: s.logprob,
            n_tokens: s.n_tokens,
            mean_logprob: s.mean_logprob,
        }
    }
}

/// Counters of one ranking call.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RankStats {
    pub prefix_rows: u64,
    /// Prefix rows found already decoded (sessions).
    pub prefix_reused: u64,
    /// Rows sent to llama.cpp in total.
    pub decoded_rows: u64,
    pub decode_calls: u64,
    pub candidates: u64,
}

impl From<rt::RankStats> for RankStats {
    fn from(s: rt::RankStats) -> Self {
        Self {
            prefix_rows: s.prefix_rows as u64,
            prefix_reused: s.prefix_reused as u64,
            decoded_rows: s.decoded_rows as u64,
            decode_calls: s.decode_calls as u64,
            candidates: s.candidates as u64,
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

/// A catalog entry of the pack.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CatalogItem {
    pub id: String,
    pub title: String,
    pub index: u32,
    /// Optional longer text stored with the item.
    pub text: Option<String>,
}

/// The runtime's default engine settings.
#[uniffi::export]
pub fn default_engine_config() -> EngineConfig {
    rt::EngineConfig::default().into()
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

/// A model and its recommender pack, ready to rank. Thread-safe: share one per process.
#[derive(uniffi::Object)]
pub struct Engine {
    inner: Arc<rt::Engine>,
}

#[uniffi::export]
impl Engine {
    /// Opens a model GGUF and a pack built for it.
    #[uniffi::constructor]
    pub fn open(model_path: String, pack_path: String, config: EngineConfig) -> Result<Arc<Self>> {
        guard(|| {
            let inner = rt::Engine::open(&model_path, &pack_path, config.into())?;
            Ok(Arc::new(Self { inner: Arc::new(inner) }))
        })
    }

    /// Ranks candidates (or the whole catalog) for `request.history`. Blocks; call it off the UI
    /// thread.
    pub fn rank(&self, request: RankRequest) -> Result<Ranking> {
        guard(|| Ok(self.inner.rank(&request.into())?.into()))
    }

    /// Opens a session that keeps one user's decoded history (it holds one of the engine's
    /// `max_contexts` contexts until it is closed/destroyed).
    pub fn session(&self, soft_prompt: Option<String>) -> Result<Arc<Session>> {
        guard(|| {
            let cell = OwnedSession::try_new(self.inner.clone(), |engine| engine.session(soft_prompt))?;
            Ok(Arc::new(Session { inner: Mutex::new(cell) }))
        })
    }

    /// Number of items in the pack's catalog.
    pub fn catalog_size(&self) -> u64 {
        self.inner.pack().n_items() as u64
    }

    /// The catalog entry with this id.
    pub fn item(&self, id: String) -> Result<CatalogItem> {
        guard(|| {
            let index = self.inner.pack().item_index(&id).ok_or(rt::Error::UnknownItem(id))?;
            Ok(self.catalog_item(index))
        })
    }

    /// The title of the item with this id.
    pub fn item_title(&self, id: String) -> Result<String> {
        self.item(id).map(|i| i.title)
    }

    /// The catalog entry at `index` (0..catalog_size).
    pub fn item_at(&self, index: u32) -> Result<CatalogItem> {
        guard(|| {
            let n = self.inner.pack().n_items();
            if index as usize >= n {
                return Err(DelrecError::InvalidInput {
                    message: format!("catalog index {index} out of range (the catalog has {n} items)"),
                });
            }
            Ok(self.catalog_item(index))
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
    fn catalog_item(&self, index: u32) -> CatalogItem {
        let p = self.inner.pack();
        CatalogItem {
            id: p.item_id(index).to_string(),
            title: p.item_title(index).to_string(),
            index,
            text: p.item_text(index).map(str::to_string),
        }
    }
}

type SessionRef<'e> = rt::Session<'e>;

self_cell::self_cell!(
    /// A runtime session together with the engine it borrows.
    struct OwnedSession {
        owner: Arc<rt::Engine>,
        #[covariant]
        dependent: SessionRef,
    }
);

/// One user's running history, kept decoded: after `push`, a rank decodes only what changed.
/// Calls on one session are serialized.
#[derive(uniffi::Object)]
pub struct Session {
    inner: Mutex<OwnedSession>,
}

impl Session {
    fn with<T>(&self, f: impl FnOnce(&mut rt::Session<'_>) -> rt::Result<T>) -> Result<T> {
        guard(|| {
            let mut cell = self.inner.lock().map_err(|_| DelrecError::Internal {
                message: "this session failed with an internal error earlier; open a new one".into(),
            })?;
            Ok(cell.with_dependent_mut(|_, s| f(s))?)
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

    /// Ranks with the session's history; `request.history` and `request.soft_prompt` are ignored.
    pub fn rank(&self, request: RankRequest) -> Result<Ranking> {
        let request = request.into();
        self.with(|s| s.rank(&request)).map(Into::into)
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
        let back: rt::EngineConfig = c.clone().into();
        assert_eq!(EngineConfig::from(back), c);
    }

    #[test]
    fn errors_keep_the_runtime_message() {
        let e = DelrecError::from(rt::Error::UnknownItem("m999".into()));
        assert!(matches!(e, DelrecError::UnknownItem { .. }));
        assert_eq!(e.to_string(), "unknown item id \"m999\"");
        assert!(matches!(DelrecError::from(rt::Error::EmptyHistory), DelrecError::EmptyHistory { .. }));
    }

    #[test]
    fn panics_become_internal_errors() {
        let r: Result<()> = guard(|| panic!("boom"));
        match r {
            Err(DelrecError::Internal { message }) => assert!(message.contains("boom")),
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    #[test]
    fn missing_files_are_io_errors() {
        let r = Engine::open("/nonexistent/m.gguf".into(), "/nonexistent/p.gguf".into(), default_engine_config());
        assert!(matches!(r, Err(DelrecError::Io { .. })), "{:?}", r.err());
    }
}
