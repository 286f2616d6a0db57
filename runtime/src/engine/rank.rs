//! One ranking call, from request to sorted result, in a context the caller holds.

use delrec_format::ScoringMode;

use super::call::Call;
use super::catalog::Catalog;
use super::plan::{self, EncoderJob, Job, VerbalizerJob};
use super::prefix::{self, PrefixState};
use super::prompt::Resolved;
use super::PrefixRow;
use super::{prompt, Engine, EngineConfig, RankRequest, RankStats, Ranking, ScoredItem, Strategy};
use crate::error::{Error, Result};
use crate::llm::Context;

impl Engine {
    /// Ranks in `ctx`, whose sequence 0 holds what `state` says (sessions keep both).
    pub(crate) fn rank_in(&self, ctx: &mut Context, state: &mut PrefixState, req: &RankRequest) -> Result<Ranking> {
        let mut call = Call::new(req);
        call.arm(ctx);
        let r = self.rank_armed(ctx, state, req, &mut call);
        Call::disarm(ctx);
        r
    }

    /// Decodes the prompt prefix of `req` (its history, soft prompt and, for templates that
    /// list them, candidates) into `ctx` without scoring anything: a session's next rank then
    /// decodes only candidate rows. Cancellable like a rank.
    pub(crate) fn prefill_in(
        &self,
        ctx: &mut Context,
        state: &mut PrefixState,
        req: &RankRequest,
    ) -> Result<RankStats> {
        let mut call = Call::new(req);
        call.arm(ctx);
        let r = self.prefill_armed(ctx, state, req, &mut call);
        Call::disarm(ctx);
        r
    }

    fn prefill_armed(
        &self,
        ctx: &mut Context,
        state: &mut PrefixState,
        req: &RankRequest,
        call: &mut Call,
    ) -> Result<RankStats> {
        let inner = &*self.inner;
        let cat = self.catalog_with(&req.inline)?;
        let r = prompt::resolve(&cat, req)?;
        let (encoder, rows) = self.rows(&cat, &r)?;
        call.stats.prefix_rows = rows.len();
        let mut job = Job {
            ctx,
            state,
            call,
            soft: &inner.soft,
            width: inner.model.n_embd(),
            rows: &rows,
            seqs: &[],
            verbalizer: None,
            encoder: self.encoder_job(encoder.as_deref())?,
        };
        prefix::ensure(&mut job)?;
        let mut stats = std::mem::take(&mut call.stats);
        stats.backend = self.inner.base.backend().kind;
        Ok(stats)
    }

    fn rank_armed(
        &self,
        ctx: &mut Context,
        state: &mut PrefixState,
        req: &RankRequest,
        call: &mut Call,
    ) -> Result<Ranking> {
        let inner = &*self.inner;
        let pack = &inner.pack;
        let cat = self.catalog_with(&req.inline)?;
        let r = prompt::resolve(&cat, req)?;
        call.stats.candidates = r.candidates.len();
        let (encoder, rows) = self.rows(&cat, &r)?;
        call.stats.prefix_rows = rows.len();
        let strategy = plan::choose(req, r.candidates.len(), ctx.n_seq_max(), pack.scoring);
        let seqs = match strategy {
            Strategy::Verbalizer => vec![],
            _ => prompt::candidate_sequences(&cat, &r.candidates, self.decoder_eos())?,
        };
        let verbalizer = match (strategy, &pack.verbalizer) {
            (Strategy::Verbalizer, Some(v)) => {
                Some(VerbalizerJob { cat: &cat, handler: v.handler, candidates: &r.candidates })
            }
            (Strategy::Verbalizer, None) => return Err(Error::internal("verbalizer scoring without a verbalizer")),
            _ => None,
        };
        let mut job = Job {
            ctx,
            state,
            call,
            soft: &inner.soft,
            width: inner.model.n_embd(),
            rows: &rows,
            seqs: &seqs,
            verbalizer,
            encoder: self.encoder_job(encoder.as_deref())?,
        };
        let scores = plan::run(strategy, &mut job)?;
        let mode = pack.scoring;
        let mut items = Vec::with_capacity(scores.len());
        for (&c, s) in r.candidates.iter().zip(scores) {
            let Some((logprob, n)) = s else { continue };
            let (id, title) = cat
                .id(c)
                .zip(cat.title(c))
                .ok_or_else(|| Error::internal(format!("catalog index {c} out of range")))?;
            let mean = logprob / n as f64;
            items.push(ScoredItem {
                id: id.to_string(),
                title: title.to_string(),
                index: c,
                score: if mode == ScoringMode::Mean { mean } else { logprob },
                logprob,
                n_tokens: n,
                mean_logprob: mean,
                ties: 0,
            });
        }
        // Best first; ties keep catalog order so results are deterministic.
        items.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        count_ties(&mut items);
        if let Some(k) = req.top_k {
            items.truncate(k);
        }
        let mut stats = std::mem::take(&mut call.stats);
        stats.backend = self.inner.base.backend().kind;
        Ok(Ranking { items, stats })
    }
}

