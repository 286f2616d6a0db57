//! The few llama.cpp calls the converter makes: quantize, load-check, and vocab-only tokenization.
//!
//! llama.cpp reports failures through its log, not its return values, so a log hook keeps the
//! recent warnings and errors to put into our error messages. Its chatter is printed only when
//! `DELREC_LLAMA_LOG=1`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Mutex, Once};

use llama_cpp_sys_2 as sys;

use crate::error::{ConvertError, Result};

static INIT: Once = Once::new();
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Serializes calls: the log buffer is shared, and llama.cpp's loader is not meant to be raced.
static CALL: Mutex<()> = Mutex::new(());

unsafe extern "C" fn log_hook(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("DELREC_LLAMA_LOG").is_some_and(|v| v == "1") {
        eprint!("{s}");
    }
    if matches!(level, sys::GGML_LOG_LEVEL_WARN | sys::GGML_LOG_LEVEL_ERROR) {
        if let Ok(mut log) = LOG.lock() {
            if log.len() >= 64 {
                log.remove(0);
            }
            log.push(s.trim_end().to_string());
        }
    }
}

/// Initializes the backend once and installs the log hook.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: plain initialization calls; the hook is a 'static function.
        unsafe {
            sys::llama_log_set(Some(log_hook), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

fn take_log() -> String {
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let s = log.join("; ");
    log.clear();
    if s.is_empty() {
        "(llama.cpp logged no reason)".into()
    } else {
        s
    }
}

fn c_path(path: &Path) -> Result<CString> {
    let s = path.to_str().ok_or_else(|| ConvertError::Usage(format!("path {} is not UTF-8", path.display())))?;
    CString::new(s).map_err(|_| ConvertError::Usage(format!("path {} contains a NUL byte", path.display())))
}

/// llama.cpp ftypes (`llama_ftype`) this tool produces.
pub mod ftype {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_Q4_0: u32 = 2;
    pub const MOSTLY_Q4_1: u32 = 3;
    pub const MOSTLY_Q8_0: u32 = 7;
    pub const MOSTLY_Q4_K_M: u32 = 15;
    pub const MOSTLY_BF16: u32 = 32;
}

/// Runs llama.cpp's quantizer from `input` to `output` (written in place: callers pass a temp path).
pub fn quantize(input: &Path, output: &Path, ftype: u32, allow_requantize: bool, threads: usize) -> Result<()> {
    init();
    let _g = CALL.lock().unwrap_or_else(|e| e.into_inner());
    take_log();
    let (cin, cout) = (c_path(input)?, c_path(output)?);
    // SAFETY: default params are plain data; the paths outlive the call.
    let rc = unsafe {
        let mut p = sys::llama_model_quantize_default_params();
        p.ftype = ftype as sys::llama_ftype;
        p.allow_requantize = allow_requantize;
        p.nthread = i32::try_from(threads).unwrap_or(0);
        sys::llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p)
    };
    if rc != 0 {
        return Err(ConvertError::Quantize(take_log()));
    }
    Ok(())
}

/// A model loaded by llama.cpp; freed on drop.
pub struct LoadedModel {
    ptr: *mut sys::llama_model,
}

impl LoadedModel {
    /// Loads a model on the CPU; `vocab_only` skips the weights.
    pub fn load(path: &Path, vocab_only: bool) -> Result<Self> {
        init();
        let _g = CALL.lock().unwrap_or_else(|e| e.into_inner());
        take_log();
        if !path.is_file() {
            return Err(ConvertError::LlamaLoad { path: path.to_path_buf(), reason: "no such file".into() });
        }
        let cpath = c_path(path)?;
        // SAFETY: default params are plain data; the path outlives the call.
        let ptr = unsafe {
            let mut p = sys::llama_model_default_params();
            p.vocab_only = vocab_only;
            p.n_gpu_layers = 0;
            // No repacked weight layouts: ggml's AMX repacking crashed on quantized models on AMX
            // hosts built with target-cpu=native, and this path (checks, tokenization) needs no speed.
            p.use_extra_bufts = false;
            sys::llama_model_load_from_file(cpath.as_ptr(), p)
        };
        if ptr.is_null() {
            return Err(ConvertError::LlamaLoad { path: path.to_path_buf(), reason: take_log() });
        }
        Ok(LoadedModel { ptr })
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(self.ptr)) }.max(0) as usize
    }

    pub fn n_embd(&self) -> usize {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_n_embd(self.ptr) }.max(0) as usize
    }

    /// Tokenizes without adding BOS/EOS; `parse_special` lets control-token text become the token.
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len()).map_err(|_| ConvertError::Tokenize("text longer than 2 GiB".into()))?;
        let mut buf = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: text and buf are valid for the lengths given; vocab belongs to a live model.
            let n = unsafe {
                sys::llama_tokenize(
                    sys::llama_model_get_vocab(self.ptr),
                    text.as_ptr() as *const c_char,
                    len,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    false,
                    parse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            if n == i32::MIN {
                return Err(ConvertError::Tokenize(format!("llama.cpp could not tokenize {text:?}")));
            }
            buf.resize((-n) as usize, 0);
        }
        Err(ConvertError::Tokenize(format!("llama.cpp gave inconsistent token counts for {text:?}")))
    }
}

