//! What an engine can hold in memory: [`Engine::memory_budget`], an upper bound by part, from the
//! model's shape and the engine's configuration, without decoding anything.

use delrec_format::Pack;

use super::{Engine, EngineConfig};
use crate::llm::{KvType, Model};

/// The most memory an [`Engine`] should take, by part, in bytes, with every context of its pool
/// in use ([`EngineConfig::max_contexts`](super::EngineConfig::max_contexts)); compare
/// [`MemoryBudget::total`] with the peak resident set (`VmHWM`) of a process that ranks.
///
/// Each part is an upper bound on what can become resident, not what a given request touches:
/// llama.cpp reserves its buffers for the worst case (a full batch against a full KV cache) and
/// pages that are never written stay out of the resident set. `tests/tests/memory.rs` checks the
/// parts against what llama.cpp reports allocating and the total against a measured peak;
/// `bench/README.md` ("Memory budget") has numbers on real model shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The model's tensors (`llama_model_size`): every weight a decode can touch, mapped from
    /// the file (resident once touched, shared with the page cache). For a quantized model, twice
    /// that: llama.cpp repacks weights of the types its CPU kernels have faster layouts for
    /// (Q4_0, Q4_K, Q8_0, IQ4_NL and others, depending on the CPU) into anonymous memory, up to
    /// all of them, while their file pages stay mapped. (On the CPU: offloaded layers are not
    /// counted apart.)
    pub weights: u64,
    /// KV caches: `n_ctx × n_layer × (K width + V width) × element size` (2 bytes for
    /// [`KvType::F16`], 4 for F32) per context, times `max_contexts`. `n_ctx` is the context size
    /// llama.cpp really made (it rounds up to a multiple of 256).
    pub kv: u64,
    /// Logits buffers: `max(max_outputs, max_sequences) × n_vocab × 4` bytes per context (capped
    /// by the batch; llama.cpp grows it to the most output rows of one decode, at most that),
    /// times `max_contexts`.
    pub logits: u64,
    /// Scratch of the forward pass, per context times `max_contexts`: llama.cpp's compute buffer,
    /// reserved for its worst-case graph (`min(n_ctx, batch)` tokens against the whole KV cache;
    /// llama.cpp has no API for its size, so it is estimated from the model's shape: the inputs
    /// that live through the graph plus its largest stage), the CPU backend's work buffer (matrix
    /// inputs converted to the weights' dot-product type) and the graph metadata.
    pub compute: u64,
    /// A fixed allowance for everything else: code and libraries
    /// ([`MemoryBudget::OVERHEAD_FIXED`]), the tokenizer's tables in llama.cpp and the model
    /// file's metadata ([`MemoryBudget::PER_TOKEN`] bytes per vocabulary entry), the pack (its
    /// mapped file twice: the map and what is copied out of it), the soft prompts as F32 and
    /// [`MemoryBudget::PER_ITEM`] bytes per catalog item (id index, per-call score vectors),
    /// the pack's LoRA adapter (llama.cpp copies its tensors into memory), and an
    /// encoder-decoder model's token table (copied out of the file for mixed encoder inputs).
    pub overhead: u64,
}

impl MemoryBudget {
    /// Code, libraries, the Rust and C++ runtimes, llama.cpp's process-wide state and thread
    /// stacks, resident in a process that has opened an engine and ranked. Measured
    /// (`tests/tests/memory.rs`, tiny fixture): about 12.5 MiB of the test binary's peak belong to
    /// none of the other parts, 6.5 MiB of them resident before the engine opens (the test
    /// binaries also link the converter and the FFI layer, which an app does not).
    pub const OVERHEAD_FIXED: u64 = 16 << 20;
    /// Per vocabulary entry: llama.cpp's token tables (text, score, attributes, the text → id map,
    /// BPE merges) and the tokenizer arrays of the model file, read by our checks and by llama.cpp.
    pub const PER_TOKEN: u64 = 512;
    /// Per catalog item: the id → index map, the added-items snapshot, per-call score vectors.
    pub const PER_ITEM: u64 = 256;

    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv)
            .saturating_add(self.logits)
            .saturating_add(self.compute)
            .saturating_add(self.overhead)
    }
}

