//! One llama.cpp context: a KV cache and compute buffers, used by one thread at a time.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_sys_2 as sys;

use super::error::{LlamaError, Result};
use super::{Adapter, Backend, Batch, Model, Pooling};

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
    /// Most rows of one decode whose logits are read (llama.cpp's `n_outputs_max`, at least
    /// `n_seq_max`, at most `n_batch`): the logits buffer and the compute buffer's output
    /// projection each hold that many rows of `n_vocab` floats, by far the largest scratch of a
    /// small model with a large vocabulary. Embeddings and encoder-decoder contexts output up to
    /// `n_batch` rows whatever this says.
    pub n_outputs: u32,
    pub threads: i32,
    pub kv_type: KvType,
    /// llama.cpp's flash attention. Its CPU kernel skips masked cells but accumulates in F16 with
    /// an F16 cache (its distance to PyTorch is in the README); exact parity checks turn it off.
    pub flash_attention: bool,
}

impl ContextParams {
    /// One sequence, F32 cache, classic attention: the exact path, for checking a model against
    /// a reference.
    pub fn exact(n_ctx: u32, threads: i32) -> Self {
        let n_ctx = n_ctx.max(16);
        Self {
            n_ctx,
            n_batch: n_ctx,
            n_seq_max: 1,
            n_outputs: n_ctx,
            threads,
            kv_type: KvType::F32,
            flash_attention: false,
        }
    }
}

/// Cancellation state read by llama.cpp's abort callback during a decode.
#[derive(Default)]
struct AbortState {
    cancel: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
}

unsafe extern "C" fn abort_cb(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: data points to the Box<AbortState> owned by the Context that registered it.
    let st = unsafe { &*(data as *const AbortState) };
    st.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) || st.deadline.is_some_and(|d| Instant::now() >= d)
}

/// Calls `f` with llama.cpp's view of `b`: pointers into its arrays (every one `b.len()` long,
/// which `Batch` keeps in step) and the per-row sequence lists, valid while `f` runs.
fn with_raw<T>(b: &mut Batch, f: impl FnOnce(sys::llama_batch) -> T) -> T {
    let mut seq_ptrs: Vec<*mut i32> = b.seqs.iter_mut().map(|s| s.as_mut_ptr()).collect();
    let mut n_seq: Vec<i32> = b.seqs.iter().map(|s| s.len() as i32).collect();
    let raw = sys::llama_batch {
        n_tokens: b.len() as i32,
        token: if b.embd.is_some() { std::ptr::null_mut() } else { b.tokens.as_mut_ptr() },
        embd: b.embd.as_mut().map_or(std::ptr::null_mut(), |e| e.as_mut_ptr()),
        pos: b.pos.as_mut_ptr(),
        n_seq_id: n_seq.as_mut_ptr(),
        seq_id: seq_ptrs.as_mut_ptr(),
        logits: b.out.as_mut_ptr(),
    };
    f(raw)
}

/// One llama.cpp context (KV cache + compute buffers). Used by one thread at a time.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: Arc<Model>,
    abort: Box<AbortState>,
    n_ctx: u32,
    n_batch: u32,
    n_seq_max: u32,
    /// Most output rows one decode may have (`n_outputs_max` as llama.cpp got it): more aborts.
    n_outputs: u32,
    /// `Some` for an embeddings context ([`Context::with_embeddings`]): every row is an output
    /// and llama.cpp pools the final hidden states per sequence.
    pooling: Option<Pooling>,
    /// Width of one pooled embedding (`llama_model_n_embd_out`).
    n_embd_out: usize,
    /// The adapter llama.cpp applies in this context, with its scale; held so it outlives
    /// its use here.
    adapter: Option<(Arc<Adapter>, f32)>,
    /// Successful `llama_encode` calls in this context (an engine reports one per request).
    encoder_passes: u64,
}

// SAFETY: a context is only used through &mut (one thread at a time); moving it between threads is
// fine for llama.cpp.
unsafe impl Send for Context {}

impl Context {
    pub fn new(model: Arc<Model>, p: &ContextParams) -> Result<Self> {
        Self::create(model, p, None)
    }

