pub mod error;
pub mod gguf;
pub mod pack;
pub mod template;
pub use error::{Error, Result};
