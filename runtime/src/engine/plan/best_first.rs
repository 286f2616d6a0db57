//! Exact top-k by best-first search over the trie of every candidate: the planner in
//! `crate::search` chooses each round's rows and sequence changes; this executes them. Each round
//! decodes the most promising nodes of the whole trie whose bound clears the k-th best complete
//! score so far. Pruned candidates come back as `None`.

use super::{Job, Scores};
use crate::engine::prefix;
use crate::error::{Error, Result};
use crate::llm::Batch;
use crate::scorer::{log_sum_exp, TopK, Trie};
use crate::search::{Search, SeqOp};

pub(crate) fn score(job: &mut Job, k: usize) -> Result<Scores> {
    prefix::ensure(job)?;
    let prefix_len = job.rows.len();
    let (last, lse) = job.state.last.clone().ok_or_else(|| Error::internal("prefix not decoded"))?;
    let refs: Vec<&[i32]> = job.seqs.iter().map(|s| s.as_slice()).collect();
    let mut trie = Trie::build(&refs);
    let mut top = TopK::new(k);
    for r in trie.roots.clone() {
        let r = r as usize;
        let logit =
            *last.get(trie.nodes[r].token as usize).ok_or_else(|| Error::internal("token outside the logits"))?;
        trie.set_logp(r, logit as f64 - lse);
        for _ in 0..trie.nodes[r].ends {
            top.push(trie.nodes[r].partial);
        }
    }
    // At most every node with children (pruning usually stops far short of it).
    job.call.plan(trie.nodes.iter().filter(|n| !n.children.is_empty()).count());
    let mut search = Search::new(&trie, job.ctx.n_seq_max());
    let result = run(job, &mut trie, &mut search, &mut top, prefix_len);
    for s in search.live_seqs() {
        job.ctx.seq_rm(s, 0);
    }
    result?;
    let out: Scores = (0..job.seqs.len()).map(|slot| trie.complete(slot).then(|| trie.score(slot))).collect();
    job.call.stats.pruned += out.iter().filter(|s| s.is_none()).count();
    Ok(out)
}

fn run(job: &mut Job, trie: &mut Trie, search: &mut Search, top: &mut TopK, prefix_len: usize) -> Result<()> {
    let max_cells = job.ctx.n_ctx() - prefix_len;
    while !search.is_done() {
        job.call.check()?;
        let round = search.plan(trie, top.threshold(), job.ctx.n_batch().min(job.ctx.n_outputs()), max_cells);
        for op in &round.ops {
            match *op {
                SeqOp::Share { src, dst, len } => job.ctx.seq_share(src, dst, (prefix_len + len) as i32)?,
                SeqOp::Truncate { seq, len } => {
                    job.ctx.seq_rm(seq, (prefix_len + len) as i32);
                }
                SeqOp::Drop { seq } => {
                    job.ctx.seq_rm(seq, 0);
                }
            }
        }
        if round.rows.is_empty() {
            if search.is_done() {
                break;
            }
            // Every sequence or cell is taken by paths still needed: the context is too small.
            return Err(Error::context_cells(prefix_len + search.live_cells + 1, job.ctx.n_ctx()));
        }
        let mut b = Batch::tokens();
        for &(id, seq) in &round.rows {
            let node = &trie.nodes[id];
            b.add_token(node.token, (prefix_len + node.depth as usize) as i32, &[seq], true);
        }
        job.ctx.decode(&mut b)?;
        job.call.decoded(b.len());
        for (j, &(id, seq)) in round.rows.iter().enumerate() {
            let logits = job.ctx.logits(&b, j)?;
            let lse = log_sum_exp(logits);
            for c in trie.nodes[id].children.clone() {
                let c = c as usize;
                trie.set_logp(c, logits[trie.nodes[c].token as usize] as f64 - lse);
                for _ in 0..trie.nodes[c].ends {
                    top.push(trie.nodes[c].partial);
                }
            }
            search.decoded(trie, id, seq);
        }
    }
    Ok(())
}
