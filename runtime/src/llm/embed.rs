//! Pooled final hidden states of token sequences, many sequences per decode (llama.cpp's
//! embeddings output: `embeddings = true`, `pooling_type` MEAN or LAST).

use llama_cpp_sys_2 as sys;

use super::error::{LlamaError, Result};
use super::{Batch, Context};

/// How the final hidden states of a text's tokens (after the model's final RMSNorm, the vectors
/// the LM head reads) become one embedding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The average of the final-norm hidden states over all of the text's tokens.
    #[default]
    Mean,
    /// The final-norm hidden state of the text's last token (under causal attention the only
    /// one that has seen the whole text).
    Last,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        }
    }

    /// `"mean"` or `"last"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mean" => Some(Pooling::Mean),
            "last" => Some(Pooling::Last),
            _ => None,
        }
    }

    pub(super) fn raw(self) -> sys::llama_pooling_type {
        match self {
            Pooling::Mean => sys::LLAMA_POOLING_TYPE_MEAN,
            Pooling::Last => sys::LLAMA_POOLING_TYPE_LAST,
        }
    }
}

/// The most rows one sequence may have in `ctx`: it must be decoded whole, in one decode.
pub fn max_sequence_len(ctx: &Context) -> usize {
    ctx.n_batch().min(ctx.n_ctx())
}

/// The pooled embedding of each token sequence, in order, from an embeddings context
/// ([`Context::with_embeddings`]). Sequences are packed in order into decodes of at most
/// `n_batch` rows (and `n_ctx` cells) and `n_seq_max` sequences, one sequence id each, positions
/// from 0; the KV cache is cleared before every decode and left cleared. Each sequence is
/// decoded whole in one decode, so its embedding does not depend on its neighbours.
///
/// Every sequence must be non-empty and at most [`max_sequence_len`] tokens; token ids are
/// checked by [`Context::decode`].
pub fn embed_sequences(ctx: &mut Context, seqs: &[&[i32]]) -> Result<Vec<Vec<f32>>> {
    if ctx.pooling().is_none() {
        return Err(LlamaError::Refused("embed_sequences needs an embeddings context".into()));
    }
    let cap = max_sequence_len(ctx);
    let max_seqs = ctx.n_seq_max();
    if cap == 0 || max_seqs == 0 {
        return Err(LlamaError::Refused(format!("context of {cap} rows and {max_seqs} sequences")));
    }
    if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.is_empty() || s.len() > cap) {
        return Err(LlamaError::Refused(format!(
            "sequence {i} has {} tokens; an embedded sequence needs 1..={cap} (one decode)",
            s.len()
        )));
    }
    let mut out = Vec::with_capacity(seqs.len());
    let mut b = Batch::tokens();
    let mut start = 0;
    while start < seqs.len() {
        // The group: consecutive sequences while rows and sequence ids last.
        let (mut end, mut rows) = (start, 0usize);
        while end < seqs.len() && end - start < max_seqs && rows + seqs[end].len() <= cap {
            rows += seqs[end].len();
            end += 1;
        }
        b.clear();
        for (j, s) in seqs[start..end].iter().enumerate() {
            let seq = [j as i32]; // j < n_seq_max ≤ 256
            for (pos, &t) in s.iter().enumerate() {
                b.add_token(t, pos as i32, &seq, true); // pos < cap ≤ n_batch (u32)
            }
        }
        ctx.clear();
        let decoded = ctx.decode(&mut b);
        let res = decoded.and_then(|()| {
            (0..end - start).try_for_each(|j| ctx.seq_embedding(&b, j as i32).map(|e| out.push(e.to_vec())))
        });
        ctx.clear();
        res?;
        start = end;
    }
    Ok(out)
}
