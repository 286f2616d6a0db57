//! Item and text embeddings from the LLM (llama.cpp embeddings output).
//!
//! For LLM-enhanced item embeddings (TSLRec style): each text (an item's title, a catalog item's
//! pack tokens, or any token sequence) is decoded by the model on its own, and the final hidden
//! states after the model's final RMSNorm are pooled ([`Pooling`]) into one vector of width
//! `n_embd`.
//!
//! **Contexts.** The engine's pool holds logits contexts; an embeddings context differs in how
//! llama.cpp builds its graph (`embeddings = true` and a pooling type are fixed at creation), so
//! every call creates its own, sized to the request (`n_batch` = the request's total tokens, at
//! most `min(batch_size, context_size)`, and `n_ctx` that or 16; `n_seq_max` = the number of
//! inputs, at most `max_sequences`, with `n_batch` rounded to a multiple of it, which llama.cpp
//! needs; the engine's KV type, flash attention and threads), and frees it on return.
//! Creating one allocates its KV cache, compute buffers and output buffer: 8–15 ms for
//! SmolLM2-135M on 2 CPU threads (the same as a logits context), against tens of milliseconds
//! for decoding even one short title. llama.cpp computes logits for every row alongside the
//! embeddings (its graph has no embeddings-only variant for these models), so a decode costs
//! about what a logits decode with every row flagged costs. Calls are independent and may run
//! concurrently; they do not take contexts from the pool (nor count against `max_contexts`).
//!
//! **Batching.** Inputs are packed in order into decodes of at most `n_batch` rows and
//! `n_seq_max` sequences, one sequence id per input, positions from 0, the KV cache cleared
//! between decodes. Every input is decoded whole in one decode, so its embedding does not depend
//! on the other inputs of the call (equal up to floating-point reassociation).

use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::llm::{self, Context, ContextParams, Pooling};

impl Engine {
    /// The most inputs one embedding call takes; split larger requests (the result is the same).
    pub const MAX_EMBED_INPUTS: usize = 16_384;
    /// The longest text [`Engine::embed`] tokenizes, in bytes.
    pub const MAX_EMBED_TEXT_BYTES: usize = 1 << 20;

