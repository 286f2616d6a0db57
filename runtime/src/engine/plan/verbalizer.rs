//! Verbalizer scoring, as OpenPrompt's `ManualVerbalizer.process_logits` computes it for one
//! prediction: each label word's logit at the mask (its first token's, or the mean or max of its
//! tokens'), a softmax over every label word of the catalog, `log(p + 1e-15)`, and per class
//! (item) the mean over its words. The catalog is the class set, so a request over 20
//! candidates and one over the whole catalog give every item the same score.
//!
//! A decoder-only model predicts at the end of its input: the template's prefix ends at
//! `{mask}`, and its last row's logits (kept by `prefix::ensure`, so sessions reuse them) are
//! the prediction.

use super::{Job, Scores};
use crate::engine::catalog::Catalog;
use crate::engine::prefix;
use crate::error::{Error, Result};
use delrec_format::pack::Handler;

/// OpenPrompt's floor inside the log (`torch.log(label_words_probs + 1e-15)`).
const LOG_FLOOR: f64 = 1e-15;

pub(crate) fn score(job: &mut Job) -> Result<Scores> {
    let v = job.verbalizer.ok_or_else(|| Error::internal("verbalizer plan without its job"))?;
    prefix::ensure(job)?;
    let (logits, _) = job.state.last.as_ref().ok_or_else(|| Error::internal("prefix not decoded"))?;
    let scores = class_scores(logits, v.handler, v.cat, v.candidates)?;
    Ok(scores.into_iter().map(Some).collect())
}

/// One label word's logit under `handler`.
fn word_logit(logits: &[f32], handler: Handler, word: &[i32]) -> Result<f64> {
    let mut at = word.iter().map(|&t| {
        usize::try_from(t)
            .ok()
            .and_then(|t| logits.get(t))
            .map(|&x| x as f64)
            .ok_or_else(|| Error::internal(format!("label word token {t} outside the logits")))
    });
    match handler {
        Handler::First => at.next().unwrap_or_else(|| Err(Error::internal("a label word without tokens"))),
        Handler::Mean => {
            let v = at.collect::<Result<Vec<f64>>>()?;
            Ok(v.iter().sum::<f64>() / v.len().max(1) as f64)
        }
        Handler::Max => at.try_fold(f64::NEG_INFINITY, |m, x| x.map(|x| m.max(x))),
    }
}

/// Each wanted class's `(log-score, label words)`, normalized over every class of `cat`.
pub(crate) fn class_scores(logits: &[f32], handler: Handler, cat: &Catalog, wanted: &[u32]) -> Result<Vec<(f64, u32)>> {
    let n = cat.n_items();
    let mut h = Vec::with_capacity(2 * n);
    let mut start = Vec::with_capacity(n + 1);
    start.push(0);
    for i in 0..n as u32 {
        // Removed items are no class (their words would take probability from the rest).
        if !cat.is_live(i) {
            start.push(h.len());
            continue;
        }
        let mut err = None;
        let found = cat.each_label_word(i, &mut |w| match word_logit(logits, handler, w) {
            Ok(x) => h.push(x),
            Err(e) => err = Some(e),
        });
        if let Some(e) = err {
            return Err(e);
        }
        if !found {
            return Err(Error::internal(format!("item {i} has no label words")));
        }
        start.push(h.len());
    }
    let max = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(Error::internal("the model's logits at the mask are not finite"));
    }
    let lse = max + h.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    wanted
        .iter()
        .map(|&c| {
            let words = start
                .get(c as usize)
                .zip(start.get(c as usize + 1))
                .and_then(|(&a, &b)| h.get(a..b))
                .filter(|w| !w.is_empty())
                .ok_or_else(|| Error::internal(format!("candidate {c} outside the catalog")))?;
            let sum: f64 = words.iter().map(|&x| ((x - lse).exp() + LOG_FLOOR).ln()).sum();
            Ok((sum / words.len() as f64, words.len() as u32))
        })
        .collect()
}
