//! A loaded model: immutable after load, shared by every context made from it.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use llama_cpp_sys_2 as sys;

use super::error::{LlamaError, Result};
use super::{Backend, Device};

/// The offsets at which llama.cpp can map an embedded GGUF's tensors (ggml's CPU buffer
/// alignment, which it checks the data section against; 64 covers it).
pub const EMBEDDED_MMAP_ALIGN: u64 = 64;

/// One load at a time: a failure's reason is read from the shared log.
static LOADING: Mutex<()> = Mutex::new(());

/// How to load a model.
#[derive(Clone, Copy, Debug)]
pub struct ModelParams {
    /// The one device layers are offloaded to; `None`: the CPU only (llama.cpp would otherwise
    /// pick every GPU it finds, and what ran would be a guess).
    pub device: Option<Device>,
    /// Layers offloaded to `device` (-1 = all; ignored without a device).
    pub gpu_layers: i32,
    /// Load the vocabulary only (tokenization), no weights.
    pub vocab_only: bool,
    /// Let ggml repack weights into its faster CPU layouts (more memory, faster kernels). The
    /// converter's checks turn it off: they need no speed, and AMX repacking crashed on Q8_0 on
    /// `target-cpu=native` builds.
    pub repack: bool,
    /// llama.cpp validates every tensor's data while loading (NaN/Inf, quant block scales): a
    /// read of the whole file, for models whose bytes no pinned digest vouches for.
    pub check_tensors: bool,
    /// Map the weights (the default); off, llama.cpp reads them into memory (a GGUF embedded at
    /// an offset its mapping cannot use: see [`Model::load_file_range`]).
    pub mmap: bool,
}

impl ModelParams {
    /// llama.cpp's parameters; `devices` is the NULL-terminated device list they point to,
    /// which must outlive the load call.
    fn raw(self, devices: &mut [sys::ggml_backend_dev_t; 2]) -> sys::llama_model_params {
        // SAFETY: llama.cpp's defaults are plain data.
        let mut p = unsafe { sys::llama_model_default_params() };
        *devices = [self.device.map_or(std::ptr::null_mut(), |d| d.as_ptr()), std::ptr::null_mut()];
        p.devices = devices.as_mut_ptr();
        p.n_gpu_layers = if self.device.is_some() { self.gpu_layers } else { 0 };
        p.vocab_only = self.vocab_only;
        p.use_extra_bufts = self.repack;
        p.check_tensors = self.check_tensors;
        if !self.mmap {
            p.load_mode = sys::LLAMA_LOAD_MODE_NONE;
        }
        p
    }
}

impl Default for ModelParams {
    fn default() -> Self {
        Self { device: None, gpu_layers: 0, vocab_only: false, repack: true, check_tensors: false, mmap: true }
    }
}

/// The caller's progress function during one load.
struct Observer<'a> {
    f: &'a mut dyn FnMut(f32) -> bool,
    stopped: bool,
}

unsafe extern "C" fn on_progress(progress: f32, data: *mut c_void) -> bool {
    if data.is_null() {
        return true;
    }
    // SAFETY: `data` is the `Observer` of the load in progress on this thread, alive for it.
    let o = unsafe { &mut *data.cast::<Observer>() };
    // Nothing may unwind into C: a panicking observer stops the load.
    let go = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (o.f)(progress))).unwrap_or(false);
    o.stopped |= !go;
    go
}

/// A loaded model. Immutable after load, so it may be shared by contexts on many threads.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    n_embd: usize,
    /// Width of one input embedding row, what llama.cpp copies per row of an embedding batch
    /// (`llama_model_n_embd_inp`; larger than `n_embd` for multi-position inputs).
    n_embd_inp: usize,
    n_vocab: usize,
    /// llama.cpp keeps a model's adapters in a set that adapter loads and frees change and that
    /// context creation and graph reservation (in decodes) read: shared for those, exclusive
    /// for these.
    adapters: RwLock<()>,
}