impl LoadedModel {
    /// The logits at every position of one sequence (for checking a conversion against a
    /// reference; the runtime has its own, faster paths).
    pub fn eval_logits(&self, tokens: &[i32]) -> Result<Vec<Vec<f32>>> {
        let n_vocab = self.n_vocab();
        if tokens.is_empty() || tokens.iter().any(|&t| t < 0 || t as usize >= n_vocab) {
            return Err(ConvertError::Tokenize(format!("token ids must be in 0..{n_vocab} and non-empty")));
        }
        let n = tokens.len() as i32;
        let _g = CALL.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the context is created from a live model and freed below; the batch is sized for
        // `n` tokens of one sequence and every field written is inside it; logits are read only
        // for positions flagged as outputs, with n_vocab floats each.
        unsafe {
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = (n as u32).max(16);
            cp.n_batch = cp.n_ctx;
            cp.n_ubatch = cp.n_ctx;
            cp.n_seq_max = 1;
            cp.n_threads = 2;
            cp.n_threads_batch = 2;
            // Exactness over speed: flash attention and an F16 KV cache each add ~1e-3 error.
            cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
            cp.type_k = sys::GGML_TYPE_F32;
            cp.type_v = sys::GGML_TYPE_F32;
            let ctx = sys::llama_init_from_model(self.ptr, cp);
            if ctx.is_null() {
                return Err(ConvertError::LlamaLoad { path: "<context>".into(), reason: take_log() });
            }
            let batch = sys::llama_batch_init(n, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *batch.token.add(i) = t;
                *batch.pos.add(i) = i as i32;
                *batch.n_seq_id.add(i) = 1;
                **batch.seq_id.add(i) = 0;
                *batch.logits.add(i) = 1;
            }
            let mut b = batch;
            b.n_tokens = n;
            let rc = sys::llama_decode(ctx, b);
            let mut out = Vec::with_capacity(tokens.len());
            if rc == 0 {
                for i in 0..n {
                    let p = sys::llama_get_logits_ith(ctx, i);
                    if p.is_null() {
                        break;
                    }
                    out.push(std::slice::from_raw_parts(p, n_vocab).to_vec());
                }
            }
            sys::llama_batch_free(batch);
            sys::llama_free(ctx);
            if rc != 0 || out.len() != tokens.len() {
                return Err(ConvertError::LlamaLoad {
                    path: "<decode>".into(),
                    reason: format!("llama_decode returned {rc}: {}", take_log()),
                });
            }
            Ok(out)
        }
    }
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.ptr) }
    }
}

/// Checks that llama.cpp accepts a model file (all tensors, shapes and metadata), then frees it.
pub fn check_loads(path: &Path) -> Result<()> {
    LoadedModel::load(path, false).map(drop)
}
