//! A thin safe layer over `llama-cpp-sys-2`: model, context, and batches that carry either token
//! ids or input embeddings (the safe `llama-cpp-2` crate cannot feed embeddings).
//!
//! llama.cpp aborts the process on some invalid calls (a logits index without an output flag, an
//! encoder input larger than a ubatch, ...), so every check that can be done here is done before
//! the call.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Instant;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};

static INIT: Once = Once::new();

unsafe extern "C" fn quiet_log(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    // llama.cpp logs a lot at load time; forward only when asked (DELREC_LLAMA_LOG=1) or on errors.
    if text.is_null() {
        return;
    }
    let loud = std::env::var_os("DELREC_LLAMA_LOG").is_some();
    if loud || level == sys::GGML_LOG_LEVEL_ERROR {
        // SAFETY: llama.cpp passes a NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(text) };
        eprint!("{}", s.to_string_lossy());
    }
}

/// Initializes llama.cpp once per process (backend, logging).
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: plain initialization calls, guarded by Once.
        unsafe {
            sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

/// Where model layers run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelParams {
    /// Layers offloaded to a GPU backend, if the build has one (0 = CPU only, -1 = all).
    pub gpu_layers: i32,
}

/// A loaded model. Immutable after load, so it may be shared by contexts on many threads.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    n_embd: usize,
    n_vocab: usize,
}

// SAFETY: a llama_model is read-only after loading; llama.cpp supports many contexts on one model
// from different threads.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    pub fn load(path: &Path, params: ModelParams) -> Result<Self> {
        init();
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::InvalidInput(format!("path {path:?} contains a NUL byte")))?;
        // SAFETY: default params are plain data; the path is a valid C string.
        let ptr = unsafe {
            let mut p = sys::llama_model_default_params();
            p.n_gpu_layers = params.gpu_layers;
            sys::llama_model_load_from_file(cpath.as_ptr(), p)
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::ModelLoad {
            path: path.to_path_buf(),
            reason: "llama.cpp returned no model (run with DELREC_LLAMA_LOG=1 for its log)".into(),
        })?;
        // SAFETY: ptr is a live model.
        let (n_embd, n_vocab) = unsafe {
            let vocab = sys::llama_model_get_vocab(ptr.as_ptr());
            (sys::llama_model_n_embd(ptr.as_ptr()), sys::llama_vocab_n_tokens(vocab))
        };
        let model = Model { ptr, n_embd: n_embd.max(0) as usize, n_vocab: n_vocab.max(0) as usize };
        // SAFETY: as above.
        if unsafe { sys::llama_model_has_encoder(model.ptr.as_ptr()) } {
            return Err(Error::ModelLoad {
                path: path.to_path_buf(),
                reason: "encoder-decoder models are not supported by this runtime yet".into(),
            });
        }
        Ok(model)
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn n_ctx_train(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()).max(0) as usize }
    }

    /// Tokenizes with the model's own tokenizer (no BOS/EOS, special tokens as plain text).
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len()).map_err(|_| Error::InvalidInput("text too long to tokenize".into()))?;
        // SAFETY: live model; buffers sized as llama_tokenize asks (it returns -needed when short).
        unsafe {
            let vocab = sys::llama_model_get_vocab(self.ptr.as_ptr());
            let mut buf = vec![0i32; text.len() + 4];
            let mut n = sys::llama_tokenize(
                vocab,
                text.as_ptr() as *const c_char,
                len,
                buf.as_mut_ptr(),
                buf.len() as i32,
                false,
                false,
            );
            if n < 0 {
                if n == i32::MIN {
                    return Err(Error::InvalidInput("tokenization overflow".into()));
                }
                buf.resize((-n) as usize, 0);
                n = sys::llama_tokenize(
                    vocab,
                    text.as_ptr() as *const c_char,
                    len,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    false,
                    false,
                );
                if n < 0 {
                    return Err(Error::Backend("llama_tokenize failed".into()));
                }
            }
            buf.truncate(n as usize);
            Ok(buf)
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts hold an Arc<Model>, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// KV cache element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    F32,
}

#[derive(Clone, Debug)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_seq_max: u32,
    pub threads: i32,
    pub kv_type: KvType,
    /// llama.cpp's flash attention. Its CPU kernel skips masked cells but accumulates in F16 with
    /// an F16 cache (|Δ logits| ~1e-2 on the tiny test models); against PyTorch on the trained
    /// SmolLM2 model (50 users × 20 candidates) it measured 0.0057 nats mean, 0.0065 without.
    /// Exact parity checks (`delrec logits`) turn it off.
    pub flash_attention: bool,
}

/// Cancellation state read by llama.cpp's abort callback during a decode.
#[derive(Default)]
pub(crate) struct AbortState {
    pub cancel: Option<Arc<AtomicBool>>,
    pub deadline: Option<Instant>,
}

