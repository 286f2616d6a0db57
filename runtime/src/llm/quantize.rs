//! llama.cpp's own quantizer.

use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

use super::error::{LlamaError, Result};
use super::Backend;

/// llama.cpp ftypes (`llama_ftype`) the converter produces.
pub mod ftype {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_Q4_0: u32 = 2;
    pub const MOSTLY_Q4_1: u32 = 3;
    pub const MOSTLY_Q8_0: u32 = 7;
    pub const MOSTLY_Q4_K_M: u32 = 15;
    pub const MOSTLY_BF16: u32 = 32;
}

/// One quantization at a time: the failure reason is read from the shared log.
static ONE: Mutex<()> = Mutex::new(());

pub(crate) fn c_path(path: &Path) -> Result<CString> {
    let s = path.to_str().ok_or_else(|| LlamaError::Path(path.to_path_buf()))?;
    CString::new(s).map_err(|_| LlamaError::Path(path.to_path_buf()))
}

/// Runs llama.cpp's quantizer from `input` to `output` (written in place: callers pass a temp
/// path and rename).
pub fn quantize(input: &Path, output: &Path, ftype: u32, allow_requantize: bool, threads: usize) -> Result<()> {
    let backend = Backend::get();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let (cin, cout) = (c_path(input)?, c_path(output)?);
    backend.clear_log();
    // SAFETY: default params are plain data; the paths outlive the call.
    let rc = unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        p.ftype = ftype as sys::llama_ftype;
        p.allow_requantize = allow_requantize;
        p.nthread = i32::try_from(threads).unwrap_or(0);
        sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p)
    };
    if rc != 0 {
        return Err(LlamaError::Quantize { log: backend.take_log() });
    }
    Ok(())
}
