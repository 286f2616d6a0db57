//! One full prompt per candidate in sequence 0: what a one-prompt-per-candidate baseline
//! computes, and the oracle the shared plans are tested against.

use super::{Job, Scores};
use crate::engine::prefix::decode_rows;
use crate::engine::PrefixRow;
use crate::error::{Error, Result};
use crate::scorer::log_sum_exp;

pub(crate) fn score(job: &mut Job) -> Result<Scores> {
    let rows = job.rows;
    let mut out = Vec::with_capacity(job.seqs.len());
    for seq in job.seqs {
        job.ctx.clear();
        job.state.forget();
        // A full prompt each: an encoder-decoder model encodes it each time too.
        crate::engine::prefix::ensure_encoded(job)?;
        let mut full = rows.to_vec();
        full.extend(seq.iter().map(|&t| PrefixRow::Token(t)));
        if full.len() > job.ctx.n_ctx() {
            return Err(Error::context_cells(full.len(), job.ctx.n_ctx()));
        }
        let p = rows.len();
        let mut sum = 0.0;
        let n = full.len();
        let r = decode_rows(job, &full, 0, &|i| i + 1 >= p && i + 1 < n, &mut |i, logits| {
            sum += logits[seq[i + 1 - p] as usize] as f64 - log_sum_exp(logits)
        });
        job.ctx.clear();
        r?;
        out.push(Some((sum, seq.len() as u32)));
    }
    Ok(out)
}
