//! A LoRA adapter loaded over a model: llama.cpp applies it at run time (one extra low-rank
//! matmul per adapted weight), so a quantized base keeps a fine-tune that merging would round
//! away, and many adapters share one mapped base.

use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use super::error::{LlamaError, Result};
use super::model::Model;
use super::Backend;

/// A loaded adapter. It holds its model: llama.cpp frees a model's adapters with it, so an
/// adapter must never outlive the model (and is freed before it, here).
pub struct Adapter {
    ptr: NonNull<sys::llama_adapter_lora>,
    model: Arc<Model>,
}

// SAFETY: an adapter's tensors are read-only after loading; contexts on many threads read them.
unsafe impl Send for Adapter {}
unsafe impl Sync for Adapter {}

impl Adapter {
    /// Loads an adapter from an open file, read from its start (the bytes a caller checked
    /// through the same descriptor). What llama.cpp accepts it trusts: callers check the file
    /// first (`delrec_format::adapter::check_adapter`).
    pub fn load_file(model: &Arc<Model>, file: &std::fs::File, path: &std::path::Path) -> Result<Self> {
        let backend = Backend::get();
        // Loading inserts into the model's adapter set, which context creation and decodes read.
        let _excl = model.adapters_write();
        backend.clear_log();
        #[cfg(unix)]
        let ptr = super::model::with_stream(file, path, 0, |fp| {
            // SAFETY: a valid stream at the file's start and a live model.
            unsafe { sys::llama_adapter_lora_init_from_file_ptr(model.as_ptr(), fp.cast()) }
        })?;
        #[cfg(not(unix))]
        let ptr = {
            let _ = file;
            let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| LlamaError::Path(path.into()))?;
            // SAFETY: a valid C string and a live model.
            unsafe { sys::llama_adapter_lora_init(model.as_ptr(), cpath.as_ptr()) }
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| LlamaError::Load { path: path.into(), log: backend.take_log() })?;
        Ok(Adapter { ptr, model: Arc::clone(model) })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_adapter_lora {
        self.ptr.as_ptr()
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _excl = self.model.adapters_write();
        // SAFETY: we own the adapter and the model is alive (we hold an Arc); contexts that used
        // it hold an Arc<Adapter> while it is set on them, so none does now.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) }
    }
}