    /// A context that outputs pooled final hidden states (after the model's final norm) per
    /// sequence instead of being read for logits: `llama_context_params.embeddings = true` with
    /// `pooling_type` MEAN or LAST. Read them with [`Context::seq_embedding`]. llama.cpp pools
    /// over the rows of one ubatch, and `n_ubatch = n_batch` here, so a sequence decoded whole
    /// in one [`Context::decode`] gets the pooled state of exactly its rows.
    ///
    /// `min(n_ctx, n_batch)` must be a multiple of `n_seq_max` (llama.cpp aborts the process
    /// otherwise, at creation, with MEAN pooling); refused here when it is not.
    pub fn with_embeddings(model: Arc<Model>, p: &ContextParams, pooling: Pooling) -> Result<Self> {
        Self::create(model, p, Some(pooling))
    }

    fn create(model: Arc<Model>, p: &ContextParams, pooling: Option<Pooling>) -> Result<Self> {
        let backend = Backend::get();
        // An encoder model's outputs are capped at n_batch whatever n_outputs_max says, and the
        // constructor reserves n_seq_max of them: a GGML_ASSERT past that.
        if model.has_encoder() && p.n_seq_max > p.n_batch.min(p.n_ctx) {
            return Err(LlamaError::Refused(format!(
                "an encoder-decoder context needs n_seq_max ({}) ≤ n_batch ({})",
                p.n_seq_max,
                p.n_batch.min(p.n_ctx)
            )));
        }
        if p.n_seq_max == 0 || p.n_seq_max > 256 || p.n_batch == 0 || p.n_ctx < p.n_batch.min(16) {
            return Err(LlamaError::Refused(format!("context parameters out of range: {p:?}")));
        }
        // llama.cpp reserves its worst-case graph for min(n_ctx, n_batch) tokens rounded up to a
        // multiple of n_seq_max, but with only min(n_ctx, n_batch) outputs; an embeddings graph
        // (MEAN pooling's matmul of every output row by every token) then fails a GGML_ASSERT
        // inside llama_init_from_model unless the two agree.
        if pooling.is_some() && !p.n_batch.min(p.n_ctx).is_multiple_of(p.n_seq_max) {
            return Err(LlamaError::Refused(format!(
                "an embeddings context needs min(n_ctx, n_batch) = {} to be a multiple of n_seq_max = {}",
                p.n_batch.min(p.n_ctx),
                p.n_seq_max
            )));
        }
        let kv = match p.kv_type {
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::F32 => sys::GGML_TYPE_F32,
        };
        // Every row of an embeddings decode is an output; llama.cpp ignores the cap for encoder
        // models (n_batch outputs).
        let n_outputs = if pooling.is_some() || model.has_encoder() {
            p.n_batch.max(p.n_seq_max)
        } else {
            p.n_outputs.clamp(p.n_seq_max, p.n_batch.max(p.n_seq_max))
        };
        let mut abort = Box::<AbortState>::default();
        backend.clear_log();
        // SAFETY: default params are plain data; the model is alive (we hold an Arc).
        let ptr = unsafe {
            let mut c = sys::llama_context_default_params();
            c.n_ctx = p.n_ctx;
            c.n_batch = p.n_batch;
            c.n_ubatch = p.n_batch;
            c.n_seq_max = p.n_seq_max;
            // llama.cpp sizes its output buffer for max(outputs, n_seq_max) rows and asserts (aborts)
            // when that exceeds n_outputs_max; it reserves the compute graph for
            // min(n_ubatch, n_outputs_max) output rows.
            c.n_outputs_max = n_outputs;
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
            if let Some(pooling) = pooling {
                c.embeddings = true;
                c.pooling_type = pooling.raw();
            }
            c.abort_callback = Some(abort_cb);
            c.abort_callback_data = (&mut *abort) as *mut AbortState as *mut c_void;
            let _shared = model.adapters_read();
            sys::llama_init_from_model(model.as_ptr(), c)
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| LlamaError::NoContext { log: backend.take_log() })?;
        // SAFETY: live context; the model is alive (we hold an Arc).
        let (n_ctx, n_batch, n_seq_max, pooling_type, n_embd_out) = unsafe {
            (
                sys::llama_n_ctx(ptr.as_ptr()),
                sys::llama_n_batch(ptr.as_ptr()),
                sys::llama_n_seq_max(ptr.as_ptr()),
                sys::llama_pooling_type(ptr.as_ptr()),
                sys::llama_model_n_embd_out(model.as_ptr()),
            )
        };
        let n_embd_out = n_embd_out.max(0) as usize;
        // What llama.cpp's cap really is: its own n_batch where it ignores ours.
        let n_outputs =
            if pooling.is_some() || model.has_encoder() { n_batch } else { n_outputs.min(n_batch.max(n_seq_max)) };
        // Built here so that a refusal below frees the llama.cpp context (Drop).
        let ctx = Self {
            ptr,
            model,
            abort,
            n_ctx,
            n_batch,
            n_seq_max,
            n_outputs,
            pooling,
            n_embd_out,
            adapter: None,
            encoder_passes: 0,
        };
        if let Some(pooling) = pooling {
            if pooling_type != pooling.raw() || ctx.n_embd_out == 0 {
                return Err(LlamaError::Refused(format!(
                    "llama.cpp made an embeddings context with pooling type {pooling_type} (asked for {}) \
                     and embedding width {}",
                    pooling.raw(),
                    ctx.n_embd_out
                )));
            }
        }
        Ok(ctx)
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// What llama.cpp's abort callback checks during decodes: a cancel flag and a deadline.
    pub fn set_abort(&mut self, cancel: Option<Arc<AtomicBool>>, deadline: Option<Instant>) {
        self.abort.cancel = cancel;
        self.abort.deadline = deadline;
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx as usize
    }

    /// Most rows of one decode whose logits can be read (see [`ContextParams::n_outputs`]).
    pub fn n_outputs(&self) -> usize {
        self.n_outputs as usize
    }

    pub fn n_batch(&self) -> usize {
        self.n_batch as usize
    }

    pub fn n_seq_max(&self) -> usize {
        self.n_seq_max as usize
    }

    /// The pooling of an embeddings context; `None` for a logits context.
    pub fn pooling(&self) -> Option<Pooling> {
        self.pooling
    }

    /// Width of the vectors [`Context::seq_embedding`] returns.
    pub fn n_embd_out(&self) -> usize {
        self.n_embd_out
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
            return Err(LlamaError::Refused(format!("sequence id out of range ({src} -> {dst})")));
        }
        // SAFETY: live context, ids in range, unified cache (partial copies are allowed there).
        unsafe { sys::llama_memory_seq_cp(self.mem(), src, dst, -1, -1) };
        Ok(())
    }