unsafe extern "C" fn abort_cb(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: data points to the Box<AbortState> owned by the Context that registered it.
    let st = unsafe { &*(data as *const AbortState) };
    st.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) || st.deadline.is_some_and(|d| Instant::now() >= d)
}

/// One llama.cpp context (KV cache + compute buffers). Used by one thread at a time.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: Arc<Model>,
    pub(crate) abort: Box<AbortState>,
    n_ctx: u32,
    n_batch: u32,
    n_seq_max: u32,
}

// SAFETY: a context is only used through &mut (one thread at a time); moving it between threads is
// fine for llama.cpp.
unsafe impl Send for Context {}

impl Context {
    pub fn new(model: Arc<Model>, p: &ContextParams) -> Result<Self> {
        if p.n_seq_max == 0 || p.n_seq_max > 256 || p.n_batch == 0 || p.n_ctx < p.n_batch.min(16) {
            return Err(Error::InvalidInput(format!("context parameters out of range: {p:?}")));
        }
        let kv = match p.kv_type {
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::F32 => sys::GGML_TYPE_F32,
        };
        let mut abort = Box::<AbortState>::default();
        // SAFETY: default params are plain data; the model is alive (we hold an Arc).
        let ptr = unsafe {
            let mut c = sys::llama_context_default_params();
            c.n_ctx = p.n_ctx;
            c.n_batch = p.n_batch;
            c.n_ubatch = p.n_batch;
            c.n_seq_max = p.n_seq_max;
            // llama.cpp sizes its output buffer for max(outputs, n_seq_max) rows and asserts (aborts)
            // when that exceeds n_outputs_max, which defaults to n_batch.
            c.n_outputs_max = p.n_batch.max(p.n_seq_max);
            c.n_threads = p.threads;
            c.n_threads_batch = p.threads;
            c.type_k = kv;
            c.type_v = kv;
            c.kv_unified = true;
            c.flash_attn_type = if p.flash_attention {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
            };
            c.no_perf = true;
            c.abort_callback = Some(abort_cb);
            c.abort_callback_data = (&mut *abort) as *mut AbortState as *mut c_void;
            sys::llama_init_from_model(model.ptr.as_ptr(), c)
        };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| Error::Backend("could not create a context (out of memory?)".into()))?;
        // SAFETY: live context.
        let (n_ctx, n_batch, n_seq_max) = unsafe {
            (sys::llama_n_ctx(ptr.as_ptr()), sys::llama_n_batch(ptr.as_ptr()), sys::llama_n_seq_max(ptr.as_ptr()))
        };
        Ok(Self { ptr, model, abort, n_ctx, n_batch, n_seq_max })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx as usize
    }

    pub fn n_batch(&self) -> usize {
        self.n_batch as usize
    }

    pub fn n_seq_max(&self) -> usize {
        self.n_seq_max as usize
    }

    fn mem(&self) -> sys::llama_memory_t {
        // SAFETY: live context.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    pub fn clear(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(self.mem(), false) }
    }

    /// Drops positions `[p0, ∞)` of `seq` (p0 = 0 drops the whole sequence).
    pub fn seq_rm(&mut self, seq: i32, p0: i32) -> bool {
        // SAFETY: live context; seq checked against n_seq_max.
        seq >= 0 && (seq as u32) < self.n_seq_max && unsafe { sys::llama_memory_seq_rm(self.mem(), seq, p0, -1) }
    }

    /// Shares all cells of `src` with `dst` (no copy in a unified cache).
    pub fn seq_cp(&mut self, src: i32, dst: i32) -> Result<()> {
        let ok = |s: i32| s >= 0 && (s as u32) < self.n_seq_max;
        if !ok(src) || !ok(dst) {
            return Err(Error::InvalidInput(format!("sequence id out of range ({src} -> {dst})")));
        }
        // SAFETY: live context, ids in range, unified cache (partial copies are allowed there).
        unsafe { sys::llama_memory_seq_cp(self.mem(), src, dst, -1, -1) };
        Ok(())
    }

    /// Gives `dst` the cells of `src` at positions `[0, end)` (shared, not copied: unified cache).
    pub fn seq_share(&mut self, src: i32, dst: i32, end: i32) -> Result<()> {
        let ok = |s: i32| s >= 0 && (s as u32) < self.n_seq_max;
        if !ok(src) || !ok(dst) || end < 0 {
            return Err(Error::InvalidInput(format!("sequence share out of range ({src} -> {dst}, end {end})")));
        }
        // SAFETY: live context, ids in range, unified cache (partial copies are allowed there).
        unsafe { sys::llama_memory_seq_cp(self.mem(), src, dst, 0, end) };
        Ok(())
    }

    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        if seq < 0 || seq as u32 >= self.n_seq_max {
            return -1;
        }
        // SAFETY: live context, id in range.
        unsafe { sys::llama_memory_seq_pos_max(self.mem(), seq) }
    }

    /// Decodes a batch. Checks everything llama.cpp would assert on.
    pub fn decode(&mut self, b: &mut Batch) -> Result<()> {
        let n = b.len();
        if n == 0 {
            return Ok(());
        }
        if n > self.n_batch as usize {
            return Err(Error::InvalidInput(format!("batch of {n} rows exceeds n_batch {}", self.n_batch)));
        }
        if b.embd.is_some() && b.width != self.model.n_embd {
            return Err(Error::InvalidInput(format!(
                "embedding rows of width {} for a model of width {}",
                b.width, self.model.n_embd
            )));
        }
        let n_vocab = self.model.n_vocab as i32;
        if b.tokens.iter().any(|&t| t < 0 || t >= n_vocab) {
            return Err(Error::InvalidInput("token id outside the vocabulary".into()));
        }
        for s in &b.seqs {
            if s.is_empty() || s.iter().any(|&x| x < 0 || x as u32 >= self.n_seq_max) {
                return Err(Error::InvalidInput("sequence id out of range".into()));
            }
        }
        let mut seq_ptrs: Vec<*mut i32> = b.seqs.iter_mut().map(|s| s.as_mut_ptr()).collect();
        let mut n_seq: Vec<i32> = b.seqs.iter().map(|s| s.len() as i32).collect();
        let raw = sys::llama_batch {
            n_tokens: n as i32,
            token: if b.embd.is_some() { std::ptr::null_mut() } else { b.tokens.as_mut_ptr() },
            embd: b.embd.as_mut().map_or(std::ptr::null_mut(), |e| e.as_mut_ptr()),
            pos: b.pos.as_mut_ptr(),
            n_seq_id: n_seq.as_mut_ptr(),
            seq_id: seq_ptrs.as_mut_ptr(),
            logits: b.out.as_mut_ptr(),
        };
        // SAFETY: every array has n entries (Batch keeps them in step) and lives until the call
        // returns; ids and widths were checked above.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), raw) };
        b.outputs = if rc == 0 { b.out.iter().map(|&o| o != 0).collect() } else { vec![] };
        match rc {
            0 => Ok(()),
            2 => {
                if self.abort.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    Err(Error::Cancelled)
                } else {
                    Err(Error::DeadlineExceeded)
                }
            }
            1 => Err(Error::ContextTooSmall { needed: n, available: self.n_ctx as usize }),
            code => Err(Error::Decode(code)),
        }
    }

    /// Logits of batch row `i` of the last decode (it must have had its output flag).
    pub fn logits(&self, b: &Batch, i: usize) -> Result<&[f32]> {
        if !b.outputs.get(i).copied().unwrap_or(false) {
            return Err(Error::InvalidInput(format!("row {i} of the last batch has no logits")));
        }
        // SAFETY: row i had an output flag in the last successful decode of this context, so
        // llama_get_logits_ith returns n_vocab floats valid until the next decode (borrow of self).
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32);
            if p.is_null() {
                return Err(Error::Backend(format!("no logits for row {i}")));
            }
            Ok(std::slice::from_raw_parts(p, self.model.n_vocab))
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// A batch of rows: token ids, or embedding rows (never both: llama.cpp takes one kind per batch).
pub struct Batch {
    tokens: Vec<i32>,
    embd: Option<Vec<f32>>,
    width: usize,
    pos: Vec<i32>,
    seqs: Vec<Vec<i32>>,
    out: Vec<i8>,
    outputs: Vec<bool>,
}

