//! delrec-runtime: on-device ranking with a DELRec-style LLM recommender.
//!
//! A model GGUF (stock llama.cpp) plus a recommender pack (soft prompts, template, pre-tokenized
//! catalog; see `docs/format.md`) become an [`Engine`] that ranks catalog items for a user's
//! history. Soft prompts enter llama.cpp as input embeddings; the prompt prefix is decoded once
//! and shared by every candidate through the KV cache; candidate titles that share tokens share
//! their computation too (a prefix trie), so ranking the whole catalog costs about one pass over
//! its distinct title tokens.

pub mod engine;
pub mod error;
pub mod gguf;
pub mod llm;
pub mod pack;
mod scorer;
mod search;
pub mod template;

pub use engine::{CancelToken, Engine, EngineConfig, Plan, RankRequest, RankStats, Ranking, ScoredItem, Session};
pub use error::{Error, Result};
pub use llm::KvType;
pub use pack::{Pack, ScoringMode};
