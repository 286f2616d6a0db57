//! delrec-convert: Hugging Face checkpoints → llama.cpp GGUF models (with LoRA merged and
//! llama.cpp's own quantizer), and recommender packs (catalog, template, soft prompts) for them.
//!
//! The binary `delrec-convert` is a thin CLI over [`model::convert_model`],
//! [`merge::merge_lora_gguf`], [`adapter::build_adapter`] (a LoRA as a llama.cpp run-time
//! adapter), [`quant::quantize_file`], [`pack::build_pack`] and [`inspect`].

pub mod adapter;
pub mod dequant;
pub mod error;
pub mod hf;
pub mod inspect;
pub mod llama;
pub mod lora;
pub mod merge;
pub mod model;
pub mod pack;
pub mod progress;
pub mod quant;
pub mod seq;
pub mod soft;
pub mod st;
pub mod t5;
/// Fixture builders for tests only (the `testing` feature; this crate's tests turn it on).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod torch_ckpt;
pub mod ugm;
pub mod vocab;

pub use error::{ConvertError, Result};
