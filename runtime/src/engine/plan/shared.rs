//! Every candidate scored over the shared prefix: sequence 0 holds the prefix; each group of
//! candidates gets sequences 1..=g sharing it, and the group's trie is decoded in batches of
//! `n_batch` (leaves need no decode: nothing is predicted from them).

use super::{Job, Scores};
use crate::engine::{prefix, TrieRow};
use crate::error::{Error, Result};
use crate::llm::Batch;
use crate::scorer::{group, log_sum_exp, Trie};

/// One group: the candidates (positions in the request) in trie slot order, and their trie.
pub(crate) struct Group {
    pub members: Vec<usize>,
    pub trie: Trie,
}

/// The groups of a request: candidates sorted by their token sequences (neighbours share
/// prefixes), cut to fit `n_seq_max - 1` sequences and the KV cells left after the prefix.
pub(crate) fn groups(seqs: &[Vec<i32>], n_seq_max: usize, n_ctx: usize, prefix_len: usize) -> Result<Vec<Group>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by(|&a, &b| seqs[a].cmp(&seqs[b]));
    let sorted: Vec<&[i32]> = order.iter().map(|&i| seqs[i].as_slice()).collect();
    let budget = n_ctx.saturating_sub(prefix_len);
    let ranges = group(&sorted, n_seq_max.saturating_sub(1).max(1), budget)
        .map_err(|len| Error::context_cells(prefix_len + len, n_ctx))?;
    Ok(ranges
        .into_iter()
        .map(|g| Group { trie: Trie::build(&sorted[g.clone()]), members: order[g].to_vec() })
        .collect())
}

/// A group's trie rows in the order [`score`] decodes them.
pub(crate) fn rows(g: &Group) -> Vec<TrieRow> {
    g.trie.nodes.iter().map(|n| TrieRow { token: n.token, depth: n.depth, decoded: !n.children.is_empty() }).collect()
}

pub(crate) fn score(job: &mut Job) -> Result<Scores> {
    prefix::ensure(job)?;
    let prefix_len = job.rows.len();
    let (last, lse) = job.state.last.clone().ok_or_else(|| Error::internal("prefix not decoded"))?;
    let mut out = vec![None; job.seqs.len()];
    let groups = groups(job.seqs, job.ctx.n_seq_max(), job.ctx.n_ctx(), prefix_len)?;
    job.call.plan(groups.iter().map(|g| g.trie.nodes.iter().filter(|n| !n.children.is_empty()).count()).sum());
    for mut g in groups {
        let n = g.members.len() as i32;
        for s in 1..=n {
            job.ctx.seq_cp(0, s)?;
        }
        for r in g.trie.roots.clone() {
            let token = g.trie.nodes[r as usize].token as usize;
            let logit = *last.get(token).ok_or_else(|| Error::internal("token outside the logits"))?;
            g.trie.set_logp(r as usize, logit as f64 - lse);
        }
        let result = decode_trie(job, &mut g.trie, prefix_len);
        for s in 1..=n {
            job.ctx.seq_rm(s, 0);
        }
        result?;
        for (slot, &orig) in g.members.iter().enumerate() {
            out[orig] = Some(g.trie.score(slot));
        }
    }
    Ok(out)
}

/// Every node with children, in depth-first order, as many per decode as the context can output
/// (`n_batch`, `n_outputs`); each decoded node gives its children their log-probs.
fn decode_trie(job: &mut Job, trie: &mut Trie, prefix_len: usize) -> Result<()> {
    let all: Vec<usize> = (0..trie.nodes.len()).filter(|&i| !trie.nodes[i].children.is_empty()).collect();
    for chunk in all.chunks(job.ctx.n_batch().min(job.ctx.n_outputs()).max(1)) {
        job.call.check()?;
        let mut b = Batch::tokens();
        for &id in chunk {
            let node = &trie.nodes[id];
            let seq_ids: Vec<i32> = node.cands.iter().map(|&c| c as i32 + 1).collect();
            b.add_token(node.token, (prefix_len + node.depth as usize) as i32, &seq_ids, true);
        }
        job.ctx.decode(&mut b)?;
        job.call.decoded(b.len());
        for (j, &id) in chunk.iter().enumerate() {
            let logits = job.ctx.logits(&b, j)?;
            let lse = log_sum_exp(logits);
            for k in 0..trie.nodes[id].children.len() {
                let ch = trie.nodes[id].children[k] as usize;
                trie.set_logp(ch, logits[trie.nodes[ch].token as usize] as f64 - lse);
            }
        }
    }
    Ok(())
}
