//! The prompt prefix in sequence 0 of a context: decoded once per request, or extended in place
//! when a session's history grows.

use super::plan::Job;
use super::PrefixRow;
use crate::error::{Error, Result};
use crate::llm::Batch;
use crate::scorer::{common_prefix, log_sum_exp};

/// What a context's sequence 0 holds, so a session can extend it instead of starting over.
#[derive(Default)]
pub(crate) struct PrefixState {
    pub rows: Vec<PrefixRow>,
    /// Logits of the last row and their log-sum-exp.
    pub last: Option<(Vec<f32>, f64)>,
    /// Encoder-decoder models: the input the context's encoder output is of.
    pub encoded: Option<Vec<PrefixRow>>,
}

impl PrefixState {
    pub fn forget(&mut self) {
        self.rows.clear();
        self.last = None;
        self.encoded = None;
    }
}

/// Encoder-decoder models: makes the context's encoder output the job's encoder input, encoding
/// it (once, every row visible to every sequence) when it is not already. A new encoder output
/// invalidates everything the decoder cached, so the cache is cleared first.
pub(crate) fn ensure_encoded(job: &mut Job) -> Result<()> {
    let Some(enc) = job.encoder else { return Ok(()) };
    if job.state.encoded.as_deref() == Some(enc.rows) {
        return Ok(());
    }
    job.call.check()?;
    job.ctx.clear();
    job.state.forget();
    let width = job.width;
    let seqs: Vec<i32> = (0..job.ctx.n_seq_max() as i32).collect();
    let mixed = enc.rows.iter().any(|r| matches!(r, PrefixRow::Soft { .. }));
    let mut b = if mixed { Batch::embeddings(width) } else { Batch::tokens() };
    let mut row = Vec::with_capacity(width);
    for (i, r) in enc.rows.iter().enumerate() {
        let pos = i32::try_from(i).map_err(|_| Error::internal("position overflow"))?;
        match *r {
            PrefixRow::Token(t) if !mixed => b.add_token(t, pos, &seqs, false),
            PrefixRow::Token(t) => {
                row.clear();
                enc.embeddings.push_row(t, &mut row)?;
                b.add_embedding(&row, pos, &seqs, false)?;
            }
            PrefixRow::Soft { prompt, row: k } => {
                let (p, k) = (prompt as usize, k as usize);
                let v = job
                    .soft
                    .get(p)
                    .and_then(|s| s.get(k * width..(k + 1) * width))
                    .ok_or_else(|| Error::internal(format!("soft prompt row {p}/{k} out of range")))?;
                b.add_embedding(v, pos, &seqs, false)?;
            }
        }
    }
    job.ctx.encode(&mut b)?;
    job.call.stats.encoder_passes += 1;
    job.call.stats.encoder_rows += b.len();
    job.state.encoded = Some(enc.rows.to_vec());
    Ok(())
}

/// Decodes `rows` at positions `start..` into sequence 0, in batches of one kind (tokens or
/// embeddings) of at most `n_batch` rows and `n_outputs` outputs; `want(i)` marks rows whose
/// logits go to `on_logits`.
pub(crate) fn decode_rows(
    job: &mut Job,
    rows: &[PrefixRow],
    start: usize,
    want: &dyn Fn(usize) -> bool,
    on_logits: &mut dyn FnMut(usize, &[f32]),
) -> Result<()> {
    let (n_batch, n_outputs) = (job.ctx.n_batch(), job.ctx.n_outputs());
    let width = job.width;
    job.call.plan(rows.len());
    let mut i = 0;
    while i < rows.len() {
        job.call.check()?;
        let is_soft = matches!(rows[i], PrefixRow::Soft { .. });
        let mut b = if is_soft { Batch::embeddings(width) } else { Batch::tokens() };
        let first = i;
        let mut outputs = 0;
        while i < rows.len()
            && b.len() < n_batch
            && outputs + usize::from(want(i)) <= n_outputs
            && matches!(rows[i], PrefixRow::Soft { .. }) == is_soft
        {
            outputs += usize::from(want(i));
            let pos = i32::try_from(start + i).map_err(|_| Error::internal("position overflow"))?;
            match rows[i] {
                PrefixRow::Token(t) => b.add_token(t, pos, &[0], want(i)),
                PrefixRow::Soft { prompt, row } => {
                    let (p, r) = (prompt as usize, row as usize);
                    let v = job
                        .soft
                        .get(p)
                        .and_then(|s| s.get(r * width..(r + 1) * width))
                        .ok_or_else(|| Error::internal(format!("soft prompt row {p}/{r} out of range")))?;
                    b.add_embedding(v, pos, &[0], want(i))?;
                }
            }
            i += 1;
        }
        job.ctx.decode(&mut b)?;
        job.call.decoded(b.len());
        for j in 0..b.len() {
            if want(first + j) {
                on_logits(first + j, job.ctx.logits(&b, j)?);
            }
        }
    }
    Ok(())
}

/// Brings sequence 0 to hold the job's prefix rows, reusing the longest common prefix already
/// there, and keeps the last row's logits in the state.
pub(crate) fn ensure(job: &mut Job) -> Result<()> {
    ensure_encoded(job)?;
    let rows = job.rows;
    if rows.len() >= job.ctx.n_ctx() {
        return Err(Error::context_cells(rows.len() + 1, job.ctx.n_ctx()));
    }
    let lcp = common_prefix(&job.state.rows, rows);
    if lcp == rows.len() && lcp == job.state.rows.len() && job.state.last.is_some() {
        job.call.stats.prefix_reused = lcp;
        return Ok(());
    }
    // Re-decode at least the last row: its logits are needed.
    let mut keep = lcp.min(rows.len() - 1);
    if !job.ctx.seq_rm(0, keep as i32) {
        job.ctx.clear();
        // The encoder output survives a cache clear.
        let encoded = job.state.encoded.take();
        job.state.forget();
        job.state.encoded = encoded;
        keep = 0;
    }
    job.state.rows.truncate(keep);
    job.state.last = None;
    job.call.stats.prefix_reused = keep;
    let mut last = None;
    let tail = &rows[keep..];
    let last_i = tail.len() - 1;
    if let Err(e) = decode_rows(job, tail, keep, &|i| i == last_i, &mut |_, l| last = Some(l.to_vec())) {
        // Part of the tail may be in the cache: forget it all.
        job.ctx.clear();
        job.state.forget();
        return Err(e);
    }
    let last = last.ok_or_else(|| Error::internal("no logits for the prefix"))?;
    let lse = log_sum_exp(&last);
    job.state.rows = rows.to_vec();
    job.state.last = Some((last, lse));
    Ok(())
}
