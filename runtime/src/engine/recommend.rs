//! The cascade in one call: the pack's sequential model scores the whole catalog and keeps the
//! best `retrieve`; the LLM re-ranks those; the final order fuses both scores.
//!
//! Fusion (`docs/format.md`, "Cascade"): each score is standardized over the retrieved items
//! (`z = (s − mean) / std`, 0 when all are equal), and `fused = (1 − w) · z_seq + w · z_llm`
//! with `w` the pack's `delrec.fusion.llm_weight` unless the request gives one. Standardizing
//! puts a dot product and a log-likelihood on one scale without a learned calibration, and it is
//! invariant to the LLM's per-user offset (every candidate shares the prompt).

use std::time::Instant;

use super::call::Call;
use super::prefix::PrefixState;
use super::{prompt, Engine, RankRequest, RecommendRequest, RecommendStats, Recommendation, Recommended};
use crate::error::{Error, RequestError, Result};
use crate::llm::Context;
use crate::seq::{sasrec, scan, topn};

impl Engine {
    pub(crate) fn recommend_in(
        &self,
        ctx: Option<(&mut Context, &mut PrefixState)>,
        req: &RecommendRequest,
    ) -> Result<Recommendation> {
        let pack = &self.inner.pack;
        let model = pack.seq.as_ref().ok_or(RequestError::NoSequentialModel)?;
        if req.history.is_empty() {
            return Err(RequestError::EmptyHistory.into());
        }
        let cat = self.catalog();
        let history = req.history.iter().map(|h| prompt::item(&cat, h)).collect::<Result<Vec<_>>>()?;
        let n_items = cat.n_items();
        // Retrievable: the model's table (the pack's items) and added items with a vector.
        let mut skip: Vec<bool> = (0..n_items as u32)
            .map(|i| !cat.is_live(i) || i as usize >= pack.n_items() && cat.added_vector(i).is_none())
            .collect();
        if !req.include_history {
            for &h in &history {
                skip[h as usize] = true;
            }
        }
        let available = skip.iter().filter(|s| !**s).count();
        if req.n == 0 || req.n > available {
            return Err(Error::invalid("n", format!("{} is outside 1..={available} (items left to recommend)", req.n)));
        }
        let retrieve = match req.retrieve {
            Some(r) if r < req.n || r > available => {
                return Err(Error::invalid("retrieve", format!("{r} is outside n..={available} (n = {})", req.n)));
            }
            Some(r) => r,
            None => (pack.fusion.retrieve as usize).clamp(req.n, available),
        };
        let w = req.llm_weight.unwrap_or(pack.fusion.llm_weight);
        if !(0.0..=1.0).contains(&w) {
            return Err(Error::invalid("llm_weight", format!("{w} is outside [0, 1]")));
        }

        let t0 = Instant::now();
        // The model reads added items through their projected vectors.
        let user = sasrec::user_vector(model, &history, |i| cat.added_vector(i));
        let mut scores = Vec::with_capacity(n_items);
        scan::scores(&model.items, model.hidden, &user, &mut scores);
        for i in pack.n_items()..n_items {
            scores.push(cat.added_vector(i as u32).map_or(f32::NEG_INFINITY, |v| sasrec::dot(v, &user)));
        }
        let top = topn::top_n(&scores, retrieve, |i| skip[i as usize]);
        let retrieval_micros = t0.elapsed().as_micros() as u64;
        let mut stats = RecommendStats { retrieved: top.len(), retrieval_micros, ..Default::default() };

        let mut items: Vec<Recommended> = Vec::with_capacity(top.len());
        for &(index, s) in &top {
            let (id, title) = cat
                .id(index)
                .zip(cat.title(index))
                .ok_or_else(|| Error::internal(format!("catalog index {index} out of range")))?;
            items.push(Recommended {
                id: id.to_string(),
                title: title.to_string(),
                index,
                seq_score: s as f64,
                llm_score: None,
                score: s as f64,
            });
        }
        if !req.llm_off {
            let t1 = Instant::now();
            let rank_req = RankRequest {
                history: req.history.clone(),
                candidates: Some(items.iter().map(|i| i.id.clone()).collect()),
                soft_prompt: req.soft_prompt.clone(),
                exhaustive: true,
                cancel: req.cancel.clone(),
                timeout: req.timeout.map(|t| t.saturating_sub(t0.elapsed())),
                ..Default::default()
            };
            let ranking = match ctx {
                Some((ctx, state)) => self.rank_in(ctx, state, &rank_req)?,
                None => {
                    let mut lease = self.lease(Some(&Call::new(&rank_req)))?;
                    self.rank_in(lease.ctx(), &mut PrefixState::default(), &rank_req)?
                }
            };
            let mut llm = vec![f64::NAN; n_items];
            for r in &ranking.items {
                llm[r.index as usize] = r.score;
            }
            let z_seq = standardize(&items.iter().map(|i| i.seq_score).collect::<Vec<_>>());
            let z_llm = standardize(&items.iter().map(|i| llm[i.index as usize]).collect::<Vec<_>>());
            for ((it, zs), zl) in items.iter_mut().zip(z_seq).zip(z_llm) {
                it.llm_score = Some(llm[it.index as usize]);
                it.score = (1.0 - w as f64) * zs + w as f64 * zl;
            }
            // Fused score first; ties keep the sequential model's order (the retrieval order).
            let order: Vec<usize> = {
                let mut o: Vec<usize> = (0..items.len()).collect();
                o.sort_by(|&a, &b| items[b].score.total_cmp(&items[a].score).then(a.cmp(&b)));
                o
            };
            let mut sorted: Vec<Recommended> = order.iter().map(|&i| items[i].clone()).collect();
            std::mem::swap(&mut items, &mut sorted);
            stats.rerank_micros = t1.elapsed().as_micros() as u64;
            stats.rank = Some(ranking.stats);
        }
        items.truncate(req.n);
        Ok(Recommendation { items, stats })
    }
}

/// `(x − mean) / std` (population std); all zeros when the values are all equal.
fn standardize(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    if sd.is_nan() || sd <= 1e-12 || sd.is_infinite() {
        return vec![0.0; x.len()];
    }
    x.iter().map(|v| (v - mean) / sd).collect()
}

#[cfg(test)]
mod tests {
    use super::standardize;

    #[test]
    fn standardize_is_zero_mean_unit_variance_and_safe_on_constants() {
        let z = standardize(&[1.0, 2.0, 3.0, 6.0]);
        let mean: f64 = z.iter().sum::<f64>() / 4.0;
        let var: f64 = z.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12);
        assert_eq!(standardize(&[2.5, 2.5]), vec![0.0, 0.0]);
        assert_eq!(standardize(&[7.0]), vec![0.0]);
    }
}