impl Batch {
    pub fn tokens() -> Self {
        Self { tokens: vec![], embd: None, width: 0, pos: vec![], seqs: vec![], out: vec![], outputs: vec![] }
    }

    pub fn embeddings(width: usize) -> Self {
        Self { embd: Some(vec![]), width, ..Self::tokens() }
    }

    pub fn len(&self) -> usize {
        self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        if let Some(e) = &mut self.embd {
            e.clear();
        }
        self.pos.clear();
        self.seqs.clear();
        self.out.clear();
        self.outputs.clear();
    }

    pub fn add_token(&mut self, token: i32, pos: i32, seqs: &[i32], logits: bool) {
        debug_assert!(self.embd.is_none());
        self.tokens.push(token);
        self.push_meta(pos, seqs, logits);
    }

    /// Adds one embedding row; its length must be the batch width.
    pub fn add_embedding(&mut self, row: &[f32], pos: i32, seqs: &[i32], logits: bool) -> Result<()> {
        match &mut self.embd {
            Some(e) if row.len() == self.width => e.extend_from_slice(row),
            _ => return Err(Error::InvalidInput("embedding row of the wrong width or in a token batch".into())),
        }
        self.push_meta(pos, seqs, logits);
        Ok(())
    }

    fn push_meta(&mut self, pos: i32, seqs: &[i32], logits: bool) {
        self.pos.push(pos);
        self.seqs.push(seqs.to_vec());
        self.out.push(logits as i8);
    }
}