    /// One embedding per text, in order, each of width `n_embd` (the model's hidden size).
    ///
    /// A text is tokenized with the model's tokenizer (`parse_special = false`: control-token
    /// text stays plain text) and embedded as exactly those tokens: no BOS, no template, no item
    /// prefix (the pack's `template.bos` is not added; put it in [`Engine::embed_tokens`] input
    /// if a model needs it).
    ///
    /// Errors: an empty list, an empty text, a text over [`Engine::MAX_EMBED_TEXT_BYTES`] or
    /// one that tokenizes to nothing, more than [`Engine::MAX_EMBED_INPUTS`] texts:
    /// `BadRequest(Invalid { field: "texts" | "texts[i]", .. })`; a text of more tokens than one
    /// decode holds (`min(batch_size, context_size)`): `Capacity { ContextCells, .. }`.
    pub fn embed(&self, texts: &[String], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        check_count(texts.len(), "texts")?;
        let model = &self.inner.model;
        let seqs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let field = || format!("texts[{i}]");
                if t.is_empty() {
                    return Err(Error::invalid(&field(), "empty text"));
                }
                if t.len() > Self::MAX_EMBED_TEXT_BYTES {
                    return Err(Error::invalid(
                        &field(),
                        format!("{} bytes, more than {}", t.len(), Self::MAX_EMBED_TEXT_BYTES),
                    ));
                }
                let ids = model.tokenize(t, false).map_err(|e| Error::invalid(&field(), e.to_string()))?;
                if ids.is_empty() {
                    return Err(Error::invalid(&field(), "the text tokenizes to no tokens"));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        self.embed_rows(&seqs.iter().map(Vec::as_slice).collect::<Vec<_>>(), pooling)
    }

    /// One embedding per token sequence, in order: exactly the tokens given (no BOS added).
    ///
    /// Errors: an empty list, an empty sequence, a token id outside the vocabulary, more than
    /// [`Engine::MAX_EMBED_INPUTS`] sequences: `BadRequest(Invalid { field: "seqs" | "seqs[i]",
    /// .. })`; a sequence longer than one decode holds: `Capacity { ContextCells, .. }`.
    pub fn embed_tokens(&self, seqs: &[Vec<i32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        check_count(seqs.len(), "seqs")?;
        let n_vocab = self.inner.model.n_vocab();
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::invalid(&format!("seqs[{i}]"), "empty token sequence"));
            }
            if let Some(&t) = s.iter().find(|&&t| t < 0 || t as usize >= n_vocab) {
                return Err(Error::invalid(
                    &format!("seqs[{i}]"),
                    format!("token id {t} outside the vocabulary (0..{n_vocab})"),
                ));
            }
        }
        self.embed_rows(&seqs.iter().map(Vec::as_slice).collect::<Vec<_>>(), pooling)
    }

    /// One embedding per catalog item (by catalog index), in order, over the item's pack tokens
    /// (`Pack::item_tokens`: the pre-tokenized `item_prefix + title`, as ranking sees it; this
    /// can differ from `embed(title)` when the pack's item prefix is not empty).
    ///
    /// Errors: an empty list, an index outside the catalog, more than
    /// [`Engine::MAX_EMBED_INPUTS`] indices: `BadRequest(Invalid { field: "indices" |
    /// "indices[i]", .. })`; an item longer than one decode holds: `Capacity { ContextCells, .. }`.
    pub fn embed_items(&self, indices: &[u32], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        check_count(indices.len(), "indices")?;
        let cat = self.catalog();
        let seqs = indices
            .iter()
            .enumerate()
            .map(|(i, &item)| {
                let field = || format!("indices[{i}]");
                match cat.tokens(item) {
                    None => Err(Error::invalid(
                        &field(),
                        format!("no catalog item {item} (the catalog has {})", cat.n_items()),
                    )),
                    Some([]) => Err(Error::invalid(&field(), format!("catalog item {item} has no tokens"))),
                    Some(t) => Ok(t),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.embed_rows(&seqs, pooling)
    }

    /// Embeds checked, non-empty sequences in a context of their own (see the module docs).
    fn embed_rows(&self, seqs: &[&[i32]], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.inner.cfg;
        // One decode holds a whole sequence: n_batch rows (never more than the context).
        let limit = cfg.batch_size.min(cfg.context_size) as usize;
        if let Some(s) = seqs.iter().find(|s| s.len() > limit) {
            return Err(Error::context_cells(s.len(), limit));
        }
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let (n_batch, n_seq_max) = sizes(total, seqs.len(), limit, cfg.max_sequences as usize);
        let threads = if cfg.threads == 0 { crate::cpus::default_threads() } else { cfg.threads };
        let params = ContextParams {
            // context_size ≥ 16 (validated at open) and ≥ limit ≥ n_batch; n_ctx ≥ n_batch.
            n_ctx: (n_batch as u32).max(16).min(cfg.context_size),
            n_batch: n_batch as u32,     // ≤ limit, a u32
            n_seq_max: n_seq_max as u32, // ≤ max_sequences ≤ 256
            n_outputs: n_batch as u32,   // every row (an embeddings context)
            threads: threads as i32,     // ≤ 512 (validated at open)
            kv_type: cfg.kv_type,
            flash_attention: cfg.flash_attention,
        };
        let mut ctx = Context::with_embeddings(Arc::clone(&self.inner.model), &params, pooling)?;
        // The fine-tuned model's states: the pack's adapter applies here as in ranking.
        ctx.set_adapter(self.inner.adapter.as_ref().map(|a| (&a.adapter, a.scale)))?;
        // llama.cpp may round sizes; what a decode really holds is what counts.
        let cap = llm::embed::max_sequence_len(&ctx);
        if let Some(s) = seqs.iter().find(|s| s.len() > cap) {
            return Err(Error::context_cells(s.len(), cap));
        }
        let out = llm::embed_sequences(&mut ctx, seqs)?;
        let width = self.inner.model.n_embd();
        if out.len() != seqs.len() || out.iter().any(|e| e.len() != width) {
            return Err(Error::internal(format!(
                "llama.cpp returned {} embeddings of width {:?} for {} inputs of width {width}",
                out.len(),
                out.first().map(Vec::len),
                seqs.len()
            )));
        }
        Ok(out)
    }
}

/// `(n_batch, n_seq_max)` of the context for `inputs` sequences of `total` tokens: room for
/// every token when they fit (at most `limit` rows per decode), as many sequences per decode as
/// allowed, and `n_batch` a multiple of `n_seq_max` (which [`Context::with_embeddings`] needs).
/// Returns `n_batch ≥ min(total, limit)`, so any sequence of at most `limit` tokens fits.
fn sizes(total: usize, inputs: usize, limit: usize, max_sequences: usize) -> (usize, usize) {
    let want = total.min(limit).max(1);
    // The most sequences whose rounded-up batch still fits; 1 always does (want ≤ limit).
    let seqs = inputs.min(max_sequences).min(want).max(1);
    (1..=seqs).rev().map(|s| (want.div_ceil(s) * s, s)).find(|&(rows, _)| rows <= limit.max(1)).unwrap_or((want, 1))
}

fn check_count(n: usize, field: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(field, "empty list: give at least one input"));
    }
    if n > Engine::MAX_EMBED_INPUTS {
        return Err(Error::invalid(
            field,
            format!("{n} inputs, more than {} per call: split the request", Engine::MAX_EMBED_INPUTS),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sizes;

    #[test]
    fn context_sizes_fit_every_sequence_and_divide_evenly() {
        for limit in [1, 2, 7, 16, 48, 500, 509, 512] {
            for max_seqs in [2, 3, 32, 256] {
                for inputs in [1, 2, 5, 13, 40, 1000] {
                    for total in [inputs, inputs * 3, inputs * 40] {
                        let (rows, seqs) = sizes(total, inputs, limit, max_seqs);
                        assert!(rows <= limit && rows >= total.min(limit), "{total} {inputs} {limit} {max_seqs}");
                        assert!(seqs >= 1 && seqs <= max_seqs && seqs <= inputs, "{seqs}");
                        assert_eq!(rows % seqs, 0, "{rows} % {seqs}");
                    }
                }
            }
        }
        assert_eq!(sizes(62, 13, 512, 32), (65, 13));
        assert_eq!(sizes(5000, 1000, 512, 32), (512, 32));
    }
}