impl Engine {
    /// The encoder's part of a job (encoder-decoder models): its rows and the token table.
    fn encoder_job<'a>(&'a self, rows: Option<&'a [PrefixRow]>) -> Result<Option<EncoderJob<'a>>> {
        match (rows, &self.inner.base.inner.token_embd) {
            (Some(rows), Some(e)) => Ok(Some(EncoderJob { rows, embeddings: e })),
            (None, _) => Ok(None),
            (Some(_), None) => Err(Error::internal("an encoder input without the token table")),
        }
    }

    /// A request's rows: the encoder's input (encoder-decoder models) and the rows decoded
    /// before the candidates — the template's prefix, or the decoder's start and mask tokens.
    pub(crate) fn rows(&self, cat: &Catalog, r: &Resolved) -> Result<(Option<Vec<PrefixRow>>, Vec<PrefixRow>)> {
        let model = &self.inner.model;
        if !model.has_encoder() {
            return Ok((None, prompt::prefix_rows(cat, r, r.soft_override)?));
        }
        let enc = prompt::encoder_rows(cat, r, r.soft_override, model.eos_token())?;
        let start = model.decoder_start_token().ok_or_else(|| Error::internal("no decoder start token"))?;
        let mask = cat.pack.template.mask_token.ok_or_else(|| Error::internal("no mask token"))?;
        Ok((Some(enc), vec![PrefixRow::Token(start), PrefixRow::Token(mask)]))
    }

    /// What ends a candidate in an encoder-decoder model's decoder.
    pub(crate) fn decoder_eos(&self) -> Option<i32> {
        let m = &self.inner.model;
        if m.has_encoder() {
            m.eos_token()
        } else {
            None
        }
    }
}

/// Sets each item's `ties`: the others with exactly its score (`items` sorted by score).
fn count_ties(items: &mut [ScoredItem]) {
    let mut a = 0;
    while a < items.len() {
        let mut b = a + 1;
        while b < items.len() && items[b].score == items[a].score {
            b += 1;
        }
        for it in &mut items[a..b] {
            it.ties = (b - a - 1) as u32;
        }
        a = b;
    }
}

/// Setting ranges, checked at open. The upper bounds stop settings that would take the process
/// down or allocate gigabytes before llama.cpp could refuse them (libgomp exits the process on
/// thousands of threads; KV and logits buffers grow with context and batch).
pub(crate) const LIMITS: [(&str, usize, usize); 6] = [
    ("threads", 0, 512),
    ("context_size", 16, 1 << 17),
    ("batch_size", 1, 1 << 13),
    ("max_outputs", 1, 1 << 13),
    ("max_sequences", 2, 256),
    ("max_contexts", 1, 64),
];

const MAX_CONTEXT_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

pub(crate) fn validate(cfg: &EngineConfig) -> Result<()> {
    let values = [
        cfg.threads,
        cfg.context_size as usize,
        cfg.batch_size as usize,
        cfg.max_outputs as usize,
        cfg.max_sequences as usize,
        cfg.max_contexts,
    ];
    for ((field, lo, hi), v) in LIMITS.into_iter().zip(values) {
        if !(lo..=hi).contains(&v) {
            return Err(Error::invalid(field, format!("{v} is outside {lo}..={hi}")));
        }
    }
    if cfg.context_wait > MAX_CONTEXT_WAIT {
        return Err(Error::invalid(
            "context_wait",
            format!("{:?} is longer than {MAX_CONTEXT_WAIT:?}", cfg.context_wait),
        ));
    }
    Ok(())
}