/// The shape of a forward pass, what [`compute_per_context`] needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ComputeShape {
    /// KV cells of the context.
    pub n_ctx: u64,
    /// Rows per decode (`n_ubatch` = `n_batch`).
    pub n_batch: u64,
    /// Output rows per decode (`n_outputs_max`; ≤ `n_batch`).
    pub n_outputs: u64,
    pub n_embd: u64,
    pub n_head: u64,
    /// Widths of a K and a V cell of one layer (elements).
    pub k_width: u64,
    pub v_width: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_layer: u64,
    pub threads: u64,
    pub kv_type: KvType,
    pub flash_attention: bool,
    /// Encoder positions the decoder's cross-attention reads (0: a decoder-only model). T5
    /// also adds a relative position bias to every attention's scores.
    pub n_enc: u64,
}

/// Estimated scratch of one context of a llama/qwen2-style decoder, or of a T5 decoder with its
/// cross-attention, on the CPU, in bytes.
///
/// llama.cpp reserves its compute buffer for a graph of `T = min(n_ctx, n_batch)` tokens, `O =
/// min(T, n_outputs)` of them outputs, against `K = n_ctx` KV cells; ggml's allocator reuses a tensor's memory once its
/// last consumer ran, so the buffer is about the inputs that live through the graph plus the
/// largest stage. All activations are F32:
///
/// - inputs: token embeddings `T × n_embd`, the attention mask `K × T` (F16 under flash
///   attention), positions and output ids; two residual streams `T × n_embd`;
/// - attention: the scores `K × T × n_head` (not materialized under flash attention), Q, K, V
///   (twice: before and after RoPE) and the attention output;
/// - feed-forward: gate, up and their product, `T × n_ff` each;
/// - output: the output rows picked (`O × n_embd`), their final norm and logits, `O × (n_embd +
///   n_vocab)`.
///
/// A T5 decoder (`n_enc > 0`) adds, in its attention stage, the relative position bias: the
/// bucket ids `K × T` (i32), the bias rows looked up `K × T × n_head`, their permuted copy and the
/// biased scores, F32, materialized under flash attention too (which takes the bias through
/// its mask); and a cross-attention stage: K and V of the encoder output (`n_enc × (K + V
/// width)`) and its scores `n_enc × T × n_head`. llama.cpp reserves the decoder graph with
/// `n_enc` = the model's training context (its encoder output is unknown then); the encoder's
/// own graph is smaller (`T × T` against `K × T`). Measured against llama.cpp's reserved buffer
/// in `tests/tests/t5.rs`.
///
/// On top: the CPU backend's work buffer (a matrix product's input converted to the weights'
/// dot type, at most `T × max(n_embd, n_ff) × 4`; with classic attention on an F16 cache the
/// scores converted to F16, `K × T × n_head × 2`; flash attention's per-thread tiles) and the
/// graph metadata (three graphs of `max(1024, 8 × tensors)` nodes).
pub(crate) fn compute_per_context(s: &ComputeShape) -> u64 {
    const F32: u64 = 4;
    let t = s.n_batch.min(s.n_ctx);
    let k = s.n_ctx;
    let mask = k * t * if s.flash_attention { 2 } else { F32 };
    let inputs = t * s.n_embd * F32 + t * 16 + mask;
    let residual = 2 * t * s.n_embd * F32;
    let scores = if s.flash_attention { 0 } else { k * t * s.n_head * F32 };
    // Q, K, V before and after RoPE / their permuted copies, the attention output and its
    // projection.
    let rel_bias = if s.n_enc > 0 { k * t * 4 + 3 * k * t * s.n_head * F32 } else { 0 };
    let attention = scores + rel_bias + 2 * t * (s.n_embd + s.k_width + s.v_width) * F32 + 2 * t * s.n_embd * F32;
    let cross = if s.n_enc > 0 {
        let cross_scores = if s.flash_attention { 0 } else { s.n_enc * t * s.n_head * F32 };
        s.n_enc * (s.n_embd + s.k_width + s.v_width) * F32 + cross_scores + 2 * t * s.n_embd * F32
    } else {
        0
    };
    let ffn = 3 * t * s.n_ff * F32;
    let o = s.n_outputs.min(t);
    let output = o * (s.n_vocab + 2 * s.n_embd) * F32;
    // Small tensors (norms, RoPE factors) and the allocator's alignment.
    let slack = 256 << 10;
    let graph = inputs + residual + attention.max(cross).max(ffn).max(output) + slack;
    let converted_scores = if !s.flash_attention && s.kv_type == KvType::F16 { k * t * s.n_head * 2 } else { 0 };
    let work = t * s.n_embd.max(s.n_ff) * F32 + converted_scores + s.threads * (256 << 10);
    // At most 12 tensors per layer (qwen2: 9 weights and 3 biases) plus embeddings, norm, output.
    let max_nodes = 1024u64.max(8 * (12 * s.n_layer + 4));
    let meta = 3 * max_nodes * 512;
    graph + work + meta
}