// SAFETY: a llama_model is read-only after loading; llama.cpp supports many contexts on one model
// from different threads.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    /// Loads a model file. What llama.cpp accepts it trusts: callers check files first (it
    /// aborts on many malformed ones).
    pub fn load(path: &Path, params: ModelParams) -> Result<Self> {
        let backend = Backend::get();
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| LlamaError::Path(path.into()))?;
        let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        backend.clear_log();
        let mut devices = [std::ptr::null_mut(); 2];
        // SAFETY: the path is a valid C string; `devices` outlives the call.
        let ptr = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), params.raw(&mut devices)) };
        let ptr = NonNull::new(ptr).ok_or_else(|| LlamaError::Load { path: path.into(), log: backend.take_log() })?;
        Ok(Self::from_ptr(ptr))
    }

    fn from_ptr(ptr: NonNull<sys::llama_model>) -> Self {
        // SAFETY: ptr is a live model.
        let (n_embd, n_embd_inp, n_vocab) = unsafe {
            let vocab = sys::llama_model_get_vocab(ptr.as_ptr());
            (
                sys::llama_model_n_embd(ptr.as_ptr()),
                sys::llama_model_n_embd_inp(ptr.as_ptr()),
                sys::llama_vocab_n_tokens(vocab),
            )
        };
        Model {
            ptr,
            n_embd: n_embd.max(0) as usize,
            n_embd_inp: n_embd_inp.max(0) as usize,
            n_vocab: n_vocab.max(0) as usize,
            adapters: RwLock::new(()),
        }
    }

    /// Held while a context is created or decodes (see `adapters`).
    pub(crate) fn adapters_read(&self) -> RwLockReadGuard<'_, ()> {
        self.adapters.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held while an adapter is loaded or freed.
    pub(crate) fn adapters_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.adapters.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads from an open file, read from its start: the bytes a caller checked through the
    /// same descriptor are the bytes llama.cpp loads, even if the path is replaced meanwhile.
    /// (`path` names the file in errors.) Elsewhere than Unix, loads by path.
    pub fn load_file(file: &std::fs::File, path: &Path, params: ModelParams) -> Result<Self> {
        Self::load_file_observed(file, path, params, None)
    }

    /// [`Model::load_file`] reporting llama.cpp's progress (0..=1) to `progress`, which stops
    /// the load by returning false (then [`LlamaError::Cancelled`]).
    pub fn load_file_observed(
        file: &std::fs::File,
        path: &Path,
        params: ModelParams,
        progress: Option<&mut dyn FnMut(f32) -> bool>,
    ) -> Result<Self> {
        Self::load_file_range(file, path, 0, params, progress)
    }

    /// [`Model::load_file_observed`] of a GGUF stored at `offset` of the file (an uncompressed
    /// APK asset). llama.cpp maps tensors at their file offsets, which it can only do when
    /// `offset` keeps them aligned (a multiple of [`EMBEDDED_MMAP_ALIGN`]); otherwise the
    /// weights are read into memory (`mmap` is turned off).
    pub fn load_file_range(
        file: &std::fs::File,
        path: &Path,
        offset: u64,
        mut params: ModelParams,
        progress: Option<&mut dyn FnMut(f32) -> bool>,
    ) -> Result<Self> {
        if !offset.is_multiple_of(EMBEDDED_MMAP_ALIGN) {
            params.mmap = false;
        }
        #[cfg(unix)]
        {
            let backend = Backend::get();
            let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
            backend.clear_log();
            let mut devices = [std::ptr::null_mut(); 2];
            let mut raw = params.raw(&mut devices);
            let mut observer = progress.map(|f| Observer { f, stopped: false });
            if let Some(o) = observer.as_mut() {
                raw.progress_callback = Some(on_progress);
                raw.progress_callback_user_data = (o as *mut Observer).cast();
            }
            // SAFETY: a valid stream at the file's start; `devices` and `observer` outlive the
            // call (llama.cpp calls the progress callback only during it). llama.cpp does not
            // own a stream it is given, and its weight mappings outlive the descriptor.
            let stopped = |o: &Option<Observer>| o.as_ref().is_some_and(|o| o.stopped);
            // What llama.cpp logs about a load we stopped is no error to the app: held, demoted.
            let ptr = crate::log::hold(
                || with_stream(file, path, offset, |fp| unsafe { sys::llama_model_load_from_file_ptr(fp.cast(), raw) }),
                |_| !stopped(&observer),
            )?;
            if stopped(&observer) {
                if let Some(p) = NonNull::new(ptr) {
                    // SAFETY: a model llama.cpp returned and nobody else holds.
                    unsafe { sys::llama_model_free(p.as_ptr()) };
                }
                return Err(LlamaError::Cancelled);
            }
            let ptr =
                NonNull::new(ptr).ok_or_else(|| LlamaError::Load { path: path.into(), log: backend.take_log() })?;
            Ok(Self::from_ptr(ptr))
        }
        #[cfg(not(unix))]
        {
            let _ = (file, progress);
            if offset != 0 {
                return Err(LlamaError::Refused("a GGUF inside another file loads on Unix only".into()));
            }
            Self::load(path, params)
        }
    }

    /// Whether the model has an encoder (T5-style encoder-decoder).
    pub fn has_encoder(&self) -> bool {
        // SAFETY: live model.
        unsafe { sys::llama_model_has_encoder(self.ptr.as_ptr()) }
    }

    /// The token a decoder sequence starts with (`t5.decoder_start_token_id`; llama.cpp falls
    /// back to BOS when the file has none). `None` for decoder-only models.
    pub fn decoder_start_token(&self) -> Option<i32> {
        if !self.has_encoder() {
            return None;
        }
        // SAFETY: live model.
        let t = unsafe { sys::llama_model_decoder_start_token(self.ptr.as_ptr()) };
        (t >= 0 && (t as usize) < self.n_vocab).then_some(t)
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos_token(&self) -> Option<i32> {
        // SAFETY: live model; the vocabulary lives as long as it.
        let t = unsafe { sys::llama_vocab_eos(sys::llama_model_get_vocab(self.ptr.as_ptr())) };
        (t >= 0 && (t as usize) < self.n_vocab).then_some(t)
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Width of one input embedding row (soft prompts must have it).
    pub fn n_embd_inp(&self) -> usize {
        self.n_embd_inp
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn n_ctx_train(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()).max(0) as usize }
    }

    /// Transformer blocks (`llama_model_n_layer`).
    pub fn n_layer(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()).max(0) as usize }
    }

    /// Attention (query) heads of the first layer (`llama_model_n_head`).
    pub fn n_head(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_head(self.ptr.as_ptr()).max(0) as usize }
    }

    /// Key/value heads of the first layer (`llama_model_n_head_kv`; fewer than `n_head` under GQA).
    pub fn n_head_kv(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_head_kv(self.ptr.as_ptr()).max(0) as usize }
    }

    /// Bytes of all the model's tensors (`llama_model_size`): every weight a decode can touch.
    pub fn size_bytes(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_size(self.ptr.as_ptr()) }
    }

    /// Parameters in all the model's tensors (`llama_model_n_params`).
    pub fn n_params(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_params(self.ptr.as_ptr()) }
    }

    /// Whether the weights are quantized: llama.cpp's file type (`llama_model_ftype`, without its
    /// "guessed" flag) is other than all-F32, mostly-F16 or mostly-BF16.
    pub fn is_quantized(&self) -> bool {
        // SAFETY: live model.
        let ftype = unsafe { sys::llama_model_ftype(self.ptr.as_ptr()) };
        !matches!(
            ftype & !sys::LLAMA_FTYPE_GUESSED,
            sys::LLAMA_FTYPE_ALL_F32 | sys::LLAMA_FTYPE_MOSTLY_F16 | sys::LLAMA_FTYPE_MOSTLY_BF16
        )
    }

    /// A scalar of the model's GGUF metadata as llama.cpp holds it, as text; `None` when the key
    /// is absent (or holds an array, which llama.cpp does not render).
    pub fn meta(&self, key: &str) -> Option<String> {
        let ckey = CString::new(key).ok()?;
        let mut buf = vec![0u8; 128];
        for _ in 0..2 {
            // SAFETY: the key is a valid C string and buf is writable for its length; llama.cpp
            // writes at most buf.len() bytes, NUL included, and returns the full length.
            let n = unsafe {
                sys::llama_model_meta_val_str(self.ptr.as_ptr(), ckey.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            let n = usize::try_from(n).ok()?;
            if n < buf.len() {
                buf.truncate(n);
                return String::from_utf8(buf).ok();
            }
            buf = vec![0u8; n + 1];
        }
        None
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Option<String> {
        self.meta("general.architecture")
    }

    /// An unsigned integer of the architecture's metadata (`{arch}.{suffix}`), if present.
    fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.meta(&format!("{arch}.{suffix}"))?.trim().parse().ok()
    }

    /// Width of one KV cell of one layer in the K and in the V cache, in elements: KV heads ×
    /// key (value) head size, the head sizes from `{arch}.attention.key_length` /
    /// `value_length` when the model has them, else `n_embd / n_head` (as llama.cpp reads them).
    pub fn kv_width(&self) -> (usize, usize) {
        let head = self.n_embd.checked_div(self.n_head()).unwrap_or(0);
        let k = self.arch_u64("attention.key_length").map_or(head, |v| v as usize);
        let v = self.arch_u64("attention.value_length").map_or(head, |v| v as usize);
        let kv_heads = self.n_head_kv();
        (kv_heads * k, kv_heads * v)
    }

    /// Hidden width of the feed-forward blocks (`{arch}.feed_forward_length`); 0 if absent.
    pub fn n_ff(&self) -> usize {
        self.arch_u64("feed_forward_length").map_or(0, |v| v as usize)
    }

    /// Tokenizes with the model's own tokenizer, without BOS/EOS; `parse_special` lets the text
    /// of a control token become that token (otherwise it is plain text).
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len()).map_err(|_| LlamaError::Tokenize("text longer than 2 GiB".into()))?;
        let mut buf = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            let cap = i32::try_from(buf.len()).map_err(|_| LlamaError::Tokenize("text too long".into()))?;
            // SAFETY: text and buf are valid for the lengths given; the vocab belongs to a live model.
            let n = unsafe {
                sys::llama_tokenize(
                    sys::llama_model_get_vocab(self.ptr.as_ptr()),
                    text.as_ptr() as *const c_char,
                    len,
                    buf.as_mut_ptr(),
                    cap,
                    false,
                    parse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            if n == i32::MIN {
                return Err(LlamaError::Tokenize(format!("llama.cpp could not tokenize {text:?}")));
            }
            buf.resize(n.unsigned_abs() as usize, 0);
        }
        Err(LlamaError::Tokenize(format!("llama.cpp gave inconsistent token counts for {text:?}")))
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts hold an Arc<Model>, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Runs `f` with a C stream over a duplicate of `file`'s descriptor, rewound to the start, and
/// closes the stream after (llama.cpp never owns a stream it is given).
#[cfg(unix)]
pub(crate) fn with_stream<T>(
    file: &std::fs::File,
    path: &Path,
    offset: u64,
    f: impl FnOnce(*mut libc::FILE) -> T,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let failed = || LlamaError::Load { path: path.into(), log: std::io::Error::last_os_error().to_string() };
    // SAFETY: `dup` of a descriptor `file` keeps open; `fdopen` takes ownership of the copy
    // (closed with the stream below, or directly if fdopen fails).
    let fp = unsafe {
        let fd = libc::dup(file.as_raw_fd());
        if fd < 0 {
            return Err(failed());
        }
        let fp = libc::fdopen(fd, c"rb".as_ptr());
        if fp.is_null() {
            let e = failed();
            libc::close(fd);
            return Err(e);
        }
        // llama.cpp reads the GGUF from the stream's position (an embedded GGUF's offsets count
        // from its start).
        let pos = libc::off_t::try_from(offset).unwrap_or(-1);
        if pos < 0 || libc::fseeko(fp, pos, libc::SEEK_SET) != 0 {
            let e = failed();
            libc::fclose(fp);
            return Err(e);
        }
        fp
    };
    let out = f(fp);
    // SAFETY: the stream is ours and no longer used.
    unsafe { libc::fclose(fp) };
    Ok(out)
}
