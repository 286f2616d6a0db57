//! delrec-runtime: on-device ranking with a DELRec-style LLM recommender.
//!
//! A model GGUF (stock llama.cpp) plus a recommender pack (soft prompts, template, pre-tokenized
//! catalog; see `docs/format.md`, read by [`delrec_format`]) become an [`Engine`] that ranks
//! catalog items for a user's history. Soft prompts enter llama.cpp as input embeddings; the
//! prompt prefix is decoded once and shared by every candidate through the KV cache; candidate
//! titles that share tokens share their computation too (a prefix trie), so ranking the whole
//! catalog costs about one pass over its distinct title tokens.
//!
//! - [`engine`]: [`Engine`], [`Session`], requests and results;
//! - [`llm`]: the one layer over llama.cpp (also used by the converter and the CLIs);
//! - [`error`]: the public errors, grouped by what an app can do;
//! - [`log`]: where llama.cpp's log goes (a sink the app sets; nowhere by default);
//! - [`cpus`]: the default thread count (the fast cores of a phone's mixed CPU);
//! - [`devices`]: the CPU and GPU devices of this build ([`EngineConfig::backend`] picks one);
//! - [`install_file`]: replacing a model or pack that an engine may have open (atomic rename).
//!
//! `ARCHITECTURE.md` at the repository root maps the modules and the path of one `rank` call.

pub mod cpus;
pub mod engine;
pub mod error;
mod files;
pub mod llm;
pub mod log;
mod scorer;
mod search;
mod seq;

/// The retrieval kernels, for the bench to time on their own (not a stable API).
#[doc(hidden)]
pub mod kernels {
    pub use crate::seq::sasrec::dot;
    pub use crate::seq::scan::kernel as scan_kernel;

    /// The catalog scan `recommend` runs: `user · item_i` for every item of the pack's model.
    pub fn item_scores(m: &delrec_format::seq::Sasrec, user: &[f32], out: &mut Vec<f32>) {
        crate::seq::scan::scores(&m.items, m.hidden, user, out)
    }

    /// The same scan over any table (`hidden` wide).
    pub fn table_scores(t: &delrec_format::seq::ItemTable, hidden: usize, user: &[f32], out: &mut Vec<f32>) {
        crate::seq::scan::scores(t, hidden, user, out)
    }
}

pub use delrec_format as format;
pub use delrec_format::{Pack, ScoringMode};
pub use engine::MemoryBudget;
pub use engine::{
    choose_backend, devices, AdapterSummary, AddedInfo, BackendInfo, BackendKind, Base, CancelToken, DeviceInfo,
    DigestSource, Engine, EngineConfig, FileRange, InlineItem, LoadProgress, LoadStage, ModelVerification, OnProgress,
    OpenOptions, Plan, PrefixRow, RankPlan, RankProgress, RankRequest, RankStats, Ranking, RecommendRequest,
    RecommendStats, Recommendation, Recommended, ScoredItem, Session, Strategy, TrieRow,
};
pub use error::{Error, FileError, RequestError, Resource, Result};
pub use files::install_file;
pub use llm::{DeviceKind, KvType, Pooling};
