//! Process-wide llama.cpp state: backend init (once), the CPU kernels in use, and the one log
//! router.
//!
//! llama.cpp reports most failures through its log rather than return values. The router keeps
//! the recent warnings and errors so that our errors can say what llama.cpp said, hands whole
//! lines to the app's sink ([`crate::log`]), and prints the raw log only when
//! `DELREC_LLAMA_LOG=1` (an app's stderr is nobody's console).
//!
//! # CPU kernels chosen at run time (`cpu-variants` feature)
//!
//! By default ggml's CPU kernels are compiled in, for the `-C target-cpu` of the build. With the
//! `cpu-variants` feature, ggml is built as shared libraries with one CPU backend per feature
//! level (`libggml-cpu-haswell.so`, `…-icelake.so`, `…-zen4.so`, `…-android_armv8.2_1.so`, …) and
//! nothing is registered until [`Backend::get`] loads them: ggml scores every
//! `libggml-cpu-*.so` it finds against this CPU and loads the best. Where it looks:
//!
//! 1. the directory passed to [`set_backend_dir`] before the first use of llama.cpp, else the
//!    one in the environment variable `DELREC_BACKEND_DIR` (only that directory; when nothing
//!    there loads, llama.cpp's init falls back to 2., and [`CpuKernels::search`] says so);
//! 2. else ggml's defaults: the directory the build installed them into (compiled in; what makes
//!    tests and `target/…/release/delrec` work without setup), the executable's directory, and
//!    the current directory.
//!
//! An Android app passes its `ApplicationInfo.nativeLibraryDir` (the executable is
//! `app_process`, so 2. finds nothing there): see docs/platforms.md. [`Backend::cpu_kernels`]
//! says which variant was loaded and what it uses.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use llama_cpp_sys_2 as sys;

use crate::log::LogLevel;

/// Proof that llama.cpp is initialized; every entry point of this layer takes one first.
#[derive(Clone, Copy, Debug)]
pub struct Backend(());

static BACKEND: OnceLock<Backend> = OnceLock::new();
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const KEEP: usize = 32;
/// The directory [`set_backend_dir`] chose, read once by [`Backend::get`].
static BACKEND_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// What loading the CPU backend found, filled in by [`Backend::get`].
static KERNELS: OnceLock<CpuKernels> = OnceLock::new();
/// The CPU backend file ggml reported loading (its log line), while `Backend::get` runs.
static LOADED_CPU: Mutex<Option<PathBuf>> = Mutex::new(None);
/// ggml's log line when it loads a dynamic backend: `…: loaded CPU backend from /dir/libggml-cpu-zen4.so`.
const LOADED_CPU_LINE: &str = "loaded CPU backend from ";

/// Whether this build loads its CPU kernels at run time (the `cpu-variants` feature).
pub const DYNAMIC_CPU_BACKENDS: bool = cfg!(feature = "cpu-variants");

/// The environment variable naming the directory of the `libggml-cpu-*.so` files.
pub const BACKEND_DIR_ENV: &str = "DELREC_BACKEND_DIR";

/// Chooses the directory the CPU backends (`libggml-cpu-<variant>.so`) are loaded from, in place
/// of `DELREC_BACKEND_DIR` and ggml's default search; on Android, the app's
/// `ApplicationInfo.nativeLibraryDir`. Call it before anything else of this crate touches
/// llama.cpp (opening an engine, a model, quantizing). Returns false, changing nothing, when
/// llama.cpp is already initialized (too late: the backends are loaded once per process). In a
/// build without the `cpu-variants` feature the kernels are compiled in and the directory is
/// unused (still true before initialization, so an app can call it unconditionally).
pub fn set_backend_dir(dir: impl Into<PathBuf>) -> bool {
    let mut slot = BACKEND_DIR.lock().unwrap_or_else(|e| e.into_inner());
    if BACKEND.get().is_some() {
        return false;
    }
    *slot = Some(dir.into());
    true
}

/// The CPU kernels this process uses: the variant ggml loaded (a `cpu-variants` build) or the
/// compiled-in ones, with the features that CPU backend was compiled with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuKernels {
    /// The variant loaded, e.g. `zen4`, `icelake`, `haswell`, `android_armv8.2_1`; `None` in a
    /// build whose kernels are compiled in, or when no CPU backend could be loaded.
    pub variant: Option<String>,
    /// The file of that variant.
    pub path: Option<PathBuf>,
    /// Where the variants were looked for (`cpu-variants` builds), in words.
    pub search: Option<String>,
    /// ggml's `ggml_backend_get_features` of the CPU backend: the instruction sets its kernels
    /// were compiled for (`AVX2`, `AVX512_VNNI`, `DOTPROD`, `MATMUL_INT8`, `AMX_INT8`, …) and
    /// build options (`OPENMP`, `REPACK`, `LLAMAFILE`), with their values ("1" for most).
    pub features: Vec<(String, String)>,
    /// No CPU backend is registered: the reason, for errors (`take_log` includes it).
    pub problem: Option<String>,
}

