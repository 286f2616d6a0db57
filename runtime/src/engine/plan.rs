//! The scoring plans, behind one shape: each takes a [`Job`] (a context, the request in flight,
//! the prompt prefix rows and the candidates' token sequences) and returns each candidate's
//! `(Σ log p, tokens)`, or `None` for a candidate a top-k plan proved it need not score.
//!
//! - [`shared`]: the prefix decoded once; candidates in groups whose titles form a prefix trie,
//!   every trie node decoded once (every candidate scored).
//! - [`best_first`]: exact top-k by best-first search over the trie of all candidates.
//! - [`naive`]: one full prompt per candidate (a baseline and a test oracle).
//! - [`verbalizer`]: one prediction at the template's mask, every candidate scored from it
//!   by its label words (score = the class's log-score, count = its label words).
//!
//! A new scoring mode is a module here with a `score(&mut Job, ..)` function, a [`Strategy`]
//! variant, and a line in [`choose`].

pub(crate) mod best_first;
pub(crate) mod naive;
pub(crate) mod shared;
pub(crate) mod verbalizer;

use super::call::Call;
use super::catalog::Catalog;
use super::prefix::PrefixState;
use super::{Plan, PrefixRow, RankRequest, Strategy};
use crate::llm::Context;
use crate::llm::TokenEmbeddings;
use delrec_format::pack::Handler;
use delrec_format::ScoringMode;

/// Σ log p and the number of scored tokens of each candidate, in request order.
pub(crate) type Scores = Vec<Option<(f64, u32)>>;

/// Everything a plan works with.
pub(crate) struct Job<'a> {
    pub ctx: &'a mut Context,
    pub state: &'a mut PrefixState,
    pub call: &'a mut Call,
    /// Soft prompt values, `n_virtual × width` each.
    pub soft: &'a [Vec<f32>],
    pub width: usize,
    pub rows: &'a [PrefixRow],
    pub seqs: &'a [Vec<i32>],
    /// What the verbalizer plan reads (only it).
    pub verbalizer: Option<VerbalizerJob<'a>>,
    /// Encoder-decoder models: the encoder's input, encoded before the decoder's prefix (`rows`).
    pub encoder: Option<EncoderJob<'a>>,
}

/// An encoder input and the token table that turns its text rows into embedding rows when it
/// mixes them with soft rows.
#[derive(Clone, Copy)]
pub(crate) struct EncoderJob<'a> {
    pub rows: &'a [PrefixRow],
    pub embeddings: &'a TokenEmbeddings,
}

/// The catalog whose label words the verbalizer normalizes over, and the candidates it scores.
#[derive(Clone, Copy)]
pub(crate) struct VerbalizerJob<'a> {
    pub cat: &'a Catalog<'a>,
    pub handler: Handler,
    pub candidates: &'a [u32],
}

/// Which plan serves a request. Pruning needs sum scoring (a partial sum bounds a candidate, a
/// partial mean does not), and pays only beyond one group: a group's trie goes in one or two
/// calls, while a search needs one call per depth.
pub(crate) fn choose(req: &RankRequest, n_candidates: usize, n_seq_max: usize, scoring: ScoringMode) -> Strategy {
    if scoring == ScoringMode::Verbalizer {
        return Strategy::Verbalizer;
    }
    match (req.plan, req.top_k) {
        (Plan::Naive, _) => Strategy::Naive,
        (Plan::SharedPrefix, Some(k))
            if n_candidates >= n_seq_max && scoring == ScoringMode::Sum && !req.exhaustive =>
        {
            Strategy::BestFirst { k }
        }
        _ => Strategy::SharedTrie,
    }
}

pub(crate) fn run(strategy: Strategy, job: &mut Job) -> crate::Result<Scores> {
    match strategy {
        Strategy::SharedTrie => shared::score(job),
        Strategy::BestFirst { k } => best_first::score(job, k),
        Strategy::Naive => naive::score(job),
        Strategy::Verbalizer => verbalizer::score(job),
    }
}
