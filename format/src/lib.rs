//! delrec-format: the files delrec reads and writes, with no llama.cpp in sight.
//!
//! - [`gguf`]: a small GGUF v3 reader over a memory map that checks every count, length and
//!   offset before use (hostile files are errors, never panics); the writer behind `build`.
//! - [`pack`]: the recommender pack (`docs/format.md`): soft prompts, template, pre-tokenized
//!   catalog, scoring mode, base identity; validated completely on open. [`pack::PackBuilder`]
//!   behind `build`.
//! - [`seq`]: the sequential recommender (SASRec) a pack may carry, and the cascade's fusion.
//! - [`template`]: the template language (`{soft:NAME}`, `{history}`, `{candidate}`,
//!   `{candidates}`, `{mask}`); [`verbalizer`]: the label words a mask template is scored by.
//! - [`identity`]: what ties a pack to its base model.
//! - [`adapter`]: a llama.cpp LoRA adapter GGUF checked against its base before llama.cpp
//!   reads it.
//! - [`model_check`]: proves a model GGUF safe for llama.cpp (architectures, hyperparameters,
//!   vocabulary, tensor set, shapes and types) before llama.cpp parses it.
//!
//! The runtime depends on this crate read-only; the converter, the bench and `inspect` turn on
//! `build`.
//!
//! ```no_run
//! let pack = delrec_format::Pack::open("recs.pack.gguf")?;
//! println!("{} items for {}", pack.n_items(), pack.base.architecture);
//! # Ok::<(), delrec_format::Error>(())
//! ```

pub mod adapter;
pub mod error;
pub mod gguf;
pub mod identity;
pub mod model_check;
pub mod pack;
pub mod seq;
pub mod template;
pub mod verbalizer;

pub use error::{Error, Result};
pub use identity::BaseIdentity;
pub use pack::{Pack, ScoringMode};