    /// Gives `dst` the cells of `src` at positions `[0, end)` (shared, not copied: unified cache).
    pub fn seq_share(&mut self, src: i32, dst: i32, end: i32) -> Result<()> {
        let ok = |s: i32| s >= 0 && (s as u32) < self.n_seq_max;
        if !ok(src) || !ok(dst) || end < 0 {
            return Err(LlamaError::Refused(format!("sequence share out of range ({src} -> {dst}, end {end})")));
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

    /// Sets the LoRA adapter (and its scale) llama.cpp applies here, or none. A change clears
    /// the KV cache: cells computed under another adapter must never be read under this one.
    /// Returns whether anything changed.
    pub fn set_adapter(&mut self, adapter: Option<(&Arc<Adapter>, f32)>) -> Result<bool> {
        let same = match (&self.adapter, adapter) {
            (None, None) => true,
            (Some((a, s)), Some((b, t))) => Arc::ptr_eq(a, b) && *s == t,
            _ => false,
        };
        if same {
            return Ok(false);
        }
        if let Some((a, s)) = adapter {
            if !Arc::ptr_eq(a.model(), &self.model) {
                return Err(LlamaError::Refused("an adapter loaded over another model".into()));
            }
            if !s.is_finite() {
                return Err(LlamaError::Refused(format!("adapter scale {s}")));
            }
        }
        self.clear();
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> = adapter.iter().map(|(a, _)| a.as_ptr()).collect();
        let mut scales: Vec<f32> = adapter.iter().map(|&(_, s)| s).collect();
        // SAFETY: live context; the arrays hold n_adapters entries (null with 0, as llama.cpp
        // requires) and the adapters are alive (Arcs kept in self.adapter).
        unsafe {
            let (p, sc) = if ptrs.is_empty() {
                (std::ptr::null_mut(), std::ptr::null_mut())
            } else {
                (ptrs.as_mut_ptr(), scales.as_mut_ptr())
            };
            sys::llama_set_adapters_lora(self.ptr.as_ptr(), p, ptrs.len(), sc);
        }
        self.adapter = adapter.map(|(a, s)| (Arc::clone(a), s));
        Ok(true)
    }

    /// The adapter set here, if any.
    pub fn adapter(&self) -> Option<&Arc<Adapter>> {
        self.adapter.as_ref().map(|(a, _)| a)
    }

    /// Runs the encoder of an encoder-decoder model over one whole input (`b`: token ids or
    /// embedding rows of width `n_embd_inp`, positions 0.., each row tagged with the decoder
    /// sequences whose cross attention may see it). The output replaces the previous one and
    /// serves every later decode in this context. Checks first what llama.cpp asserts on: the
    /// whole input in one ubatch (here `n_ubatch = n_batch`) and within `n_ctx`.
    pub fn encode(&mut self, b: &mut Batch) -> Result<()> {
        if !self.model.has_encoder() {
            return Err(LlamaError::Refused("the model has no encoder".into()));
        }
        let n = b.len();
        if n == 0 {
            return Err(LlamaError::Refused("an empty encoder input".into()));
        }
        if n > self.n_batch as usize {
            return Err(LlamaError::EncoderTooLong { rows: n, limit: "n_ubatch", max: self.n_batch as usize });
        }
        if n > self.n_ctx as usize {
            return Err(LlamaError::EncoderTooLong { rows: n, limit: "n_ctx", max: self.n_ctx as usize });
        }
        self.check_rows(b)?;
        Backend::get().clear_log();
        let ctx = self.ptr.as_ptr();
        // SAFETY: ids, widths and the ubatch limit were checked above; `raw` is valid for the call.
        let rc = {
            let _shared = self.model.adapters_read();
            with_raw(b, |raw| unsafe { sys::llama_encode(ctx, raw) })
        };
        b.outputs.clear();
        match rc {
            0 => {
                self.encoder_passes += 1;
                Ok(())
            }
            code => Err(LlamaError::Decode { code, log: Backend::get().take_log() }),
        }
    }

    /// Successful encoder passes so far in this context.
    pub fn encoder_passes(&self) -> u64 {
        self.encoder_passes
    }

    /// Row checks shared by encode and decode: input width, token ids, sequence ids.
    fn check_rows(&self, b: &Batch) -> Result<()> {
        // llama.cpp copies rows of its input width: a narrower row would be read past its end.
        if b.embd.is_some() && b.width != self.model.n_embd_inp() {
            return Err(LlamaError::Refused(format!(
                "embedding rows of width {} for a model of width {}",
                b.width,
                self.model.n_embd_inp()
            )));
        }
        let n_vocab = i32::try_from(self.model.n_vocab()).unwrap_or(i32::MAX);
        if b.tokens.iter().any(|&t| t < 0 || t >= n_vocab) {
            return Err(LlamaError::Refused("token id outside the vocabulary".into()));
        }
        for s in &b.seqs {
            if s.is_empty() || s.iter().any(|&x| x < 0 || x as u32 >= self.n_seq_max) {
                return Err(LlamaError::Refused("sequence id out of range".into()));
            }
        }
        Ok(())
    }

    /// Decodes a batch. Checks everything llama.cpp would assert on.
    pub fn decode(&mut self, b: &mut Batch) -> Result<()> {
        let n = b.len();
        if n == 0 {
            return Ok(());
        }
        // The decoder's cross attention reads the encoder output; without one it has none.
        if self.model.has_encoder() && self.encoder_passes == 0 {
            return Err(LlamaError::Refused("encode the input before decoding with an encoder-decoder model".into()));
        }
        if n > self.n_batch as usize {
            return Err(LlamaError::Refused(format!("batch of {n} rows exceeds n_batch {}", self.n_batch)));
        }
        // llama.cpp copies rows of its input width: a narrower row would be read past its end.
        if b.embd.is_some() && b.width != self.model.n_embd_inp() {
            return Err(LlamaError::Refused(format!(
                "embedding rows of width {} for a model of width {}",
                b.width,
                self.model.n_embd_inp()
            )));
        }
        // llama.cpp asserts (aborts) on more output rows than its output buffer was made for.
        let outputs = b.out.iter().filter(|&&o| o != 0).count();
        if outputs > self.n_outputs as usize {
            return Err(LlamaError::Refused(format!(
                "batch with {outputs} output rows exceeds the context's {} (n_outputs)",
                self.n_outputs
            )));
        }
        if self.pooling.is_some() && b.out.contains(&0) {
            return Err(LlamaError::Refused("an embeddings context outputs every row: flag every row".into()));
        }
        let n_vocab = i32::try_from(self.model.n_vocab()).unwrap_or(i32::MAX);
        if b.tokens.iter().any(|&t| t < 0 || t >= n_vocab) {
            return Err(LlamaError::Refused("token id outside the vocabulary".into()));
        }
        for s in &b.seqs {
            if s.is_empty() || s.iter().any(|&x| x < 0 || x as u32 >= self.n_seq_max) {
                return Err(LlamaError::Refused("sequence id out of range".into()));
            }
        }
        let ctx = self.ptr.as_ptr();
        // A decode we aborted (cancel, deadline) makes llama.cpp log an error: held and demoted,
        // so a normal cancel puts no error in the app's log.
        let rc = crate::log::hold(
            || {
                let _shared = self.model.adapters_read();
                // SAFETY: ids, widths and output counts were checked above; `raw` is valid for
                // the call.
                with_raw(b, |raw| unsafe { sys::llama_decode(ctx, raw) })
            },
            |&rc| rc != 2,
        );
        b.outputs = if rc == 0 { b.out.iter().map(|&o| o != 0).collect() } else { vec![] };
        match rc {
            0 => Ok(()),
            2 => {
                if self.abort.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    Err(LlamaError::Cancelled)
                } else {
                    Err(LlamaError::DeadlineExceeded)
                }
            }
            1 => Err(LlamaError::KvFull { rows: n, n_ctx: self.n_ctx as usize }),
            code => Err(LlamaError::Decode { code, log: Backend::get().take_log() }),
        }
    }

    /// Logits of batch row `i` of the last decode (it must have had its output flag).
    pub fn logits(&self, b: &Batch, i: usize) -> Result<&[f32]> {
        if !b.outputs.get(i).copied().unwrap_or(false) {
            return Err(LlamaError::NoLogits(i));
        }
        // SAFETY: row i had an output flag in the last successful decode of this context, so
        // llama_get_logits_ith returns n_vocab floats valid until the next decode (borrow of self).
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32);
            if p.is_null() {
                return Err(LlamaError::NoLogits(i));
            }
            Ok(std::slice::from_raw_parts(p, self.model.n_vocab()))
        }
    }

    /// The pooled embedding of sequence `seq` from the last decode, which must have been of `b`
    /// in this embeddings context, with rows of `seq`. It pools only the rows of that decode:
    /// decode a sequence whole, from an empty KV cache for that sequence, to embed it.
    pub fn seq_embedding(&self, b: &Batch, seq: i32) -> Result<&[f32]> {
        if self.pooling.is_none() {
            return Err(LlamaError::Refused("not an embeddings context".into()));
        }
        if seq < 0 || seq as u32 >= self.n_seq_max {
            return Err(LlamaError::Refused(format!("sequence id {seq} out of range")));
        }
        // `outputs` is set only by a successful decode of `b`; the sequence must have had rows.
        if b.outputs.is_empty() || !b.seqs.iter().any(|s| s.contains(&seq)) {
            return Err(LlamaError::Refused(format!("sequence {seq} had no rows in the last decode")));
        }
        // SAFETY: live embeddings context with pooling MEAN/LAST (checked at creation), seq id in
        // range. llama.cpp returns a pointer into its per-sequence map (filled by the last decode,
        // synchronized by the call) holding n_embd_out floats, or null when the sequence has none;
        // it stays valid until the next decode, which needs `&mut self` (the borrow of self).
        unsafe {
            let p = sys::llama_get_embeddings_seq(self.ptr.as_ptr(), seq);
            if p.is_null() {
                return Err(LlamaError::Refused(format!("llama.cpp has no pooled embedding for sequence {seq}")));
            }
            Ok(std::slice::from_raw_parts(p, self.n_embd_out))
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// The next-token logits at every position of one token sequence, on the exact path (F32 cache,
/// classic attention), with an adapter applied if given: for checking a conversion against a
/// reference. Ranking has its own plans.
pub fn sequence_logits(
    model: &Arc<Model>,
    adapter: Option<(&Arc<Adapter>, f32)>,
    tokens: &[i32],
    threads: i32,
) -> Result<Vec<Vec<f32>>> {
    let n = u32::try_from(tokens.len()).map_err(|_| LlamaError::Refused("sequence too long".into()))?;
    if n == 0 {
        return Err(LlamaError::Refused("an empty token sequence has no logits".into()));
    }
    let mut ctx = Context::new(Arc::clone(model), &ContextParams::exact(n, threads))?;
    ctx.set_adapter(adapter)?;
    let mut b = Batch::tokens();
    for (i, &t) in tokens.iter().enumerate() {
        b.add_token(t, i as i32, &[0], true);
    }
    ctx.decode(&mut b)?;
    (0..tokens.len()).map(|i| ctx.logits(&b, i).map(<[f32]>::to_vec)).collect()
}