impl CpuKernels {
    /// One line for logs and reports: `zen4 (run-time choice): AVX AVX2 … AVX512_VNNI` or
    /// `compiled in: AVX AVX2 FMA …`.
    pub fn summary(&self) -> String {
        let isa: Vec<&str> = self
            .features
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "OPENMP" | "REPACK" | "LLAMAFILE" | "CPU_HBM" | "KLEIDIAI"))
            .map(|(name, _)| name.as_str())
            .collect();
        let isa = if isa.is_empty() { "no SIMD features".to_string() } else { isa.join(" ") };
        match (&self.variant, &self.problem) {
            (_, Some(problem)) => format!("no CPU backend: {problem}"),
            (Some(v), None) => format!("{v} (run-time choice): {isa}"),
            (None, None) => format!("compiled in: {isa}"),
        }
    }

    /// Whether the kernels use a feature (`"AVX512_VNNI"`, `"AMX_INT8"`, `"DOTPROD"`, …).
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|(name, value)| name == feature && value != "0")
    }
}

thread_local! {
    /// The line llama.cpp is still writing on this thread (it logs in pieces: `CONT` continues
    /// the last level) and that line's level.
    static PARTIAL: RefCell<(LogLevel, String)> = const { RefCell::new((LogLevel::Info, String::new())) };
}

/// Assembles llama.cpp's pieces into lines for [`crate::log`].
fn to_lines(level: sys::ggml_log_level, text: &str) {
    PARTIAL.with(|p| {
        let mut p = p.borrow_mut();
        let level = match level {
            sys::GGML_LOG_LEVEL_DEBUG => Some(LogLevel::Debug),
            sys::GGML_LOG_LEVEL_INFO => Some(LogLevel::Info),
            sys::GGML_LOG_LEVEL_WARN => Some(LogLevel::Warn),
            sys::GGML_LOG_LEVEL_ERROR => Some(LogLevel::Error),
            _ => None, // CONT (and NONE): the current line's level
        };
        if let Some(level) = level {
            if p.1.is_empty() {
                p.0 = level;
            }
        }
        p.1.push_str(text);
        while let Some(end) = p.1.find('\n') {
            let line: String = p.1.drain(..=end).collect();
            let line = line.trim_end();
            if !line.is_empty() {
                crate::log::emit(p.0, line);
            }
        }
    });
}