impl Engine {
    /// An upper bound on this engine's memory, by part (see [`MemoryBudget`]).
    pub fn memory_budget(&self) -> MemoryBudget {
        let inner = &*self.inner;
        let adapter = inner.adapter.as_ref().map_or(0, |a| a.info.tensor_bytes);
        let adapter = adapter + inner.base.inner.token_embd.as_ref().map_or(0, |t| t.byte_len());
        let mut b =
            budget(&inner.model, Some(&inner.pack), adapter, &inner.cfg, inner.n_ctx as u64, inner.n_seq_max as u64);
        // Items added on the device count like the pack's.
        b.overhead += (self.n_items() - inner.pack.n_items()) as u64 * MemoryBudget::PER_ITEM;
        b
    }
}

/// The context size llama.cpp makes for `cfg` (it rounds up to a multiple of 256 cells).
pub(crate) fn n_ctx_of(cfg: &EngineConfig) -> u64 {
    u64::from(cfg.context_size).next_multiple_of(256)
}

/// The budget of an engine over `m` and `pack` (none: the base alone) with `adapter_bytes`
/// copied beside the weights (a LoRA adapter, an encoder-decoder model's token table) and `cfg`, whose contexts hold `n_ctx` cells and `n_seq_max` sequences.
/// Computed before any context exists, so an open can refuse a configuration over
/// `EngineConfig::memory_limit` without allocating it.
pub(crate) fn budget(
    m: &Model,
    pack: Option<&Pack>,
    adapter_bytes: u64,
    cfg: &EngineConfig,
    n_ctx: u64,
    n_seq_max: u64,
) -> MemoryBudget {
    let contexts = cfg.max_contexts as u64;
    let n_batch = u64::from(cfg.batch_size.min(cfg.context_size));
    let n_vocab = m.n_vocab() as u64;
    let (k_width, v_width) = m.kv_width();
    let elem = match cfg.kv_type {
        KvType::F16 => 2,
        KvType::F32 => 4,
    };
    let kv = n_ctx * m.n_layer() as u64 * (k_width + v_width) as u64 * elem;
    // As the context makes it (an encoder-decoder model outputs up to the batch).
    let n_outputs = if m.has_encoder() {
        n_batch.max(n_seq_max)
    } else {
        u64::from(cfg.max_outputs).max(n_seq_max).min(n_batch.max(n_seq_max))
    };
    let logits = n_outputs * n_vocab * 4;
    let threads = if cfg.threads == 0 { crate::cpus::default_threads() } else { cfg.threads };
    let compute = compute_per_context(&ComputeShape {
        n_ctx,
        n_batch,
        n_outputs,
        n_embd: m.n_embd() as u64,
        n_head: m.n_head() as u64,
        k_width: k_width as u64,
        v_width: v_width as u64,
        n_ff: m.n_ff() as u64,
        n_vocab,
        n_layer: m.n_layer() as u64,
        threads: threads as u64,
        kv_type: cfg.kv_type,
        flash_attention: cfg.flash_attention,
        n_enc: if m.has_encoder() { (m.n_ctx_train() as u64).max(n_batch) } else { 0 },
    });
    let soft: u64 = pack.map_or(0, |p| p.soft_prompts.iter().map(|s| (s.n_virtual * m.n_embd()) as u64 * 4).sum());
    let (file, n_items) = pack.map_or((0, 0), |p| (p.file_len(), p.n_items() as u64));
    let overhead = MemoryBudget::OVERHEAD_FIXED
        + n_vocab * MemoryBudget::PER_TOKEN
        + 2 * file
        + soft
        + n_items * MemoryBudget::PER_ITEM
        + adapter_bytes;
    let repacked = if m.is_quantized() && cfg.repack_weights { m.size_bytes() } else { 0 };
    MemoryBudget {
        weights: m.size_bytes() + repacked,
        kv: kv * contexts,
        logits: logits * contexts,
        compute: compute * contexts,
        overhead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ComputeShape {
        // SmolLM2-135M with the engine's defaults.
        ComputeShape {
            n_ctx: 2048,
            n_batch: 512,
            n_outputs: 512,
            n_embd: 576,
            n_head: 9,
            k_width: 192,
            v_width: 192,
            n_ff: 1536,
            n_vocab: 49152,
            n_layer: 30,
            threads: 2,
            kv_type: KvType::F16,
            flash_attention: true,
            n_enc: 0,
        }
    }

    #[test]
    fn compute_grows_with_what_it_depends_on() {
        let base = compute_per_context(&shape());
        assert!(compute_per_context(&ComputeShape { n_batch: 1024, ..shape() }) > base);
        assert!(compute_per_context(&ComputeShape { n_ctx: 4096, ..shape() }) > base);
        // Classic attention materializes the scores (the largest stage once the vocabulary is
        // small; with SmolLM2's 49k tokens the logits are).
        let small = ComputeShape { n_vocab: 1000, ..shape() };
        let classic = compute_per_context(&ComputeShape { flash_attention: false, ..small });
        let flash = compute_per_context(&small);
        assert!(classic > flash + 2048 * 512 * 9 * 4, "{classic} vs {flash}");
        assert!(compute_per_context(&ComputeShape { flash_attention: false, ..shape() }) > base);
        // The logits stage: n_outputs × n_vocab × 4 at least, and what fewer outputs save.
        assert!(base > 512 * 49152 * 4, "{base}");
        let few = compute_per_context(&ComputeShape { n_outputs: 64, ..shape() });
        assert!(few > 64 * 49152 * 4 && base - few >= 448 * 49152 * 4, "{few} vs {base}");
        // An encoder-decoder's relative position bias and cross-attention.
        let t5 = ComputeShape { n_enc: 512, n_vocab: 1000, ..shape() };
        assert!(compute_per_context(&t5) >= compute_per_context(&small) + 3 * 2048 * 512 * 9 * 4);
        // A batch larger than the context is the context.
        let c = ComputeShape { n_ctx: 256, ..shape() };
        assert_eq!(compute_per_context(&ComputeShape { n_batch: 4096, ..c }), compute_per_context(&c));
    }

    #[test]
    fn total_is_the_sum() {
        let b = MemoryBudget { weights: 1, kv: 2, logits: 3, compute: 4, overhead: 5 };
        assert_eq!(b.total(), 15);
        assert_eq!(MemoryBudget { weights: u64::MAX, ..b }.total(), u64::MAX);
    }
}
