//! The one layer over `llama-cpp-sys-2`, used by the engine, the converter and the CLIs.
//!
//! One concern per file: [`adapter`] (LoRA applied at run time), [`backend`] (process-wide init and the single log router),
//! [`device`] (the CPU and GPU devices of this build), [`model`],
//! [`context`] (KV cache operations, decode, logits, pooled embeddings), [`batch`] (token or
//! embedding rows), [`embed`] (many sequences' pooled embeddings per decode), [`encdec`] (encoder inputs of
//! encoder-decoder models), [`quantize`].
//! The safe `llama-cpp-2` crate cannot feed input embeddings, hence our own.
//!
//! llama.cpp aborts the process on many invalid calls (a logits index without an output flag, a
//! sequence id out of range, an encoder input larger than a ubatch, ...), so every check that can
//! be made here is made before the call, and failures come back as [`LlamaError`] with the
//! warnings llama.cpp logged.

pub mod adapter;
pub mod backend;
pub mod batch;
pub mod context;
pub mod device;
pub mod embed;
pub mod encdec;
mod error;
pub mod model;
pub mod quantize;

pub use adapter::Adapter;
pub use backend::Backend;
pub use batch::Batch;
pub use context::{sequence_logits, Context, ContextParams, KvType};
pub use device::{Device, DeviceKind};
pub use embed::{embed_sequences, Pooling};
pub use encdec::{encoder_decoder_logits, EncoderSegment, TokenEmbeddings};
pub use error::LlamaError;
pub use model::{Model, ModelParams, EMBEDDED_MMAP_ALIGN};
pub use quantize::{ftype, quantize};