unsafe extern "C" fn route(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("DELREC_LLAMA_LOG").is_some_and(|v| v == "1") {
        eprint!("{s}");
    }
    // Nothing may unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| to_lines(level, &s)));
    if let Some((_, path)) = s.split_once(LOADED_CPU_LINE) {
        *LOADED_CPU.lock().unwrap_or_else(|e| e.into_inner()) = Some(PathBuf::from(path.trim_end()));
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
    /// Initializes llama.cpp once per process (log router, CPU backend, backend).
    pub fn get() -> Backend {
        *BACKEND.get_or_init(|| {
            // The lock keeps `set_backend_dir` from racing this initialization.
            let dir = BACKEND_DIR.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: plain initialization call, run once; the router is a 'static function.
            unsafe { sys::llama_log_set(Some(route), std::ptr::null_mut()) };
            let loaded = if DYNAMIC_CPU_BACKENDS { Some(load_backends(dir.as_deref())) } else { None };
            // SAFETY: plain initialization call, run once, after the backends are registered.
            // (When nothing was registered, it runs ggml's default search itself.)
            unsafe { sys::llama_backend_init() };
            let search =
                loaded.map(|(search, chosen)| match (chosen, &*LOADED_CPU.lock().unwrap_or_else(|e| e.into_inner())) {
                    (Some(chosen), Some(path)) if !path.starts_with(&chosen) => {
                        format!("{search}: nothing loadable there, llama.cpp fell back to ggml's default search")
                    }
                    _ => search,
                });
            let mut kernels = cpu_kernels_now();
            kernels.search = search;
            if DYNAMIC_CPU_BACKENDS {
                let path = LOADED_CPU.lock().unwrap_or_else(|e| e.into_inner()).take();
                kernels.variant = path.as_deref().map(variant_name);
                kernels.path = path;
                if kernels.problem.is_some() {
                    kernels.problem = Some(format!(
                        "no libggml-cpu-*.so could be loaded from {} (set {BACKEND_DIR_ENV} or call \
                         delrec_runtime::llm::backend::set_backend_dir)",
                        kernels.search.as_deref().unwrap_or("?")
                    ));
                }
            }
            let _ = KERNELS.set(kernels);
            drop(dir);
            Backend(())
        })
    }

    /// The CPU kernels in use: which variant was loaded (a `cpu-variants` build) and the
    /// features they were compiled with. `DELREC_LLAMA_LOG=1` also shows ggml's own line.
    pub fn cpu_kernels(self) -> &'static CpuKernels {
        KERNELS.get_or_init(CpuKernels::default)
    }

    /// Forgets the warnings logged so far (call before an operation whose failure you report).
    pub fn clear_log(self) {
        RECENT.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The warnings and errors logged since the last `clear_log`/`take_log`, joined.
    pub fn take_log(self) -> String {
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = recent.drain(..).collect::<Vec<_>>().join("; ");
        if let Some(problem) = self.cpu_kernels().problem.as_deref() {
            s = if s.is_empty() { problem.to_string() } else { format!("{problem}; {s}") };
        }
        if s.is_empty() {
            "(llama.cpp logged no reason; a log sink at debug level gets its whole log)".into()
        } else {
            s
        }
    }
}

/// Loads ggml's dynamic backends (a `cpu-variants` build) from `dir`, `DELREC_BACKEND_DIR`, or
/// ggml's default places; returns where it looked, in words, and the directory it was given.
fn load_backends(dir: Option<&Path>) -> (String, Option<PathBuf>) {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(BACKEND_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    match dir {
        Some(dir) => {
            let shown = dir.display().to_string();
            match CString::new(dir.clone().into_os_string().into_encoded_bytes()) {
                Ok(c) => {
                    // SAFETY: a NUL-terminated path valid for the call; ggml copies what it keeps.
                    unsafe { sys::ggml_backend_load_all_from_path(c.as_ptr()) };
                    (shown, Some(dir))
                }
                Err(_) => (format!("{shown} (not a usable path: it contains a NUL byte)"), Some(dir)),
            }
        }
        None => {
            // SAFETY: plain call; ggml searches its compiled-in directory, the executable's
            // directory and the current directory.
            unsafe { sys::ggml_backend_load_all() };
            ("ggml's build directory, the executable's directory and the current directory".into(), None)
        }
    }
}

/// `libggml-cpu-zen4.so` → `zen4`.
fn variant_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("libggml-cpu-").or_else(|| stem.strip_prefix("ggml-cpu-")).unwrap_or(&stem).to_string()
}

/// The registered CPU device's backend features, or the problem when there is none.
fn cpu_kernels_now() -> CpuKernels {
    // SAFETY: plain query of ggml's registry; indexes below the count are valid devices.
    let cpu = unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| sys::ggml_backend_dev_get(i))
            .find(|&d| !d.is_null() && sys::ggml_backend_dev_type(d) == sys::GGML_BACKEND_DEVICE_TYPE_CPU)
    };
    let Some(cpu) = cpu else {
        return CpuKernels { problem: Some("no CPU device is registered".into()), ..CpuKernels::default() };
    };
    let mut features = Vec::new();
    // SAFETY: `cpu` is a registered device; the proc address, when present, has the type ggml
    // documents for "ggml_backend_get_features" (ggml_backend_get_features_t), and it returns an
    // array terminated by a null name whose strings live as long as the backend (the process).
    unsafe {
        let reg = sys::ggml_backend_dev_backend_reg(cpu);
        if !reg.is_null() {
            let proc = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_get_features".as_ptr());
            if !proc.is_null() {
                type GetFeatures = unsafe extern "C" fn(sys::ggml_backend_reg_t) -> *mut sys::ggml_backend_feature;
                let get = std::mem::transmute::<*mut c_void, GetFeatures>(proc);
                let mut f = get(reg);
                while !f.is_null() && !(*f).name.is_null() {
                    let name = CStr::from_ptr((*f).name).to_string_lossy().into_owned();
                    let value = if (*f).value.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr((*f).value).to_string_lossy().into_owned()
                    };
                    features.push((name, value));
                    f = f.add(1);
                }
            }
        }
    }
    CpuKernels { features, ..CpuKernels::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names() {
        assert_eq!(variant_name(Path::new("/x/libggml-cpu-zen4.so")), "zen4");
        assert_eq!(variant_name(Path::new("libggml-cpu-android_armv8.2_1.so")), "android_armv8.2_1");
        assert_eq!(variant_name(Path::new("ggml-cpu-haswell.dll")), "haswell");
    }

    #[test]
    fn reports_the_cpu_kernels() {
        let k = Backend::get().cpu_kernels();
        assert!(k.problem.is_none(), "{k:?}");
        assert!(!k.features.is_empty(), "{k:?}");
        assert_eq!(k.variant.is_some(), DYNAMIC_CPU_BACKENDS, "{k:?}");
        if DYNAMIC_CPU_BACKENDS && cfg!(target_arch = "x86_64") {
            // The run-time choice is at least as good as the x86-64-v3 default build's kernels on
            // any CPU that has AVX2.
            let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            if flags.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "avx2")) {
                assert!(k.has("AVX2"), "{}", k.summary());
            }
        }
        assert!(!set_backend_dir("/nonexistent"), "too late after init");
    }
}
