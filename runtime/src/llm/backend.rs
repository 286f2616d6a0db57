//! Process-wide llama.cpp state: backend init (once) and the one log router.
//!
//! llama.cpp reports most failures through its log rather than return values. The router keeps
//! the recent warnings and errors so that our errors can say what llama.cpp said, and prints the
//! log only when `DELREC_LLAMA_LOG=1` (an app's stderr is nobody's console).

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, OnceLock};

use llama_cpp_sys_2 as sys;

/// Proof that llama.cpp is initialized; every entry point of this layer takes one first.
#[derive(Clone, Copy, Debug)]
pub struct Backend(());

static BACKEND: OnceLock<Backend> = OnceLock::new();
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const KEEP: usize = 32;

unsafe extern "C" fn route(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("DELREC_LLAMA_LOG").is_some_and(|v| v == "1") {
        eprint!("{s}");
    }
    if matches!(level, sys::GGML_LOG_LEVEL_WARN | sys::GGML_LOG_LEVEL_ERROR) {
        let line = s.trim_end();
        if !line.is_empty() {
            let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= KEEP {
                recent.pop_front();
            }
            recent.push_back(line.to_string());
        }
    }
}

impl Backend {
    /// Initializes llama.cpp once per process (backend, log router).
    pub fn get() -> Backend {
        *BACKEND.get_or_init(|| {
            // SAFETY: plain initialization calls, run once; the router is a 'static function.
            unsafe {
                sys::llama_log_set(Some(route), std::ptr::null_mut());
                sys::llama_backend_init();
            }
            Backend(())
        })
    }

    /// Forgets the warnings logged so far (call before an operation whose failure you report).
    pub fn clear_log(self) {
        RECENT.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The warnings and errors logged since the last `clear_log`/`take_log`, joined.
    pub fn take_log(self) -> String {
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        let s = recent.drain(..).collect::<Vec<_>>().join("; ");
        if s.is_empty() {
            "(llama.cpp logged no reason; DELREC_LLAMA_LOG=1 prints its log)".into()
        } else {
            s
        }
    }
}
